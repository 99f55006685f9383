//! The PostgreSQL store: every transition is one data-modifying statement, so no
//! transaction ever sits idle holding locks. Fenced writes read their `shard_owners` row
//! `FOR SHARE`: a takeover's update of that row waits for them and then sees them.

mod admin;
mod audit;
mod cluster;
mod outbox;
mod reconcile;
mod requests;

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::rows::{self, Times};
use super::*;
use crate::domain::{Stamp, State, TimePatch};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

pub struct PgStore {
    pub(super) pool: PgPool,
}

/// The settings of every session: lock waits and idle transactions end within `lock_wait`
/// (below the shard lease margin: a takeover never waits long behind a write, nor behind
/// the open transaction of a frozen node), statements within 10 s.
fn session_settings(lock_wait: Duration) -> String {
    let ms = lock_wait.as_millis().max(1);
    format!(
        "SET lock_timeout = '{ms}ms'; SET idle_in_transaction_session_timeout = '{ms}ms'; SET statement_timeout = '10s'"
    )
}

impl PgStore {
    /// Connects with the lock wait of the default lease TTL ([`lock_wait_for`]).
    pub async fn connect(url: &str, mode: Mode) -> StoreResult<Self> {
        Self::connect_with(url, mode, lock_wait_for(DEFAULT_LEASE_TTL)).await
    }

