//! The AWS provider in mode `identity_center` with the real AWS SDK for Rust against
//! moto_server's SSO Admin, Identity Store and IAM: the conformance suite in a fresh
//! management account per test (its own Identity Center instance, users and permission
//! set), then what is specific to it: the exact session deny a revoke writes (that user,
//! that account, sessions issued before), the permission set's own statements kept, other
//! users' assignments untouched, a standing assignment never taken over, the deny gone
//! after the session length, unknown users and permission sets refused, and a lost answer.
//!
//! moto evaluates no policy and answers every assignment SUCCEEDED at once: the deny is
//! checked by the document jitsudod wrote, and the polling of IN_PROGRESS is not reached.

use std::sync::Arc;

use aws_sdk_ssoadmin::types::{PrincipalType, TargetType};
use chrono::{TimeDelta, Utc};
use jitsudo_providers::aws::{AwsConfig, AwsMode, IdentityCenterProvider, session_denies};
use jitsudo_providers::conformance::SpecTemplate;
use jitsudo_providers::reconcile;
use jitsudo_providers::{ErrorClass, GrantRecord, GrantState, Provider, ProviderError};
use jitsudo_testkit::aws_proxy::{AwsFault, AwsFaultProxy};
use jitsudo_testkit::moto::{self, fresh_account};

use super::aws::{keys_in, sdk};

const SET: &str = "ReadOnly";
/// The permission set's own statement, which a revoke must keep.
const OWN: &str = r#"{"Version":"2012-10-17","Statement":[{"Sid":"ReadAll","Effect":"Allow","Action":"s3:Get*","Resource":"*"}]}"#;

/// One test's Identity Center: a management account with its instance, the users alice and
/// bob, the permission set `ReadOnly`, and a target account.
pub struct Center {
    pub management: String,
    pub target: String,
    pub instance: String,
    pub sso: aws_sdk_ssoadmin::Client,
    pub set_arn: String,
    pub alice: String,
    pub bob: String,
}

impl Center {
    async fn new(session: &str) -> Center {
        jitsudo_testkit::init_crypto();
        let moto = moto::moto().expect("moto_server starts");
        let management = fresh_account();
        let conf = sdk(
            &moto.url,
            keys_in(&moto.url, &management, "test-admin").await,
        )
        .await;
        let sso = aws_sdk_ssoadmin::Client::new(&conf);
        let ids = aws_sdk_identitystore::Client::new(&conf);
        let out = sso.list_instances().send().await.expect("ListInstances");
        let inst = &out.instances()[0];
        let instance = inst.instance_arn().expect("instance arn").to_owned();
        let store = inst.identity_store_id().expect("identity store").to_owned();
        let mut users = Vec::new();
        for name in ["alice", "bob"] {
            let out = ids
                .create_user()
                .identity_store_id(&store)
                .user_name(name)
                .display_name(name)
                .name(
                    aws_sdk_identitystore::types::Name::builder()
                        .given_name(name)
                        .family_name("Test")
                        .build(),
                )
                .send()
                .await
                .expect("CreateUser");
            users.push(out.user_id().to_owned());
        }
        let set = sso
            .create_permission_set()
            .instance_arn(&instance)
            .name(SET)
            .session_duration(session)
            .send()
            .await
            .expect("CreatePermissionSet");
        let set_arn = set
            .permission_set()
            .and_then(|p| p.permission_set_arn())
            .expect("permission set arn")
            .to_owned();
        sso.put_inline_policy_to_permission_set()
            .instance_arn(&instance)
            .permission_set_arn(&set_arn)
            .inline_policy(OWN)
            .send()
            .await
            .expect("PutInlinePolicyToPermissionSet");
        Center {
            management,
            target: fresh_account(),
            instance,
            sso,
            set_arn,
            alice: users[0].clone(),
            bob: users[1].clone(),
        }
    }

    fn config(&self, url: &str) -> AwsConfig {
        AwsConfig {
            mode: AwsMode::IdentityCenter,
            region: "us-east-1".into(),
            accounts: vec![self.target.clone()],
            roles: vec![SET.into(), "Admin*".into()],
            hub_role: None,
            session_seconds: None,
            profile: None,
            credentials_file: None,
            endpoint_url: Some(url.to_owned()),
            timeout_seconds: Some(5),
            instance_arn: None,
            identity_store_id: None,
            start_url: Some("https://example.awsapps.com/start".into()),
        }
    }

    async fn provider_at(&self, url: &str) -> IdentityCenterProvider {
        let moto = &moto::moto().expect("moto").url;
        IdentityCenterProvider::with_credentials(
            "aws-ic",
            &self.config(url),
            keys_in(moto, &self.management, "jitsudod").await,
        )
        .await
        .expect("the provider is configured")
    }

