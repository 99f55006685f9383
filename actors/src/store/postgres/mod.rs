//! The PostgreSQL store: every transition is one data-modifying statement, so no
//! transaction ever sits idle holding locks. Fenced writes read their `shard_owners` row
//! `FOR SHARE`: a takeover's update of that row waits for them and then sees them.
//!
//! `impl Store` below holds the body of every method, in the trait's order; the audit chain
//! (`audit.rs`) and the outbox (`outbox.rs`) are traits of their own. Besides them:
//! `connect.rs` opens the pool, `requests.rs` has the statement that create and transition
//! share and the list filter's SQL. Rows are decoded by the decoders both backends share
//! (`store/rows.rs`), through the [`Columns`] impl here for PostgreSQL's column types.

mod audit;
mod commits;
mod connect;
mod outbox;
mod requests;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::rows::{self, Columns, OUTBOX_COLUMNS, Plain};
use super::*;
use crate::domain::State;

pub struct PgStore {
    pool: PgPool,
}

impl Columns for PgRow {
    fn read<T: Plain>(&self, col: &str, op: &'static str) -> StoreResult<T> {
        self.try_get(col).map_err(db(op))
    }

    fn time(&self, col: &str, op: &'static str) -> StoreResult<Timestamp> {
        self.try_get(col).map_err(db(op))
    }

    fn opt_time(&self, col: &str, op: &'static str) -> StoreResult<Option<Timestamp>> {
        self.try_get(col).map_err(db(op))
    }

    fn uuid(&self, col: &str, op: &'static str) -> StoreResult<Uuid> {
        self.try_get(col).map_err(db(op))
    }

    fn opt_uuid(&self, col: &str, op: &'static str) -> StoreResult<Option<Uuid>> {
        self.try_get(col).map_err(db(op))
    }

    fn shard(&self, col: &str, op: &'static str) -> StoreResult<u32> {
        Ok(self.try_get::<i32, _>(col).map_err(db(op))? as u32)
    }

    fn body(&self) -> StoreResult<Value> {
        let body: sqlx::types::Json<Value> =
            self.try_get("body").map_err(db("reading a request body"))?;
        Ok(body.0)
    }
}

