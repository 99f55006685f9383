//! All SQL of jitsudo lives below this module, behind the [`Store`] trait.
//!
//! A transition commits atomically: the request update guarded by its version and by the
//! shard fence, exactly one audit event, and its outbox rows. Deadlines are computed by the
//! database clock in the committing statement. Outcomes are `Updated | Stale | Missing`.

mod audit;
mod commits;
mod outbox;
mod postgres;
mod requests;
mod rows;
mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{
    AuditEntry, Guard, Idempotency, PersonRef, Request, RequestId, State, TimePatch, Timestamp,
};
use crate::lease::{DEFAULT_LEASE_TTL, lock_wait_for};
use crate::policy::PolicySource;

pub use audit::*;
pub use commits::{Announcement, Announcements, COMMITS_PER_ANNOUNCEMENT, Heard, RemoteCommit};
pub use outbox::*;
pub use postgres::PgStore;
pub use requests::RequestStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error while {op}")]
    Database {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("applying migrations failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("stored data is unreadable ({what})")]
    Corrupt { what: String },
    #[error(
        "the database {path} is in use by another jitsudod process (lock file held); stop it or use another data dir"
    )]
    Locked { path: PathBuf },
    #[error(
        "the database was created {} and cannot be opened {}",
        if *database_is_dev { "by dev mode" } else { "for production" },
        if *database_is_dev { "outside dev mode; use a new database for production" } else { "in dev mode; give dev mode its own data dir" }
    )]
    ModeMismatch { database_is_dev: bool },
    #[error(
        "the database was initialised with {stored} shards but this node is configured with {configured}; the shard count cannot change"
    )]
    ShardCountMismatch { stored: u32, configured: u32 },
    #[error("request {id} already exists")]
    Duplicate { id: RequestId },
    /// Another create of this requester committed with the same idempotency key first.
    #[error("requester {requester:?} already used idempotency key {key:?}")]
    IdempotencyKeyTaken { requester: String, key: String },
    /// A write kept racing concurrent writers of the same row; nothing was written.
    #[error("the database stayed contended while {op}; retry")]
    Contended { op: &'static str },
    #[error("cannot open the store: {0}")]
    Config(String),
}

pub(crate) fn idempotency_taken(r: &Request, i: Option<&Idempotency>) -> StoreError {
    StoreError::IdempotencyKeyTaken {
        requester: r.requester.subject.clone(),
        key: i.map(|i| i.key.clone()).unwrap_or_default(),
    }
}

pub(crate) fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { op, source }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The result of a guarded write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// Committed at `version`; `db_now` is the database clock of the committing statement.
    Updated { version: i64, db_now: Timestamp },
    /// The version, the fence or a guard did not hold: nothing was written; reload.
    Stale,
    /// No such request.
    Missing,
}

/// Proof of shard ownership that every request write carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    pub shard: u32,
    pub owner: String,
    pub epoch: i64,
}

/// Which deployment a database belongs to; a dev database is never opened otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Dev,
    Production,
}

/// One row to deliver through a sink, enqueued in the transition's commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRow {
    pub sink: String,
    pub kind: String,
    /// JSON text.
    pub payload: String,
}

/// Everything a transition commits.
#[derive(Clone, Copy, Debug)]
pub struct Persist<'a> {
    /// The request after the transition (its `version` is ignored: the store bumps it).
    pub request: &'a Request,
    /// The version the transition was computed from; 0 for a create.
    pub expected_version: i64,
    pub times: &'a TimePatch,
    pub audit: &'a AuditEntry,
    pub outbox: &'a [OutboxRow],
    pub guard: Option<Guard>,
    /// The node committing (recorded with the audit event).
    pub node: &'a str,
    /// A create's idempotency key and content hash, stored with the new request (a create
    /// whose key this requester already used fails with `IdempotencyKeyTaken`); ignored by
    /// transitions.
    pub idempotency: Option<&'a Idempotency>,
}

