//! The sink trait and the `log` sink. A sink delivers one outbox row per call and says
//! whether it was taken; the Notifier owns retries, so a sink never retries by itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::webhook::WebhookSink;
use crate::config::{SinkConfig, SinkKind};
use crate::error::EngineError;
use crate::store::OutboxEntry;

#[async_trait]
pub trait Sink: Send + Sync + 'static {
    fn name(&self) -> &str;

    /// Delivers one notice. A failure is an [`EngineError::Delivery`] whose reason is stored
    /// as the row's `last_error`: it names what went wrong, never a secret or a response body.
    async fn deliver(&self, entry: &OutboxEntry) -> Result<(), EngineError>;
}

/// Writes each notice to the log at INFO (target `jitsudo::notify`).
pub struct LogSink {
    name: String,
}

impl LogSink {
    pub fn new(name: impl Into<String>) -> Self {
        LogSink { name: name.into() }
    }
}

#[async_trait]
impl Sink for LogSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&self, entry: &OutboxEntry) -> Result<(), EngineError> {
        tracing::info!(
            target: "jitsudo::notify",
            sink = %self.name,
            event_id = %entry.event_id,
            kind = %entry.kind,
            payload = %entry.payload,
            "notice"
        );
        Ok(())
    }
}

/// The configured sinks by name; fails on a sink that cannot be built (a bad URL, TLS setup).
pub fn build_sinks(configs: &[SinkConfig]) -> Result<BTreeMap<String, Arc<dyn Sink>>, EngineError> {
    configs
        .iter()
        .map(|c| {
            let sink: Arc<dyn Sink> = match &c.kind {
                SinkKind::Log => Arc::new(LogSink::new(c.name.clone())),
                SinkKind::Webhook {
                    url,
                    secret,
                    timeout,
                } => Arc::new(WebhookSink::new(&c.name, url, secret.clone(), *timeout)?),
            };
            Ok((c.name.clone(), sink))
        })
        .collect()
}
