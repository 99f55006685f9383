//! PostgreSQL implementation of the audit chain store, and the statement of an audit query.
//! Chain appends and checkpoints are single statements fenced like every other write.

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::{PgStore, fence_sql};
use crate::domain::Timestamp;
use crate::store::rows::{self, Columns, EVENT_COLUMNS};
use crate::store::{
    AuditEvent, AuditQuery, AuditStats, AuditStore, ChainRow, ChainTip, Checkpoint, Fence,
    OutboxRow, StoreError, StoreResult, VersionGap, Write, db,
};

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

#[async_trait]
impl AuditStore for PgStore {
    async fn chain_tip(&self) -> StoreResult<Option<ChainTip>> {
        let row = sqlx::query(
            "SELECT c.seq, c.hash, e.at, e.id FROM audit_chain c JOIN audit_events e ON e.id = c.event_id
              ORDER BY c.seq DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading the chain tip"))?;
        row.as_ref().map(rows::chain_tip).transpose()
    }

    async fn unchained_events(
        &self,
        since: Option<Timestamp>,
        limit: u32,
    ) -> StoreResult<Vec<AuditEvent>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events e
              WHERE ($1::timestamptz IS NULL OR e.at >= $1)
                AND NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id)
              ORDER BY e.at, e.id LIMIT $2"
        )))
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading unchained audit events"))?;
        rows.iter().map(rows::audit_event).collect()
    }

    async fn unchained_after(
        &self,
        after: (Timestamp, Uuid),
        limit: u32,
    ) -> StoreResult<Vec<AuditEvent>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events e
              WHERE (e.at, e.id) > ($1, $2) AND NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id)
              ORDER BY e.at, e.id LIMIT $3"
        )))
        .bind(after.0)
        .bind(after.1)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading unchained audit events"))?;
        rows.iter().map(rows::audit_event).collect()
    }

    async fn append_chain(&self, fence: &Fence, links: &[ChainRow]) -> StoreResult<Write> {
        if links.is_empty() {
            return Ok(Write::Stale);
        }
        let seqs: Vec<i64> = links.iter().map(|l| l.seq).collect();
        let ids: Vec<Uuid> = links.iter().map(|l| l.event_id).collect();
        let prevs: Vec<Vec<u8>> = links.iter().map(|l| l.prev_hash.clone()).collect();
        let hashes: Vec<Vec<u8>> = links.iter().map(|l| l.hash.clone()).collect();
        // One round trip: the rows appended and the database clock.
        let res = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH fence AS ({fence}),
             appended AS (
                INSERT INTO audit_chain (seq, event_id, prev_hash, hash)
                SELECT * FROM unnest($4::bigint[], $5::uuid[], $6::bytea[], $7::bytea[])
                 WHERE EXISTS (SELECT 1 FROM fence)
                RETURNING 1
             )
             SELECT count(*) AS n, statement_timestamp() AS db_now FROM appended",
            fence = fence_sql(1, 2, 3)
        )))
        .bind(fence.shard as i32)
        .bind(&fence.owner)
        .bind(fence.epoch)
        .bind(&seqs)
        .bind(&ids)
        .bind(&prevs)
        .bind(&hashes)
        .fetch_one(&self.pool)
        .await;
        let row = match res {
            // A competing append took these sequence numbers (or chained these events).
            Err(e) if is_unique_violation(&e) => return Ok(Write::Stale),
            Err(e) => {
                return Err(StoreError::Database {
                    op: "appending to the audit chain",
                    source: e,
                });
            }
            Ok(row) => row,
        };
        let n: i64 = row
            .try_get("n")
            .map_err(db("appending to the audit chain"))?;
        if n != links.len() as i64 {
            return Ok(Write::Stale);
        }
        Ok(Write::Updated {
            version: links[links.len() - 1].seq,
            db_now: row
                .try_get("db_now")
                .map_err(db("appending to the audit chain"))?,
        })
    }

    async fn add_checkpoint(
        &self,
        fence: &Fence,
        cp: &Checkpoint,
        outbox: &[OutboxRow],
    ) -> StoreResult<Write> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH fence AS ({fence}),
             cp AS (
                INSERT INTO audit_checkpoints (seq, hash, at, key_id, signature)
                SELECT $4, $5, $6, $7, $8 WHERE EXISTS (SELECT 1 FROM fence)
                RETURNING seq
             ), ob AS (
                INSERT INTO outbox (event_id, request_id, sink, kind, payload, created_at, next_attempt_at)
                SELECT $9, NULL, o.sink, o.kind, o.payload, statement_timestamp(), statement_timestamp()
                  FROM cp, jsonb_to_recordset($10::jsonb) AS o(sink text, kind text, payload text)
             )
             SELECT seq, statement_timestamp() AS db_now FROM cp",
            fence = fence_sql(1, 2, 3)
        )))
        .bind(fence.shard as i32)
        .bind(&fence.owner)
        .bind(fence.epoch)
        .bind(cp.seq)
        .bind(&cp.hash)
        .bind(cp.at)
        .bind(&cp.key_id)
        .bind(&cp.signature)
        .bind(Uuid::now_v7())
        .bind(rows::outbox_json(outbox))
        .fetch_optional(&self.pool)
        .await;
        match res_row(row)? {
            Some(r) => Ok(Write::Updated {
                version: r.try_get("seq").map_err(db("reading a checkpoint"))?,
                db_now: r
                    .try_get("db_now")
                    .map_err(db("reading the database clock"))?,
            }),
            None => Ok(Write::Stale),
        }
    }

    async fn chain_page(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> StoreResult<Vec<(ChainRow, Option<AuditEvent>)>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT c.seq, c.event_id AS link_event, c.prev_hash, c.hash, e.id IS NOT NULL AS present, {EVENT_COLUMNS}
               FROM audit_chain c LEFT JOIN audit_events e ON e.id = c.event_id
              WHERE c.seq > $1 ORDER BY c.seq LIMIT $2"
        )))
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading the audit chain"))?;
        rows.iter().map(rows::chain_entry).collect()
    }

    async fn checkpoints(&self) -> StoreResult<Vec<Checkpoint>> {
        let rows = sqlx::query(
            "SELECT seq, hash, at, key_id, signature FROM audit_checkpoints ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading checkpoints"))?;
        rows.iter().map(rows::checkpoint).collect()
    }

    async fn audit_stats(&self, since: Option<Timestamp>) -> StoreResult<AuditStats> {
        let r = sqlx::query(
            "WITH unchained AS (
                SELECT e.at FROM audit_events e
                 WHERE ($1::timestamptz IS NULL OR e.at >= $1)
                   AND NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id)
             )
             SELECT (SELECT coalesce(max(seq), 0) FROM audit_chain) AS chained,
                    (SELECT count(*) FROM unchained) AS unchained,
                    (SELECT min(at) FROM unchained) AS oldest,
                    statement_timestamp() AS db_now",
        )
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .map_err(db("reading audit statistics"))?;
        rows::audit_stats(&r, r.time("db_now", "reading audit statistics")?)
    }

    async fn version_gaps(&self, limit: u32) -> StoreResult<Vec<VersionGap>> {
        let rows = sqlx::query(
            "SELECT r.id, r.version,
                    COALESCE(array_agg(DISTINCT a.request_version) FILTER (WHERE a.request_version IS NOT NULL), '{}') AS present
               FROM requests r LEFT JOIN audit_events a ON a.request_id = r.id
              GROUP BY r.id, r.version
             HAVING count(DISTINCT a.request_version) <> r.version OR max(a.request_version) IS DISTINCT FROM r.version
              ORDER BY r.id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("checking audit versions"))?;
        rows.iter()
            .map(|r| {
                // An array of the versions: a type SQLite has not, so read here.
                let present: Vec<i64> = r
                    .try_get("present")
                    .map_err(db("checking audit versions"))?;
                rows::version_gap(r, present)
            })
            .collect()
    }
}

