//! ShardActor: owns the live requests of one shard. It loads them when it starts, creates
//! new ones (the create is fenced by this shard's lease), routes commands to their actors
//! without waiting on them, and rebuilds any RequestActor that stops unexpectedly from the
//! database. Requests with nothing in flight sleep here as data: one timer wheel per shard
//! holds their next deadlines and starts an actor when one is due, as does the next
//! command.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;

use super::Command;
use super::actor::{
    ASLEEP, PASSIVATED, RequestActor, RequestArgs, RequestMsg, RequestState, provider_call, send,
};
use crate::context::NodeContext;
use crate::domain::{
    Event, Refusal, Request, RequestId, State, Timestamp, Transition, step, timers,
};
use crate::error::EngineError;
use crate::stats::{ActorStats, names};
use crate::store::{Fence, Persist, Write};

#[derive(RactorMessage)]
pub enum ShardMsg {
    Create {
        tr: Box<Transition>,
        reply: RpcReplyPort<Result<Request, EngineError>>,
    },
    Route {
        id: RequestId,
        cmd: Command,
        reply: RpcReplyPort<Result<Request, EngineError>>,
    },
    Rebuild {
        id: RequestId,
        restarts: u32,
    },
    /// The earliest deadline in the wheel may be due.
    Wake,
    /// A create committed (by a task of its own: the shard's timers never wait for a
    /// commit): admit the request, then answer.
    Created {
        req: Box<Request>,
        reply: RpcReplyPort<Result<Request, EngineError>>,
    },
    /// Look in the database for overdue requests (the safety net).
    Sweep,
    /// What the sweep's query found (read by a task: the timers never wait for it).
    Swept(Vec<RequestId>),
    /// The revokes issued for a sleeping request's expiry came back, and a slot for
    /// recording it is free.
    Revoked {
        id: RequestId,
        expires_at: Timestamp,
        outcomes: Vec<Event>,
        slot: OwnedSemaphorePermit,
    },
    /// The live actor of a request on this shard, woken if the request sleeps.
    Lookup {
        id: RequestId,
        reply: RpcReplyPort<Option<ActorRef<RequestMsg>>>,
    },
}

pub struct ShardActor;

pub struct ShardArgs {
    pub ctx: Arc<NodeContext>,
    pub fence: Fence,
    pub stats: Arc<ActorStats>,
}

struct Live {
    actor: ActorRef<RequestMsg>,
    stats: Arc<ActorStats>,
    restarts: u32,
}

/// A live request without an actor: its data, its entry in the actor list, and the
/// deadline it sits in the wheel for.
struct Asleep {
    req: Request,
    stats: Arc<ActorStats>,
    restarts: u32,
    due: Option<Instant>,
    /// Its expiry's revokes are in flight (`ShardMsg::Revoked` will start its actor).
    revoking: bool,
}

pub struct ShardState {
    ctx: Arc<NodeContext>,
    fence: Fence,
    stats: Arc<ActorStats>,
    live: HashMap<RequestId, Live>,
    by_actor: HashMap<ActorId, RequestId>,
    asleep: HashMap<RequestId, Asleep>,
    /// Next deadline of each sleeping request. An entry whose request woke up (or now
    /// sleeps until another time) is skipped when it comes due.
    wheel: BTreeSet<(Instant, RequestId)>,
    /// The one task that sends `Wake` at the wheel's earliest deadline.
    alarm: Option<(Instant, JoinHandle<()>)>,
    /// Sends `Sweep` every `sweep_every`.
    sweeper: Option<JoinHandle<()>>,
    /// A sweep's query is under way.
    sweeping: bool,
}

impl ShardState {
    /// A request joins the shard awake when it has something to do now, asleep otherwise.
    async fn admit(
        &mut self,
        me: &ActorRef<ShardMsg>,
        req: Request,
        stats: Option<Arc<ActorStats>>,
        restarts: u32,
    ) -> Result<(), EngineError> {
        let stats =
            stats.unwrap_or_else(|| ActorStats::new("request", req.id.to_string(), restarts));
        self.ctx.registry.register(&stats);
        if super::has_work_now(&req, &self.ctx) {
            self.spawn_request(me, req, stats, restarts, Vec::new(), None)
                .await
        } else {
            self.sleep(me, req, stats, restarts);
            Ok(())
        }
    }

