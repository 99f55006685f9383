//! SQLite writes and pages of requests: the transaction that commits a create or a
//! transition (request row, audit event, outbox, approvals, grants, extensions), and the
//! statement of a filtered keyset page, and the rest of [`RequestStore`]: the reads of requests
//! and of a requester's load.

use chrono::Utc;
use serde::Serialize;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::*;
use crate::domain::{GrantPurpose, Guard, Request, Stamp};
use crate::store::rows::{self, REQUEST_COLUMNS};

/// Commits a create (`create`) or a transition in one `BEGIN IMMEDIATE` transaction: the
/// request row, guarded by the fence and (a transition) its version, with its audit event,
/// outbox rows and child rows.
pub(super) async fn write(
    pool: &SqlitePool,
    fence: &Fence,
    p: Persist<'_>,
    create: bool,
) -> StoreResult<Write> {
    let r = p.request;
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(db("starting a transaction"))?;
    let db_now = Utc::now();
    let now = micros(db_now);
    if !fence_holds(&mut tx, fence, now).await? {
        return Ok(Write::Stale);
    }
    let t = |s: &Option<Stamp>| s.map(|s| micros(s.resolve(db_now)));
    let pt = p.times;
    let times = [
        t(&pt.created_at),
        t(&pt.approval_deadline),
        t(&pt.grant_deadline),
        t(&pt.granted_at),
        t(&pt.expires_at),
        t(&pt.ended_at),
    ];
    let body = rows::body(r)?.to_string();
    let version: i64;
    if create {
        let res = sqlx::query(
            "INSERT INTO requests (id, shard, version, state, requester, provider, role, scope, break_glass, updated_at, body,
                                   created_at, approval_deadline, grant_deadline, granted_at, expires_at, ended_at,
                                   idempotency_key, content_hash)
             VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(r.id.0.to_string())
        .bind(fence.shard as i64)
        .bind(r.state.as_str())
        .bind(&r.requester.subject)
        .bind(&r.spec.provider)
        .bind(&r.spec.role)
        .bind(&r.spec.scope)
        .bind(r.spec.break_glass)
        .bind(now)
        .bind(&body)
        .bind(times[0].unwrap_or(now))
        .bind(times[1])
        .bind(times[2])
        .bind(times[3])
        .bind(times[4])
        .bind(times[5])
        .bind(p.idempotency.map(|i| &i.key))
        .bind(p.idempotency.map(|i| &i.content_hash))
        .execute(&mut *tx)
        .await;
        let res = match res {
            Ok(res) => res,
            Err(sqlx::Error::Database(d))
                if d.is_unique_violation() && d.message().contains("idempotency_key") =>
            {
                return Err(idempotency_taken(r, p.idempotency));
            }
            Err(e) => return Err(db("inserting a request")(e)),
        };
        if res.rows_affected() == 0 {
            return Err(StoreError::Duplicate { id: r.id });
        }
        version = 1;
    } else {
        let guard = matches!(p.guard, Some(Guard::BeforeApprovalDeadline));
        let res = sqlx::query(
            "UPDATE requests SET version = version + 1, state = ?3, body = ?4, updated_at = ?5,
                    created_at = COALESCE(?6, created_at), approval_deadline = COALESCE(?7, approval_deadline),
                    grant_deadline = COALESCE(?8, grant_deadline), granted_at = COALESCE(?9, granted_at),
                    expires_at = COALESCE(?10, expires_at), ended_at = COALESCE(?11, ended_at)
              WHERE id = ?1 AND version = ?2 AND (NOT ?12 OR approval_deadline > ?5)",
        )
        .bind(r.id.0.to_string())
        .bind(p.expected_version)
        .bind(r.state.as_str())
        .bind(&body)
        .bind(now)
        .bind(times[0])
        .bind(times[1])
        .bind(times[2])
        .bind(times[3])
        .bind(times[4])
        .bind(times[5])
        .bind(guard)
        .execute(&mut *tx)
        .await
        .map_err(db("updating a request"))?;
        if res.rows_affected() == 0 {
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT version FROM requests WHERE id = ?1")
                    .bind(r.id.0.to_string())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db("checking a request after a refused write"))?;
            return Ok(if exists.is_some() {
                Write::Stale
            } else {
                Write::Missing
            });
        }
        version = p.expected_version + 1;
    }
    let event_id = Uuid::now_v7().to_string();
    sqlx::query(
        "INSERT INTO audit_events (id, at, kind, actor, request_id, request_version, node, details)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .bind(&event_id)
    .bind(now)
    .bind(&p.audit.kind)
    .bind(&p.audit.actor)
    .bind(r.id.0.to_string())
    .bind(version)
    .bind(p.node)
    .bind(p.audit.details.to_string())
    .execute(&mut *tx)
    .await
    .map_err(db("writing an audit event"))?;
    for o in p.outbox {
        sqlx::query(
            "INSERT INTO outbox (event_id, request_id, sink, kind, payload, created_at, next_attempt_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        )
        .bind(&event_id)
        .bind(r.id.0.to_string())
        .bind(&o.sink)
        .bind(&o.kind)
        .bind(&o.payload)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db("enqueueing an outbox row"))?;
    }
    write_children(&mut tx, r, times[2], now).await?;
    tx.commit().await.map_err(db("committing a transition"))?;
    Ok(Write::Updated { version, db_now })
}

