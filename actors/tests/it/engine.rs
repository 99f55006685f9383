//! The actor tree end to end against the http provider's reference server: real provider
//! calls over HTTP, a real store, real timers (short ones).

use std::sync::Arc;
use std::time::Duration;

use jitsudo_actors::config::Backoff;
use jitsudo_actors::domain::{Principal, Request, RequestId, Rules, State};
use jitsudo_actors::store::SharedStore;
use jitsudo_actors::{Engine, EngineConfig, EngineError};
use jitsudo_providers::http::server::{FailureKind, TestServer};
use jitsudo_providers::http::{HttpProvider, HttpProviderConfig, Op};
use jitsudo_providers::{Provider, Registry};

use crate::fixtures::*;

const SECRET: &[u8] = b"test-secret-for-the-fake-cloud";

const POLICY: &str = r#"
package jitsudo.eligibility

allow if "engineering" in input.requester.groups
"#;

const APPROVAL: &str = r#"
package jitsudo.approval

auto_approve if input.request.role == "viewer"
approvals_required := 1
approver_groups := {"approvers"}
max_duration_seconds := 86400
max_total_duration_seconds := 172800
"#;

pub struct Rig {
    pub engine: Engine,
    pub server: TestServer,
    pub store: SharedStore,
    pub config: EngineConfig,
    pub registry: Registry,
    pub _db: Db,
}

pub fn config(rules: Rules) -> EngineConfig {
    EngineConfig {
        node: "node-a".into(),
        shards: 4,
        rules,
        backoff: Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
        call_timeout: Duration::from_secs(10),
        ..EngineConfig::default()
    }
}

pub fn rules() -> Rules {
    Rules {
        grant_timeout: chrono::Duration::seconds(30),
        max_grant_attempts: 1000,
        stuck_after_failures: 2,
        ..Rules::default()
    }
}

pub async fn rig_on(db: Db, rules: Rules) -> Rig {
    rig_with(db, config(rules)).await
}

/// A rig whose engine runs with `config` (notification sinks, back-off, ...).
pub async fn rig_with(db: Db, config: EngineConfig) -> Rig {
    let server = TestServer::start(SECRET).await;
    let provider = HttpProvider::new(HttpProviderConfig::new("cloud", server.base_url(), SECRET))
        .expect("provider");
    let registry = Registry::new().with(Arc::new(provider) as Arc<dyn Provider>);
    let store = db.store.clone();
    let engine = Engine::start(config.clone(), store.clone(), registry.clone())
        .await
        .expect("engine starts");
    engine
        .policy()
        .apply("eligibility", POLICY, "carol")
        .await
        .expect("policy compiles");
    engine
        .policy()
        .apply("approval", APPROVAL, "carol")
        .await
        .expect("policy compiles");
    Rig {
        engine,
        server,
        store,
        config,
        registry,
        _db: db,
    }
}

pub fn bob() -> Principal {
    Principal::new("bob").with_groups(["approvers", "engineering"])
}

