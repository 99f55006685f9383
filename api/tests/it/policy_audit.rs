//! PolicyService, AuditService and PrincipalService through gRPC and REST: versioned policies
//! that take effect, dry runs, the audit log filtered and paged, its chain verified by the
//! client with `jitsudo_proto::audit` and by the server, and trust tiers.

use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;
use jitsudo_proto::audit::{AuditRecord, ChainLink, ChainVerifier, key_id, verify_checkpoint};
use jitsudo_proto::v1;
use reqwest::StatusCode;
use serde_json::json;
use tonic::Code;

use crate::harness::*;

const HELPERS: &str = "package jitsudo.lib.helpers\n\nteams := {\"engineering\"}\n";

fn eval_input(
    requester: &str,
    groups: &[&str],
    role: &str,
    approver: Option<(&str, &[&str])>,
) -> String {
    let person = |s: &str, g: &[&str]| {
        json!({"subject": s, "email": format!("{s}@example.com"), "email_verified": true,
               "groups": g, "trust_tier": 0})
    };
    json!({
        "requester": person(requester, groups),
        "request": {"provider": "demo", "role": role, "scope": "staging",
                    "duration_seconds": 600, "reason": "x", "ticket": null,
                    "break_glass": false, "metadata": {}},
        "approver": approver.map(|(s, g)| person(s, g)),
        "approvals": [],
        "now": "2025-06-02T09:30:00Z",
        "now_unix": 1748856600
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_listed_applied_evaluated_and_deleted_through_grpc() {
    let j = Jitsudo::start().await;
    let mut carol = j.grpc("carol").policies;
    let mut erin = j.grpc("erin").policies;

    let listed = ok(erin.list_policies(v1::ListPoliciesRequest {}).await);
    let mut names: Vec<&str> = listed.policies.iter().map(|p| p.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["approval", "eligibility"]);
    assert!(
        listed
            .policies
            .iter()
            .all(|p| p.version == 1 && p.author == "test-setup")
    );
    assert!(listed.policy_version.starts_with("sha256:"));
    let approval = ok(erin
        .get_policy(v1::GetPolicyRequest {
            name: "approval".into(),
        })
        .await);
    assert_eq!(approval.rego, APPROVAL);
    assert!(approval.created_at.is_some());

    let v1_ = ok(carol
        .apply_policy(v1::ApplyPolicyRequest {
            name: "helpers".into(),
            rego: HELPERS.into(),
        })
        .await);
    assert_eq!((v1_.version, v1_.author.as_str()), (1, "carol"));
    let v2 = ok(carol
        .apply_policy(v1::ApplyPolicyRequest {
            name: "helpers".into(),
            rego: HELPERS.replace("engineering", "platform"),
        })
        .await);
    assert_eq!(v2.version, 2);
    let relisted = ok(erin.list_policies(v1::ListPoliciesRequest {}).await);
    assert_ne!(relisted.policy_version, listed.policy_version);
    let helpers = relisted
        .policies
        .iter()
        .find(|p| p.name == "helpers")
        .expect("the new policy is listed");
    assert_eq!(helpers.version, 2, "the latest version of each policy");
    let applied: Vec<String> = j
        .audit_log()
        .await
        .into_iter()
        .filter(|e| e.kind == "policy.applied" && e.actor == "carol")
        .map(|e| e.details)
        .collect();
    assert_eq!(applied.len(), 2, "{applied:?}");

    // A dry run: the full decision, the approver check, the policies that decided.
    let eval = ok(erin
        .eval_policy(v1::EvalPolicyRequest {
            input_json: eval_input(
                "alice",
                &["engineering"],
                "db-admin",
                Some(("bob", &["approvers"])),
            ),
        })
        .await);
    assert!(eval.eligible, "{eval:?}");
    assert!(eval.approver_allowed);
    assert_eq!(eval.policy_version, relisted.policy_version);
    let decision: serde_json::Value = serde_json::from_str(&eval.decision_json).expect("JSON");
    assert_eq!(decision["approvals_required"], 2, "{decision}");
    assert_eq!(decision["approver_groups"], json!(["approvers"]));
    assert!(
        eval.policies
            .iter()
            .any(|p| p.name == "approval" && p.author == "test-setup")
    );
    let not_approver = ok(erin
        .eval_policy(v1::EvalPolicyRequest {
            input_json: eval_input(
                "alice",
                &["engineering"],
                "operator",
                Some(("mallory", &["engineering"])),
            ),
        })
        .await);
    assert!(!not_approver.approver_allowed);
    let ineligible = ok(erin
        .eval_policy(v1::EvalPolicyRequest {
            input_json: eval_input("erin", &["auditors"], "operator", None),
        })
        .await);
    assert!(!ineligible.eligible);
    assert!(!ineligible.deny_reasons.is_empty(), "{ineligible:?}");

    // An applied policy governs the next request: the cloud is closed, with a reason.
    let closed = format!(
        "{ELIGIBILITY}\ndeny contains \"the cloud is closed for maintenance\" if input.request.provider == \"cloud\"\n"
    );
    ok(carol
        .apply_policy(v1::ApplyPolicyRequest {
            name: "eligibility".into(),
            rego: closed,
        })
        .await);
    let msg = refused(
        j.grpc("alice")
            .requests
            .create_request(new_request("cloud", "operator", 600))
            .await,
        Code::InvalidArgument,
    );
    assert!(msg.contains("closed for maintenance"), "{msg}");

    let deleted = ok(carol
        .delete_policy(v1::DeletePolicyRequest {
            name: "helpers".into(),
        })
        .await);
    assert!(deleted.deleted);
    refused(
        erin.get_policy(v1::GetPolicyRequest {
            name: "helpers".into(),
        })
        .await,
        Code::NotFound,
    );
    refused(
        carol
            .delete_policy(v1::DeletePolicyRequest {
                name: "helpers".into(),
            })
            .await,
        Code::NotFound,
    );
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_managed_through_rest() {
    let j = Jitsudo::start().await;
    let carol = j.rest("carol");
    let (status, body) = carol.get("/api/v1/policies").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed: v1::ListPoliciesResponse = from_json(&body);
    assert_eq!(listed.policies.len(), 2);
    let (status, body) = carol.get("/api/v1/policies/eligibility").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rego"], ELIGIBILITY);
    assert_eq!(body["version"], "1", "int64 as a string: {body}");

    let (status, body) = carol
        .put("/api/v1/policies/helpers", json!({"rego": HELPERS}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "helpers");
    assert_eq!(body["author"], "carol");
    let (status, body) = carol
        .post(
            "/api/v1/policy-eval",
            json!({"inputJson": eval_input("alice", &["engineering"], "viewer", None)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["eligible"], true, "{body}");
    let decision: serde_json::Value =
        serde_json::from_str(body["decisionJson"].as_str().expect("decision")).expect("JSON");
    assert_eq!(decision["auto_approve"], true, "{decision}");

    let (status, body) = carol.delete("/api/v1/policies/helpers").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["deleted"], true);
    let resp = carol.delete("/api/v1/policies/helpers").await;
    rest_error(&resp, StatusCode::NOT_FOUND, "NOT_FOUND");
    j.stop().await.expect("clean stop");
}

/// Some history: a request approved by bob, granted at the fake cloud, revoked by alice.
async fn history(j: &Jitsudo) -> v1::Request {
    let r = j.active_operator("alice", "cloud", 600).await;
    ok(j.grpc("alice")
        .requests
        .revoke_request(v1::RevokeRequestRequest {
            id: r.id.clone(),
            reason: "done".into(),
        })
        .await);
    j.wait_state(&r.id, St::Revoked).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_queries_filter_order_and_page_the_log() {
    let j = Jitsudo::start().await;
    let r = history(&j).await;
    j.create("dave", "demo", "operator", 600).await;
    let mut erin = j.grpc("erin").audit;

    let of_request = ok(erin
        .query_audit(v1::QueryAuditRequest {
            request_id: r.id.clone(),
            oldest_first: true,
            ..Default::default()
        })
        .await);
    assert!(of_request.events.iter().all(|e| e.request_id == r.id));
    let versions: Vec<i64> = of_request
        .events
        .iter()
        .map(|e| e.request_version)
        .filter(|v| *v > 0)
        .collect();
    assert_eq!(versions, (1..=r.version).collect::<Vec<_>>());
    assert_eq!(of_request.events[0].kind, "request.created");
    assert_eq!(of_request.events[0].actor, "alice");

    let newest_first = ok(erin
        .query_audit(v1::QueryAuditRequest {
            request_id: r.id.clone(),
            ..Default::default()
        })
        .await);
    // Compared by id: the chain entries are filled in behind the writes, between queries.
    let ids = |es: &[v1::AuditEvent]| es.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    let mut reversed = ids(&newest_first.events);
    reversed.reverse();
    assert_eq!(reversed, ids(&of_request.events));

    let by_bob = ok(erin
        .query_audit(v1::QueryAuditRequest {
            actor: "bob".into(),
            ..Default::default()
        })
        .await);
    assert!(!by_bob.events.is_empty());
    assert!(by_bob.events.iter().all(|e| e.actor == "bob"));
    let created = ok(erin
        .query_audit(v1::QueryAuditRequest {
            kind: "request.created".into(),
            ..Default::default()
        })
        .await);
    assert_eq!(created.events.len(), 2);

    // Paging through everything in twos gives the whole log once, in order.
    let whole = ok(erin
        .query_audit(v1::QueryAuditRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await);
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = ok(erin
            .query_audit(v1::QueryAuditRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await);
        paged.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(ids(&paged), ids(&whole.events));

    // A time window: nothing before the first event, everything from it.
    let first_at = of_request.events[0].at.expect("a time");
    let at =
        chrono::DateTime::from_timestamp(first_at.seconds, first_at.nanos as u32).expect("time");
    let before = (at - chrono::Duration::seconds(3600)).to_rfc3339();
    let (status, body) = j
        .rest("erin")
        .get(&format!(
            "/api/v1/audit?requestId={}&until={}",
            r.id,
            urlencode(&before)
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(from_json::<v1::QueryAuditResponse>(&body).events.len(), 0);
    let (status, body) = j
        .rest("erin")
        .get(&format!(
            "/api/v1/audit?requestId={}&since={}&oldestFirst=true",
            r.id,
            urlencode(&before)
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        ids(&from_json::<v1::QueryAuditResponse>(&body).events),
        ids(&of_request.events)
    );
    j.stop().await.expect("clean stop");
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

fn record(e: &v1::AuditEvent) -> AuditRecord {
    AuditRecord {
        id: e.id.parse().expect("an event id"),
        at_micros: e.at_micros,
        kind: e.kind.clone(),
        actor: e.actor.clone(),
        request_id: (!e.request_id.is_empty()).then(|| e.request_id.parse().expect("a request id")),
        request_version: (e.request_version != 0).then_some(e.request_version),
        node: e.node.clone(),
        details: e.details.clone(),
    }
}

fn link(e: &v1::AuditEvent) -> ChainLink {
    let c = e.chain.as_ref().expect("chain mode returns every link");
    ChainLink {
        seq: c.seq,
        prev_hash: c.prev_hash.clone(),
        hash: c.hash.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_chain_verifies_on_the_client_and_on_the_server() {
    let j = Jitsudo::start().await;
    history(&j).await;
    let mut erin = j.grpc("erin").audit;

    // Chaining and checkpoints run behind the writes: wait until both have caught up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let report = loop {
        let r = ok(erin.verify_audit(v1::VerifyAuditRequest::default()).await);
        if r.unchained == 0 && r.checkpoints > 0 && r.last_checkpoint_seq > 0 {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the chain never caught up: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(report.intact, "{report:?}");
    assert!(
        report.first_broken.is_empty() && report.checkpoint_problems.is_empty(),
        "{report:?}"
    );
    assert!(report.version_gaps.is_empty(), "{report:?}");

    // Walk the chain in pages, as `jitsudo audit verify` does.
    let mut events = Vec::new();
    let mut after = 0;
    let (checkpoints, public_key_pem) = loop {
        let page = ok(erin
            .query_audit(v1::QueryAuditRequest {
                chain_mode: true,
                chain_after_seq: after,
                page_size: 4,
                ..Default::default()
            })
            .await);
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            break (page.checkpoints, page.public_key_pem);
        }
        after = page
            .next_page_token
            .parse()
            .expect("chain mode pages on by seq");
    };
    assert!(
        events.len() as i64 >= report.chain_length,
        "{} events",
        events.len()
    );
    let mut verifier = ChainVerifier::default();
    for e in &events {
        verifier
            .check(&link(e), Some(&record(e)))
            .unwrap_or_else(|broken| panic!("{broken}"));
    }
    assert_eq!(verifier.last_seq(), events.len() as i64);

    let key = VerifyingKey::from_public_key_pem(&public_key_pem).expect("the checkpoint key");
    assert!(!checkpoints.is_empty());
    for cp in &checkpoints {
        let at = events
            .iter()
            .find(|e| e.chain.as_ref().is_some_and(|c| c.seq == cp.seq))
            .expect("each checkpoint names a link we hold");
        assert_eq!(
            link(at).hash,
            cp.hash,
            "checkpoint {} names that link's hash",
            cp.seq
        );
        let hash: [u8; 32] = cp.hash.as_slice().try_into().expect("32 bytes");
        assert!(
            verify_checkpoint(&key, cp.seq, &hash, cp.at_micros, &cp.signature),
            "checkpoint {} is signed by the published key",
            cp.seq
        );
        assert_eq!(cp.key_id, key_id(&key));
    }

    // The client check is real: one edited byte breaks the chain exactly there.
    let mut edited = events.clone();
    edited[2].details.push(' ');
    let mut verifier = ChainVerifier::default();
    let broken = edited
        .iter()
        .find_map(|e| verifier.check(&link(e), Some(&record(e))).err())
        .expect("the edit is detected");
    assert_eq!(broken.seq(), 3);

    // REST serves the same chain and the same verdict.
    let rest = j.rest("carol");
    let (status, body) = rest
        .get("/api/v1/audit?chainMode=true&chainAfterSeq=0&pageSize=1000")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let over_rest: v1::QueryAuditResponse = from_json(&body);
    assert_eq!(over_rest.events[..events.len()], events[..]);
    assert_eq!(over_rest.public_key_pem, public_key_pem);
    let (status, body) = rest.post("/api/v1/audit/verify", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["intact"], true, "{body}");

    // Anchors: the server checks what the caller already trusts, as the CLI does.
    let cp = checkpoints.last().expect("a checkpoint");
    let anchor = |hash: Vec<u8>| v1::Anchor {
        kind: v1::anchor::Kind::PinnedCheckpoint as i32,
        seq: cp.seq,
        hash,
    };
    let held = ok(erin
        .verify_audit(v1::VerifyAuditRequest {
            anchors: vec![anchor(cp.hash.clone())],
            require_checkpoint: true,
        })
        .await);
    assert!(held.intact && held.anchor_problems.is_empty(), "{held:?}");
    assert!(held.missing_checkpoint.is_empty(), "{held:?}");
    let forked = ok(erin
        .verify_audit(v1::VerifyAuditRequest {
            anchors: vec![anchor(vec![9; 32])],
            require_checkpoint: true,
        })
        .await);
    assert!(!forked.intact);
    assert_eq!(
        forked.anchor_problems,
        [
            format!(
                "pinned checkpoint {} is no longer among the log's signed checkpoints: they are append-only, so it was deleted or replaced",
                cp.seq
            ),
            format!(
                "the log disagrees with pinned checkpoint {}: the chain's hash there is different, so entries up to {} were rewritten or replaced",
                cp.seq, cp.seq
            )
        ]
    );
    let bad = erin
        .verify_audit(v1::VerifyAuditRequest {
            anchors: vec![anchor(vec![9; 31])],
            require_checkpoint: false,
        })
        .await
        .expect_err("a malformed anchor is refused");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("not 32"), "{}", bad.message());
    let (status, body) = rest
        .post(
            "/api/v1/audit/verify",
            json!({"anchors": [{"kind": "KIND_PINNED_CHECKPOINT", "seq": cp.seq, "hash": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [9u8; 32])}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("intact").is_none(), "false is left out: {body}");
    assert!(
        body["anchorProblems"][1]
            .as_str()
            .is_some_and(|p| p.contains("disagrees")),
        "{body}"
    );
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principals_see_themselves_and_admins_set_trust_tiers_that_policies_see() {
    let j = Jitsudo::start().await;
    let me = ok(j
        .grpc("alice")
        .principals
        .who_am_i(v1::WhoAmIRequest {})
        .await);
    assert_eq!(me.subject, "alice");
    assert_eq!(me.email, "alice@example.com");
    assert!(me.email_verified);
    assert_eq!(me.groups, ["engineering"]);
    assert_eq!(me.trust_tier, 0);
    assert!(!me.admin && !me.auditor);
    let carol = ok(j
        .grpc("carol")
        .principals
        .who_am_i(v1::WhoAmIRequest {})
        .await);
    assert!(carol.admin && !carol.auditor);
    let (status, body) = j.rest("erin").get("/api/v1/whoami").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // proto3 JSON leaves out default values: a missing `admin` is false.
    let erin: v1::Principal = from_json(&body);
    assert!(erin.auditor && !erin.admin, "{body}");

    let set = ok(j
        .grpc("carol")
        .principals
        .set_trust_tier(v1::SetTrustTierRequest {
            subject: "alice".into(),
            trust_tier: 2,
            reason: "completed training".into(),
        })
        .await);
    assert_eq!(
        (
            set.subject.as_str(),
            set.trust_tier,
            set.updated_by.as_str()
        ),
        ("alice", 2, "carol")
    );
    let (status, body) = j
        .rest("carol")
        .put(
            "/api/v1/principals/dave/trust-tier",
            json!({"trustTier": "1", "reason": "on call"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["trustTier"], "1");

    // The caller's tier comes from the store with each call.
    let me = ok(j
        .grpc("alice")
        .principals
        .who_am_i(v1::WhoAmIRequest {})
        .await);
    assert_eq!(me.trust_tier, 2);
    let own = ok(j
        .grpc("alice")
        .principals
        .get_principal(v1::GetPrincipalRequest {
            subject: "alice".into(),
        })
        .await);
    assert_eq!(own, set);
    let (status, body) = j.rest("erin").get("/api/v1/principals/dave").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["updatedBy"], "carol");
    // Never set: tier 0, nobody.
    let fresh = ok(j
        .grpc("erin")
        .principals
        .get_principal(v1::GetPrincipalRequest {
            subject: "nobody-yet".into(),
        })
        .await);
    assert_eq!((fresh.trust_tier, fresh.updated_by.as_str()), (0, ""));

    let changes: Vec<serde_json::Value> = j
        .audit_log()
        .await
        .into_iter()
        .filter(|e| e.kind == "principal.trust_tier_changed")
        .map(|e| {
            assert_eq!(e.actor, "carol");
            serde_json::from_str(&e.details).expect("JSON")
        })
        .collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[0]["subject"], "alice");
    assert_eq!(changes[0]["to"], 2);
    assert_eq!(changes[0]["reason"], "completed training");

    // Policies see the tier: a policy keyed on it lets tier-2 alice have `auditor-view`.
    ok(j.grpc("carol")
        .policies
        .apply_policy(v1::ApplyPolicyRequest {
            name: "tiers".into(),
            rego: "package jitsudo.approval\n\nauto_approve if {\n\tinput.requester.trust_tier >= 2\n\tinput.request.role == \"auditor-view\"\n}\n".into(),
        })
        .await);
    let r = j.create("alice", "demo", "auditor-view", 60).await;
    assert!(j.stored(&r.id).await.decision.auto_approve);
    let r = j.wait_state(&r.id, St::Active).await;
    assert!(r.auto_approved, "{r:?}");
    let r = j.create("dave", "demo", "auditor-view", 60).await;
    assert!(
        !j.stored(&r.id).await.decision.auto_approve,
        "tier 1 is not enough"
    );
    j.stop().await.expect("clean stop");
}
