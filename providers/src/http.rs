//! The http provider: custom integrations reached by signed JSON over HTTP(S).
//!
//! Owns the wire protocol (one `POST` per operation, HMAC-SHA256 signature header, JSON error
//! bodies) and its faithful mapping onto [`ProviderError`]. Guarantees: the secret is never
//! sent, logged or shown by `Debug`; response bodies never reach an error message verbatim.
//!
//! # Protocol (for integrators)
//!
//! | call | body | 2xx answer |
//! |---|---|---|
//! | `POST {base}/validate` | [`GrantSpec`] | any; no side effects |
//! | `POST {base}/grant` | [`GrantSpec`] | the [`GrantRecord`]; a repeat of a `grant_id` returns the same record |
//! | `POST {base}/revoke` | [`GrantRecord`] | any; unknown grants are fine; the `grant_id` is tombstoned |
//! | `POST {base}/inspect` | [`GrantRecord`] | [`InspectBody`] `{"state":"active"\|"gone"}` |
//! | `POST {base}/credentials` | [`GrantRecord`] | [`Credentials`] for an active grant |
//! | `POST {base}/list` | [`ListBody`] `{"page":null\|"<token>"}` | a [`ManagedPage`]: every grant and tombstone the integration keeps for jitsudo, a page at a time |
//! | `POST {base}/forget` | [`ManagedGrant`] (a tombstone) | any; the tombstone may be dropped (its `not_after` has passed) |
//!
//! Every call carries [`SIGNATURE_HEADER`] `t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<body>")>` (receivers reject it outside ±[`SIGNATURE_TOLERANCE`]) and
//! [`IDEMPOTENCY_HEADER`] with the `grant_id` (the nil UUID for `list`). Failures answer an [`ErrorBody`]; how statuses
//! map: 400/404/422 invalid (`field` names the input), 401 signature rejected, 403 forbidden,
//! 409 `tombstoned` (grant of a revoked `grant_id`, nothing granted) or a conflicting reuse
//! of a `grant_id`, `not_active` (credentials for a grant that is not active), 429 throttled
//! (`Retry-After`), 5xx unavailable, 504 and lost connections outcome unknown. Redirects
//! are not followed.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use crate::{
    Credentials, GrantRecord, GrantSpec, GrantState, ManagedGrant, ManagedPage, Provider,
    ProviderError, ProviderInfo,
};

#[cfg(feature = "test-server")]
pub mod server;

/// The header carrying `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "X-Jitsudo-Signature";
/// Carries the `grant_id` of every call, for integrations that deduplicate on a header.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// How far a signature timestamp may be from the receiver's clock.
pub const SIGNATURE_TOLERANCE: Duration = Duration::from_secs(300);
/// The per-call timeout when the configuration does not set one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Larger responses are cut off: no legitimate answer of this protocol comes close.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Server-supplied error messages are shortened to this many characters.
const MAX_MESSAGE_CHARS: usize = 200;

type HmacSha256 = Hmac<Sha256>;

/// One operation of the protocol; each is a `POST` to `{base_url}/{op}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Validate,
    Grant,
    Revoke,
    Inspect,
    Credentials,
    List,
    Forget,
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::Validate,
        Op::Grant,
        Op::Revoke,
        Op::Inspect,
        Op::Credentials,
        Op::List,
        Op::Forget,
    ];

    /// The path segment under the base URL, also the name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Validate => "validate",
            Op::Grant => "grant",
            Op::Revoke => "revoke",
            Op::Inspect => "inspect",
            Op::Credentials => "credentials",
            Op::List => "list",
            Op::Forget => "forget",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of every non-2xx answer.
///
/// `error` is a stable code: `invalid`, `forbidden`, `tombstoned`, `not_active`, `conflict`,
/// `bad_signature`, `bad_request`, ... `field` names the offending input where there is one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The body of a `list` call: `None` for the first page, else the `next` of the page before.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListBody {
    #[serde(default)]
    pub page: Option<String>,
}