pub async fn wait_for(
    store: &SharedStore,
    id: RequestId,
    what: &str,
    pred: impl Fn(&Request) -> bool,
) -> Request {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let req = store
            .get(id)
            .await
            .expect("store readable")
            .expect("request exists");
        if pred(&req) {
            return req;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "request never became {what}; it is {} ({:?})",
                req.state, req.end_detail
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn wait_state(store: &SharedStore, id: RequestId, state: State) -> Request {
    wait_for(store, id, state.as_str(), |r| r.state == state).await
}

async fn audit_kinds(store: &SharedStore, id: RequestId) -> Vec<String> {
    store
        .request_audit(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

pub fn primary_grant(req: &Request) -> uuid::Uuid {
    req.grants[0].grant_id
}

async fn full_lifecycle(db: Db) {
    let rig = rig_on(db, rules()).await;
    let req = rig
        .engine
        .create(alice(), spec("cloud", 2))
        .await
        .expect("created");
    assert_eq!(req.state, State::Pending);
    let ended = wait_state(&rig.store, req.id, State::Expired).await;
    let gid = primary_grant(&ended);
    // Every state in order, one audit event each.
    let audit = rig.store.request_audit(req.id).await.unwrap();
    let path: Vec<String> = audit
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.details).unwrap()["to"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(path, ["PENDING", "APPROVED", "ACTIVE", "ENDING", "EXPIRED"]);
    let versions: Vec<i64> = audit.iter().filter_map(|e| e.request_version).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    // The clock started at the grant, and the provider saw one grant and one revoke.
    assert_eq!(
        ended.expires_at.unwrap() - ended.granted_at.unwrap(),
        chrono::Duration::seconds(2)
    );
    assert_eq!(rig.server.count(Op::Grant, gid), 1);
    assert_eq!(rig.server.count(Op::Revoke, gid), 1);
    assert!(!rig.server.is_active(gid));
    let revoked_at = rig
        .server
        .events()
        .into_iter()
        .find(|e| e.op == Op::Revoke && e.grant_id == Some(gid))
        .unwrap()
        .at;
    assert!(
        revoked_at >= ended.expires_at.unwrap(),
        "revoked before expiry: {revoked_at}"
    );
    // Passivated: a terminal request has no actor, and absorbs every event.
    assert!(rig.engine.request_actor(req.id).await.is_none());
    let late = rig
        .engine
        .revoke(req.id, alice(), "too late")
        .await
        .unwrap_err();
    assert!(
        late.to_string().contains("EXPIRED, which is final"),
        "{late}"
    );
    assert_eq!(rig.store.request_audit(req.id).await.unwrap().len(), 5);
    rig.engine.shutdown().await;
}

#[tokio::test]
async fn auto_approved_request_lives_its_whole_life_on_postgres() {
    full_lifecycle(postgres().await).await;
}

#[tokio::test]
async fn auto_approved_request_lives_its_whole_life_on_sqlite() {
    full_lifecycle(sqlite().await).await;
}

/// Requests asleep as data in their ShardActors, as the shards report it.
fn asleep(engine: &Engine) -> usize {
    engine
        .actors()
        .into_iter()
        .filter(|a| a.kind == "shard")
        .map(|a| {
            let n = a.state.rsplit('(').next().unwrap_or_default();
            n.split(' ')
                .next()
                .unwrap_or_default()
                .parse::<usize>()
                .unwrap_or(0)
        })
        .sum()
}

async fn wait_asleep(engine: &Engine, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while asleep(engine) != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} sleeping requests: {:?}",
            engine.actors()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An idle request sleeps as data (no actor), is listed with its state, wakes for a
/// command and for its expiry, and is revoked no earlier than it expires.
#[tokio::test]
async fn idle_requests_sleep_as_data_and_wake_for_commands_and_deadlines() {
    let rig = rig_on(postgres().await, rules()).await;
    let mut s = spec("cloud", 3);
    s.role = "operator".into();
    let req = rig.engine.create(alice(), s).await.unwrap();
    assert_eq!(req.state, State::Pending);
    // Waiting for a person: no actor, but still listed, with its state.
    wait_asleep(&rig.engine, 1).await;
    let listed = rig
        .engine
        .actors()
        .into_iter()
        .find(|a| a.kind == "request" && a.id == req.id.to_string())
        .expect("a sleeping request is still listed");
    assert_eq!(listed.state, "PENDING");
    assert_eq!(rig.engine.live_request_count(), 1);

    // A command wakes it; the grant runs; ACTIVE and idle, it sleeps until its expiry.
    let approved = rig.engine.approve(req.id, bob(), "ok").await.unwrap();
    assert_eq!(approved.state, State::Approved);
    let active = wait_state(&rig.store, req.id, State::Active).await;
    wait_asleep(&rig.engine, 1).await;

    // The shard's wheel wakes it for the expiry; the revoke comes after `expires_at`.
    let ended = wait_state(&rig.store, req.id, State::Expired).await;
    let gid = primary_grant(&ended);
    let revoked_at = rig
        .server
        .events()
        .into_iter()
        .find(|e| e.op == Op::Revoke && e.grant_id == Some(gid))
        .expect("revoked at the provider")
        .at;
    assert!(
        revoked_at >= active.expires_at.unwrap(),
        "revoked early: {revoked_at}"
    );
    assert_eq!(rig.server.count(Op::Grant, gid), 1);
    assert_eq!(rig.server.count(Op::Revoke, gid), 1);
    wait_asleep(&rig.engine, 0).await;
    // Final: its actor passivates (just after the commit the store shows) and leaves the list.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rig.engine.live_request_count() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "never passivated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        audit_kinds(&rig.store, req.id).await.len(),
        ended.version as usize,
        "one audit event per version"
    );
    rig.engine.shutdown().await;
}

/// The safety net: a request committed behind the shard's back (as a node that died right
/// after its commit would leave it) has no timer anywhere; the shard's sweep finds it in
/// the database once its deadline is late, and it is acted on.
#[tokio::test]
async fn the_sweep_acts_on_an_overdue_request_its_shard_never_knew() {
    let mut cfg = config(rules());
    cfg.sweep_every = Duration::from_millis(300);
    let rig = rig_with(postgres().await, cfg).await;
    let mut d = decision(false, 1);
    d.approval_timeout_seconds = 1;
    let tr = new_request(d);
    let ctx = rig.engine.context();
    let fence = rig
        .store
        .renew_shards(ctx.node(), ctx.incarnation, ctx.config.lease_ttl)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.fence)
        .find(|f| f.shard == tr.next.id.shard(ctx.config.shards))
        .expect("the engine holds every shard");
    let ob = outbox(&tr);
    rig.store
        .create(&fence, persist(&tr, &ob, 0))
        .await
        .unwrap();
    assert_eq!(
        rig.engine.live_request_count(),
        0,
        "its shard does not know it"
    );

    let ended = wait_state(&rig.store, tr.next.id, State::TimedOut).await;
    assert_eq!(ended.version, 2);
    let late = ended.ended_at.expect("ended") - ended.approval_deadline.expect("a deadline");
    assert!(
        late >= chrono::Duration::seconds(2),
        "acted on by the sweep (after its 2 s grace), not by a timer: {late}"
    );
    rig.engine.shutdown().await;
}

/// Membership: a running node heartbeats and owns its shards; a second process under the
/// same node name is refused; a clean stop leaves, so the next start need not wait.
#[tokio::test]
async fn nodes_heartbeat_and_one_name_is_one_process() {
    let rig = rig_on(postgres().await, rules()).await;
    let ctx = rig.engine.context().clone();
    let status = rig.engine.cluster_status().await.unwrap();
    let me = status
        .members
        .iter()
        .find(|m| m.member.node == "node-a")
        .expect("this node is a member");
    assert!(me.alive, "{me:?}");
    assert_eq!(me.member.incarnation, ctx.incarnation);
    assert!(me.heartbeat_age < chrono::Duration::seconds(3), "{me:?}");
    assert_eq!(me.shards_owned, ctx.config.shards as usize);
    assert_eq!(status.shards.len(), ctx.config.shards as usize);
    assert!(status.shards.iter().all(|s| s.owner == "node-a"));
    assert_eq!(status.epoch_changes(), 0, "a fresh database");
    // The audit sequencer takes its lease on its first tick, just after the start.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = rig.engine.cluster_status().await.unwrap();
        if let Some(audit) = status.audit_sequencer {
            assert_eq!(audit.owner, "node-a");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody took the audit lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Heartbeats keep coming.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = rig.engine.cluster_status().await.unwrap();
    let me = later
        .members
        .iter()
        .find(|m| m.member.node == "node-a")
        .unwrap();
    assert!(
        me.alive && me.heartbeat_age < chrono::Duration::seconds(3),
        "{me:?}"
    );

    // A second process configured with the same node name does not start.
    let err = Engine::start(rig.config.clone(), rig.store.clone(), rig.registry.clone())
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("another process is running as node `node-a`"),
        "{err}"
    );

    // A clean stop leaves at once: the next start does not wait, and bumps every epoch.
    rig.engine.shutdown().await;
    let started = std::time::Instant::now();
    let next = Engine::start(rig.config.clone(), rig.store.clone(), rig.registry.clone())
        .await
        .expect("restarts");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "waited for its own old heartbeat: {:?}",
        started.elapsed()
    );
    let status = next.cluster_status().await.unwrap();
    assert_eq!(status.epoch_changes(), i64::from(ctx.config.shards));
    next.shutdown().await;
}

#[tokio::test]
async fn killed_request_actor_is_rebuilt_from_the_store() {
    let rig = rig_on(postgres().await, rules()).await;
    let mut s = spec("cloud", 600);
    s.role = "operator".into();
    let req = rig.engine.create(alice(), s).await.unwrap();
    assert_eq!(req.state, State::Pending);
    let first = rig
        .engine
        .request_actor(req.id)
        .await
        .expect("a live request has an actor");
    first.kill();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let second = loop {
        if let Some(a) = rig.engine.request_actor(req.id).await
            && a.get_id() != first.get_id()
        {
            break a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request actor was not rebuilt"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(second.get_id(), first.get_id());
    let snap = rig
        .engine
        .actors()
        .into_iter()
        .find(|a| a.kind == "request" && a.id == req.id.to_string())
        .unwrap();
    assert_eq!(snap.restarts, 1);
    assert_eq!(snap.state, "PENDING");
    // The rebuilt actor carries on where the old one was.
    let approved = rig
        .engine
        .approve(req.id, bob(), "ok")
        .await
        .expect("approve after rebuild");
    assert_eq!(approved.state, State::Approved);
    wait_state(&rig.store, req.id, State::Active).await;
    rig.engine.shutdown().await;
}

#[tokio::test]
async fn expiry_that_passed_while_the_node_was_down_fires_at_once_on_restart() {
    let db = postgres().await;
    let rig = rig_on(db, rules()).await;
    let req = rig.engine.create(alice(), spec("cloud", 1)).await.unwrap();
    let active = wait_state(&rig.store, req.id, State::Active).await;
    let Rig {
        engine,
        server,
        store,
        config,
        registry,
        _db,
    } = rig;
    engine.shutdown().await;
    // Down across the expiry: nothing may have revoked it.
    let down_until = active.expires_at.unwrap() + chrono::Duration::milliseconds(500);
    while store.db_now().await.unwrap() < down_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gid = primary_grant(&active);
    assert_eq!(server.count(Op::Revoke, gid), 0);
    assert_eq!(
        store.get(req.id).await.unwrap().unwrap().state,
        State::Active
    );
    let restarted_at = store.db_now().await.unwrap();
    let engine = Engine::start(config, store.clone(), registry)
        .await
        .unwrap();
    let ended = wait_state(&store, req.id, State::Expired).await;
    assert_eq!(server.count(Op::Revoke, gid), 1);
    assert!(ended.ended_at.unwrap() >= restarted_at);
    engine.shutdown().await;
}

#[tokio::test]
async fn revoke_failing_three_times_then_succeeding_ends_revoked_after_four_calls_with_the_stuck_alert_raised_and_cleared()
 {
    let rig = rig_on(postgres().await, rules()).await;
    let req = rig
        .engine
        .create(alice(), spec("cloud", 600))
        .await
        .unwrap();
    let active = wait_state(&rig.store, req.id, State::Active).await;
    let gid = primary_grant(&active);
    rig.server
        .fail_next(Op::Revoke, 3, FailureKind::Status(503));
    let ending = rig
        .engine
        .revoke(req.id, alice(), "done early")
        .await
        .unwrap();
    assert_eq!(ending.state, State::Ending);
    let ended = wait_state(&rig.store, req.id, State::Revoked).await;
    assert!(!ended.stuck);
    assert_eq!(rig.server.count(Op::Revoke, gid), 4);
    assert!(!rig.server.is_active(gid));
    let kinds = audit_kinds(&rig.store, req.id).await;
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "alert.revocation_stuck")
            .count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| *k == "grant.revoke_failed").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(kinds.last().map(String::as_str), Some("request.ended"));
    let outbox: Vec<String> = rig
        .store
        .request_outbox(req.id)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.kind)
        .collect();
    assert!(
        outbox.contains(&"alert.revocation_stuck".to_string()),
        "{outbox:?}"
    );
    assert!(
        outbox.contains(&"alert.revocation_unstuck".to_string()),
        "{outbox:?}"
    );
    rig.engine.shutdown().await;
}

