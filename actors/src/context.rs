//! What every actor of a node shares: the store, the policy and provider handles, the
//! engine's rules, and this node's view of the database clock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use crate::config::EngineConfig;
use crate::domain::{Notice, Principal, Rules, Timestamp};
use crate::policy_actor::PolicyHandle;
use crate::provider::ProviderHandle;
use crate::stats::ActorRegistry;
use crate::store::{OutboxRow, SharedStore};

/// See [`NodeContext::expiry_records`]: a quarter of the store's 16 connections.
const EXPIRY_RECORDS_AT_ONCE: usize = 4;

/// How long a probe of the database clock counts (see [`NodeContext::probe_db_clock`]).
pub const PROBE_WINDOW: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
struct Probe {
    at: std::time::Instant,
    rtt: i64,
    sample: i64,
}

/// The probe with the shortest round trip, the newest of equals.
fn best(q: &std::collections::VecDeque<Probe>) -> Option<Probe> {
    q.iter().rev().min_by_key(|p| p.rtt).copied()
}

/// This node's estimate of the database clock minus its own, in microseconds.
#[derive(Debug)]
pub struct DbClock {
    offset_us: AtomicI64,
    /// The probes of the last [`PROBE_WINDOW`], oldest first.
    probes: std::sync::Mutex<std::collections::VecDeque<Probe>>,
}

impl Default for DbClock {
    fn default() -> Self {
        DbClock {
            offset_us: AtomicI64::new(i64::MIN),
            probes: std::sync::Mutex::default(),
        }
    }
}

impl DbClock {
    /// How far apart two readings of the same offset may be and still agree (the
    /// database's clock resolution, scheduling between reading a clock and stamping).
    const SLACK_US: i64 = 1_000;

    /// A committed write's `db_now − local receive time` (µs): the database read its clock
    /// before the reply arrived, so the sample is a lower bound of the offset. Above what
    /// the best probe allows, this node's clock stepped back: the probes before the step
    /// no longer count, and the sample stands until the next probe. Within it, it raises
    /// the estimate. Before the first probe, the highest recent sample decays by 100 µs
    /// per sample, so one slow commit does not drag every later timer late.
    pub fn observe(&self, sample: i64) {
        let Ok(mut q) = self.probes.lock() else {
            return;
        };
        let best_upper = best(&q).map(|p| p.sample + p.rtt / 2 + Self::SLACK_US);
        if best_upper.is_some_and(|upper| sample > upper) {
            q.clear();
            self.offset_us.store(sample, Ordering::Relaxed);
            return;
        }
        let probed = !q.is_empty();
        drop(q);
        let _ = self
            .offset_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(match old {
                    i64::MIN => sample,
                    old if probed => old.max(sample),
                    old => sample.max(old - 100),
                })
            });
    }

    /// A probe (the membership heartbeat's, every second): the database read `db_now`
    /// while this node waited `rtt` (its monotonic clock) from `sent` (its wall clock), so
    /// the offset is `db_now − (sent + rtt/2)`, to within half the round trip. The estimate
    /// is the probe with the shortest round trip of the last [`PROBE_WINDOW`] (the newest
    /// of equals); a probe that disagrees with it beyond both round trips means this
    /// node's clock stepped, and the probes before it are dropped at once.
    pub fn probe(
        &self,
        db_now: Timestamp,
        sent: Timestamp,
        rtt: std::time::Duration,
        at: std::time::Instant,
    ) {
        let rtt = i64::try_from(rtt.as_micros()).unwrap_or(i64::MAX);
        let sample = (db_now - sent).num_microseconds().unwrap_or(0) - rtt / 2;
        let Ok(mut q) = self.probes.lock() else {
            return;
        };
        let new = Probe { at, rtt, sample };
        if best(&q)
            .is_some_and(|b| (b.sample - new.sample).abs() > (b.rtt + new.rtt) / 2 + Self::SLACK_US)
        {
            q.clear();
        }
        q.push_back(new);
        while q.len() > 1
            && q.front()
                .is_some_and(|p| at.saturating_duration_since(p.at) > PROBE_WINDOW)
        {
            q.pop_front();
        }
        if let Some(b) = best(&q) {
            self.offset_us.store(b.sample, Ordering::Relaxed);
        }
    }

    pub fn offset(&self) -> chrono::Duration {
        match self.offset_us.load(Ordering::Relaxed) {
            i64::MIN => chrono::Duration::zero(),
            us => chrono::Duration::microseconds(us),
        }
    }
}

