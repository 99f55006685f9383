//! jitsudo's ARM client: Entra tokens through azure_identity, ARM's REST API through reqwest;
//! ARM's throttling, long-running answers and `CloudError` bodies turned into
//! [`ProviderError`]s that say what is wrong and what to do.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::http::{AsyncRawResponse, HttpClient, Request};
use reqwest::Method;
use serde_json::Value;

use crate::ProviderError;

pub const ASSIGNMENTS_API: &str = "2022-04-01";
pub const DEFINITIONS_API: &str = "2022-04-01";
pub const PIM_API: &str = "2020-10-01";
/// `Retry-After` pauses taken inside one call before answering `Throttled`.
const THROTTLE_RETRIES: u32 = 2;
const MAX_IN_CALL_PAUSE: Duration = Duration::from_secs(10);

/// The transport azure_identity sends token requests with: reqwest with jitsudo's roots,
/// remembering what Entra said when it refused (azure_identity drops an `error_description`
/// it cannot borrow, and Entra's hold `\r\n`).
#[derive(Debug)]
pub(super) struct EntraTransport {
    pub inner: reqwest::Client,
    pub refused: Arc<Mutex<Option<(u16, String)>>>,
}

#[async_trait::async_trait]
impl HttpClient for EntraTransport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let answer = self.inner.execute_request(request).await?;
        if answer.status().is_success() {
            // What an earlier, retried refusal said is no longer the story.
            *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return Ok(answer);
        }
        let (status, headers, body) = answer.deconstruct();
        let bytes = body.collect().await?;
        let said = serde_json::from_slice::<Value>(&bytes).ok().map(|v| {
            let first = v["error_description"]
                .as_str()
                .and_then(|d| d.lines().next())
                .unwrap_or("")
                .trim()
                .to_owned();
            match v["error"].as_str() {
                Some(e) => format!("{e}: {first}"),
                None => first,
            }
        });
        let code = u16::from(status);
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((code, said.unwrap_or_else(|| format!("HTTP {code}"))));
        Ok(AsyncRawResponse::from_bytes(status, headers, bytes))
    }
}

/// Whether a call may have changed something (decides what a lost answer means).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Read,
    Write,
}

/// One ARM answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// ARM's message, without control characters and cut to 400 characters.
    pub fn message(&self) -> String {
        let m = self.body["error"]["message"].as_str().unwrap_or("");
        let mut out: String = m
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(400)
            .collect();
        if m.chars().count() > 400 {
            out.push('…');
        }
        out
    }

    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

pub(super) struct Arm {
    pub provider: String,
    pub http: reqwest::Client,
    /// ARM's endpoint without the trailing slash.
    pub base: String,
    pub token_scope: String,
    pub credential: Arc<dyn TokenCredential>,
    pub refused: Arc<Mutex<Option<(u16, String)>>>,
    /// Who jitsudod is at Entra, for messages (`client …`, or `the managed identity`).
    pub who: String,
    pub timeout: Duration,
}

impl Arm {
    fn unavailable(&self, reason: String) -> ProviderError {
        ProviderError::Unavailable {
            provider: self.provider.clone(),
            reason,
        }
    }

    async fn token(&self) -> Result<String, ProviderError> {
        match self.credential.get_token(&[&self.token_scope], None).await {
            Ok(t) => Ok(t.token.secret().to_owned()),
            Err(e) => {
                let said = self
                    .refused
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                let status = match (e.kind(), &said) {
                    (_, Some((code, _))) => Some(*code),
                    (azure_core::error::ErrorKind::HttpResponse { status, .. }, None) => {
                        Some(u16::from(*status))
                    }
                    _ => None,
                };
                let reason = match &said {
                    Some((_, s)) => {
                        format!("Microsoft Entra refused a token to {}: {s}", self.who)
                    }
                    None => format!("no token from Microsoft Entra for {}: {e}", self.who),
                };
                // A refusal (bad secret, unknown client or tenant) needs an admin; anything
                // else (Entra or IMDS unreachable, throttled) may pass.
                Err(match status {
                    Some(400 | 401 | 403) => ProviderError::Forbidden {
                        provider: self.provider.clone(),
                        reason: format!(
                            "{reason} (check tenant_id, client_id and the credential in the provider's table)"
                        ),
                    },
                    _ => self.unavailable(reason),
                })
            }
        }
    }

    /// The URL of `path` (from the scope on) with its query parameters, encoded.
    pub fn url(&self, path: &str, params: &[(&str, &str)]) -> String {
        match reqwest::Url::parse_with_params(&format!("{}{path}", self.base), params) {
            Ok(u) => u.to_string(),
            Err(_) => format!("{}{path}", self.base),
        }
    }

