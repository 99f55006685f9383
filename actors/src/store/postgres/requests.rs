//! PostgreSQL writes and pages of requests: the one statement that commits a create or a
//! transition (request row, audit event, outbox, approvals, grants, extensions), and the
//! statement of a filtered keyset page, and the rest of [`RequestStore`]: the reads of requests
//! and of a requester's load.

use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::*;
use crate::domain::{Guard, Stamp, TimePatch, Timestamp};
use crate::store::rows::{self, REQUEST_COLUMNS};

const IDEMPOTENCY_INDEX: &str = "requests_by_idempotency_key";

/// Binds one time of a patch: an absolute instant, or an offset from the statement's clock.
fn time_params(s: &Option<Stamp>) -> (Option<Timestamp>, Option<i64>) {
    match s {
        None => (None, None),
        Some(Stamp::At(t)) => (Some(*t), None),
        Some(Stamp::NowPlus(d)) => (None, Some(d.num_microseconds().unwrap_or(i64::MAX))),
    }
}

fn times(p: &TimePatch) -> [(Option<Timestamp>, Option<i64>); 6] {
    [
        time_params(&p.created_at),
        time_params(&p.approval_deadline),
        time_params(&p.grant_deadline),
        time_params(&p.granted_at),
        time_params(&p.expires_at),
        time_params(&p.ended_at),
    ]
}

/// The statement shared by create and transition; `$1..$37` as bound by `write`.
fn write_sql(create: bool) -> String {
    let t = |col: &str, i: usize, keep: bool| {
        let old = if keep { col } else { "NULL" };
        format!(
            "COALESCE(${a}::timestamptz, statement_timestamp() + ${b}::bigint * interval '1 microsecond', {old})",
            a = 9 + 2 * i,
            b = 10 + 2 * i
        )
    };
    let cols = [
        "created_at",
        "approval_deadline",
        "grant_deadline",
        "granted_at",
        "expires_at",
        "ended_at",
    ];
    let main = if create {
        format!(
            "INSERT INTO requests (id, shard, version, state, requester, provider, role, scope, break_glass, updated_at, body,
                                   idempotency_key, content_hash, {cols})
             SELECT $1, $3, 1, $6, $32, $31, $33, $34, $35, statement_timestamp(), $7, $36, $37, {vals}
             WHERE EXISTS (SELECT 1 FROM fence)
             ON CONFLICT (id) DO NOTHING
             RETURNING id, version, grant_deadline",
            cols = cols.join(", "),
            vals = cols.iter().enumerate().map(|(i, c)| t(c, i, false)).collect::<Vec<_>>().join(", "),
        )
    } else {
        format!(
            "UPDATE requests SET version = version + 1, state = $6, body = $7, updated_at = statement_timestamp(), {sets}
             WHERE id = $1 AND version = $2 AND EXISTS (SELECT 1 FROM fence)
               AND (NOT $8 OR approval_deadline > statement_timestamp())
             RETURNING id, version, grant_deadline",
            sets = cols.iter().enumerate().map(|(i, c)| format!("{c} = {}", t(c, i, true))).collect::<Vec<_>>().join(", "),
        )
    };
    format!(
        "WITH fence AS ({fence}), w AS ({main}),
         aud AS (
            INSERT INTO audit_events (id, at, kind, actor, request_id, request_version, node, details)
            SELECT $21, statement_timestamp(), $22, $23, w.id, w.version, $24, $25 FROM w
         ), ob AS (
            INSERT INTO outbox (event_id, request_id, sink, kind, payload, created_at, next_attempt_at)
            SELECT $21, w.id, o.sink, o.kind, o.payload, statement_timestamp(), statement_timestamp()
              FROM w, jsonb_to_recordset($26::jsonb) AS o(sink text, kind text, payload text)
         ), ap AS (
            INSERT INTO approvals (request_id, extension, approver, kind, comment, at)
            SELECT w.id, a.extension, a.approver, a.kind, a.comment, a.at
              FROM w, jsonb_to_recordset($27::jsonb) AS a(extension int, approver text, kind text, comment text, at timestamptz)
            ON CONFLICT DO NOTHING
         ), gr AS (
            INSERT INTO grants (grant_id, request_id, provider, purpose, status, provider_ref, not_after, updated_at)
            SELECT g.grant_id, w.id, $31, g.purpose, g.status, g.provider_ref,
                   COALESCE(g.not_after, w.grant_deadline + $30::bigint * interval '1 second'), statement_timestamp()
              FROM w, jsonb_to_recordset($28::jsonb)
                   AS g(grant_id uuid, purpose text, status text, provider_ref text, not_after timestamptz)
            ON CONFLICT (grant_id) DO UPDATE
               SET status = EXCLUDED.status, provider_ref = EXCLUDED.provider_ref,
                   not_after = EXCLUDED.not_after, updated_at = EXCLUDED.updated_at
         ), ex AS (
            INSERT INTO extensions (request_id, number, by_seconds, state, grant_id)
            SELECT w.id, e.number, e.by_seconds, e.state, e.grant_id
              FROM w, jsonb_to_recordset($29::jsonb) AS e(number int, by_seconds bigint, state text, grant_id uuid)
            ON CONFLICT (request_id, number) DO UPDATE SET state = EXCLUDED.state, grant_id = EXCLUDED.grant_id
         )
         SELECT w.version, statement_timestamp() AS db_now FROM w",
        fence = fence_sql(3, 4, 5),
    )
}

