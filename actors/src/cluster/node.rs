//! NodeSupervisor: the root of a node's actor tree. It holds this node's shard leases and
//! supervises the policy, provider and shard actors. Every round (a fifth of the lease TTL)
//! it renews its leases, stops the ShardActor of any shard it lost, and moves towards its
//! fair share (`ownership::plan`): it drains and hands over shards it holds beyond it, and
//! takes lapsed ones below it (loading their live requests and arming their deadlines).
//! On a clean stop it releases every lease, so the next owner need not wait.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;
use tokio::time::Instant;
use uuid::Uuid;

use crate::cluster::ownership::{self, View};
use crate::context::NodeContext;
use crate::lease::{LeaseClock, round_every};
use crate::request::ShardHandle;
use crate::stats::{ActorRegistry, ActorStats, names};
use crate::store::{Fence, SharedStore};

#[derive(RactorMessage)]
pub enum NodeMsg {
    /// Renew this node's leases and move towards its fair share; the reply, if asked for,
    /// is (shards held, fair share).
    Balance(Option<RpcReplyPort<(usize, usize)>>),
    /// The actor tree is built: shards can be started from now on.
    Adopt { ctx: Arc<NodeContext> },
}

pub struct NodeSupervisor;

pub struct NodeArgs {
    pub store: SharedStore,
    pub node: String,
    pub incarnation: Uuid,
    pub lease_ttl: Duration,
    pub shard_count: u32,
    pub shards: Arc<RwLock<Vec<Option<ShardHandle>>>>,
    pub registry: ActorRegistry,
    pub lease: Arc<LeaseClock>,
}

