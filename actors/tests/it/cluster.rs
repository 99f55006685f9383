//! Several engines on one PostgreSQL, in one process: fair shares, handover on join and on
//! a clean stop, takeover after a crash (docs/engine.md, "Fencing and ownership"). The chaos tests do the same with
//! real processes and cut networks.

use std::collections::BTreeSet;
use std::time::Duration;

use uuid::Uuid;

use jitsudo_actors::domain::State;
use jitsudo_actors::{Engine, EngineConfig};
use jitsudo_providers::http::Op;

use crate::engine::{Rig, bob, config, primary_grant, rig_with, rules, wait_state};
use crate::fixtures::*;

const TTL: Duration = Duration::from_secs(2);
/// Long enough that a handover by release and one by lapse cannot be mistaken.
const SLOW_TTL: Duration = Duration::from_secs(10);

fn cluster_config(node: &str) -> EngineConfig {
    with_ttl(node, TTL)
}

fn with_ttl(node: &str, lease_ttl: Duration) -> EngineConfig {
    EngineConfig {
        node: node.into(),
        shards: 8,
        lease_ttl,
        ..config(rules())
    }
}

async fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let started = tokio::time::Instant::now();
    while !ok() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

fn set(v: Vec<u32>) -> BTreeSet<u32> {
    v.into_iter().collect()
}

/// A joining node is handed its fair share; after the other crashes, the survivor takes
/// its shards over and expires its grant on time.
#[tokio::test]
async fn a_joining_node_gets_its_share_and_the_survivor_takes_over_after_a_crash() {
    let Rig {
        engine: a,
        server,
        store,
        registry,
        _db,
        ..
    } = rig_with(postgres().await, cluster_config("node-a")).await;
    assert_eq!(a.shards_owned().len(), 8, "a lone node holds every shard");

    // b's start returns once a has handed it its share. b does not poll the policy
    // revision (every hour only): it learns of a's change by a's ring.
    let b = Engine::start(
        EngineConfig {
            policy_poll: Duration::from_secs(3600),
            ..cluster_config("node-b")
        },
        store.clone(),
        registry.clone(),
    )
    .await
    .expect("b starts");
    assert_eq!(b.shards_owned().len(), 4);
    wait_until("a at its share", Duration::from_secs(5), || {
        a.shards_owned().len() == 4
    })
    .await;
    let (on_a, on_b) = (set(a.shards_owned()), set(b.shards_owned()));
    assert!(on_a.is_disjoint(&on_b), "{on_a:?} {on_b:?}");
    let status = b.cluster_status().await.unwrap();
    assert!(
        status
            .members
            .iter()
            .all(|m| m.alive && m.shards_owned == 4)
    );
    assert_eq!(status.epoch_changes(), 4, "four shards changed hands once");
    // A policy applied on one node rings every node's bell (here through the process-local
    // group; across processes over the mesh), and the other reloads at once. A malformed
    // ring is dropped first: the bells keep working.
    for cell in ractor::pg::get_members(&jitsudo_actors::policy_actor::POLICY_GROUP.to_owned()) {
        let bell: ractor::ActorRef<jitsudo_actors::policy_actor::Ring> = cell.into();
        bell.cast(jitsudo_actors::policy_actor::Ring(vec![0xff, 0x01, 0x02]))
            .expect("the bell takes a cast");
    }
    a.policy()
        .apply(
            "extra",
            "package jitsudo.lib.extra\n\nnote := \"applied on a\"\n",
            "carol",
        )
        .await
        .expect("compiles");
    let want = a.policy().current().fingerprint().to_owned();
    let seen = wait_until("b has a's policies", Duration::from_secs(5), || {
        b.policy().current().fingerprint() == want
    })
    .await;
    eprintln!("policy change reached the other node in {seen:?}");

    // Each node creates requests on shards it holds.
    let short = a.create(alice(), spec("cloud", 8)).await.unwrap();
    assert!(on_a.contains(&short.id.shard(8)));
    let long = b.create(alice(), spec("cloud", 600)).await.unwrap();
    assert!(on_b.contains(&long.id.shard(8)));
    // A command sent to the node that does not hold the request's shard is routed to the
    // owner (here through the process-local router group), refusals included.
    let mut s = spec("cloud", 600);
    s.role = "operator".into();
    let pending = b.create(alice(), s).await.unwrap();
    let approved = a
        .approve(pending.id, bob(), "routed")
        .await
        .expect("routed approve");
    assert_eq!(approved.state, State::Approved);
    let err = a
        .approve(pending.id, bob(), "again")
        .await
        .expect_err("a second approval is refused by the owner");
    assert!(
        matches!(
            &err,
            jitsudo_actors::EngineError::Remote { kind, .. }
                if *kind != jitsudo_actors::error::ErrorKind::Unavailable
        ),
        "{err:?}"
    );
    let active = wait_state(&store, short.id, State::Active).await;
    wait_state(&store, long.id, State::Active).await;

    // a crashes: no release, no leave. b takes its shards once the leases lapse.
    let crashed = tokio::time::Instant::now();
    a.crash().await;
    let took = wait_until("b holds every shard", Duration::from_secs(15), || {
        b.shards_owned().len() == 8
    })
    .await;
    assert!(
        crashed.elapsed() >= TTL / 2,
        "taken before a's lease could have lapsed"
    );
    eprintln!("takeover after the crash: {:?}", took);
    // b expires a's grant, on time (it had taken over before the expiry).
    let ended = wait_state(&store, short.id, State::Expired).await;
    let gid = primary_grant(&active);
    assert_eq!(server.count(Op::Grant, gid), 1);
    assert_eq!(server.count(Op::Revoke, gid), 1);
    let lag = ended.ended_at.unwrap() - active.expires_at.unwrap();
    assert!(
        lag < chrono::Duration::seconds(2),
        "expired {lag} after its end"
    );
    let status = b.cluster_status().await.unwrap();
    let b_row = status
        .members
        .iter()
        .find(|m| m.member.node == "node-b")
        .unwrap();
    assert_eq!(b_row.shards_owned, 8);
    assert!(
        status
            .members
            .iter()
            .any(|m| m.member.node == "node-a" && !m.alive)
    );
    // b's own request was untouched; the approval routed through a led to a grant.
    assert_eq!(
        store.get(long.id).await.unwrap().unwrap().state,
        State::Active
    );
    wait_state(&store, pending.id, State::Active).await;
    b.shutdown().await;
}

