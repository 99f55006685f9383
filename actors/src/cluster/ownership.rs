//! Shard ownership (docs/engine.md "Fencing and ownership"): which shards this node should hold, given who is alive
//! and who holds what, and the node's own view of whether its leases still stand.
//!
//! Every live node computes the same fair share from the membership table: live nodes in
//! name order, `N / k` shards each and one more for the first `N mod k`. A node above its
//! share releases the excess (by drain) once others are short; a node below it takes lapsed
//! shards. A shard whose lease lapsed more than a TTL ago is taken by anyone, share or not,
//! so that no shard stays unowned while a node is alive but stuck below its share.
//!
//! Self-fencing: a node stops starting grant calls when its last successful renewal was
//! *sent* more than `TTL − margin` ago by its own monotonic clock — before the database
//! clock can hand the shard to another node (which needs the full TTL to pass after the
//! renewal was *committed*, which is later than it was sent).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::domain::Timestamp;
use crate::store::ShardRecord;

/// What this node should do about its shards this round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// This node's fair share.
    pub target: usize,
    /// Lapsed shards to try to take (the database decides), in order of preference.
    pub acquire: Vec<u32>,
    /// Shards to drain and hand over.
    pub release: Vec<u32>,
}

/// The world as this node sees it for one round.
pub struct View<'a> {
    pub me: &'a str,
    /// Names of the live nodes (heartbeat younger than the TTL), this node included.
    pub live: &'a BTreeSet<String>,
    /// The `shard_owners` rows with their lease expiry.
    pub table: &'a [ShardRecord],
    pub db_now: Timestamp,
    pub shards: u32,
    pub ttl: Duration,
    /// The shards this node runs.
    pub mine: &'a BTreeSet<u32>,
}

/// Each live node's fair share, by name.
pub fn shares(live: &BTreeSet<String>, shards: u32) -> BTreeMap<&str, usize> {
    let k = live.len().max(1);
    let (each, extra) = (shards as usize / k, shards as usize % k);
    live.iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), each + usize::from(i < extra)))
        .collect()
}