pub struct NodeContext {
    pub config: EngineConfig,
    pub incarnation: Uuid,
    pub store: SharedStore,
    pub policy: PolicyHandle,
    pub providers: BTreeMap<String, ProviderHandle>,
    pub registry: ActorRegistry,
    /// Database clock minus this node's clock.
    db_clock: DbClock,
    /// Every version committed on this node, as (request, version): watchers wake on it
    /// instead of polling, and the commit feed announces it to the other nodes.
    pub commits: tokio::sync::broadcast::Sender<(crate::domain::RequestId, i64)>,
    /// What the other nodes committed, as the commit feed hears it (`cluster::commits`).
    pub remote_commits: tokio::sync::broadcast::Sender<crate::store::RemoteCommit>,
    /// Records of expiries (ENDING, then EXPIRED) in flight at once. A burst of expiries
    /// would otherwise fill every database connection with their commits and take the
    /// CPU the revokes themselves need: the revokes go out first (they need no commit before
    /// them), their records follow at this pace.
    pub expiry_records: std::sync::Arc<tokio::sync::Semaphore>,
    /// This node's own view of its shard leases: grant calls start only while it says
    /// they stand (self-fencing, docs/engine.md "Fencing and ownership").
    pub lease: std::sync::Arc<crate::lease::LeaseClock>,
    /// Every shard's owner row as last read (each round of the node supervisor, and by
    /// routing when it had to look again): routing's first guess of where a shard lives.
    pub owners: std::sync::RwLock<Vec<crate::store::ShardRecord>>,
    /// Set by [`crate::Engine::crash`]: stop without releasing leases or leaving.
    pub(crate) crashing: std::sync::atomic::AtomicBool,
}

impl NodeContext {
    pub fn new(
        config: EngineConfig,
        incarnation: Uuid,
        store: SharedStore,
        policy: PolicyHandle,
        providers: BTreeMap<String, ProviderHandle>,
        registry: ActorRegistry,
        db_now: Timestamp,
    ) -> Self {
        let ctx = NodeContext {
            config,
            incarnation,
            store,
            policy,
            providers,
            registry,
            db_clock: DbClock::default(),
            commits: tokio::sync::broadcast::channel(4096).0,
            remote_commits: tokio::sync::broadcast::channel(4096).0,
            expiry_records: std::sync::Arc::new(tokio::sync::Semaphore::new(
                EXPIRY_RECORDS_AT_ONCE,
            )),
            lease: std::sync::Arc::new(crate::lease::LeaseClock::new(Duration::ZERO)),
            crashing: std::sync::atomic::AtomicBool::new(false),
            owners: std::sync::RwLock::new(Vec::new()),
        };
        ctx.observe_db_clock(db_now);
        ctx
    }

    pub fn set_owners(&self, table: Vec<crate::store::ShardRecord>) {
        if let Ok(mut t) = self.owners.write() {
            *t = table;
        }
    }

    /// Shares the lease clock the node supervisor keeps.
    pub fn with_lease(mut self, lease: std::sync::Arc<crate::lease::LeaseClock>) -> Self {
        self.lease = lease;
        self
    }

    pub fn node(&self) -> &str {
        &self.config.node
    }

    pub fn rules(&self) -> &Rules {
        &self.config.rules
    }

    /// This node's best estimate of the database clock: guards and timers use it; stored
    /// deadlines are always written by the database itself.
    pub fn now(&self) -> Timestamp {
        Utc::now() + self.clock_offset()
    }

    /// A committed write's database time (see [`DbClock::observe`]).
    pub fn observe_db_clock(&self, db_now: Timestamp) {
        self.db_clock
            .observe((db_now - Utc::now()).num_microseconds().unwrap_or(0));
    }

    /// A probe of the database clock (see [`DbClock::probe`]).
    pub fn probe_db_clock(&self, db_now: Timestamp, sent: Timestamp, rtt: Duration) {
        self.db_clock
            .probe(db_now, sent, rtt, std::time::Instant::now());
    }

    pub fn clock_offset(&self) -> chrono::Duration {
        self.db_clock.offset()
    }