/// A clean stop hands every shard over at once (no lease TTL to wait for), and the live
/// requests on them carry on at the next owner.
#[tokio::test]
async fn a_clean_stop_hands_shards_over_without_waiting_for_the_ttl() {
    let Rig {
        engine: a,
        server: _cloud,
        store,
        registry,
        _db,
        ..
    } = rig_with(postgres().await, with_ttl("node-a", SLOW_TTL)).await;
    let b = Engine::start(
        with_ttl("node-b", SLOW_TTL),
        store.clone(),
        registry.clone(),
    )
    .await
    .expect("b starts");
    let mut on_a = Vec::new();
    for _ in 0..6 {
        on_a.push(a.create(alice(), spec("cloud", 600)).await.unwrap());
    }
    for r in &on_a {
        wait_state(&store, r.id, State::Active).await;
    }
    a.shutdown().await;
    let took = wait_until("b holds every shard", Duration::from_secs(10), || {
        b.shards_owned().len() == 8
    })
    .await;
    // Lapsing would take at least TTL − a round (8 s) after a's last renewal; b's rounds
    // come every 2 s.
    assert!(took < SLOW_TTL / 2, "waited for lapsed leases: {took:?}");
    // b serves a's requests now.
    let ending = b.revoke(on_a[0].id, alice(), "done").await.unwrap();
    assert_eq!(ending.state, State::Ending);
    wait_state(&store, on_a[0].id, State::Revoked).await;
    assert_eq!(b.live_request_count(), 5);
    b.shutdown().await;
}

/// Commit announcements: what one node commits, the others hear (PostgreSQL NOTIFY and
/// LISTEN), a node never hears itself, and SQLite (one process) runs no feed at all.
#[tokio::test]
async fn commits_on_one_node_are_heard_on_the_others_and_not_by_itself() {
    use jitsudo_actors::cluster::commits::{CommitFeed, RemoteCommit};
    use jitsudo_actors::domain::RequestId;
    let a = crate::fixtures::postgres().await;
    let b_store = jitsudo_actors::store::open(&a.url, jitsudo_actors::store::Mode::Dev)
        .await
        .expect("a second node's store");
    let (a_local, _) = tokio::sync::broadcast::channel(4096);
    let (a_remote, mut a_heard) = tokio::sync::broadcast::channel(4096);
    let (b_local, _) = tokio::sync::broadcast::channel::<(RequestId, i64)>(4096);
    let (b_remote, mut b_heard) = tokio::sync::broadcast::channel(4096);
    let _fa = CommitFeed::start(
        a.store.clone(),
        Uuid::now_v7(),
        a_local.subscribe(),
        a_remote,
    )
    .await
    .expect("a feed on PostgreSQL");
    let _fb = CommitFeed::start(b_store, Uuid::now_v7(), b_local.subscribe(), b_remote)
        .await
        .expect("a feed on PostgreSQL");
    let ids: Vec<RequestId> = (0..300).map(|_| RequestId::new()).collect();
    // More than one announcement's worth, sent at once.
    for (k, id) in ids.iter().enumerate() {
        a_local.send((*id, k as i64 + 1)).expect("the feed listens");
    }
    let mut heard = Vec::new();
    while heard.len() < ids.len() {
        let got = tokio::time::timeout(Duration::from_secs(30), b_heard.recv())
            .await
            .expect("node b hears node a's commits")
            .expect("no lag");
        match got {
            RemoteCommit::Committed(id, v) => heard.push((id, v)),
            RemoteCommit::Missed => {}
        }
    }
    let sent: Vec<(RequestId, i64)> = ids
        .iter()
        .enumerate()
        .map(|(k, id)| (*id, k as i64 + 1))
        .collect();
    assert_eq!(heard, sent, "in order, each once");
    // b's commit is heard by a; a heard none of its own.
    let mine = RequestId::new();
    b_local.send((mine, 7)).expect("the feed listens");
    let got = loop {
        match tokio::time::timeout(Duration::from_secs(30), a_heard.recv())
            .await
            .expect("node a hears node b")
            .expect("no lag")
        {
            RemoteCommit::Committed(id, v) => break (id, v),
            RemoteCommit::Missed => {}
        }
    };
    assert_eq!(
        got,
        (mine, 7),
        "node a heard b's commit first, none of its own"
    );

    let s = crate::fixtures::sqlite().await;
    let (l, _) = tokio::sync::broadcast::channel(4);
    let (r, _) = tokio::sync::broadcast::channel(4);
    assert!(
        CommitFeed::start(s.store.clone(), Uuid::now_v7(), l.subscribe(), r)
            .await
            .is_none(),
        "one process: no feed"
    );
}
