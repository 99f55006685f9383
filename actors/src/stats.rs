//! What every actor exposes about itself (kind, id, state, mailbox depth, restarts, last
//! activity) for `jitsudo server actors` and the actor-health metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use serde::Serialize;

use crate::domain::Timestamp;

/// Metric names, in one place so dashboards and docs can rely on them.
pub mod names {
    pub const ACTORS_LIVE: &str = "jitsudo_actors_live";
    pub const ACTOR_MAILBOX: &str = "jitsudo_actor_mailbox_depth";
    pub const ACTOR_RESTARTS: &str = "jitsudo_actor_restarts_total";
    pub const ACTOR_HANDLER_SECONDS: &str = "jitsudo_actor_handler_seconds";
    pub const TRANSITIONS: &str = "jitsudo_request_transitions_total";
    pub const REFUSALS: &str = "jitsudo_request_refusals_total";
    pub const STALE_WRITES: &str = "jitsudo_fenced_stale_writes_total";
    pub const SWEEP_RECOVERED: &str = "jitsudo_sweep_recovered_total";
    pub const EXPIRY_ISSUE_LAG: &str = "jitsudo_expiry_issue_lag_seconds";
    pub const EXPIRY_LAG: &str = "jitsudo_expiry_lag_seconds";
    pub const REVOCATIONS_STUCK: &str = "jitsudo_revocations_stuck";
    pub const PROVIDER_CALL_SECONDS: &str = "jitsudo_provider_call_seconds";
    pub const PROVIDER_CALLS: &str = "jitsudo_provider_calls_total";
    pub const POLICY_EVAL_SECONDS: &str = "jitsudo_policy_evaluation_seconds";
    pub const SHARDS_OWNED: &str = "jitsudo_shard_leases_owned";
    pub const SHARD_TAKEOVERS: &str = "jitsudo_shard_takeovers_total";
    pub const SHARD_HANDOVERS: &str = "jitsudo_shard_handovers_total";
    pub const SHARD_LEASES_LOST: &str = "jitsudo_shard_leases_lost_total";
    pub const GRANTS_FENCED: &str = "jitsudo_grants_self_fenced_total";
    pub const ROUTED_CALLS: &str = "jitsudo_routed_calls_total";
    pub const MESH_PEERS: &str = "jitsudo_mesh_peers";
    pub const MESH_DIALS: &str = "jitsudo_mesh_dials_total";
    pub const SHARDS_CONFIGURED: &str = "jitsudo_shards_configured";
    pub const SHARDS_UNOWNED: &str = "jitsudo_shards_unowned";
    pub const TOKEN_LEEWAY: &str = "jitsudo_token_leeway_seconds";
    pub const CLOCK_OFFSET: &str = "jitsudo_clock_offset_seconds";
    pub const LEASE_REMAINING: &str = "jitsudo_lease_usable_seconds";
    pub const OUTBOX_DEPTH: &str = "jitsudo_outbox_depth";
    pub const OUTBOX_OLDEST_AGE: &str = "jitsudo_outbox_oldest_age_seconds";
    pub const OUTBOX_DEAD_LETTERS: &str = "jitsudo_outbox_dead_letters";
    pub const OUTBOX_DELIVERED: &str = "jitsudo_outbox_delivered_total";
    pub const OUTBOX_FAILURES: &str = "jitsudo_outbox_failures_total";
    pub const AUDIT_CHAIN_LENGTH: &str = "jitsudo_audit_chain_length";
    pub const AUDIT_CHAINED: &str = "jitsudo_audit_chained_total";
    pub const AUDIT_UNCHAINED: &str = "jitsudo_audit_unchained";
    pub const AUDIT_UNCHAINED_AGE: &str = "jitsudo_audit_unchained_oldest_age_seconds";
    pub const AUDIT_CHECKPOINTS: &str = "jitsudo_audit_checkpoints_total";
    pub const COMMIT_ANNOUNCE_FAILURES: &str = "jitsudo_commit_announce_failures_total";
    pub const RECONCILE_PASSES: &str = "jitsudo_reconcile_passes_total";
    pub const RECONCILE_SECONDS: &str = "jitsudo_reconcile_duration_seconds";
    pub const RECONCILE_ORPHANS: &str = "jitsudo_reconcile_orphans_reaped_total";
    pub const RECONCILE_DRIFT: &str = "jitsudo_reconcile_drift_detected_total";
    pub const RECONCILE_TOMBSTONES: &str = "jitsudo_reconcile_tombstones_removed_total";
}

