//! The Notifier actor: one per node. It claims due outbox rows up to its free delivery slots,
//! delivers each in its own task and records the outcome while it still holds the claim, so
//! a slow receiver never blocks the mailbox and a lost node's rows are picked up elsewhere.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, ActorStatus};
use ractor_cluster::RactorMessage;
use tokio::task::JoinSet;

use super::sink::{Sink, build_sinks};
use crate::config::{Backoff, NotifyConfig};
use crate::error::EngineError;
use crate::stats::{ActorRegistry, ActorStats, names};
use crate::store::{OutboxEntry, SharedStore};

/// How often the outbox gauges are refreshed from the store.
const STATS_EVERY: Duration = Duration::from_secs(5);
/// How long a stopping Notifier waits for its deliveries in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

#[derive(RactorMessage)]
pub enum NotifyMsg {
    /// Claim due rows for the free delivery slots (the poll tick, or a nudge).
    Poll,
    /// Refresh the outbox gauges from the store.
    RefreshStats,
    /// A delivery task ended; its outcome is already recorded in the store.
    Finished { outcome: Outcome },
}

/// What became of one claimed row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Failed; due again after the back-off.
    Retrying,
    /// Failed for the last time: dead-lettered.
    Dead,
    /// The claim lapsed and another node took the row; it decides the outcome.
    ClaimLost,
    /// The outcome could not be recorded; the row is retried when its claim lapses.
    Unrecorded,
}

/// What the handle and the tickers share with the actor: mailbox accounting, and flags that
/// coalesce polls and refreshes so a slow store never fills the mailbox with ticks.
struct Shared {
    stats: Arc<ActorStats>,
    poll_queued: AtomicBool,
    refresh_queued: AtomicBool,
}

impl Shared {
    fn send(&self, me: &ActorRef<NotifyMsg>, msg: NotifyMsg) -> bool {
        self.stats.cast(me, msg)
    }

    fn poll(&self, me: &ActorRef<NotifyMsg>) {
        if !self.poll_queued.swap(true, Ordering::AcqRel) && !self.send(me, NotifyMsg::Poll) {
            self.poll_queued.store(false, Ordering::Release);
        }
    }

    fn refresh(&self, me: &ActorRef<NotifyMsg>) {
        if !self.refresh_queued.swap(true, Ordering::AcqRel)
            && !self.send(me, NotifyMsg::RefreshStats)
        {
            self.refresh_queued.store(false, Ordering::Release);
        }
    }
}

pub struct Notifier;

pub struct NotifierArgs {
    store: SharedStore,
    node: Arc<str>,
    config: NotifyConfig,
    sinks: BTreeMap<String, Arc<dyn Sink>>,
    shared: Arc<Shared>,
    registry: ActorRegistry,
}

pub struct NotifierState {
    args: NotifierArgs,
    tasks: JoinSet<()>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    /// The last claim filled every free slot: more rows may be due.
    backlog: bool,
    store_error: Option<String>,
    delivered: u64,
    failed: u64,
    dead: u64,
}

impl NotifierState {
    fn show(&self) {
        let s = match &self.store_error {
            Some(e) => format!("store unavailable: {e}"),
            None => format!(
                "{} in flight; {} delivered, {} failed, {} dead-lettered since start",
                self.tasks.len(),
                self.delivered,
                self.failed,
                self.dead
            ),
        };
        self.args.shared.stats.set_state(s);
    }

    fn store_failed(&mut self, what: &str, e: &crate::store::StoreError) {
        // Logged once per outage, not once per poll.
        if self.store_error.is_none() {
            tracing::warn!(error = %e, "notifier: {what} failed; retrying every poll");
        }
        self.store_error = Some(e.to_string());
    }

    fn store_ok(&mut self) {
        if self.store_error.take().is_some() {
            tracing::info!("notifier: the store answers again");
        }
    }

