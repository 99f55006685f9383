//! The embedded SQLite store for the single-node default. One process per database file:
//! an exclusive lock file beside it is held for the store's lifetime, and every write runs
//! in `BEGIN IMMEDIATE`. The database clock is the clock read inside that transaction.

mod admin;
mod audit;
mod cluster;
mod outbox;
mod reconcile;
mod requests;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::rows::{self, Times};
use super::*;
use crate::domain::{GrantPurpose, Stamp, State};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

pub struct SqliteStore {
    pub(super) pool: SqlitePool,
    _lock: File,
}

pub(super) fn micros(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

pub(super) fn from_micros(v: i64) -> StoreResult<Timestamp> {
    DateTime::<Utc>::from_timestamp_micros(v).ok_or_else(|| StoreError::Corrupt {
        what: format!("time {v}"),
    })
}

pub(super) fn uuid_col(row: &SqliteRow, col: &str) -> StoreResult<Uuid> {
    let s: String = row.try_get(col).map_err(db("reading an id"))?;
    Uuid::from_str(&s).map_err(|_| StoreError::Corrupt {
        what: format!("{col} {s:?}"),
    })
}

pub(super) fn opt_uuid_col(row: &SqliteRow, col: &str) -> StoreResult<Option<Uuid>> {
    let s: Option<String> = row.try_get(col).map_err(db("reading an id"))?;
    s.map(|s| {
        Uuid::from_str(&s).map_err(|_| StoreError::Corrupt {
            what: format!("{col} {s:?}"),
        })
    })
    .transpose()
}

fn ttl_us(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX)
}