/// Every actor kind a node runs (the `kind` label of the actor-health series).
pub const KINDS: [&str; 10] = [
    "node",
    "membership",
    "policy",
    "provider",
    "notifier",
    "audit_sequencer",
    "reconciler",
    "mesh",
    "shard",
    "request",
];

/// The providers' operations (the `op` label of the provider series).
pub const PROVIDER_OPS: [&str; 7] = [
    "validate",
    "grant",
    "revoke",
    "inspect",
    "credentials",
    "list",
    "forget",
];

/// Makes every series the engine exports exist from the start, with each label set it can
/// have: counters at 0, histograms empty, gauges at their value (registering one does not
/// change it). Without this a quiet node exports nothing for a rate to work on, and a
/// dashboard says "no data" where it means 0. Gauges whose value only their actor knows
/// (the audit chain's, the outbox's) appear when that actor first reports.
pub fn register_series(providers: &[String], sinks: &[String]) {
    use crate::domain::{Event, State};
    use metrics::{counter, gauge, histogram};
    use names::*;
    for kind in KINDS {
        gauge!(ACTORS_LIVE, "kind" => kind).increment(0.0);
        gauge!(ACTOR_MAILBOX, "kind" => kind).increment(0.0);
        counter!(ACTOR_RESTARTS, "kind" => kind).increment(0);
        let _ = histogram!(ACTOR_HANDLER_SECONDS, "kind" => kind);
    }
    counter!(TRANSITIONS, "from" => "NONE", "to" => State::Pending.as_str()).increment(0);
    for from in State::ALL {
        for to in from.moves() {
            counter!(TRANSITIONS, "from" => from.as_str(), "to" => to.as_str()).increment(0);
        }
    }
    for event in Event::NAMES {
        counter!(REFUSALS, "event" => event).increment(0);
    }
    for name in [
        STALE_WRITES,
        SWEEP_RECOVERED,
        SHARD_TAKEOVERS,
        SHARD_HANDOVERS,
        SHARD_LEASES_LOST,
        GRANTS_FENCED,
        MESH_DIALS,
        AUDIT_CHAINED,
        AUDIT_CHECKPOINTS,
        COMMIT_ANNOUNCE_FAILURES,
    ] {
        counter!(name).increment(0);
    }
    for outcome in ["answered", "timeout", "unavailable"] {
        counter!(ROUTED_CALLS, "outcome" => outcome).increment(0);
    }
    // A node without a mesh has no peers: its 0 is true (and, in a cluster of several, a
    // reason for the mesh alert, as calls for the others' shards cannot be routed).
    for name in [
        REVOCATIONS_STUCK,
        SHARDS_OWNED,
        CLOCK_OFFSET,
        LEASE_REMAINING,
        MESH_PEERS,
        SHARDS_UNOWNED,
    ] {
        gauge!(name).increment(0.0);
    }
    let _ = histogram!(EXPIRY_ISSUE_LAG);
    let _ = histogram!(EXPIRY_LAG);
    for rule in ["decision", "approver_allowed"] {
        let _ = histogram!(POLICY_EVAL_SECONDS, "rule" => rule);
    }
    for provider in providers {
        for op in PROVIDER_OPS {
            let _ = histogram!(PROVIDER_CALL_SECONDS, "provider" => provider.clone(), "op" => op);
            counter!(PROVIDER_CALLS, "provider" => provider.clone(), "op" => op, "outcome" => "ok")
                .increment(0);
            for class in jitsudo_providers::ErrorClass::ALL {
                counter!(PROVIDER_CALLS, "provider" => provider.clone(), "op" => op, "outcome" => class.as_str())
                    .increment(0);
            }
        }
        for outcome in ["ok", "failed"] {
            counter!(RECONCILE_PASSES, "provider" => provider.clone(), "outcome" => outcome)
                .increment(0);
        }
        let _ = histogram!(RECONCILE_SECONDS, "provider" => provider.clone());
        for name in [RECONCILE_ORPHANS, RECONCILE_DRIFT, RECONCILE_TOMBSTONES] {
            counter!(name, "provider" => provider.clone()).increment(0);
        }
    }
    for sink in sinks {
        counter!(OUTBOX_DELIVERED, "sink" => sink.clone()).increment(0);
        counter!(OUTBOX_FAILURES, "sink" => sink.clone()).increment(0);
        for name in [OUTBOX_DEPTH, OUTBOX_OLDEST_AGE, OUTBOX_DEAD_LETTERS] {
            gauge!(name, "sink" => sink.clone()).increment(0.0);
        }
    }
}

/// Live statistics of one actor, shared between the actor and its handles.
#[derive(Debug)]
pub struct ActorStats {
    pub kind: &'static str,
    pub id: String,
    state: Mutex<String>,
    mailbox: AtomicUsize,
    restarts: AtomicU32,
    last_event_micros: AtomicI64,
}

