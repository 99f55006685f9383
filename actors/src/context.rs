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
    /// A committed write's `db_now − local receive time` (µs): the database read its clock
    /// before the reply arrived, so the sample is a lower bound of the offset. It raises
    /// the estimate (a clock that jumped back shows at the next commit); lowering it is
    /// the probes' business. Before the first probe, the highest recent sample decays by
    /// 100 µs per sample, so one slow commit does not drag every later timer late.
    pub fn observe(&self, sample: i64) {
        let probed = self.probes.lock().map(|q| !q.is_empty()).unwrap_or(false);
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
    /// between `sent` and `received` by this node's clock, so the offset is `db_now −` the
    /// midpoint, to within half the round trip. The estimate becomes the probe with the
    /// shortest round trip of the last [`PROBE_WINDOW`]: it follows a clock that was
    /// corrected or jumped, either way, within that window.
    pub fn probe(
        &self,
        db_now: Timestamp,
        sent: Timestamp,
        received: Timestamp,
        at: std::time::Instant,
    ) {
        let rtt = (received - sent)
            .num_microseconds()
            .unwrap_or(i64::MAX)
            .max(0);
        let sample = (db_now - sent).num_microseconds().unwrap_or(0) - rtt / 2;
        let Ok(mut q) = self.probes.lock() else {
            return;
        };
        q.push_back(Probe { at, rtt, sample });
        while q.len() > 1
            && q.front()
                .is_some_and(|p| at.saturating_duration_since(p.at) > PROBE_WINDOW)
        {
            q.pop_front();
        }
        if let Some(best) = q.iter().min_by_key(|p| p.rtt) {
            self.offset_us.store(best.sample, Ordering::Relaxed);
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
    pub fn probe_db_clock(&self, db_now: Timestamp, sent: Timestamp, received: Timestamp) {
        self.db_clock
            .probe(db_now, sent, received, std::time::Instant::now());
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
    use std::time::Instant;

    #[test]
    fn a_clock_that_was_behind_and_is_corrected_is_followed_within_the_probe_window() {
        let c = DbClock::default();
        let db = Utc.timestamp_opt(1_000_000, 0).single().expect("a time");
        let t0 = Instant::now();
        // 120 s behind: the node reads db − 120 s, round trip 2 ms.
        let local = db - Duration::seconds(120);
        c.probe(
            db,
            local - Duration::milliseconds(1),
            local + Duration::milliseconds(1),
            t0,
        );
        assert_eq!(c.offset().num_milliseconds(), 120_000);
        // Commits cannot lower it ...
        c.observe(0);
        assert_eq!(c.offset().num_milliseconds(), 120_000);
        // ... probes after the correction do, once the old ones leave the window.
        let probe_at = |at: Instant| {
            c.probe(
                db,
                db - Duration::milliseconds(2),
                db + Duration::milliseconds(2),
                at,
            );
        };
        probe_at(t0 + PROBE_WINDOW / 2);
        assert_eq!(
            c.offset().num_milliseconds(),
            120_000,
            "the shorter round trip wins"
        );
        probe_at(t0 + PROBE_WINDOW + std::time::Duration::from_secs(1));
        assert_eq!(c.offset().num_milliseconds(), 0);
    }

    #[test]
    fn a_clock_that_jumps_back_shows_at_the_next_commit_and_one_that_jumps_ahead_at_probes() {
        let c = DbClock::default();
        let db = Utc.timestamp_opt(1_000_000, 0).single().expect("a time");
        let t0 = Instant::now();
        c.probe(db, db, db, t0);
        assert_eq!(c.offset(), Duration::zero());
        c.observe(5_000_000);
        assert_eq!(
            c.offset(),
            Duration::seconds(5),
            "a commit raises it at once"
        );
        let ahead = db + Duration::seconds(90);
        c.probe(db, ahead, ahead, t0 + PROBE_WINDOW * 2);
        assert_eq!(c.offset(), Duration::seconds(-90));
    }
}
