//! PostgreSQL implementation of the outbox store. Claims take rows `FOR UPDATE SKIP LOCKED`
//! in one statement, so concurrent nodes split the due rows instead of queueing on them;
//! every time is the statement's clock.

use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use super::PgStore;
use crate::store::outbox::{delay_us, stored_error};
use crate::store::rows::{self, Columns, OUTBOX_COLUMNS};
use crate::store::{OutboxEntry, OutboxStore, SinkStats, StoreResult, db};

#[async_trait]
impl OutboxStore for PgStore {
    async fn claim_outbox(
        &self,
        node: &str,
        limit: u32,
        claim_ttl: Duration,
    ) -> StoreResult<Vec<OutboxEntry>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE outbox SET claimed_by = $1,
                    claim_expires_at = statement_timestamp() + $3::bigint * interval '1 microsecond'
              WHERE id IN (SELECT id FROM outbox
                            WHERE state = 'pending' AND next_attempt_at <= statement_timestamp()
                              AND (claimed_by IS NULL OR claim_expires_at <= statement_timestamp())
                            ORDER BY next_attempt_at, id
                            LIMIT $2
                            FOR UPDATE SKIP LOCKED)
             RETURNING {OUTBOX_COLUMNS}"
        )))
        .bind(node)
        .bind(i64::from(limit))
        .bind(delay_us(claim_ttl))
        .fetch_all(&self.pool)
        .await
        .map_err(db("claiming outbox rows"))?;
        let mut out = rows
            .iter()
            .map(rows::outbox_entry)
            .collect::<StoreResult<Vec<_>>>()?;
        out.sort_by_key(|e| (e.next_attempt_at, e.id));
        Ok(out)
    }

    async fn outbox_delivered(&self, id: i64, node: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE outbox SET state = 'delivered', delivered_at = statement_timestamp(), claim_expires_at = NULL
              WHERE id = $1 AND claimed_by = $2 AND state = 'pending'",
        )
        .bind(id)
        .bind(node)
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
        let done = sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $3,
                    state = CASE WHEN $4::bigint IS NULL THEN 'dead' ELSE 'pending' END,
                    next_attempt_at = COALESCE(statement_timestamp() + $4::bigint * interval '1 microsecond', next_attempt_at),
                    claimed_by = NULL, claim_expires_at = NULL
              WHERE id = $1 AND claimed_by = $2 AND state = 'pending'",
        )
        .bind(id)
        .bind(node)
        .bind(stored_error(error))
        .bind(retry_in.map(delay_us))
        .execute(&self.pool)
        .await
        .map_err(db("recording a failed delivery"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn dead_letters(&self, sink: Option<&str>, limit: u32) -> StoreResult<Vec<OutboxEntry>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox
              WHERE state = 'dead' AND ($1::text IS NULL OR sink = $1)
              ORDER BY id LIMIT $2"
        )))
        .bind(sink)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing dead letters"))?;
        rows.iter().map(rows::outbox_entry).collect()
    }

    async fn redrive(&self, id: i64, actor: &str, node: &str) -> StoreResult<bool> {
        // The row's update and its audit event are one statement: both or neither.
        let redriven: Option<i64> = sqlx::query_scalar(
            "WITH r AS (
                UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = statement_timestamp(),
                       claimed_by = NULL, claim_expires_at = NULL
                 WHERE id = $1 AND state = 'dead'
                RETURNING id, event_id, request_id, sink, kind
             ), aud AS (
                INSERT INTO audit_events (id, at, kind, actor, node, details)
                SELECT $4, statement_timestamp(), 'outbox.redriven', $2, $3,
                       json_build_object('outbox_id', r.id, 'event_id', r.event_id, 'request_id', r.request_id,
                                         'sink', r.sink, 'kind', r.kind)::text
                  FROM r
             )
             SELECT id FROM r",
        )
        .bind(id)
        .bind(actor)
        .bind(node)
        .bind(Uuid::now_v7())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("re-driving a dead letter"))?;
        Ok(redriven.is_some())
    }

    async fn outbox_stats(&self) -> StoreResult<Vec<SinkStats>> {
        let rows = sqlx::query(
            "SELECT sink,
                    count(*) FILTER (WHERE state = 'pending') AS pending,
                    COALESCE(EXTRACT(EPOCH FROM statement_timestamp()
                                     - min(created_at) FILTER (WHERE state = 'pending')), 0)::float8 AS oldest,
                    count(*) FILTER (WHERE state = 'dead') AS dead,
                    count(*) FILTER (WHERE state = 'delivered') AS delivered
               FROM outbox GROUP BY sink ORDER BY sink",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("counting outbox rows"))?;
        rows.iter()
            .map(|r| {
                let oldest: f64 = r.read("oldest", "reading outbox counts")?;
                rows::sink_stats(r, oldest.max(0.0))
            })
            .collect()
    }
}
