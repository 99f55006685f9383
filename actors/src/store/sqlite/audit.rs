//! SQLite implementation of the audit chain store (single node: one writer at a time), and
//! the statement of an audit query.

use async_trait::async_trait;
use chrono::Utc;
use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;

use super::{SqliteStore, fence_holds, micros};
use crate::domain::Timestamp;
use crate::store::rows::{self, Columns, EVENT_COLUMNS};
use crate::store::{
    AuditEvent, AuditQuery, AuditStats, AuditStore, ChainRow, ChainTip, Checkpoint, Fence,
    OutboxRow, StoreError, StoreResult, VersionGap, Write, db,
};

const UNCHAINED: &str = "NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id)";

#[async_trait]
impl AuditStore for SqliteStore {
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
              WHERE (?1 IS NULL OR e.at >= ?1) AND {UNCHAINED}
              ORDER BY e.at, e.id LIMIT ?2"
        )))
        .bind(since.map(micros))
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
              WHERE (e.at > ?1 OR (e.at = ?1 AND e.id > ?2)) AND NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id)
              ORDER BY e.at, e.id LIMIT ?3"
        )))
        .bind(micros(after.0))
        .bind(after.1.to_string())
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
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting a transaction"))?;
        let db_now = Utc::now();
        if !fence_holds(&mut tx, fence, micros(db_now)).await? {
            return Ok(Write::Stale);
        }
        for l in links {
            let res = sqlx::query(
                "INSERT INTO audit_chain (seq, event_id, prev_hash, hash) VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(l.seq)
            .bind(l.event_id.to_string())
            .bind(&l.prev_hash)
            .bind(&l.hash)
            .execute(&mut *tx)
            .await;
            match res {
                Ok(_) => {}
                // A competing append took this sequence number or event: write nothing.
                Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                    return Ok(Write::Stale);
                }
                Err(e) => {
                    return Err(StoreError::Database {
                        op: "appending to the audit chain",
                        source: e,
                    });
                }
            }
        }
        tx.commit().await.map_err(db("committing chain links"))?;
        Ok(Write::Updated {
            version: links[links.len() - 1].seq,
            db_now,
        })
    }

    async fn add_checkpoint(
        &self,
        fence: &Fence,
        cp: &Checkpoint,
        outbox: &[OutboxRow],
    ) -> StoreResult<Write> {
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
        sqlx::query("INSERT INTO audit_checkpoints (seq, hash, at, key_id, signature) VALUES (?1, ?2, ?3, ?4, ?5)")
            .bind(cp.seq)
            .bind(&cp.hash)
            .bind(micros(cp.at))
            .bind(&cp.key_id)
            .bind(&cp.signature)
            .execute(&mut *tx)
            .await
            .map_err(db("storing a checkpoint"))?;
        let event_id = Uuid::now_v7().to_string();
        for o in outbox {
            sqlx::query(
                "INSERT INTO outbox (event_id, request_id, sink, kind, payload, created_at, next_attempt_at)
                 VALUES (?1, NULL, ?2, ?3, ?4, ?5, ?5)",
            )
            .bind(&event_id)
            .bind(&o.sink)
            .bind(&o.kind)
            .bind(&o.payload)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db("enqueueing a checkpoint"))?;
        }
        tx.commit().await.map_err(db("committing a checkpoint"))?;
        Ok(Write::Updated {
            version: cp.seq,
            db_now,
        })
    }

    async fn chain_page(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> StoreResult<Vec<(ChainRow, Option<AuditEvent>)>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT c.seq, c.event_id AS link_event, c.prev_hash, c.hash, e.id IS NOT NULL AS present, {EVENT_COLUMNS}
               FROM audit_chain c LEFT JOIN audit_events e ON e.id = c.event_id
              WHERE c.seq > ?1 ORDER BY c.seq LIMIT ?2"
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
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT (SELECT coalesce(max(seq), 0) FROM audit_chain) AS chained,
                    (SELECT count(*) FROM audit_events e WHERE (?1 IS NULL OR e.at >= ?1) AND {UNCHAINED}) AS unchained,
                    (SELECT min(e.at) FROM audit_events e WHERE (?1 IS NULL OR e.at >= ?1) AND {UNCHAINED}) AS oldest"
        )))
        .bind(since.map(micros))
        .fetch_one(&self.pool)
        .await
        .map_err(db("reading audit statistics"))?;
        rows::audit_stats(&r, Utc::now())
    }

    async fn version_gaps(&self, limit: u32) -> StoreResult<Vec<VersionGap>> {
        let rows = sqlx::query(
            "SELECT r.id, r.version, group_concat(DISTINCT a.request_version) AS present
               FROM requests r LEFT JOIN audit_events a ON a.request_id = r.id
              GROUP BY r.id, r.version
             HAVING count(DISTINCT a.request_version) <> r.version OR max(a.request_version) IS NOT r.version
              ORDER BY r.id LIMIT ?1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("checking audit versions"))?;
        rows.iter()
            .map(|r| {
                // `group_concat` lists the versions as text.
                let present: Option<String> = r.read("present", "checking audit versions")?;
                let present = present
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|v| v.trim().parse().ok())
                    .collect();
                rows::version_gap(r, present)
            })
            .collect()
    }
}

/// The statement of a page of audit events with their chain links; see [`AuditQuery`].
pub(super) fn audit_query(q: &AuditQuery) -> QueryBuilder<Sqlite> {
    let mut b = QueryBuilder::<Sqlite>::new(format!(
        "SELECT {EVENT_COLUMNS}, c.seq, c.prev_hash, c.hash
           FROM audit_events e LEFT JOIN audit_chain c ON c.event_id = e.id WHERE 1"
    ));
    if let Some(id) = q.request_id {
        b.push(" AND e.request_id = ").push_bind(id.to_string());
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
        b.push(" AND e.at >= ").push_bind(micros(since));
    }
    if let Some(until) = q.until {
        b.push(" AND e.at < ").push_bind(micros(until));
    }
    let (cmp, dir) = if q.oldest_first {
        (">", "ASC")
    } else {
        ("<", "DESC")
    };
    if let Some((at, id)) = q.after {
        b.push(format_args!(" AND (e.at, e.id) {cmp} ("))
            .push_bind(micros(at))
            .push(", ")
            .push_bind(id.to_string())
            .push(")");
    }
    b.push(format_args!(" ORDER BY e.at {dir}, e.id {dir} LIMIT "))
        .push_bind(q.effective_limit());
    b
}
