//! What the grant reconciler reads and writes, on both backends.

use std::time::Duration;

use chrono::Utc;
use jitsudo_actors::domain::{self, Event, Rules, State};
use jitsudo_actors::store::{Fence, Finding, RECONCILE_LEASE, ReconcilePass, Write};
use serde_json::json;

use super::{bob, created};
use crate::fixtures::*;

/// Steps a stored request with `ev` and commits it.
async fn stepped(db: &Db, req: &domain::Request, fence: &Fence, ev: Event) -> domain::Request {
    let tr = domain::step(req, ev, Utc::now(), &Rules::default()).expect("event applies");
    let ob = outbox(&tr);
    let w = db
        .store
        .transition(fence, persist(&tr, &ob, req.version))
        .await
        .unwrap();
    assert!(matches!(w, Write::Updated { .. }), "{w:?}");
    db.store.get(req.id).await.unwrap().unwrap()
}

pub async fn the_reconciler_finds_requests_by_grant_and_active_ones_by_provider(db: Db) {
    let (req, fence) = created(&db).await;
    let approved = stepped(
        &db,
        &req,
        &fence,
        Event::Approve {
            by: bob(),
            comment: String::new(),
        },
    )
    .await;
    assert_eq!(approved.state, State::Approved);
    let grant_id = approved.grants[0].grant_id;
    let owners = db.store.requests_by_grant(&[grant_id]).await.unwrap();
    assert_eq!(owners.iter().map(|r| r.id).collect::<Vec<_>>(), [req.id]);
    assert!(
        db.store
            .requests_by_grant(&[uuid::Uuid::now_v7()])
            .await
            .unwrap()
            .is_empty()
    );
    // APPROVED is not yet ACTIVE: nothing is expected at the provider.
    assert!(
        db.store
            .active_requests_of("demo", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let active = stepped(
        &db,
        &approved,
        &fence,
        Event::GrantSucceeded {
            grant_id,
            provider_ref: "demo:x".into(),
        },
    )
    .await;
    assert_eq!(active.state, State::Active);
    let found = db.store.active_requests_of("demo", None, 10).await.unwrap();
    assert_eq!(found.iter().map(|r| r.id).collect::<Vec<_>>(), [req.id]);
    assert!(
        db.store
            .active_requests_of("demo", Some(req.id), 10)
            .await
            .unwrap()
            .is_empty(),
        "paging goes past the last id"
    );
    assert!(
        db.store
            .active_requests_of("other", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn reconciler_findings_are_fenced_by_its_lease(db: Db) {
    let (req, _) = created(&db).await;
    let lease = db
        .store
        .acquire_shards(
            &db.node,
            db.incarnation,
            &[RECONCILE_LEASE],
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        .pop()
        .expect("the reconcile lease is free");
    let details = json!({"provider": "demo", "cause": "unknown_to_store"});
    let rows = vec![jitsudo_actors::store::OutboxRow {
        sink: "log".into(),
        kind: "alert.grant_drift".into(),
        payload: details.to_string(),
    }];
    let finding = Finding {
        kind: "grant.drift_detected",
        actor: "jitsudo:reconciler",
        request_id: Some(req.id.0),
        details: &details,
        outbox: &rows,
        node: &db.node,
    };
    let stale = Fence {
        epoch: lease.fence.epoch + 1,
        ..lease.fence.clone()
    };
    assert_eq!(
        db.store.record_finding(&stale, &finding).await.unwrap(),
        Write::Stale
    );
    let w = db
        .store
        .record_finding(&lease.fence, &finding)
        .await
        .unwrap();
    assert!(matches!(w, Write::Updated { .. }), "{w:?}");
    let audit = db.store.request_audit(req.id).await.unwrap();
    let drift: Vec<_> = audit
        .iter()
        .filter(|e| e.kind == "grant.drift_detected")
        .collect();
    assert_eq!(drift.len(), 1, "one event, none from the stale fence");
    assert_eq!(drift[0].request_version, None);
    assert_eq!(drift[0].actor, "jitsudo:reconciler");
    let outbox = db.store.request_outbox(req.id).await.unwrap();
    let alerts: Vec<_> = outbox
        .iter()
        .filter(|o| o.kind == "alert.grant_drift")
        .collect();
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        alerts[0].event_id, drift[0].id,
        "the notice carries its event id"
    );
}

pub async fn the_last_reconcile_pass_of_each_provider_is_kept(db: Db) {
    let pass = |orphans, error: Option<&str>| ReconcilePass {
        provider: "k8s".into(),
        node: db.node.clone(),
        at: Utc::now(),
        duration_ms: 12,
        listed: 3,
        orphans,
        drift: 0,
        tombstones: 1,
        error: error.map(str::to_owned),
    };
    db.store.put_reconcile_pass(&pass(1, None)).await.unwrap();
    db.store
        .put_reconcile_pass(&pass(2, Some("listing failed")))
        .await
        .unwrap();
    let passes = db.store.reconcile_passes().await.unwrap();
    assert_eq!(passes.len(), 1);
    assert_eq!(passes[0].orphans, 2);
    assert_eq!(passes[0].error.as_deref(), Some("listing failed"));
    assert!((Utc::now() - passes[0].at).num_seconds().abs() < 60);
}
