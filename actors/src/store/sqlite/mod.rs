//! The embedded SQLite store for the single-node default. One process per database file:
//! an exclusive lock file beside it is held for the store's lifetime, and every write runs
//! in `BEGIN IMMEDIATE`. The database clock is the clock read inside that transaction.
//!
//! `impl Store` below holds the body of every method, in the trait's order; the audit chain
//! (`audit.rs`) and the outbox (`outbox.rs`) are traits of their own. Besides them:
//! `open.rs` opens the file, `requests.rs` has the transaction that create and transition
//! share and the list filter's SQL. Rows are decoded by the decoders both backends share
//! (`store/rows.rs`), through the [`Columns`] impl here: times are integer microseconds,
//! ids text.

mod audit;
mod open;
mod outbox;
mod requests;

use std::fs::File;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::rows::{self, Columns, OUTBOX_COLUMNS, Plain};
use super::*;
use crate::domain::State;

pub struct SqliteStore {
    pool: SqlitePool,
    _lock: File,
}

fn micros(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

fn from_micros(v: i64) -> StoreResult<Timestamp> {
    DateTime::<Utc>::from_timestamp_micros(v).ok_or_else(|| StoreError::Corrupt {
        what: format!("time {v}"),
    })
}

fn parse_uuid(col: &str, s: &str) -> StoreResult<Uuid> {
    Uuid::from_str(s).map_err(|_| StoreError::Corrupt {
        what: format!("{col} {s:?}"),
    })
}

impl Columns for SqliteRow {
    fn read<T: Plain>(&self, col: &str, op: &'static str) -> StoreResult<T> {
        self.try_get(col).map_err(db(op))
    }

    fn time(&self, col: &str, op: &'static str) -> StoreResult<Timestamp> {
        from_micros(self.try_get(col).map_err(db(op))?)
    }

    fn opt_time(&self, col: &str, op: &'static str) -> StoreResult<Option<Timestamp>> {
        let v: Option<i64> = self.try_get(col).map_err(db(op))?;
        v.map(from_micros).transpose()
    }

    fn uuid(&self, col: &str, op: &'static str) -> StoreResult<Uuid> {
        let s: String = self.try_get(col).map_err(db(op))?;
        parse_uuid(col, &s)
    }

    fn opt_uuid(&self, col: &str, op: &'static str) -> StoreResult<Option<Uuid>> {
        let s: Option<String> = self.try_get(col).map_err(db(op))?;
        s.map(|s| parse_uuid(col, &s)).transpose()
    }

    fn shard(&self, col: &str, op: &'static str) -> StoreResult<u32> {
        Ok(self.try_get::<i64, _>(col).map_err(db(op))? as u32)
    }

    fn body(&self) -> StoreResult<Value> {
        let body: String = self.try_get("body").map_err(db("reading a request body"))?;
        serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
            what: format!("request body: {e}"),
        })
    }
}

