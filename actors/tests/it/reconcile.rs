//! The grant reconciler and identity mapping through the whole actor tree, against the http
//! provider's reference server: what it lists is compared with the store every interval.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use jitsudo_actors::config::ReconcileConfig;
use jitsudo_actors::domain::{Principal, RequestId, State};
use jitsudo_actors::store::{AuditEvent, AuditQuery, SharedStore};
use jitsudo_actors::{Engine, EngineConfig, EngineError};
use jitsudo_providers::http::server::TestServer;
use jitsudo_providers::http::{HttpProvider, HttpProviderConfig};
use jitsudo_providers::identity::IdentityMapping;
use jitsudo_providers::registry::{DriftAction, Entry};
use jitsudo_providers::{GrantRecord, GrantSpec, Provider, Registry};
use uuid::Uuid;

use crate::engine::{config, primary_grant, rules, wait_for, wait_state};
use crate::fixtures::*;

const SECRET: &[u8] = b"test-secret-for-the-fake-cloud";

struct Rig {
    engine: Engine,
    server: TestServer,
    store: SharedStore,
    /// The cloud's own console: changes made behind jitsudod's back.
    console: HttpProvider,
    _db: Db,
}

async fn rig(db: Db, subject: &str, on_drift: DriftAction) -> Rig {
    let server = TestServer::start(SECRET).await;
    let provider = |name: &str| {
        HttpProvider::new(HttpProviderConfig::new(name, server.base_url(), SECRET))
            .expect("provider")
    };
    let entry = Entry {
        provider: Arc::new(provider("cloud")) as Arc<dyn Provider>,
        identity: Arc::new(IdentityMapping::new("cloud", subject).unwrap()),
        on_drift,
        call_timeout: None,
    };
    let cfg = EngineConfig {
        reconcile: Some(ReconcileConfig {
            interval: Duration::from_millis(300),
        }),
        ..config(rules())
    };
    let store = db.store.clone();
    let engine = Engine::start(cfg, store.clone(), Registry::new().with_entry(entry))
        .await
        .expect("engine starts");
    for (name, rego) in [
        (
            "eligibility",
            "package jitsudo.eligibility\n\nallow if \"engineering\" in input.requester.groups\n",
        ),
        (
            "approval",
            "package jitsudo.approval\n\nauto_approve if input.request.role == \"viewer\"\napprovals_required := 1\napprover_groups := {\"approvers\"}\nmax_duration_seconds := 86400\n",
        ),
    ] {
        engine.policy().apply(name, rego, "carol").await.unwrap();
    }
    Rig {
        engine,
        console: provider("console"),
        server,
        store,
        _db: db,
    }
}

