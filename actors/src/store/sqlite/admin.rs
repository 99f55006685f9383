//! SQLite records that admins manage besides requests: principals' trust tiers (each change
//! written with its audit event in one `BEGIN IMMEDIATE` transaction) and reads of the
//! policy versions.

use chrono::Utc;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

use super::{from_micros, micros};
use crate::store::*;

fn principal(r: &SqliteRow) -> StoreResult<PrincipalRecord> {
    let e = || db("reading a principal");
    Ok(PrincipalRecord {
        subject: r.try_get("subject").map_err(e())?,
        trust_tier: r.try_get("trust_tier").map_err(e())?,
        updated_by: r.try_get("updated_by").map_err(e())?,
        updated_at: from_micros(r.try_get("updated_at").map_err(e())?)?,
    })
}

pub(super) async fn get_principal(
    pool: &SqlitePool,
    subject: &str,
) -> StoreResult<Option<PrincipalRecord>> {
    let row = sqlx::query(
        "SELECT subject, trust_tier, updated_by, updated_at FROM principals WHERE subject = ?1",
    )
    .bind(subject)
    .fetch_optional(pool)
    .await
    .map_err(db("loading a principal"))?;
    row.as_ref().map(principal).transpose()
}

pub(super) async fn set_trust_tier(
    pool: &SqlitePool,
    subject: &str,
    tier: i64,
    by: &str,
    reason: &str,
    node: &str,
) -> StoreResult<PrincipalRecord> {
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(db("starting a transaction"))?;
    let now = micros(Utc::now());
    let from: Option<i64> =
        sqlx::query_scalar("SELECT trust_tier FROM principals WHERE subject = ?1")
            .bind(subject)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("loading a principal"))?;
    let row = sqlx::query(
        "INSERT INTO principals (subject, trust_tier, updated_by, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (subject) DO UPDATE
            SET trust_tier = excluded.trust_tier, updated_by = excluded.updated_by, updated_at = excluded.updated_at
         RETURNING subject, trust_tier, updated_by, updated_at",
    )
    .bind(subject)
    .bind(tier)
    .bind(by)
    .bind(now)
    .fetch_one(&mut *tx)
    .await
    .map_err(db("setting a trust tier"))?;
    let details =
        serde_json::json!({ "subject": subject, "from": from, "to": tier, "reason": reason });
    sqlx::query(
        "INSERT INTO audit_events (id, at, kind, actor, node, details)
         VALUES (?1, ?2, 'principal.trust_tier_changed', ?3, ?4, ?5)",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(now)
    .bind(by)
    .bind(node)
    .bind(details.to_string())
    .execute(&mut *tx)
    .await
    .map_err(db("auditing a trust tier change"))?;
    let record = principal(&row)?;
    tx.commit()
        .await
        .map_err(db("committing a trust tier change"))?;
    Ok(record)
}

fn policy(r: &SqliteRow) -> StoreResult<(PolicySource, Timestamp)> {
    let e = || db("reading a policy");
    Ok((
        PolicySource {
            name: r.try_get("name").map_err(e())?,
            version: r.try_get("version").map_err(e())?,
            author: r.try_get("author").map_err(e())?,
            rego: r.try_get("rego").map_err(e())?,
        },
        from_micros(r.try_get("created_at").map_err(e())?)?,
    ))
}

pub(super) async fn get_policy(
    pool: &SqlitePool,
    name: &str,
) -> StoreResult<Option<(PolicySource, Timestamp)>> {
    let row = sqlx::query(
        "SELECT name, version, rego, author, created_at FROM (
            SELECT * FROM policies WHERE name = ?1 ORDER BY version DESC LIMIT 1
         ) WHERE NOT deleted",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .map_err(db("loading a policy"))?;
    row.as_ref().map(policy).transpose()
}

pub(super) async fn list_policies(
    pool: &SqlitePool,
) -> StoreResult<Vec<(PolicySource, Timestamp)>> {
    let rows = sqlx::query(
        "SELECT p.name, p.version, p.rego, p.author, p.created_at FROM policies p
          WHERE p.version = (SELECT max(version) FROM policies q WHERE q.name = p.name) AND NOT p.deleted
          ORDER BY p.name",
    )
    .fetch_all(pool)
    .await
    .map_err(db("loading policies"))?;
    rows.iter().map(policy).collect()
}
