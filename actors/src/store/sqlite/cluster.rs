//! SQLite membership: node heartbeats and the shard table. SQLite is single-node, but the
//! same records let the status show that one node like a cluster's.

use std::time::Duration;

use chrono::Utc;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlitePool};

use super::{from_micros, micros, uuid_col};
use crate::store::*;

pub(super) async fn heartbeat(
    pool: &SqlitePool,
    hb: &Heartbeat<'_>,
    ttl: Duration,
) -> StoreResult<bool> {
    let now = micros(Utc::now());
    let stale_before = now.saturating_sub(i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX));
    let row: Option<i64> = sqlx::query_scalar(
        "INSERT INTO nodes AS n (node_id, incarnation, cluster_addr, api_addr, started_at, heartbeat_at, clock_offset_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)
         ON CONFLICT (node_id) DO UPDATE
            SET incarnation = excluded.incarnation, cluster_addr = excluded.cluster_addr,
                api_addr = excluded.api_addr, heartbeat_at = excluded.heartbeat_at,
                clock_offset_us = excluded.clock_offset_us,
                started_at = CASE WHEN n.incarnation = excluded.incarnation THEN n.started_at
                                  ELSE excluded.started_at END
          WHERE n.incarnation = excluded.incarnation OR n.heartbeat_at < ?7
         RETURNING 1",
    )
    .bind(hb.node)
    .bind(hb.incarnation.to_string())
    .bind(hb.cluster_addr)
    .bind(hb.api_addr)
    .bind(now)
    .bind(hb.clock_offset_us)
    .bind(stale_before)
    .fetch_optional(pool)
    .await
    .map_err(db("recording a heartbeat"))?;
    Ok(row.is_some())
}

pub(super) async fn leave(
    pool: &SqlitePool,
    node: &str,
    incarnation: uuid::Uuid,
) -> StoreResult<()> {
    let day_ago = micros(Utc::now()).saturating_sub(86_400_000_000);
    sqlx::query("UPDATE nodes SET heartbeat_at = ?3 WHERE node_id = ?1 AND incarnation = ?2")
        .bind(node)
        .bind(incarnation.to_string())
        .bind(day_ago)
        .execute(pool)
        .await
        .map_err(db("leaving the cluster"))?;
    Ok(())
}

fn member(r: &SqliteRow) -> StoreResult<Member> {
    let e = || db("reading a member");
    Ok(Member {
        node: r.try_get("node_id").map_err(e())?,
        incarnation: uuid_col(r, "incarnation")?,
        cluster_addr: r.try_get("cluster_addr").map_err(e())?,
        api_addr: r.try_get("api_addr").map_err(e())?,
        started_at: from_micros(r.try_get("started_at").map_err(e())?)?,
        heartbeat_at: from_micros(r.try_get("heartbeat_at").map_err(e())?)?,
        clock_offset_us: r.try_get("clock_offset_us").map_err(e())?,
    })
}

pub(super) async fn members(pool: &SqlitePool) -> StoreResult<(Timestamp, Vec<Member>)> {
    let rows = sqlx::query(
        "SELECT node_id, incarnation, cluster_addr, api_addr, started_at, heartbeat_at, clock_offset_us
           FROM nodes ORDER BY node_id",
    )
    .fetch_all(pool)
    .await
    .map_err(db("reading the members"))?;
    Ok((
        Utc::now(),
        rows.iter().map(member).collect::<StoreResult<_>>()?,
    ))
}

pub(super) async fn shard_table(pool: &SqlitePool) -> StoreResult<Vec<ShardRecord>> {
    let rows = sqlx::query(
        "SELECT o.shard, o.owner, o.incarnation, o.epoch, o.acquired_at,
                (SELECT r.expires_at FROM shard_renewals r WHERE r.shard = o.shard AND r.epoch = o.epoch) AS expires_at
           FROM shard_owners o ORDER BY o.shard",
    )
    .fetch_all(pool)
    .await
    .map_err(db("reading the shard table"))?;
    rows.iter()
        .map(|r| {
            let e = || db("reading the shard table");
            let shard: i64 = r.try_get("shard").map_err(e())?;
            let expires: Option<i64> = r.try_get("expires_at").map_err(e())?;
            Ok(ShardRecord {
                shard: shard as u32,
                owner: r.try_get("owner").map_err(e())?,
                incarnation: uuid_col(r, "incarnation")?,
                epoch: r.try_get("epoch").map_err(e())?,
                acquired_at: from_micros(r.try_get("acquired_at").map_err(e())?)?,
                lease_expires_at: expires.map(from_micros).transpose()?,
            })
        })
        .collect()
}
