//! SQLite implementation of the outbox store. Claims and re-drives run in `BEGIN IMMEDIATE`
//! (the other writes are single statements), so a claim is exclusive without row locks;
//! times are integer microseconds of the clock read at the write.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use uuid::Uuid;

use super::{SqliteStore, micros};
use crate::store::outbox::{delay_us, stored_error};
use crate::store::rows::{self, Columns, OUTBOX_COLUMNS};
use crate::store::{OutboxEntry, OutboxStore, SinkStats, StoreResult, db};

fn now_us() -> i64 {
    micros(Utc::now())
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn claim_outbox(
        &self,
        node: &str,
        limit: u32,
        claim_ttl: Duration,
    ) -> StoreResult<Vec<OutboxEntry>> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting a transaction"))?;
        let now = now_us();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE outbox SET claimed_by = ?1, claim_expires_at = ?2
              WHERE id IN (SELECT id FROM outbox
                            WHERE state = 'pending' AND next_attempt_at <= ?3
                              AND (claimed_by IS NULL OR claim_expires_at <= ?3)
                            ORDER BY next_attempt_at, id
                            LIMIT ?4)
             RETURNING {OUTBOX_COLUMNS}"
        )))
        .bind(node)
        .bind(now.saturating_add(delay_us(claim_ttl)))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db("claiming outbox rows"))?;
        let mut out = rows
            .iter()
            .map(rows::outbox_entry)
            .collect::<StoreResult<Vec<_>>>()?;
        tx.commit().await.map_err(db("committing outbox claims"))?;
        out.sort_by_key(|e| (e.next_attempt_at, e.id));
        Ok(out)
    }

    async fn outbox_delivered(&self, id: i64, node: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE outbox SET state = 'delivered', delivered_at = ?3, claim_expires_at = NULL
              WHERE id = ?1 AND claimed_by = ?2 AND state = 'pending'",
        )
        .bind(id)
        .bind(node)
        .bind(now_us())
        .execute(&self.pool)
        .await
        .map_err(db("marking an outbox row delivered"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn outbox_failed(
        &self,
        id: i64,
        node: &str,
        error: &str,
        retry_in: Option<Duration>,
    ) -> StoreResult<bool> {
        let next = retry_in.map(|d| now_us().saturating_add(delay_us(d)));
        let done = sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?3,
                    state = CASE WHEN ?4 IS NULL THEN 'dead' ELSE 'pending' END,
                    next_attempt_at = COALESCE(?4, next_attempt_at),
                    claimed_by = NULL, claim_expires_at = NULL
              WHERE id = ?1 AND claimed_by = ?2 AND state = 'pending'",
        )
        .bind(id)
        .bind(node)
        .bind(stored_error(error))
        .bind(next)
        .execute(&self.pool)
        .await
        .map_err(db("recording a failed delivery"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn dead_letters(&self, sink: Option<&str>, limit: u32) -> StoreResult<Vec<OutboxEntry>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox
              WHERE state = 'dead' AND (?1 IS NULL OR sink = ?1)
              ORDER BY id LIMIT ?2"
        )))
        .bind(sink)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing dead letters"))?;
        rows.iter().map(rows::outbox_entry).collect()
    }

    async fn redrive(&self, id: i64, actor: &str, node: &str) -> StoreResult<bool> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting a transaction"))?;
        let now = now_us();
        let row = sqlx::query(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?2,
                    claimed_by = NULL, claim_expires_at = NULL
              WHERE id = ?1 AND state = 'dead'
             RETURNING id, event_id, request_id, sink, kind",
        )
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("re-driving a dead letter"))?;
        let Some(row) = row else {
            return Ok(false);
        };
        let op = "reading a re-driven row";
        let details = serde_json::json!({
            "outbox_id": row.read::<i64>("id", op)?,
            "event_id": row.uuid("event_id", op)?,
            "request_id": row.opt_uuid("request_id", op)?,
            "sink": row.read::<String>("sink", op)?,
            "kind": row.read::<String>("kind", op)?,
        });
        sqlx::query(
            "INSERT INTO audit_events (id, at, kind, actor, node, details) VALUES (?1, ?2, 'outbox.redriven', ?3, ?4, ?5)",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(now)
        .bind(actor)
        .bind(node)
        .bind(details.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db("auditing a re-drive"))?;
        tx.commit().await.map_err(db("committing a re-drive"))?;
        Ok(true)
    }

    async fn outbox_stats(&self) -> StoreResult<Vec<SinkStats>> {
        let now = now_us();
        let rows = sqlx::query(
            "SELECT sink,
                    SUM(state = 'pending') AS pending,
                    MIN(CASE WHEN state = 'pending' THEN created_at END) AS oldest,
                    SUM(state = 'dead') AS dead,
                    SUM(state = 'delivered') AS delivered
               FROM outbox GROUP BY sink ORDER BY sink",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("counting outbox rows"))?;
        rows.iter()
            .map(|r| {
                let oldest: Option<i64> = r.read("oldest", "reading outbox counts")?;
                let age = oldest
                    .map(|t| (now.saturating_sub(t)).max(0) as f64 / 1e6)
                    .unwrap_or(0.0);
                rows::sink_stats(r, age)
            })
            .collect()
    }
}