    async fn poll(&mut self, me: &ActorRef<NotifyMsg>) {
        while self.tasks.try_join_next().is_some() {}
        let batch = self.args.config.batch as usize;
        let free = batch.saturating_sub(self.tasks.len());
        if free == 0 {
            self.backlog = true;
            return;
        }
        let a = &self.args;
        let claimed = a
            .store
            .claim_outbox(&a.node, free as u32, a.config.claim_ttl)
            .await;
        let rows = match claimed {
            Ok(rows) => rows,
            Err(e) => return self.store_failed("claiming outbox rows", &e),
        };
        self.store_ok();
        self.backlog = rows.len() == free;
        for entry in rows {
            let delivery = Delivery {
                store: self.args.store.clone(),
                node: self.args.node.clone(),
                sink: self.args.sinks.get(&entry.sink).cloned(),
                max_attempts: self.args.config.max_attempts,
                backoff: self.args.config.backoff,
                // Half the claim: the outcome is recorded while this node still holds it.
                bound: self.args.config.claim_ttl / 2,
                entry,
            };
            let shared = self.args.shared.clone();
            let me = me.clone();
            self.tasks.spawn(async move {
                let outcome = delivery.run().await;
                shared.send(&me, NotifyMsg::Finished { outcome });
            });
        }
    }

    async fn refresh(&mut self) {
        let stats = match self.args.store.outbox_stats().await {
            Ok(s) => s,
            Err(e) => return self.store_failed("counting outbox rows", &e),
        };
        self.store_ok();
        // Configured sinks without rows report zeros rather than nothing.
        let mut by_sink: BTreeMap<String, (f64, f64, f64)> = self
            .args
            .sinks
            .keys()
            .map(|s| (s.clone(), (0.0, 0.0, 0.0)))
            .collect();
        for s in stats {
            by_sink.insert(
                s.sink,
                (
                    s.pending as f64,
                    s.oldest_pending_age_seconds,
                    s.dead as f64,
                ),
            );
        }
        for (sink, (depth, age, dead)) in by_sink {
            metrics::gauge!(names::OUTBOX_DEPTH, "sink" => sink.clone()).set(depth);
            metrics::gauge!(names::OUTBOX_OLDEST_AGE, "sink" => sink.clone()).set(age);
            metrics::gauge!(names::OUTBOX_DEAD_LETTERS, "sink" => sink).set(dead);
        }
    }
}

/// One claimed row on its way to its sink.
struct Delivery {
    store: SharedStore,
    node: Arc<str>,
    sink: Option<Arc<dyn Sink>>,
    max_attempts: u32,
    backoff: Backoff,
    bound: Duration,
    entry: OutboxEntry,
}

impl Delivery {
    async fn run(self) -> Outcome {
        let e = &self.entry;
        let bound = self.bound;
        let tried = match &self.sink {
            Some(sink) => match tokio::time::timeout(bound, sink.deliver(e)).await {
                Ok(r) => r.map_err(|err| match err {
                    EngineError::Delivery { reason, .. } => reason,
                    other => other.to_string(),
                }),
                Err(_) => Err(format!("no outcome within {bound:?}")),
            },
            // A node configured differently from the one that enqueued the row: failing
            // it leads to a visible dead letter rather than a row that waits forever.
            None => Err(format!(
                "no sink {:?} is configured on node {}",
                e.sink, self.node
            )),
        };
        let recorded = match &tried {
            Ok(()) => {
                metrics::counter!(names::OUTBOX_DELIVERED, "sink" => e.sink.clone()).increment(1);
                self.store
                    .outbox_delivered(e.id, &self.node)
                    .await
                    .map(|held| {
                        if held {
                            Outcome::Delivered
                        } else {
                            Outcome::ClaimLost
                        }
                    })
            }
            Err(reason) => {
                metrics::counter!(names::OUTBOX_FAILURES, "sink" => e.sink.clone()).increment(1);
                let attempts = u32::try_from(e.attempts).unwrap_or(0).saturating_add(1);
                let retry_in = (attempts < self.max_attempts).then(|| self.backoff.delay(attempts));
                let res = self
                    .store
                    .outbox_failed(e.id, &self.node, reason, retry_in)
                    .await;
                match res {
                    Ok(false) => Ok(Outcome::ClaimLost),
                    Ok(true) if retry_in.is_none() => {
                        tracing::warn!(sink = %e.sink, event_id = %e.event_id, kind = %e.kind, attempts, error = %reason,
                            "notice dead-lettered; re-drive it once the sink is fixed");
                        Ok(Outcome::Dead)
                    }
                    Ok(true) => {
                        tracing::debug!(sink = %e.sink, event_id = %e.event_id, kind = %e.kind, attempts, error = %reason,
                            "delivery failed; retrying later");
                        Ok(Outcome::Retrying)
                    }
                    Err(err) => Err(err),
                }
            }
        };
        recorded.unwrap_or_else(|err| {
            tracing::warn!(sink = %e.sink, event_id = %e.event_id, error = %err,
                "recording a delivery outcome failed; the row is retried when its claim lapses");
            Outcome::Unrecorded
        })
    }
}

