//! Membership (docs/operations.md): the node heartbeats its row in `nodes` every second; a node
//! whose heartbeat is older than the lease TTL by the database clock is dead. The table is
//! the truth about who is alive; `Engine::cluster_status` reads it.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;

use crate::context::NodeContext;
use crate::error::EngineError;
use crate::stats::ActorStats;
use crate::store::{Heartbeat, SharedStore};

/// How often a node heartbeats.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

#[derive(RactorMessage)]
pub enum MembershipMsg {
    Beat,
}

pub struct Membership;

pub struct MembershipState {
    ctx: Arc<NodeContext>,
    stats: Arc<ActorStats>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

/// Writes this node's first heartbeat. A restarted node waits (up to two TTLs) for the
/// heartbeat of its previous incarnation to age past the TTL; a second process configured
/// with the same node name is refused.
pub async fn join(
    store: &SharedStore,
    node: &str,
    incarnation: uuid::Uuid,
    ttl: Duration,
) -> Result<(), EngineError> {
    let deadline = tokio::time::Instant::now() + ttl * 2 + Duration::from_secs(1);
    let hb = Heartbeat {
        node,
        incarnation,
        cluster_addr: "",
        api_addr: "",
        clock_offset_us: 0,
    };
    loop {
        if store.heartbeat(&hb, ttl).await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(EngineError::unavailable(format!(
                "another process is running as node `{node}` (its heartbeat is younger than {} s); give every node its own `node.name`",
                ttl.as_secs_f64()
            )));
        }
        tracing::info!(
            node,
            "waiting for a previous process's heartbeat to age out"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl Actor for Membership {
    type Msg = MembershipMsg;
    type State = MembershipState;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        me: ActorRef<MembershipMsg>,
        ctx: Arc<NodeContext>,
    ) -> Result<MembershipState, ActorProcessingErr> {
        let stats = ActorStats::new("membership", ctx.node().to_owned(), 0);
        ctx.registry.register(&stats);
        stats.set_state("joined");
        let ticker = stats.tick_every(me, HEARTBEAT_EVERY, || MembershipMsg::Beat);
        Ok(MembershipState {
            ctx,
            stats,
            ticker: Some(ticker),
        })
    }

    async fn post_stop(
        &self,
        _me: ActorRef<MembershipMsg>,
        st: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = st.ticker.take() {
            t.abort();
        }
        let ctx = &st.ctx;
        if ctx.crashing.load(std::sync::atomic::Ordering::Acquire) {
            // As a crash: the heartbeat ages out by itself.
        } else if let Err(e) = ctx.store.leave(ctx.node(), ctx.incarnation).await {
            tracing::warn!(error = %e, "could not mark this node as gone; its heartbeat ages out by itself");
        }
        st.ctx.registry.unregister(&st.stats);
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<MembershipMsg>,
        msg: MembershipMsg,
        st: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        st.stats.dequeued();
        let MembershipMsg::Beat = msg;
        let ctx = &st.ctx;
        // The round trip by the monotonic clock: a wall clock stepping mid-probe must not
        // make it look instant.
        let (sent, started) = (chrono::Utc::now(), std::time::Instant::now());
        if let Ok(db_now) = ctx.store.db_now().await {
            ctx.probe_db_clock(db_now, sent, started.elapsed());
        }
        let hb = Heartbeat {
            node: ctx.node(),
            incarnation: ctx.incarnation,
            cluster_addr: ctx
                .config
                .mesh
                .as_ref()
                .map_or("", |m| m.advertise.as_str()),
            api_addr: &ctx.config.api_addr,
            clock_offset_us: ctx.clock_offset().num_microseconds().unwrap_or(0),
        };
        metrics::gauge!(crate::stats::names::CLOCK_OFFSET).set(hb.clock_offset_us as f64 / 1e6);
        match ctx.store.heartbeat(&hb, ctx.config.lease_ttl).await {
            Ok(true) => st.stats.set_state("heartbeating"),
            Ok(false) => {
                tracing::error!(
                    node = ctx.node(),
                    "another process has taken this node's name; this node's heartbeats are refused"
                );
                st.stats
                    .set_state("refused: another process runs under this node name");
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed");
                st.stats.set_state(format!("heartbeat failing: {e}"));
            }
        }
        Ok(())
    }
}
