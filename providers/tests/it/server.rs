//! The reference server as a fake cloud: its event log, fault injection, signature window
//! and concurrency, observed through the real http provider (or raw signed requests).

use std::time::Duration;

use chrono::Utc;
use jitsudo_providers::conformance::SpecTemplate;
use jitsudo_providers::http::server::{FailureKind, Outcome, TestServer};
use jitsudo_providers::http::{ErrorBody, Op, SIGNATURE_HEADER, signature_header};
use jitsudo_providers::{ErrorClass, GrantRecord, GrantSpec, GrantState, Provider, ProviderError};

use crate::support::{self, SECRET, http_pair};

fn spec() -> GrantSpec {
    SpecTemplate::default().spec(Duration::from_secs(3600))
}

/// Posts `body` to `op` with a signature made at `timestamp` (unix seconds).
async fn post_signed(server: &TestServer, op: Op, body: &[u8], timestamp: i64) -> (u16, Vec<u8>) {
    support::init();
    let response = reqwest::Client::new()
        .post(format!("{}/{op}", server.base_url()))
        .header(
            SIGNATURE_HEADER,
            signature_header(SECRET.as_bytes(), timestamp, body),
        )
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .expect("server answers");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("body").to_vec())
}

#[tokio::test]
async fn every_call_is_logged_in_order_with_its_outcome() {
    let (server, provider) = http_pair().await;
    let spec = spec();
    let other = GrantRecord::from_spec(&self::spec());

    provider.validate(&spec).await.expect("validate");
    let record = provider.grant(&spec).await.expect("grant");
    provider.grant(&spec).await.expect("repeat grant");
    provider.inspect(&record).await.expect("inspect");
    provider.credentials(&record).await.expect("credentials");
    provider.revoke(&record).await.expect("revoke");
    provider.revoke(&record).await.expect("repeat revoke");
    provider.revoke(&other).await.expect("revoke unknown");
    provider.inspect(&record).await.expect("inspect");
    provider
        .credentials(&record)
        .await
        .expect_err("credentials after revoke");
    provider.grant(&spec).await.expect_err("late grant");

    let events = server.events();
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.op, e.grant_id, e.outcome, e.status))
        .collect();
    let (id, unknown) = (Some(spec.grant_id), Some(other.grant_id));
    assert_eq!(
        seen,
        [
            (Op::Validate, id, Outcome::Valid, 200),
            (Op::Grant, id, Outcome::Granted, 200),
            (Op::Grant, id, Outcome::AlreadyGranted, 200),
            (Op::Inspect, id, Outcome::Active, 200),
            (Op::Credentials, id, Outcome::CredentialsIssued, 200),
            (Op::Revoke, id, Outcome::Revoked, 200),
            (Op::Revoke, id, Outcome::RevokedNothing, 200),
            (Op::Revoke, unknown, Outcome::RevokedNothing, 200),
            (Op::Inspect, id, Outcome::Gone, 200),
            (Op::Credentials, id, Outcome::NotActive, 404),
            (Op::Grant, id, Outcome::Tombstoned, 409),
        ]
    );
    assert!(
        events.windows(2).all(|w| w[0].at <= w[1].at),
        "events are in time order"
    );
    assert!(events.iter().all(|e| e.fault.is_none()));
    assert_eq!(server.count(Op::Grant, spec.grant_id), 3);
    assert!(server.is_tombstoned(spec.grant_id) && server.is_tombstoned(other.grant_id));
    assert!(server.active_grants().is_empty());
}

#[tokio::test]
async fn fail_next_fails_exactly_n_calls_without_effect_then_recovers() {
    let (server, provider) = http_pair().await;
    let spec = spec();
    server.fail_next(Op::Grant, 2, FailureKind::Status(503));

    for _ in 0..2 {
        let err = provider.grant(&spec).await.expect_err("injected");
        assert_eq!(err.class(), ErrorClass::Retryable, "{err}");
        assert!(
            !server.is_active(spec.grant_id),
            "an injected status must not take effect"
        );
    }
    provider.grant(&spec).await.expect("third call passes");

    let events = server.events();
    let outcomes: Vec<_> = events.iter().map(|e| e.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::Injected, Outcome::Injected, Outcome::Granted]
    );
    assert_eq!(events[0].fault, Some(FailureKind::Status(503)));
    assert_eq!(events[0].status, 503);
    assert_eq!(events[2].fault, None);
}

