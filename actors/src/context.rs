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

pub struct NodeContext {
    pub config: EngineConfig,
    pub incarnation: Uuid,
    pub store: SharedStore,
    pub policy: PolicyHandle,
    pub providers: BTreeMap<String, ProviderHandle>,
    pub registry: ActorRegistry,
    /// Database clock minus this node's clock, learned from every committed write.
    clock_offset_us: AtomicI64,
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
            clock_offset_us: AtomicI64::new(i64::MIN),
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

    /// A sample `db_now − local receive time` underestimates the offset by the reply's
    /// latency, so one slow commit must not drag every later timer late: keep the highest
    /// recent sample, letting it decay by 100 µs per sample to follow a real clock change.
    pub fn observe_db_clock(&self, db_now: Timestamp) {
        let sample = (db_now - Utc::now()).num_microseconds().unwrap_or(0);
        let _ = self
            .clock_offset_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == i64::MIN {
                    sample
                } else {
                    sample.max(old - 100)
                })
            });
    }

    pub fn clock_offset(&self) -> chrono::Duration {
        match self.clock_offset_us.load(Ordering::Relaxed) {
            i64::MIN => chrono::Duration::zero(),
            us => chrono::Duration::microseconds(us),
        }
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
