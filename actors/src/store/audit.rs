//! The audit chain: immutable events (written by the transitions), chained by the cluster's
//! one AuditSequencer in batches fenced by the `audit` lease, and checkpointed with
//! Ed25519 signatures.

use async_trait::async_trait;

#[async_trait]
pub trait AuditStore: Send + Sync {}
