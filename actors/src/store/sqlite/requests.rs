//! SQLite reads of requests beyond one id: filtered keyset pages (newest first), the
//! versions a watch resumes from, and the request an idempotency key was used for.

use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use super::audit::audit_event;
use super::{REQUEST_COLUMNS, SqliteStore, micros};
use crate::store::*;

fn json_list<T: Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

pub(super) async fn list(pool: &SqlitePool, f: &ListFilter) -> StoreResult<Vec<Request>> {
    let mut q =
        QueryBuilder::<Sqlite>::new(format!("SELECT {REQUEST_COLUMNS} FROM requests r WHERE 1"));
    if let Some(requester) = &f.requester {
        q.push(" AND r.requester = ").push_bind(requester);
    }
    if f.needs_review {
        q.push(
            " AND (r.break_glass
                   OR (COALESCE(json_extract(r.body, '$.decision.auto_approve'), 0)
                       AND EXISTS (SELECT 1 FROM json_each(r.body, '$.decision.policies') p
                                    WHERE json_extract(p.value, '$.author') = r.requester)))
              AND NOT EXISTS (SELECT 1 FROM reviews v WHERE v.request_id = r.id)",
        );
    }
    if let Some(groups) = &f.awaiting_groups {
        q.push(
            " AND r.state = 'PENDING'
              AND EXISTS (SELECT 1 FROM json_each(r.body, '$.decision.approver_groups') g
                           WHERE g.value IN (SELECT value FROM json_each(",
        )
        .push_bind(json_list(groups))
        .push(")))");
        if let Some(caller) = &f.caller {
            q.push(" AND r.requester <> ")
                .push_bind(&caller.subject)
                .push(
                    " AND NOT EXISTS (SELECT 1 FROM approvals a
                                       WHERE a.request_id = r.id AND a.extension = 0 AND a.approver = ",
                )
                .push_bind(&caller.subject)
                .push(")");
            if let Some(email) = &caller.verified_email {
                q.push(
                    " AND NOT (COALESCE(json_extract(r.body, '$.requester.email_verified'), 0)
                              AND lower(json_extract(r.body, '$.requester.email')) IS ",
                )
                .push_bind(email)
                .push(")");
            }
        }
    }
    if !f.states.is_empty() {
        let states: Vec<&str> = f.states.iter().map(|s| s.as_str()).collect();
        q.push(" AND r.state IN (SELECT value FROM json_each(")
            .push_bind(json_list(&states))
            .push("))");
    }
    if let Some(provider) = &f.provider {
        q.push(" AND r.provider = ").push_bind(provider);
    }
    if let Some((at, id)) = f.before {
        q.push(" AND (r.created_at, r.id) < (")
            .push_bind(micros(at))
            .push(", ")
            .push_bind(id.to_string())
            .push(")");
    }
    q.push(" ORDER BY r.created_at DESC, r.id DESC LIMIT ")
        .push_bind(f.effective_limit());
    let rows = q
        .build()
        .fetch_all(pool)
        .await
        .map_err(db("listing requests"))?;
    rows.iter().map(SqliteStore::decode).collect()
}

pub(super) async fn events(
    pool: &SqlitePool,
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
    .fetch_all(pool)
    .await
    .map_err(db("loading request events"))?;
    rows.iter().map(audit_event).collect()
}

pub(super) async fn by_idempotency_key(
    pool: &SqlitePool,
    requester: &str,
    key: &str,
) -> StoreResult<Option<(Request, String)>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {REQUEST_COLUMNS}, content_hash FROM requests
          WHERE requester = ?1 AND idempotency_key = ?2"
    )))
    .bind(requester)
    .bind(key)
    .fetch_optional(pool)
    .await
    .map_err(db("looking up an idempotency key"))?;
    row.map(|r| {
        let hash: String = r
            .try_get("content_hash")
            .map_err(db("reading a content hash"))?;
        Ok((SqliteStore::decode(&r)?, hash))
    })
    .transpose()
}