    async fn provider(&self) -> IdentityCenterProvider {
        self.provider_at(&moto::moto().expect("moto").url.clone())
            .await
    }

    fn template(&self) -> SpecTemplate {
        SpecTemplate {
            subject: "alice".into(),
            role: SET.into(),
            scope: self.target.clone(),
            invalid_role: "NotGrantable".into(),
            native_expiry: false,
        }
    }

    /// The users the permission set is assigned to in the target account, read with the SDK.
    async fn assigned(&self) -> Vec<String> {
        let out = self
            .sso
            .list_account_assignments()
            .instance_arn(&self.instance)
            .account_id(&self.target)
            .permission_set_arn(&self.set_arn)
            .send()
            .await
            .expect("ListAccountAssignments");
        // moto keeps a repeated assignment twice; AWS keeps one: the users, once each.
        let users: std::collections::BTreeSet<String> = out
            .account_assignments()
            .iter()
            .filter_map(|a| a.principal_id().map(str::to_owned))
            .collect();
        users.into_iter().collect()
    }

    async fn policy(&self) -> String {
        self.sso
            .get_inline_policy_for_permission_set()
            .instance_arn(&self.instance)
            .permission_set_arn(&self.set_arn)
            .send()
            .await
            .expect("GetInlinePolicyForPermissionSet")
            .inline_policy()
            .unwrap_or_default()
            .to_owned()
    }
}

jitsudo_providers::provider_conformance!(
    aws_identity_center,
    templated = async {
        let c = Center::new("PT1H").await;
        let p = Arc::new(c.provider().await);
        let t = c.template();
        (p, c, t)
    }
);

fn spec_for(c: &Center, subject: &str) -> jitsudo_providers::GrantSpec {
    SpecTemplate {
        subject: subject.into(),
        ..c.template()
    }
    .spec(std::time::Duration::from_secs(3600))
}

#[tokio::test]
async fn a_revoke_ends_that_users_sessions_in_that_account_only() {
    let c = Center::new("PT1H").await;
    let p = c.provider().await;
    let alice = spec_for(&c, "alice");
    let bob = spec_for(&c, "bob");
    let a = p.grant(&alice).await.expect("grant alice");
    p.grant(&bob).await.expect("grant bob");
    let mut both = vec![c.alice.clone(), c.bob.clone()];
    both.sort();
    assert_eq!(c.assigned().await, both);
    assert_eq!(session_denies(&c.policy().await).len(), 0);

    let before = Utc::now();
    p.revoke(&a).await.expect("revoke alice");
    assert_eq!(c.assigned().await, vec![c.bob.clone()], "bob keeps his");
    let doc: serde_json::Value = serde_json::from_str(&c.policy().await).expect("JSON");
    let statements = doc["Statement"].as_array().expect("statements");
    assert_eq!(statements.len(), 2, "{doc}");
    assert_eq!(
        statements[0]["Sid"], "ReadAll",
        "the set's own statement stays"
    );
    let deny = &statements[1];
    assert_eq!(deny["Effect"], "Deny");
    assert_eq!(deny["Action"], "*");
    assert_eq!(deny["Resource"], "*");
    let cond = &deny["Condition"];
    assert_eq!(
        cond["StringEquals"]["identitystore:userId"],
        serde_json::json!([c.alice.clone()]),
        "only alice"
    );
    assert_eq!(
        cond["StringEquals"]["aws:PrincipalAccount"],
        c.target.as_str()
    );
    let t = chrono::DateTime::parse_from_rfc3339(
        cond["DateLessThan"]["aws:TokenIssueTime"]
            .as_str()
            .expect("a time"),
    )
    .expect("RFC 3339");
    // Sessions issued up to the revoke are matched; the margin is seconds, not more.
    assert!(t > before && t <= Utc::now() + TimeDelta::seconds(7), "{t}");
    // A second revoke changes nothing.
    p.revoke(&a).await.expect("revoke again");
    assert_eq!(session_denies(&c.policy().await).len(), 1);
}

#[tokio::test]
async fn an_overlapping_grant_keeps_the_assignment_and_no_deny_is_written() {
    let c = Center::new("PT1H").await;
    let p = c.provider().await;
    let first = spec_for(&c, "alice");
    let second = spec_for(&c, "alice");
    let a = p.grant(&first).await.expect("first");
    let b = p.grant(&second).await.expect("second");
    assert_eq!(c.assigned().await, vec![c.alice.clone()], "one assignment");
    p.revoke(&a).await.expect("revoke the first");
    assert_eq!(c.assigned().await, vec![c.alice.clone()]);
    assert!(
        session_denies(&c.policy().await).is_empty(),
        "the second grant still holds these sessions"
    );
    p.revoke(&b).await.expect("revoke the second");
    assert!(c.assigned().await.is_empty());
    assert_eq!(session_denies(&c.policy().await).len(), 1);
}

