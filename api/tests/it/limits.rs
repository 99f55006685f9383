//! Rate limits as an attacker meets them: a principal hammering mutating calls, and an
//! address guessing tokens. Refusals are RESOURCE_EXHAUSTED (HTTP 429) with `retry-after`,
//! and nothing changes.

use jitsudo_proto::v1;
use reqwest::StatusCode;
use tonic::Code;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_hammering_mutations_is_slowed_down_with_a_retry_hint() {
    let j = Jitsudo::start_with(|c| c.limits.mutations_per_minute = 3).await;
    let mut alice = j.grpc("alice").requests;
    for _ in 0..3 {
        let r = ok(alice
            .create_request(new_request("demo", "viewer", 600))
            .await);
        j.wait_state(&r.id, St::Active).await;
    }
    let before = j.audit_without_denials().await;
    let status = alice
        .create_request(new_request("demo", "viewer", 600))
        .await
        .expect_err("the fourth change in a minute is refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("try again in"), "{status:?}");
    let retry: u64 = status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a retry-after hint");
    assert!((1..=20).contains(&retry), "{retry}");
    let (code, _) = j
        .rest("alice")
        .post(
            "/api/v1/requests",
            serde_json::json!({"provider": "demo", "role": "viewer", "scope": "s",
                               "durationSeconds": "600", "reason": "again"}),
        )
        .await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(j.audit_without_denials().await, before, "nothing changed");
    // Reads are not limited, and other people are not affected.
    ok(alice
        .list_requests(v1::ListRequestsRequest::default())
        .await);
    ok(j.grpc("dave")
        .requests
        .create_request(new_request("demo", "viewer", 600))
        .await);
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_guessing_tokens_is_refused_for_a_while() {
    let j = Jitsudo::start_with(|c| c.limits.auth_failures_per_minute = 3).await;
    for i in 0..3 {
        let mut guess = j
            .grpc_with(Some(&format!("Bearer not.a.token{i}")))
            .principals;
        refused(
            guess.who_am_i(v1::WhoAmIRequest {}).await,
            Code::Unauthenticated,
        );
    }
    // Now even a valid token from this address waits: the guesser pays, not the issuer.
    let status = j
        .grpc("alice")
        .principals
        .who_am_i(v1::WhoAmIRequest {})
        .await
        .expect_err("refused while the address is blocked");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.metadata().get("retry-after").is_some());
    let (code, _) = j.rest("alice").get("/api/v1/whoami").await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
    j.stop().await.expect("clean stop");
}
