//! Notifications: every node's Notifier drains the outbox into the configured sinks (`log`,
//! signed `webhook`). Delivery is at least once per `(event id, kind)` and sink, retried with
//! back-off and dead-lettered after `max_attempts`; receivers drop duplicates.

mod actor;
mod sink;
mod webhook;

use std::fmt;
use std::time::Duration;

pub use actor::{NotifierHandle, NotifyMsg, Outcome};
pub use sink::{LogSink, Sink, build_sinks};
pub use webhook::{EVENT_ID_HEADER, EVENT_KIND_HEADER, SIGNATURE_HEADER, WebhookSink};

use crate::error::EngineError;
use crate::provider::Backoff;

/// The Notifier's configuration (the server maps its config file onto this).
#[derive(Clone, Debug)]
pub struct NotifyConfig {
    /// Every notice is enqueued once per sink.
    pub sinks: Vec<SinkConfig>,
    /// Failed attempts after which a row is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the next attempt after a failure.
    pub backoff: Backoff,
    /// How often the outbox is polled for due rows.
    pub poll_interval: Duration,
    /// How long a claimed row stays reserved for this node; must comfortably exceed the
    /// longest sink timeout, or another node may deliver it a second time meanwhile.
    pub claim_ttl: Duration,
    /// Deliveries in flight at once on this node (and the largest claim).
    pub batch: u32,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            sinks: vec![SinkConfig::log("log")],
            max_attempts: 10,
            // Ten attempts span roughly 15 to 30 minutes before a row is dead-lettered.
            backoff: Backoff {
                base: Duration::from_secs(5),
                max: Duration::from_secs(600),
            },
            poll_interval: Duration::from_millis(250),
            claim_ttl: Duration::from_secs(60),
            batch: 32,
        }
    }
}

impl NotifyConfig {
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |reason: String| Err(EngineError::InvalidConfig { reason });
        if self.max_attempts == 0 || self.batch == 0 || self.poll_interval.is_zero() {
            return bad("notify: max_attempts, batch and poll_interval must be positive".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for s in &self.sinks {
            if s.name.is_empty() || s.name.len() > 64 || s.name.chars().any(char::is_control) {
                return bad(format!(
                    "notify: sink name {:?} must be 1 to 64 printable bytes",
                    s.name
                ));
            }
            if !names.insert(s.name.as_str()) {
                return bad(format!("notify: sink {:?} is configured twice", s.name));
            }
            if let SinkKind::Webhook { timeout, .. } = &s.kind
                && self.claim_ttl < *timeout * 2
            {
                return bad(format!(
                    "notify: claim_ttl ({:?}) must be at least twice the timeout of sink {:?} ({timeout:?})",
                    self.claim_ttl, s.name
                ));
            }
        }
        Ok(())
    }
}

/// One named sink. Its name is stored with every outbox row enqueued for it.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
}

impl SinkConfig {
    pub fn log(name: impl Into<String>) -> Self {
        SinkConfig {
            name: name.into(),
            kind: SinkKind::Log,
        }
    }

    pub fn webhook(name: impl Into<String>, url: impl Into<String>, secret: Vec<u8>) -> Self {
        SinkConfig {
            name: name.into(),
            kind: SinkKind::Webhook {
                url: url.into(),
                secret,
                timeout: webhook::DEFAULT_TIMEOUT,
            },
        }
    }
}

#[derive(Clone)]
pub enum SinkKind {
    /// Writes each notice to the log (`tracing`, target `jitsudo::notify`); never fails.
    Log,
    /// Signed JSON `POST`s; see `docs/notifications.md`.
    Webhook {
        url: String,
        /// HMAC key of the signature header; never logged or shown.
        secret: Vec<u8>,
        /// Bound on one attempt (connect and answer).
        timeout: Duration,
    },
}

impl fmt::Debug for SinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkKind::Log => f.write_str("Log"),
            SinkKind::Webhook { url, timeout, .. } => f
                .debug_struct("Webhook")
                .field("url", url)
                .field("secret", &"<redacted>")
                .field("timeout", timeout)
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_debug_output_redacts_the_secret() {
        let s = SinkConfig::webhook(
            "hook",
            "https://example.invalid/in",
            b"hunter2-secret".to_vec(),
        );
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn duplicate_sink_names_and_a_claim_shorter_than_a_timeout_are_refused() {
        let mut c = NotifyConfig::default();
        c.sinks.push(SinkConfig::log("log"));
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
        let mut c = NotifyConfig {
            claim_ttl: Duration::from_secs(5),
            ..NotifyConfig::default()
        };
        c.sinks.push(SinkConfig::webhook(
            "hook",
            "https://example.invalid/",
            vec![1],
        ));
        assert!(c.validate().unwrap_err().to_string().contains("claim_ttl"));
        assert!(NotifyConfig::default().validate().is_ok());
    }
}