pub fn plan(v: &View<'_>) -> Plan {
    let shares = shares(v.live, v.shards);
    let target = shares.get(v.me).copied().unwrap_or(0);
    let ttl = chrono::Duration::from_std(v.ttl).unwrap_or(chrono::Duration::seconds(5));
    let leased = |r: &ShardRecord| r.lease_expires_at.is_some_and(|t| t > v.db_now);
    let rows: BTreeMap<u32, &ShardRecord> = v.table.iter().map(|r| (r.shard, r)).collect();
    // Shards no one holds a live lease on (this node's own excepted).
    let lapsed: Vec<u32> = (0..v.shards)
        .filter(|s| !v.mine.contains(s) && !rows.get(s).is_some_and(|r| leased(r)))
        .collect();
    // How many each other live node holds.
    let mut held: BTreeMap<&str, usize> = BTreeMap::new();
    for r in v.table.iter().filter(|r| leased(r)) {
        *held.entry(r.owner.as_str()).or_default() += 1;
    }
    let mine = v.mine.len();
    let mut p = Plan {
        target,
        ..Plan::default()
    };
    if mine > target {
        // Release only as many as the others are short of beyond what lies unowned: the
        // short nodes take lapsed shards first.
        let short: usize = shares
            .iter()
            .filter(|(n, _)| **n != v.me)
            .map(|(n, share)| share.saturating_sub(held.get(n).copied().unwrap_or(0)))
            .sum();
        let give = (mine - target).min(short.saturating_sub(lapsed.len()));
        p.release = v.mine.iter().rev().take(give).copied().collect();
    }
    let orphaned = |s: &u32| {
        rows.get(s)
            .is_some_and(|r| r.lease_expires_at.is_none_or(|t| t + ttl <= v.db_now))
    };
    // Start each node's search at its own slice, so that nodes starting together do not
    // all race for the same shards; shards this node held before (a restart) come first.
    let me_index = v.live.iter().position(|n| n == v.me).unwrap_or(0);
    let start = (me_index * v.shards as usize) / v.live.len().max(1);
    let mut order = lapsed;
    let first = order.iter().position(|s| *s as usize >= start).unwrap_or(0);
    order.rotate_left(first);
    order.sort_by_key(|s| rows.get(s).is_none_or(|r| r.owner != v.me));
    let want = target.saturating_sub(mine);
    p.acquire = order.iter().take(want).copied().collect();
    for s in order.iter().skip(want) {
        if orphaned(s) {
            p.acquire.push(*s);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn live(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn row(shard: u32, owner: &str, expires_in_ms: i64, now: Timestamp) -> ShardRecord {
        ShardRecord {
            shard,
            owner: owner.into(),
            incarnation: uuid::Uuid::nil(),
            epoch: 1,
            acquired_at: now,
            lease_expires_at: Some(now + chrono::Duration::milliseconds(expires_in_ms)),
        }
    }

    fn view<'a>(
        me: &'a str,
        live: &'a BTreeSet<String>,
        table: &'a [ShardRecord],
        mine: &'a BTreeSet<u32>,
        now: Timestamp,
    ) -> View<'a> {
        View {
            me,
            live,
            table,
            db_now: now,
            shards: 8,
            ttl: Duration::from_secs(5),
            mine,
        }
    }

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        for k in 1..=7 {
            let names: Vec<String> = (0..k).map(|i| format!("n{i}")).collect();
            let live: BTreeSet<String> = names.into_iter().collect();
            let s = shares(&live, 64);
            assert_eq!(s.values().sum::<usize>(), 64);
            let (min, max) = (s.values().min().unwrap(), s.values().max().unwrap());
            assert!(max - min <= 1, "{s:?}");
        }
    }

    #[test]
    fn a_lone_node_takes_everything_unowned() {
        let now = Utc::now();
        let l = live(&["a"]);
        let mine = BTreeSet::new();
        let p = plan(&view("a", &l, &[], &mine, now));
        assert_eq!(p.target, 8);
        assert_eq!(p.acquire, (0..8).collect::<Vec<_>>());
        assert!(p.release.is_empty());
    }

    #[test]
    fn a_joining_node_is_handed_half_and_takes_it() {
        let now = Utc::now();
        let l = live(&["a", "b"]);
        let table: Vec<_> = (0..8).map(|s| row(s, "a", 4000, now)).collect();
        let a_mine: BTreeSet<u32> = (0..8).collect();
        let p = plan(&view("a", &l, &table, &a_mine, now));
        assert_eq!(p.target, 4);
        assert_eq!(p.release, vec![7, 6, 5, 4]);
        // b waits: nothing has lapsed yet.
        let none = BTreeSet::new();
        let p = plan(&view("b", &l, &table, &none, now));
        assert_eq!(p.target, 4);
        assert!(p.acquire.is_empty());
        // Released: b takes them (a's table rows lapsed at the release).
        let mut table = table;
        for r in table.iter_mut().skip(4) {
            r.lease_expires_at = Some(now - chrono::Duration::milliseconds(1));
        }
        let p = plan(&view("b", &l, &table, &none, now));
        assert_eq!(p.acquire, vec![4, 5, 6, 7]);
        // a, now at its share, releases no more.
        let a_mine: BTreeSet<u32> = (0..4).collect();
        let p = plan(&view("a", &l, &table, &a_mine, now));
        assert!(p.release.is_empty() && p.acquire.is_empty(), "{p:?}");
    }

    #[test]
    fn a_node_above_share_hands_over_only_what_lapsed_shards_do_not_cover() {
        let now = Utc::now();
        let l = live(&["a", "b"]);
        // a holds 5, b holds 1, two lie unowned: b takes those two first, so a gives one.
        let mut table: Vec<_> = (0..5).map(|s| row(s, "a", 4000, now)).collect();
        table.push(row(5, "b", 4000, now));
        let a_mine: BTreeSet<u32> = (0..5).collect();
        let p = plan(&view("a", &l, &table, &a_mine, now));
        assert_eq!(p.release, vec![4]);
        assert!(p.acquire.is_empty());
        let b_mine: BTreeSet<u32> = [5].into();
        let p = plan(&view("b", &l, &table, &b_mine, now));
        assert_eq!(p.acquire, vec![6, 7]);
    }

    #[test]
    fn a_dead_nodes_shards_go_to_the_survivors_and_orphans_to_anyone() {
        let now = Utc::now();
        // c died: its heartbeat aged out, its leases lapsed 6 s ago (more than a TTL).
        let l = live(&["a", "b"]);
        let mut table: Vec<_> = (0..3).map(|s| row(s, "a", 4000, now)).collect();
        table.extend((3..6).map(|s| row(s, "b", 4000, now)));
        table.extend((6..8).map(|s| row(s, "c", -6000, now)));
        let a_mine: BTreeSet<u32> = (0..3).collect();
        let p = plan(&view("a", &l, &table, &a_mine, now));
        assert_eq!(p.target, 4);
        // a takes one by its share, and the other as an orphan.
        assert_eq!(p.acquire.len(), 2, "{p:?}");
        // Lapsed only just now: by share only.
        for r in table.iter_mut().skip(6) {
            r.lease_expires_at = Some(now - chrono::Duration::milliseconds(100));
        }
        let p = plan(&view("a", &l, &table, &a_mine, now));
        assert_eq!(p.acquire.len(), 1, "{p:?}");
    }

    #[test]
    fn a_restarted_node_prefers_its_old_shards() {
        let now = Utc::now();
        let l = live(&["a", "b"]);
        let mut table: Vec<_> = (0..8).map(|s| row(s, "b", -100, now)).collect();
        for r in table.iter_mut().filter(|r| r.shard % 2 == 0) {
            r.owner = "a".into();
        }
        let none = BTreeSet::new();
        let p = plan(&view("a", &l, &table, &none, now));
        assert_eq!(p.acquire, vec![0, 2, 4, 6]);
    }
}
