//! Lease timing: how long a shard lease lasts, how often a node renews it, the self-fencing
//! margin, and the node's own monotonic view of whether its leases still stand
//! ([`LeaseClock`]). Below the store (which sizes its lock waits from it) and the cluster
//! code (which renews leases); imports nothing from the crate.
//!
//! Self-fencing: a node stops starting grant calls when its last successful renewal was
//! *sent* more than `TTL − margin` ago by its own monotonic clock — before the database
//! clock can hand the shard to another node (which needs the full TTL to pass after the
//! renewal was *committed*, which is later than it was sent).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The lease TTL of a node configured without one (`EngineConfig::default`).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);

/// How often a node renews its leases and rebalances: a fifth of the TTL, so that a
/// renewal can fail three times in a row before the self-fence (TTL − margin) closes.
pub fn round_every(ttl: Duration) -> Duration {
    ttl / 5
}

/// The self-fencing margin: a fifth of the TTL (1 s with the default 5 s).
pub fn fence_margin(ttl: Duration) -> Duration {
    ttl / 5
}

/// How long a PostgreSQL session may wait for a lock, or sit idle in a transaction, on a
/// node with this lease TTL: half the self-fencing margin ([`fence_margin`], TTL/5),
/// so 500 ms with the default 5 s TTL.
pub fn lock_wait_for(lease_ttl: Duration) -> Duration {
    fence_margin(lease_ttl) / 2
}

/// This node's own view of whether its leases still stand, by its monotonic clock.
pub struct LeaseClock {
    base: std::time::Instant,
    /// Nanoseconds after `base` until which the leases may be used; 0 = never renewed.
    usable_until_ns: AtomicU64,
    margin: Duration,
}

impl LeaseClock {
    pub fn new(margin: Duration) -> Self {
        LeaseClock {
            base: std::time::Instant::now(),
            usable_until_ns: AtomicU64::new(0),
            margin,
        }
    }

    /// The safety margin subtracted from the TTL.
    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// A renewal (or acquisition) sent at `sent` succeeded.
    pub fn renewed(&self, sent: Instant, ttl: Duration) {
        let until = sent.into_std() + ttl.saturating_sub(self.margin);
        let ns = until.saturating_duration_since(self.base).as_nanos() as u64;
        self.usable_until_ns.fetch_max(ns, Ordering::AcqRel);
    }

    /// How long the leases may still be used for grants; zero when fenced.
    pub fn remaining(&self) -> Duration {
        self.remaining_at(std::time::Instant::now())
    }

    fn remaining_at(&self, now: std::time::Instant) -> Duration {
        let until = Duration::from_nanos(self.usable_until_ns.load(Ordering::Acquire));
        until.saturating_sub(now.saturating_duration_since(self.base))
    }

    /// The node has renewed recently enough to start a grant call.
    pub fn usable(&self) -> bool {
        !self.remaining().is_zero()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_clock_fences_after_ttl_minus_margin() {
        let clock = LeaseClock::new(Duration::from_millis(200));
        assert!(!clock.usable(), "never renewed");
        let sent = Instant::now();
        let t0 = sent.into_std();
        clock.renewed(sent, Duration::from_millis(300));
        let ms = Duration::from_millis;
        // Usable for TTL − margin after the renewal was sent, not after it came back.
        assert_eq!(clock.remaining_at(t0 + ms(40)), ms(60));
        assert_eq!(clock.remaining_at(t0 + ms(100)), Duration::ZERO);
        assert_eq!(clock.remaining_at(t0 + ms(150)), Duration::ZERO);
        // An older renewal never moves it back; a newer one moves it on.
        clock.renewed(sent - ms(10_000), Duration::from_secs(1));
        assert_eq!(clock.remaining_at(t0 + ms(40)), ms(60));
        clock.renewed(sent + ms(100), Duration::from_millis(300));
        assert_eq!(clock.remaining_at(t0 + ms(150)), ms(50));
    }
}
