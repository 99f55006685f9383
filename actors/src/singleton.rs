//! The lease of a cluster singleton (the audit sequencer, the grant reconciler): at most
//! one node holds it, and its writes carry the lease's fence, so a holder that lost it
//! (frozen, cut off) can no longer write.

use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::store::{Fence, SharedStore, StoreResult};

/// What [`SingletonLease::hold`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holding {
    /// Held before and still held (renewed if it was due).
    Kept,
    /// Taken just now, at a new epoch: the holder starts afresh.
    Taken,
    /// Another node holds it.
    Standby,
}

pub struct SingletonLease {
    /// The lease id (a shard number beyond the request shards).
    id: u32,
    /// What the lease is for, in logs.
    what: &'static str,
    fence: Option<Fence>,
    renewed_at: Instant,
}

impl SingletonLease {
    pub fn new(id: u32, what: &'static str) -> Self {
        SingletonLease {
            id,
            what,
            fence: None,
            renewed_at: Instant::now(),
        }
    }

    /// The fence of the lease while this node holds it.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// A fenced write was refused: the lease is gone, take it again before writing.
    pub fn lost(&mut self) {
        self.fence = None;
    }

    /// Keeps the lease (renewing every third of the TTL) or takes it if it has lapsed.
    pub async fn hold(
        &mut self,
        store: &SharedStore,
        node: &str,
        incarnation: Uuid,
        ttl: Duration,
    ) -> StoreResult<Holding> {
        if self.fence.is_some() && self.renewed_at.elapsed() < ttl / 3 {
            return Ok(Holding::Kept);
        }
        if let Some(f) = &self.fence {
            let leases = store.renew_shards(node, incarnation, ttl).await?;
            if leases.iter().any(|l| l.fence == *f) {
                self.renewed_at = Instant::now();
                return Ok(Holding::Kept);
            }
            tracing::warn!(
                epoch = f.epoch,
                lease = self.what,
                "a singleton lease was lost"
            );
            self.fence = None;
        }
        let got = store
            .acquire_shards(node, incarnation, &[self.id], ttl)
            .await?;
        match got.into_iter().next() {
            Some(l) => {
                tracing::info!(
                    epoch = l.fence.epoch,
                    lease = self.what,
                    "holding a singleton lease: this node is the cluster's {}",
                    self.what
                );
                self.fence = Some(l.fence);
                self.renewed_at = Instant::now();
                Ok(Holding::Taken)
            }
            None => Ok(Holding::Standby),
        }
    }
}
