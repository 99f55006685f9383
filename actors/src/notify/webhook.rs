//! The webhook sink: one signed JSON `POST` per notice, signed like the http provider's calls
//! (`X-Jitsudo-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`). A 2xx answer
//! is delivery; redirects are not followed; failure texts never carry the secret, the URL or
//! the receiver's body.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{SecondsFormat, Utc};
use jitsudo_providers::http::signature_header;
use reqwest::Url;
use reqwest::header::CONTENT_TYPE;
use serde_json::json;

use super::sink::Sink;
use crate::error::EngineError;
use crate::store::OutboxEntry;

pub use jitsudo_providers::http::SIGNATURE_HEADER;

/// The outbox row's event id: the audit event of the commit that produced the notice.
pub const EVENT_ID_HEADER: &str = "X-Jitsudo-Event-Id";
/// The notice kind, e.g. `request.approval_needed`.
pub const EVENT_KIND_HEADER: &str = "X-Jitsudo-Event-Kind";

pub struct WebhookSink {
    name: String,
    url: Url,
    secret: Vec<u8>,
    timeout: Duration,
    client: reqwest::Client,
}

impl WebhookSink {
    pub fn new(
        name: &str,
        url: &str,
        secret: Vec<u8>,
        timeout: Duration,
    ) -> Result<Self, EngineError> {
        let invalid = |what: &str| EngineError::InvalidConfig {
            reason: format!("webhook sink {name:?}: {what}"),
        };
        // The URL is not echoed: webhook URLs often embed a token.
        let url = Url::parse(url).map_err(|_| invalid("the url is not a valid URL"))?;
        match url.scheme() {
            "https" => {}
            // Notices name people, roles and reasons, and the signature is no secret from a
            // network observer: plain HTTP only where no network is crossed.
            "http" if jitsudo_providers::http::is_loopback(&url) => {}
            "http" => {
                return Err(invalid(
                    "the url must use https:// (plain http:// is accepted only for a loopback host such as 127.0.0.1 or localhost)",
                ));
            }
            _ => return Err(invalid("the url must be https:// (or http:// on loopback)")),
        }
        if secret.is_empty() {
            return Err(invalid("the secret must not be empty"));
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("jitsudo/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| invalid("cannot build the HTTP client (TLS setup failed)"))?;
        Ok(WebhookSink {
            name: name.to_owned(),
            url,
            secret,
            timeout,
            client,
        })
    }

    fn failed(&self, reason: impl Into<String>) -> EngineError {
        EngineError::Delivery {
            sink: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// What went wrong on the wire, from the innermost cause, without the URL (which may
    /// embed a token) and never the secret.
    fn transport_failure(&self, e: reqwest::Error) -> EngineError {
        let e = e.without_url();
        if e.is_timeout() {
            return self.failed(format!("no answer within {:?}", self.timeout));
        }
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        let mut text = cause.to_string();
        let secret = String::from_utf8_lossy(&self.secret);
        if text.contains(self.url.as_str()) || text.contains(secret.as_ref()) {
            text = "transport error".into();
        }
        if e.is_connect() {
            self.failed(format!("cannot connect: {text}"))
        } else if e.is_builder() {
            self.failed("the request could not be built")
        } else {
            self.failed(format!("the request failed: {text}"))
        }
    }
}

/// The JSON body of a delivery.
pub(crate) fn body(entry: &OutboxEntry) -> Result<Vec<u8>, serde_json::Error> {
    let payload: serde_json::Value = serde_json::from_str(&entry.payload)?;
    serde_json::to_vec(&json!({
        "event_id": entry.event_id,
        "kind": entry.kind,
        "created_at": entry.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "payload": payload,
    }))
}

#[async_trait]
impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&self, entry: &OutboxEntry) -> Result<(), EngineError> {
        let body = body(entry).map_err(|_| self.failed("the stored payload is not JSON"))?;
        let signature = signature_header(&self.secret, Utc::now().timestamp(), &body);
        let sent = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(EVENT_ID_HEADER, entry.event_id.to_string())
            .header(EVENT_KIND_HEADER, entry.kind.as_str())
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await;
        match sent {
            // The answer's body is not read: nothing in it changes the outcome.
            Ok(answer) if answer.status().is_success() => Ok(()),
            Ok(answer) => Err(self.failed(format!(
                "the receiver answered HTTP {}",
                answer.status().as_u16()
            ))),
            Err(e) => Err(self.transport_failure(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(payload: &str) -> OutboxEntry {
        let at = chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        OutboxEntry {
            id: 1,
            event_id: uuid::Uuid::from_u128(7),
            request_id: None,
            sink: "hook".into(),
            kind: "request.created".into(),
            payload: payload.into(),
            state: "pending".into(),
            attempts: 0,
            created_at: at,
            next_attempt_at: at,
            last_error: None,
        }
    }

    #[test]
    fn body_carries_the_event_id_kind_time_and_the_payload_as_json() {
        let b: serde_json::Value =
            serde_json::from_slice(&body(&entry(r#"{"request_id":"r1"}"#)).unwrap()).unwrap();
        assert_eq!(b["event_id"], "00000000-0000-0000-0000-000000000007");
        assert_eq!(b["kind"], "request.created");
        assert_eq!(b["created_at"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(b["payload"]["request_id"], "r1");
        assert!(body(&entry("not json")).is_err());
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        for url in [
            "not a url with token-abc",
            "ftp://example.invalid/token-abc",
        ] {
            let err =
                WebhookSink::new("hook", url, vec![1], crate::config::DEFAULT_WEBHOOK_TIMEOUT)
                    .err()
                    .expect("refused");
            assert!(!err.to_string().contains("token-abc"), "{err}");
        }
    }

    #[test]
    fn plain_http_is_refused_off_loopback() {
        let new = |url: &str| {
            WebhookSink::new("hook", url, vec![1], crate::config::DEFAULT_WEBHOOK_TIMEOUT)
        };
        let err = new("http://hooks.example.com/token-abc")
            .err()
            .expect("plain http to another host is refused");
        let m = err.to_string();
        assert!(m.contains("https://") && m.contains("loopback"), "{m}");
        assert!(!m.contains("token-abc"), "{m}");
        for ok in [
            "https://hooks.example.com/x",
            "http://127.0.0.1:8080/x",
            "http://localhost/x",
            "http://[::1]:9/x",
        ] {
            assert!(new(ok).is_ok(), "{ok}");
        }
    }
}
