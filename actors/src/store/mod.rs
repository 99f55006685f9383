//! All SQL of jitsudo lives below this module, behind the [`Store`] trait.
//!
//! A transition commits atomically: the request update guarded by its version and by the
//! shard fence, exactly one audit event, and its outbox rows. Deadlines are computed by the
//! database clock in the committing statement. Outcomes are `Updated | Stale | Missing`.

mod audit;
mod outbox;
mod postgres;
mod postgres_audit;
mod postgres_outbox;
mod rows;
mod sqlite;
mod sqlite_audit;
mod sqlite_outbox;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{AuditEntry, Guard, Request, RequestId, TimePatch, Timestamp};
use crate::policy::PolicySource;

pub use audit::*;
pub use outbox::*;
pub use postgres::PgStore;
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
    #[error("cannot open the store: {0}")]
    Config(String),
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

/// A shard lease as acquired or renewed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub fence: Fence,
    pub expires_at: Timestamp,
}

/// The persistence contract; both backends pass one contract suite. The audit chain and
/// the outbox have their own traits (`AuditStore`, `OutboxStore`).
#[async_trait]
pub trait Store: AuditStore + OutboxStore + Send + Sync + 'static {
    fn backend(&self) -> &'static str;

    /// The database clock.
    async fn db_now(&self) -> StoreResult<Timestamp>;

    /// Stores the shard count at first start; later starts must be configured the same.
    async fn init_shards(&self, shards: u32) -> StoreResult<u32>;

    /// Takes every listed shard whose lease has lapsed (or was never taken), bumping its
    /// epoch; returns the leases obtained.
    async fn acquire_shards(
        &self,
        node: &str,
        incarnation: Uuid,
        shards: &[u32],
        ttl: Duration,
    ) -> StoreResult<Vec<Lease>>;

    /// Extends the leases this incarnation still owns; returns them.
    async fn renew_shards(
        &self,
        node: &str,
        incarnation: Uuid,
        ttl: Duration,
    ) -> StoreResult<Vec<Lease>>;

    /// Lets this incarnation's leases lapse now, so the next owner need not wait.
    async fn release_shards(&self, node: &str, incarnation: Uuid) -> StoreResult<()>;

    /// Inserts a new request (fenced by the owner of its shard) with its audit event and
    /// outbox rows. `Stale` if the fence does not hold; `Duplicate` if the id exists.
    async fn create(&self, fence: &Fence, p: Persist<'_>) -> StoreResult<Write>;

    /// Commits a transition: guarded update + one audit event + outbox rows, atomically.
    async fn transition(&self, fence: &Fence, p: Persist<'_>) -> StoreResult<Write>;

    async fn get(&self, id: RequestId) -> StoreResult<Option<Request>>;

    /// Non-terminal requests of the given shards, oldest first.
    async fn live_requests(&self, shards: &[u32]) -> StoreResult<Vec<Request>>;

    /// Audit events of one request, by version.
    async fn request_audit(&self, id: RequestId) -> StoreResult<Vec<AuditEvent>>;

    /// Outbox rows enqueued for one request, in insertion order.
    async fn request_outbox(&self, id: RequestId) -> StoreResult<Vec<OutboxEntry>>;

    /// The latest version of every policy that is not deleted.
    async fn policies(&self) -> StoreResult<Vec<PolicySource>>;

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
/// Runs migrations before returning and checks the dev-mode marker.
pub async fn open(url: &str, mode: Mode) -> StoreResult<SharedStore> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url, mode).await?))
    } else {
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        Ok(Arc::new(SqliteStore::open(path, mode).await?))
    }
}