impl ActorStats {
    pub fn new(kind: &'static str, id: impl Into<String>, restarts: u32) -> Arc<Self> {
        Arc::new(ActorStats {
            kind,
            id: id.into(),
            state: Mutex::new(String::new()),
            mailbox: AtomicUsize::new(0),
            restarts: AtomicU32::new(restarts),
            last_event_micros: AtomicI64::new(Utc::now().timestamp_micros()),
        })
    }

    /// A message was sent; returns the depth including it.
    pub fn enqueued(&self) -> usize {
        let depth = self.mailbox.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(names::ACTOR_MAILBOX, "kind" => self.kind).increment(1.0);
        depth
    }

    /// A message was taken out of the mailbox.
    pub fn dequeued(&self) {
        let _ = self
            .mailbox
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        metrics::gauge!(names::ACTOR_MAILBOX, "kind" => self.kind).decrement(1.0);
        self.last_event_micros
            .store(Utc::now().timestamp_micros(), Ordering::Relaxed);
    }

    /// Casts to this actor, keeping its mailbox depth: `false` when it is not running.
    pub fn cast<M: ractor::Message>(&self, actor: &ractor::ActorRef<M>, msg: M) -> bool {
        self.enqueued();
        if actor.cast(msg).is_err() {
            self.dequeued();
            return false;
        }
        true
    }

    pub fn mailbox(&self) -> usize {
        self.mailbox.load(Ordering::Relaxed)
    }

    /// Casts `tick()` to `actor` every `period`, the first after one period, and only while
    /// the previous one has been taken: a slow handler never finds a pile of ticks. The task
    /// ends when the actor is gone; abort it to stop sooner.
    pub fn tick_every<M: ractor::Message>(
        self: &Arc<Self>,
        actor: ractor::ActorRef<M>,
        period: std::time::Duration,
        tick: fn() -> M,
    ) -> tokio::task::JoinHandle<()> {
        let stats = self.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now() + period;
            let mut every = tokio::time::interval_at(start, period);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                if stats.mailbox() == 0 && !stats.cast(&actor, tick()) {
                    break;
                }
            }
        })
    }

    pub fn set_state(&self, s: impl Into<String>) {
        if let Ok(mut g) = self.state.lock() {
            *g = s.into();
        }
    }

    pub fn snapshot(&self) -> ActorSnapshot {
        ActorSnapshot {
            kind: self.kind.to_owned(),
            id: self.id.clone(),
            state: self.state.lock().map(|s| s.clone()).unwrap_or_default(),
            mailbox: self.mailbox(),
            restarts: self.restarts.load(Ordering::Relaxed),
            last_event_at: chrono::DateTime::from_timestamp_micros(
                self.last_event_micros.load(Ordering::Relaxed),
            )
            .unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ActorSnapshot {
    pub kind: String,
    pub id: String,
    pub state: String,
    pub mailbox: usize,
    pub restarts: u32,
    pub last_event_at: Timestamp,
}

/// Actors by (kind, id).
type ActorMap = BTreeMap<(&'static str, String), Arc<ActorStats>>;

/// The live actors of one node.
#[derive(Clone, Debug, Default)]
pub struct ActorRegistry {
    inner: Arc<Mutex<ActorMap>>,
}

impl ActorRegistry {
    pub fn register(&self, stats: &Arc<ActorStats>) {
        if let Ok(mut m) = self.inner.lock()
            && m.insert((stats.kind, stats.id.clone()), stats.clone())
                .is_none()
        {
            metrics::gauge!(names::ACTORS_LIVE, "kind" => stats.kind).increment(1.0);
        }
    }

    pub fn unregister(&self, stats: &ActorStats) {
        if let Ok(mut m) = self.inner.lock() {
            let key = (stats.kind, stats.id.clone());
            // Only remove the entry if it is this very actor (a rebuilt one may have replaced it).
            if m.get(&key)
                .is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), stats))
            {
                m.remove(&key);
                metrics::gauge!(names::ACTORS_LIVE, "kind" => stats.kind).decrement(1.0);
            }
        }
    }

    pub fn snapshot(&self) -> Vec<ActorSnapshot> {
        self.inner
            .lock()
            .map(|m| m.values().map(|s| s.snapshot()).collect())
            .unwrap_or_default()
    }

    pub fn count(&self, kind: &str) -> usize {
        self.inner
            .lock()
            .map(|m| m.keys().filter(|(k, _)| *k == kind).count())
            .unwrap_or(0)
    }
}
