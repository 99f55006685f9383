//! SQLite: what the reconciler reads and writes.

use chrono::Utc;
use uuid::Uuid;

use sqlx::Row;

use super::{REQUEST_COLUMNS, SqliteStore, from_micros, micros};
use crate::store::*;

pub(super) async fn requests_by_grant(
    s: &SqliteStore,
    grant_ids: &[Uuid],
) -> StoreResult<Vec<Request>> {
    let ids = serde_json::to_string(&grant_ids.iter().map(Uuid::to_string).collect::<Vec<_>>())
        .unwrap_or_else(|_| "[]".into());
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {REQUEST_COLUMNS} FROM requests
          WHERE id IN (SELECT request_id FROM grants WHERE grant_id IN (SELECT value FROM json_each(?1)))
          ORDER BY id"
    )))
    .bind(ids)
    .fetch_all(&s.pool)
    .await
    .map_err(db("loading the requests of grants"))?;
    rows.iter().map(SqliteStore::decode).collect()
}

pub(super) async fn active_requests_of(
    s: &SqliteStore,
    provider: &str,
    after: Option<RequestId>,
    limit: u32,
) -> StoreResult<Vec<Request>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {REQUEST_COLUMNS} FROM requests
          WHERE state = 'ACTIVE' AND provider = ?1 AND (?2 IS NULL OR id > ?2)
          ORDER BY id LIMIT ?3"
    )))
    .bind(provider)
    .bind(after.map(|a| a.0.to_string()))
    .bind(i64::from(limit))
    .fetch_all(&s.pool)
    .await
    .map_err(db("loading active requests of a provider"))?;
    rows.iter().map(SqliteStore::decode).collect()
}

pub(super) async fn record_finding(
    s: &SqliteStore,
    fence: &Fence,
    f: &Finding<'_>,
) -> StoreResult<Write> {
    let mut tx = s
        .pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(db("starting a transaction"))?;
    let db_now = Utc::now();
    let now = micros(db_now);
    if !SqliteStore::fence_holds(&mut tx, fence, now).await? {
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

pub(super) async fn put_pass(s: &SqliteStore, p: &ReconcilePass) -> StoreResult<()> {
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
    .execute(&s.pool)
    .await
    .map_err(db("recording a reconcile pass"))?;
    Ok(())
}

pub(super) async fn passes(s: &SqliteStore) -> StoreResult<Vec<ReconcilePass>> {
    let rows = sqlx::query(
        "SELECT provider, node, at, duration_ms, listed, orphans, drift, tombstones, error
           FROM reconcile_passes ORDER BY provider",
    )
    .fetch_all(&s.pool)
    .await
    .map_err(db("reading reconcile passes"))?;
    let read = |r: &sqlx::sqlite::SqliteRow| -> Result<ReconcilePass, sqlx::Error> {
        Ok(ReconcilePass {
            provider: r.try_get("provider")?,
            node: r.try_get("node")?,
            at: from_micros(r.try_get("at")?)
                .map_err(|e| sqlx::Error::Decode(e.to_string().into()))?,
            duration_ms: r.try_get("duration_ms")?,
            listed: r.try_get("listed")?,
            orphans: r.try_get("orphans")?,
            drift: r.try_get("drift")?,
            tombstones: r.try_get("tombstones")?,
            error: r.try_get("error")?,
        })
    };
    rows.iter()
        .map(read)
        .collect::<Result<_, _>>()
        .map_err(db("reading reconcile passes"))
}
