//! The authorization matrix of docs/security.md, cell by cell, and the rules around it: nobody
//! approves their own request, admins are not approvers by virtue of being admins, nobody
//! changes their own trust tier, and every authorization refusal is audited as `authz.denied`.

use std::collections::BTreeMap;

use jitsudo_proto::v1;
use reqwest::StatusCode;
use serde_json::json;
use tonic::{Code, Status};

use crate::harness::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Requester,
    Approver,
    Other,
    Auditor,
    Admin,
}

const ROLES: [Role; 5] = [
    Role::Requester,
    Role::Approver,
    Role::Other,
    Role::Auditor,
    Role::Admin,
];

impl Role {
    /// The person in this column for requests of alice: bob is an approver of them, mallory
    /// an engineer like alice, erin an auditor, carol an admin.
    fn user(self) -> &'static str {
        match self {
            Role::Requester => "alice",
            Role::Approver => "bob",
            Role::Other => "mallory",
            Role::Auditor => "erin",
            Role::Admin => "carol",
        }
    }

    /// Somebody who is not this person.
    fn somebody_else(self) -> &'static str {
        if self == Role::Requester {
            "bob"
        } else {
            "alice"
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// The call succeeds.
    Ok,
    /// PERMISSION_DENIED.
    No,
    /// Authorized, then refused for another reason (there is nothing to do).
    Passes(Code),
}

const Y: Expect = Expect::Ok;
const N: Expect = Expect::No;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    CreateRequest,
    GetRequest,
    WatchRequest,
    ListMine,
    ListAwaitingMyApproval,
    ListSomebodyElses,
    ApproveRequest,
    DenyRequest,
    CancelRequest,
    RevokeRequest,
    ExtendRequest,
    ApproveExtension,
    DenyExtension,
    GetCredentials,
    ListPolicies,
    GetPolicy,
    EvalPolicy,
    ApplyPolicy,
    DeletePolicy,
    ReloadPolicies,
    QueryAudit,
    VerifyAudit,
    WhoAmI,
    GetOwnPrincipal,
    GetSomebodyElsesPrincipal,
    SetSomebodyElsesTrustTier,
    SetOwnTrustTier,
    GetVersion,
    GetNodeStatus,
    GetClusterStatus,
    ListProviders,
    ListActors,
    ListDeadLetters,
    RedriveDeadLetter,
}

/// docs/security.md, "Authorization matrix": requester, approver, other, auditor, admin.
const MATRIX: &[(Op, [Expect; 5])] = &[
    (Op::CreateRequest, [Y, Y, Y, Y, Y]),
    (Op::GetRequest, [Y, Y, N, Y, Y]),
    (Op::WatchRequest, [Y, Y, N, Y, Y]),
    (Op::ListMine, [Y, Y, Y, Y, Y]),
    (Op::ListAwaitingMyApproval, [Y, Y, Y, Y, Y]),
    (Op::ListSomebodyElses, [N, N, N, Y, Y]),
    (Op::ApproveRequest, [N, Y, N, N, N]),
    (Op::DenyRequest, [N, Y, N, N, N]),
    (Op::CancelRequest, [Y, N, N, N, N]),
    (Op::RevokeRequest, [Y, Y, N, N, Y]),
    (Op::ExtendRequest, [Y, N, N, N, N]),
    (Op::ApproveExtension, [N, Y, N, N, N]),
    (Op::DenyExtension, [N, Y, N, N, N]),
    (Op::GetCredentials, [Y, N, N, N, N]),
    (Op::ListPolicies, [N, N, N, Y, Y]),
    (Op::GetPolicy, [N, N, N, Y, Y]),
    (Op::EvalPolicy, [N, N, N, Y, Y]),
    (Op::ApplyPolicy, [N, N, N, N, Y]),
    (Op::DeletePolicy, [N, N, N, N, Y]),
    (Op::ReloadPolicies, [N, N, N, N, Y]),
    (Op::QueryAudit, [N, N, N, Y, Y]),
    (Op::VerifyAudit, [N, N, N, Y, Y]),
    (Op::WhoAmI, [Y, Y, Y, Y, Y]),
    (Op::GetOwnPrincipal, [Y, Y, Y, Y, Y]),
    (Op::GetSomebodyElsesPrincipal, [N, N, N, Y, Y]),
    (Op::SetSomebodyElsesTrustTier, [N, N, N, N, Y]),
    (Op::SetOwnTrustTier, [N, N, N, N, N]),
    (Op::GetVersion, [Y, Y, Y, Y, Y]),
    (Op::GetNodeStatus, [N, N, N, Y, Y]),
    (Op::GetClusterStatus, [N, N, N, Y, Y]),
    (Op::ListProviders, [N, N, N, Y, Y]),
    (Op::ListActors, [N, N, N, Y, Y]),
    (Op::ListDeadLetters, [N, N, N, Y, Y]),
    (
        Op::RedriveDeadLetter,
        [N, N, N, N, Expect::Passes(Code::FailedPrecondition)],
    ),
];