#[tokio::test]
async fn cancel_while_approved_with_a_grant_in_flight_ends_with_the_grant_revoked() {
    let rig = rig_on(postgres().await, rules()).await;
    // The fake cloud applies the grant but answers late: the grant is in flight.
    rig.server.fail_next(
        Op::Grant,
        1,
        FailureKind::Delay(Duration::from_millis(1500)),
    );
    let req = rig
        .engine
        .create(alice(), spec("cloud", 600))
        .await
        .unwrap();
    let approved = wait_state(&rig.store, req.id, State::Approved).await;
    let gid = primary_grant(&approved);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rig.server.count(Op::Grant, gid) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the grant call never reached the cloud"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ending = rig
        .engine
        .cancel(req.id, alice())
        .await
        .expect("cancel while granting");
    assert_eq!(ending.state, State::Ending);
    let ended = wait_state(&rig.store, req.id, State::Revoked).await;
    assert!(ended.granted_at.is_none(), "never became active");
    assert!(rig.server.count(Op::Revoke, gid) >= 1);
    // Let the late grant answer arrive; the grant must stay gone.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert!(!rig.server.is_active(gid), "the grant outlived the cancel");
    assert_eq!(
        rig.store.get(req.id).await.unwrap().unwrap().state,
        State::Revoked
    );
    rig.engine.shutdown().await;
}