#[tokio::test]
async fn a_standing_assignment_is_neither_taken_over_nor_removed() {
    let c = Center::new("PT1H").await;
    c.sso
        .create_account_assignment()
        .instance_arn(&c.instance)
        .target_id(&c.target)
        .target_type(TargetType::AwsAccount)
        .permission_set_arn(&c.set_arn)
        .principal_type(PrincipalType::User)
        .principal_id(&c.bob)
        .send()
        .await
        .expect("a standing assignment for bob");
    let p = c.provider().await;
    let spec = spec_for(&c, "bob");
    match p.grant(&spec).await {
        Err(e @ ProviderError::Invalid { .. }) => {
            assert_eq!(e.class(), ErrorClass::Permanent);
            assert!(e.to_string().contains("did not make"), "{e}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A revoke of that grant id (the engine ends the refused request) leaves it too.
    p.revoke(&GrantRecord::from_spec(&spec))
        .await
        .expect("revoke");
    assert_eq!(c.assigned().await, vec![c.bob.clone()]);
    assert!(session_denies(&c.policy().await).is_empty());
}

#[tokio::test]
async fn unknown_users_and_permission_sets_are_refused_with_what_to_do() {
    let c = Center::new("PT1H").await;
    let p = c.provider().await;
    let carol = spec_for(&c, "carol");
    let e = p.validate(&carol).await.expect_err("no user carol");
    assert!(
        matches!(
            &e,
            ProviderError::Invalid {
                field: "subject",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("carol"), "{e}");
    let admin = jitsudo_providers::GrantSpec {
        role: "AdminProd".into(),
        ..spec_for(&c, "alice")
    };
    let e = p
        .validate(&admin)
        .await
        .expect_err("no such permission set");
    assert!(
        e.to_string().contains("AdminProd") && e.to_string().contains("does not exist"),
        "{e}"
    );
    let elsewhere = jitsudo_providers::GrantSpec {
        scope: fresh_account(),
        ..spec_for(&c, "alice")
    };
    let e = p
        .validate(&elsewhere)
        .await
        .expect_err("account not listed");
    assert!(
        matches!(&e, ProviderError::Invalid { field: "scope", .. }),
        "{e}"
    );
    assert!(c.assigned().await.is_empty(), "nothing was assigned");
}

#[tokio::test]
async fn the_deny_leaves_once_the_sessions_it_ends_have_expired() {
    // moto takes any SessionDuration; AWS's shortest is an hour.
    let c = Center::new("PT1S").await;
    let p = c.provider().await;
    let a = p.grant(&spec_for(&c, "alice")).await.expect("grant");
    p.revoke(&a).await.expect("revoke");
    assert_eq!(session_denies(&c.policy().await).len(), 1);
    // Right after the revoke a pass keeps it: sessions issued before may still live.
    reconcile::list_all(&p).await.expect("listing");
    assert_eq!(session_denies(&c.policy().await).len(), 1, "kept too early");
    // It names sessions issued up to ~6 s from now, which last 1 s: a pass after that
    // takes it out, and the set's own statement stays.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        reconcile::list_all(&p).await.expect("listing");
        let doc = c.policy().await;
        if session_denies(&doc).is_empty() {
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&doc).unwrap(),
                serde_json::from_str::<serde_json::Value>(OWN).unwrap()
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the deny is still there after a minute: {doc}"
        );
    }
}

#[tokio::test]
async fn a_lost_answer_of_the_assignment_ends_in_one_assignment() {
    let c = Center::new("PT1H").await;
    let proxy = AwsFaultProxy::start(&moto::moto().unwrap().url).expect("the proxy starts");
    let p = c.provider_at(&proxy.url).await;
    let spec = spec_for(&c, "alice");
    proxy.fail("CreateAccountAssignment", AwsFault::DropAfterApply, 1);
    // The SDK itself may send the call again (moto then holds the assignment twice, which
    // AWS never does); else the grant fails with its outcome unknown. Either way the
    // engine's retry of the grant completes it.
    if let Err(e) = p.grant(&spec).await {
        assert_eq!(e.class(), ErrorClass::Unknown, "{e}");
    }
    let record = p.grant(&spec).await.expect("the retry completes");
    assert_eq!(p.inspect(&record).await.unwrap(), GrantState::Active);
    assert_eq!(c.assigned().await, vec![c.alice.clone()]);
    let sent = proxy.seen("CreateAccountAssignment");
    assert!(!sent.is_empty(), "the JSON protocol's action was read");
    assert_eq!(sent[0].fault, Some(AwsFault::DropAfterApply));
    assert_eq!(sent[0].param("PrincipalId"), Some(c.alice.as_str()));
    // Throttling is retryable and reaches the engine as such once the SDK gives up.
    proxy.fail("ListAccountAssignments", AwsFault::Throttle, 100);
    let e = p.inspect(&record).await.expect_err("throttled");
    assert_eq!(e.class(), ErrorClass::Retryable, "{e}");
    assert!(matches!(e, ProviderError::Throttled { .. }), "{e}");
    proxy.clear();
    // The revoke takes every copy away.
    p.revoke(&record).await.expect("revoke");
    assert!(c.assigned().await.is_empty(), "{:?}", c.assigned().await);
}

#[test]
fn each_mode_refuses_the_other_modes_keys_by_name() {
    let table = |extra: &str| -> toml::Table {
        format!(
            "name = \"a\"\nkind = \"aws\"\nregion = \"us-east-1\"\naccounts = [\"123456789012\"]\nroles = [\"ReadOnly\"]\n{extra}"
        )
        .parse()
        .unwrap()
    };
    let refused = |extra: &str| {
        jitsudo_providers::config::ProviderSection::from_table(table(extra))
            .err()
            .unwrap_or_else(|| panic!("accepted: {extra}"))
            .to_string()
    };
    let e = refused(
        "mode = \"sts\"\ninstance_arn = \"arn:aws:sso:::instance/ssoins-1234567890abcdef\"",
    );
    assert!(
        e.contains("instance_arn") && e.contains("identity_center"),
        "{e}"
    );
    let e = refused("mode = \"identity_center\"\nhub_role = \"hub\"");
    assert!(e.contains("hub_role") && e.contains("management"), "{e}");
    let e = refused("mode = \"identity_center\"\nsession_seconds = 3600");
    assert!(
        e.contains("session_seconds") && e.contains("SessionDuration"),
        "{e}"
    );
    let e = refused("mode = \"identity_center\"\ninstance_arn = \"ssoins-1\"");
    assert!(e.contains("not an Identity Center instance ARN"), "{e}");
    jitsudo_providers::config::ProviderSection::from_table(table(
        "mode = \"identity_center\"\nstart_url = \"https://x.awsapps.com/start\"",
    ))
    .expect("a table of mode identity_center");
}

#[tokio::test]
async fn a_revoke_whose_provisioning_met_a_conflict_is_retried_and_provisions_on_the_retry() {
    let c = Center::new("PT1H").await;
    let proxy = AwsFaultProxy::start(&moto::moto().unwrap().url).expect("the proxy starts");
    let p = c.provider_at(&proxy.url).await;
    let a = p.grant(&spec_for(&c, "alice")).await.expect("grant");
    proxy.fail("ProvisionPermissionSet", AwsFault::Conflict, 1);
    let e = p
        .revoke(&a)
        .await
        .expect_err("the provisioning was refused");
    assert_eq!(e.class(), ErrorClass::Retryable, "{e}");
    assert!(e.to_string().contains("ConflictException"), "{e}");
    // The deny is stored but not provisioned: the retry provisions it, though it has
    // nothing to write.
    assert_eq!(session_denies(&c.policy().await).len(), 1);
    p.revoke(&a).await.expect("the retry completes");
    let sent = proxy.seen("ProvisionPermissionSet");
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[1].fault, None);
    assert_eq!(
        sent[1].param("TargetType"),
        Some("ALL_PROVISIONED_ACCOUNTS")
    );
}

#[tokio::test]
async fn two_replicas_revoking_users_of_one_permission_set_at_once_keep_both_denies() {
    let c = Center::new("PT1H").await;
    let (p1, p2) = (c.provider().await, c.provider().await);
    let users = ["alice", "bob"];
    let mut records = Vec::new();
    for u in users {
        records.push(p1.grant(&spec_for(&c, u)).await.expect("grant"));
    }
    let (r1, r2) = tokio::join!(p1.revoke(&records[0]), p2.revoke(&records[1]));
    r1.expect("revoke on the first");
    r2.expect("revoke on the second");
    let denies = session_denies(&c.policy().await);
    let denied: std::collections::BTreeSet<&str> =
        denies.keys().map(|d| d.user_id.as_str()).collect();
    assert_eq!(
        denied,
        [c.alice.as_str(), c.bob.as_str()].into(),
        "{denies:?}"
    );
    assert!(c.assigned().await.is_empty());
    // A new grant right after is refused nothing: it waits out the deny's few seconds.
    let again = p2.grant(&spec_for(&c, "alice")).await.expect("a new grant");
    assert_eq!(p2.inspect(&again).await.unwrap(), GrantState::Active);
    let t = denies
        .iter()
        .find(|(d, _)| d.user_id == c.alice)
        .map(|(_, t)| *t)
        .unwrap();
    assert!(
        Utc::now() >= t,
        "the grant returned before the deny's time {t}"
    );
}