async fn write_children(
    conn: &mut SqliteConnection,
    r: &Request,
    new_grant_deadline: Option<i64>,
    now: i64,
) -> StoreResult<()> {
    let id = r.id.0.to_string();
    let mut approvals: Vec<(u32, &crate::domain::Approval)> =
        r.approvals.iter().map(|a| (0, a)).collect();
    for e in &r.extensions {
        approvals.extend(e.approvals.iter().map(|a| (e.number, a)));
    }
    for (ext, a) in approvals {
        sqlx::query(
            "INSERT INTO approvals (request_id, extension, approver, kind, comment, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT DO NOTHING",
        )
        .bind(&id)
        .bind(ext as i64)
        .bind(&a.by.subject)
        .bind(&a.kind)
        .bind(&a.comment)
        .bind(micros(a.at))
        .execute(&mut *conn)
        .await
        .map_err(db("recording an approval"))?;
    }
    let grant_deadline = new_grant_deadline.or_else(|| r.grant_deadline.map(micros));
    for g in &r.grants {
        let (purpose, not_after) = match g.purpose {
            GrantPurpose::Primary => (
                "primary".to_string(),
                grant_deadline.map(|d| d + r.spec.duration_seconds * 1_000_000),
            ),
            GrantPurpose::Extension {
                extension,
                not_after,
            } => (format!("extension:{extension}"), Some(micros(not_after))),
        };
        let status = serde_json::to_value(g.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        sqlx::query(
            "INSERT INTO grants (grant_id, request_id, provider, purpose, status, provider_ref, not_after, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (grant_id) DO UPDATE SET status = excluded.status, provider_ref = excluded.provider_ref,
                    not_after = excluded.not_after, updated_at = excluded.updated_at",
        )
        .bind(g.grant_id.to_string())
        .bind(&id)
        .bind(&r.spec.provider)
        .bind(purpose)
        .bind(status)
        .bind(&g.provider_ref)
        .bind(not_after)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db("recording a grant"))?;
    }
    for e in &r.extensions {
        let state = serde_json::to_value(e.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        sqlx::query(
            "INSERT INTO extensions (request_id, number, by_seconds, state, grant_id) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (request_id, number) DO UPDATE SET state = excluded.state, grant_id = excluded.grant_id",
        )
        .bind(&id)
        .bind(e.number as i64)
        .bind(e.by_seconds)
        .bind(state)
        .bind(e.grant_id.map(|g| g.to_string()))
        .execute(&mut *conn)
        .await
        .map_err(db("recording an extension"))?;
    }
    Ok(())
}

fn json_list<T: Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

/// The statement of a page of requests: every condition of the filter, newest first.
pub(super) fn list_query(f: &ListFilter) -> QueryBuilder<Sqlite> {
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
                                    WHERE json_extract(p.value, '$.author') = r.requester
                                       OR COALESCE(json_extract(p.value, '$.self_authored'), 0))))
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
    q
}

#[async_trait]
impl RequestStore for SqliteStore {
    async fn create(&self, fence: &Fence, p: Persist<'_>) -> StoreResult<Write> {
        write(&self.pool, fence, p, true).await
    }

    async fn transition(&self, fence: &Fence, p: Persist<'_>) -> StoreResult<Write> {
        write(&self.pool, fence, p, false).await
    }