    /// Connects; every session's lock waits and idle transactions end within `lock_wait`.
    pub async fn connect_with(url: &str, mode: Mode, lock_wait: Duration) -> StoreResult<Self> {
        let settings: std::sync::Arc<str> = session_settings(lock_wait).into();
        let opts: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| StoreError::Config(format!("bad PostgreSQL URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                let settings = settings.to_string();
                Box::pin(async move {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(settings))
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            })
            .connect_with(opts.clone())
            .await
            .map_err(db("connecting to PostgreSQL"))?;
        // Migrations run on a connection of their own without the lock wait: nodes starting
        // together queue on the migrator's advisory lock for as long as the first one takes.
        // (A pool of one: `Migrator::run` on a bare `&mut PgConnection` makes the caller's
        // future fail the `Send` check.)
        let migrating = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .map_err(db("connecting to PostgreSQL"))?;
        let migrated = MIGRATOR.run(&migrating).await;
        migrating.close().await;
        migrated.map_err(StoreError::Migrate)?;
        let store = PgStore { pool };
        store.check_mode(mode).await?;
        Ok(store)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn check_mode(&self, mode: Mode) -> StoreResult<()> {
        let want = if mode == Mode::Dev {
            "dev"
        } else {
            "production"
        };
        let stored: String = sqlx::query_scalar(
            "WITH ins AS (INSERT INTO cluster_meta (key, value) VALUES ('mode', $1) ON CONFLICT (key) DO UPDATE SET value = cluster_meta.value RETURNING value)
             SELECT value FROM ins",
        )
        .bind(want)
        .fetch_one(&self.pool)
        .await
        .map_err(db("reading the database mode"))?;
        if stored != want {
            return Err(StoreError::ModeMismatch {
                database_is_dev: stored == "dev",
            });
        }
        Ok(())
    }

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
            Self::time_params(&p.created_at),
            Self::time_params(&p.approval_deadline),
            Self::time_params(&p.grant_deadline),
            Self::time_params(&p.granted_at),
            Self::time_params(&p.expires_at),
            Self::time_params(&p.ended_at),
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

    async fn write(&self, fence: &Fence, p: Persist<'_>, create: bool) -> StoreResult<Write> {
        let r = p.request;
        let sql = Self::write_sql(create);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(r.id.0)
            .bind(p.expected_version)
            .bind(fence.shard as i32)
            .bind(&fence.owner)
            .bind(fence.epoch)
            .bind(r.state.as_str())
            .bind(sqlx::types::Json(rows::body(r)?))
            .bind(matches!(p.guard, Some(Guard::BeforeApprovalDeadline)));
        for (abs, off) in Self::times(p.times) {
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
        let row = match q.fetch_optional(&self.pool).await {
            Ok(row) => row,
            // A concurrent create with this key committed first: its statement held the
            // key's index entry, so this one waited for it and then failed as a whole.
            Err(sqlx::Error::Database(d))
                if create && d.constraint() == Some(IDEMPOTENCY_INDEX) =>
            {
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
            .fetch_optional(&self.pool)
            .await
            .map_err(db("checking a request after a refused write"))?;
        Ok(match (create, exists) {
            (true, Some(_)) => return Err(StoreError::Duplicate { id: r.id }),
            (true, None) | (false, Some(_)) => Write::Stale,
            (false, None) => Write::Missing,
        })
    }

    pub(super) fn decode(row: &PgRow) -> StoreResult<Request> {
        let get = |c: &'static str| {
            row.try_get::<Option<Timestamp>, _>(c)
                .map_err(db("reading a request time"))
        };
        let times = Times([
            get("created_at")?,
            get("approval_deadline")?,
            get("grant_deadline")?,
            get("granted_at")?,
            get("expires_at")?,
            get("ended_at")?,
        ]);
        let body: sqlx::types::Json<serde_json::Value> =
            row.try_get("body").map_err(db("reading a request body"))?;
        let version: i64 = row
            .try_get("version")
            .map_err(db("reading a request version"))?;
        rows::decode(body.0, version, times)
    }

    fn lease(row: &PgRow, owner: &str) -> StoreResult<Lease> {
        Ok(Lease {
            fence: Fence {
                shard: row
                    .try_get::<i32, _>("shard")
                    .map_err(db("reading a lease"))? as u32,
                owner: owner.to_owned(),
                epoch: row.try_get("epoch").map_err(db("reading a lease"))?,
            },
            expires_at: row.try_get("expires_at").map_err(db("reading a lease"))?,
        })
    }
}

/// The fence of DESIGN.md §5: this owner at this epoch, with an unexpired lease. Reading the
/// owner row `FOR SHARE` makes a takeover (an UPDATE of that row) wait for this write.
pub(super) fn fence_sql(shard: u8, owner: u8, epoch: u8) -> String {
    format!(
        "SELECT 1 FROM shard_owners o
          WHERE o.shard = ${shard} AND o.owner = ${owner} AND o.epoch = ${epoch}
            AND EXISTS (SELECT 1 FROM shard_renewals r
                         WHERE r.shard = o.shard AND r.epoch = o.epoch AND r.expires_at > statement_timestamp())
          FOR SHARE OF o"
    )
}

pub(super) const REQUEST_COLUMNS: &str = "version, body, created_at, approval_deadline, grant_deadline, granted_at, expires_at, ended_at";

const IDEMPOTENCY_INDEX: &str = "requests_by_idempotency_key";

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn db_now(&self) -> StoreResult<Timestamp> {
        sqlx::query_scalar("SELECT statement_timestamp()")
            .fetch_one(&self.pool)
            .await
            .map_err(db("reading the database clock"))
    }

    async fn init_shards(&self, shards: u32) -> StoreResult<u32> {
        let stored: String = sqlx::query_scalar(
            "WITH ins AS (INSERT INTO cluster_meta (key, value) VALUES ('shards', $1) ON CONFLICT (key) DO UPDATE SET value = cluster_meta.value RETURNING value)
             SELECT value FROM ins",
        )
        .bind(shards.to_string())
        .fetch_one(&self.pool)
        .await
        .map_err(db("initialising the shard count"))?;
        let stored: u32 = stored.parse().map_err(|_| StoreError::Corrupt {
            what: format!("shard count {stored:?}"),
        })?;
        if stored != shards {
            return Err(StoreError::ShardCountMismatch {
                stored,
                configured: shards,
            });
        }
        Ok(stored)
    }

    async fn acquire_shards(
        &self,
        node: &str,
        incarnation: Uuid,
        shards: &[u32],
        ttl: Duration,
    ) -> StoreResult<Vec<Lease>> {
        let shards: Vec<i32> = shards.iter().map(|s| *s as i32).collect();
        // One conditional statement: a shard is taken only if its lease has lapsed, and
        // taking it bumps the epoch, which fences every write of the previous owner.
        let rows = sqlx::query(
            "WITH taken AS (
                INSERT INTO shard_owners AS o (shard, owner, incarnation, epoch, acquired_at)
                SELECT s, $2, $3, 1, statement_timestamp() FROM unnest($1::int[]) AS s
                ON CONFLICT (shard) DO UPDATE
                   SET owner = EXCLUDED.owner, incarnation = EXCLUDED.incarnation,
                       epoch = o.epoch + 1, acquired_at = EXCLUDED.acquired_at
                 WHERE NOT EXISTS (SELECT 1 FROM shard_renewals r
                                    WHERE r.shard = o.shard AND r.epoch = o.epoch
                                      AND r.expires_at > statement_timestamp())
                RETURNING o.shard, o.epoch
             ), ren AS (
                INSERT INTO shard_renewals (shard, epoch, expires_at)
                SELECT shard, epoch, statement_timestamp() + $4::bigint * interval '1 millisecond' FROM taken
                ON CONFLICT (shard) DO UPDATE SET epoch = EXCLUDED.epoch, expires_at = EXCLUDED.expires_at
                RETURNING shard, epoch, expires_at
             )
             SELECT shard, epoch, expires_at FROM ren ORDER BY shard",
        )
        .bind(&shards)
        .bind(node)
        .bind(incarnation)
        .bind(ttl_ms(ttl))
        .fetch_all(&self.pool)
        .await
        .map_err(db("acquiring shards"))?;
        rows.iter().map(|r| Self::lease(r, node)).collect()
    }

    async fn renew_shards(
        &self,
        node: &str,
        incarnation: Uuid,
        ttl: Duration,
    ) -> StoreResult<Vec<Lease>> {
        let rows = sqlx::query(
            "UPDATE shard_renewals r SET expires_at = statement_timestamp() + $3::bigint * interval '1 millisecond'
               FROM shard_owners o
              WHERE o.shard = r.shard AND o.epoch = r.epoch AND o.owner = $1 AND o.incarnation = $2
                AND r.expires_at > statement_timestamp()
             RETURNING r.shard, r.epoch, r.expires_at",
        )
        .bind(node)
        .bind(incarnation)
        .bind(ttl_ms(ttl))
        .fetch_all(&self.pool)
        .await
        .map_err(db("renewing shard leases"))?;
        rows.iter().map(|r| Self::lease(r, node)).collect()
    }

    async fn release_shards(
        &self,
        node: &str,
        incarnation: Uuid,
        only: Option<&[u32]>,
    ) -> StoreResult<()> {
        let only: Option<Vec<i32>> = only.map(|s| s.iter().map(|s| *s as i32).collect());
        sqlx::query(
            "UPDATE shard_renewals r SET expires_at = statement_timestamp() - interval '1 millisecond'
               FROM shard_owners o
              WHERE o.shard = r.shard AND o.epoch = r.epoch AND o.owner = $1 AND o.incarnation = $2
                AND ($3::int[] IS NULL OR r.shard = ANY($3))",
        )
        .bind(node)
        .bind(incarnation)
        .bind(only)
        .execute(&self.pool)
        .await
        .map_err(db("releasing shard leases"))?;
        Ok(())
    }

    async fn heartbeat(&self, hb: &Heartbeat<'_>, ttl: Duration) -> StoreResult<bool> {
        cluster::heartbeat(&self.pool, hb, ttl).await
    }

    async fn leave(&self, node: &str, incarnation: Uuid) -> StoreResult<()> {
        cluster::leave(&self.pool, node, incarnation).await
    }

    async fn members(&self) -> StoreResult<(Timestamp, Vec<Member>)> {
        cluster::members(&self.pool).await
    }

    async fn shard_table(&self) -> StoreResult<Vec<ShardRecord>> {
        cluster::shard_table(&self.pool).await
    }

    async fn create(&self, fence: &Fence, p: Persist<'_>) -> StoreResult<Write> {
        self.write(fence, p, true).await
    }

    async fn transition(&self, fence: &Fence, p: Persist<'_>) -> StoreResult<Write> {
        self.write(fence, p, false).await
    }

    async fn requests_by_grant(&self, grant_ids: &[Uuid]) -> StoreResult<Vec<Request>> {
        reconcile::requests_by_grant(self, grant_ids).await
    }

    async fn active_requests_of(
        &self,
        provider: &str,
        after: Option<RequestId>,
        limit: u32,
    ) -> StoreResult<Vec<Request>> {
        reconcile::active_requests_of(self, provider, after, limit).await
    }

    async fn record_finding(&self, fence: &Fence, finding: &Finding<'_>) -> StoreResult<Write> {
        reconcile::record_finding(self, fence, finding).await
    }

    async fn put_reconcile_pass(&self, pass: &ReconcilePass) -> StoreResult<()> {
        reconcile::put_pass(self, pass).await
    }

    async fn reconcile_passes(&self) -> StoreResult<Vec<ReconcilePass>> {
        reconcile::passes(self).await
    }

    async fn get(&self, id: RequestId) -> StoreResult<Option<Request>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE id = $1"
        )))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("loading a request"))?;
        row.as_ref().map(Self::decode).transpose()
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
        rows.iter().map(Self::decode).collect()
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

    async fn request_audit(&self, id: RequestId) -> StoreResult<Vec<AuditEvent>> {
        let rows = sqlx::query(
            "SELECT id, at, kind, actor, request_id, request_version, node, details
               FROM audit_events WHERE request_id = $1
              ORDER BY request_version IS NULL, request_version, at, id",
        )
        .bind(id.0)
        .fetch_all(&self.pool)
        .await
        .map_err(db("loading audit events"))?;
        rows.iter().map(audit::audit_event).collect()
    }

    async fn request_outbox(&self, id: RequestId) -> StoreResult<Vec<OutboxEntry>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM outbox WHERE request_id = $1 ORDER BY id",
            outbox::OUTBOX_COLUMNS
        )))
        .bind(id.0)
        .fetch_all(&self.pool)
        .await
        .map_err(db("loading outbox rows"))?;
        rows.iter().map(outbox::decode_outbox).collect()
    }

    async fn policy_revision(&self) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT count(*) FROM policies")
            .fetch_one(&self.pool)
            .await
            .map_err(db("reading the policy revision"))
    }

    async fn policies(&self) -> StoreResult<Vec<PolicySource>> {
        let rows = sqlx::query(
            "SELECT DISTINCT ON (name) name, version, rego, author, deleted FROM policies ORDER BY name, version DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("loading policies"))?;
        let mut out = Vec::new();
        for r in rows {
            if r.try_get::<bool, _>("deleted")
                .map_err(db("reading a policy"))?
            {
                continue;
            }
            out.push(PolicySource {
                name: r.try_get("name").map_err(db("reading a policy"))?,
                version: r.try_get("version").map_err(db("reading a policy"))?,
                author: r.try_get("author").map_err(db("reading a policy"))?,
                rego: r.try_get("rego").map_err(db("reading a policy"))?,
            });
        }
        Ok(out)
    }

    async fn put_policy(
        &self,
        name: &str,
        rego: &str,
        author: &str,
        node: &str,
    ) -> StoreResult<i64> {
        put_policy_pg(&self.pool, name, rego, author, node, false)
            .await
            .map(|v| v.unwrap_or(0))
    }

    async fn delete_policy(&self, name: &str, author: &str, node: &str) -> StoreResult<bool> {
        put_policy_pg(&self.pool, name, "", author, node, true)
            .await
            .map(|v| v.is_some())
    }

    async fn request_events(
        &self,
        id: RequestId,
        after_version: i64,
    ) -> StoreResult<Vec<AuditEvent>> {
        requests::events(&self.pool, id, after_version).await
    }

    async fn list_requests(&self, filter: &ListFilter) -> StoreResult<Vec<Request>> {
        requests::list(&self.pool, filter).await
    }

    async fn get_by_idempotency_key(
        &self,
        requester: &str,
        key: &str,
    ) -> StoreResult<Option<(Request, String)>> {
        requests::by_idempotency_key(&self.pool, requester, key).await
    }

    async fn get_principal(&self, subject: &str) -> StoreResult<Option<PrincipalRecord>> {
        admin::get_principal(&self.pool, subject).await
    }

    async fn close_review(
        &self,
        request_id: Uuid,
        why: &str,
        reviewer: &str,
        verdict: &str,
        node: &str,
    ) -> StoreResult<Option<ReviewRecord>> {
        let row: Option<(Timestamp,)> = sqlx::query_as(
            "WITH ins AS (
                INSERT INTO reviews (request_id, reason, reviewer, verdict, created_at, closed_at)
                VALUES ($1, $2, $3, $4, statement_timestamp(), statement_timestamp())
                ON CONFLICT (request_id) DO NOTHING
                RETURNING closed_at
             ), aud AS (
                INSERT INTO audit_events (id, at, kind, actor, request_id, node, details)
                SELECT $5, statement_timestamp(), 'review.closed', $3, $1, $6,
                       json_build_object('reason', $2::text, 'verdict', $4::text)::text
                  FROM ins
             )
             SELECT closed_at FROM ins",
        )
        .bind(request_id)
        .bind(why)
        .bind(reviewer)
        .bind(verdict)
        .bind(Uuid::now_v7())
        .bind(node)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("closing a review"))?;
        Ok(row.map(|(closed_at,)| ReviewRecord {
            request_id,
            reason: why.to_owned(),
            reviewer: reviewer.to_owned(),
            verdict: verdict.to_owned(),
            closed_at,
        }))
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

    async fn note_identity(&self, subject: &str, verified_email: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO identities (subject, verified_email, seen_at)
             VALUES ($1, $2, statement_timestamp())
             ON CONFLICT (subject) DO UPDATE
                SET verified_email = EXCLUDED.verified_email, seen_at = EXCLUDED.seen_at
              WHERE identities.verified_email IS DISTINCT FROM EXCLUDED.verified_email",
        )
        .bind(subject)
        .bind(verified_email)
        .execute(&self.pool)
        .await
        .map_err(db("recording an identity"))?;
        Ok(())
    }

    async fn verified_email_of(&self, subject: &str) -> StoreResult<Option<String>> {
        sqlx::query_scalar("SELECT verified_email FROM identities WHERE subject = $1")
            .bind(subject)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading an identity"))
    }

    async fn set_trust_tier(
        &self,
        subject: &str,
        tier: i64,
        by: &str,
        reason: &str,
        node: &str,
    ) -> StoreResult<PrincipalRecord> {
        admin::set_trust_tier(&self.pool, subject, tier, by, reason, node).await
    }

    async fn append_audit(
        &self,
        kind: &str,
        actor: &str,
        request_id: Option<Uuid>,
        details: &serde_json::Value,
        node: &str,
    ) -> StoreResult<Uuid> {
        audit::append(&self.pool, kind, actor, request_id, details, node).await
    }

    async fn query_audit(
        &self,
        q: &AuditQuery,
    ) -> StoreResult<Vec<(AuditEvent, Option<ChainRow>)>> {
        audit::query(&self.pool, q).await
    }

    async fn get_policy(&self, name: &str) -> StoreResult<Option<(PolicySource, Timestamp)>> {
        admin::get_policy(&self.pool, name).await
    }

    async fn list_policies(&self) -> StoreResult<Vec<(PolicySource, Timestamp)>> {
        admin::list_policies(&self.pool).await
    }
}