/// The body of a successful `inspect` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectBody {
    pub state: GrantState,
}

/// The value of [`SIGNATURE_HEADER`] for `body` sent at `timestamp` (unix seconds).
pub fn signature_header(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Checks a [`SIGNATURE_HEADER`] value against `body`, in constant time, and that its
/// timestamp lies within [`SIGNATURE_TOLERANCE`] of `now`. Any `v1` entry may match (rotation).
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), &'static str> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => candidates.push(v),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or("signature has no valid timestamp")?;
    let tolerance = SIGNATURE_TOLERANCE.as_secs() as i64;
    if now.timestamp().abs_diff(timestamp) > tolerance.unsigned_abs() {
        return Err("signature timestamp outside the allowed window");
    }
    let matches = candidates.iter().any(|candidate| {
        hex::decode(candidate)
            .is_ok_and(|tag| mac(secret, timestamp, body).verify_slice(&tag).is_ok())
    });
    if matches {
        Ok(())
    } else {
        Err("signature does not match")
    }
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (long ones are hashed), so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// How to reach one custom integration.
#[derive(Clone)]
pub struct HttpProviderConfig {
    /// The provider's name in policies and the registry.
    pub name: String,
    /// `https://...`; plain `http://` only for a loopback host. Operations are appended as
    /// path segments (`{base_url}/grant`).
    pub base_url: String,
    /// The HMAC key shared with the integration. Never sent, logged or shown.
    pub secret: Vec<u8>,
    /// The whole-call timeout (connect, send, answer).
    pub timeout: Duration,
}