    async fn get(&self, id: RequestId) -> StoreResult<Option<Request>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?1"
        )))
        .bind(id.0.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("loading a request"))?;
        row.as_ref().map(rows::request).transpose()
    }

    async fn live_requests(&self, shards: &[u32]) -> StoreResult<Vec<Request>> {
        let shard_list = serde_json::to_string(shards).unwrap_or_else(|_| "[]".into());
        let live: Vec<&str> = State::ALL
            .iter()
            .filter(|s| !s.is_terminal())
            .map(|s| s.as_str())
            .collect();
        let live = serde_json::to_string(&live).unwrap_or_else(|_| "[]".into());
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM requests
              WHERE shard IN (SELECT value FROM json_each(?1)) AND state IN (SELECT value FROM json_each(?2)) ORDER BY id"
        )))
        .bind(shard_list)
        .bind(live)
        .fetch_all(&self.pool)
        .await
        .map_err(db("loading live requests"))?;
        rows.iter().map(rows::request).collect()
    }

    async fn overdue_requests(
        &self,
        shard: u32,
        grace: std::time::Duration,
        stuck: std::time::Duration,
        limit: u32,
    ) -> StoreResult<Vec<RequestId>> {
        let now = micros(Utc::now());
        let before = |d: std::time::Duration| {
            now.saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        };
        let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM (
                SELECT id, {DUE_SQL} AS due,
                       CASE state WHEN 'ENDING' THEN ?3 ELSE ?2 END AS cutoff
                  FROM requests
                 WHERE shard = ?1 AND state IN ('PENDING', 'APPROVED', 'ACTIVE', 'ENDING')
             )
             WHERE due < cutoff
             ORDER BY due LIMIT ?4"
        )))
        .bind(i64::from(shard))
        .bind(before(grace))
        .bind(before(stuck))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("looking for overdue requests"))?;
        ids.iter()
            .map(|id| {
                Uuid::from_str(id)
                    .map(RequestId)
                    .map_err(|_| StoreError::Corrupt {
                        what: format!("request id {id:?}"),
                    })
            })
            .collect()
    }

    async fn requests_by_grant(&self, grant_ids: &[Uuid]) -> StoreResult<Vec<Request>> {
        let ids = serde_json::to_string(&grant_ids.iter().map(Uuid::to_string).collect::<Vec<_>>())
            .unwrap_or_else(|_| "[]".into());
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM requests
              WHERE id IN (SELECT request_id FROM grants WHERE grant_id IN (SELECT value FROM json_each(?1)))
              ORDER BY id"
        )))
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(db("loading the requests of grants"))?;
        rows.iter().map(rows::request).collect()
    }

    async fn active_requests_of(
        &self,
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
        .fetch_all(&self.pool)
        .await
        .map_err(db("loading active requests of a provider"))?;
        rows.iter().map(rows::request).collect()
    }

    async fn list_requests(&self, filter: &ListFilter) -> StoreResult<Vec<Request>> {
        let rows = list_query(filter)
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing requests"))?;
        rows.iter().map(rows::request).collect()
    }

    async fn get_by_idempotency_key(
        &self,
        requester: &str,
        key: &str,
    ) -> StoreResult<Option<(Request, String)>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS}, content_hash FROM requests
              WHERE requester = ?1 AND idempotency_key = ?2"
        )))
        .bind(requester)
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("looking up an idempotency key"))?;
        row.map(|r| {
            let hash: String = r.read("content_hash", "reading a content hash")?;
            Ok((rows::request(&r)?, hash))
        })
        .transpose()
    }

    async fn open_requests_of(&self, requester: &str, at_most: i64) -> StoreResult<i64> {
        sqlx::query_scalar(
            "SELECT count(*) FROM (
                SELECT 1 FROM requests
                 WHERE requester = ?1
                   AND state NOT IN ('EXPIRED','REVOKED','REJECTED','CANCELLED','TIMED_OUT','FAILED')
                 LIMIT ?2
             )",
        )
        .bind(requester)
        .bind(at_most.max(0))
        .fetch_one(&self.pool)
        .await
        .map_err(db("counting a requester's open requests"))
    }

    async fn last_break_glass_of(&self, requester: &str) -> StoreResult<Option<Timestamp>> {
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT max(created_at) FROM requests WHERE requester = ?1 AND break_glass <> 0",
        )
        .bind(requester)
        .fetch_one(&self.pool)
        .await
        .map_err(db("reading a requester's last break-glass request"))?;
        last.map(from_micros).transpose()
    }
}
