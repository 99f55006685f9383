//! The engine operations the API serves besides the lifecycle: idempotent creates,
//! credentials, trust tiers and node status, against the http provider's reference server.

use std::collections::BTreeSet;

use jitsudo_actors::domain::{Principal, Refusal, RequestSpec, State};
use jitsudo_actors::store::{AuditQuery, ListFilter};
use jitsudo_actors::{Engine, EngineError};
use jitsudo_providers::http::server::FAKE_TOKEN_VAR;
use sqlx::Connection;

use crate::engine::{Rig, bob, rig_on, rules, wait_state};
use crate::fixtures::*;

/// A request the approval policy does not auto-approve: it stays PENDING.
fn pending_spec() -> RequestSpec {
    let mut s = spec("cloud", 600);
    s.role = "operator".into();
    s
}

async fn requests_of(engine: &Engine, requester: &str) -> Vec<jitsudo_actors::domain::Request> {
    engine
        .list(&ListFilter {
            requester: Some(requester.into()),
            ..ListFilter::default()
        })
        .await
        .unwrap()
}

async fn idempotent_create(db: Db) {
    let rig = rig_on(db, rules()).await;
    let e = &rig.engine;
    let (first, created) = e
        .create_idempotent(alice(), pending_spec(), Some("deploy-42"))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(first.state, State::Pending);
    let audit = rig.store.request_audit(first.id).await.unwrap();
    let details: serde_json::Value = serde_json::from_str(&audit[0].details).unwrap();
    assert_eq!(details["idempotency_key"], "deploy-42");

    // A retry returns the same request and records nothing.
    let (again, created) = e
        .create_idempotent(alice(), pending_spec(), Some("deploy-42"))
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(again, rig.store.get(first.id).await.unwrap().unwrap());
    assert_eq!(rig.store.request_audit(first.id).await.unwrap().len(), 1);
    assert_eq!(requests_of(e, "alice").await.len(), 1);

    // The same key for other content is refused, saying what to do.
    let mut other = pending_spec();
    other.duration_seconds = 900;
    let err = e
        .create_idempotent(alice(), other.clone(), Some("deploy-42"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EngineError::IdempotencyConflict { key } if key == "deploy-42"),
        "{err}"
    );
    assert!(err.to_string().contains("new key"), "{err}");
    assert_eq!(requests_of(e, "alice").await.len(), 1);

    // Keys are per requester; no key always creates; bad keys are invalid input.
    let (bobs, created) = e
        .create_idempotent(bob(), pending_spec(), Some("deploy-42"))
        .await
        .unwrap();
    assert!(created && bobs.id != first.id);
    let (_, created) = e.create_idempotent(alice(), other, None).await.unwrap();
    assert!(created);
    assert_eq!(requests_of(e, "alice").await.len(), 2);
    let err = e
        .create_idempotent(alice(), pending_spec(), Some("bad\u{7}key"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Refused(Refusal::Invalid {
                field: "idempotency_key",
                ..
            })
        ),
        "{err}"
    );

    // Concurrent creates with one key: one request, both callers get it.
    for round in 0..4 {
        let key = format!("race-{round}");
        let (a, b) = tokio::join!(
            e.create_idempotent(alice(), pending_spec(), Some(&key)),
            e.create_idempotent(alice(), pending_spec(), Some(&key)),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.0.id, b.0.id, "round {round}");
        assert_eq!(
            [a.1, b.1].iter().filter(|c| **c).count(),
            1,
            "exactly one call created it"
        );
    }
    assert_eq!(requests_of(e, "alice").await.len(), 6);
    rig.engine.shutdown().await;
}

#[tokio::test]
async fn idempotent_create_returns_the_first_request_and_refuses_other_content_on_postgres() {
    idempotent_create(postgres().await).await;
}

#[tokio::test]
async fn idempotent_create_returns_the_first_request_and_refuses_other_content_on_sqlite() {
    idempotent_create(sqlite().await).await;
}

