//! PostgreSQL reads of requests beyond one id: filtered keyset pages (newest first), the
//! versions a watch resumes from, and the request an idempotency key was used for.

use sqlx::{PgPool, Postgres, QueryBuilder, Row};

use super::audit::audit_event;
use super::{PgStore, REQUEST_COLUMNS};
use crate::store::*;

pub(super) async fn list(pool: &PgPool, f: &ListFilter) -> StoreResult<Vec<Request>> {
    let mut q = QueryBuilder::<Postgres>::new(format!(
        "SELECT {REQUEST_COLUMNS} FROM requests r WHERE true"
    ));
    if let Some(requester) = &f.requester {
        q.push(" AND r.requester = ").push_bind(requester);
    }
    if f.needs_review {
        q.push(
            " AND (r.break_glass
                   OR (COALESCE((r.body->'decision'->>'auto_approve')::boolean, false)
                       AND EXISTS (SELECT 1 FROM jsonb_array_elements(
                                       COALESCE(r.body->'decision'->'policies', '[]'::jsonb)) p
                                    WHERE p->>'author' = r.requester)))
              AND NOT EXISTS (SELECT 1 FROM reviews v WHERE v.request_id = r.id)",
        );
    }
    if let Some(groups) = &f.awaiting_groups {
        q.push(" AND r.state = 'PENDING' AND (r.body->'decision'->'approver_groups') ?| ")
            .push_bind(groups)
            .push("::text[]");
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
                    " AND NOT (COALESCE((r.body->'requester'->>'email_verified')::boolean, false)
                              AND lower(r.body->'requester'->>'email') IS NOT DISTINCT FROM ",
                )
                .push_bind(email)
                .push(")");
            }
        }
    }
    if !f.states.is_empty() {
        let states: Vec<&str> = f.states.iter().map(|s| s.as_str()).collect();
        q.push(" AND r.state = ANY(").push_bind(states).push(")");
    }
    if let Some(provider) = &f.provider {
        q.push(" AND r.provider = ").push_bind(provider);
    }
    if let Some((at, id)) = f.before {
        q.push(" AND (r.created_at, r.id) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    q.push(" ORDER BY r.created_at DESC, r.id DESC LIMIT ")
        .push_bind(f.effective_limit());
    let rows = q
        .build()
        .fetch_all(pool)
        .await
        .map_err(db("listing requests"))?;
    rows.iter().map(PgStore::decode).collect()
}

pub(super) async fn events(
    pool: &PgPool,
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
    .fetch_all(pool)
    .await
    .map_err(db("loading request events"))?;
    rows.iter().map(audit_event).collect()
}

pub(super) async fn by_idempotency_key(
    pool: &PgPool,
    requester: &str,
    key: &str,
) -> StoreResult<Option<(Request, String)>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {REQUEST_COLUMNS}, content_hash FROM requests
          WHERE requester = $1 AND idempotency_key = $2"
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
        Ok((PgStore::decode(&r)?, hash))
    })
    .transpose()
}
