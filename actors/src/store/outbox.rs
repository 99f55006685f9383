//! The outbox: notifications enqueued in the transitions' own commits, claimed and
//! delivered by every node's Notifier (at least once), retried with back-off and
//! dead-lettered after a number of attempts.

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use super::{OutboxEntry, StoreResult};

/// Stored `last_error` texts are cut to this many bytes.
pub const MAX_ERROR_BYTES: usize = 500;

/// Outbox rows of one sink by state, for the depth / age / dead-letter gauges.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SinkStats {
    pub sink: String,
    pub pending: i64,
    /// Age of the oldest pending row by the database clock; 0 when none is pending.
    pub oldest_pending_age_seconds: f64,
    pub dead: i64,
    pub delivered: i64,
}

/// Claims, outcomes and dead letters of the outbox. A claim is a lease on a row
/// (`claimed_by`, `claim_expires_at` by the database clock): a row whose claim lapsed is
/// claimable again, which is what makes delivery at-least-once rather than at-most-once.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Claims up to `limit` pending rows that are due and not claimed (or whose claim has
    /// expired) for `node`, for `claim_ttl`; oldest due first. Concurrent claimers never
    /// receive the same row while its claim lasts.
    async fn claim_outbox(
        &self,
        node: &str,
        limit: u32,
        claim_ttl: Duration,
    ) -> StoreResult<Vec<OutboxEntry>>;

    /// Marks a row delivered, only while `node` still holds its claim. `false`: the claim
    /// was lost (another node took it after it expired) or the row is no longer pending.
    async fn outbox_delivered(&self, id: i64, node: &str) -> StoreResult<bool>;

    /// Records a failed attempt while `node` holds the claim, and releases it: the row is
    /// due again after `retry_in`, or dead when `None`. `error` is stored cut to
    /// [`MAX_ERROR_BYTES`]; callers must not put secrets or response bodies in it.
    async fn outbox_failed(
        &self,
        id: i64,
        node: &str,
        error: &str,
        retry_in: Option<Duration>,
    ) -> StoreResult<bool>;

    /// Dead rows, oldest first, optionally of one sink.
    async fn dead_letters(&self, sink: Option<&str>, limit: u32) -> StoreResult<Vec<OutboxEntry>>;

    /// Returns a dead row to pending (attempts 0, due now) with an `outbox.redriven` audit
    /// event by `actor`, atomically. `false` (and nothing written) if the row is not dead.
    async fn redrive(&self, id: i64, actor: &str, node: &str) -> StoreResult<bool>;

    /// Per-sink counts, by sink name.
    async fn outbox_stats(&self) -> StoreResult<Vec<SinkStats>>;
}

/// `error` without control characters, cut to [`MAX_ERROR_BYTES`] on a character boundary.
pub(crate) fn stored_error(error: &str) -> String {
    let mut out = String::with_capacity(error.len().min(MAX_ERROR_BYTES));
    for c in error.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_ERROR_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

/// Microseconds of a retry delay. The stores add it to the database clock, so it is bounded
/// well inside the range of a timestamp.
pub(crate) fn delay_us(d: Duration) -> i64 {
    const LONGEST: Duration = Duration::from_secs(10 * 366 * 86_400);
    i64::try_from(d.min(LONGEST).as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_errors_are_cut_to_500_bytes_on_a_character_boundary() {
        let long = "é".repeat(400);
        let cut = stored_error(&long);
        assert!(cut.len() <= MAX_ERROR_BYTES && cut.len() >= MAX_ERROR_BYTES - 1);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(stored_error("a\nb\tc"), "a b c");
    }
}