/// Which requests `list_requests` returns: every given condition holds. Newest first by
/// `(created_at, id)`; page on with `before` set to the last request's `(created_at, id)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only requests of this requester (subject).
    pub requester: Option<String>,
    /// "Awaiting my approval": PENDING requests whose stored `decision.approver_groups`
    /// intersect these groups. A hint for listing; the approval check stays authoritative.
    pub awaiting_groups: Option<Vec<String>>,
    /// With `awaiting_groups`: the caller. Their own requests (the same person: subject or
    /// verified email) and requests they have already approved are left out.
    pub caller: Option<PersonRef>,
    /// Only requests in these states; empty means every state.
    pub states: Vec<State>,
    pub provider: Option<String>,
    /// Only requests that need a review (break-glass, or auto-approved by a policy their
    /// requester wrote) whose review is not closed.
    pub needs_review: bool,
    /// Keyset cursor: only requests strictly older than this `(created_at, id)`.
    pub before: Option<(Timestamp, Uuid)>,
    /// Page size: 0 means [`ListFilter::DEFAULT_LIMIT`]; at most [`ListFilter::MAX_LIMIT`].
    pub limit: u32,
}

impl ListFilter {
    pub const DEFAULT_LIMIT: u32 = 100;
    pub const MAX_LIMIT: u32 = 1000;

    pub fn effective_limit(&self) -> i64 {
        i64::from(match self.limit {
            0 => Self::DEFAULT_LIMIT,
            n => n.min(Self::MAX_LIMIT),
        })
    }
}

/// A closed review.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewRecord {
    pub request_id: Uuid,
    /// Why the request needed a review.
    pub reason: String,
    pub reviewer: String,
    pub verdict: String,
    pub closed_at: Timestamp,
}

/// A principal's stored record (the trust tier policies see).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalRecord {
    pub subject: String,
    pub trust_tier: i64,
    pub updated_by: String,
    pub updated_at: Timestamp,
}

/// An audit event as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: Uuid,
    pub at: Timestamp,
    pub kind: String,
    pub actor: String,
    pub request_id: Option<Uuid>,
    pub request_version: Option<i64>,
    pub node: String,
    /// The exact stored text.
    pub details: String,
}

/// An outbox row as stored. `event_id` is the id of the audit event committed with it: the
/// notices of one commit share it, so a delivery is identified by `(event_id, kind)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub id: i64,
    pub event_id: Uuid,
    pub request_id: Option<Uuid>,
    pub sink: String,
    pub kind: String,
    pub payload: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    /// Failed attempts so far.
    pub attempts: i32,
    pub created_at: Timestamp,
    pub next_attempt_at: Timestamp,
    pub last_error: Option<String>,
}

/// The time a live request waits for, by state, as SQL both backends share: the deadline
/// its timer is armed for, or (ENDING) its last change. The overdue sweep compares it.
pub(super) const DUE_SQL: &str = "CASE state WHEN 'ACTIVE' THEN expires_at WHEN 'PENDING' THEN approval_deadline WHEN 'APPROVED' THEN grant_deadline ELSE updated_at END";

/// What a node's heartbeat writes into `nodes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat<'a> {
    pub node: &'a str,
    pub incarnation: Uuid,
    pub cluster_addr: &'a str,
    pub api_addr: &'a str,
    /// The node's estimate of database clock − its own clock.
    pub clock_offset_us: i64,
}

/// A node as the `nodes` table knows it; times and age by the database clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub node: String,
    pub incarnation: Uuid,
    pub cluster_addr: String,
    pub api_addr: String,
    pub started_at: Timestamp,
    pub heartbeat_at: Timestamp,
    pub clock_offset_us: i64,
}

/// A shard's owner row and lease expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardRecord {
    pub shard: u32,
    pub owner: String,
    pub incarnation: Uuid,
    pub epoch: i64,
    pub acquired_at: Timestamp,
    pub lease_expires_at: Option<Timestamp>,
}

/// A shard lease as acquired or renewed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub fence: Fence,
    pub expires_at: Timestamp,
}

/// A reconciler finding to record: one audit event (not tied to a request version) and its
/// notices, fenced by the reconcile lease.
#[derive(Clone, Copy, Debug)]
pub struct Finding<'a> {
    pub kind: &'a str,
    pub actor: &'a str,
    pub request_id: Option<Uuid>,
    pub details: &'a serde_json::Value,
    pub outbox: &'a [OutboxRow],
    pub node: &'a str,
}