#[tokio::test]
async fn grant_that_never_succeeds_before_its_deadline_ends_failed_only_after_the_cleanup_revoke() {
    let rules = Rules {
        grant_timeout: chrono::Duration::seconds(2),
        ..rules()
    };
    let rig = rig_on(postgres().await, rules).await;
    rig.server
        .set_fail_always(Op::Grant, FailureKind::Status(503));
    let req = rig
        .engine
        .create(alice(), spec("cloud", 600))
        .await
        .unwrap();
    let approved = wait_state(&rig.store, req.id, State::Approved).await;
    let gid = primary_grant(&approved);
    // ENDING lasts only as long as the cleanup revoke: check it from the audit trail.
    let failed = wait_state(&rig.store, req.id, State::Failed).await;
    assert_eq!(
        failed.end_detail.as_deref(),
        Some("the grant did not succeed before its deadline")
    );
    assert!(
        audit_kinds(&rig.store, req.id)
            .await
            .contains(&"request.ending".to_string())
    );
    assert!(rig.server.count(Op::Grant, gid) >= 2, "grants were retried");
    let revokes: Vec<_> = rig
        .server
        .events()
        .into_iter()
        .filter(|e| e.op == Op::Revoke && e.grant_id == Some(gid))
        .collect();
    assert!(!revokes.is_empty(), "the cleanup revoke was issued");
    assert!(revokes[0].at <= failed.ended_at.unwrap() + chrono::Duration::milliseconds(50));
    let audit = rig.store.request_audit(req.id).await.unwrap();
    let last: serde_json::Value = serde_json::from_str(&audit.last().unwrap().details).unwrap();
    assert_eq!(last["to"], "FAILED");
    assert_eq!(last["evidence"], "revoke");
    rig.engine.shutdown().await;
}