impl SqliteStore {
    pub async fn open(path: impl AsRef<Path>, mode: Mode) -> StoreResult<Self> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Config(format!("creating {}: {e}", dir.display())))?;
        }
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                StoreError::Config(format!(
                    "opening the lock file {}: {e}",
                    lock_path.display()
                ))
            })?;
        // Two processes must never run actor trees on one file.
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked {
                path: path.to_path_buf(),
            });
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(db("opening the SQLite database"))?;
        MIGRATOR.run(&pool).await.map_err(StoreError::Migrate)?;
        let store = SqliteStore { pool, _lock: lock };
        store.check_mode(mode).await?;
        Ok(store)
    }

    async fn check_mode(&self, mode: Mode) -> StoreResult<()> {
        let want = if mode == Mode::Dev {
            "dev"
        } else {
            "production"
        };
        let stored = self.meta_get_or_insert("mode", want).await?;
        if stored != want {
            return Err(StoreError::ModeMismatch {
                database_is_dev: stored == "dev",
            });
        }
        Ok(())
    }

    async fn meta_get_or_insert(&self, key: &str, value: &str) -> StoreResult<String> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting a transaction"))?;
        sqlx::query("INSERT INTO cluster_meta (key, value, updated_at) VALUES (?1, ?2, ?3) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .bind(micros(Utc::now()))
            .execute(&mut *tx)
            .await
            .map_err(db("writing cluster metadata"))?;
        let stored: String = sqlx::query_scalar("SELECT value FROM cluster_meta WHERE key = ?1")
            .bind(key)
            .fetch_one(&mut *tx)
            .await
            .map_err(db("reading cluster metadata"))?;
        tx.commit()
            .await
            .map_err(db("committing cluster metadata"))?;
        Ok(stored)
    }

    pub(super) async fn fence_holds(
        conn: &mut SqliteConnection,
        fence: &Fence,
        now: i64,
    ) -> StoreResult<bool> {
        let ok: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM shard_owners o JOIN shard_renewals r ON r.shard = o.shard AND r.epoch = o.epoch
              WHERE o.shard = ?1 AND o.owner = ?2 AND o.epoch = ?3 AND r.expires_at > ?4",
        )
        .bind(fence.shard as i64)
        .bind(&fence.owner)
        .bind(fence.epoch)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("checking the shard fence"))?;
        Ok(ok.is_some())
    }

    async fn write(&self, fence: &Fence, p: Persist<'_>, create: bool) -> StoreResult<Write> {
        let r = p.request;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting a transaction"))?;
        let db_now = Utc::now();
        let now = micros(db_now);
        if !Self::fence_holds(&mut tx, fence, now).await? {
            return Ok(Write::Stale);
        }
        let t = |s: &Option<Stamp>| s.map(|s| micros(s.resolve(db_now)));
        let pt = p.times;
        let times = [
            t(&pt.created_at),
            t(&pt.approval_deadline),
            t(&pt.grant_deadline),
            t(&pt.granted_at),
            t(&pt.expires_at),
            t(&pt.ended_at),
        ];
        let body = rows::body(r)?.to_string();
        let version: i64;
        if create {
            let res = sqlx::query(
                "INSERT INTO requests (id, shard, version, state, requester, provider, role, scope, break_glass, updated_at, body,
                                       created_at, approval_deadline, grant_deadline, granted_at, expires_at, ended_at,
                                       idempotency_key, content_hash)
                 VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(r.id.0.to_string())
            .bind(fence.shard as i64)
            .bind(r.state.as_str())
            .bind(&r.requester.subject)
            .bind(&r.spec.provider)
            .bind(&r.spec.role)
            .bind(&r.spec.scope)
            .bind(r.spec.break_glass)
            .bind(now)
            .bind(&body)
            .bind(times[0].unwrap_or(now))
            .bind(times[1])
            .bind(times[2])
            .bind(times[3])
            .bind(times[4])
            .bind(times[5])
            .bind(p.idempotency.map(|i| &i.key))
            .bind(p.idempotency.map(|i| &i.content_hash))
            .execute(&mut *tx)
            .await;
            let res = match res {
                Ok(res) => res,
                Err(sqlx::Error::Database(d))
                    if d.is_unique_violation() && d.message().contains("idempotency_key") =>
                {
                    return Err(idempotency_taken(r, p.idempotency));
                }
                Err(e) => return Err(db("inserting a request")(e)),
            };
            if res.rows_affected() == 0 {
                return Err(StoreError::Duplicate { id: r.id });
            }
            version = 1;
        } else {
            let guard = matches!(p.guard, Some(Guard::BeforeApprovalDeadline));
            let res = sqlx::query(
                "UPDATE requests SET version = version + 1, state = ?3, body = ?4, updated_at = ?5,
                        created_at = COALESCE(?6, created_at), approval_deadline = COALESCE(?7, approval_deadline),
                        grant_deadline = COALESCE(?8, grant_deadline), granted_at = COALESCE(?9, granted_at),
                        expires_at = COALESCE(?10, expires_at), ended_at = COALESCE(?11, ended_at)
                  WHERE id = ?1 AND version = ?2 AND (NOT ?12 OR approval_deadline > ?5)",
            )
            .bind(r.id.0.to_string())
            .bind(p.expected_version)
            .bind(r.state.as_str())
            .bind(&body)
            .bind(now)
            .bind(times[0])
            .bind(times[1])
            .bind(times[2])
            .bind(times[3])
            .bind(times[4])
            .bind(times[5])
            .bind(guard)
            .execute(&mut *tx)
            .await
            .map_err(db("updating a request"))?;
            if res.rows_affected() == 0 {
                let exists: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM requests WHERE id = ?1")
                        .bind(r.id.0.to_string())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db("checking a request after a refused write"))?;
                return Ok(if exists.is_some() {
                    Write::Stale
                } else {
                    Write::Missing
                });
            }
            version = p.expected_version + 1;
        }
        let event_id = Uuid::now_v7().to_string();
        sqlx::query(
            "INSERT INTO audit_events (id, at, kind, actor, request_id, request_version, node, details)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(&event_id)
        .bind(now)
        .bind(&p.audit.kind)
        .bind(&p.audit.actor)
        .bind(r.id.0.to_string())
        .bind(version)
        .bind(p.node)
        .bind(p.audit.details.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db("writing an audit event"))?;
        for o in p.outbox {
            sqlx::query(
                "INSERT INTO outbox (event_id, request_id, sink, kind, payload, created_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            )
            .bind(&event_id)
            .bind(r.id.0.to_string())
            .bind(&o.sink)
            .bind(&o.kind)
            .bind(&o.payload)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db("enqueueing an outbox row"))?;
        }
        Self::write_children(&mut tx, r, times[2], now).await?;
        tx.commit().await.map_err(db("committing a transition"))?;
        Ok(Write::Updated { version, db_now })
    }

    async fn write_children(
        conn: &mut SqliteConnection,
        r: &Request,
        new_grant_deadline: Option<i64>,
        now: i64,
    ) -> StoreResult<()> {
        let id = r.id.0.to_string();
        let mut approvals: Vec<(u32, &crate::domain::Approval)> =
            r.approvals.iter().map(|a| (0, a)).collect();
        for e in &r.extensions {
            approvals.extend(e.approvals.iter().map(|a| (e.number, a)));
        }
        for (ext, a) in approvals {
            sqlx::query(
                "INSERT INTO approvals (request_id, extension, approver, kind, comment, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT DO NOTHING",
            )
            .bind(&id)
            .bind(ext as i64)
            .bind(&a.by.subject)
            .bind(&a.kind)
            .bind(&a.comment)
            .bind(micros(a.at))
            .execute(&mut *conn)
            .await
            .map_err(db("recording an approval"))?;
        }
        let grant_deadline = new_grant_deadline.or_else(|| r.grant_deadline.map(micros));
        for g in &r.grants {
            let (purpose, not_after) = match g.purpose {
                GrantPurpose::Primary => (
                    "primary".to_string(),
                    grant_deadline.map(|d| d + r.spec.duration_seconds * 1_000_000),
                ),
                GrantPurpose::Extension {
                    extension,
                    not_after,
                } => (format!("extension:{extension}"), Some(micros(not_after))),
            };
            let status = serde_json::to_value(g.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            sqlx::query(
                "INSERT INTO grants (grant_id, request_id, provider, purpose, status, provider_ref, not_after, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (grant_id) DO UPDATE SET status = excluded.status, provider_ref = excluded.provider_ref,
                        not_after = excluded.not_after, updated_at = excluded.updated_at",
            )
            .bind(g.grant_id.to_string())
            .bind(&id)
            .bind(&r.spec.provider)
            .bind(purpose)
            .bind(status)
            .bind(&g.provider_ref)
            .bind(not_after)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(db("recording a grant"))?;
        }
        for e in &r.extensions {
            let state = serde_json::to_value(e.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            sqlx::query(
                "INSERT INTO extensions (request_id, number, by_seconds, state, grant_id) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (request_id, number) DO UPDATE SET state = excluded.state, grant_id = excluded.grant_id",
            )
            .bind(&id)
            .bind(e.number as i64)
            .bind(e.by_seconds)
            .bind(state)
            .bind(e.grant_id.map(|g| g.to_string()))
            .execute(&mut *conn)
            .await
            .map_err(db("recording an extension"))?;
        }
        Ok(())
    }

    pub(super) fn decode(row: &SqliteRow) -> StoreResult<Request> {
        let get = |c: &'static str| -> StoreResult<Option<Timestamp>> {
            let v: Option<i64> = row.try_get(c).map_err(db("reading a request time"))?;
            v.map(from_micros).transpose()
        };
        let times = Times([
            get("created_at")?,
            get("approval_deadline")?,
            get("grant_deadline")?,
            get("granted_at")?,
            get("expires_at")?,
            get("ended_at")?,
        ]);
        let body: String = row.try_get("body").map_err(db("reading a request body"))?;
        let body = serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
            what: format!("request body: {e}"),
        })?;
        let version: i64 = row
            .try_get("version")
            .map_err(db("reading a request version"))?;
        rows::decode(body, version, times)
    }

    async fn leases_of(
        conn: &mut SqliteConnection,
        node: &str,
        incarnation: Uuid,
        now: i64,
    ) -> StoreResult<Vec<Lease>> {
        let rows = sqlx::query(
            "SELECT o.shard, o.epoch, r.expires_at FROM shard_owners o JOIN shard_renewals r ON r.shard = o.shard AND r.epoch = o.epoch
              WHERE o.owner = ?1 AND o.incarnation = ?2 AND r.expires_at > ?3 ORDER BY o.shard",
        )
        .bind(node)
        .bind(incarnation.to_string())
        .bind(now)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("reading leases"))?;
        rows.iter()
            .map(|r| {
                Ok(Lease {
                    fence: Fence {
                        shard: r
                            .try_get::<i64, _>("shard")
                            .map_err(db("reading a lease"))? as u32,
                        owner: node.to_owned(),
                        epoch: r.try_get("epoch").map_err(db("reading a lease"))?,
                    },
                    expires_at: from_micros(
                        r.try_get("expires_at").map_err(db("reading a lease"))?,
                    )?,
                })
            })
            .collect()
    }
}

