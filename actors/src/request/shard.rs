//! ShardActor: owns the live requests of one shard. It loads them when it starts, creates
//! new ones (the create is fenced by this shard's lease), routes commands to their actors
//! without waiting on them, and rebuilds any RequestActor that stops unexpectedly from the
//! database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;

use super::Command;
use super::actor::{PASSIVATED, RequestActor, RequestArgs, RequestMsg, send};
use crate::context::NodeContext;
use crate::domain::{Refusal, Request, RequestId, Transition};
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
    /// The live actor of a request, if it has one on this shard.
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

pub struct ShardState {
    ctx: Arc<NodeContext>,
    fence: Fence,
    stats: Arc<ActorStats>,
    live: HashMap<RequestId, Live>,
    by_actor: HashMap<ActorId, RequestId>,
}

impl ShardState {
    async fn spawn_request(
        &mut self,
        me: &ActorRef<ShardMsg>,
        req: Request,
        restarts: u32,
    ) -> Result<(), EngineError> {
        let id = req.id;
        let stats = ActorStats::new("request", id.to_string(), restarts);
        let args = RequestArgs {
            ctx: self.ctx.clone(),
            req,
            fence: self.fence.clone(),
            stats: stats.clone(),
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
        self.stats.set_state(format!(
            "epoch {} · {} live",
            self.fence.epoch,
            self.live.len()
        ));
        Ok(())
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
        };
        let reqs = st.ctx.store.live_requests(&[st.fence.shard]).await?;
        for req in reqs {
            st.spawn_request(&me, req, 0).await?;
        }
        st.stats
            .set_state(format!("epoch {} · {} live", st.fence.epoch, st.live.len()));
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
            ShardMsg::Create { tr, reply } => {
                let res = create(&me, st, *tr).await;
                let _ = reply.send(res);
            }
            ShardMsg::Route { id, cmd, reply } => {
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
                            if let Err(e) = st.spawn_request(&me, req, 0).await {
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
            ShardMsg::Lookup { id, reply } => {
                let _ = reply.send(st.live.get(&id).map(|l| l.actor.clone()));
            }
            ShardMsg::Rebuild { id, restarts } => {
                if st.live.contains_key(&id) {
                    return Ok(());
                }
                match st.ctx.store.get(id).await {
                    Ok(Some(req)) if !req.state.is_terminal() => {
                        metrics::counter!(names::ACTOR_RESTARTS, "kind" => "request").increment(1);
                        if let Err(e) = st.spawn_request(&me, req, restarts).await {
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
        let (cell, reason) = match evt {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason),
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(format!("panicked: {err}"))),
            _ => return Ok(()),
        };
        let Some(id) = st.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        let restarts = st.live.get(&id).map(|l| l.restarts).unwrap_or(0);
        // Only remove the entry if it belongs to the actor that stopped.
        if st
            .live
            .get(&id)
            .is_some_and(|l| l.actor.get_id() == cell.get_id())
        {
            st.live.remove(&id);
        }
        st.stats
            .set_state(format!("epoch {} · {} live", st.fence.epoch, st.live.len()));
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

async fn create(
    me: &ActorRef<ShardMsg>,
    st: &mut ShardState,
    tr: Transition,
) -> Result<Request, EngineError> {
    let ctx = st.ctx.clone();
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
    match ctx.store.create(&st.fence, persist).await? {
        Write::Updated { version, db_now } => {
            ctx.observe_db_clock(db_now);
            let mut req = tr.next;
            req.version = version;
            req.apply_times(&tr.times, db_now);
            metrics::counter!(names::TRANSITIONS, "from" => "NONE", "to" => req.state.as_str())
                .increment(1);
            let _ = ctx.commits.send((req.id, version));
            st.spawn_request(me, req.clone(), 0).await?;
            Ok(req)
        }
        Write::Stale | Write::Missing => {
            metrics::counter!(names::STALE_WRITES).increment(1);
            Err(EngineError::unavailable(format!(
                "this node does not hold the lease of shard {}",
                st.fence.shard
            )))
        }
    }
}

/// A cloneable handle to one shard's actor.
#[derive(Clone)]
pub struct ShardHandle {
    pub shard: u32,
    pub actor: ActorRef<ShardMsg>,
    pub stats: Arc<ActorStats>,
}

impl ShardHandle {
    pub async fn spawn(
        ctx: Arc<NodeContext>,
        fence: Fence,
        supervisor: ractor::ActorCell,
    ) -> Result<Self, EngineError> {
        let shard = fence.shard;
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
        let mut attempts = 0;
        loop {
            let cmd = cmd.clone();
            match self
                .ask_inner(timeout, |reply| ShardMsg::Route { id, cmd, reply })
                .await
            {
                Err(Asked::Dropped) if attempts < 3 => attempts += 1,
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