async fn events_of(store: &SharedStore, kind: &str) -> Vec<AuditEvent> {
    store
        .query_audit(&AuditQuery {
            kind: Some(kind.into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect()
}

async fn wait_event(store: &SharedStore, kind: &str, about: Uuid) -> AuditEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(e) = events_of(store, kind)
            .await
            .into_iter()
            .find(|e| e.details.contains(&about.to_string()))
        {
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {kind} event about {about}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stray(subject: &str) -> GrantSpec {
    GrantSpec {
        grant_id: Uuid::now_v7(),
        request_id: Uuid::now_v7(),
        subject: subject.into(),
        role: "viewer".into(),
        scope: "demo-account".into(),
        not_after: Utc::now() + chrono::Duration::hours(1),
        metadata: Default::default(),
    }
}

async fn orphans_are_reaped_and_drift_is_reported_once(db: Db) {
    let rig = rig(db, "{sub}", DriftAction::Report).await;
    let req = rig
        .engine
        .create(alice(), spec("cloud", 3600))
        .await
        .unwrap();
    let active = wait_state(&rig.store, req.id, State::Active).await;
    let gid = primary_grant(&active);

    // A grant nobody asked jitsudod for (a restored backup, a bug, a hand-made grant).
    let orphan = stray("mallory");
    rig.console.grant(&orphan).await.unwrap();
    let reaped = wait_event(&rig.store, "grant.orphan_reaped", orphan.grant_id).await;
    assert_eq!(reaped.actor, "jitsudo:reconciler");
    assert!(
        reaped.details.contains("unknown_to_store"),
        "{}",
        reaped.details
    );
    assert!(!rig.server.is_active(orphan.grant_id));
    assert!(rig.server.is_tombstoned(orphan.grant_id));
    // The live grant is left alone.
    assert!(rig.server.is_active(gid));

    // Deleted out of band: reported, the request stays as it is (on_drift = report).
    let record = GrantRecord::from_spec(&active.grant_spec(&active.grants[0]).unwrap());
    rig.console.revoke(&record).await.unwrap();
    let drift = wait_event(&rig.store, "grant.drift_detected", gid).await;
    assert_eq!(drift.request_id, Some(req.id.0));
    assert!(drift.details.contains("missing"), "{}", drift.details);
    let outbox = rig.store.request_outbox(req.id).await.unwrap();
    assert!(
        outbox.iter().any(|o| o.kind == "alert.grant_drift"),
        "drift is notified"
    );
    // Several more passes: still one report.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let reports = events_of(&rig.store, "grant.drift_detected").await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(
        rig.store.get(req.id).await.unwrap().unwrap().state,
        State::Active
    );
    let passes = rig.store.reconcile_passes().await.unwrap();
    let cloud = passes
        .iter()
        .find(|p| p.provider == "cloud")
        .expect("a pass is recorded");
    assert_eq!(cloud.error, None);
    let status = rig.engine.providers().await.unwrap();
    assert!(status[0].last_pass.is_some() && status[0].last_call.is_some());
    rig.engine.shutdown().await;
}

#[tokio::test]
async fn orphans_are_reaped_and_drift_is_reported_once_on_postgres() {
    orphans_are_reaped_and_drift_is_reported_once(postgres().await).await;
}

#[tokio::test]
async fn orphans_are_reaped_and_drift_is_reported_once_on_sqlite() {
    orphans_are_reaped_and_drift_is_reported_once(sqlite().await).await;
}

#[tokio::test]
async fn drift_ends_the_request_where_the_provider_says_so() {
    let rig = rig(postgres().await, "{sub}", DriftAction::End).await;
    let req = rig
        .engine
        .create(alice(), spec("cloud", 3600))
        .await
        .unwrap();
    let active = wait_state(&rig.store, req.id, State::Active).await;
    let record = GrantRecord::from_spec(&active.grant_spec(&active.grants[0]).unwrap());
    rig.console.revoke(&record).await.unwrap();
    let ended = wait_state(&rig.store, req.id, State::Revoked).await;
    let detail = ended.end_detail.unwrap_or_default();
    assert!(
        detail.contains("jitsudo:reconciler") && detail.contains("drift"),
        "{detail}"
    );
    rig.engine.shutdown().await;
}

#[tokio::test]
async fn the_mapped_principal_is_granted_and_an_unmappable_requester_is_refused() {
    let rig = rig(postgres().await, "user:{email}", DriftAction::Report).await;
    let req = rig
        .engine
        .create(alice(), spec("cloud", 3600))
        .await
        .unwrap();
    assert_eq!(req.principal.as_deref(), Some("user:alice@example.com"));
    let active = wait_state(&rig.store, req.id, State::Active).await;
    let granted = rig.server.active_grants();
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0].grant_id, primary_grant(&active));
    assert_eq!(granted[0].subject, "user:alice@example.com");
    let created = rig.store.request_audit(req.id).await.unwrap();
    assert!(created[0].details.contains("user:alice@example.com"));

    // An email the identity provider did not verify is never used.
    let mut unverified = Principal::new("erin").with_groups(["engineering"]);
    unverified.email = Some("erin@example.com".into());
    let e = rig
        .engine
        .create(unverified, spec("cloud", 3600))
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::Unmappable(_)), "{e}");
    let message = e.to_string();
    assert!(
        message.contains("not verified")
            && message.contains("\"cloud\"")
            && message.contains("erin"),
        "{message}"
    );
    let mine = rig.store.open_requests_of("erin", 10).await.unwrap();
    assert_eq!(mine, 0, "nothing was created");
    let _ = wait_for(&rig.store, RequestId(req.id.0), "still active", |r| {
        r.state == State::Active
    })
    .await;
    rig.engine.shutdown().await;
}

#[tokio::test]
async fn a_throttled_grant_waits_out_retry_after_with_the_answer_visible() {
    let rig = rig(postgres().await, "{sub}", DriftAction::Report).await;
    // 429 with Retry-After: 1 twice; the engine's own back-off here is 50–200 ms.
    rig.server.fail_next(
        jitsudo_providers::http::Op::Grant,
        2,
        jitsudo_providers::http::server::FailureKind::Status(429),
    );
    let req = rig
        .engine
        .create(alice(), spec("cloud", 3600))
        .await
        .unwrap();
    let waiting = wait_for(
        &rig.store,
        req.id,
        "APPROVED with the provider's answer",
        |r| r.state == State::Approved && r.grants.first().is_some_and(|g| g.last_error.is_some()),
    )
    .await;
    let said = waiting.grants[0].last_error.clone().unwrap();
    assert!(said.contains("throttled"), "{said}");
    let active = wait_state(&rig.store, req.id, State::Active).await;
    assert_eq!(active.grants[0].last_error, None, "cleared by the success");
    assert_eq!(active.grants[0].attempts, 2);
    let calls: Vec<_> = rig
        .server
        .events()
        .into_iter()
        .filter(|e| e.op == jitsudo_providers::http::Op::Grant)
        .map(|e| e.at)
        .collect();
    assert_eq!(calls.len(), 3, "two throttled, one granted");
    for w in calls.windows(2) {
        assert!(
            w[1] - w[0] >= chrono::Duration::milliseconds(950),
            "a retry came before Retry-After: {calls:?}"
        );
    }
    rig.engine.shutdown().await;
}