/// What a cell acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    Nothing,
    /// alice's PENDING `operator` request.
    Pending,
    /// alice's ACTIVE `operator` request, approved by bob.
    Active,
    /// As `Active`, with extension 1 awaiting a decision.
    PendingExtension,
    /// An applied policy named `matrix-probe`.
    Probe,
}

impl Op {
    fn needs(self) -> Needs {
        match self {
            Op::ApproveRequest | Op::DenyRequest | Op::CancelRequest => Needs::Pending,
            Op::GetRequest
            | Op::WatchRequest
            | Op::RevokeRequest
            | Op::ExtendRequest
            | Op::GetCredentials => Needs::Active,
            Op::ApproveExtension | Op::DenyExtension => Needs::PendingExtension,
            Op::DeletePolicy => Needs::Probe,
            _ => Needs::Nothing,
        }
    }

    /// A successful call changes what it acts on, so allowed cells get their own.
    fn changes_its_target(self) -> bool {
        matches!(
            self,
            Op::ApproveRequest
                | Op::DenyRequest
                | Op::CancelRequest
                | Op::RevokeRequest
                | Op::ExtendRequest
                | Op::ApproveExtension
                | Op::DenyExtension
                | Op::DeletePolicy
        )
    }
}

const PROBE: &str = "package jitsudo.lib.probe\n\nanswer := 42\n";

#[derive(Clone, Default)]
struct Target {
    id: String,
}

async fn prepare(j: &Jitsudo, needs: Needs) -> Target {
    match needs {
        Needs::Nothing => Target::default(),
        Needs::Pending => Target {
            id: j.create("alice", "demo", "operator", 600).await.id,
        },
        Needs::Active => Target {
            id: j.active_operator("alice", "demo", 600).await.id,
        },
        Needs::PendingExtension => {
            let r = j.active_operator("alice", "demo", 600).await;
            ok(j.grpc("alice")
                .requests
                .extend_request(v1::ExtendRequestRequest {
                    id: r.id.clone(),
                    by_seconds: 60,
                    reason: "a little longer".into(),
                })
                .await);
            Target { id: r.id }
        }
        Needs::Probe => {
            j.state
                .engine
                .policy()
                .apply("matrix-probe", PROBE, "test-setup")
                .await
                .expect("the probe compiles");
            Target::default()
        }
    }
}

fn eval_input() -> String {
    json!({
        "requester": {"subject": "alice", "email": "alice@example.com", "email_verified": true,
                      "groups": ["engineering"], "trust_tier": 0},
        "request": {"provider": "demo", "role": "operator", "scope": "staging",
                    "duration_seconds": 600, "reason": "x", "ticket": null,
                    "break_glass": false, "metadata": {}},
        "approver": null,
        "approvals": [],
        "now": "2025-06-02T09:30:00Z",
        "now_unix": 1748856600
    })
    .to_string()
}

