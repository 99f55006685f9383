//! PostgreSQL: what the reconciler reads and writes.

use sqlx::Row;
use uuid::Uuid;

use super::{PgStore, REQUEST_COLUMNS, fence_sql};
use crate::store::*;

pub(super) async fn requests_by_grant(
    s: &PgStore,
    grant_ids: &[Uuid],
) -> StoreResult<Vec<Request>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {REQUEST_COLUMNS} FROM requests
          WHERE id IN (SELECT request_id FROM grants WHERE grant_id = ANY($1)) ORDER BY id"
    )))
    .bind(grant_ids)
    .fetch_all(&s.pool)
    .await
    .map_err(db("loading the requests of grants"))?;
    rows.iter().map(PgStore::decode).collect()
}

pub(super) async fn active_requests_of(
    s: &PgStore,
    provider: &str,
    after: Option<RequestId>,
    limit: u32,
) -> StoreResult<Vec<Request>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {REQUEST_COLUMNS} FROM requests
          WHERE state = 'ACTIVE' AND provider = $1 AND ($2::uuid IS NULL OR id > $2)
          ORDER BY id LIMIT $3"
    )))
    .bind(provider)
    .bind(after.map(|a| a.0))
    .bind(i64::from(limit))
    .fetch_all(&s.pool)
    .await
    .map_err(db("loading active requests of a provider"))?;
    rows.iter().map(PgStore::decode).collect()
}

pub(super) async fn record_finding(
    s: &PgStore,
    fence: &Fence,
    f: &Finding<'_>,
) -> StoreResult<Write> {
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
    .bind(crate::store::rows::outbox_json(f.outbox))
    .fetch_optional(&s.pool)
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

pub(super) async fn put_pass(s: &PgStore, p: &ReconcilePass) -> StoreResult<()> {
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
    .execute(&s.pool)
    .await
    .map_err(db("recording a reconcile pass"))?;
    Ok(())
}

pub(super) async fn passes(s: &PgStore) -> StoreResult<Vec<ReconcilePass>> {
    let rows = sqlx::query(
        "SELECT provider, node, at, duration_ms, listed, orphans, drift, tombstones, error
           FROM reconcile_passes ORDER BY provider",
    )
    .fetch_all(&s.pool)
    .await
    .map_err(db("reading reconcile passes"))?;
    rows.iter()
        .map(|r| {
            Ok(ReconcilePass {
                provider: r.try_get("provider")?,
                node: r.try_get("node")?,
                at: r.try_get("at")?,
                duration_ms: r.try_get("duration_ms")?,
                listed: r.try_get("listed")?,
                orphans: r.try_get("orphans")?,
                drift: r.try_get("drift")?,
                tombstones: r.try_get("tombstones")?,
                error: r.try_get("error")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(db("reading reconcile passes"))
}
