//! NodeSupervisor: the root of a node's actor tree. It holds this node's shard leases
//! (renewing them every third of the TTL, releasing them on a clean stop so the next owner
//! need not wait) and supervises the policy, provider and shard actors.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cluster::RactorMessage;
use uuid::Uuid;

use crate::context::NodeContext;
use crate::request::ShardHandle;
use crate::stats::{ActorRegistry, ActorStats};
use crate::store::{Fence, SharedStore};

#[derive(RactorMessage)]
pub enum NodeMsg {
    /// Renew this node's shard leases.
    Renew,
    /// The actor tree is built: supervise its shards from now on.
    Adopt {
        ctx: Arc<NodeContext>,
        fences: Vec<Fence>,
    },
}

pub struct NodeSupervisor;

pub struct NodeArgs {
    pub store: SharedStore,
    pub node: String,
    pub incarnation: Uuid,
    pub lease_ttl: Duration,
    pub shards: Arc<RwLock<Vec<Option<ShardHandle>>>>,
    pub registry: ActorRegistry,
}

pub struct NodeState {
    args: NodeArgs,
    stats: Arc<ActorStats>,
    ctx: Option<Arc<NodeContext>>,
    fences: Vec<Fence>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Actor for NodeSupervisor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(
        &self,
        me: ActorRef<NodeMsg>,
        args: NodeArgs,
    ) -> Result<NodeState, ActorProcessingErr> {
        let stats = ActorStats::new("node", args.node.clone(), 0);
        args.registry.register(&stats);
        stats.set_state("starting");
        let period = args.lease_ttl / 3;
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(period);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if me.cast(NodeMsg::Renew).is_err() {
                    break;
                }
            }
        });
        Ok(NodeState {
            args,
            stats,
            ctx: None,
            fences: Vec::new(),
            ticker: Some(ticker),
        })
    }

    async fn post_stop(
        &self,
        me: ActorRef<NodeMsg>,
        st: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = st.ticker.take() {
            t.abort();
        }
        me.stop_children_and_wait(Some("node stopping".into()), Some(Duration::from_secs(10)))
            .await;
        // Children are gone: let the leases lapse now so a successor takes over at once.
        if let Err(e) = st
            .args
            .store
            .release_shards(&st.args.node, st.args.incarnation)
            .await
        {
            tracing::warn!(error = %e, "releasing shard leases failed; they lapse by themselves");
        }
        st.args.registry.unregister(&st.stats);
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<NodeMsg>,
        msg: NodeMsg,
        st: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Renew => {
                let a = &st.args;
                match a
                    .store
                    .renew_shards(&a.node, a.incarnation, a.lease_ttl)
                    .await
                {
                    Ok(leases) => {
                        if leases.len() < st.fences.len() {
                            tracing::error!(
                                owned = st.fences.len(),
                                renewed = leases.len(),
                                "shard leases were lost"
                            );
                        }
                        st.stats.set_state(format!("{} shard leases", leases.len()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing shard leases failed");
                        st.stats.set_state(format!("lease renewal failing: {e}"));
                    }
                }
            }
            NodeMsg::Adopt { ctx, fences } => {
                st.ctx = Some(ctx);
                st.fences = fences;
                st.stats
                    .set_state(format!("{} shard leases", st.fences.len()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<NodeMsg>,
        evt: SupervisionEvent,
        st: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_default())
            }
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("panicked: {err}")),
            _ => return Ok(()),
        };
        // A shard actor that died is started again on the same lease.
        let shard = st.args.shards.read().ok().and_then(|s| {
            s.iter()
                .flatten()
                .find(|h| h.actor.get_id() == cell.get_id())
                .map(|h| h.shard)
        });
        let (Some(shard), Some(ctx)) = (shard, st.ctx.clone()) else {
            tracing::error!(actor = ?cell.get_id(), reason = %why, "a node actor stopped");
            return Ok(());
        };
        let Some(fence) = st.fences.iter().find(|f| f.shard == shard).cloned() else {
            return Ok(());
        };
        tracing::warn!(shard, reason = %why, "shard actor stopped; restarting it");
        metrics::counter!(crate::stats::names::ACTOR_RESTARTS, "kind" => "shard").increment(1);
        match ShardHandle::spawn(ctx, fence, me.get_cell()).await {
            Ok(h) => {
                if let Ok(mut s) = st.args.shards.write() {
                    s[shard as usize] = Some(h);
                }
            }
            Err(e) => tracing::error!(shard, error = %e, "restarting a shard actor failed"),
        }
        Ok(())
    }
}