fn res_row(r: Result<Option<PgRow>, sqlx::Error>) -> StoreResult<Option<PgRow>> {
    r.map_err(db("storing a checkpoint"))
}

/// The statement of a page of audit events with their chain links; see [`AuditQuery`].
pub(super) fn audit_query(q: &AuditQuery) -> QueryBuilder<Postgres> {
    let mut b = QueryBuilder::<Postgres>::new(format!(
        "SELECT {EVENT_COLUMNS}, c.seq, c.prev_hash, c.hash
           FROM audit_events e LEFT JOIN audit_chain c ON c.event_id = e.id WHERE true"
    ));
    if let Some(id) = q.request_id {
        b.push(" AND e.request_id = ").push_bind(id);
    }
    if let Some(actor) = &q.actor {
        b.push(" AND e.actor = ").push_bind(actor);
    }
    if let Some(kind) = &q.kind {
        b.push(" AND e.kind = ").push_bind(kind);
    }
    if let Some(provider) = &q.provider {
        b.push(" AND e.request_id IN (SELECT id FROM requests WHERE provider = ")
            .push_bind(provider)
            .push(")");
    }
    if let Some(since) = q.since {
        b.push(" AND e.at >= ").push_bind(since);
    }
    if let Some(until) = q.until {
        b.push(" AND e.at < ").push_bind(until);
    }
    let (cmp, dir) = if q.oldest_first {
        (">", "ASC")
    } else {
        ("<", "DESC")
    };
    if let Some((at, id)) = q.after {
        b.push(format_args!(" AND (e.at, e.id) {cmp} ("))
            .push_bind(at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    b.push(format_args!(" ORDER BY e.at {dir}, e.id {dir} LIMIT "))
        .push_bind(q.effective_limit());
    b
}