fn unit<T>(r: Result<tonic::Response<T>, Status>) -> Result<(), Status> {
    r.map(|_| ())
}

/// Makes the call of `op` as `role` on `t`.
async fn call(j: &Jitsudo, op: Op, role: Role, t: &Target) -> Result<(), Status> {
    let mut g = j.grpc(role.user());
    let id = t.id.clone();
    match op {
        Op::CreateRequest => unit(
            g.requests
                .create_request(new_request("demo", "viewer", 60))
                .await,
        ),
        Op::GetRequest => unit(g.requests.get_request(v1::GetRequestRequest { id }).await),
        Op::WatchRequest => {
            let mut s = g
                .requests
                .watch_request(v1::WatchRequestRequest {
                    id,
                    after_version: 0,
                })
                .await?
                .into_inner();
            s.message()
                .await?
                .ok_or_else(|| Status::internal("no first event"))?;
            Ok(())
        }
        Op::ListMine => unit(
            g.requests
                .list_requests(v1::ListRequestsRequest {
                    mine: true,
                    ..Default::default()
                })
                .await,
        ),
        Op::ListAwaitingMyApproval => unit(
            g.requests
                .list_requests(v1::ListRequestsRequest {
                    awaiting_my_approval: true,
                    ..Default::default()
                })
                .await,
        ),
        Op::ListSomebodyElses => unit(
            g.requests
                .list_requests(v1::ListRequestsRequest {
                    requester: role.somebody_else().into(),
                    ..Default::default()
                })
                .await,
        ),
        Op::ApproveRequest => unit(
            g.requests
                .approve_request(v1::DecideRequest {
                    id,
                    comment: "ok".into(),
                })
                .await,
        ),
        Op::DenyRequest => unit(
            g.requests
                .deny_request(v1::DenyRequestRequest {
                    id,
                    reason: "no".into(),
                })
                .await,
        ),
        Op::CancelRequest => unit(
            g.requests
                .cancel_request(v1::CancelRequestRequest { id })
                .await,
        ),
        Op::RevokeRequest => unit(
            g.requests
                .revoke_request(v1::RevokeRequestRequest {
                    id,
                    reason: "stop".into(),
                })
                .await,
        ),
        Op::ExtendRequest => unit(
            g.requests
                .extend_request(v1::ExtendRequestRequest {
                    id,
                    by_seconds: 60,
                    reason: "more".into(),
                })
                .await,
        ),
        Op::ApproveExtension => unit(
            g.requests
                .approve_extension(v1::DecideExtensionRequest {
                    id,
                    number: 1,
                    comment: "ok".into(),
                })
                .await,
        ),
        Op::DenyExtension => unit(
            g.requests
                .deny_extension(v1::DecideExtensionRequest {
                    id,
                    number: 1,
                    comment: "no".into(),
                })
                .await,
        ),
        Op::GetCredentials => unit(
            g.requests
                .get_credentials(v1::GetCredentialsRequest { id })
                .await,
        ),
        Op::ListPolicies => unit(g.policies.list_policies(v1::ListPoliciesRequest {}).await),
        Op::GetPolicy => unit(
            g.policies
                .get_policy(v1::GetPolicyRequest {
                    name: "approval".into(),
                })
                .await,
        ),
        Op::EvalPolicy => unit(
            g.policies
                .eval_policy(v1::EvalPolicyRequest {
                    input_json: eval_input(),
                })
                .await,
        ),
        Op::ApplyPolicy => unit(
            g.policies
                .apply_policy(v1::ApplyPolicyRequest {
                    name: "matrix-applied".into(),
                    rego: PROBE.replace("probe", "applied"),
                })
                .await,
        ),
        Op::DeletePolicy => unit(
            g.policies
                .delete_policy(v1::DeletePolicyRequest {
                    name: "matrix-probe".into(),
                })
                .await,
        ),
        Op::ReloadPolicies => unit(g.admin.reload_policies(v1::ReloadPoliciesRequest {}).await),
        Op::QueryAudit => unit(g.audit.query_audit(v1::QueryAuditRequest::default()).await),
        Op::VerifyAudit => unit(
            g.audit
                .verify_audit(v1::VerifyAuditRequest::default())
                .await,
        ),
        Op::WhoAmI => unit(g.principals.who_am_i(v1::WhoAmIRequest {}).await),
        Op::GetOwnPrincipal => unit(
            g.principals
                .get_principal(v1::GetPrincipalRequest {
                    subject: role.user().into(),
                })
                .await,
        ),
        Op::GetSomebodyElsesPrincipal => unit(
            g.principals
                .get_principal(v1::GetPrincipalRequest {
                    subject: role.somebody_else().into(),
                })
                .await,
        ),
        Op::SetSomebodyElsesTrustTier => unit(
            g.principals
                .set_trust_tier(v1::SetTrustTierRequest {
                    subject: "zed".into(),
                    trust_tier: 3,
                    reason: "matrix".into(),
                })
                .await,
        ),
        Op::SetOwnTrustTier => unit(
            g.principals
                .set_trust_tier(v1::SetTrustTierRequest {
                    subject: role.user().into(),
                    trust_tier: 9,
                    reason: "promote myself".into(),
                })
                .await,
        ),
        Op::GetVersion => unit(g.admin.get_version(v1::GetVersionRequest {}).await),
        Op::GetNodeStatus => unit(g.admin.get_node_status(v1::GetNodeStatusRequest {}).await),
        Op::GetClusterStatus => unit(
            g.admin
                .get_cluster_status(v1::GetClusterStatusRequest {})
                .await,
        ),
        Op::ListProviders => unit(g.admin.list_providers(v1::ListProvidersRequest {}).await),
        Op::ListActors => unit(g.admin.list_actors(v1::ListActorsRequest {}).await),
        Op::ListDeadLetters => unit(
            g.admin
                .list_dead_letters(v1::ListDeadLettersRequest {
                    sink: String::new(),
                    limit: 10,
                })
                .await,
        ),
        Op::RedriveDeadLetter => unit(
            g.admin
                .redrive_dead_letter(v1::RedriveDeadLetterRequest { id: 1 })
                .await,
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_matrix_holds_cell_by_cell() {
    let j = Jitsudo::start().await;
    // Refused cells share one target of each kind; it must come out of the matrix unchanged.
    let mut shared = BTreeMap::new();
    for needs in [
        Needs::Pending,
        Needs::Active,
        Needs::PendingExtension,
        Needs::Probe,
    ] {
        shared.insert(format!("{needs:?}"), prepare(&j, needs).await);
    }
    let mut snapshots = BTreeMap::new();
    for (k, t) in &shared {
        if !t.id.is_empty() {
            snapshots.insert(k.clone(), j.stored(&t.id).await);
        }
    }

    let mut failures = Vec::new();
    let mut refusals: BTreeMap<&str, usize> = BTreeMap::new();
    for (op, row) in MATRIX {
        for (role, expect) in ROLES.iter().zip(row) {
            let target = if *expect != N && op.changes_its_target() {
                prepare(&j, op.needs()).await
            } else {
                shared
                    .get(&format!("{:?}", op.needs()))
                    .cloned()
                    .unwrap_or_default()
            };
            let got = call(&j, *op, *role, &target).await;
            let verdict = match (expect, &got) {
                (Expect::Ok, Ok(())) => None,
                (Expect::No, Err(s)) if s.code() == Code::PermissionDenied => {
                    *refusals.entry(role.user()).or_default() += 1;
                    None
                }
                (Expect::Passes(code), Err(s)) if s.code() == *code => None,
                _ => Some(format!(
                    "{op:?} as {role:?} ({}): expected {expect:?}, got {:?}",
                    role.user(),
                    got.map_err(|s| (s.code(), s.message().to_owned()))
                )),
            };
            failures.extend(verdict);
        }
    }
    assert!(
        failures.is_empty(),
        "cells that do not hold:\n{}",
        failures.join("\n")
    );

    // Refusals changed nothing: the shared targets are as they were.
    for (k, before) in &snapshots {
        let id = before.id.to_string();
        assert_eq!(&j.stored(&id).await, before, "{k} changed");
    }
    // And each was audited (the first five per person and minute one by one).
    for (user, n) in refusals {
        let audited = j.denials(user).await.len();
        assert!(
            audited >= n.min(5) && audited <= n,
            "{user}: {n} refusals, {audited} authz.denied events"
        );
    }
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_approves_or_denies_their_own_request_under_any_identity() {
    let j = Jitsudo::start().await;
    // bob is an approver, but not of his own request.
    let r = j.create("bob", "demo", "operator", 600).await;
    let before = j.stored(&r.id).await;
    let decide = |id: &str| v1::DecideRequest {
        id: id.into(),
        comment: "self".into(),
    };
    let msg = refused(
        j.grpc("bob").requests.approve_request(decide(&r.id)).await,
        Code::PermissionDenied,
    );
    assert!(msg.contains("own request"), "{msg}");
    refused(
        j.grpc("bob")
            .requests
            .deny_request(v1::DenyRequestRequest {
                id: r.id.clone(),
                reason: "self".into(),
            })
            .await,
        Code::PermissionDenied,
    );
    // Another subject with bob's verified email is bob.
    refused(
        j.grpc("bob-alt")
            .requests
            .approve_request(decide(&r.id))
            .await,
        Code::PermissionDenied,
    );
    let resp = j
        .rest("bob")
        .post(&format!("/api/v1/requests/{}/approve", r.id), json!({}))
        .await;
    rest_error(&resp, StatusCode::FORBIDDEN, "PERMISSION_DENIED");
    assert_eq!(j.stored(&r.id).await, before);
    // An unverified email proves nothing: that caller is somebody else, and may approve.
    let unverified = j.token_for("bobby", Some("bob@example.com"), false, &["approvers"]);
    let approved = ok(j
        .grpc_with(Some(&format!("Bearer {unverified}")))
        .requests
        .approve_request(decide(&r.id))
        .await);
    assert_eq!(approved.approvals[0].approver, "bobby");
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_are_not_approvers_unless_the_policy_says_so() {
    let j = Jitsudo::start().await;
    let r = j.create("alice", "demo", "operator", 600).await;
    let mut carol = j.grpc("carol").requests;
    let msg = refused(
        carol
            .approve_request(v1::DecideRequest {
                id: r.id.clone(),
                comment: "admin override".into(),
            })
            .await,
        Code::PermissionDenied,
    );
    assert!(msg.contains("does not allow this approver"), "{msg}");
    // A person in both groups approves as an approver.
    let both = j.token_for("adam", None, false, &["jitsudo-admins", "approvers"]);
    let approved = ok(j
        .grpc_with(Some(&format!("Bearer {both}")))
        .requests
        .approve_request(v1::DecideRequest {
            id: r.id.clone(),
            comment: "as an approver".into(),
        })
        .await);
    assert_eq!(approved.approvals[0].approver, "adam");
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_sets_their_own_trust_tier_not_even_an_admin() {
    let j = Jitsudo::start().await;
    let mut carol = j.grpc("carol").principals;
    let before = j.audit_without_denials().await;
    let msg = refused(
        carol
            .set_trust_tier(v1::SetTrustTierRequest {
                subject: "carol".into(),
                trust_tier: 5,
                reason: "promotion".into(),
            })
            .await,
        Code::PermissionDenied,
    );
    assert!(msg.contains("trust tier"), "{msg}");
    let resp = j
        .rest("carol")
        .put(
            "/api/v1/principals/carol/trust-tier",
            json!({"trustTier": "5", "reason": "promotion"}),
        )
        .await;
    rest_error(&resp, StatusCode::FORBIDDEN, "PERMISSION_DENIED");
    let me = ok(carol
        .get_principal(v1::GetPrincipalRequest {
            subject: "carol".into(),
        })
        .await);
    assert_eq!(me.trust_tier, 0);
    assert!(me.updated_by.is_empty());
    assert_eq!(j.audit_without_denials().await, before);
    let denials = j.denials("carol").await;
    assert_eq!(denials.len(), 2, "{denials:?}");
    assert!(
        denials.iter().all(|d| d["rpc"] == "SetTrustTier"),
        "{denials:?}"
    );
    j.stop().await.expect("clean stop");
}

/// Attack: a plain user and an auditor apply or delete policies. Refused, and the live
/// policy set and the stored policies are exactly as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_changed_by_admins_only_and_refusals_change_nothing() {
    let j = Jitsudo::start().await;
    let stored = || async {
        ok(j.grpc("carol")
            .policies
            .list_policies(v1::ListPoliciesRequest {})
            .await)
    };
    let before = stored().await;
    for who in ["mallory", "erin"] {
        let mut p = j.grpc(who).policies;
        refused(
            p.apply_policy(v1::ApplyPolicyRequest {
                name: "approval".into(),
                rego: "package jitsudo.approval\n\nauto_approve := true\n".into(),
            })
            .await,
            Code::PermissionDenied,
        );
        refused(
            p.delete_policy(v1::DeletePolicyRequest {
                name: "eligibility".into(),
            })
            .await,
            Code::PermissionDenied,
        );
    }
    assert_eq!(stored().await, before, "the stored policies are unchanged");
    assert_eq!(
        j.state.engine.policy().current().fingerprint(),
        before.policy_version,
        "the live set is unchanged"
    );
    j.stop().await.expect("clean stop");
}

/// Attack: an admin who is also an approver approves their own request. Being an admin
/// (or sharing the approvers group) never makes one's own request approvable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_approver_cannot_approve_their_own_request() {
    let j = Jitsudo::start().await;
    let token = j.token_for(
        "root-admin",
        Some("root@example.com"),
        true,
        &["jitsudo-admins", "approvers", "engineering"],
    );
    let mut admin = j.grpc_with(Some(&format!("Bearer {token}"))).requests;
    let r = ok(admin
        .create_request(new_request("cloud", "operator", 600))
        .await);
    let before = j.audit_without_denials().await;
    let msg = refused(
        admin
            .approve_request(v1::DecideRequest {
                id: r.id.clone(),
                comment: "I am the admin".into(),
            })
            .await,
        Code::PermissionDenied,
    );
    assert!(msg.contains("own request"), "{msg}");
    assert_eq!(j.audit_without_denials().await, before, "nothing changed");
    assert_eq!(
        j.stored(&r.id).await.state,
        jitsudo_actors::domain::State::Pending
    );
    j.stop().await.expect("clean stop");
}

/// Attack: one person with two subjects the operator configured as one
/// (`authz.same_person`) approves their own request, or raises their other login's tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_links_are_one_person_for_approvals_and_trust_tiers() {
    let j = Jitsudo::start_with(|c| {
        c.authz.same_person = vec![
            vec!["alice".into(), "alice-approver".into()],
            vec!["carol".into(), "carol-breakglass".into()],
        ];
    })
    .await;
    let r = j.create("alice", "cloud", "operator", 600).await;
    let other = j.token_for("alice-approver", None, false, &["approvers"]);
    let mut linked = j.grpc_with(Some(&format!("Bearer {other}"))).requests;
    let before = j.audit_without_denials().await;
    let msg = refused(
        linked
            .approve_request(v1::DecideRequest {
                id: r.id.clone(),
                comment: "me".into(),
            })
            .await,
        Code::PermissionDenied,
    );
    assert!(msg.contains("own request"), "{msg}");
    let msg = refused(
        j.grpc("carol")
            .principals
            .set_trust_tier(v1::SetTrustTierRequest {
                subject: "carol-breakglass".into(),
                trust_tier: 9,
                reason: "mine".into(),
            })
            .await,
        Code::PermissionDenied,
    );
    assert!(msg.contains("trust tier"), "{msg}");
    assert_eq!(j.audit_without_denials().await, before, "nothing changed");
    // bob is not linked to alice: his approval counts.
    ok(j.grpc("bob")
        .requests
        .approve_request(v1::DecideRequest {
            id: r.id.clone(),
            comment: String::new(),
        })
        .await);
    j.stop().await.expect("clean stop");
}

/// Attack: an admin raises the trust tier of their own second login (another subject with
/// the same verified email). Once that login has been seen, it is the same person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_cannot_set_the_trust_tier_of_their_second_login() {
    let j = Jitsudo::start().await;
    let alt = j.token_for(
        "carol-alt",
        Some("Carol@Example.com"),
        true,
        &["engineering"],
    );
    let mut carol_alt = j.grpc_with(Some(&format!("Bearer {alt}"))).principals;
    ok(carol_alt.who_am_i(v1::WhoAmIRequest {}).await);
    // An unverified email never links: "carol-unverified" is somebody else.
    let unverified = j.token_for("carol-unverified", Some("carol@example.com"), false, &[]);
    let mut other = j
        .grpc_with(Some(&format!("Bearer {unverified}")))
        .principals;
    ok(other.who_am_i(v1::WhoAmIRequest {}).await);

    let mut carol = j.grpc("carol").principals;
    let before = j.audit_without_denials().await;
    let msg = refused(
        carol
            .set_trust_tier(v1::SetTrustTierRequest {
                subject: "carol-alt".into(),
                trust_tier: 5,
                reason: "my other account".into(),
            })
            .await,
        Code::PermissionDenied,
    );
    assert!(msg.contains("trust tier"), "{msg}");
    assert_eq!(j.audit_without_denials().await, before, "nothing changed");
    let set = ok(carol
        .set_trust_tier(v1::SetTrustTierRequest {
            subject: "carol-unverified".into(),
            trust_tier: 1,
            reason: "a different person".into(),
        })
        .await);
    assert_eq!(set.trust_tier, 1);
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_refusals_are_audited_as_authz_denied_and_bad_input_is_not() {
    let j = Jitsudo::start().await;
    let r = j.create("alice", "demo", "operator", 600).await;
    let mut mallory = j.grpc("mallory");
    refused(
        mallory
            .requests
            .get_request(v1::GetRequestRequest { id: r.id.clone() })
            .await,
        Code::PermissionDenied,
    );
    refused(
        mallory
            .requests
            .approve_request(v1::DecideRequest {
                id: r.id.clone(),
                comment: String::new(),
            })
            .await,
        Code::PermissionDenied,
    );
    let resp = j.rest("mallory").get("/api/v1/audit").await;
    rest_error(&resp, StatusCode::FORBIDDEN, "PERMISSION_DENIED");
    // Bad input is refused before any authorization decision and is not audited.
    refused(
        mallory
            .requests
            .get_request(v1::GetRequestRequest { id: "x".into() })
            .await,
        Code::InvalidArgument,
    );

    let denials = j.denials("mallory").await;
    let seen: Vec<(&str, Option<&str>)> = denials
        .iter()
        .map(|d| (d["rpc"].as_str().unwrap_or(""), d["request_id"].as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("GetRequest", Some(r.id.as_str())),
            ("ApproveRequest", Some(r.id.as_str())),
            ("QueryAudit", None),
        ]
    );
    for d in &denials {
        assert!(!d["reason"].as_str().unwrap_or("").is_empty(), "{d}");
    }
    // Auditors find them through QueryAudit.
    let found = ok(j
        .grpc("erin")
        .audit
        .query_audit(v1::QueryAuditRequest {
            kind: "authz.denied".into(),
            actor: "mallory".into(),
            ..Default::default()
        })
        .await);
    assert_eq!(found.events.len(), 3, "{:?}", found.events);
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_is_audited_five_at_a_time_per_person_and_minute() {
    let j = Jitsudo::start().await;
    let minute = || chrono::Utc::now().timestamp() / 60;
    let started = minute();
    let mut mallory = j.grpc("mallory").audit;
    for _ in 0..8 {
        refused(
            mallory
                .verify_audit(v1::VerifyAuditRequest::default())
                .await,
            Code::PermissionDenied,
        );
    }
    let audited = j.denials("mallory").await.len();
    if minute() == started {
        assert_eq!(audited, 5);
    } else {
        // The flood straddled a minute: each minute writes at most five.
        assert!((5..=8).contains(&audited), "{audited}");
    }
    // Someone else's refusals are counted separately.
    refused(
        j.grpc("alice")
            .audit
            .verify_audit(v1::VerifyAuditRequest::default())
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(j.denials("alice").await.len(), 1);
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_refuses_what_the_matrix_refuses_with_403_and_a_json_error() {
    let j = Jitsudo::start().await;
    let r = j.create("alice", "demo", "operator", 600).await;
    let alice = j.rest("alice");
    let mallory = j.rest("mallory");
    let cases = [
        mallory.get(&format!("/api/v1/requests/{}", r.id)).await,
        mallory
            .post(&format!("/api/v1/requests/{}/cancel", r.id), json!({}))
            .await,
        mallory
            .post(&format!("/api/v1/requests/{}/approve", r.id), json!({}))
            .await,
        alice.get("/api/v1/requests?requester=bob").await,
        alice.get("/api/v1/policies").await,
        alice.get("/api/v1/policies/approval").await,
        alice
            .put("/api/v1/policies/mine", json!({"rego": PROBE}))
            .await,
        alice.delete("/api/v1/policies/approval").await,
        alice
            .post("/api/v1/policy-eval", json!({"inputJson": eval_input()}))
            .await,
        alice.get("/api/v1/audit").await,
        alice.post("/api/v1/audit/verify", json!({})).await,
        alice.get("/api/v1/principals/bob").await,
        alice
            .put(
                "/api/v1/principals/bob/trust-tier",
                json!({"trustTier": 1, "reason": "x"}),
            )
            .await,
    ];
    for resp in &cases {
        rest_error(resp, StatusCode::FORBIDDEN, "PERMISSION_DENIED");
    }
    // And allows what it allows.
    let (status, body) = j.rest("erin").get("/api/v1/requests?requester=alice").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        from_json::<v1::ListRequestsResponse>(&body).requests.len(),
        1
    );
    let (status, body) = alice.get("/api/v1/principals/alice").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["subject"], "alice");
    j.stop().await.expect("clean stop");
}

/// Attack: an admin writes, under a second login with the same verified email, the policy
/// that auto-approves their own request. The same-person rule sees one person: the request
/// is flagged for review and listed as needing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_written_under_a_second_login_is_self_benefit() {
    let j = Jitsudo::start().await;
    let second = j.token_for(
        "alice-admin",
        Some("Alice@Example.com"),
        true,
        &["jitsudo-admins"],
    );
    let mut admin = j.grpc_with(Some(&format!("Bearer {second}"))).policies;
    ok(admin
        .apply_policy(v1::ApplyPolicyRequest {
            name: "approval".into(),
            rego: APPROVAL.into(),
        })
        .await);
    // Alice herself (alice@example.com, verified) asks for what that policy approves.
    let r = j.create("alice", "demo", "viewer", 600).await;
    let active = j.wait_state(&r.id, St::Active).await;
    assert_eq!(
        active.review_reason, "auto-approved by a policy its requester wrote",
        "{active:?}"
    );
    let listed = ok(j
        .grpc("erin")
        .requests
        .list_requests(v1::ListRequestsRequest {
            needs_review: true,
            ..Default::default()
        })
        .await);
    assert!(listed.requests.iter().any(|x| x.id == r.id), "{listed:?}");
    // Someone else's request under the same policy is not.
    let other = j.create("bob", "demo", "viewer", 600).await;
    assert_eq!(j.wait_state(&other.id, St::Active).await.review_reason, "");
    j.stop().await.expect("clean stop");
}
