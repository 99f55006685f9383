//! The outbox: notifications enqueued in the transitions' own commits, claimed and
//! delivered by every node's Notifier (at least once), retried with back-off and
//! dead-lettered after a number of attempts.

use async_trait::async_trait;

#[async_trait]
pub trait OutboxStore: Send + Sync {}
