//! The audit chain: immutable events (written by the transitions), chained by the cluster's
//! one AuditSequencer in batches fenced by the `audit` lease, and checkpointed with
//! Ed25519 signatures. Nothing here updates or deletes an audit row.

use async_trait::async_trait;
use uuid::Uuid;

use super::{AuditEvent, Fence, OutboxRow, StoreResult, Write};
use crate::domain::Timestamp;

/// Lease id of the cluster's one AuditSequencer (request shards are numbered from 0).
pub const AUDIT_LEASE: u32 = 1_000_000;
/// The lease of the grant reconciler, the other cluster singleton.
pub const RECONCILE_LEASE: u32 = 1_000_001;

/// The last link of the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainTip {
    pub seq: i64,
    pub hash: Vec<u8>,
    /// Commit time of the tip's event: unchained events are looked for from a little before it.
    pub event_at: Timestamp,
    pub event_id: Uuid,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainRow {
    pub seq: i64,
    pub event_id: Uuid,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: Vec<u8>,
    pub at: Timestamp,
    pub key_id: String,
    pub signature: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditStats {
    pub chain_length: i64,
    pub unchained: i64,
    pub oldest_unchained_at: Option<Timestamp>,
    pub db_now: Timestamp,
}

/// A request whose audit events are not exactly versions `1..=version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionGap {
    pub request_id: Uuid,
    pub version: i64,
    pub missing: Vec<i64>,
}

#[async_trait]
pub trait AuditStore: Send + Sync {
    async fn chain_tip(&self) -> StoreResult<Option<ChainTip>>;

    /// Events not in the chain yet, committed at or after `since`, in (time, id) order.
    async fn unchained_events(
        &self,
        since: Option<Timestamp>,
        limit: u32,
    ) -> StoreResult<Vec<AuditEvent>>;

    /// Events not in the chain yet that come strictly after `(at, id)` in (time, id) order:
    /// the cheap way forward from the chain's newest event, skipping nothing already read.
    async fn unchained_after(
        &self,
        after: (Timestamp, Uuid),
        limit: u32,
    ) -> StoreResult<Vec<AuditEvent>>;

    /// Appends links, fenced by the audit lease. `Stale` if the fence does not hold or
    /// another sequencer appended the same sequence numbers: nothing is written.
    async fn append_chain(&self, fence: &Fence, links: &[ChainRow]) -> StoreResult<Write>;

    /// Stores a signed checkpoint and enqueues it for the sinks, fenced by the audit lease.
    async fn add_checkpoint(
        &self,
        fence: &Fence,
        cp: &Checkpoint,
        outbox: &[OutboxRow],
    ) -> StoreResult<Write>;

    /// Chain rows after `after_seq` in order, with their events (`None` where missing).
    async fn chain_page(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> StoreResult<Vec<(ChainRow, Option<AuditEvent>)>>;

    async fn checkpoints(&self) -> StoreResult<Vec<Checkpoint>>;

    /// Chain length (the tip's `seq`), and the count and oldest time of unchained events —
    /// of all events, or, with `since`, of those stamped from then on (the cheap form the
    /// sequencer's metrics use: older stragglers are found by its periodic full sweep).
    async fn audit_stats(&self, since: Option<Timestamp>) -> StoreResult<AuditStats>;

    async fn version_gaps(&self, limit: u32) -> StoreResult<Vec<VersionGap>>;
}

/// Which audit events `query_audit` returns: every given condition holds. Events are
/// ordered by `(at, id)`, newest first unless `oldest_first`; page on with `after` set to
/// the last event's `(at, id)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub request_id: Option<Uuid>,
    pub actor: Option<String>,
    pub kind: Option<String>,
    /// Only events of requests for this provider.
    pub provider: Option<String>,
    /// Inclusive.
    pub since: Option<Timestamp>,
    /// Exclusive.
    pub until: Option<Timestamp>,
    pub oldest_first: bool,
    /// Keyset cursor: only events strictly after this `(at, id)` in the chosen order.
    pub after: Option<(Timestamp, Uuid)>,
    /// Page size: 0 means [`AuditQuery::DEFAULT_LIMIT`]; at most [`AuditQuery::MAX_LIMIT`].
    pub limit: u32,
}

impl AuditQuery {
    pub const DEFAULT_LIMIT: u32 = 100;
    pub const MAX_LIMIT: u32 = 1000;

    pub fn effective_limit(&self) -> i64 {
        i64::from(match self.limit {
            0 => Self::DEFAULT_LIMIT,
            n => n.min(Self::MAX_LIMIT),
        })
    }
}

/// Missing versions of `1..=version` given the versions present (sorted).
pub(crate) fn missing_versions(version: i64, present: &[i64]) -> Vec<i64> {
    (1..=version)
        .filter(|v| present.binary_search(v).is_err())
        .collect()
}
