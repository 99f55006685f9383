//! RequestService end to end through the generated gRPC client and through REST: the whole
//! life of requests against the fake cloud, idempotent creates and decisions, credentials.

use std::time::Duration;

use jitsudo_proto::v1;
use jitsudo_providers::http::Op;
use jitsudo_providers::http::server::FAKE_TOKEN_VAR;
use reqwest::StatusCode;
use serde_json::json;
use tonic::Code;

use crate::harness::*;

fn grant_id(r: &v1::Request, n: usize) -> uuid::Uuid {
    r.grants[n].grant_id.parse().expect("a grant id")
}

/// Polls until the request satisfies `pred` (30 s at most).
async fn wait_for(
    j: &Jitsudo,
    id: &str,
    what: &str,
    pred: impl Fn(&v1::Request) -> bool,
) -> v1::Request {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = jitsudo_api::convert::request(&j.stored(id).await);
        if pred(&r) {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "request {id} never became {what}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_lives_its_whole_life_through_the_grpc_client() {
    let j = Jitsudo::start().await;
    let mut alice = j.grpc("alice").requests;
    let mut bob = j.grpc("bob").requests;
    let mut dave = j.grpc("dave").requests;

    let mut create = new_request("cloud", "operator", 600);
    create.ticket = "OPS-7".into();
    create.metadata.insert("change".into(), "CHG-42".into());
    let created = ok(alice.create_request(create).await);
    assert_eq!(created.state, St::Pending as i32);
    assert_eq!(created.requester, "alice");
    assert_eq!(
        (
            created.provider.as_str(),
            created.role.as_str(),
            created.scope.as_str()
        ),
        ("cloud", "operator", "staging")
    );
    assert_eq!(created.duration_seconds, 600);
    assert_eq!(created.ticket, "OPS-7");
    assert_eq!(
        created.metadata.get("change").map(String::as_str),
        Some("CHG-42")
    );
    assert_eq!(created.approvals_required, 1);
    assert_eq!(created.approver_groups, ["approvers"]);
    assert!(created.policy_version.starts_with("sha256:"), "{created:?}");
    assert!(created.approval_deadline.is_some());
    assert!(!created.auto_approved);

    let got = ok(alice
        .get_request(v1::GetRequestRequest {
            id: created.id.clone(),
        })
        .await);
    assert_eq!(got, created);
    let mine = ok(alice
        .list_requests(v1::ListRequestsRequest {
            mine: true,
            ..Default::default()
        })
        .await);
    assert_eq!(mine.requests, std::slice::from_ref(&created));
    let awaiting_bob = ok(bob
        .list_requests(v1::ListRequestsRequest {
            awaiting_my_approval: true,
            ..Default::default()
        })
        .await);
    assert_eq!(
        awaiting_bob
            .requests
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        [created.id.as_str()]
    );
    let awaiting_alice = ok(alice
        .list_requests(v1::ListRequestsRequest {
            awaiting_my_approval: true,
            ..Default::default()
        })
        .await);
    assert!(
        awaiting_alice.requests.is_empty(),
        "never one's own: {awaiting_alice:?}"
    );

    let approved = ok(bob
        .approve_request(v1::DecideRequest {
            id: created.id.clone(),
            comment: "go ahead".into(),
        })
        .await);
    assert_eq!(approved.approvals.len(), 1);
    assert_eq!(approved.approvals[0].approver, "bob");
    assert_eq!(approved.approvals[0].comment, "go ahead");
    let active = j.wait_state(&created.id, St::Active).await;
    let primary = grant_id(&active, 0);
    assert!(j.cloud.is_active(primary), "the fake cloud holds the grant");
    let expires = active.expires_at.expect("an expiry");

    let creds = ok(alice
        .get_credentials(v1::GetCredentialsRequest {
            id: created.id.clone(),
        })
        .await);
    assert!(creds.env.contains_key(FAKE_TOKEN_VAR), "{creds:?}");
    assert!(creds.expires_at.is_some());

    // An extension needs approval; once granted, the expiry moves by exactly its length.
    let extending = ok(alice
        .extend_request(v1::ExtendRequestRequest {
            id: created.id.clone(),
            by_seconds: 300,
            reason: "not done".into(),
        })
        .await);
    assert_eq!(extending.extensions.len(), 1);
    assert_eq!(extending.extensions[0].state, "pending");
    ok(bob
        .approve_extension(v1::DecideExtensionRequest {
            id: created.id.clone(),
            number: 1,
            comment: "fine".into(),
        })
        .await);
    let extended = wait_for(&j, &created.id, "extended", |r| {
        r.extensions[0].state == "active"
    })
    .await;
    assert_eq!(
        extended.expires_at.expect("expiry").seconds,
        expires.seconds + 300,
        "{extended:?}"
    );
    assert!(j.cloud.is_active(grant_id(&extended, 1)));

    ok(alice
        .extend_request(v1::ExtendRequestRequest {
            id: created.id.clone(),
            by_seconds: 300,
            reason: "still not done".into(),
        })
        .await);
    let denied_ext = ok(dave
        .deny_extension(v1::DecideExtensionRequest {
            id: created.id.clone(),
            number: 2,
            comment: "enough".into(),
        })
        .await);
    assert_eq!(denied_ext.extensions[1].state, "rejected");
    assert_eq!(denied_ext.expires_at, extended.expires_at);

    let ending = ok(alice
        .revoke_request(v1::RevokeRequestRequest {
            id: created.id.clone(),
            reason: "done early".into(),
        })
        .await);
    assert!(
        [St::Ending as i32, St::Revoked as i32].contains(&ending.state),
        "{ending:?}"
    );
    let revoked = j.wait_state(&created.id, St::Revoked).await;
    assert!(
        revoked
            .end_detail
            .starts_with("revoked by alice: done early"),
        "{revoked:?}"
    );
    assert!(!j.cloud.is_active(primary), "the revoke reached the cloud");
    assert!(!j.cloud.is_active(grant_id(&extended, 1)));

    // Cancel and deny on requests of their own.
    let to_cancel = j.create("alice", "cloud", "operator", 600).await;
    let cancelled = ok(alice
        .cancel_request(v1::CancelRequestRequest {
            id: to_cancel.id.clone(),
        })
        .await);
    assert_eq!(cancelled.state, St::Cancelled as i32);
    let to_deny = j.create("alice", "cloud", "operator", 600).await;
    let denied = ok(dave
        .deny_request(v1::DenyRequestRequest {
            id: to_deny.id.clone(),
            reason: "not this week".into(),
        })
        .await);
    assert_eq!(denied.state, St::Rejected as i32);
    assert_eq!(denied.end_detail, "denied by dave: not this week");
    // Neither ever reached the cloud.
    for r in [&cancelled, &denied] {
        assert!(r.grants.is_empty(), "{r:?}");
    }
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_lives_its_whole_life_through_rest() {
    let j = Jitsudo::start().await;
    let alice = j.rest("alice");
    let bob = j.rest("bob");

    let (status, body) = alice
        .post(
            "/api/v1/requests",
            json!({
                "provider": "cloud",
                "role": "operator",
                "scope": "staging",
                "durationSeconds": "600",
                "reason": "over REST",
                "ticket": "OPS-8",
                "metadata": {"change": "CHG-43"},
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "REQUEST_STATE_PENDING", "{body}");
    assert_eq!(
        body["durationSeconds"], "600",
        "64-bit integers are strings: {body}"
    );
    let created: v1::Request = from_json(&body);
    assert_eq!(created.requester, "alice");
    let id = created.id.clone();

    let (status, body) = alice.get(&format!("/api/v1/requests/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(from_json::<v1::Request>(&body), created);

    let (status, body) = alice
        .get("/api/v1/requests?mine=true&states=PENDING,ACTIVE&provider=cloud&pageSize=10")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let list: v1::ListRequestsResponse = from_json(&body);
    assert_eq!(list.requests, std::slice::from_ref(&created));
    let (status, body) = bob.get("/api/v1/requests?awaitingMyApproval=true").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        from_json::<v1::ListRequestsResponse>(&body).requests.len(),
        1
    );

    let (status, body) = bob
        .post(
            &format!("/api/v1/requests/{id}/approve"),
            json!({"comment": "ok"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    j.wait_state(&id, St::Active).await;

    let (status, body) = alice
        .post(&format!("/api/v1/requests/{id}/credentials"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["env"][FAKE_TOKEN_VAR].is_string(), "{body}");
    assert!(
        body["expiresAt"].is_string(),
        "timestamps are RFC 3339: {body}"
    );

    let (status, body) = alice
        .post(
            &format!("/api/v1/requests/{id}/extend"),
            json!({"bySeconds": "120", "reason": "more"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["extensions"][0]["state"], "pending", "{body}");
    let (status, body) = bob
        .post(
            &format!("/api/v1/requests/{id}/extensions/1/approve"),
            json!({"comment": "ok"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for(&j, &id, "extended", |r| r.extensions[0].state == "active").await;
    let (status, body) = alice
        .post(
            &format!("/api/v1/requests/{id}/extend"),
            json!({"bySeconds": 120, "reason": "even more"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = bob
        .post(
            &format!("/api/v1/requests/{id}/extensions/2/deny"),
            json!({"comment": "no"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["extensions"][1]["state"], "rejected", "{body}");

    let (status, body) = bob
        .post(
            &format!("/api/v1/requests/{id}/revoke"),
            json!({"reason": "wrap up"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let revoked = j.wait_state(&id, St::Revoked).await;
    assert!(
        revoked.end_detail.starts_with("revoked by bob: wrap up"),
        "{revoked:?}"
    );

    // One poll of the events: every version in order, the request on the last one.
    let (status, body) = alice
        .get(&format!("/api/v1/requests/{id}/events?afterVersion=0"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["terminal"], true, "{body}");
    let events: Vec<v1::RequestEvent> = from_json(&body["events"]);
    let versions: Vec<i64> = events.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=revoked.version).collect::<Vec<_>>());
    assert_eq!(
        events
            .last()
            .and_then(|e| e.request.as_ref())
            .map(|r| r.state),
        Some(St::Revoked as i32)
    );

    let pending = j.create("alice", "demo", "operator", 600).await;
    let (status, body) = alice
        .post(
            &format!("/api/v1/requests/{}/cancel", pending.id),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "REQUEST_STATE_CANCELLED");
    let pending = j.create("alice", "demo", "operator", 600).await;
    let (status, body) = bob
        .post(
            &format!("/api/v1/requests/{}/deny", pending.id),
            json!({"reason": "no"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "REQUEST_STATE_REJECTED");
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_with_the_same_idempotency_key_answers_the_same_request_once() {
    let j = Jitsudo::start().await;
    let mut alice = j.grpc("alice").requests;
    let mut first = new_request("demo", "operator", 600);
    first.idempotency_key = "deploy-2024-06-01".into();
    let a = ok(alice.create_request(first.clone()).await);
    let b = ok(alice.create_request(first.clone()).await);
    assert_eq!(a.id, b.id);
    assert_eq!(a, b);
    // REST sees the same key (per requester) the same way.
    let (status, body) = j
        .rest("alice")
        .post(
            "/api/v1/requests",
            json!({
                "provider": "demo", "role": "operator", "scope": "staging",
                "durationSeconds": 600, "reason": "integration test",
                "idempotencyKey": "deploy-2024-06-01",
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], a.id.as_str());
    let created = j
        .audit_log()
        .await
        .into_iter()
        .filter(|e| e.kind == "request.created")
        .count();
    assert_eq!(created, 1, "one request, one creation event");

    // Other content under the same key is refused and creates nothing.
    let mut other = first.clone();
    other.duration_seconds = 900;
    let msg = refused(alice.create_request(other).await, Code::InvalidArgument);
    assert!(
        msg.contains("deploy-2024-06-01") || msg.contains("idempotency"),
        "{msg}"
    );
    // Keys are per requester: the same key from dave is dave's own request.
    let d = ok(j.grpc("dave").requests.create_request(first).await);
    assert_ne!(d.id, a.id);
    let all = ok(j
        .grpc("erin")
        .requests
        .list_requests(v1::ListRequestsRequest::default())
        .await);
    assert_eq!(all.requests.len(), 2, "{:?}", all.requests);
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_decisions_by_the_same_caller_answer_the_current_request() {
    let j = Jitsudo::start().await;
    let mut bob = j.grpc("bob").requests;
    let mut dave = j.grpc("dave").requests;
    let approve = |id: &str| v1::DecideRequest {
        id: id.into(),
        comment: "ok".into(),
    };

    // Two approvals needed: bob twice is still one approval, and no new version.
    let admin_role = j.create("alice", "demo", "db-admin", 600).await;
    let once = ok(bob.approve_request(approve(&admin_role.id)).await);
    let log = j.audit_log().await;
    let twice = ok(bob.approve_request(approve(&admin_role.id)).await);
    assert_eq!(twice, once);
    assert_eq!(twice.state, St::Pending as i32);
    assert_eq!(twice.approvals.len(), 1);
    assert_eq!(j.audit_log().await, log, "a repeat writes nothing");
    ok(dave.approve_request(approve(&admin_role.id)).await);
    j.wait_state(&admin_role.id, St::Active).await;
    // Once past PENDING, bob repeating his approval still answers the request as it is.
    let later = ok(bob.approve_request(approve(&admin_role.id)).await);
    assert_eq!(later.state, St::Active as i32);

    // Deny twice.
    let pending = j.create("alice", "demo", "operator", 600).await;
    let deny = v1::DenyRequestRequest {
        id: pending.id.clone(),
        reason: "no".into(),
    };
    let first = ok(dave.deny_request(deny.clone()).await);
    let second = ok(dave.deny_request(deny).await);
    assert_eq!(first, second);
    assert_eq!(second.state, St::Rejected as i32);
    // Someone else deciding on it now is told it is over.
    refused(
        bob.deny_request(v1::DenyRequestRequest {
            id: pending.id.clone(),
            reason: "no".into(),
        })
        .await,
        Code::FailedPrecondition,
    );
    refused(
        bob.approve_request(approve(&pending.id)).await,
        Code::FailedPrecondition,
    );

    // Cancel twice, revoke twice.
    let mut alice = j.grpc("alice").requests;
    let pending = j.create("alice", "demo", "operator", 600).await;
    let c1 = ok(alice
        .cancel_request(v1::CancelRequestRequest {
            id: pending.id.clone(),
        })
        .await);
    let c2 = ok(alice
        .cancel_request(v1::CancelRequestRequest {
            id: pending.id.clone(),
        })
        .await);
    assert_eq!(c1, c2);
    let active = j.active_viewer("alice", "demo", 600).await;
    let revoke = v1::RevokeRequestRequest {
        id: active.id.clone(),
        reason: "done".into(),
    };
    ok(alice.revoke_request(revoke.clone()).await);
    let done = j.wait_state(&active.id, St::Revoked).await;
    let again = ok(alice.revoke_request(revoke).await);
    assert_eq!(again, done);
    // Another revoker is told it is final.
    refused(
        j.grpc("carol")
            .requests
            .revoke_request(v1::RevokeRequestRequest {
                id: active.id.clone(),
                reason: "me too".into(),
            })
            .await,
        Code::FailedPrecondition,
    );
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_approval_by_the_same_person_under_another_subject_is_already_exists() {
    let j = Jitsudo::start().await;
    let r = j.create("alice", "demo", "db-admin", 600).await;
    ok(j.grpc("bob")
        .requests
        .approve_request(v1::DecideRequest {
            id: r.id.clone(),
            comment: "one".into(),
        })
        .await);
    let before = j.stored(&r.id).await;
    // bob-alt carries bob's verified email: the same person, another caller.
    let msg = refused(
        j.grpc("bob-alt")
            .requests
            .approve_request(v1::DecideRequest {
                id: r.id.clone(),
                comment: "two".into(),
            })
            .await,
        Code::AlreadyExists,
    );
    assert!(msg.contains("already approved"), "{msg}");
    assert_eq!(j.stored(&r.id).await, before, "the quorum did not move");
    let (status, body) = j
        .rest("bob-alt")
        .post(&format!("/api/v1/requests/{}/approve", r.id), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "ALREADY_EXISTS");
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_come_only_for_active_requests_only_to_the_requester_and_never_into_the_audit_log()
 {
    let j = Jitsudo::start().await;
    let mut alice = j.grpc("alice").requests;
    let creds = |id: &str| v1::GetCredentialsRequest { id: id.into() };

    let pending = j.create("alice", "cloud", "operator", 600).await;
    let msg = refused(
        alice.get_credentials(creds(&pending.id)).await,
        Code::FailedPrecondition,
    );
    assert!(msg.contains("PENDING"), "{msg}");

    let active = j.active_viewer("alice", "cloud", 600).await;
    let first = ok(alice.get_credentials(creds(&active.id)).await);
    let token = first.env.get(FAKE_TOKEN_VAR).expect("a fake token").clone();
    assert!(!first.notice.is_empty());
    // Minted on demand: another fetch is another credential.
    let second = ok(alice.get_credentials(creds(&active.id)).await);
    assert_ne!(second.env.get(FAKE_TOKEN_VAR), Some(&token));
    assert_eq!(j.cloud.count(Op::Credentials, grant_id(&active, 0)), 2);
    let (status, body) = j
        .rest("alice")
        .post(
            &format!("/api/v1/requests/{}/credentials", active.id),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rest_token = body["env"][FAKE_TOKEN_VAR]
        .as_str()
        .expect("a token")
        .to_owned();

    for user in ["bob", "carol", "erin", "mallory"] {
        refused(
            j.grpc(user)
                .requests
                .get_credentials(creds(&active.id))
                .await,
            Code::PermissionDenied,
        );
    }
    let resp = j
        .rest("carol")
        .post(
            &format!("/api/v1/requests/{}/credentials", active.id),
            json!({}),
        )
        .await;
    rest_error(&resp, StatusCode::FORBIDDEN, "PERMISSION_DENIED");

    ok(alice
        .revoke_request(v1::RevokeRequestRequest {
            id: active.id.clone(),
            reason: "done".into(),
        })
        .await);
    j.wait_state(&active.id, St::Revoked).await;
    let msg = refused(
        alice.get_credentials(creds(&active.id)).await,
        Code::FailedPrecondition,
    );
    assert!(msg.contains("REVOKED"), "{msg}");

    // The audit log records each fetch (request, grant, expiry) and never a value.
    let audit = ok(j
        .grpc("erin")
        .audit
        .query_audit(v1::QueryAuditRequest {
            request_id: active.id.clone(),
            page_size: 1000,
            ..Default::default()
        })
        .await);
    let issued: Vec<&v1::AuditEvent> = audit
        .events
        .iter()
        .filter(|e| e.kind == "credentials.issued")
        .collect();
    assert_eq!(issued.len(), 3, "{:?}", audit.events);
    for e in &issued {
        assert_eq!(e.actor, "alice");
        let d: serde_json::Value = serde_json::from_str(&e.details).expect("JSON");
        assert_eq!(d["grant_id"], active.grants[0].grant_id.as_str(), "{d}");
        assert!(d["expires_at"].is_string(), "{d}");
    }
    let whole_log = ok(j
        .grpc("carol")
        .audit
        .query_audit(v1::QueryAuditRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await);
    let text = format!("{whole_log:?}");
    for t in [
        &token,
        second.env.get(FAKE_TOKEN_VAR).expect("token"),
        &rest_token,
    ] {
        assert!(
            !text.contains(t.as_str()),
            "a credential leaked into the audit log"
        );
    }
    for e in j.audit_log().await {
        assert!(!e.details.contains("fake-"), "a credential leaked: {e:?}");
    }
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_is_approved_at_once_for_oncall_and_cannot_be_extended() {
    let j = Jitsudo::start().await;
    let mut oscar = j.grpc("oscar").requests;
    let mut bg = new_request("demo", "operator", 600);
    bg.break_glass = true;
    bg.reason = "the database is down".into();
    let r = ok(oscar.create_request(bg.clone()).await);
    assert!(r.break_glass);
    assert!(
        [St::Approved as i32, St::Active as i32].contains(&r.state),
        "{r:?}"
    );
    assert_eq!(r.approvals[0].kind, "break_glass");
    j.wait_state(&r.id, St::Active).await;
    let msg = refused(
        oscar
            .extend_request(v1::ExtendRequestRequest {
                id: r.id.clone(),
                by_seconds: 60,
                reason: "more".into(),
            })
            .await,
        Code::FailedPrecondition,
    );
    assert!(msg.contains("break-glass"), "{msg}");
    // Without a reason, or for someone the policy does not allow, it is refused, and
    // nothing is stored, granted or audited.
    let before = j.audit_without_denials().await;
    let mut no_reason = bg.clone();
    no_reason.reason = " ".into();
    refused(oscar.create_request(no_reason).await, Code::InvalidArgument);
    let msg = refused(
        j.grpc("alice").requests.create_request(bg).await,
        Code::InvalidArgument,
    );
    assert!(msg.contains("break-glass"), "{msg}");
    assert_eq!(j.audit_without_denials().await, before, "nothing changed");

    // Attack: a second emergency right after the first — refused during the cooldown, and
    // nothing is stored or granted.
    let before = j.audit_without_denials().await;
    let mut again = bg_again();
    again.idempotency_key = "second-emergency".into();
    let msg = refused(oscar.create_request(again).await, Code::FailedPrecondition);
    assert!(msg.contains("cooldown"), "{msg}");
    assert_eq!(j.audit_without_denials().await, before, "nothing changed");
    j.stop().await.expect("clean stop");
}

fn bg_again() -> v1::CreateRequestRequest {
    let mut bg = new_request("demo", "viewer", 600);
    bg.break_glass = true;
    bg.reason = "the database is down again".into();
    bg
}

/// Attack: one person opening requests without end — refused once the cap of open
/// requests is reached (RESOURCE_EXHAUSTED), and refused again until one is finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_requests_per_person_are_capped() {
    let j = Jitsudo::start_with(|c| c.limits.max_live_requests_per_principal = 3).await;
    let mut alice = j.grpc("alice").requests;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            ok(alice
                .create_request(new_request("cloud", "operator", 600))
                .await)
            .id,
        );
    }
    let before = j.audit_without_denials().await;
    let msg = refused(
        alice
            .create_request(new_request("cloud", "operator", 600))
            .await,
        Code::ResourceExhausted,
    );
    assert!(msg.contains("3 of your requests"), "{msg}");
    assert_eq!(j.audit_without_denials().await, before, "nothing stored");
    // Somebody else is not affected; finishing one frees a place.
    ok(j.grpc("dave")
        .requests
        .create_request(new_request("cloud", "operator", 600))
        .await);
    ok(alice
        .cancel_request(v1::CancelRequestRequest { id: ids[0].clone() })
        .await);
    ok(alice
        .create_request(new_request("cloud", "operator", 600))
        .await);
    j.stop().await.expect("clean stop");
}

/// Attack: 50 concurrent decisions on one pending request — 20 approvers, 20 deniers and
/// alice cancelling 10 times. Exactly one decision wins the PENDING request, and the cloud
/// sees at most one grant (revoked again if the cancel came after the approval).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_decisions_one_winner_at_most_one_grant() {
    let j = Jitsudo::start().await;
    let mut alice = j.grpc("alice").requests;
    let created = ok(alice
        .create_request(new_request("cloud", "operator", 600))
        .await);
    let id = created.id.clone();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..50 {
        let (kind, token) = match i % 5 {
            0 | 1 => (
                "approve",
                j.token_for(&format!("appr-{i}"), None, false, &["approvers"]),
            ),
            2 | 3 => (
                "deny",
                j.token_for(&format!("den-{i}"), None, false, &["approvers"]),
            ),
            _ => ("cancel", j.token("alice")),
        };
        let mut client = j.grpc_with(Some(&format!("Bearer {token}"))).requests;
        let id = id.clone();
        calls.spawn(async move {
            let res = match kind {
                "approve" => client
                    .approve_request(v1::DecideRequest {
                        id,
                        comment: String::new(),
                    })
                    .await
                    .map(|_| ()),
                "deny" => client
                    .deny_request(v1::DenyRequestRequest {
                        id,
                        reason: "no".into(),
                    })
                    .await
                    .map(|_| ()),
                _ => client
                    .cancel_request(v1::CancelRequestRequest { id })
                    .await
                    .map(|_| ()),
            };
            (kind, res.map_err(|s| (s.code(), s.message().to_owned())))
        });
    }
    let mut outcomes = Vec::new();
    while let Some(r) = calls.join_next().await {
        outcomes.push(r.expect("the call task"));
    }
    for (kind, res) in &outcomes {
        if let Err((code, msg)) = res {
            assert!(
                matches!(
                    code,
                    Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists
                ),
                "{kind} refused with {code:?} ({msg}): a losing decision is refused, never an internal error"
            );
        }
    }
    let ended = wait_for(&j, &id, "settled", |r| {
        r.state != St::Pending as i32
            && r.state != St::Approved as i32
            && r.state != St::Ending as i32
    })
    .await;
    let log = j.audit_log().await;
    let from_pending: Vec<&str> = log
        .iter()
        .filter(|e| e.request_id.map(|r| r.to_string()) == Some(id.clone()))
        .filter(|e| {
            serde_json::from_str::<serde_json::Value>(&e.details)
                .is_ok_and(|d| d["from"] == "PENDING" && d["to"] != "PENDING")
        })
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(
        from_pending.len(),
        1,
        "exactly one decision left PENDING: {from_pending:?}"
    );
    let grants = j
        .cloud
        .count_outcome(Op::Grant, jitsudo_providers::http::server::Outcome::Granted);
    assert!(grants <= 1, "at most one grant: {grants}");
    match from_pending[0] {
        "request.approved" => {
            assert_eq!(grants, 1);
            // A cancel after the approval takes the grant back; otherwise it is active.
            if ended.state != St::Active as i32 {
                assert!(j.cloud.active_grants().is_empty(), "{ended:?}");
            }
        }
        "request.denied" | "request.cancelled" => assert_eq!(grants, 0),
        other => panic!("unexpected first decision {other}"),
    }
}

/// Secret hygiene: a whole lifecycle whose provider hands out a known secret — credentials
/// fetched over gRPC and REST, extended, revoked — and then the secret is nowhere: not in
/// any row of any table (audit log and outbox included), not in anything logged, not in
/// what QueryAudit returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_secret_is_nowhere_in_the_database_the_logs_or_the_audit_log() {
    let j = Jitsudo::start().await;
    let mut alice = j.grpc("alice").requests;
    let created = ok(alice
        .create_request(new_request("cloud", "viewer", 600))
        .await);
    j.wait_state(&created.id, St::Active).await;
    let creds = ok(alice
        .get_credentials(v1::GetCredentialsRequest {
            id: created.id.clone(),
        })
        .await);
    let secret = creds.env[FAKE_TOKEN_VAR].clone();
    assert!(secret.len() >= 16, "a real-looking secret: {secret}");
    let (status, body) = j
        .rest("alice")
        .post(
            &format!("/api/v1/requests/{}/credentials", created.id),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    ok(alice
        .extend_request(v1::ExtendRequestRequest {
            id: created.id.clone(),
            by_seconds: 60,
            reason: "a little longer".into(),
        })
        .await);
    ok(alice
        .revoke_request(v1::RevokeRequestRequest {
            id: created.id.clone(),
            reason: "done".into(),
        })
        .await);
    j.wait_state(&created.id, St::Revoked).await;
    assert!(
        !format!("{creds:?}").contains(&secret),
        "Debug redacts credentials"
    );

    // Every table, every column (a row cast to text).
    let pool = sqlx::PgPool::connect(&j.config.database.url)
        .await
        .expect("connect to the test database");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
          WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&pool)
    .await
    .expect("list tables");
    assert!(tables.contains(&"audit_events".to_owned()) && tables.contains(&"outbox".to_owned()));
    for t in &tables {
        let hits: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{t}\" x WHERE strpos(x::text, $1) > 0"
        )))
        .bind(&secret)
        .fetch_one(&pool)
        .await
        .expect("scan a table");
        assert_eq!(hits, 0, "the secret is stored in table {t}");
    }
    // What QueryAudit hands an auditor.
    let page = ok(j
        .grpc("erin")
        .audit
        .query_audit(v1::QueryAuditRequest {
            request_id: created.id.clone(),
            page_size: 1000,
            ..Default::default()
        })
        .await);
    assert!(page.events.len() >= 5, "{page:?}");
    assert!(!format!("{page:?}").contains(&secret));
    // Everything logged in this process so far.
    let logs = captured_logs();
    assert!(!logs.is_empty(), "the log capture works");
    assert!(!logs.contains(&secret), "the secret was logged");
    assert!(
        !logs.contains(&j.token("alice")[..40]),
        "a bearer token was logged"
    );
}

/// Break-glass and self-approved requests need a review: listed for admins and auditors
/// until one of them (never the requester) closes it, once, with an audited verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_and_self_approved_requests_are_reviewed_once_by_someone_else() {
    let j = Jitsudo::start().await;
    // A break-glass request of oscar's.
    let mut bg = new_request("demo", "operator", 600);
    bg.break_glass = true;
    bg.reason = "the database is down".into();
    let emergency = ok(j.grpc("oscar").requests.create_request(bg).await);
    assert_eq!(emergency.review_reason, "break-glass");
    // carol re-applies the approval policy (same text): it is now hers, and her own viewer
    // request is auto-approved by a policy she wrote.
    ok(j.grpc("carol")
        .policies
        .apply_policy(v1::ApplyPolicyRequest {
            name: "approval".into(),
            rego: APPROVAL.into(),
        })
        .await);
    let mine = ok(j
        .grpc("carol")
        .requests
        .create_request(new_request("demo", "viewer", 600))
        .await);
    assert_eq!(
        mine.review_reason,
        "auto-approved by a policy its requester wrote"
    );
    // An ordinary request needs none.
    let plain = j.create("alice", "demo", "viewer", 600).await;
    assert_eq!(plain.review_reason, "");

    let needs_review = |who: &str| {
        let mut g = j.grpc(who).requests;
        async move {
            ok(g.list_requests(v1::ListRequestsRequest {
                needs_review: true,
                ..Default::default()
            })
            .await)
            .requests
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
        }
    };
    let open = needs_review("erin").await;
    assert_eq!(open.len(), 2, "{open:?}");
    assert!(open.contains(&emergency.id) && open.contains(&mine.id));
    refused(
        j.grpc("mallory")
            .requests
            .list_requests(v1::ListRequestsRequest {
                needs_review: true,
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );

    let review = |who: &str, id: &str, verdict: &str| {
        let mut g = j.grpc(who).requests;
        let m = v1::ReviewRequestRequest {
            id: id.into(),
            verdict: verdict.into(),
        };
        async move { g.review_request(m).await }
    };
    // Nobody reviews their own; plain users not at all; a request without reason not at all.
    let msg = refused(
        review("carol", &mine.id, "fine").await,
        Code::PermissionDenied,
    );
    assert!(msg.contains("own request"), "{msg}");
    refused(
        review("mallory", &emergency.id, "fine").await,
        Code::PermissionDenied,
    );
    refused(
        review("erin", &plain.id, "fine").await,
        Code::InvalidArgument,
    );
    refused(
        review("erin", &emergency.id, " ").await,
        Code::InvalidArgument,
    );

    let closed = ok(review("erin", &emergency.id, "justified: DB outage INC-42").await);
    assert_eq!(closed.reviewer, "erin");
    assert_eq!(closed.reason, "break-glass");
    refused(
        review("carol", &emergency.id, "again").await,
        Code::AlreadyExists,
    );
    let (status, body) = j
        .rest("carol")
        .post(
            &format!("/api/v1/requests/{}/review", mine.id),
            serde_json::json!({"verdict": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = j
        .rest("erin")
        .post(
            &format!("/api/v1/requests/{}/review", mine.id),
            serde_json::json!({"verdict": "policy change reviewed"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(needs_review("carol").await.is_empty());
    let log = j.audit_log().await;
    let reviews: Vec<_> = log.iter().filter(|e| e.kind == "review.closed").collect();
    assert_eq!(reviews.len(), 2);
    assert!(
        reviews[0].details.contains("INC-42"),
        "{}",
        reviews[0].details
    );
    j.stop().await.expect("clean stop");
}

/// Every policy decision is recorded with the policy set and its authors: the create's
/// decision, and each person's approval or denial checked against the approval policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_record_the_policy_version_and_authors_that_allowed_them() {
    let j = Jitsudo::start().await;
    let r = j.create("alice", "cloud", "operator", 600).await;
    ok(j.grpc("bob")
        .requests
        .approve_request(v1::DecideRequest {
            id: r.id.clone(),
            comment: String::new(),
        })
        .await);
    let log = j.audit_log().await;
    let details = |kind: &str| -> serde_json::Value {
        let e = log
            .iter()
            .find(|e| e.kind == kind && e.request_id.map(|x| x.to_string()) == Some(r.id.clone()))
            .unwrap_or_else(|| panic!("a {kind} event"));
        serde_json::from_str(&e.details).expect("JSON details")
    };
    let created = details("request.created");
    assert_eq!(created["policy_version"], r.policy_version.as_str());
    assert_eq!(created["policies"][0]["author"], "test-setup", "{created}");
    let approved = details("request.approved");
    assert_eq!(
        approved["decided_under"]["policy_version"],
        r.policy_version.as_str(),
        "{approved}"
    );
    assert_eq!(
        approved["decided_under"]["policies"][0]["author"],
        "test-setup"
    );
    j.stop().await.expect("clean stop");
}
