//! WatchRequest: every stored version in order until a terminal state, and resuming from a
//! version without missing or repeating any.

use jitsudo_proto::v1;
use reqwest::StatusCode;
use tonic::Code;

use crate::harness::*;

/// Reads a watch stream to its end.
async fn drain(stream: &mut tonic::Streaming<v1::RequestEvent>) -> Vec<v1::RequestEvent> {
    let mut out = Vec::new();
    while let Some(ev) = tokio::time::timeout(std::time::Duration::from_secs(30), stream.message())
        .await
        .expect("the watch ends within 30 s")
        .expect("the stream does not fail")
    {
        out.push(ev);
    }
    out
}

fn watch(id: &str, after_version: i64) -> v1::WatchRequestRequest {
    v1::WatchRequestRequest {
        id: id.into(),
        after_version,
    }
}

const LIFE: [St; 5] = [
    St::Pending,
    St::Approved,
    St::Active,
    St::Ending,
    St::Expired,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_an_auto_approved_request_to_its_end() {
    let j = Jitsudo::start().await;
    let mut alice = j.grpc("alice").requests;
    let r = j.create("alice", "cloud", "viewer", 2).await;
    let mut stream = ok(alice.watch_request(watch(&r.id, 0)).await);
    let events = drain(&mut stream).await;

    let versions: Vec<i64> = events.iter().map(|e| e.version).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5], "{events:?}");
    let states: Vec<i32> = events.iter().map(|e| e.state).collect();
    assert_eq!(states, LIFE.map(|s| s as i32), "{events:?}");
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds[0], "request.created");
    assert_eq!(kinds[1], "request.approved");
    assert_eq!(
        events[1].actor, "policy",
        "auto-approval is recorded as the policy's"
    );
    assert!(events.iter().all(|e| e.at.is_some()));
    // The request rides on the last event of a batch, and the last of all is the final one.
    let last = events
        .last()
        .and_then(|e| e.request.as_ref())
        .expect("the request");
    assert_eq!(last.state, St::Expired as i32);
    assert_eq!(last.version, 5);
    assert_eq!(*last, jitsudo_api::convert::request(&j.stored(&r.id).await));
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumed_from_a_version_misses_and_repeats_nothing() {
    let j = Jitsudo::start().await;
    let mut alice = j.grpc("alice").requests;
    // Three seconds: long enough to hang up and come back before the end.
    let r = j.create("alice", "cloud", "viewer", 3).await;

    // Read the first two versions, hang up, and come back while the request is still live.
    let mut stream = ok(alice.watch_request(watch(&r.id, 0)).await);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let ev = stream
            .message()
            .await
            .expect("the stream does not fail")
            .expect("the request is not over yet");
        seen.push(ev);
    }
    drop(stream);
    assert_eq!(seen.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2]);
    let live = j.stored(&r.id).await;
    assert!(
        !live.state.is_terminal(),
        "resumed before the end: {}",
        live.state
    );

    let mut resumed = ok(alice.watch_request(watch(&r.id, 2)).await);
    let rest = drain(&mut resumed).await;
    assert_eq!(
        rest.iter().map(|e| e.version).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    seen.extend(rest);
    let states: Vec<i32> = seen.iter().map(|e| e.state).collect();
    assert_eq!(states, LIFE.map(|s| s as i32));

    // After the end: resuming from the last version ends at once; from 2, the same three.
    let mut at_end = ok(alice.watch_request(watch(&r.id, 5)).await);
    assert!(drain(&mut at_end).await.is_empty());
    let mut again = ok(alice.watch_request(watch(&r.id, 2)).await);
    assert_eq!(
        drain(&mut again)
            .await
            .iter()
            .map(|e| e.version)
            .collect::<Vec<_>>(),
        [3, 4, 5]
    );
    // The REST poll agrees.
    let (status, body) = j
        .rest("alice")
        .get(&format!("/api/v1/requests/{}/events?afterVersion=2", r.id))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["terminal"], true);
    let polled: Vec<v1::RequestEvent> = from_json(&body["events"]);
    assert_eq!(
        polled.iter().map(|e| e.version).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_is_refused_with_a_code_before_any_event() {
    let j = Jitsudo::start().await;
    let r = j.create("alice", "demo", "operator", 600).await;
    let mut alice = j.grpc("alice").requests;
    refused(
        j.grpc("mallory")
            .requests
            .watch_request(watch(&r.id, 0))
            .await,
        Code::PermissionDenied,
    );
    refused(
        alice.watch_request(watch(&r.id, -1)).await,
        Code::InvalidArgument,
    );
    refused(
        alice.watch_request(watch("not-an-id", 0)).await,
        Code::InvalidArgument,
    );
    refused(
        alice.watch_request(watch("", 0)).await,
        Code::InvalidArgument,
    );
    refused(
        alice
            .watch_request(watch(
                &jitsudo_actors::domain::RequestId::new().to_string(),
                0,
            ))
            .await,
        Code::NotFound,
    );
    let rest = j.rest("mallory");
    let resp = rest.get(&format!("/api/v1/requests/{}/events", r.id)).await;
    rest_error(&resp, StatusCode::FORBIDDEN, "PERMISSION_DENIED");
    let resp = j
        .rest("alice")
        .get(&format!("/api/v1/requests/{}/events?afterVersion=-3", r.id))
        .await;
    rest_error(&resp, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT");
    let resp = j
        .rest("alice")
        .get(&format!(
            "/api/v1/requests/{}/events?afterVersion=two",
            r.id
        ))
        .await;
    rest_error(&resp, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT");
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_ends_unauthenticated_when_its_token_expires_and_resumes_with_a_fresh_one() {
    let j = Jitsudo::start_with(|c| c.auth.leeway_seconds = 0).await;
    let r = j.create("alice", "demo", "operator", 600).await;
    let short = j.token_lasting("alice", Some("alice@example.com"), &["engineering"], 8);
    let mut alice = j.grpc_with(Some(&format!("Bearer {short}"))).requests;
    let mut stream = ok(alice.watch_request(watch(&r.id, 0)).await);
    let first = stream
        .message()
        .await
        .expect("the first event")
        .expect("an event");
    assert_eq!(first.version, 1);
    let end = tokio::time::timeout(std::time::Duration::from_secs(30), stream.message())
        .await
        .expect("the stream ends with the token");
    let status = end.expect_err("it ends with an error, not quietly");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .contains("the access token expired during the watch"),
        "{}",
        status.message()
    );
    // The old token opens nothing; a fresh one resumes after the last version seen.
    refused(
        alice.watch_request(watch(&r.id, 1)).await,
        Code::Unauthenticated,
    );
    let mut fresh = j.grpc("alice").requests;
    let mut resumed = ok(fresh.watch_request(watch(&r.id, 1)).await);
    let mut bob = j.grpc("bob").requests;
    ok(bob
        .approve_request(v1::DecideRequest {
            id: r.id.clone(),
            comment: "ok".into(),
        })
        .await);
    let next = resumed
        .message()
        .await
        .expect("an event")
        .expect("an event");
    assert_eq!((next.version, next.kind.as_str()), (2, "request.approved"));
    j.stop().await.expect("clean stop");
}

/// Shutdown ends open watch streams at once with UNAVAILABLE (the client resumes on
/// another node) instead of letting them hold the drain for its whole grace period: with a
/// minute's grace and watchers open, the server is gone well within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_watches_with_unavailable_and_does_not_wait_for_them() {
    let j = Jitsudo::start_with(|c| c.server.shutdown_grace_seconds = 60).await;
    let r = j.create("alice", "demo", "operator", 600).await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut alice = j.grpc("alice").requests;
        let mut s = ok(alice.watch_request(watch(&r.id, 0)).await);
        let first = s.message().await.expect("an event").expect("an event");
        assert_eq!(first.version, 1);
        streams.push(s);
    }
    let stopping = tokio::spawn(async move { j.stop().await });
    for mut s in streams {
        let end = tokio::time::timeout(std::time::Duration::from_secs(20), s.message())
            .await
            .expect("the watch ends at shutdown, not after the grace");
        let status = end.expect_err("with a status the client can act on");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("this node is shutting down"),
            "{}",
            status.message()
        );
    }
    tokio::time::timeout(std::time::Duration::from_secs(30), stopping)
        .await
        .expect("the server stops without waiting out its 60 s grace")
        .expect("the stop task")
        .expect("clean stop");
}