#[tokio::test]
async fn queued_faults_are_used_in_order() {
    let (server, provider) = http_pair().await;
    let spec = spec();
    server.fail_next(Op::Grant, 1, FailureKind::Status(503));
    server.fail_next(Op::Grant, 1, FailureKind::Status(429));

    let first = provider.grant(&spec).await.expect_err("503");
    let second = provider.grant(&spec).await.expect_err("429");
    assert!(
        matches!(first, ProviderError::Unavailable { .. }),
        "{first}"
    );
    assert!(
        matches!(second, ProviderError::Throttled { .. }),
        "{second}"
    );
    provider.grant(&spec).await.expect("queue is empty");
}

#[tokio::test]
async fn fail_always_holds_until_cleared_and_touches_only_its_operation() {
    let (server, provider) = http_pair().await;
    let record = provider.grant(&spec()).await.expect("grant");
    server.set_fail_always(Op::Inspect, FailureKind::Status(503));

    for _ in 0..3 {
        provider.inspect(&record).await.expect_err("always failing");
    }
    provider
        .credentials(&record)
        .await
        .expect("other operations still work");
    server.clear_failures();
    assert_eq!(
        provider.inspect(&record).await.expect("cleared"),
        GrantState::Active
    );
    assert_eq!(server.count_outcome(Op::Inspect, Outcome::Injected), 3);
}

#[tokio::test]
async fn fail_next_takes_precedence_over_fail_always() {
    let (server, provider) = http_pair().await;
    server.set_fail_always(Op::Grant, FailureKind::Status(503));
    server.fail_next(Op::Grant, 1, FailureKind::Status(403));

    let first = provider.grant(&spec()).await.expect_err("403 first");
    let second = provider.grant(&spec()).await.expect_err("then 503");
    assert!(matches!(first, ProviderError::Forbidden { .. }), "{first}");
    assert!(
        matches!(second, ProviderError::Unavailable { .. }),
        "{second}"
    );
}

#[tokio::test]
async fn correctly_signed_raw_request_is_accepted() {
    let server = TestServer::start(SECRET).await;
    let body = serde_json::to_vec(&spec()).expect("json");
    let (status, _) = post_signed(&server, Op::Grant, &body, Utc::now().timestamp()).await;
    assert_eq!(status, 200);
    assert_eq!(server.active_grants().len(), 1);
}

#[tokio::test]
async fn signatures_outside_five_minutes_are_refused_with_401() {
    let server = TestServer::start(SECRET).await;
    let body = serde_json::to_vec(&spec()).expect("json");
    // Well past the 300 s window: the server reads its clock a moment after we
    // read ours, so a skew of exactly 301 s could land inside it.
    for skew in [-330, 330] {
        let (status, answer) =
            post_signed(&server, Op::Grant, &body, Utc::now().timestamp() + skew).await;
        assert_eq!(status, 401, "skew {skew}");
        let answer: ErrorBody = serde_json::from_slice(&answer).expect("error body");
        assert_eq!(answer.error, "bad_signature");
    }
    assert!(server.active_grants().is_empty());
    assert_eq!(server.count_outcome(Op::Grant, Outcome::BadSignature), 2);
}