/// Whether `fence` holds at `now`: this owner at this epoch, with an unexpired lease. Read
/// inside the writer's `BEGIN IMMEDIATE`, so no takeover can commit before the write does.
async fn fence_holds(conn: &mut SqliteConnection, fence: &Fence, now: i64) -> StoreResult<bool> {
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

fn ttl_us(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn db_now(&self) -> StoreResult<Timestamp> {
        Ok(Utc::now())
    }

    async fn cluster_value(&self, key: &str, if_none: &str) -> StoreResult<String> {
        self.meta_get_or_insert(key, if_none).await
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
        let rows = sqlx::query(
            "SELECT o.shard, o.epoch, r.expires_at FROM shard_owners o JOIN shard_renewals r ON r.shard = o.shard AND r.epoch = o.epoch
              WHERE o.owner = ?1 AND o.incarnation = ?2 AND r.expires_at > ?3 ORDER BY o.shard",
        )
        .bind(node)
        .bind(incarnation.to_string())
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("reading leases"))?;
        let leases = rows
            .iter()
            .map(|r| rows::lease(r, node))
            .collect::<StoreResult<_>>()?;
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
        let now = micros(Utc::now());
        let stale_before = now.saturating_sub(ttl_us(ttl));
        let row: Option<i64> = sqlx::query_scalar(
            "INSERT INTO nodes AS n (node_id, incarnation, cluster_addr, api_addr, started_at, heartbeat_at, clock_offset_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)
             ON CONFLICT (node_id) DO UPDATE
                SET incarnation = excluded.incarnation, cluster_addr = excluded.cluster_addr,
                    api_addr = excluded.api_addr, heartbeat_at = excluded.heartbeat_at,
                    clock_offset_us = excluded.clock_offset_us,
                    started_at = CASE WHEN n.incarnation = excluded.incarnation THEN n.started_at
                                      ELSE excluded.started_at END
              WHERE n.incarnation = excluded.incarnation OR n.heartbeat_at < ?7
             RETURNING 1",
        )
        .bind(hb.node)
        .bind(hb.incarnation.to_string())
        .bind(hb.cluster_addr)
        .bind(hb.api_addr)
        .bind(now)
        .bind(hb.clock_offset_us)
        .bind(stale_before)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("recording a heartbeat"))?;
        Ok(row.is_some())
    }

    async fn leave(&self, node: &str, incarnation: Uuid) -> StoreResult<()> {
        let day_ago = micros(Utc::now()).saturating_sub(86_400_000_000);
        sqlx::query("UPDATE nodes SET heartbeat_at = ?3 WHERE node_id = ?1 AND incarnation = ?2")
            .bind(node)
            .bind(incarnation.to_string())
            .bind(day_ago)
            .execute(&self.pool)
            .await
            .map_err(db("leaving the cluster"))?;
        Ok(())
    }

    async fn members(&self) -> StoreResult<(Timestamp, Vec<Member>)> {
        let rows = sqlx::query(
            "SELECT node_id, incarnation, cluster_addr, api_addr, started_at, heartbeat_at, clock_offset_us
               FROM nodes ORDER BY node_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading the members"))?;
        Ok((
            Utc::now(),
            rows.iter().map(rows::member).collect::<StoreResult<_>>()?,
        ))
    }

    async fn shard_table(&self) -> StoreResult<Vec<ShardRecord>> {
        let rows = sqlx::query(
            "SELECT o.shard, o.owner, o.incarnation, o.epoch, o.acquired_at,
                    (SELECT r.expires_at FROM shard_renewals r WHERE r.shard = o.shard AND r.epoch = o.epoch) AS expires_at
               FROM shard_owners o ORDER BY o.shard",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading the shard table"))?;
        rows.iter().map(rows::shard_record).collect()
    }

    async fn record_finding(&self, fence: &Fence, f: &Finding<'_>) -> StoreResult<Write> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting a transaction"))?;
        let db_now = Utc::now();
        let now = micros(db_now);
        if !fence_holds(&mut tx, fence, now).await? {
            return Ok(Write::Stale);
        }
        let event_id = Uuid::now_v7().to_string();
        let request_id = f.request_id.map(|r| r.to_string());
        sqlx::query(
            "INSERT INTO audit_events (id, at, kind, actor, request_id, node, details)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(&event_id)
        .bind(now)
        .bind(f.kind)
        .bind(f.actor)
        .bind(&request_id)
        .bind(f.node)
        .bind(f.details.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db("recording a reconciler finding"))?;
        for o in f.outbox {
            sqlx::query(
                "INSERT INTO outbox (event_id, request_id, sink, kind, payload, created_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            )
            .bind(&event_id)
            .bind(&request_id)
            .bind(&o.sink)
            .bind(&o.kind)
            .bind(&o.payload)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db("enqueueing a reconciler finding"))?;
        }
        tx.commit()
            .await
            .map_err(db("committing a reconciler finding"))?;
        Ok(Write::Updated { version: 0, db_now })
    }

    async fn put_reconcile_pass(&self, p: &ReconcilePass) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO reconcile_passes (provider, node, at, duration_ms, listed, orphans, drift, tombstones, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (provider) DO UPDATE SET node = excluded.node, at = excluded.at,
                 duration_ms = excluded.duration_ms, listed = excluded.listed, orphans = excluded.orphans,
                 drift = excluded.drift, tombstones = excluded.tombstones, error = excluded.error",
        )
        .bind(&p.provider)
        .bind(&p.node)
        .bind(micros(Utc::now()))
        .bind(p.duration_ms)
        .bind(p.listed)
        .bind(p.orphans)
        .bind(p.drift)
        .bind(p.tombstones)
        .bind(&p.error)
        .execute(&self.pool)
        .await
        .map_err(db("recording a reconcile pass"))?;
        Ok(())
    }

    async fn reconcile_passes(&self) -> StoreResult<Vec<ReconcilePass>> {
        let rows = sqlx::query(
            "SELECT provider, node, at, duration_ms, listed, orphans, drift, tombstones, error
               FROM reconcile_passes ORDER BY provider",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading reconcile passes"))?;
        rows.iter().map(rows::reconcile_pass).collect()
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
        rows.iter().map(rows::audit_event).collect()
    }

    async fn request_events(
        &self,
        id: RequestId,
        after_version: i64,
    ) -> StoreResult<Vec<AuditEvent>> {
        let rows = sqlx::query(
            "SELECT id, at, kind, actor, request_id, request_version, node, details
               FROM audit_events WHERE request_id = ?1 AND request_version > ?2
              ORDER BY request_version",
        )
        .bind(id.0.to_string())
        .bind(after_version)
        .fetch_all(&self.pool)
        .await
        .map_err(db("loading request events"))?;
        rows.iter().map(rows::audit_event).collect()
    }

    async fn get_principal(&self, subject: &str) -> StoreResult<Option<PrincipalRecord>> {
        let row = sqlx::query(
            "SELECT subject, trust_tier, updated_by, updated_at FROM principals WHERE subject = ?1",
        )
        .bind(subject)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("loading a principal"))?;
        row.as_ref().map(rows::principal).transpose()
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
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting a transaction"))?;
        let now = micros(Utc::now());
        let from: Option<i64> =
            sqlx::query_scalar("SELECT trust_tier FROM principals WHERE subject = ?1")
                .bind(subject)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("loading a principal"))?;
        let row = sqlx::query(
            "INSERT INTO principals (subject, trust_tier, updated_by, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (subject) DO UPDATE
                SET trust_tier = excluded.trust_tier, updated_by = excluded.updated_by, updated_at = excluded.updated_at
             RETURNING subject, trust_tier, updated_by, updated_at",
        )
        .bind(subject)
        .bind(tier)
        .bind(by)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("setting a trust tier"))?;
        let details =
            serde_json::json!({ "subject": subject, "from": from, "to": tier, "reason": reason });
        sqlx::query(
            "INSERT INTO audit_events (id, at, kind, actor, node, details)
             VALUES (?1, ?2, 'principal.trust_tier_changed', ?3, ?4, ?5)",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(now)
        .bind(by)
        .bind(node)
        .bind(details.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db("auditing a trust tier change"))?;
        let record = rows::principal(&row)?;
        tx.commit()
            .await
            .map_err(db("committing a trust tier change"))?;
        Ok(record)
    }

    async fn append_audit(
        &self,
        kind: &str,
        actor: &str,
        request_id: Option<Uuid>,
        details: &serde_json::Value,
        node: &str,
    ) -> StoreResult<Uuid> {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO audit_events (id, at, kind, actor, request_id, node, details)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(id.to_string())
        .bind(micros(Utc::now()))
        .bind(kind)
        .bind(actor)
        .bind(request_id.map(|r| r.to_string()))
        .bind(node)
        .bind(details.to_string())
        .execute(&self.pool)
        .await
        .map_err(db("appending an audit event"))?;
        Ok(id)
    }

    async fn query_audit(
        &self,
        q: &AuditQuery,
    ) -> StoreResult<Vec<(AuditEvent, Option<ChainRow>)>> {
        let rows = audit::audit_query(q)
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(db("querying audit events"))?;
        rows.iter().map(rows::audit_with_link).collect()
    }

    async fn request_outbox(&self, id: RequestId) -> StoreResult<Vec<OutboxEntry>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE request_id = ?1 ORDER BY id"
        )))
        .bind(id.0.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(db("loading outbox rows"))?;
        rows.iter().map(rows::outbox_entry).collect()
    }

    async fn policies(&self) -> StoreResult<Vec<PolicySource>> {
        let rows = sqlx::query(
            "SELECT p.name, p.version, p.rego, p.author, p.deleted FROM policies p
              WHERE p.version = (SELECT max(version) FROM policies q WHERE q.name = p.name) ORDER BY p.name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("loading policies"))?;
        rows::live_policies(&rows)
    }

    async fn policy_revision(&self) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT count(*) FROM policies")
            .fetch_one(&self.pool)
            .await
            .map_err(db("reading the policy revision"))
    }

    async fn get_policy(&self, name: &str) -> StoreResult<Option<(PolicySource, Timestamp)>> {
        let row = sqlx::query(
            "SELECT name, version, rego, author, created_at FROM (
                SELECT * FROM policies WHERE name = ?1 ORDER BY version DESC LIMIT 1
             ) WHERE NOT deleted",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("loading a policy"))?;
        row.as_ref().map(rows::policy_at).transpose()
    }

    async fn list_policies(&self) -> StoreResult<Vec<(PolicySource, Timestamp)>> {
        let rows = sqlx::query(
            "SELECT p.name, p.version, p.rego, p.author, p.created_at FROM policies p
              WHERE p.version = (SELECT max(version) FROM policies q WHERE q.name = p.name) AND NOT p.deleted
              ORDER BY p.name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("loading policies"))?;
        rows.iter().map(rows::policy_at).collect()
    }

    async fn put_policy(
        &self,
        name: &str,
        rego: &str,
        author: &str,
        node: &str,
    ) -> StoreResult<i64> {
        put_policy_version(&self.pool, name, rego, author, node, false)
            .await
            .map(|v| v.unwrap_or(0))
    }

    async fn delete_policy(&self, name: &str, author: &str, node: &str) -> StoreResult<bool> {
        put_policy_version(&self.pool, name, "", author, node, true)
            .await
            .map(|v| v.is_some())
    }
}

/// A new policy version and its audit event in one transaction. Deleting an unknown (or
/// already deleted) policy writes nothing and answers `None`.
async fn put_policy_version(
    pool: &SqlitePool,
    name: &str,
    rego: &str,
    author: &str,
    node: &str,
    delete: bool,
) -> StoreResult<Option<i64>> {
    use sha2::{Digest, Sha256};
    let mut tx = pool
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