/// Commits a create (`create`) or a transition: the request row, guarded by the fence and
/// (a transition) its version, with its audit event, outbox rows and child rows, in one
/// statement.
pub(super) async fn write(
    pool: &PgPool,
    fence: &Fence,
    p: Persist<'_>,
    create: bool,
) -> StoreResult<Write> {
    let r = p.request;
    let sql = write_sql(create);
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(r.id.0)
        .bind(p.expected_version)
        .bind(fence.shard as i32)
        .bind(&fence.owner)
        .bind(fence.epoch)
        .bind(r.state.as_str())
        .bind(sqlx::types::Json(rows::body(r)?))
        .bind(matches!(p.guard, Some(Guard::BeforeApprovalDeadline)));
    for (abs, off) in times(p.times) {
        q = q.bind(abs).bind(off);
    }
    let details = p.audit.details.to_string();
    q = q
        .bind(Uuid::now_v7())
        .bind(&p.audit.kind)
        .bind(&p.audit.actor)
        .bind(p.node)
        .bind(details)
        .bind(rows::outbox_json(p.outbox))
        .bind(rows::approvals_json(r))
        .bind(rows::grants_json(r))
        .bind(rows::extensions_json(r))
        .bind(r.spec.duration_seconds)
        .bind(&r.spec.provider)
        .bind(&r.requester.subject)
        .bind(&r.spec.role)
        .bind(&r.spec.scope)
        .bind(r.spec.break_glass)
        .bind(p.idempotency.map(|i| &i.key))
        .bind(p.idempotency.map(|i| &i.content_hash));
    let row = match q.fetch_optional(pool).await {
        Ok(row) => row,
        // A concurrent create with this key committed first: its statement held the
        // key's index entry, so this one waited for it and then failed as a whole.
        Err(sqlx::Error::Database(d)) if create && d.constraint() == Some(IDEMPOTENCY_INDEX) => {
            return Err(idempotency_taken(r, p.idempotency));
        }
        Err(e) => return Err(db("committing a transition")(e)),
    };
    if let Some(row) = row {
        return Ok(Write::Updated {
            version: row
                .try_get("version")
                .map_err(db("reading the new version"))?,
            db_now: row
                .try_get("db_now")
                .map_err(db("reading the database clock"))?,
        });
    }
    let exists: Option<i64> = sqlx::query_scalar("SELECT version FROM requests WHERE id = $1")
        .bind(r.id.0)
        .fetch_optional(pool)
        .await
        .map_err(db("checking a request after a refused write"))?;
    Ok(match (create, exists) {
        (true, Some(_)) => return Err(StoreError::Duplicate { id: r.id }),
        (true, None) | (false, Some(_)) => Write::Stale,
        (false, None) => Write::Missing,
    })
}

/// The statement of a page of requests: every condition of the filter, newest first.
pub(super) fn list_query(f: &ListFilter) -> QueryBuilder<Postgres> {
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
                                    WHERE p->>'author' = r.requester
                                       OR COALESCE((p->>'self_authored')::boolean, false))))
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
    q
}

#[async_trait]
impl RequestStore for PgStore {
    async fn create(&self, fence: &Fence, p: Persist<'_>) -> StoreResult<Write> {
        write(&self.pool, fence, p, true).await
    }

    async fn transition(&self, fence: &Fence, p: Persist<'_>) -> StoreResult<Write> {
        write(&self.pool, fence, p, false).await
    }

    async fn get(&self, id: RequestId) -> StoreResult<Option<Request>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE id = $1"
        )))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("loading a request"))?;
        row.as_ref().map(rows::request).transpose()
    }

    async fn live_requests(&self, shards: &[u32]) -> StoreResult<Vec<Request>> {
        let shards: Vec<i32> = shards.iter().map(|s| *s as i32).collect();
        let live: Vec<&str> = State::ALL
            .iter()
            .filter(|s| !s.is_terminal())
            .map(|s| s.as_str())
            .collect();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE shard = ANY($1) AND state = ANY($2) ORDER BY id"
        )))
        .bind(&shards)
        .bind(&live)
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
        let micros = |d: std::time::Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        let ids: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM (
                SELECT id, {DUE_SQL} AS due,
                       CASE state WHEN 'ENDING' THEN $3 ELSE $2 END AS late
                  FROM requests
                 WHERE shard = $1 AND state IN ('PENDING', 'APPROVED', 'ACTIVE', 'ENDING')
             ) r
             WHERE due < statement_timestamp() - late * interval '1 microsecond'
             ORDER BY due LIMIT $4"
        )))
        .bind(shard as i32)
        .bind(micros(grace))
        .bind(micros(stuck))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("looking for overdue requests"))?;
        Ok(ids.into_iter().map(RequestId).collect())
    }

    async fn requests_by_grant(&self, grant_ids: &[Uuid]) -> StoreResult<Vec<Request>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM requests
              WHERE id IN (SELECT request_id FROM grants WHERE grant_id = ANY($1)) ORDER BY id"
        )))
        .bind(grant_ids)
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
              WHERE state = 'ACTIVE' AND provider = $1 AND ($2::uuid IS NULL OR id > $2)
              ORDER BY id LIMIT $3"
        )))
        .bind(provider)
        .bind(after.map(|a| a.0))
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
              WHERE requester = $1 AND idempotency_key = $2"
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
                 WHERE requester = $1
                   AND state NOT IN ('EXPIRED','REVOKED','REJECTED','CANCELLED','TIMED_OUT','FAILED')
                 LIMIT $2
             ) open",
        )
        .bind(requester)
        .bind(at_most.max(0))
        .fetch_one(&self.pool)
        .await
        .map_err(db("counting a requester's open requests"))
    }

    async fn last_break_glass_of(&self, requester: &str) -> StoreResult<Option<Timestamp>> {
        sqlx::query_scalar(
            "SELECT max(created_at) FROM requests WHERE requester = $1 AND break_glass",
        )
        .bind(requester)
        .fetch_one(&self.pool)
        .await
        .map_err(db("reading a requester's last break-glass request"))
    }
}
