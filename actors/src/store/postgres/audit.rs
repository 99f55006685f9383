//! PostgreSQL implementation of the audit chain store.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::fence_sql;
use crate::store::*;

const EVENT_COLUMNS: &str =
    "e.id, e.at, e.kind, e.actor, e.request_id, e.request_version, e.node, e.details";

pub(super) fn audit_event(r: &PgRow) -> StoreResult<AuditEvent> {
    let e = || db("reading an audit event");
    Ok(AuditEvent {
        id: r.try_get("id").map_err(e())?,
        at: r.try_get("at").map_err(e())?,
        kind: r.try_get("kind").map_err(e())?,
        actor: r.try_get("actor").map_err(e())?,
        request_id: r.try_get("request_id").map_err(e())?,
        request_version: r.try_get("request_version").map_err(e())?,
        node: r.try_get("node").map_err(e())?,
        details: r.try_get("details").map_err(e())?,
    })
}

fn checkpoint(r: &PgRow) -> StoreResult<Checkpoint> {
    let e = || db("reading a checkpoint");
    Ok(Checkpoint {
        seq: r.try_get("seq").map_err(e())?,
        hash: r.try_get("hash").map_err(e())?,
        at: r.try_get("at").map_err(e())?,
        key_id: r.try_get("key_id").map_err(e())?,
        signature: r.try_get("signature").map_err(e())?,
    })
}

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
        row.map(|r| {
            Ok(ChainTip {
                seq: r.try_get("seq").map_err(db("reading the chain tip"))?,
                hash: r.try_get("hash").map_err(db("reading the chain tip"))?,
                event_at: r.try_get("at").map_err(db("reading the chain tip"))?,
                event_id: r.try_get("id").map_err(db("reading the chain tip"))?,
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
              WHERE ($1::timestamptz IS NULL OR e.at >= $1)
                AND NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id)
              ORDER BY e.at, e.id LIMIT $2"
        )))
        .bind(since)
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
              WHERE (e.at, e.id) > ($1, $2) AND NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id)
              ORDER BY e.at, e.id LIMIT $3"
        )))
        .bind(after.0)
        .bind(after.1)
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
        .bind(crate::store::rows::outbox_json(outbox))
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
            "SELECT c.seq, c.event_id, c.prev_hash, c.hash, e.id IS NOT NULL AS present, {EVENT_COLUMNS}
               FROM audit_chain c LEFT JOIN audit_events e ON e.id = c.event_id
              WHERE c.seq > $1 ORDER BY c.seq LIMIT $2"
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
                    event_id: r.try_get("event_id").map_err(e())?,
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
        rows.iter().map(checkpoint).collect()
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
        let e = || db("reading audit statistics");
        Ok(AuditStats {
            chain_length: r.try_get("chained").map_err(e())?,
            unchained: r.try_get("unchained").map_err(e())?,
            oldest_unchained_at: r.try_get("oldest").map_err(e())?,
            db_now: r.try_get("db_now").map_err(e())?,
        })
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
                let e = || db("checking audit versions");
                let version: i64 = r.try_get("version").map_err(e())?;
                let mut present: Vec<i64> = r.try_get("present").map_err(e())?;
                present.sort_unstable();
                Ok(VersionGap {
                    request_id: r.try_get("id").map_err(e())?,
                    version,
                    missing: missing_versions(version, &present),
                })
            })
            .collect()
    }
}

fn res_row(r: Result<Option<PgRow>, sqlx::Error>) -> StoreResult<Option<PgRow>> {
    r.map_err(db("storing a checkpoint"))
}

pub(super) async fn append(
    pool: &sqlx::PgPool,
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
    .execute(pool)
    .await
    .map_err(db("appending an audit event"))?;
    Ok(id)
}

pub(super) async fn query(
    pool: &sqlx::PgPool,
    q: &AuditQuery,
) -> StoreResult<Vec<(AuditEvent, Option<ChainRow>)>> {
    let mut b = sqlx::QueryBuilder::<sqlx::Postgres>::new(format!(
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