    /// One ARM call. 429s are waited out a little inside the call (their `Retry-After`), a
    /// long-running answer is polled to its end; any other answer is returned for the caller
    /// to judge.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        call: Call,
    ) -> Result<Answer, ProviderError> {
        // The token goes to ARM only: a nextLink or an operation URL elsewhere is refused.
        if !url.starts_with(&format!("{}/", self.base)) {
            return Err(self.unavailable(format!(
                "ARM pointed jitsudo at a URL outside {}; not following it",
                self.base
            )));
        }
        // For messages: the path, without the endpoint or the query.
        let path = url
            .strip_prefix(&self.base)
            .unwrap_or(url)
            .split('?')
            .next()
            .unwrap_or_default();
        let mut throttled = 0;
        loop {
            let token = self.token().await?;
            let mut req = self
                .http
                .request(method.clone(), url)
                .bearer_auth(token)
                .timeout(self.timeout);
            if let Some(b) = body {
                req = req.json(b);
            }
            let res = match req.send().await {
                Ok(r) => r,
                Err(e) => return Err(self.transport(e, call, &method, path)),
            };
            let status = res.status().as_u16();
            let retry_after = res
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let poll = (status == 202)
                .then(|| {
                    ["azure-asyncoperation", "location"].iter().find_map(|h| {
                        res.headers()
                            .get(*h)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    })
                })
                .flatten();
            let text = match res.text().await {
                Ok(t) => t,
                Err(e) => return Err(self.transport(e, call, &method, path)),
            };
            let body: Value = if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            };
            if status == 429 {
                let wait = retry_after.unwrap_or(Duration::from_secs(1));
                if throttled < THROTTLE_RETRIES && wait <= MAX_IN_CALL_PAUSE {
                    throttled += 1;
                    tracing::debug!(provider = %self.provider, ?wait, "ARM throttled the call; waiting as it asks");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return Err(ProviderError::Throttled {
                    provider: self.provider.clone(),
                    retry_after: Some(wait),
                });
            }
            if status >= 500 {
                let a = Answer { status, body };
                let reason = format!(
                    "ARM answered {status} {} to {method} {path}: {}",
                    a.code(),
                    a.message()
                );
                // 503 and 504 come before the change is made; a 500 may come after.
                return Err(if call == Call::Write && status == 500 {
                    ProviderError::Unknown {
                        provider: self.provider.clone(),
                        reason,
                    }
                } else {
                    self.unavailable(reason)
                });
            }
            if let Some(op) = poll {
                return self.follow(&op, call, retry_after).await;
            }
            return Ok(Answer { status, body });
        }
    }

    /// A long-running operation: polled (at its `Retry-After`, 1 s by default) until it ends.
    async fn follow(
        &self,
        op: &str,
        call: Call,
        mut wait: Option<Duration>,
    ) -> Result<Answer, ProviderError> {
        let deadline = tokio::time::Instant::now() + self.timeout * 3;
        loop {
            tokio::time::sleep(
                wait.unwrap_or(Duration::from_secs(1))
                    .min(MAX_IN_CALL_PAUSE),
            )
            .await;
            if tokio::time::Instant::now() > deadline {
                return Err(ProviderError::Unknown {
                    provider: self.provider.clone(),
                    reason: format!("ARM's operation {op} did not finish in time"),
                });
            }
            let a = Box::pin(self.send(Method::GET, op, None, Call::Read)).await;
            let a = match a {
                Ok(a) => a,
                Err(e) if call == Call::Write && e.is_retryable() => {
                    return Err(ProviderError::Unknown {
                        provider: self.provider.clone(),
                        reason: format!("following ARM's operation {op}: {e}"),
                    });
                }
                Err(e) => return Err(e),
            };
            match a.body["status"].as_str() {
                Some("Succeeded") => return Ok(Answer { status: 200, ..a }),
                Some("Failed" | "Canceled") => {
                    return Ok(Answer {
                        status: 400,
                        body: serde_json::json!({"error": a.body["error"].clone()}),
                    });
                }
                None if a.status == 200 => return Ok(a),
                _ => wait = None,
            }
        }
    }

    fn transport(
        &self,
        e: reqwest::Error,
        call: Call,
        method: &Method,
        path: &str,
    ) -> ProviderError {
        let reason = format!("{method} {path}: {}", crate::http::root_cause(&e));
        if e.is_connect() || call == Call::Read {
            return self.unavailable(reason);
        }
        if e.is_timeout() {
            return ProviderError::Timeout {
                provider: self.provider.clone(),
                after: self.timeout,
            };
        }
        ProviderError::Unknown {
            provider: self.provider.clone(),
            reason,
        }
    }

    /// One page of an ARM list: its items and the next page's absolute link.
    pub async fn page(
        &self,
        url: &str,
    ) -> Result<Result<(Vec<Value>, Option<String>), Answer>, ProviderError> {
        let a = self.send(Method::GET, url, None, Call::Read).await?;
        if !a.ok() {
            return Ok(Err(a));
        }
        let items = a.body["value"].as_array().cloned().unwrap_or_default();
        let next = a.body["nextLink"].as_str().map(str::to_owned);
        Ok(Ok((items, next)))
    }
}