pub struct NodeState {
    args: NodeArgs,
    stats: Arc<ActorStats>,
    ctx: Option<Arc<NodeContext>>,
    owned: BTreeMap<u32, Fence>,
    /// Shard actors stopped on purpose (handed over or lost): not restarted.
    retired: HashSet<ActorId>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl NodeState {
    fn set_shard(&self, shard: u32, h: Option<ShardHandle>) {
        if let Ok(mut s) = self.args.shards.write()
            && let Some(slot) = s.get_mut(shard as usize)
        {
            *slot = h;
        }
    }

    /// Stops a shard's actor (and with it every request actor of the shard) and forgets
    /// the shard. Expiry revokes already issued finish; the next owner records them.
    async fn retire(&mut self, shard: u32, why: &str) {
        self.owned.remove(&shard);
        let h = self
            .args
            .shards
            .read()
            .ok()
            .and_then(|s| s.get(shard as usize).cloned().flatten());
        self.set_shard(shard, None);
        if let Some(h) = h {
            self.retired.insert(h.actor.get_id());
            if let Err(e) = h
                .actor
                .stop_and_wait(Some(why.into()), Some(Duration::from_secs(10)))
                .await
            {
                tracing::warn!(shard, error = %e, "a shard actor did not stop in time");
            }
        }
    }

    async fn start_shard(&mut self, me: &ActorRef<NodeMsg>, fence: Fence) {
        let Some(ctx) = self.ctx.clone() else { return };
        let shard = fence.shard;
        match ShardHandle::spawn(ctx, fence.clone(), me.get_cell()).await {
            Ok(h) => {
                self.owned.insert(shard, fence);
                self.set_shard(shard, Some(h));
            }
            Err(e) => {
                // It lapses by itself; another round (here or elsewhere) takes it again.
                tracing::error!(shard, error = %e, "starting a shard actor failed; releasing it");
                let a = &self.args;
                let _ = a
                    .store
                    .release_shards(&a.node, a.incarnation, Some(&[shard]))
                    .await;
            }
        }
    }

    /// One round: renew, drop what was lost, hand over or take towards the fair share.
    async fn balance(&mut self, me: &ActorRef<NodeMsg>) -> (usize, usize) {
        let a = &self.args;
        let (store, ttl) = (a.store.clone(), a.lease_ttl);
        let sent = Instant::now();
        match store.renew_shards(&a.node, a.incarnation, ttl).await {
            Ok(leases) => {
                a.lease.renewed(sent, ttl);
                let kept: BTreeSet<u32> = leases.iter().map(|l| l.fence.shard).collect();
                let lost: Vec<u32> = self
                    .owned
                    .keys()
                    .filter(|s| !kept.contains(s))
                    .copied()
                    .collect();
                for shard in lost {
                    tracing::error!(
                        shard,
                        "this node's lease on the shard was lost (another node took it); stopping its actors"
                    );
                    metrics::counter!(names::SHARD_LEASES_LOST).increment(1);
                    self.retire(shard, "shard lease lost").await;
                }
            }
            Err(e) => {
                // What is left of the lease shrinks while renewals fail (0: self-fenced).
                metrics::gauge!(names::LEASE_REMAINING)
                    .set(self.args.lease.remaining().as_secs_f64());
                metrics::gauge!(names::SHARDS_UNOWNED).set(f64::NAN);
                tracing::warn!(error = %e, "renewing shard leases failed");
                self.stats.set_state(format!(
                    "lease renewal failing ({} s usable): {e}",
                    a.lease.remaining().as_secs_f64()
                ));
                return (self.owned.len(), 0);
            }
        }
        metrics::gauge!(names::LEASE_REMAINING).set(self.args.lease.remaining().as_secs_f64());
        if self.ctx.is_none() {
            return (self.owned.len(), 0);
        }
        let plan = match self.plan().await {
            Ok(p) => p,
            Err(e) => {
                // Not known now: a stale 0 must not hide shards without an owner.
                metrics::gauge!(names::SHARDS_UNOWNED).set(f64::NAN);
                tracing::warn!(error = %e, "reading the cluster's membership failed");
                return (self.owned.len(), 0);
            }
        };
        if !plan.release.is_empty() {
            for shard in &plan.release {
                self.retire(*shard, "shard handed over").await;
            }
            let a = &self.args;
            match a
                .store
                .release_shards(&a.node, a.incarnation, Some(&plan.release))
                .await
            {
                Ok(()) => {
                    tracing::info!(shards = ?plan.release, "handed shards over to the fair share");
                    metrics::counter!(names::SHARD_HANDOVERS).increment(plan.release.len() as u64);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "releasing handed-over shards failed; they lapse by themselves")
                }
            }
        }
        if !plan.acquire.is_empty() {
            let a = &self.args;
            let sent = Instant::now();
            match a
                .store
                .acquire_shards(&a.node, a.incarnation, &plan.acquire, ttl)
                .await
            {
                Ok(leases) => {
                    if !leases.is_empty() {
                        self.args.lease.renewed(sent, ttl);
                    }
                    let (mut shards, mut epochs) = (Vec::new(), Vec::new());
                    for l in leases {
                        if l.fence.epoch > 1 {
                            metrics::counter!(names::SHARD_TAKEOVERS).increment(1);
                        }
                        tracing::debug!(shard = l.fence.shard, epoch = l.fence.epoch, "took shard");
                        shards.push(l.fence.shard);
                        epochs.push(l.fence.epoch);
                        self.start_shard(me, l.fence).await;
                    }
                    // One line per round, not one per shard: a node's first round takes
                    // them all.
                    if !shards.is_empty() {
                        tracing::info!(
                            count = shards.len(),
                            shards = %ranges(shards.iter().map(|s| i64::from(*s))),
                            epochs = %ranges(epochs.iter().copied()),
                            "took shards"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "taking lapsed shards failed"),
            }
        }
        self.stats.set_state(format!(
            "{} of {} shards (fair share {})",
            self.owned.len(),
            self.args.shard_count,
            plan.target
        ));
        (self.owned.len(), plan.target)
    }

    async fn plan(&self) -> Result<ownership::Plan, crate::store::StoreError> {
        let a = &self.args;
        let (db_now, members) = a.store.members().await?;
        let table = a.store.shard_table().await?;
        if let Some(ctx) = &self.ctx {
            ctx.set_owners(table.clone());
        }
        let table: Vec<_> = table
            .into_iter()
            .filter(|r| r.shard < a.shard_count)
            .collect();
        // Every node reports it from the database, so one that is not scraped takes
        // nothing away from it.
        let leased = table
            .iter()
            .filter(|r| r.lease_expires_at.is_some_and(|t| t > db_now))
            .count();
        metrics::gauge!(names::SHARDS_UNOWNED)
            .set(f64::from(a.shard_count).max(leased as f64) - leased as f64);
        let ttl = chrono::Duration::from_std(a.lease_ttl).unwrap_or(chrono::Duration::seconds(5));
        let mut live: BTreeSet<String> = members
            .into_iter()
            .filter(|m| db_now - m.heartbeat_at < ttl)
            .map(|m| m.node)
            .collect();
        live.insert(a.node.clone());
        let mine: BTreeSet<u32> = self.owned.keys().copied().collect();
        Ok(ownership::plan(&View {
            me: &a.node,
            live: &live,
            table: &table,
            db_now,
            shards: a.shard_count,
            ttl: a.lease_ttl,
            mine: &mine,
        }))
    }
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
        let ticker = stats.tick_every(me, round_every(args.lease_ttl), || NodeMsg::Balance(None));
        Ok(NodeState {
            args,
            stats,
            ctx: None,
            owned: BTreeMap::new(),
            retired: HashSet::new(),
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
        let crashed = st
            .ctx
            .as_ref()
            .is_some_and(|c| c.crashing.load(Ordering::Acquire));
        // Children are gone: let the leases lapse now so a successor takes over at once.
        if !crashed
            && let Err(e) = st
                .args
                .store
                .release_shards(&st.args.node, st.args.incarnation, None)
                .await
        {
            tracing::warn!(error = %e, "releasing shard leases failed; they lapse by themselves");
        }
        st.args.registry.unregister(&st.stats);
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<NodeMsg>,
        msg: NodeMsg,
        st: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Balance(reply) => {
                if reply.is_none() {
                    st.stats.dequeued(); // a tick
                }
                let res = st.balance(&me).await;
                if let Some(r) = reply {
                    let _ = r.send(res);
                }
            }
            NodeMsg::Adopt { ctx } => st.ctx = Some(ctx),
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
        if st.retired.remove(&cell.get_id()) {
            return Ok(());
        }
        // A shard actor that died is started again on the same lease.
        let shard = st.args.shards.read().ok().and_then(|s| {
            s.iter()
                .flatten()
                .find(|h| h.actor.get_id() == cell.get_id())
                .map(|h| h.shard)
        });
        let Some(shard) = shard else {
            tracing::error!(actor = ?cell.get_id(), reason = %why, "a node actor stopped");
            return Ok(());
        };
        let Some(fence) = st.owned.get(&shard).cloned() else {
            return Ok(());
        };
        tracing::warn!(shard, reason = %why, "shard actor stopped; restarting it");
        metrics::counter!(names::ACTOR_RESTARTS, "kind" => "shard").increment(1);
        st.set_shard(shard, None);
        st.start_shard(&me, fence).await;
        Ok(())
    }
}

/// `0-3,7,9-10`: numbers as sorted, de-duplicated runs.
fn ranges(numbers: impl Iterator<Item = i64>) -> String {
    let mut n: Vec<i64> = numbers.collect();
    n.sort_unstable();
    n.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < n.len() {
        let start = n[i];
        while i + 1 < n.len() && n[i + 1] == n[i] + 1 {
            i += 1;
        }
        out.push(if n[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", n[i])
        });
        i += 1;
    }
    out.join(",")
}

#[cfg(test)]
mod ranges_tests {
    #[test]
    fn runs_are_written_as_ranges() {
        assert_eq!(super::ranges((0..64).rev()), "0-63");
        assert_eq!(
            super::ranges([7, 1, 2, 3, 9, 10, 1].into_iter()),
            "1-3,7,9-10"
        );
        assert_eq!(super::ranges(std::iter::empty()), "");
    }
}
