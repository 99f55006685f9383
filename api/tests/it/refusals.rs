//! Bad input, per RPC: each refusal has the documented code and a sentence, over gRPC and
//! REST, and a refused call changes nothing — no request, no version, no audit event.

use jitsudo_actors::domain::RequestId;
use jitsudo_proto::v1;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tonic::Code;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_refuses_bad_input_with_a_reason_and_stores_nothing() {
    let j = Jitsudo::start().await;
    let log = j.audit_log().await;
    let mut alice = j.grpc("alice").requests;
    let base = || new_request("demo", "operator", 600);
    type Edit = fn(&mut v1::CreateRequestRequest);
    let cases: &[(&str, Edit, &str)] = &[
        ("no provider", |r| r.provider.clear(), "provider"),
        ("unknown provider", |r| r.provider = "nope".into(), "demo"),
        ("no role", |r| r.role.clear(), "role"),
        ("no scope", |r| r.scope.clear(), "scope"),
        ("oversized scope", |r| r.scope = "s".repeat(1025), "scope"),
        ("zero duration", |r| r.duration_seconds = 0, "duration"),
        (
            "negative duration",
            |r| r.duration_seconds = -60,
            "duration",
        ),
        (
            "above the policy maximum",
            |r| r.duration_seconds = 7201,
            "7200",
        ),
        (
            "oversized reason",
            |r| r.reason = "r".repeat(1025),
            "reason",
        ),
        (
            "control characters",
            |r| r.reason = "ring\u{7}the bell".into(),
            "reason",
        ),
        (
            "a bidirectional override",
            |r| r.reason = "fix \u{202E}gnp.exe".into(),
            "U+202E",
        ),
        (
            "a zero-width space",
            |r| r.scope = "staging\u{200B}".into(),
            "U+200B",
        ),
        ("oversized ticket", |r| r.ticket = "T".repeat(129), "ticket"),
        (
            "too much metadata",
            |r| {
                r.metadata = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
            },
            "metadata",
        ),
        (
            "empty metadata key",
            |r| {
                r.metadata.insert(String::new(), "v".into());
            },
            "metadata",
        ),
        (
            "oversized idempotency key",
            |r| r.idempotency_key = "k".repeat(129),
            "idempotency",
        ),
        (
            "a role the provider refuses",
            |r| r.role = "invalid-role".into(),
            "invalid-role",
        ),
    ];
    for (what, edit, needle) in cases {
        let mut req = base();
        edit(&mut req);
        let msg = refused(alice.create_request(req).await, Code::InvalidArgument);
        assert!(
            msg.contains(needle),
            "{what}: {msg:?} does not mention {needle:?}"
        );
    }
    // The policy refuses people it does not make eligible, saying why.
    let msg = refused(
        j.grpc("erin").requests.create_request(base()).await,
        Code::InvalidArgument,
    );
    assert!(msg.contains("eligib"), "{msg}");

    // REST: the same refusals, and bodies that are not the message.
    let rest = j.rest("alice");
    let resp = rest
        .post(
            "/api/v1/requests",
            json!({"provider": "demo", "role": "operator", "scope": "staging", "durationSeconds": 0}),
        )
        .await;
    rest_error(&resp, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT");
    let resp = rest
        .post(
            "/api/v1/requests",
            json!({"provider": "demo", "durationSeconds": "soon"}),
        )
        .await;
    rest_error(&resp, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT");
    let resp = rest
        .send_raw(Method::POST, "/api/v1/requests", b"{not json".to_vec())
        .await;
    rest_error(&resp, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT");

    let all = ok(j
        .grpc("carol")
        .requests
        .list_requests(v1::ListRequestsRequest::default())
        .await);
    assert!(all.requests.is_empty(), "{:?}", all.requests);
    assert_eq!(
        j.audit_log().await,
        log,
        "bad input is neither stored nor audited"
    );
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rpcs_refuse_malformed_ids_and_answer_not_found_for_unknown_ones() {
    let j = Jitsudo::start().await;
    let mut g = j.grpc("alice").requests;
    let unknown = RequestId::new().to_string();
    let long = "a".repeat(65);
    for (id, code) in [
        ("", Code::InvalidArgument),
        ("not-a-uuid", Code::InvalidArgument),
        (long.as_str(), Code::InvalidArgument),
        (
            "01900000-0000-7000-8000-00000000000g",
            Code::InvalidArgument,
        ),
        (unknown.as_str(), Code::NotFound),
    ] {
        let id = id.to_owned();
        let s = |r: Result<(), tonic::Status>| r.expect_err("refused").code();
        macro_rules! check {
            ($call:expr) => {
                assert_eq!(
                    s($call.await.map(|_| ())),
                    code,
                    "{} for {id:?}",
                    stringify!($call)
                );
            };
        }
        check!(g.get_request(v1::GetRequestRequest { id: id.clone() }));
        check!(g.approve_request(v1::DecideRequest {
            id: id.clone(),
            comment: String::new()
        }));
        check!(g.deny_request(v1::DenyRequestRequest {
            id: id.clone(),
            reason: String::new()
        }));
        check!(g.cancel_request(v1::CancelRequestRequest { id: id.clone() }));
        check!(g.revoke_request(v1::RevokeRequestRequest {
            id: id.clone(),
            reason: String::new()
        }));
        check!(g.extend_request(v1::ExtendRequestRequest {
            id: id.clone(),
            by_seconds: 60,
            reason: String::new()
        }));
        check!(g.approve_extension(v1::DecideExtensionRequest {
            id: id.clone(),
            number: 1,
            comment: String::new()
        }));
        check!(g.deny_extension(v1::DecideExtensionRequest {
            id: id.clone(),
            number: 1,
            comment: String::new()
        }));
        check!(g.get_credentials(v1::GetCredentialsRequest { id: id.clone() }));
    }
    let rest = j.rest("alice");
    let resp = rest.get("/api/v1/requests/not-a-uuid").await;
    rest_error(&resp, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT");
    let resp = rest.get(&format!("/api/v1/requests/{unknown}")).await;
    rest_error(&resp, StatusCode::NOT_FOUND, "NOT_FOUND");
    let resp = rest
        .post(&format!("/api/v1/requests/{unknown}/approve"), json!({}))
        .await;
    rest_error(&resp, StatusCode::NOT_FOUND, "NOT_FOUND");
    let resp = rest
        .post(
            "/api/v1/requests/not-a-uuid/extensions/x/approve",
            json!({}),
        )
        .await;
    assert_eq!(resp.0, StatusCode::BAD_REQUEST, "{:?}", resp.1);
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_with_bad_input_are_refused_and_change_nothing() {
    let j = Jitsudo::start().await;
    let pending = j.create("alice", "demo", "operator", 600).await;
    let active = j.active_operator("alice", "demo", 600).await;
    let before = (j.stored(&pending.id).await, j.stored(&active.id).await);
    let log = j.audit_log().await;
    let mut alice = j.grpc("alice").requests;
    let mut bob = j.grpc("bob").requests;
    let long = "c".repeat(1025);

    let bad = [
        bob.approve_request(v1::DecideRequest {
            id: pending.id.clone(),
            comment: long.clone(),
        })
        .await
        .map(|_| ()),
        bob.deny_request(v1::DenyRequestRequest {
            id: pending.id.clone(),
            reason: long.clone(),
        })
        .await
        .map(|_| ()),
        alice
            .revoke_request(v1::RevokeRequestRequest {
                id: active.id.clone(),
                reason: long.clone(),
            })
            .await
            .map(|_| ()),
        alice
            .extend_request(v1::ExtendRequestRequest {
                id: active.id.clone(),
                by_seconds: 0,
                reason: "more".into(),
            })
            .await
            .map(|_| ()),
        alice
            .extend_request(v1::ExtendRequestRequest {
                id: active.id.clone(),
                by_seconds: -60,
                reason: "more".into(),
            })
            .await
            .map(|_| ()),
        alice
            .extend_request(v1::ExtendRequestRequest {
                id: active.id.clone(),
                by_seconds: 60,
                reason: long.clone(),
            })
            .await
            .map(|_| ()),
        bob.approve_extension(v1::DecideExtensionRequest {
            id: active.id.clone(),
            number: 1,
            comment: long.clone(),
        })
        .await
        .map(|_| ()),
    ];
    for (i, r) in bad.into_iter().enumerate() {
        let s = r.expect_err("refused");
        assert_eq!(s.code(), Code::InvalidArgument, "case {i}: {}", s.message());
    }
    // No such extension to decide on, and none beyond the policy's total.
    let s = bob
        .approve_extension(v1::DecideExtensionRequest {
            id: active.id.clone(),
            number: 7,
            comment: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
    assert!(s.message().contains("no extension 7"), "{}", s.message());
    let s = alice
        .extend_request(v1::ExtendRequestRequest {
            id: active.id.clone(),
            by_seconds: 14400,
            reason: "forever".into(),
        })
        .await
        .expect_err("refused");
    assert!(
        s.message().contains("maximum"),
        "{:?} {}",
        s.code(),
        s.message()
    );

    // REST: non-positive extension, oversized comment.
    let rest = j.rest("alice");
    let resp = rest
        .post(
            &format!("/api/v1/requests/{}/extend", active.id),
            json!({"bySeconds": -1, "reason": "x"}),
        )
        .await;
    rest_error(&resp, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT");
    let resp = j
        .rest("bob")
        .post(
            &format!("/api/v1/requests/{}/approve", pending.id),
            json!({"comment": long}),
        )
        .await;
    rest_error(&resp, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT");

    assert_eq!(
        (j.stored(&pending.id).await, j.stored(&active.id).await),
        before,
        "refused calls changed a request"
    );
    assert_eq!(j.audit_log().await, log, "refused calls wrote audit events");
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acting_on_someone_elses_request_is_refused_and_only_the_refusal_is_recorded() {
    let j = Jitsudo::start().await;
    let pending = j.create("alice", "demo", "operator", 600).await;
    let active = j.active_operator("alice", "demo", 600).await;
    let before = (j.stored(&pending.id).await, j.stored(&active.id).await);
    let log = j.audit_without_denials().await;
    let mut mallory = j.grpc("mallory").requests;
    let mut erin = j.grpc("erin").requests;
    let results = [
        mallory
            .approve_request(v1::DecideRequest {
                id: pending.id.clone(),
                comment: String::new(),
            })
            .await
            .map(|_| ()),
        mallory
            .deny_request(v1::DenyRequestRequest {
                id: pending.id.clone(),
                reason: String::new(),
            })
            .await
            .map(|_| ()),
        mallory
            .cancel_request(v1::CancelRequestRequest {
                id: pending.id.clone(),
            })
            .await
            .map(|_| ()),
        erin.revoke_request(v1::RevokeRequestRequest {
            id: active.id.clone(),
            reason: String::new(),
        })
        .await
        .map(|_| ()),
        erin.extend_request(v1::ExtendRequestRequest {
            id: active.id.clone(),
            by_seconds: 60,
            reason: String::new(),
        })
        .await
        .map(|_| ()),
        erin.get_credentials(v1::GetCredentialsRequest {
            id: active.id.clone(),
        })
        .await
        .map(|_| ()),
    ];
    for (i, r) in results.into_iter().enumerate() {
        let s = r.expect_err("refused");
        assert_eq!(
            s.code(),
            Code::PermissionDenied,
            "case {i}: {}",
            s.message()
        );
    }
    assert_eq!(
        (j.stored(&pending.id).await, j.stored(&active.id).await),
        before
    );
    assert_eq!(j.audit_without_denials().await, log);
    let refused_for = |ds: Vec<serde_json::Value>| -> Vec<String> {
        ds.iter()
            .map(|d| {
                format!(
                    "{}@{}",
                    d["rpc"].as_str().unwrap_or("?"),
                    d["request_id"].as_str().unwrap_or("-")
                )
            })
            .collect()
    };
    assert_eq!(
        refused_for(j.denials("mallory").await),
        [
            format!("ApproveRequest@{}", pending.id),
            format!("DenyRequest@{}", pending.id),
            format!("CancelRequest@{}", pending.id),
        ]
    );
    assert_eq!(
        refused_for(j.denials("erin").await),
        [
            format!("RevokeRequest@{}", active.id),
            format!("ExtendRequest@{}", active.id),
            format!("GetCredentials@{}", active.id),
        ]
    );
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_are_bound_to_their_caller_and_filter_and_bad_filters_are_refused() {
    let j = Jitsudo::start().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(j.create("alice", "demo", "operator", 600).await.id);
    }
    let mut alice = j.grpc("alice").requests;
    let mine = |token: &str| v1::ListRequestsRequest {
        mine: true,
        page_size: 2,
        page_token: token.into(),
        ..Default::default()
    };
    let first = ok(alice.list_requests(mine("")).await);
    assert_eq!(first.requests.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = ok(alice.list_requests(mine(&first.next_page_token)).await);
    assert_eq!(second.requests.len(), 1);
    assert!(second.next_page_token.is_empty());
    let mut seen: Vec<String> = first
        .requests
        .iter()
        .chain(&second.requests)
        .map(|r| r.id.clone())
        .collect();
    // Newest first, each exactly once.
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    seen.dedup();
    assert_eq!(seen.len(), 3);

    let token = first.next_page_token.clone();
    let mut tampered = token.clone();
    let last = tampered.pop().expect("a non-empty token");
    tampered.push(if last == '0' { '1' } else { '0' });
    let invalid = Code::InvalidArgument;
    refused(alice.list_requests(mine(&tampered)).await, invalid);
    refused(alice.list_requests(mine("garbage")).await, invalid);
    refused(alice.list_requests(mine(&"x".repeat(600))).await, invalid);
    // Another caller with the same filter, and the same caller with another filter.
    refused(
        j.grpc("dave").requests.list_requests(mine(&token)).await,
        invalid,
    );
    let mut other_filter = mine(&token);
    other_filter.states = vec![St::Pending as i32];
    refused(alice.list_requests(other_filter).await, invalid);
    let mut other_size = mine(&token);
    other_size.page_size = 3;
    refused(alice.list_requests(other_size).await, invalid);

    for states in [vec![99], vec![0], vec![St::Pending as i32, -1]] {
        let msg = refused(
            alice
                .list_requests(v1::ListRequestsRequest {
                    states,
                    ..Default::default()
                })
                .await,
            invalid,
        );
        assert!(msg.contains("state"), "{msg}");
    }
    refused(
        alice
            .list_requests(v1::ListRequestsRequest {
                page_size: 501,
                ..Default::default()
            })
            .await,
        invalid,
    );
    refused(
        alice
            .list_requests(v1::ListRequestsRequest {
                provider: "p".repeat(65),
                ..Default::default()
            })
            .await,
        invalid,
    );

    let rest = j.rest("alice");
    for q in [
        "states=BOGUS",
        "states=99",
        "pageSize=lots",
        "pageSize=501",
        "mine=perhaps",
        "pageToken=tampered.00",
    ] {
        let resp = rest.get(&format!("/api/v1/requests?{q}")).await;
        rest_error(&resp, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT");
    }
    // REST page tokens are the same tokens, equally bound.
    let (status, body) = rest.get("/api/v1/requests?mine=true&pageSize=2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let next = body["nextPageToken"].as_str().expect("a token").to_owned();
    let (status, body) = rest
        .get(&format!(
            "/api/v1/requests?mine=true&pageSize=2&pageToken={next}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        from_json::<v1::ListRequestsResponse>(&body).requests.len(),
        1
    );
    let resp = j
        .rest("dave")
        .get(&format!(
            "/api/v1/requests?mine=true&pageSize=2&pageToken={next}"
        ))
        .await;
    rest_error(&resp, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT");
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_queries_refuse_bad_filters_and_foreign_page_tokens() {
    let j = Jitsudo::start().await;
    for _ in 0..3 {
        j.create("alice", "demo", "operator", 600).await;
    }
    let mut erin = j.grpc("erin").audit;
    let q = |token: &str| v1::QueryAuditRequest {
        kind: "request.created".into(),
        page_size: 2,
        page_token: token.into(),
        ..Default::default()
    };
    let first = ok(erin.query_audit(q("")).await);
    assert_eq!(first.events.len(), 2);
    let token = first.next_page_token.clone();
    assert!(!token.is_empty());
    let second = ok(erin.query_audit(q(&token)).await);
    assert_eq!(second.events.len(), 1);

    let invalid = Code::InvalidArgument;
    refused(j.grpc("carol").audit.query_audit(q(&token)).await, invalid);
    let mut other = q(&token);
    other.kind = "request.approved".into();
    refused(erin.query_audit(other).await, invalid);
    let mut tampered = token.clone();
    tampered.insert(0, 'x');
    refused(erin.query_audit(q(&tampered)).await, invalid);
    // A list page token is not an audit page token.
    let list_token = ok(j
        .grpc("erin")
        .requests
        .list_requests(v1::ListRequestsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await)
    .next_page_token;
    refused(erin.query_audit(q(&list_token)).await, invalid);
    for bad in [
        v1::QueryAuditRequest {
            page_size: 1001,
            ..Default::default()
        },
        v1::QueryAuditRequest {
            request_id: "nope".into(),
            ..Default::default()
        },
        v1::QueryAuditRequest {
            chain_mode: true,
            chain_after_seq: -1,
            ..Default::default()
        },
    ] {
        refused(erin.query_audit(bad).await, invalid);
    }
    let rest = j.rest("erin");
    for q in [
        "since=yesterday",
        "until=2025-13-01T00:00:00Z",
        "pageSize=1001",
        "oldestFirst=maybe",
        "chainMode=true&chainAfterSeq=-1",
        "requestId=nope",
    ] {
        let resp = rest.get(&format!("/api/v1/audit?{q}")).await;
        rest_error(&resp, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT");
    }
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_and_principal_rpcs_refuse_missing_and_oversized_fields() {
    let j = Jitsudo::start().await;
    let mut carol = j.grpc("carol");
    let fingerprint = ok(carol
        .policies
        .list_policies(v1::ListPoliciesRequest {})
        .await)
    .policy_version;
    let log = j.audit_log().await;
    let invalid = Code::InvalidArgument;
    let apply = |name: &str, rego: &str| v1::ApplyPolicyRequest {
        name: name.into(),
        rego: rego.into(),
    };
    let good = "package jitsudo.lib.x\n\nanswer := 1\n";
    refused(carol.policies.apply_policy(apply("", good)).await, invalid);
    refused(
        carol
            .policies
            .apply_policy(apply(&"n".repeat(129), good))
            .await,
        invalid,
    );
    let huge = format!("{good}# {}\n", "x".repeat(256 * 1024));
    refused(
        carol.policies.apply_policy(apply("huge", &huge)).await,
        invalid,
    );
    let msg = refused(
        carol
            .policies
            .apply_policy(apply(
                "approval",
                "package jitsudo.approval\n\napprovals_required := \n",
            ))
            .await,
        invalid,
    );
    assert!(msg.contains("does not compile"), "{msg}");
    refused(
        carol
            .policies
            .apply_policy(apply("typo", "package jitsudo.aproval\n\nx := 1\n"))
            .await,
        invalid,
    );
    refused(
        carol
            .policies
            .apply_policy(apply(
                "v0",
                "package jitsudo.eligibility\n\nallow { true }\n",
            ))
            .await,
        invalid,
    );
    for name in ["", "no-such-policy"] {
        let code = if name.is_empty() {
            invalid
        } else {
            Code::NotFound
        };
        refused(
            carol
                .policies
                .get_policy(v1::GetPolicyRequest { name: name.into() })
                .await,
            code,
        );
        refused(
            carol
                .policies
                .delete_policy(v1::DeletePolicyRequest { name: name.into() })
                .await,
            code,
        );
    }
    for input in [
        "not json".to_owned(),
        "{}".to_owned(),
        format!("\"{}\"", "x".repeat(64 * 1024)),
    ] {
        refused(
            carol
                .policies
                .eval_policy(v1::EvalPolicyRequest { input_json: input })
                .await,
            invalid,
        );
    }
    let tier = |subject: &str, reason: &str| v1::SetTrustTierRequest {
        subject: subject.into(),
        trust_tier: 1,
        reason: reason.into(),
    };
    refused(
        carol.principals.set_trust_tier(tier("", "x")).await,
        invalid,
    );
    refused(
        carol
            .principals
            .set_trust_tier(tier(&"s".repeat(257), "x"))
            .await,
        invalid,
    );
    refused(
        carol
            .principals
            .set_trust_tier(tier("alice", &"r".repeat(1025)))
            .await,
        invalid,
    );
    for subject in [String::new(), "s".repeat(257)] {
        refused(
            carol
                .principals
                .get_principal(v1::GetPrincipalRequest { subject })
                .await,
            invalid,
        );
    }

    // REST: a broken policy is 400 with the compiler's message; a missing one is 404.
    let rest = j.rest("carol");
    let resp = rest
        .put(
            "/api/v1/policies/approval",
            json!({"rego": "package jitsudo.approval\n\nx := \n"}),
        )
        .await;
    let msg = rest_error(&resp, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT");
    assert!(msg.contains("does not compile"), "{msg}");
    let resp = rest.get("/api/v1/policies/no-such-policy").await;
    rest_error(&resp, StatusCode::NOT_FOUND, "NOT_FOUND");
    let resp = rest
        .post("/api/v1/policy-eval", json!({"inputJson": "[]"}))
        .await;
    rest_error(&resp, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT");
    let resp = rest
        .put(
            "/api/v1/principals/alice/trust-tier",
            json!({"trustTier": "high"}),
        )
        .await;
    rest_error(&resp, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT");

    let after = ok(carol
        .policies
        .list_policies(v1::ListPoliciesRequest {})
        .await);
    assert_eq!(
        after.policy_version, fingerprint,
        "the live set is unchanged"
    );
    assert_eq!(after.policies.len(), 2);
    assert_eq!(j.audit_log().await, log);
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_formatting_is_refused_in_comments_and_policies_and_names_are_nfc() {
    let j = Jitsudo::start().await;
    let pending = j.create("alice", "demo", "operator", 600).await;
    let before = j.stored(&pending.id).await;
    let mut bob = j.grpc("bob").requests;
    let msg = refused(
        bob.approve_request(v1::DecideRequest {
            id: pending.id.clone(),
            comment: "looks fine\u{202E}".into(),
        })
        .await,
        Code::InvalidArgument,
    );
    assert!(msg.contains("comment") && msg.contains("U+202E"), "{msg}");
    assert_eq!(j.stored(&pending.id).await, before, "nothing changed");

    let mut carol = j.grpc("carol").policies;
    let apply = |name: &str, rego: &str| v1::ApplyPolicyRequest {
        name: name.into(),
        rego: rego.into(),
    };
    // Trojan Source: code that reads differently from what runs.
    let msg = refused(
        carol
            .apply_policy(apply(
                "lib",
                "package jitsudo.lib.trojan\n\nanswer := \"a\u{202E}b\"\n",
            ))
            .await,
        Code::InvalidArgument,
    );
    assert!(msg.contains("rego") && msg.contains("U+202E"), "{msg}");
    // Tabs and line breaks are what source is made of.
    ok(carol
        .apply_policy(apply(
            "cafe\u{301}",
            "package jitsudo.lib.tabs\n\n\tanswer := 1\r\n",
        ))
        .await);
    // The decomposed name was stored composed: either spelling finds it.
    for name in ["caf\u{e9}", "cafe\u{301}"] {
        let got = ok(carol
            .get_policy(v1::GetPolicyRequest { name: name.into() })
            .await);
        assert_eq!(got.name, "caf\u{e9}");
    }
}
