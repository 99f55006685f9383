//! Notifications: every node's Notifier drains the outbox into the configured sinks (`log`,
//! signed `webhook`). Delivery is at least once per `(event id, kind)` and sink, retried with
//! back-off and dead-lettered after `max_attempts`; receivers drop duplicates.

mod actor;
mod sink;
mod webhook;

pub use actor::{NotifierHandle, NotifyMsg, Outcome};
pub use sink::{LogSink, Sink, build_sinks};
pub use webhook::{EVENT_ID_HEADER, EVENT_KIND_HEADER, SIGNATURE_HEADER, WebhookSink};