/// The fence (docs/engine.md, "Fencing and ownership"): this owner at this epoch, with an unexpired lease. Reading the
/// owner row `FOR SHARE` makes a takeover (an UPDATE of that row) wait for this write.
fn fence_sql(shard: u8, owner: u8, epoch: u8) -> String {
    format!(
        "SELECT 1 FROM shard_owners o
          WHERE o.shard = ${shard} AND o.owner = ${owner} AND o.epoch = ${epoch}
            AND EXISTS (SELECT 1 FROM shard_renewals r
                         WHERE r.shard = o.shard AND r.epoch = o.epoch AND r.expires_at > statement_timestamp())
          FOR SHARE OF o"
    )
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn announce_commits(&self, announcement: &Announcement) -> StoreResult<()> {
        self.notify_commits(announcement).await
    }

    async fn commit_announcements(&self) -> StoreResult<Option<Box<dyn Announcements>>> {
        Ok(Some(self.listen_commits().await?))
    }

    async fn db_now(&self) -> StoreResult<Timestamp> {
        sqlx::query_scalar("SELECT statement_timestamp()")
            .fetch_one(&self.pool)
            .await
            .map_err(db("reading the database clock"))
    }

    async fn cluster_value(&self, key: &str, if_none: &str) -> StoreResult<String> {
        sqlx::query_scalar(
            "WITH ins AS (INSERT INTO cluster_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = cluster_meta.value RETURNING value)
             SELECT value FROM ins",
        )
        .bind(key)
        .bind(if_none)
        .fetch_one(&self.pool)
        .await
        .map_err(db("reading cluster metadata"))
    }

    async fn init_shards(&self, shards: u32) -> StoreResult<u32> {
        let stored: String = sqlx::query_scalar(
            "WITH ins AS (INSERT INTO cluster_meta (key, value) VALUES ('shards', $1) ON CONFLICT (key) DO UPDATE SET value = cluster_meta.value RETURNING value)
             SELECT value FROM ins",
        )
        .bind(shards.to_string())
        .fetch_one(&self.pool)
        .await
        .map_err(db("initialising the shard count"))?;
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
        let shards: Vec<i32> = shards.iter().map(|s| *s as i32).collect();
        // One conditional statement: a shard is taken only if its lease has lapsed, and
        // taking it bumps the epoch, which fences every write of the previous owner.
        let rows = sqlx::query(
            "WITH taken AS (
                INSERT INTO shard_owners AS o (shard, owner, incarnation, epoch, acquired_at)
                SELECT s, $2, $3, 1, statement_timestamp() FROM unnest($1::int[]) AS s
                ON CONFLICT (shard) DO UPDATE
                   SET owner = EXCLUDED.owner, incarnation = EXCLUDED.incarnation,
                       epoch = o.epoch + 1, acquired_at = EXCLUDED.acquired_at
                 WHERE NOT EXISTS (SELECT 1 FROM shard_renewals r
                                    WHERE r.shard = o.shard AND r.epoch = o.epoch
                                      AND r.expires_at > statement_timestamp())
                RETURNING o.shard, o.epoch
             ), ren AS (
                INSERT INTO shard_renewals (shard, epoch, expires_at)
                SELECT shard, epoch, statement_timestamp() + $4::bigint * interval '1 millisecond' FROM taken
                ON CONFLICT (shard) DO UPDATE SET epoch = EXCLUDED.epoch, expires_at = EXCLUDED.expires_at
                RETURNING shard, epoch, expires_at
             )
             SELECT shard, epoch, expires_at FROM ren ORDER BY shard",
        )
        .bind(&shards)
        .bind(node)
        .bind(incarnation)
        .bind(ttl_ms(ttl))
        .fetch_all(&self.pool)
        .await
        .map_err(db("acquiring shards"))?;
        rows.iter().map(|r| rows::lease(r, node)).collect()
    }

    async fn renew_shards(
        &self,
        node: &str,
        incarnation: Uuid,
        ttl: Duration,
    ) -> StoreResult<Vec<Lease>> {
        let rows = sqlx::query(
            "UPDATE shard_renewals r SET expires_at = statement_timestamp() + $3::bigint * interval '1 millisecond'
               FROM shard_owners o
              WHERE o.shard = r.shard AND o.epoch = r.epoch AND o.owner = $1 AND o.incarnation = $2
                AND r.expires_at > statement_timestamp()
             RETURNING r.shard, r.epoch, r.expires_at",
        )
        .bind(node)
        .bind(incarnation)
        .bind(ttl_ms(ttl))
        .fetch_all(&self.pool)
        .await
        .map_err(db("renewing shard leases"))?;
        rows.iter().map(|r| rows::lease(r, node)).collect()
    }

    async fn release_shards(
        &self,
        node: &str,
        incarnation: Uuid,
        only: Option<&[u32]>,
    ) -> StoreResult<()> {
        let only: Option<Vec<i32>> = only.map(|s| s.iter().map(|s| *s as i32).collect());
        sqlx::query(
            "UPDATE shard_renewals r SET expires_at = statement_timestamp() - interval '1 millisecond'
               FROM shard_owners o
              WHERE o.shard = r.shard AND o.epoch = r.epoch AND o.owner = $1 AND o.incarnation = $2
                AND ($3::int[] IS NULL OR r.shard = ANY($3))",
        )
        .bind(node)
        .bind(incarnation)
        .bind(only)
        .execute(&self.pool)
        .await
        .map_err(db("releasing shard leases"))?;
        Ok(())
    }

    async fn heartbeat(&self, hb: &Heartbeat<'_>, ttl: Duration) -> StoreResult<bool> {
        // A restarted node (new incarnation) takes its row over once the old heartbeat is older
        // than the TTL; until then the row is another live process's and nothing is written.
        let row = sqlx::query(
            "INSERT INTO nodes AS n (node_id, incarnation, cluster_addr, api_addr, started_at, heartbeat_at, clock_offset_us)
             VALUES ($1, $2, $3, $4, statement_timestamp(), statement_timestamp(), $5)
             ON CONFLICT (node_id) DO UPDATE
                SET incarnation = EXCLUDED.incarnation, cluster_addr = EXCLUDED.cluster_addr,
                    api_addr = EXCLUDED.api_addr, heartbeat_at = EXCLUDED.heartbeat_at,
                    clock_offset_us = EXCLUDED.clock_offset_us,
                    started_at = CASE WHEN n.incarnation = EXCLUDED.incarnation THEN n.started_at
                                      ELSE EXCLUDED.started_at END
              WHERE n.incarnation = EXCLUDED.incarnation
                 OR n.heartbeat_at < statement_timestamp() - $6::bigint * interval '1 microsecond'
             RETURNING 1",
        )
        .bind(hb.node)
        .bind(hb.incarnation)
        .bind(hb.cluster_addr)
        .bind(hb.api_addr)
        .bind(hb.clock_offset_us)
        .bind(i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX))
        .fetch_optional(&self.pool)
        .await
        .map_err(db("recording a heartbeat"))?;
        Ok(row.is_some())
    }

    async fn leave(&self, node: &str, incarnation: Uuid) -> StoreResult<()> {
        sqlx::query(
            "UPDATE nodes SET heartbeat_at = statement_timestamp() - interval '1 day'
              WHERE node_id = $1 AND incarnation = $2",
        )
        .bind(node)
        .bind(incarnation)
        .execute(&self.pool)
        .await
        .map_err(db("leaving the cluster"))?;
        Ok(())
    }

    async fn members(&self) -> StoreResult<(Timestamp, Vec<Member>)> {
        let rows = sqlx::query(
            "SELECT node_id, incarnation, cluster_addr, api_addr, started_at, heartbeat_at, clock_offset_us,
                    statement_timestamp() AS db_now
               FROM nodes ORDER BY node_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading the members"))?;
        let db_now = match rows.first() {
            Some(r) => r.time("db_now", "reading the members")?,
            None => self.db_now().await?,
        };
        Ok((
            db_now,
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
        let event_id = Uuid::now_v7();
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH fence AS ({fence}),
             aud AS (
                INSERT INTO audit_events (id, at, kind, actor, request_id, node, details)
                SELECT $4, statement_timestamp(), $5, $6, $7, $8, $9 FROM fence
                RETURNING id
             ), ob AS (
                INSERT INTO outbox (event_id, request_id, sink, kind, payload, created_at, next_attempt_at)
                SELECT $4, $7, o.sink, o.kind, o.payload, statement_timestamp(), statement_timestamp()
                  FROM aud, jsonb_to_recordset($10::jsonb) AS o(sink text, kind text, payload text)
             )
             SELECT statement_timestamp() AS db_now FROM aud",
            fence = fence_sql(1, 2, 3)
        )))
        .bind(fence.shard as i32)
        .bind(&fence.owner)
        .bind(fence.epoch)
        .bind(event_id)
        .bind(f.kind)
        .bind(f.actor)
        .bind(f.request_id)
        .bind(f.node)
        .bind(f.details.to_string())
        .bind(rows::outbox_json(f.outbox))
        .fetch_optional(&self.pool)
        .await
        .map_err(db("recording a reconciler finding"))?;
        match row {
            Some(r) => Ok(Write::Updated {
                version: 0,
                db_now: r
                    .try_get("db_now")
                    .map_err(db("reading the database clock"))?,
            }),
            None => Ok(Write::Stale),
        }
    }

    async fn put_reconcile_pass(&self, p: &ReconcilePass) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO reconcile_passes (provider, node, at, duration_ms, listed, orphans, drift, tombstones, error)
             VALUES ($1, $2, statement_timestamp(), $3, $4, $5, $6, $7, $8)
             ON CONFLICT (provider) DO UPDATE SET node = EXCLUDED.node, at = EXCLUDED.at,
                 duration_ms = EXCLUDED.duration_ms, listed = EXCLUDED.listed, orphans = EXCLUDED.orphans,
                 drift = EXCLUDED.drift, tombstones = EXCLUDED.tombstones, error = EXCLUDED.error",
        )
        .bind(&p.provider)
        .bind(&p.node)
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
               FROM audit_events WHERE request_id = $1
              ORDER BY request_version IS NULL, request_version, at, id",
        )
        .bind(id.0)
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
               FROM audit_events WHERE request_id = $1 AND request_version > $2
              ORDER BY request_version",
        )
        .bind(id.0)
        .bind(after_version)
        .fetch_all(&self.pool)
        .await
        .map_err(db("loading request events"))?;
        rows.iter().map(rows::audit_event).collect()
    }

    async fn get_principal(&self, subject: &str) -> StoreResult<Option<PrincipalRecord>> {
        let row = sqlx::query(
            "SELECT subject, trust_tier, updated_by, updated_at FROM principals WHERE subject = $1",
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
        let row: Option<(Timestamp,)> = sqlx::query_as(
            "WITH ins AS (
                INSERT INTO reviews (request_id, reason, reviewer, verdict, created_at, closed_at)
                VALUES ($1, $2, $3, $4, statement_timestamp(), statement_timestamp())
                ON CONFLICT (request_id) DO NOTHING
                RETURNING closed_at
             ), aud AS (
                INSERT INTO audit_events (id, at, kind, actor, request_id, node, details)
                SELECT $5, statement_timestamp(), 'review.closed', $3, $1, $6,
                       json_build_object('reason', $2::text, 'verdict', $4::text)::text
                  FROM ins
             )
             SELECT closed_at FROM ins",
        )
        .bind(request_id)
        .bind(why)
        .bind(reviewer)
        .bind(verdict)
        .bind(Uuid::now_v7())
        .bind(node)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("closing a review"))?;
        Ok(row.map(|(closed_at,)| ReviewRecord {
            request_id,
            reason: why.to_owned(),
            reviewer: reviewer.to_owned(),
            verdict: verdict.to_owned(),
            closed_at,
        }))
    }

    async fn note_identity(&self, subject: &str, verified_email: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO identities (subject, verified_email, seen_at)
             VALUES ($1, $2, statement_timestamp())
             ON CONFLICT (subject) DO UPDATE
                SET verified_email = EXCLUDED.verified_email, seen_at = EXCLUDED.seen_at
              WHERE identities.verified_email IS DISTINCT FROM EXCLUDED.verified_email",
        )
        .bind(subject)
        .bind(verified_email)
        .execute(&self.pool)
        .await
        .map_err(db("recording an identity"))?;
        Ok(())
    }

    async fn verified_email_of(&self, subject: &str) -> StoreResult<Option<String>> {
        sqlx::query_scalar("SELECT verified_email FROM identities WHERE subject = $1")
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
        // `old` locks an existing row, so `from` is the value this update replaces. A row that a
        // concurrent first write inserts after this statement's snapshot is not updated blindly
        // (its `from` would be unknown): nothing is written and the statement runs again.
        for _ in 0..3 {
            let row = sqlx::query(
                "WITH old AS (
                    SELECT trust_tier FROM principals WHERE subject = $1 FOR UPDATE
                 ), up AS (
                    INSERT INTO principals AS p (subject, trust_tier, updated_by, updated_at)
                    VALUES ($1, $2, $3, statement_timestamp())
                    ON CONFLICT (subject) DO UPDATE
                       SET trust_tier = EXCLUDED.trust_tier, updated_by = EXCLUDED.updated_by,
                           updated_at = EXCLUDED.updated_at
                     WHERE EXISTS (SELECT 1 FROM old)
                    RETURNING subject, trust_tier, updated_by, updated_at
                 ), aud AS (
                    INSERT INTO audit_events (id, at, kind, actor, node, details)
                    SELECT $6, statement_timestamp(), 'principal.trust_tier_changed', $3, $5,
                           json_build_object('subject', up.subject, 'from', (SELECT trust_tier FROM old),
                                             'to', up.trust_tier, 'reason', $4::text)::text
                      FROM up
                 )
                 SELECT subject, trust_tier, updated_by, updated_at FROM up",
            )
            .bind(subject)
            .bind(tier)
            .bind(by)
            .bind(reason)
            .bind(node)
            .bind(Uuid::now_v7())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("setting a trust tier"))?;
            if let Some(row) = row {
                return rows::principal(&row);
            }
        }
        Err(StoreError::Contended {
            op: "setting a trust tier",
        })
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
             VALUES ($1, statement_timestamp(), $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(kind)
        .bind(actor)
        .bind(request_id)
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
            "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE request_id = $1 ORDER BY id"
        )))
        .bind(id.0)
        .fetch_all(&self.pool)
        .await
        .map_err(db("loading outbox rows"))?;
        rows.iter().map(rows::outbox_entry).collect()
    }

    async fn policies(&self) -> StoreResult<Vec<PolicySource>> {
        let rows = sqlx::query(
            "SELECT DISTINCT ON (name) name, version, rego, author, deleted FROM policies ORDER BY name, version DESC",
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
                SELECT * FROM policies WHERE name = $1 ORDER BY version DESC LIMIT 1
             ) latest WHERE NOT deleted",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("loading a policy"))?;
        row.as_ref().map(rows::policy_at).transpose()
    }

    async fn list_policies(&self) -> StoreResult<Vec<(PolicySource, Timestamp)>> {
        let rows = sqlx::query(
            "SELECT name, version, rego, author, created_at FROM (
                SELECT DISTINCT ON (name) * FROM policies ORDER BY name, version DESC
             ) latest WHERE NOT deleted ORDER BY name",
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

/// A new policy version and its audit event in one statement. Deleting an unknown (or
/// already deleted) policy writes nothing and answers `None`.
async fn put_policy_version(
    pool: &PgPool,
    name: &str,
    rego: &str,
    author: &str,
    node: &str,
    delete: bool,
) -> StoreResult<Option<i64>> {
    let version: Option<i64> = sqlx::query_scalar(
        "WITH cur AS (
            SELECT version, deleted FROM policies WHERE name = $1 ORDER BY version DESC LIMIT 1
         ), ins AS (
            INSERT INTO policies (name, version, rego, author, deleted, created_at)
            SELECT $1, COALESCE((SELECT version FROM cur), 0) + 1, $2, $3, $5, statement_timestamp()
             WHERE NOT $5 OR EXISTS (SELECT 1 FROM cur WHERE NOT deleted)
            RETURNING version
         ), aud AS (
            INSERT INTO audit_events (id, at, kind, actor, node, details)
            SELECT $6, statement_timestamp(), CASE WHEN $5 THEN 'policy.deleted' ELSE 'policy.applied' END, $3, $4,
                   json_build_object('name', $1::text, 'version', ins.version, 'sha256', encode(sha256(convert_to($2, 'UTF8')), 'hex'))::text
              FROM ins
         )
         SELECT version FROM ins",
    )
    .bind(name)
    .bind(rego)
    .bind(author)
    .bind(node)
    .bind(delete)
    .bind(Uuid::now_v7())
    .fetch_optional(pool)
    .await
    .map_err(db("storing a policy"))?;
    Ok(version)
}