impl Actor for Notifier {
    type Msg = NotifyMsg;
    type State = NotifierState;
    type Arguments = NotifierArgs;

    async fn pre_start(
        &self,
        me: ActorRef<NotifyMsg>,
        args: NotifierArgs,
    ) -> Result<NotifierState, ActorProcessingErr> {
        args.registry.register(&args.shared.stats);
        let shared = args.shared.clone();
        let poll_every = args.config.poll_interval;
        let ticker = tokio::spawn(async move {
            let mut poll = tokio::time::interval(poll_every);
            let mut refresh = tokio::time::interval(STATS_EVERY);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = poll.tick() => shared.poll(&me),
                    _ = refresh.tick() => shared.refresh(&me),
                }
                if matches!(
                    me.get_status(),
                    ActorStatus::Stopping | ActorStatus::Stopped
                ) {
                    break;
                }
            }
        });
        let st = NotifierState {
            args,
            tasks: JoinSet::new(),
            ticker: Some(ticker),
            backlog: false,
            store_error: None,
            delivered: 0,
            failed: 0,
            dead: 0,
        };
        st.show();
        Ok(st)
    }

    async fn post_stop(
        &self,
        _me: ActorRef<NotifyMsg>,
        st: &mut NotifierState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = st.ticker.take() {
            t.abort();
        }
        // Deliveries in flight get a moment to record their outcome; the rest keep their
        // claims and are delivered again (by any node) once the claims lapse.
        let drain = async { while st.tasks.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, drain).await;
        st.tasks.abort_all();
        st.args.registry.unregister(&st.args.shared.stats);
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<NotifyMsg>,
        msg: NotifyMsg,
        st: &mut NotifierState,
    ) -> Result<(), ActorProcessingErr> {
        st.args.shared.stats.dequeued();
        match msg {
            NotifyMsg::Poll => {
                st.args.shared.poll_queued.store(false, Ordering::Release);
                st.poll(&me).await;
            }
            NotifyMsg::RefreshStats => {
                st.args
                    .shared
                    .refresh_queued
                    .store(false, Ordering::Release);
                st.refresh().await;
            }
            NotifyMsg::Finished { outcome } => {
                match outcome {
                    Outcome::Delivered => st.delivered += 1,
                    Outcome::Retrying => st.failed += 1,
                    Outcome::Dead => {
                        st.failed += 1;
                        st.dead += 1;
                    }
                    Outcome::ClaimLost | Outcome::Unrecorded => {}
                }
                while st.tasks.try_join_next().is_some() {}
                if st.backlog {
                    st.args.shared.poll(&me);
                }
            }
        }
        st.show();
        Ok(())
    }
}

/// A cloneable handle to this node's Notifier.
#[derive(Clone)]
pub struct NotifierHandle {
    actor: ActorRef<NotifyMsg>,
    shared: Arc<Shared>,
}

impl NotifierHandle {
    /// Builds the sinks (failing on a bad configuration) and starts the Notifier under
    /// `supervisor`.
    pub async fn spawn(
        store: SharedStore,
        node: &str,
        config: NotifyConfig,
        registry: ActorRegistry,
        supervisor: ractor::ActorCell,
    ) -> Result<Self, EngineError> {
        config.validate()?;
        let sinks = build_sinks(&config.sinks)?;
        let shared = Arc::new(Shared {
            stats: ActorStats::new("notifier", node, 0),
            poll_queued: AtomicBool::new(false),
            refresh_queued: AtomicBool::new(false),
        });
        let args = NotifierArgs {
            store,
            node: node.into(),
            config,
            sinks,
            shared: shared.clone(),
            registry,
        };
        let (actor, _) = Actor::spawn_linked(None, Notifier, args, supervisor)
            .await
            .map_err(|e| EngineError::unavailable(format!("could not start the notifier: {e}")))?;
        Ok(NotifierHandle { actor, shared })
    }

    /// Polls the outbox now rather than at the next tick (after a commit or a re-drive).
    /// Nudges coalesce: at most one poll is ever queued.
    pub fn nudge(&self) {
        self.shared.poll(&self.actor);
    }

    pub fn actor(&self) -> &ActorRef<NotifyMsg> {
        &self.actor
    }
}