pub(super) const REQUEST_COLUMNS: &str = "version, body, created_at, approval_deadline, grant_deadline, granted_at, expires_at, ended_at";

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn db_now(&self) -> StoreResult<Timestamp> {
        Ok(Utc::now())
    }

    async fn init_shards(&self, shards: u32) -> StoreResult<u32> {
        let stored = self
            .meta_get_or_insert("shards", &shards.to_string())
            .await?;
        let stored: u32 = stored.parse().map_err(|_| StoreError::Corrupt {
            what: format!("shard count {stored:?}"),
        })?;
        if stored != shards {
            return Err(StoreError::ShardCountMismatch {
                stored,
                configured: shards,
            });
        }
        Ok(stored)
    }

    async fn acquire_shards(
        &self,
        node: &str,
        incarnation: Uuid,
        shards: &[u32],
        ttl: Duration,
    ) -> StoreResult<Vec<Lease>> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting a transaction"))?;
        let now = micros(Utc::now());
        let expires = now.saturating_add(ttl_us(ttl));
        let mut out = Vec::new();
        for &shard in shards {
            let taken: Option<i64> = sqlx::query_scalar(
                "INSERT INTO shard_owners AS o (shard, owner, incarnation, epoch, acquired_at) VALUES (?1, ?2, ?3, 1, ?4)
                 ON CONFLICT (shard) DO UPDATE SET owner = excluded.owner, incarnation = excluded.incarnation,
                        epoch = o.epoch + 1, acquired_at = excluded.acquired_at
                  WHERE NOT EXISTS (SELECT 1 FROM shard_renewals r WHERE r.shard = o.shard AND r.epoch = o.epoch AND r.expires_at > ?4)
                 RETURNING epoch",
            )
            .bind(shard as i64)
            .bind(node)
            .bind(incarnation.to_string())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("acquiring a shard"))?;
            let Some(epoch) = taken else { continue };
            sqlx::query(
                "INSERT INTO shard_renewals (shard, epoch, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (shard) DO UPDATE SET epoch = excluded.epoch, expires_at = excluded.expires_at",
            )
            .bind(shard as i64)
            .bind(epoch)
            .bind(expires)
            .execute(&mut *tx)
            .await
            .map_err(db("acquiring a shard"))?;
            out.push(Lease {
                fence: Fence {
                    shard,
                    owner: node.to_owned(),
                    epoch,
                },
                expires_at: from_micros(expires)?,
            });
        }
        tx.commit()
            .await
            .map_err(db("committing shard acquisition"))?;
        Ok(out)
    }

    async fn renew_shards(
        &self,
        node: &str,
        incarnation: Uuid,
        ttl: Duration,
    ) -> StoreResult<Vec<Lease>> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting a transaction"))?;
        let now = micros(Utc::now());
        sqlx::query(
            "UPDATE shard_renewals SET expires_at = ?3
              WHERE expires_at > ?4
                AND EXISTS (SELECT 1 FROM shard_owners o WHERE o.shard = shard_renewals.shard
                              AND o.epoch = shard_renewals.epoch AND o.owner = ?1 AND o.incarnation = ?2)",
        )
        .bind(node)
        .bind(incarnation.to_string())
        .bind(now.saturating_add(ttl_us(ttl)))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db("renewing shard leases"))?;
        let leases = Self::leases_of(&mut tx, node, incarnation, now).await?;
        tx.commit().await.map_err(db("committing lease renewal"))?;
        Ok(leases)
    }

    async fn release_shards(
        &self,
        node: &str,
        incarnation: Uuid,
        only: Option<&[u32]>,
    ) -> StoreResult<()> {
        // Shard numbers are integers: listing them in the statement is safe.
        let filter = only.map_or(String::new(), |s| {
            let list: Vec<String> = s.iter().map(u32::to_string).collect();
            format!(" AND shard_renewals.shard IN ({})", list.join(","))
        });
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE shard_renewals SET expires_at = ?3
              WHERE EXISTS (SELECT 1 FROM shard_owners o WHERE o.shard = shard_renewals.shard
                              AND o.epoch = shard_renewals.epoch AND o.owner = ?1 AND o.incarnation = ?2){filter}"
        )))
        .bind(node)
        .bind(incarnation.to_string())
        .bind(micros(Utc::now()) - 1)
        .execute(&self.pool)
        .await
        .map_err(db("releasing shard leases"))?;
        Ok(())
    }

    async fn heartbeat(&self, hb: &Heartbeat<'_>, ttl: Duration) -> StoreResult<bool> {
        cluster::heartbeat(&self.pool, hb, ttl).await
    }

    async fn leave(&self, node: &str, incarnation: Uuid) -> StoreResult<()> {
        cluster::leave(&self.pool, node, incarnation).await
    }

    async fn members(&self) -> StoreResult<(Timestamp, Vec<Member>)> {
        cluster::members(&self.pool).await
    }

    async fn shard_table(&self) -> StoreResult<Vec<ShardRecord>> {
        cluster::shard_table(&self.pool).await
    }

    async fn create(&self, fence: &Fence, p: Persist<'_>) -> StoreResult<Write> {
        self.write(fence, p, true).await
    }

    async fn transition(&self, fence: &Fence, p: Persist<'_>) -> StoreResult<Write> {
        self.write(fence, p, false).await
    }

    async fn requests_by_grant(&self, grant_ids: &[Uuid]) -> StoreResult<Vec<Request>> {
        reconcile::requests_by_grant(self, grant_ids).await
    }

    async fn active_requests_of(
        &self,
        provider: &str,
        after: Option<RequestId>,
        limit: u32,
    ) -> StoreResult<Vec<Request>> {
        reconcile::active_requests_of(self, provider, after, limit).await
    }

    async fn record_finding(&self, fence: &Fence, finding: &Finding<'_>) -> StoreResult<Write> {
        reconcile::record_finding(self, fence, finding).await
    }

    async fn put_reconcile_pass(&self, pass: &ReconcilePass) -> StoreResult<()> {
        reconcile::put_pass(self, pass).await
    }

    async fn reconcile_passes(&self) -> StoreResult<Vec<ReconcilePass>> {
        reconcile::passes(self).await
    }

    async fn get(&self, id: RequestId) -> StoreResult<Option<Request>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?1"
        )))
        .bind(id.0.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("loading a request"))?;
        row.as_ref().map(Self::decode).transpose()
    }

    async fn live_requests(&self, shards: &[u32]) -> StoreResult<Vec<Request>> {
        let shard_list = serde_json::to_string(shards).unwrap_or_else(|_| "[]".into());
        let live: Vec<&str> = State::ALL
            .iter()
            .filter(|s| !s.is_terminal())
            .map(|s| s.as_str())
            .collect();
        let live = serde_json::to_string(&live).unwrap_or_else(|_| "[]".into());
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM requests
              WHERE shard IN (SELECT value FROM json_each(?1)) AND state IN (SELECT value FROM json_each(?2)) ORDER BY id"
        )))
        .bind(shard_list)
        .bind(live)
        .fetch_all(&self.pool)
        .await
        .map_err(db("loading live requests"))?;
        rows.iter().map(Self::decode).collect()
    }

    async fn overdue_requests(
        &self,
        shard: u32,
        grace: std::time::Duration,
        stuck: std::time::Duration,
        limit: u32,
    ) -> StoreResult<Vec<RequestId>> {
        let now = micros(Utc::now());
        let before = |d: std::time::Duration| {
            now.saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        };
        let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM (
                SELECT id, {DUE_SQL} AS due,
                       CASE state WHEN 'ENDING' THEN ?3 ELSE ?2 END AS cutoff
                  FROM requests
                 WHERE shard = ?1 AND state IN ('PENDING', 'APPROVED', 'ACTIVE', 'ENDING')
             )
             WHERE due < cutoff
             ORDER BY due LIMIT ?4"
        )))
        .bind(i64::from(shard))
        .bind(before(grace))
        .bind(before(stuck))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("looking for overdue requests"))?;
        ids.iter()
            .map(|id| {
                Uuid::from_str(id)
                    .map(RequestId)
                    .map_err(|_| StoreError::Corrupt {
                        what: format!("request id {id:?}"),
                    })
            })
            .collect()
    }

    async fn request_audit(&self, id: RequestId) -> StoreResult<Vec<AuditEvent>> {
        let rows = sqlx::query(
            "SELECT id, at, kind, actor, request_id, request_version, node, details
               FROM audit_events WHERE request_id = ?1
              ORDER BY request_version IS NULL, request_version, at, id",
        )
        .bind(id.0.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(db("loading audit events"))?;
        rows.iter().map(audit::audit_event).collect()
    }

    async fn request_outbox(&self, id: RequestId) -> StoreResult<Vec<OutboxEntry>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM outbox WHERE request_id = ?1 ORDER BY id",
            outbox::OUTBOX_COLUMNS
        )))
        .bind(id.0.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(db("loading outbox rows"))?;
        rows.iter().map(outbox::decode_outbox).collect()
    }

    async fn policy_revision(&self) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT count(*) FROM policies")
            .fetch_one(&self.pool)
            .await
            .map_err(db("reading the policy revision"))
    }

    async fn policies(&self) -> StoreResult<Vec<PolicySource>> {
        let rows = sqlx::query(
            "SELECT p.name, p.version, p.rego, p.author, p.deleted FROM policies p
              WHERE p.version = (SELECT max(version) FROM policies q WHERE q.name = p.name) ORDER BY p.name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("loading policies"))?;
        let mut out = Vec::new();
        for r in rows {
            if r.try_get::<bool, _>("deleted")
                .map_err(db("reading a policy"))?
            {
                continue;
            }
            out.push(PolicySource {
                name: r.try_get("name").map_err(db("reading a policy"))?,
                version: r.try_get("version").map_err(db("reading a policy"))?,
                author: r.try_get("author").map_err(db("reading a policy"))?,
                rego: r.try_get("rego").map_err(db("reading a policy"))?,
            });
        }
        Ok(out)
    }

    async fn put_policy(
        &self,
        name: &str,
        rego: &str,
        author: &str,
        node: &str,
    ) -> StoreResult<i64> {
        self.put_policy_version(name, rego, author, node, false)
            .await
            .map(|v| v.unwrap_or(0))
    }

    async fn delete_policy(&self, name: &str, author: &str, node: &str) -> StoreResult<bool> {
        self.put_policy_version(name, "", author, node, true)
            .await
            .map(|v| v.is_some())
    }

    async fn request_events(
        &self,
        id: RequestId,
        after_version: i64,
    ) -> StoreResult<Vec<AuditEvent>> {
        requests::events(&self.pool, id, after_version).await
    }

    async fn list_requests(&self, filter: &ListFilter) -> StoreResult<Vec<Request>> {
        requests::list(&self.pool, filter).await
    }

    async fn get_by_idempotency_key(
        &self,
        requester: &str,
        key: &str,
    ) -> StoreResult<Option<(Request, String)>> {
        requests::by_idempotency_key(&self.pool, requester, key).await
    }

    async fn get_principal(&self, subject: &str) -> StoreResult<Option<PrincipalRecord>> {
        admin::get_principal(&self.pool, subject).await
    }

    async fn close_review(
        &self,
        request_id: Uuid,
        why: &str,
        reviewer: &str,
        verdict: &str,
        node: &str,
    ) -> StoreResult<Option<ReviewRecord>> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting a transaction"))?;
        let now = Utc::now();
        let inserted = sqlx::query(
            "INSERT INTO reviews (request_id, reason, reviewer, verdict, created_at, closed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(request_id.to_string())
        .bind(why)
        .bind(reviewer)
        .bind(verdict)
        .bind(micros(now))
        .execute(&mut *tx)
        .await
        .map_err(db("closing a review"))?
        .rows_affected();
        if inserted == 0 {
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO audit_events (id, at, kind, actor, request_id, node, details)
             VALUES (?1, ?2, 'review.closed', ?3, ?4, ?5, ?6)",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(micros(now))
        .bind(reviewer)
        .bind(request_id.to_string())
        .bind(node)
        .bind(serde_json::json!({ "reason": why, "verdict": verdict }).to_string())
        .execute(&mut *tx)
        .await
        .map_err(db("auditing a review"))?;
        tx.commit().await.map_err(db("committing a review"))?;
        Ok(Some(ReviewRecord {
            request_id,
            reason: why.to_owned(),
            reviewer: reviewer.to_owned(),
            verdict: verdict.to_owned(),
            closed_at: from_micros(micros(now))?,
        }))
    }

    async fn open_requests_of(&self, requester: &str, at_most: i64) -> StoreResult<i64> {
        sqlx::query_scalar(
            "SELECT count(*) FROM (
                SELECT 1 FROM requests
                 WHERE requester = ?1
                   AND state NOT IN ('EXPIRED','REVOKED','REJECTED','CANCELLED','TIMED_OUT','FAILED')
                 LIMIT ?2
             )",
        )
        .bind(requester)
        .bind(at_most.max(0))
        .fetch_one(&self.pool)
        .await
        .map_err(db("counting a requester's open requests"))
    }

    async fn last_break_glass_of(&self, requester: &str) -> StoreResult<Option<Timestamp>> {
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT max(created_at) FROM requests WHERE requester = ?1 AND break_glass <> 0",
        )
        .bind(requester)
        .fetch_one(&self.pool)
        .await
        .map_err(db("reading a requester's last break-glass request"))?;
        last.map(from_micros).transpose()
    }

    async fn note_identity(&self, subject: &str, verified_email: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO identities (subject, verified_email, seen_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (subject) DO UPDATE
                SET verified_email = excluded.verified_email, seen_at = excluded.seen_at
              WHERE identities.verified_email IS NOT excluded.verified_email",
        )
        .bind(subject)
        .bind(verified_email)
        .bind(micros(Utc::now()))
        .execute(&self.pool)
        .await
        .map_err(db("recording an identity"))?;
        Ok(())
    }

    async fn verified_email_of(&self, subject: &str) -> StoreResult<Option<String>> {
        sqlx::query_scalar("SELECT verified_email FROM identities WHERE subject = ?1")
            .bind(subject)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading an identity"))
    }

    async fn set_trust_tier(
        &self,
        subject: &str,
        tier: i64,
        by: &str,
        reason: &str,
        node: &str,
    ) -> StoreResult<PrincipalRecord> {
        admin::set_trust_tier(&self.pool, subject, tier, by, reason, node).await
    }

    async fn append_audit(
        &self,
        kind: &str,
        actor: &str,
        request_id: Option<Uuid>,
        details: &serde_json::Value,
        node: &str,
    ) -> StoreResult<Uuid> {
        audit::append(&self.pool, kind, actor, request_id, details, node).await
    }

    async fn query_audit(
        &self,
        q: &AuditQuery,
    ) -> StoreResult<Vec<(AuditEvent, Option<ChainRow>)>> {
        audit::query(&self.pool, q).await
    }

    async fn get_policy(&self, name: &str) -> StoreResult<Option<(PolicySource, Timestamp)>> {
        admin::get_policy(&self.pool, name).await
    }

    async fn list_policies(&self) -> StoreResult<Vec<(PolicySource, Timestamp)>> {
        admin::list_policies(&self.pool).await
    }
}