    async fn spawn_request(
        &mut self,
        me: &ActorRef<ShardMsg>,
        req: Request,
        stats: Arc<ActorStats>,
        restarts: u32,
        revoked: Vec<Event>,
        record_slot: Option<OwnedSemaphorePermit>,
    ) -> Result<(), EngineError> {
        let id = req.id;
        let args = RequestArgs {
            ctx: self.ctx.clone(),
            req,
            fence: self.fence.clone(),
            stats: stats.clone(),
            revoked,
            record_slot,
        };
        let (actor, _) = Actor::spawn_linked(None, RequestActor, args, me.get_cell())
            .await
            .map_err(|e| {
                EngineError::unavailable(format!("could not start the request actor: {e}"))
            })?;
        self.by_actor.insert(actor.get_id(), id);
        self.live.insert(
            id,
            Live {
                actor,
                stats,
                restarts,
            },
        );
        self.show();
        Ok(())
    }

    fn sleep(
        &mut self,
        me: &ActorRef<ShardMsg>,
        req: Request,
        stats: Arc<ActorStats>,
        restarts: u32,
    ) {
        stats.set_state(req.state.as_str());
        let due = timers(&req)
            .into_iter()
            .map(|(_, at)| Instant::now() + self.ctx.until(at))
            .min();
        if let Some(at) = due {
            self.wheel.insert((at, req.id));
            self.set_alarm(me, at);
        }
        self.asleep.insert(
            req.id,
            Asleep {
                req,
                stats,
                restarts,
                due,
                revoking: false,
            },
        );
        self.show();
    }

    /// Starts the actor of a sleeping request; `false` when it does not sleep here.
    async fn wake(&mut self, me: &ActorRef<ShardMsg>, id: RequestId) -> Result<bool, EngineError> {
        self.wake_revoked(me, id, Vec::new(), None).await
    }

    async fn wake_revoked(
        &mut self,
        me: &ActorRef<ShardMsg>,
        id: RequestId,
        revoked: Vec<Event>,
        record_slot: Option<OwnedSemaphorePermit>,
    ) -> Result<bool, EngineError> {
        let Some(a) = self.asleep.remove(&id) else {
            return Ok(false);
        };
        let (stats, restarts) = (a.stats.clone(), a.restarts);
        if let Err(e) = self
            .spawn_request(me, a.req.clone(), stats, restarts, revoked, record_slot)
            .await
        {
            // Keep it asleep rather than lose it, and try again in a second.
            let retry = Instant::now() + Duration::from_secs(1);
            self.wheel.insert((retry, id));
            self.set_alarm(me, retry);
            self.asleep.insert(
                id,
                Asleep {
                    due: Some(retry),
                    ..a
                },
            );
            return Err(e);
        }
        Ok(true)
    }