/// The reconciler's last pass over one provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcilePass {
    pub provider: String,
    pub node: String,
    /// When it ended, by the database clock.
    pub at: Timestamp,
    pub duration_ms: i64,
    /// Managed grants and tombstones the provider listed.
    pub listed: i64,
    pub orphans: i64,
    pub drift: i64,
    pub tombstones: i64,
    /// Why the pass failed, if it did (the provider's error, never a secret).
    pub error: Option<String>,
}

/// The persistence contract; both backends pass one contract suite. The audit chain and
/// the outbox and the request rows have their own traits (`AuditStore`, `OutboxStore`,
/// `RequestStore`).
#[async_trait]
pub trait Store: AuditStore + OutboxStore + RequestStore + Send + Sync + 'static {
    fn backend(&self) -> &'static str;

    /// Tells the other nodes which request versions this node committed (after they
    /// committed). Nothing to do where one process writes (SQLite).
    async fn announce_commits(&self, _announcement: &Announcement) -> StoreResult<()> {
        Ok(())
    }

    /// A subscription to the other nodes' announcements; `None` where one process writes.
    async fn commit_announcements(&self) -> StoreResult<Option<Box<dyn Announcements>>> {
        Ok(None)
    }

    /// The database clock.
    async fn db_now(&self) -> StoreResult<Timestamp>;

    /// Stores the shard count at first start; later starts must be configured the same.
    async fn init_shards(&self, shards: u32) -> StoreResult<u32>;

    /// The cluster-wide value of `key` (`cluster_meta`), storing `if_none` first when there
    /// is none: the first node to start decides, every later one reads the same.
    async fn cluster_value(&self, key: &str, if_none: &str) -> StoreResult<String>;

    /// Takes every listed shard whose lease has lapsed (or was never taken), bumping its
    /// epoch; returns the leases obtained.
    async fn acquire_shards(
        &self,
        node: &str,
        incarnation: Uuid,
        shards: &[u32],
        ttl: Duration,
    ) -> StoreResult<Vec<Lease>>;

    /// Extends the leases this incarnation still holds (unexpired: a lapsed or released
    /// lease is taken again only by `acquire_shards`, at a new epoch); returns them.
    async fn renew_shards(
        &self,
        node: &str,
        incarnation: Uuid,
        ttl: Duration,
    ) -> StoreResult<Vec<Lease>>;

    /// Lets this incarnation's leases lapse now (all of them, or only the listed shards: a
    /// handover), so the next owner need not wait.
    async fn release_shards(
        &self,
        node: &str,
        incarnation: Uuid,
        only: Option<&[u32]>,
    ) -> StoreResult<()>;

    /// Records a node's heartbeat (database clock). `false`, writing nothing, while another
    /// incarnation of the same node name has a heartbeat younger than `ttl`: two processes
    /// never run as one node.
    async fn heartbeat(&self, hb: &Heartbeat<'_>, ttl: Duration) -> StoreResult<bool>;

    /// A clean stop: this incarnation's heartbeat is marked as long past, so that the node
    /// shows as gone at once and its next start need not wait for it to age out.
    async fn leave(&self, node: &str, incarnation: Uuid) -> StoreResult<()>;

    /// Every node that has heartbeated, by name, and the database clock of the read.
    async fn members(&self) -> StoreResult<(Timestamp, Vec<Member>)>;

    /// Every shard's owner, epoch and lease expiry, by shard.
    async fn shard_table(&self) -> StoreResult<Vec<ShardRecord>>;

    /// Records a reconciler finding (audit event + outbox rows) in one transaction, only
    /// while `fence` (the reconcile lease) holds; `Stale` otherwise.
    async fn record_finding(&self, fence: &Fence, finding: &Finding<'_>) -> StoreResult<Write>;

    /// Replaces the last pass of `pass.provider` (its `at` is set by the database clock).
    async fn put_reconcile_pass(&self, pass: &ReconcilePass) -> StoreResult<()>;

    /// The last pass of every provider the reconciler has looked at.
    async fn reconcile_passes(&self) -> StoreResult<Vec<ReconcilePass>>;

    /// Audit events of one request: its versions in order, then the events not tied to a
    /// version (such as `credentials.issued`) in time order.
    async fn request_audit(&self, id: RequestId) -> StoreResult<Vec<AuditEvent>>;

    /// The audit events of one request's versions after `after_version`, in version order:
    /// a watch resumes from the last version it saw, on any node, without gaps or repeats.
    async fn request_events(
        &self,
        id: RequestId,
        after_version: i64,
    ) -> StoreResult<Vec<AuditEvent>>;

    async fn get_principal(&self, subject: &str) -> StoreResult<Option<PrincipalRecord>>;

    /// Closes the review of a request that needed one (break-glass, self-benefit) and writes
    /// its audit event `review.closed` atomically. `None` when it was closed already.
    async fn close_review(
        &self,
        request_id: Uuid,
        why: &str,
        reviewer: &str,
        verdict: &str,
        node: &str,
    ) -> StoreResult<Option<ReviewRecord>>;

    /// Records the verified email `subject`'s token carried (written only when it changed).
    async fn note_identity(&self, subject: &str, verified_email: &str) -> StoreResult<()>;

    /// The verified email last seen for `subject`, if any.
    async fn verified_email_of(&self, subject: &str) -> StoreResult<Option<String>>;

    /// Sets a principal's trust tier and writes the audit event
    /// `principal.trust_tier_changed` (details: subject, from, to, reason; `from` is null
    /// when the principal had no record) atomically.
    async fn set_trust_tier(
        &self,
        subject: &str,
        tier: i64,
        by: &str,
        reason: &str,
        node: &str,
    ) -> StoreResult<PrincipalRecord>;

    /// Appends an audit event that is not a request transition (`request_version` is null):
    /// credential fetches, authorization refusals. Returns its id.
    async fn append_audit(
        &self,
        kind: &str,
        actor: &str,
        request_id: Option<Uuid>,
        details: &serde_json::Value,
        node: &str,
    ) -> StoreResult<Uuid>;

    /// A page of audit events with their chain links (`None` while unchained); see
    /// [`AuditQuery`].
    async fn query_audit(&self, q: &AuditQuery)
    -> StoreResult<Vec<(AuditEvent, Option<ChainRow>)>>;

    /// Outbox rows enqueued for one request, in insertion order.
    async fn request_outbox(&self, id: RequestId) -> StoreResult<Vec<OutboxEntry>>;

    /// The latest version of every policy that is not deleted.
    async fn policies(&self) -> StoreResult<Vec<PolicySource>>;

    /// A number that changes whenever a policy is applied or deleted anywhere (rows are
    /// only ever added): every node polls it to pick up other nodes' changes.
    async fn policy_revision(&self) -> StoreResult<i64>;

    /// The latest version of a policy with the time it was stored; `None` if the policy is
    /// unknown or its latest version deletes it.
    async fn get_policy(&self, name: &str) -> StoreResult<Option<(PolicySource, Timestamp)>>;

    /// [`Store::policies`] with the time each version was stored, by name.
    async fn list_policies(&self) -> StoreResult<Vec<(PolicySource, Timestamp)>>;

    /// Stores a new version of a policy (already compile-checked by the caller) with its
    /// audit event; returns the version.
    async fn put_policy(
        &self,
        name: &str,
        rego: &str,
        author: &str,
        node: &str,
    ) -> StoreResult<i64>;

    /// Marks a policy deleted (a new version), with its audit event. `false` if unknown.
    async fn delete_policy(&self, name: &str, author: &str, node: &str) -> StoreResult<bool>;
}

pub type SharedStore = Arc<dyn Store>;

/// Opens the store named by `url`: `postgres://…` or `sqlite://PATH` (also a bare path).
/// Runs migrations before returning and checks the dev-mode marker. The PostgreSQL
/// sessions get the lock wait of the default lease TTL; see [`open_for`].
pub async fn open(url: &str, mode: Mode) -> StoreResult<SharedStore> {
    open_for(url, mode, DEFAULT_LEASE_TTL).await
}

/// [`open`] for a node whose shard leases last `lease_ttl`.
pub async fn open_for(
    url: &str,
    mode: Mode,
    lease_ttl: std::time::Duration,
) -> StoreResult<SharedStore> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            PgStore::connect_with(url, mode, lock_wait_for(lease_ttl)).await?,
        ))
    } else {
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        Ok(Arc::new(SqliteStore::open(path, mode).await?))
    }
}
