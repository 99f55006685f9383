//! SQLite implementation of the audit chain store (single node: one writer at a time).

use async_trait::async_trait;
use chrono::Utc;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use super::{from_micros, micros, opt_uuid_col, uuid_col};
use crate::store::*;

const EVENT_COLUMNS: &str =
    "e.id, e.at, e.kind, e.actor, e.request_id, e.request_version, e.node, e.details";

pub(super) fn audit_event(r: &SqliteRow) -> StoreResult<AuditEvent> {
    let e = || db("reading an audit event");
    Ok(AuditEvent {
        id: uuid_col(r, "id")?,
        at: from_micros(r.try_get("at").map_err(e())?)?,
        kind: r.try_get("kind").map_err(e())?,
        actor: r.try_get("actor").map_err(e())?,
        request_id: opt_uuid_col(r, "request_id")?,
        request_version: r.try_get("request_version").map_err(e())?,
        node: r.try_get("node").map_err(e())?,
        details: r.try_get("details").map_err(e())?,
    })
}

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
        row.map(|r| {
            let e = || db("reading the chain tip");
            Ok(ChainTip {
                seq: r.try_get("seq").map_err(e())?,
                hash: r.try_get("hash").map_err(e())?,
                event_at: from_micros(r.try_get("at").map_err(e())?)?,
                event_id: uuid_col(&r, "id")?,
            })
        })
        .transpose()
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
        rows.iter().map(audit_event).collect()
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
        rows.iter().map(audit_event).collect()
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
        if !SqliteStore::fence_holds(&mut tx, fence, micros(db_now)).await? {
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
        if !SqliteStore::fence_holds(&mut tx, fence, now).await? {
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
        rows.iter()
            .map(|r| {
                let e = || db("reading the audit chain");
                let link = ChainRow {
                    seq: r.try_get("seq").map_err(e())?,
                    event_id: uuid_col(r, "link_event")?,
                    prev_hash: r.try_get("prev_hash").map_err(e())?,
                    hash: r.try_get("hash").map_err(e())?,
                };
                let present: bool = r.try_get("present").map_err(e())?;
                let event = if present { Some(audit_event(r)?) } else { None };
                Ok((link, event))
            })
            .collect()
    }

    async fn checkpoints(&self) -> StoreResult<Vec<Checkpoint>> {
        let rows = sqlx::query(
            "SELECT seq, hash, at, key_id, signature FROM audit_checkpoints ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading checkpoints"))?;
        rows.iter()
            .map(|r| {
                let e = || db("reading a checkpoint");
                Ok(Checkpoint {
                    seq: r.try_get("seq").map_err(e())?,
                    hash: r.try_get("hash").map_err(e())?,
                    at: from_micros(r.try_get("at").map_err(e())?)?,
                    key_id: r.try_get("key_id").map_err(e())?,
                    signature: r.try_get("signature").map_err(e())?,
                })
            })
            .collect()
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
        let e = || db("reading audit statistics");
        let oldest: Option<i64> = r.try_get("oldest").map_err(e())?;
        Ok(AuditStats {
            chain_length: r.try_get("chained").map_err(e())?,
            unchained: r.try_get("unchained").map_err(e())?,
            oldest_unchained_at: oldest.map(from_micros).transpose()?,
            db_now: Utc::now(),
        })
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
                let e = || db("checking audit versions");
                let version: i64 = r.try_get("version").map_err(e())?;
                let present: Option<String> = r.try_get("present").map_err(e())?;
                let mut present: Vec<i64> = present
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|v| v.trim().parse().ok())
                    .collect();
                present.sort_unstable();
                Ok(VersionGap {
                    request_id: uuid_col(r, "id")?,
                    version,
                    missing: missing_versions(version, &present),
                })
            })
            .collect()
    }
}

pub(super) async fn append(
    pool: &sqlx::SqlitePool,
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
    .execute(pool)
    .await
    .map_err(db("appending an audit event"))?;
    Ok(id)
}

pub(super) async fn query(
    pool: &sqlx::SqlitePool,
    q: &AuditQuery,
) -> StoreResult<Vec<(AuditEvent, Option<ChainRow>)>> {
    let mut b = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
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
    let rows = b
        .build()
        .fetch_all(pool)
        .await
        .map_err(db("querying audit events"))?;
    rows.iter()
        .map(|r| {
            let event = audit_event(r)?;
            let e = || db("reading an audit chain link");
            let seq: Option<i64> = r.try_get("seq").map_err(e())?;
            let link = match seq {
                None => None,
                Some(seq) => Some(ChainRow {
                    seq,
                    event_id: event.id,
                    prev_hash: r.try_get("prev_hash").map_err(e())?,
                    hash: r.try_get("hash").map_err(e())?,
                }),
            };
            Ok((event, link))
        })
        .collect()
}