    fn set_alarm(&mut self, me: &ActorRef<ShardMsg>, at: Instant) {
        if self.alarm.as_ref().is_some_and(|(armed, _)| *armed <= at) {
            return;
        }
        if let Some((_, task)) = self.alarm.take() {
            task.abort();
        }
        let (me, stats) = (me.clone(), self.stats.clone());
        let task = tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            stats.cast(&me, ShardMsg::Wake);
        });
        self.alarm = Some((at, task));
    }

    /// Wakes every sleeping request whose deadline has come, then re-arms the alarm.
    /// Expiries go first: their revokes are issued before any actor starts (revocation is
    /// safe to repeat and needs no commit before it, docs/engine.md), so that a burst of
    /// expiries is not revoked at the pace of actor starts and commits.
    async fn ring(&mut self, me: &ActorRef<ShardMsg>) {
        self.alarm = None;
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(&(at, id)) = self.wheel.first() {
            if at > now {
                self.set_alarm(me, at);
                break;
            }
            self.wheel.pop_first();
            if self.asleep.get(&id).is_some_and(|a| a.due == Some(at)) {
                due.push(id);
            }
        }
        for id in due {
            // An expiry: its revokes go out now, the actor starts when they are back.
            if self.issue_expiry_revokes(me, id) {
                if let Some(a) = self.asleep.get_mut(&id) {
                    a.revoking = true;
                }
                continue;
            }
            if let Err(e) = self.wake(me, id).await {
                tracing::error!(request = %id, error = %e, "a deadline came but its request actor did not start; retrying in 1 s");
            }
        }
    }

    /// The revokes of a sleeping request's expiry came back: its actor starts with them (or,
    /// if a command woke it meanwhile, they go to that actor).
    async fn revoked(
        &mut self,
        me: &ActorRef<ShardMsg>,
        id: RequestId,
        expires_at: Timestamp,
        outcomes: Vec<Event>,
        slot: OwnedSemaphorePermit,
    ) {
        if let Some(live) = self.live.get(&id) {
            send(
                &live.actor,
                &live.stats,
                RequestMsg::Internal(Event::Expiry { expires_at }),
            );
            for outcome in outcomes {
                send(&live.actor, &live.stats, RequestMsg::Internal(outcome));
            }
            return;
        }
        if let Err(e) = self.wake_revoked(me, id, outcomes, Some(slot)).await {
            tracing::error!(request = %id, error = %e, "an expired request's actor did not start; retrying in 1 s");
        }
    }

    /// For a sleeping ACTIVE request past its expiry: issues the revokes its expiry calls
    /// for (docs/engine.md: revocation is safe to repeat and needs no commit before it), in one
    /// task that reports back with `Revoked`. A burst of expiries is thus revoked at the
    /// provider's pace, not at the pace of actor starts and commits. `false` when this is
    /// not such a request.
    fn issue_expiry_revokes(&self, me: &ActorRef<ShardMsg>, id: RequestId) -> bool {
        let Some(req) = self.asleep.get(&id).map(|a| &a.req) else {
            return false;
        };
        let Some(expires_at) = req.expires_at.filter(|_| req.state == State::Active) else {
            return false;
        };
        let Ok(tr) = step(
            req,
            Event::Expiry { expires_at },
            self.ctx.now(),
            self.ctx.rules(),
        ) else {
            return false;
        };
        let calls: Vec<_> = tr
            .revoke_first
            .iter()
            .filter_map(|&grant_id| provider_call(&self.ctx, &tr.next, grant_id, false))
            .collect();
        if calls.is_empty() {
            return false;
        }
        let (me, stats, slots) = (
            me.clone(),
            self.stats.clone(),
            self.ctx.expiry_records.clone(),
        );
        tokio::spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            for call in calls {
                running.spawn(call);
            }
            // A call that panicked reports nothing: the actor's expiry issues it again.
            let mut outcomes = Vec::new();
            while let Some(done) = running.join_next().await {
                outcomes.extend(done.ok().map(|(event, _retry_after)| event));
            }
            // The actor starts when its records can be written: a burst's actor starts and
            // commits do not compete with its revokes.
            let Ok(slot) = slots.acquire_owned().await else {
                return;
            };
            stats.cast(
                &me,
                ShardMsg::Revoked {
                    id,
                    expires_at,
                    outcomes,
                    slot,
                },
            );
        });
        true
    }

    /// The safety net behind the timers: requests of this shard that the database says are
    /// overdue but that this shard does not know about (or whose deadline its wheel missed)
    /// are loaded and woken; their actors act on the overdue deadline at once. Requests
    /// with a live actor are at work already (a revoke retrying, say) and are left alone.
    fn sweep(&mut self, me: &ActorRef<ShardMsg>) {
        if self.sweeping {
            return;
        }
        self.sweeping = true;
        let (ctx, shard, me, stats) = (
            self.ctx.clone(),
            self.fence.shard,
            me.clone(),
            self.stats.clone(),
        );
        tokio::spawn(async move {
            let overdue = ctx
                .store
                .overdue_requests(shard, SWEEP_GRACE, SWEEP_STUCK, SWEEP_BATCH)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(shard, error = %e, "the overdue sweep could not read the store");
                    Vec::new()
                });
            stats.cast(&me, ShardMsg::Swept(overdue));
        });
    }

    async fn swept(&mut self, me: &ActorRef<ShardMsg>, overdue: Vec<RequestId>) {
        for id in overdue {
            let asleep = self.asleep.get(&id).map(|a| a.revoking);
            if self.live.contains_key(&id) || asleep == Some(true) {
                continue;
            }
            metrics::counter!(names::SWEEP_RECOVERED).increment(1);
            if asleep.is_some() {
                tracing::warn!(request = %id, "overdue but asleep: the sweep wakes it");
                if let Err(e) = self.wake(me, id).await {
                    tracing::error!(request = %id, error = %e, "the sweep could not wake an overdue request");
                }
            } else {
                tracing::warn!(request = %id, "overdue and unknown to its shard: the sweep loads it");
                let loaded = match self.ctx.store.get(id).await {
                    Ok(Some(req)) if !req.state.is_terminal() => self.admit(me, req, None, 0).await,
                    Ok(_) => Ok(()),
                    Err(e) => Err(EngineError::unavailable(format!("the store failed: {e}"))),
                };
                if let Err(e) = loaded {
                    tracing::error!(request = %id, error = %e, "the sweep could not load an overdue request");
                }
            }
        }
    }

    /// A create commits in a task of its own (a shard's timers never wait for a commit);
    /// the committed request comes back as `Created`, is admitted, and then answered. If the
    /// shard stopped meanwhile, the answer goes out all the same (the next owner loads it).
    fn create(
        &self,
        me: &ActorRef<ShardMsg>,
        tr: Transition,
        reply: RpcReplyPort<Result<Request, EngineError>>,
    ) {
        let (ctx, fence, me, stats) = (
            self.ctx.clone(),
            self.fence.clone(),
            me.clone(),
            self.stats.clone(),
        );
        tokio::spawn(async move {
            let req = match commit_create(&ctx, &fence, tr).await {
                Ok(req) => req,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            };
            stats.enqueued();
            let created = ShardMsg::Created {
                req: Box::new(req),
                reply,
            };
            if let Err(e) = me.cast(created) {
                stats.dequeued();
                if let ractor::MessagingErr::SendErr(ShardMsg::Created { req, reply }) = e {
                    let _ = reply.send(Ok(*req));
                }
            }
        });
    }

    fn show(&self) {
        self.stats.set_state(format!(
            "epoch {} · {} live ({} asleep)",
            self.fence.epoch,
            self.live.len() + self.asleep.len(),
            self.asleep.len()
        ));
    }

    /// Forwards the command with its reply port: the shard never waits on a request actor.
    fn forward(
        &self,
        id: RequestId,
        cmd: Command,
        reply: RpcReplyPort<Result<Request, EngineError>>,
    ) {
        let Some(live) = self.live.get(&id) else {
            let _ = reply.send(Err(EngineError::unavailable(
                "the request actor is restarting",
            )));
            return;
        };
        if live.stats.mailbox() >= self.ctx.config.max_mailbox {
            let _ = reply.send(Err(EngineError::Overloaded {
                what: format!("request {id} has too many queued commands"),
            }));
            return;
        }
        if !send(&live.actor, &live.stats, RequestMsg::Command { cmd, reply }) {
            // The reply port went with the message; the caller sees the actor stop and retries.
            tracing::debug!(request = %id, "request actor stopped while routing");
        }
    }
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        me: ActorRef<ShardMsg>,
        args: ShardArgs,
    ) -> Result<ShardState, ActorProcessingErr> {
        args.ctx.registry.register(&args.stats);
        let mut st = ShardState {
            ctx: args.ctx,
            fence: args.fence,
            stats: args.stats,
            live: HashMap::new(),
            by_actor: HashMap::new(),
            asleep: HashMap::new(),
            wheel: BTreeSet::new(),
            alarm: None,
            sweeper: None,
            sweeping: false,
        };
        let reqs = st.ctx.store.live_requests(&[st.fence.shard]).await?;
        for req in reqs {
            st.admit(&me, req, None, 0).await?;
        }
        st.show();
        st.sweeper = Some(
            st.stats
                .tick_every(me.clone(), st.ctx.config.sweep_every, || ShardMsg::Sweep),
        );
        metrics::gauge!(names::SHARDS_OWNED).increment(1.0);
        Ok(st)
    }

    async fn post_stop(
        &self,
        me: ActorRef<ShardMsg>,
        st: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        me.stop_children_and_wait(Some("shard stopping".into()), Some(Duration::from_secs(5)))
            .await;
        for task in [st.alarm.take().map(|(_, t)| t), st.sweeper.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
        for stats in st
            .live
            .values()
            .map(|l| &l.stats)
            .chain(st.asleep.values().map(|a| &a.stats))
        {
            st.ctx.registry.unregister(stats);
        }
        st.ctx.registry.unregister(&st.stats);
        metrics::gauge!(names::SHARDS_OWNED).decrement(1.0);
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<ShardMsg>,
        msg: ShardMsg,
        st: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        st.stats.dequeued();
        match msg {
            ShardMsg::Create { tr, reply } => st.create(&me, *tr, reply),
            ShardMsg::Created { req, reply } => {
                // A command may have loaded it from the database meanwhile.
                if !st.live.contains_key(&req.id)
                    && !st.asleep.contains_key(&req.id)
                    && let Err(e) = st.admit(&me, (*req).clone(), None, 0).await
                {
                    // Committed all the same: the next command or deadline loads it.
                    tracing::error!(request = %req.id, error = %e, "a created request could not be admitted to its shard");
                }
                let _ = reply.send(Ok(*req));
            }
            ShardMsg::Route { id, cmd, reply } => {
                match st.wake(&me, id).await {
                    Ok(_) => {}
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return Ok(());
                    }
                }
                if !st.live.contains_key(&id) {
                    match st.ctx.store.get(id).await {
                        Ok(None) => {
                            let _ = reply.send(Err(EngineError::NotFound { id }));
                            return Ok(());
                        }
                        Ok(Some(req)) if req.state.is_terminal() => {
                            let _ = reply.send(Err(Refusal::Terminal { state: req.state }.into()));
                            return Ok(());
                        }
                        Ok(Some(req)) => {
                            let stats = ActorStats::new("request", id.to_string(), 0);
                            st.ctx.registry.register(&stats);
                            if let Err(e) =
                                st.spawn_request(&me, req, stats, 0, Vec::new(), None).await
                            {
                                let _ = reply.send(Err(e));
                                return Ok(());
                            }
                        }
                        Err(e) => {
                            let _ = reply.send(Err(EngineError::unavailable(format!(
                                "the store failed: {e}"
                            ))));
                            return Ok(());
                        }
                    }
                }
                st.forward(id, cmd, reply);
            }
            ShardMsg::Wake => st.ring(&me).await,
            ShardMsg::Sweep => st.sweep(&me),
            ShardMsg::Swept(overdue) => {
                st.sweeping = false;
                st.swept(&me, overdue).await;
            }
            ShardMsg::Revoked {
                id,
                expires_at,
                outcomes,
                slot,
            } => st.revoked(&me, id, expires_at, outcomes, slot).await,
            ShardMsg::Lookup { id, reply } => {
                let _ = st.wake(&me, id).await;
                let _ = reply.send(st.live.get(&id).map(|l| l.actor.clone()));
            }
            ShardMsg::Rebuild { id, restarts } => {
                if st.live.contains_key(&id) || st.asleep.contains_key(&id) {
                    return Ok(());
                }
                let read = st.ctx.store.get(id).await;
                // The write that stopped the actor may have committed without its answer
                // (outcome unknown): tell the watchers what the store holds.
                if let Ok(Some(req)) = &read {
                    let _ = st.ctx.commits.send((id, req.version));
                }
                match read {
                    Ok(Some(req)) if !req.state.is_terminal() => {
                        metrics::counter!(names::ACTOR_RESTARTS, "kind" => "request").increment(1);
                        if let Err(e) = st.admit(&me, req, None, restarts).await {
                            tracing::error!(request = %id, error = %e, "rebuilding a request actor failed; retrying");
                            rebuild_later(&me, &st.stats, id, restarts);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(request = %id, error = %e, "cannot reload a request; retrying");
                        rebuild_later(&me, &st.stats, id, restarts);
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<ShardMsg>,
        evt: SupervisionEvent,
        st: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, last, reason) = match evt {
            SupervisionEvent::ActorTerminated(cell, last, reason) => (cell, last, reason),
            SupervisionEvent::ActorFailed(cell, err) => {
                (cell, None, Some(format!("panicked: {err}")))
            }
            _ => return Ok(()),
        };
        let Some(id) = st.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        // Only act if the entry belongs to the actor that stopped.
        let Some(live) = st.live.remove_entry(&id).and_then(|(id, l)| {
            if l.actor.get_id() == cell.get_id() {
                Some(l)
            } else {
                st.live.insert(id, l);
                None
            }
        }) else {
            return Ok(());
        };
        let restarts = live.restarts;
        if reason.as_deref() == Some(ASLEEP) {
            // The actor's last state is the newest committed one: it sleeps as data.
            if let Some(last) = last.and_then(|mut b| b.take::<RequestState>().ok()) {
                st.sleep(&me, last.req, live.stats, restarts);
                return Ok(());
            }
        }
        st.ctx.registry.unregister(&live.stats);
        st.show();
        if reason.as_deref() != Some(PASSIVATED) {
            tracing::info!(request = %id, reason = ?reason, "request actor stopped; rebuilding from the store");
            st.stats.cast(
                &me,
                ShardMsg::Rebuild {
                    id,
                    restarts: restarts + 1,
                },
            );
        }
        Ok(())
    }
}

fn rebuild_later(me: &ActorRef<ShardMsg>, stats: &Arc<ActorStats>, id: RequestId, restarts: u32) {
    let (me, stats) = (me.clone(), stats.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        stats.cast(&me, ShardMsg::Rebuild { id, restarts });
    });
}

/// Commits a create under the shard's fence; answers the request as committed.
async fn commit_create(
    ctx: &NodeContext,
    fence: &Fence,
    tr: Transition,
) -> Result<Request, EngineError> {
    let outbox = ctx.outbox_rows(&tr.notices);
    let persist = Persist {
        request: &tr.next,
        expected_version: 0,
        times: &tr.times,
        audit: &tr.audit,
        outbox: &outbox,
        guard: None,
        node: ctx.node(),
        idempotency: tr.idempotency.as_ref(),
    };
    match ctx.store.create(fence, persist).await? {
        Write::Updated { version, db_now } => {
            ctx.observe_db_clock(db_now);
            let mut req = tr.next;
            req.version = version;
            req.apply_times(&tr.times, db_now);
            metrics::counter!(names::TRANSITIONS, "from" => "NONE", "to" => req.state.as_str())
                .increment(1);
            let _ = ctx.commits.send((req.id, version));
            Ok(req)
        }
        Write::Stale | Write::Missing => {
            metrics::counter!(names::STALE_WRITES).increment(1);
            Err(EngineError::unavailable(format!(
                "this node does not hold the lease of shard {}",
                fence.shard
            )))
        }
    }
}

/// A cloneable handle to one shard's actor.
#[derive(Clone)]
pub struct ShardHandle {
    pub shard: u32,
    /// The epoch this node holds the shard at.
    pub epoch: i64,
    pub actor: ActorRef<ShardMsg>,
    pub stats: Arc<ActorStats>,
}

impl ShardHandle {
    pub async fn spawn(
        ctx: Arc<NodeContext>,
        fence: Fence,
        supervisor: ractor::ActorCell,
    ) -> Result<Self, EngineError> {
        let (shard, epoch) = (fence.shard, fence.epoch);
        let stats = ActorStats::new("shard", shard.to_string(), 0);
        let args = ShardArgs {
            ctx,
            fence,
            stats: stats.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, ShardActor, args, supervisor)
            .await
            .map_err(|e| EngineError::unavailable(format!("could not start shard {shard}: {e}")))?;
        Ok(ShardHandle {
            shard,
            epoch,
            actor,
            stats,
        })
    }

    async fn ask(
        &self,
        timeout: Duration,
        msg: impl FnOnce(RpcReplyPort<Result<Request, EngineError>>) -> ShardMsg,
    ) -> Result<Request, EngineError> {
        self.ask_inner(timeout, msg).await.map_err(|e| match e {
            Asked::Dropped => dropped(),
            Asked::Failed(e) => e,
        })
    }

    async fn ask_inner(
        &self,
        timeout: Duration,
        msg: impl FnOnce(RpcReplyPort<Result<Request, EngineError>>) -> ShardMsg,
    ) -> Result<Request, Asked> {
        let (tx, rx) = ractor::concurrency::oneshot();
        if !self.stats.cast(&self.actor, msg(tx.into())) {
            return Err(Asked::Failed(EngineError::unavailable(format!(
                "shard {} is not running on this node",
                self.shard
            ))));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(res)) => res.map_err(Asked::Failed),
            Ok(Err(_)) => Err(Asked::Dropped),
            Err(_) => Err(Asked::Failed(EngineError::unavailable("no answer in time"))),
        }
    }

    pub async fn create(&self, tr: Transition, timeout: Duration) -> Result<Request, EngineError> {
        self.ask(timeout, |reply| ShardMsg::Create {
            tr: Box::new(tr),
            reply,
        })
        .await
    }

    pub async fn lookup(&self, id: RequestId) -> Option<ActorRef<RequestMsg>> {
        let (tx, rx) = ractor::concurrency::oneshot();
        if !self.stats.cast(
            &self.actor,
            ShardMsg::Lookup {
                id,
                reply: tx.into(),
            },
        ) {
            return None;
        }
        rx.await.ok().flatten()
    }

    /// Routes a command to the request's actor. A command still queued when its actor
    /// stopped (the request just became final, e.g. a racing deny) was never applied: it is
    /// routed again, and the shard answers from the store (the request is final).
    pub async fn route(
        &self,
        id: RequestId,
        cmd: Command,
        timeout: Duration,
    ) -> Result<Request, EngineError> {
        // A command dropped with a stopping actor was never applied: route it again. Many
        // commands at once can meet the same stop more than once before the shard has seen
        // it, so back off a little each time, within the caller's timeout.
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            let cmd = cmd.clone();
            match self
                .ask_inner(timeout, |reply| ShardMsg::Route { id, cmd, reply })
                .await
            {
                Err(Asked::Dropped) if Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(Asked::Dropped) => return Err(dropped()),
                Err(Asked::Failed(e)) => return Err(e),
                Ok(r) => return Ok(r),
            }
        }
    }
}

/// Why an ask got no result: the actor answered with an error, or it stopped with the
/// message still queued (the reply port was dropped unanswered).
enum Asked {
    Failed(EngineError),
    Dropped,
}

fn dropped() -> EngineError {
    EngineError::unavailable("the request actor stopped before answering")
}

/// How late (by the database clock) a deadline must be before the sweep acts: timers fire
/// well within this.
const SWEEP_GRACE: Duration = Duration::from_secs(2);
/// How long an ENDING request may go unchanged before the sweep looks at it (a live actor
/// retrying its revokes is left alone).
const SWEEP_STUCK: Duration = Duration::from_secs(60);
/// Overdue requests taken per sweep; the rest come with the next.
const SWEEP_BATCH: u32 = 500;
