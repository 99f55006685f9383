//! PostgreSQL records that admins manage besides requests: principals' trust tiers (each
//! change written with its audit event in one statement) and reads of the policy versions.

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::store::*;

fn principal(r: &PgRow) -> StoreResult<PrincipalRecord> {
    let e = || db("reading a principal");
    Ok(PrincipalRecord {
        subject: r.try_get("subject").map_err(e())?,
        trust_tier: r.try_get("trust_tier").map_err(e())?,
        updated_by: r.try_get("updated_by").map_err(e())?,
        updated_at: r.try_get("updated_at").map_err(e())?,
    })
}

pub(super) async fn get_principal(
    pool: &PgPool,
    subject: &str,
) -> StoreResult<Option<PrincipalRecord>> {
    let row = sqlx::query(
        "SELECT subject, trust_tier, updated_by, updated_at FROM principals WHERE subject = $1",
    )
    .bind(subject)
    .fetch_optional(pool)
    .await
    .map_err(db("loading a principal"))?;
    row.as_ref().map(principal).transpose()
}

pub(super) async fn set_trust_tier(
    pool: &PgPool,
    subject: &str,
    tier: i64,
    by: &str,
    reason: &str,
    node: &str,
) -> StoreResult<PrincipalRecord> {
    // `old` locks an existing row, so `from` is the value this update replaces. A row that a
    // concurrent first write inserts after this statement's snapshot is not updated blindly
    // (its `from` would be unknown): nothing is written and the statement runs again.
    for _ in 0..3 {
        let row = sqlx::query(
            "WITH old AS (
                SELECT trust_tier FROM principals WHERE subject = $1 FOR UPDATE
             ), up AS (
                INSERT INTO principals AS p (subject, trust_tier, updated_by, updated_at)
                VALUES ($1, $2, $3, statement_timestamp())
                ON CONFLICT (subject) DO UPDATE
                   SET trust_tier = EXCLUDED.trust_tier, updated_by = EXCLUDED.updated_by,
                       updated_at = EXCLUDED.updated_at
                 WHERE EXISTS (SELECT 1 FROM old)
                RETURNING subject, trust_tier, updated_by, updated_at
             ), aud AS (
                INSERT INTO audit_events (id, at, kind, actor, node, details)
                SELECT $6, statement_timestamp(), 'principal.trust_tier_changed', $3, $5,
                       json_build_object('subject', up.subject, 'from', (SELECT trust_tier FROM old),
                                         'to', up.trust_tier, 'reason', $4::text)::text
                  FROM up
             )
             SELECT subject, trust_tier, updated_by, updated_at FROM up",
        )
        .bind(subject)
        .bind(tier)
        .bind(by)
        .bind(reason)
        .bind(node)
        .bind(Uuid::now_v7())
        .fetch_optional(pool)
        .await
        .map_err(db("setting a trust tier"))?;
        if let Some(row) = row {
            return principal(&row);
        }
    }
    Err(StoreError::Contended {
        op: "setting a trust tier",
    })
}

fn policy(r: &PgRow) -> StoreResult<(PolicySource, Timestamp)> {
    let e = || db("reading a policy");
    Ok((
        PolicySource {
            name: r.try_get("name").map_err(e())?,
            version: r.try_get("version").map_err(e())?,
            author: r.try_get("author").map_err(e())?,
            rego: r.try_get("rego").map_err(e())?,
        },
        r.try_get("created_at").map_err(e())?,
    ))
}

pub(super) async fn get_policy(
    pool: &PgPool,
    name: &str,
) -> StoreResult<Option<(PolicySource, Timestamp)>> {
    let row = sqlx::query(
        "SELECT name, version, rego, author, created_at FROM (
            SELECT * FROM policies WHERE name = $1 ORDER BY version DESC LIMIT 1
         ) latest WHERE NOT deleted",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .map_err(db("loading a policy"))?;
    row.as_ref().map(policy).transpose()
}

pub(super) async fn list_policies(pool: &PgPool) -> StoreResult<Vec<(PolicySource, Timestamp)>> {
    let rows = sqlx::query(
        "SELECT name, version, rego, author, created_at FROM (
            SELECT DISTINCT ON (name) * FROM policies ORDER BY name, version DESC
         ) latest WHERE NOT deleted ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .map_err(db("loading policies"))?;
    rows.iter().map(policy).collect()
}