#[tokio::test]
async fn unsigned_request_is_refused_with_401() {
    support::init();
    let server = TestServer::start(SECRET).await;
    let response = reqwest::Client::new()
        .post(format!("{}/grant", server.base_url()))
        .body(serde_json::to_vec(&spec()).expect("json"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 401);
    assert!(server.active_grants().is_empty());
}

#[tokio::test]
async fn malformed_body_is_a_bad_request() {
    let server = TestServer::start(SECRET).await;
    let (status, answer) = post_signed(
        &server,
        Op::Revoke,
        b"{\"grant_id\":42}",
        Utc::now().timestamp(),
    )
    .await;
    assert_eq!(status, 400);
    let answer: ErrorBody = serde_json::from_slice(&answer).expect("error body");
    assert_eq!(answer.error, "bad_request");
    assert_eq!(server.count_outcome(Op::Revoke, Outcome::BadRequest), 1);
}

#[tokio::test]
async fn grant_past_not_after_leaves_the_active_grants_and_revoke_finds_nothing() {
    let (server, provider) = http_pair().await;
    let spec = SpecTemplate::default().spec(Duration::from_millis(1500));
    let record = provider.grant(&spec).await.expect("grant");

    let wait =
        (spec.not_after - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(100);
    tokio::time::sleep(wait).await;
    assert!(server.active_grants().is_empty());
    provider
        .revoke(&record)
        .await
        .expect("revoke after native expiry");
    assert_eq!(server.count_outcome(Op::Revoke, Outcome::RevokedNothing), 1);
}

#[tokio::test]
async fn grant_with_not_after_in_the_past_is_invalid() {
    let (server, provider) = http_pair().await;
    let spec = GrantSpec {
        not_after: Utc::now() - chrono::TimeDelta::seconds(1),
        ..spec()
    };
    let err = provider.grant(&spec).await.expect_err("already expired");
    assert!(
        matches!(
            err,
            ProviderError::Invalid {
                field: "not_after",
                ..
            }
        ),
        "{err}"
    );
    assert!(server.active_grants().is_empty());
}

#[tokio::test]
async fn concurrent_calls_are_each_decided_once_and_logged() {
    let (server, provider) = http_pair().await;
    let provider = std::sync::Arc::new(provider);
    let specs: Vec<GrantSpec> = (0..16).map(|_| spec()).collect();
    let mut calls = tokio::task::JoinSet::new();
    for spec in specs.iter().chain(&specs) {
        let (provider, spec) = (std::sync::Arc::clone(&provider), spec.clone());
        calls.spawn(async move { provider.grant(&spec).await });
    }
    while let Some(result) = calls.join_next().await {
        result.expect("task").expect("grant");
    }

    assert_eq!(server.active_grants().len(), specs.len());
    assert_eq!(
        server.count_outcome(Op::Grant, Outcome::Granted),
        specs.len()
    );
    assert_eq!(
        server.count_outcome(Op::Grant, Outcome::AlreadyGranted),
        specs.len()
    );
    for spec in &specs {
        assert_eq!(server.count(Op::Grant, spec.grant_id), 2);
    }
}

#[tokio::test]
async fn shutdown_stops_the_server_and_calls_become_unavailable() {
    let (server, provider) = http_pair().await;
    server.shutdown().await;
    server.shutdown().await;

    let err = provider.grant(&spec()).await.expect_err("server is down");
    assert_eq!(err.class(), ErrorClass::Retryable, "{err}");
    assert!(server.events().is_empty());
}

/// A late call (its caller frozen between deciding and calling) is decided only when it
/// arrives: a revoke of the same grant that came first leaves a tombstone, and the late
/// grant does nothing.
#[tokio::test]
async fn a_late_grant_after_the_revoke_is_tombstoned() {
    let (server, provider) = http_pair().await;
    let provider = std::sync::Arc::new(provider);
    let spec = spec();
    let record = GrantRecord::from_spec(&spec);
    server.fail_next(Op::Grant, 1, FailureKind::Late(Duration::from_millis(400)));
    let late = {
        let (p, s) = (provider.clone(), spec.clone());
        tokio::spawn(async move { p.grant(&s).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    provider
        .revoke(&record)
        .await
        .expect("revoke before the late grant");
    let err = late.await.unwrap().expect_err("the late grant is refused");
    assert!(matches!(err, ProviderError::Tombstoned { .. }), "{err:?}");
    assert!(!server.is_active(spec.grant_id));
    let outcomes: Vec<_> = server.events().iter().map(|e| (e.op, e.outcome)).collect();
    assert_eq!(
        outcomes,
        [
            (Op::Revoke, Outcome::RevokedNothing),
            (Op::Grant, Outcome::Tombstoned)
        ]
    );
}