impl SqliteStore {
    async fn put_policy_version(
        &self,
        name: &str,
        rego: &str,
        author: &str,
        node: &str,
        delete: bool,
    ) -> StoreResult<Option<i64>> {
        use sha2::{Digest, Sha256};
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting a transaction"))?;
        let cur: Option<(i64, bool)> = sqlx::query_as(
            "SELECT version, deleted FROM policies WHERE name = ?1 ORDER BY version DESC LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("reading a policy"))?;
        if delete && !matches!(cur, Some((_, false))) {
            return Ok(None);
        }
        let version = cur.map(|c| c.0).unwrap_or(0) + 1;
        let now = micros(Utc::now());
        sqlx::query("INSERT INTO policies (name, version, rego, author, deleted, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
            .bind(name)
            .bind(version)
            .bind(rego)
            .bind(author)
            .bind(delete)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db("storing a policy"))?;
        let details = serde_json::json!({ "name": name, "version": version, "sha256": hex::encode(Sha256::digest(rego.as_bytes())) });
        sqlx::query("INSERT INTO audit_events (id, at, kind, actor, node, details) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
            .bind(Uuid::now_v7().to_string())
            .bind(now)
            .bind(if delete { "policy.deleted" } else { "policy.applied" })
            .bind(author)
            .bind(node)
            .bind(details.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db("auditing a policy change"))?;
        tx.commit().await.map_err(db("committing a policy"))?;
        Ok(Some(version))
    }
}