#[tokio::test]
async fn refused_operations_change_nothing() {
    let rig = rig_on(postgres().await, rules()).await;
    let mut s = spec("cloud", 600);
    s.role = "operator".into();
    let req = rig.engine.create(alice(), s).await.unwrap();
    let before = rig.store.get(req.id).await.unwrap().unwrap();
    let outbox_before = rig.store.request_outbox(req.id).await.unwrap().len();
    let self_approve = rig.engine.approve(req.id, alice(), "me").await.unwrap_err();
    assert!(
        matches!(self_approve, EngineError::Refused(_)),
        "{self_approve}"
    );
    let stranger = rig
        .engine
        .approve(
            req.id,
            Principal::new("mallory").with_groups(["engineering"]),
            "",
        )
        .await
        .unwrap_err();
    assert!(
        stranger
            .to_string()
            .contains("does not allow this approver"),
        "{stranger}"
    );
    let unknown = rig
        .engine
        .approve(RequestId::new(), bob(), "")
        .await
        .unwrap_err();
    assert!(matches!(unknown, EngineError::NotFound { .. }), "{unknown}");
    assert_eq!(rig.store.get(req.id).await.unwrap().unwrap(), before);
    assert_eq!(rig.store.request_audit(req.id).await.unwrap().len(), 1);
    assert_eq!(
        rig.store.request_outbox(req.id).await.unwrap().len(),
        outbox_before
    );
    // Bad input at create is refused with what was wrong, and nothing is stored.
    let mut bad = spec("cloud", 0);
    bad.role = "operator".into();
    let e = rig.engine.create(alice(), bad).await.unwrap_err();
    assert!(e.to_string().contains("duration"), "{e}");
    let e = rig
        .engine
        .create(alice(), spec("nope", 60))
        .await
        .unwrap_err();
    assert!(
        matches!(e, EngineError::UnknownProvider { .. }) && e.to_string().contains("cloud"),
        "{e}"
    );
    let mut invalid = spec("cloud", 60);
    invalid.role = "invalid-role".into();
    let e = rig.engine.create(alice(), invalid).await.unwrap_err();
    assert!(matches!(e, EngineError::Provider(_)), "{e}");
    let e = rig
        .engine
        .create(Principal::new("eve"), spec("cloud", 60))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("not eligible") || e.to_string().contains("eligib"),
        "{e}"
    );
    rig.engine.shutdown().await;
}