impl HttpProviderConfig {
    pub fn new(
        name: impl Into<String>,
        base_url: impl Into<String>,
        secret: impl Into<Vec<u8>>,
    ) -> Self {
        HttpProviderConfig {
            name: name.into(),
            base_url: base_url.into(),
            secret: secret.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl fmt::Debug for HttpProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpProviderConfig")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `kind = "http"`: the keys of its `[[providers]]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `https://...` (plain http only for a loopback host).
    pub base_url: String,
    /// A file holding the HMAC secret shared with the integration.
    pub secret_file: std::path::PathBuf,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

impl HttpConfig {
    /// Reads the secret file and checks the rest.
    pub fn build(&self, name: &str) -> Result<HttpProvider, String> {
        let secret = crate::config::read_secret(&self.secret_file, "secret_file")?;
        let mut cfg = HttpProviderConfig::new(name, self.base_url.clone(), secret);
        if let Some(t) = self.timeout_seconds {
            cfg = cfg.with_timeout(Duration::from_secs(t));
        }
        HttpProvider::new(cfg).map_err(|e| e.to_string())
    }
}

/// A [`Provider`] speaking the http protocol to one base URL.
pub struct HttpProvider {
    name: String,
    base_url: Url,
    secret: Vec<u8>,
    timeout: Duration,
    client: reqwest::Client,
}

impl fmt::Debug for HttpProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpProvider")
            .field("name", &self.name)
            .field("base_url", &self.base_url.as_str())
            .field("secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl HttpProvider {
    /// Checks the configuration and builds the HTTP client (rustls, no redirects).
    /// Configuration faults are [`ProviderError::Invalid`] naming the field.
    pub fn new(config: HttpProviderConfig) -> Result<Self, ProviderError> {
        let invalid = |field: &'static str, reason: &str| ProviderError::Invalid {
            provider: config.name.clone(),
            field,
            reason: reason.to_owned(),
        };
        if config.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        if config.secret.is_empty() {
            return Err(invalid("secret", "must not be empty"));
        }
        if config.timeout.is_zero() {
            return Err(invalid("timeout", "must be greater than zero"));
        }
        let mut base_url = Url::parse(config.base_url.trim())
            .map_err(|_| invalid("base_url", "is not a valid absolute URL"))?;
        if !base_url.username().is_empty() || base_url.password().is_some() {
            return Err(invalid(
                "base_url",
                "must not carry credentials; use the secret",
            ));
        }
        if base_url.query().is_some() || base_url.fragment().is_some() {
            return Err(invalid("base_url", "must not have a query or fragment"));
        }
        match base_url.scheme() {
            "https" => {}
            // Credentials come back in answers: cleartext only where nobody can listen in.
            "http" if is_loopback(&base_url) => {}
            "http" => {
                return Err(invalid(
                    "base_url",
                    "must use https unless the host is loopback",
                ));
            }
            _ => return Err(invalid("base_url", "must be an http(s) URL")),
        }
        if !base_url.path().ends_with('/') {
            let path = format!("{}/", base_url.path());
            base_url.set_path(&path);
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("jitsudo/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| invalid("config", "cannot build the HTTP client (TLS setup failed)"))?;
        Ok(HttpProvider {
            name: config.name,
            base_url,
            secret: config.secret,
            timeout: config.timeout,
            client,
        })
    }

    pub fn base_url(&self) -> &str {
        self.base_url.as_str()
    }

    /// Sends one signed call and returns the body of a 2xx answer, or the mapped error.
    async fn call<B: Serialize>(
        &self,
        op: Op,
        grant_id: Uuid,
        body: &B,
    ) -> Result<Vec<u8>, ProviderError> {
        let url = self
            .base_url
            .join(op.as_str())
            .map_err(|_| self.invalid("base_url", "cannot be joined with an operation path"))?;
        let body = serde_json::to_vec(body)
            .map_err(|_| self.invalid("request", "cannot be encoded as JSON"))?;
        let signature = signature_header(&self.secret, Utc::now().timestamp(), &body);
        let sent = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header(IDEMPOTENCY_HEADER, grant_id.to_string())
            .body(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => {
                let err = self.transport_error(&e);
                tracing::debug!(provider = %self.name, %op, %grant_id, error = %err, "http provider call failed");
                return Err(err);
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = read_limited(&mut response).await;
        tracing::debug!(provider = %self.name, %op, %grant_id, status = status.as_u16(), "http provider call answered");
        if status.is_success() {
            return body.map_err(|e| match e {
                ReadError::Transport(e) if e.is_timeout() => self.timeout_error(),
                ReadError::Transport(_) => self.unknown("the answer was cut off".to_owned()),
                ReadError::TooLarge => self.unknown("the answer was too large".to_owned()),
            });
        }
        // An unreadable error body still leaves the status to go by.
        Err(self.status_error(op, grant_id, status, &headers, &body.unwrap_or_default()))
    }

    /// Maps a failure to get any answer. Connect failures mean nothing was sent; anything
    /// later may have reached the integration.
    fn transport_error(&self, e: &reqwest::Error) -> ProviderError {
        if e.is_connect() {
            return ProviderError::Unavailable {
                provider: self.name.clone(),
                reason: format!("cannot connect: {}", root_cause(e)),
            };
        }
        if e.is_timeout() {
            return self.timeout_error();
        }
        if e.is_builder() {
            return self.invalid("request", "cannot be built");
        }
        self.unknown(format!(
            "connection failed after sending: {}",
            root_cause(e)
        ))
    }

    fn status_error(
        &self,
        op: Op,
        grant_id: Uuid,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> ProviderError {
        let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
        let code = parsed
            .as_ref()
            .map(|b| b.error.as_str())
            .unwrap_or_default();
        // The credentials endpoint is the one place an answer might carry a secret: nothing
        // from its body is ever repeated.
        let message = || match (&parsed, op) {
            (_, Op::Credentials) | (None, _) => None,
            (Some(b), _) => b.message.as_deref().map(sanitize),
        };
        let reason = |default: &str| message().unwrap_or_else(|| default.to_owned());
        let field = || {
            parsed
                .as_ref()
                .and_then(|b| b.field.as_deref())
                .map_or("request", static_field)
        };
        match (status.as_u16(), code) {
            (_, "tombstoned") => ProviderError::Tombstoned { provider: self.name.clone(), grant_id },
            (_, "not_active") => ProviderError::NotActive { provider: self.name.clone(), grant_id },
            (401, _) => ProviderError::Forbidden {
                provider: self.name.clone(),
                reason: "the integration rejected the request signature (HTTP 401): check the shared secret and both clocks".to_owned(),
            },
            (403, _) => ProviderError::Forbidden {
                provider: self.name.clone(),
                reason: reason("the integration refused the call (HTTP 403)"),
            },
            (408, _) => ProviderError::Unavailable {
                provider: self.name.clone(),
                reason: "the integration timed out reading the request (HTTP 408)".to_owned(),
            },
            (429, _) => ProviderError::Throttled {
                provider: self.name.clone(),
                retry_after: headers
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, Utc::now())),
            },
            (409, _) => ProviderError::Invalid {
                provider: self.name.clone(),
                field: parsed.as_ref().and_then(|b| b.field.as_deref()).map_or("grant_id", static_field),
                reason: reason("conflicts with the integration's state (HTTP 409)"),
            },
            // A gateway gave up waiting: the integration behind it may have acted.
            (504, _) => self.unknown("gateway timeout (HTTP 504)".to_owned()),
            (500..=599, _) => ProviderError::Unavailable {
                provider: self.name.clone(),
                reason: format!("HTTP {}", status.as_u16()),
            },
            (300..=399, _) => self.invalid(
                "base_url",
                &format!("answered with a redirect (HTTP {}); redirects are not followed", status.as_u16()),
            ),
            (400 | 404 | 422, _) => ProviderError::Invalid {
                provider: self.name.clone(),
                field: field(),
                reason: reason(&format!("rejected by the integration (HTTP {})", status.as_u16())),
            },
            _ => ProviderError::Invalid {
                provider: self.name.clone(),
                field: "request",
                reason: format!("unexpected answer (HTTP {})", status.as_u16()),
            },
        }
    }

    fn decode<T: for<'de> Deserialize<'de>>(
        &self,
        what: &str,
        body: &[u8],
    ) -> Result<T, ProviderError> {
        // serde_json's messages can quote the input: report only where it broke.
        serde_json::from_slice(body).map_err(|e| {
            self.unknown(format!(
                "unreadable {what} answer (line {}, column {})",
                e.line(),
                e.column()
            ))
        })
    }

    fn invalid(&self, field: &'static str, reason: &str) -> ProviderError {
        ProviderError::Invalid {
            provider: self.name.clone(),
            field,
            reason: reason.to_owned(),
        }
    }

    fn unknown(&self, reason: String) -> ProviderError {
        ProviderError::Unknown {
            provider: self.name.clone(),
            reason,
        }
    }

    fn timeout_error(&self) -> ProviderError {
        ProviderError::Timeout {
            provider: self.name.clone(),
            after: self.timeout,
        }
    }
}

#[async_trait]
impl Provider for HttpProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn validate(&self, spec: &GrantSpec) -> Result<(), ProviderError> {
        self.call(Op::Validate, spec.grant_id, spec).await.map(drop)
    }

    async fn grant(&self, spec: &GrantSpec) -> Result<GrantRecord, ProviderError> {
        let body = self.call(Op::Grant, spec.grant_id, spec).await?;
        let record: GrantRecord = self.decode("grant", &body)?;
        if record.grant_id != spec.grant_id {
            return Err(self.unknown(format!(
                "the integration answered for grant {} instead of {}",
                record.grant_id, spec.grant_id
            )));
        }
        Ok(record)
    }

    async fn revoke(&self, grant: &GrantRecord) -> Result<(), ProviderError> {
        self.call(Op::Revoke, grant.grant_id, grant).await.map(drop)
    }

    async fn inspect(&self, grant: &GrantRecord) -> Result<GrantState, ProviderError> {
        let body = self.call(Op::Inspect, grant.grant_id, grant).await?;
        Ok(self.decode::<InspectBody>("inspect", &body)?.state)
    }

    async fn credentials(&self, grant: &GrantRecord) -> Result<Credentials, ProviderError> {
        let body = self.call(Op::Credentials, grant.grant_id, grant).await?;
        self.decode("credentials", &body)
    }

    async fn list_managed(&self, page: Option<&str>) -> Result<ManagedPage, ProviderError> {
        let request = ListBody {
            page: page.map(str::to_owned),
        };
        let body = self.call(Op::List, Uuid::nil(), &request).await?;
        self.decode("list", &body)
    }

    async fn forget(&self, tombstone: &ManagedGrant) -> Result<(), ProviderError> {
        self.call(Op::Forget, tombstone.grant_id, tombstone)
            .await
            .map(drop)
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            kind: "http".into(),
            roles: vec!["as the integration validates".into()],
            scopes: vec!["as the integration validates".into()],
            native_expiry: true,
        }
    }
}

enum ReadError {
    Transport(reqwest::Error),
    TooLarge,
}

async fn read_limited(response: &mut reqwest::Response) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Transport)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether `url` names this machine (`localhost`, or a loopback address): the one place
/// where plain `http` is allowed (here for the provider's base URL, in jitsudod for a dev
/// OIDC issuer).
pub fn is_loopback(url: &Url) -> bool {
    match url.host_str() {
        Some(host) if host.eq_ignore_ascii_case("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// The innermost cause (e.g. "Connection refused"), without the URL or request details.
pub(crate) fn root_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    sanitize(&cause.to_string())
}

fn sanitize(message: &str) -> String {
    message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE_CHARS)
        .collect()
}

fn static_field(field: &str) -> &'static str {
    match field {
        "grant_id" => "grant_id",
        "request_id" => "request_id",
        "subject" => "subject",
        "role" => "role",
        "scope" => "scope",
        "not_after" => "not_after",
        "metadata" => "metadata",
        "provider_ref" => "provider_ref",
        _ => "request",
    }
}

/// `Retry-After` as delta-seconds or an HTTP date; a date in the past means "now".
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_made_by_the_client_verifies_at_the_receiver() {
        let now = Utc::now();
        let header = signature_header(b"k", now.timestamp(), b"{}");
        assert_eq!(verify_signature(b"k", &header, b"{}", now), Ok(()));
        assert!(verify_signature(b"other", &header, b"{}", now).is_err());
        assert!(verify_signature(b"k", &header, b"{ }", now).is_err());
    }

    #[test]
    fn signature_matches_the_documented_construction() {
        let mut mac = HmacSha256::new_from_slice(b"secret").expect("any key length");
        mac.update(b"1700000000.{\"a\":1}");
        let expected = format!(
            "t=1700000000,v1={}",
            hex::encode(mac.finalize().into_bytes())
        );
        assert_eq!(
            signature_header(b"secret", 1_700_000_000, b"{\"a\":1}"),
            expected
        );
    }

    #[test]
    fn signature_outside_the_window_is_rejected_on_both_sides() {
        let now = Utc::now();
        for skew in [-301, 301] {
            let header = signature_header(b"k", now.timestamp() + skew, b"{}");
            assert!(
                verify_signature(b"k", &header, b"{}", now).is_err(),
                "skew {skew}"
            );
        }
        let header = signature_header(b"k", now.timestamp() - 299, b"{}");
        assert_eq!(verify_signature(b"k", &header, b"{}", now), Ok(()));
    }

    #[test]
    fn malformed_signature_headers_are_rejected() {
        let now = Utc::now();
        for header in [
            "",
            "t=abc,v1=00",
            "v1=00",
            "t=1",
            &format!("t={},v1=zz", now.timestamp()),
        ] {
            assert!(
                verify_signature(b"k", header, b"{}", now).is_err(),
                "{header:?}"
            );
        }
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
            .expect("date")
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn server_messages_are_shortened_and_stripped_of_control_characters() {
        let long = "a\nb".repeat(500);
        let cleaned = sanitize(&long);
        assert_eq!(cleaned.chars().count(), MAX_MESSAGE_CHARS);
        assert!(!cleaned.contains('\n'));
    }
}