/// A new policy version and its audit event in one statement. Deleting an unknown (or
/// already deleted) policy writes nothing and answers `None`.
async fn put_policy_pg(
    pool: &PgPool,
    name: &str,
    rego: &str,
    author: &str,
    node: &str,
    delete: bool,
) -> StoreResult<Option<i64>> {
    let version: Option<i64> = sqlx::query_scalar(
        "WITH cur AS (
            SELECT version, deleted FROM policies WHERE name = $1 ORDER BY version DESC LIMIT 1
         ), ins AS (
            INSERT INTO policies (name, version, rego, author, deleted, created_at)
            SELECT $1, COALESCE((SELECT version FROM cur), 0) + 1, $2, $3, $5, statement_timestamp()
             WHERE NOT $5 OR EXISTS (SELECT 1 FROM cur WHERE NOT deleted)
            RETURNING version
         ), aud AS (
            INSERT INTO audit_events (id, at, kind, actor, node, details)
            SELECT $6, statement_timestamp(), CASE WHEN $5 THEN 'policy.deleted' ELSE 'policy.applied' END, $3, $4,
                   json_build_object('name', $1::text, 'version', ins.version, 'sha256', encode(sha256(convert_to($2, 'UTF8')), 'hex'))::text
              FROM ins
         )
         SELECT version FROM ins",
    )
    .bind(name)
    .bind(rego)
    .bind(author)
    .bind(node)
    .bind(delete)
    .bind(Uuid::now_v7())
    .fetch_optional(pool)
    .await
    .map_err(db("storing a policy"))?;
    Ok(version)
}