/// Everything the database holds as text, to look for a secret in.
async fn stored_text(rig: &Rig) -> String {
    let url = &rig._db.url;
    if rig.store.backend() == "postgres" {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let mut all = String::new();
        for table in [
            "requests",
            "grants",
            "approvals",
            "extensions",
            "audit_events",
            "outbox",
        ] {
            let text: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM {table} t"
            )))
            .fetch_one(&mut conn)
            .await
            .unwrap();
            all.push_str(&text);
        }
        all
    } else {
        // The file and its write-ahead log hold every byte SQLite ever stored.
        let mut bytes = std::fs::read(url).unwrap();
        bytes.extend(std::fs::read(format!("{url}-wal")).unwrap_or_default());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

async fn credentials(db: Db) {
    let rig = rig_on(db, rules()).await;
    let e = &rig.engine;
    let pending = e.create(alice(), pending_spec()).await.unwrap();
    let err = e.credentials(pending.id, &alice()).await.unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Refused(Refusal::NotAccepted {
                state: State::Pending,
                ..
            })
        ),
        "{err}"
    );

    let req = e.create(alice(), spec("cloud", 600)).await.unwrap();
    let active = wait_state(&rig.store, req.id, State::Active).await;
    let err = e.credentials(req.id, &bob()).await.unwrap_err();
    assert!(
        matches!(err, EngineError::Refused(Refusal::NotRequester)),
        "{err}"
    );
    // The same person signed in under another subject is the requester.
    let alias = Principal::new("alice-cli").with_verified_email("ALICE@example.com");
    let creds = e.credentials(req.id, &alias).await.unwrap();
    let token = creds.env[FAKE_TOKEN_VAR].clone();
    assert!(token.starts_with("fake-"), "{token}");
    assert!(creds.expires_at > rig.store.db_now().await.unwrap());

    let issued: Vec<_> = rig
        .store
        .request_audit(req.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|ev| ev.kind == "credentials.issued")
        .collect();
    assert_eq!(issued.len(), 1);
    assert_eq!(
        (issued[0].actor.as_str(), issued[0].request_version),
        ("alice-cli", None)
    );
    let details: serde_json::Value = serde_json::from_str(&issued[0].details).unwrap();
    assert_eq!(details["grant_id"], active.grants[0].grant_id.to_string());
    assert_eq!(details["request_id"], req.id.to_string());
    assert!(details["expires_at"].is_string());
    // Refusals were not fetches: nothing was audited for them.
    let fetches = rig
        .store
        .query_audit(&AuditQuery {
            kind: Some("credentials.issued".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(fetches.len(), 1);

    let everything = stored_text(&rig).await;
    assert!(
        everything.contains(&active.grants[0].grant_id.to_string()),
        "the scan reads the stored rows"
    );
    let secret = token.rsplit('-').next().unwrap();
    assert!(!everything.contains(&token) && !everything.contains(secret));

    e.revoke(req.id, alice(), "done").await.unwrap();
    wait_state(&rig.store, req.id, State::Revoked).await;
    let err = e.credentials(req.id, &alice()).await.unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Refused(Refusal::NotAccepted {
                state: State::Revoked,
                ..
            })
        ),
        "{err}"
    );
    rig.engine.shutdown().await;
}

#[tokio::test]
async fn credentials_go_only_to_the_requester_of_an_active_request_and_are_never_stored_on_postgres()
 {
    credentials(postgres().await).await;
}

#[tokio::test]
async fn credentials_go_only_to_the_requester_of_an_active_request_and_are_never_stored_on_sqlite()
{
    credentials(sqlite().await).await;
}

#[tokio::test]
async fn nobody_changes_their_own_trust_tier() {
    let rig = rig_on(sqlite().await, rules()).await;
    let e = &rig.engine;
    let carol = Principal::new("carol").with_groups(["jitsudo-admins"]);
    let err = e
        .set_trust_tier(&carol, "carol", 5, "promote myself")
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::SelfBenefit { what: "trust tier" }),
        "{err}"
    );
    assert!(err.to_string().contains("another admin"), "{err}");
    assert!(rig.store.get_principal("carol").await.unwrap().is_none());
    let set = e
        .set_trust_tier(&carol, "alice", 2, "on call")
        .await
        .unwrap();
    assert_eq!((set.trust_tier, set.updated_by.as_str()), (2, "carol"));
    let events = rig
        .store
        .query_audit(&AuditQuery {
            kind: Some("principal.trust_tier_changed".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "the refusal changed nothing");
    let err = e.set_trust_tier(&carol, "", 1, "").await.unwrap_err();
    assert!(
        matches!(err, EngineError::Refused(Refusal::Invalid { .. })),
        "{err}"
    );
    rig.engine.shutdown().await;
}

#[tokio::test]
async fn node_status_reports_shards_live_requests_and_start_time() {
    let rig = rig_on(sqlite().await, rules()).await;
    let e = &rig.engine;
    assert_eq!(e.shards_owned(), (0..SHARDS).collect::<Vec<_>>());
    assert!(e.started_at() <= rig.store.db_now().await.unwrap());
    assert_eq!(e.live_request_count(), 0);
    let a = e.create(alice(), pending_spec()).await.unwrap();
    let b = e.create(alice(), pending_spec()).await.unwrap();
    assert_eq!(e.live_request_count(), 2);
    e.cancel(a.id, alice()).await.unwrap();
    wait_state(&rig.store, a.id, State::Cancelled).await;
    // The cancelled request's actor passivates.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while e.live_request_count() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "never passivated");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let live: BTreeSet<_> = e
        .actors()
        .into_iter()
        .filter(|s| s.kind == "request")
        .map(|s| s.id)
        .collect();
    assert_eq!(live, BTreeSet::from([b.id.to_string()]));
    rig.engine.shutdown().await;
}
