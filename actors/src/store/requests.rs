//! The request rows: the fenced commit of a create or a transition (what a shard and a
//! request actor write), reads by id, idempotency key, shard, grant and provider, the
//! overdue sweep's candidates, and the requester's load the domain judges.

use async_trait::async_trait;
use uuid::Uuid;

use super::{Fence, ListFilter, Persist, StoreResult, Write};
use crate::domain::{Request, RequestId, Timestamp};

/// Requests as rows. Every write is fenced by the owner of the request's shard.
#[async_trait]
pub trait RequestStore: Send + Sync {
    /// Inserts a new request (fenced by the owner of its shard) with its audit event and
    /// outbox rows. `Stale` if the fence does not hold; `Duplicate` if the id exists.
    async fn create(&self, fence: &Fence, p: Persist<'_>) -> StoreResult<Write>;

    /// Commits a transition: guarded update + one audit event + outbox rows, atomically.
    async fn transition(&self, fence: &Fence, p: Persist<'_>) -> StoreResult<Write>;

    async fn get(&self, id: RequestId) -> StoreResult<Option<Request>>;

    /// Non-terminal requests of the given shards, oldest first.
    async fn live_requests(&self, shards: &[u32]) -> StoreResult<Vec<Request>>;

    /// The safety net's candidates in `shard`, by the database clock: requests whose
    /// deadline passed more than `grace` ago (ACTIVE past `expires_at`, PENDING past the
    /// approval deadline, APPROVED past the grant deadline), and ENDING ones unchanged for
    /// longer than `stuck`. At most `limit`, most overdue first.
    async fn overdue_requests(
        &self,
        shard: u32,
        grace: std::time::Duration,
        stuck: std::time::Duration,
        limit: u32,
    ) -> StoreResult<Vec<RequestId>>;

    /// The requests that own any of these grant ids (the reconciler's view of what a
    /// provider lists).
    async fn requests_by_grant(&self, grant_ids: &[Uuid]) -> StoreResult<Vec<Request>>;

    /// ACTIVE requests of one provider after `after` (by id), at most `limit`: the grants
    /// the reconciler expects to find.
    async fn active_requests_of(
        &self,
        provider: &str,
        after: Option<RequestId>,
        limit: u32,
    ) -> StoreResult<Vec<Request>>;

    /// A page of requests; see [`ListFilter`].
    async fn list_requests(&self, filter: &ListFilter) -> StoreResult<Vec<Request>>;

    /// The request `requester` created with idempotency key `key`, with the content hash
    /// stored at its create.
    async fn get_by_idempotency_key(
        &self,
        requester: &str,
        key: &str,
    ) -> StoreResult<Option<(Request, String)>>;

    /// How many of `requester`'s requests are not final, counting no further than
    /// `at_most` (the cost follows the answer, not the person's history).
    async fn open_requests_of(&self, requester: &str, at_most: i64) -> StoreResult<i64>;

    /// When `requester`'s last break-glass request was created.
    async fn last_break_glass_of(&self, requester: &str) -> StoreResult<Option<Timestamp>>;
}