    pub fn is_admin(&self, p: &Principal) -> bool {
        p.groups
            .iter()
            .any(|g| self.config.admin_groups.contains(g))
    }

    /// One outbox row per notice and configured sink.
    pub fn outbox_rows(&self, notices: &[Notice]) -> Vec<OutboxRow> {
        notices
            .iter()
            .flat_map(|n| {
                self.config.notify.sinks.iter().map(move |sink| OutboxRow {
                    sink: sink.name.clone(),
                    kind: n.kind.as_str().to_owned(),
                    payload: n.details.to_string(),
                })
            })
            .collect()
    }

    /// Delay until `at` by this node's estimate of the database clock (zero if past).
    pub fn until(&self, at: Timestamp) -> Duration {
        (at - self.now()).to_std().unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::{DbClock, PROBE_WINDOW};
    use chrono::{Duration, TimeZone, Utc};
    use std::time::{Duration as Std, Instant};

    fn db() -> chrono::DateTime<Utc> {
        Utc.timestamp_opt(1_000_000, 0).single().expect("a time")
    }

    #[test]
    fn the_offset_is_the_midpoint_of_the_probe_with_the_shortest_round_trip() {
        let c = DbClock::default();
        let t0 = Instant::now();
        // 120 s behind: sent at db − 120 s − 1 ms, answered 2 ms later.
        let sent = db() - Duration::seconds(120) - Duration::milliseconds(1);
        c.probe(db(), sent, Std::from_millis(2), t0);
        assert_eq!(c.offset().num_milliseconds(), 120_000);
        // A slower probe that agrees does not move it; a commit below it does not either.
        c.probe(
            db(),
            sent - Duration::milliseconds(4),
            Std::from_millis(10),
            t0,
        );
        c.observe(119_000_000);
        assert_eq!(c.offset().num_milliseconds(), 120_000);
    }

    #[test]
    fn a_clock_that_is_corrected_is_followed_at_the_next_probe() {
        let c = DbClock::default();
        let t0 = Instant::now();
        c.probe(db(), db() - Duration::seconds(120), Std::ZERO, t0);
        assert_eq!(c.offset().num_seconds(), 120);
        // NTP steps the clock forward: the next probe disagrees beyond both round trips.
        c.probe(
            db(),
            db() - Duration::milliseconds(1),
            Std::from_millis(2),
            t0 + Std::from_secs(1),
        );
        assert_eq!(c.offset().num_milliseconds(), 0);
        // And the old probe does not come back.
        c.probe(
            db(),
            db() - Duration::milliseconds(3),
            Std::from_millis(6),
            t0 + Std::from_secs(2),
        );
        assert_eq!(c.offset().num_milliseconds(), 0);
    }

    #[test]
    fn a_clock_that_steps_back_shows_at_the_next_commit_and_stays_shown() {
        let c = DbClock::default();
        let t0 = Instant::now();
        c.probe(
            db(),
            db() - Duration::milliseconds(1),
            Std::from_millis(2),
            t0,
        );
        assert_eq!(c.offset(), Duration::zero());
        // The clock steps back 5 s: a commit proves the offset is at least 5 s.
        c.observe(5_000_000);
        assert_eq!(c.offset(), Duration::seconds(5));
        // The next probe agrees with the commit, not with the probe before the step.
        c.probe(
            db(),
            db() - Duration::seconds(5) - Duration::milliseconds(2),
            Std::from_millis(4),
            t0 + Std::from_secs(1),
        );
        assert_eq!(c.offset(), Duration::seconds(5));
    }

    #[test]
    fn old_probes_leave_the_window() {
        let c = DbClock::default();
        let t0 = Instant::now();
        c.probe(
            db(),
            db() - Duration::milliseconds(1),
            Std::from_millis(2),
            t0,
        );
        // Later probes agree within their round trips but read a little more: once the
        // first leaves the window, the best of the rest counts.
        let later = |at: Instant| {
            c.probe(
                db(),
                db() - Duration::milliseconds(4),
                Std::from_millis(6),
                at,
            );
        };
        later(t0 + PROBE_WINDOW / 2);
        assert_eq!(c.offset().num_milliseconds(), 0);
        later(t0 + PROBE_WINDOW + Std::from_secs(1));
        assert_eq!(c.offset().num_milliseconds(), 1);
    }
}
