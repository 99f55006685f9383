//! PostgreSQL membership: node heartbeats and the shard table as the cluster status shows it.

use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::store::*;

pub(super) async fn heartbeat(
    pool: &PgPool,
    hb: &Heartbeat<'_>,
    ttl: Duration,
) -> StoreResult<bool> {
    // A restarted node (new incarnation) takes its row over once the old heartbeat is older
    // than the TTL; until then the row is another live process's and nothing is written.
    let row = sqlx::query(
        "INSERT INTO nodes AS n (node_id, incarnation, cluster_addr, api_addr, started_at, heartbeat_at, clock_offset_us)
         VALUES ($1, $2, $3, $4, statement_timestamp(), statement_timestamp(), $5)
         ON CONFLICT (node_id) DO UPDATE
            SET incarnation = EXCLUDED.incarnation, cluster_addr = EXCLUDED.cluster_addr,
                api_addr = EXCLUDED.api_addr, heartbeat_at = EXCLUDED.heartbeat_at,
                clock_offset_us = EXCLUDED.clock_offset_us,
                started_at = CASE WHEN n.incarnation = EXCLUDED.incarnation THEN n.started_at
                                  ELSE EXCLUDED.started_at END
          WHERE n.incarnation = EXCLUDED.incarnation
             OR n.heartbeat_at < statement_timestamp() - $6::bigint * interval '1 microsecond'
         RETURNING 1",
    )
    .bind(hb.node)
    .bind(hb.incarnation)
    .bind(hb.cluster_addr)
    .bind(hb.api_addr)
    .bind(hb.clock_offset_us)
    .bind(i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX))
    .fetch_optional(pool)
    .await
    .map_err(db("recording a heartbeat"))?;
    Ok(row.is_some())
}

pub(super) async fn leave(pool: &PgPool, node: &str, incarnation: uuid::Uuid) -> StoreResult<()> {
    sqlx::query(
        "UPDATE nodes SET heartbeat_at = statement_timestamp() - interval '1 day'
          WHERE node_id = $1 AND incarnation = $2",
    )
    .bind(node)
    .bind(incarnation)
    .execute(pool)
    .await
    .map_err(db("leaving the cluster"))?;
    Ok(())
}

fn member(r: &PgRow) -> StoreResult<Member> {
    let e = || db("reading a member");
    Ok(Member {
        node: r.try_get("node_id").map_err(e())?,
        incarnation: r.try_get("incarnation").map_err(e())?,
        cluster_addr: r.try_get("cluster_addr").map_err(e())?,
        api_addr: r.try_get("api_addr").map_err(e())?,
        started_at: r.try_get("started_at").map_err(e())?,
        heartbeat_at: r.try_get("heartbeat_at").map_err(e())?,
        clock_offset_us: r.try_get("clock_offset_us").map_err(e())?,
    })
}

pub(super) async fn members(pool: &PgPool) -> StoreResult<(Timestamp, Vec<Member>)> {
    let rows = sqlx::query(
        "SELECT node_id, incarnation, cluster_addr, api_addr, started_at, heartbeat_at, clock_offset_us,
                statement_timestamp() AS db_now
           FROM nodes ORDER BY node_id",
    )
    .fetch_all(pool)
    .await
    .map_err(db("reading the members"))?;
    let db_now = match rows.first() {
        Some(r) => r.try_get("db_now").map_err(db("reading the members"))?,
        None => sqlx::query_scalar("SELECT statement_timestamp()")
            .fetch_one(pool)
            .await
            .map_err(db("reading the database clock"))?,
    };
    Ok((db_now, rows.iter().map(member).collect::<StoreResult<_>>()?))
}

pub(super) async fn shard_table(pool: &PgPool) -> StoreResult<Vec<ShardRecord>> {
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
            let shard: i32 = r.try_get("shard").map_err(e())?;
            Ok(ShardRecord {
                shard: shard as u32,
                owner: r.try_get("owner").map_err(e())?,
                incarnation: r.try_get("incarnation").map_err(e())?,
                epoch: r.try_get("epoch").map_err(e())?,
                acquired_at: r.try_get("acquired_at").map_err(e())?,
                lease_expires_at: r.try_get("expires_at").map_err(e())?,
            })
        })
        .collect()
}
