//! The AWS provider (mode `sts`) with the real AWS SDK for Rust against moto_server (testkit):
//! the conformance suite in a fresh account per test, reached through a hub role as a
//! cross-account deployment would, then what is specific to AWS: the exact deny document a
//! revoke writes, another session of the same role left alone, 200 concurrent revocations
//! on one role, and the refusals of bad input.
//!
//! moto evaluates no policy, so a revoke is checked by the document jitsudod wrote, not by a
//! refused call (docs/providers.md says so too).

use std::collections::BTreeSet;
use std::sync::Arc;

use aws_credential_types::Credentials as AwsKeys;
use aws_credential_types::provider::SharedCredentialsProvider;
use chrono::{TimeDelta, Utc};
use jitsudo_providers::aws::{AwsConfig, AwsMode, AwsProvider, DENY_POLICY, GRANT_TAG, denied};
use jitsudo_providers::conformance::SpecTemplate;
use jitsudo_providers::{ErrorClass, GrantRecord, GrantSpec, GrantState, Provider, ProviderError};
use jitsudo_testkit::aws_proxy::{AwsFault, AwsFaultProxy};
use jitsudo_testkit::moto::{self, fresh_account};
use uuid::Uuid;

const REGION: &str = "us-east-1";
const ROLE: &str = "ReadOnly";
const HUB: &str = "jitsudo-hub";

/// One test's account in moto, with an IAM client of its own there.
pub struct Account {
    pub id: String,
    pub iam: aws_sdk_iam::Client,
}

fn keys(id: &str, secret: &str, token: Option<String>) -> SharedCredentialsProvider {
    SharedCredentialsProvider::new(AwsKeys::new(id, secret, token, None, "jitsudo-tests"))
}

pub async fn sdk(url: &str, creds: SharedCredentialsProvider) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(url)
        .credentials_provider(creds)
        .load()
        .await
}

/// Keys of a role session in `account`: moto files every call made with them there.
pub async fn keys_in(url: &str, account: &str, role: &str) -> SharedCredentialsProvider {
    let sts = aws_sdk_sts::Client::new(&sdk(url, keys("testing", "testing", None)).await);
    let out = sts
        .assume_role()
        .role_arn(format!("arn:aws:iam::{account}:role/{role}"))
        .role_session_name("jitsudo-tests")
        .send()
        .await
        .expect("assume a role in the test account");
    let c = out.credentials().expect("credentials");
    keys(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_owned()),
    )
}

/// A fresh account with the role `ReadOnly` (sessions up to two hours).
pub async fn account() -> Account {
    jitsudo_testkit::init_crypto();
    let moto = moto::moto().expect("moto_server starts");
    let id = fresh_account();
    let conf = sdk(&moto.url, keys_in(&moto.url, &id, "test-admin").await).await;
    let iam = aws_sdk_iam::Client::new(&conf);
    create_role(&iam, ROLE).await;
    Account { id, iam }
}

pub async fn create_role(iam: &aws_sdk_iam::Client, name: &str) {
    let trust = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
            "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"]
        }]
    });
    iam.create_role()
        .role_name(name)
        .assume_role_policy_document(trust.to_string())
        .max_session_duration(7200)
        .send()
        .await
        .expect("create the test role");
}

pub fn config(account: &str, hub: bool) -> AwsConfig {
    AwsConfig {
        mode: AwsMode::Sts,
        region: REGION.into(),
        accounts: vec![account.to_owned()],
        roles: vec![ROLE.into(), "Admin*".into()],
        hub_role: hub.then(|| HUB.to_owned()),
        session_seconds: None,
        profile: None,
        credentials_file: None,
        endpoint_url: Some(moto::moto().expect("moto").url.clone()),
        timeout_seconds: Some(5),
        instance_arn: None,
        identity_store_id: None,
        start_url: None,
    }
}

/// A provider in `a`: through the hub role from moto's default account (`hub`), or with
/// keys of the account itself.
pub async fn provider(a: &Account, hub: bool, cfg: impl FnOnce(&mut AwsConfig)) -> AwsProvider {
    let url = &moto::moto().expect("moto").url;
    let creds = if hub {
        keys("testing", "testing", None)
    } else {
        keys_in(url, &a.id, "jitsudod").await
    };
    let mut config = config(&a.id, hub);
    cfg(&mut config);
    AwsProvider::with_credentials("aws", &config, creds)
        .await
        .expect("the provider is configured")
}

pub fn template(account: &str) -> SpecTemplate {
    SpecTemplate {
        subject: "alice@example.com".into(),
        role: ROLE.into(),
        scope: account.to_owned(),
        invalid_role: "NotGrantable".into(),
        native_expiry: false,
    }
}

jitsudo_providers::provider_conformance!(
    aws_sts,
    templated = async {
        let a = account().await;
        let p = Arc::new(provider(&a, true, |_| {}).await);
        let t = template(&a.id);
        (p, a, t)
    }
);

fn spec(a: &Account, subject: &str, lifetime: TimeDelta) -> GrantSpec {
    GrantSpec {
        grant_id: Uuid::now_v7(),
        request_id: Uuid::now_v7(),
        subject: subject.into(),
        role: ROLE.into(),
        scope: a.id.clone(),
        not_after: Utc::now() + lifetime,
        metadata: Default::default(),
    }
}

/// The deny on the role as IAM holds it (URL-decoded), if any.
async fn deny_document(a: &Account, role: &str) -> Option<serde_json::Value> {
    let out = a
        .iam
        .get_role_policy()
        .role_name(role)
        .policy_name(DENY_POLICY)
        .send()
        .await
        .ok()?;
    let text = percent_encoding::percent_decode_str(out.policy_document())
        .decode_utf8()
        .expect("UTF-8")
        .into_owned();
    Some(serde_json::from_str(&text).expect("the deny is JSON"))
}

#[tokio::test]
async fn a_revoke_denies_exactly_that_grants_sessions_and_leaves_the_others() {
    let a = account().await;
    let p = provider(&a, false, |_| {}).await;
    let first = spec(&a, "alice", TimeDelta::hours(1));
    let second = spec(&a, "bob", TimeDelta::hours(1));
    let r1 = p.grant(&first).await.unwrap();
    let r2 = p.grant(&second).await.unwrap();
    // Both mint sessions; moto names each session's id after its session name.
    for r in [&r1, &r2] {
        let c = p.credentials(r).await.unwrap();
        let env = &c.env;
        let who = aws_sdk_sts::Client::new(
            &sdk(
                &moto::moto().unwrap().url,
                keys(
                    &env["AWS_ACCESS_KEY_ID"],
                    &env["AWS_SECRET_ACCESS_KEY"],
                    Some(env["AWS_SESSION_TOKEN"].clone()),
                ),
            )
            .await,
        )
        .get_caller_identity()
        .send()
        .await
        .unwrap();
        assert!(
            who.arn()
                .unwrap()
                .ends_with(&format!("assumed-role/{ROLE}/jitsudo-{}", r.grant_id)),
            "{:?}",
            who.arn()
        );
        assert_eq!(env["AWS_REGION"], REGION);
        assert!(c.expires_at <= first.not_after.max(second.not_after));
    }
    assert!(
        deny_document(&a, ROLE).await.is_none(),
        "no deny before a revoke"
    );

    p.revoke(&r1).await.unwrap();
    let doc = deny_document(&a, ROLE)
        .await
        .expect("the revoke wrote the deny");
    assert_eq!(
        doc,
        serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "JitsudoRevokedSessions",
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": {"StringEquals": {
                    format!("aws:PrincipalTag/{GRANT_TAG}"): [r1.grant_id.to_string()]
                }}
            }]
        }),
        "the deny matches the revoked grant's session tag and nothing else"
    );
    assert_eq!(p.inspect(&r1).await.unwrap(), GrantState::Gone);
    assert_eq!(p.inspect(&r2).await.unwrap(), GrantState::Active);
    p.credentials(&r2)
        .await
        .expect("the other grant still mints");
    assert!(matches!(
        p.credentials(&r1).await,
        Err(ProviderError::NotActive { .. })
    ));

    // The second revoke adds its grant; the entries leave with the tombstones.
    p.revoke(&r2).await.unwrap();
    let doc = deny_document(&a, ROLE).await.unwrap();
    assert_eq!(
        denied(&doc.to_string()),
        BTreeSet::from([r1.grant_id, r2.grant_id])
    );
}

#[tokio::test]
async fn two_hundred_concurrent_revocations_on_one_role_all_land_in_a_valid_policy() {
    let a = account().await;
    // 400 calls at once queue up in moto (one Python process, shared with the other tests):
    // a call's timeout is longer here than a real AWS call would need.
    let p = Arc::new(provider(&a, false, |c| c.timeout_seconds = Some(60)).await);
    let mut records = Vec::new();
    let grants: Vec<_> = (0..200)
        .map(|i| {
            let p = p.clone();
            let s = spec(&a, &format!("user{i}"), TimeDelta::hours(1));
            tokio::spawn(async move { p.grant(&s).await })
        })
        .collect();
    for g in grants {
        records.push(g.await.unwrap().expect("grant"));
    }
    let revokes: Vec<_> = records
        .iter()
        .cloned()
        .map(|r| {
            let p = p.clone();
            tokio::spawn(async move { p.revoke(&r).await })
        })
        .collect();
    for r in revokes {
        r.await.unwrap().expect("every revoke succeeds");
    }
    let doc = deny_document(&a, ROLE).await.expect("a deny");
    let text = doc.to_string();
    let ids: BTreeSet<Uuid> = records.iter().map(|r| r.grant_id).collect();
    assert_eq!(
        denied(&text),
        ids,
        "every revoked grant is denied, no other"
    );
    assert_eq!(doc["Statement"].as_array().unwrap().len(), 1);
    let size = text.chars().filter(|c| !c.is_whitespace()).count();
    assert!(
        size < 10_240,
        "{size} characters: over IAM's inline limit per role (moto does not enforce it)"
    );
    // Only this one inline policy was added to the role.
    let names = a
        .iam
        .list_role_policies()
        .role_name(ROLE)
        .send()
        .await
        .unwrap();
    assert_eq!(names.policy_names(), [DENY_POLICY]);
}

#[tokio::test]
async fn a_second_replica_revoking_on_the_same_role_keeps_both_entries() {
    // Two providers (two jitsudod replicas) revoke on one role at once.
    let a = account().await;
    let p1 = Arc::new(provider(&a, false, |_| {}).await);
    let p2 = Arc::new(provider(&a, false, |_| {}).await);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let p = if i % 2 == 0 { p1.clone() } else { p2.clone() };
        let s = spec(&a, &format!("u{i}"), TimeDelta::hours(1));
        tasks.push(tokio::spawn(async move {
            let r = p.grant(&s).await.unwrap();
            p.revoke(&r).await.unwrap();
            r.grant_id
        }));
    }
    let mut ids = BTreeSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap());
    }
    let doc = deny_document(&a, ROLE).await.unwrap();
    assert_eq!(denied(&doc.to_string()), ids);
}

#[tokio::test]
async fn bad_input_is_refused_with_what_to_fix() {
    let a = account().await;
    let p = provider(&a, false, |_| {}).await;
    let good = spec(&a, "alice", TimeDelta::minutes(30));
    p.validate(&good).await.expect("a good spec validates");
    let by_arn = GrantSpec {
        role: format!("arn:aws:iam::{}:role/{ROLE}", a.id),
        ..good.clone()
    };
    p.validate(&by_arn)
        .await
        .expect("a role ARN in the account validates");

    let other_account = ["999999999999", a.id.as_str()];
    let cases: Vec<(GrantSpec, &str, &[&str])> = vec![
        (
            GrantSpec {
                role: "AdminMissing".into(),
                ..good.clone()
            },
            "role",
            &["AdminMissing", "does not exist", "NoSuchEntity"],
        ),
        (
            GrantSpec {
                role: "PowerUser".into(),
                ..good.clone()
            },
            "role",
            &["PowerUser", "not grantable", "ReadOnly, Admin*"],
        ),
        (
            GrantSpec {
                scope: "999999999999".into(),
                ..good.clone()
            },
            "scope",
            &["999999999999", "not one of this provider's accounts"],
        ),
        (
            GrantSpec {
                role: format!("arn:aws:iam::999999999999:role/{ROLE}"),
                ..good.clone()
            },
            "role",
            &other_account,
        ),
        (
            GrantSpec {
                not_after: Utc::now() + TimeDelta::hours(3),
                ..good.clone()
            },
            "duration",
            &["7200", "MaxSessionDuration", "ask for less"],
        ),
        (
            GrantSpec {
                subject: "alice smith".into(),
                ..good.clone()
            },
            "subject",
            &["SourceIdentity", "alice smith"],
        ),
    ];
    for (s, field, words) in cases {
        match p.validate(&s).await {
            Err(e @ ProviderError::Invalid { field: f, .. }) => {
                assert_eq!(f, field, "{e}");
                assert_eq!(e.class(), ErrorClass::Permanent);
                let text = e.to_string();
                for w in words {
                    assert!(text.contains(w), "{text:?} lacks {w:?}");
                }
            }
            other => panic!("{s:?} was not refused as invalid {field}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_unreachable_aws_is_retryable_and_a_revoke_that_could_not_be_written_is_not_done() {
    let a = account().await;
    // Nothing listens on this port: the call never reaches AWS.
    let dead = provider(&a, false, |c| {
        c.endpoint_url = Some(format!("http://127.0.0.1:{}", jitsudo_testkit::free_port()));
        c.timeout_seconds = Some(2);
    })
    .await;
    let e = dead
        .validate(&spec(&a, "alice", TimeDelta::minutes(30)))
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Retryable, "{e}");
    let e = dead
        .revoke(&GrantRecord::from_spec(&spec(
            &a,
            "alice",
            TimeDelta::minutes(30),
        )))
        .await
        .unwrap_err();
    assert!(
        e.is_retryable(),
        "a revoke that could not be written is retried: {e}"
    );
}

#[tokio::test]
async fn no_session_runs_past_the_grant_and_none_is_minted_in_its_last_quarter_hour() {
    let a = account().await;
    let p = provider(&a, false, |_| {}).await;
    let s = spec(&a, "alice", TimeDelta::minutes(20));
    let r = p.grant(&s).await.unwrap();
    let c = p.credentials(&r).await.unwrap();
    assert!(
        c.expires_at <= r.not_after,
        "{} > {}",
        c.expires_at,
        r.not_after
    );
    assert!(c.expires_at > Utc::now() + TimeDelta::minutes(15));
    let s = spec(&a, "alice", TimeDelta::minutes(10));
    let r = p.grant(&s).await.unwrap();
    match p.credentials(&r).await {
        Err(e @ ProviderError::Invalid { .. }) => {
            assert!(e.to_string().contains("900"), "{e}");
        }
        other => panic!("a session in the last 15 minutes: {other:?}"),
    }
}

#[tokio::test]
async fn the_reconciler_drops_a_deny_entry_once_its_grant_has_ended() {
    use jitsudo_providers::reconcile::Expected;
    let a = account().await;
    let p = provider(&a, false, |_| {}).await;
    let short = spec(&a, "alice", TimeDelta::seconds(3));
    let long = spec(&a, "bob", TimeDelta::hours(1));
    let rs = p.grant(&short).await.unwrap();
    let rl = p.grant(&long).await.unwrap();
    p.revoke(&rs).await.unwrap();
    p.revoke(&rl).await.unwrap();
    let doc = deny_document(&a, ROLE).await.unwrap();
    assert_eq!(
        denied(&doc.to_string()),
        BTreeSet::from([rs.grant_id, rl.grant_id])
    );
    let expected = [
        (rs.grant_id, Expected::Ended),
        (rl.grant_id, Expected::Ended),
    ]
    .into();
    let wait = (rs.not_after - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + std::time::Duration::from_millis(1100)).await;
    jitsudo_providers::conformance::pass(&p, &expected, &[]).await;
    let doc = deny_document(&a, ROLE).await.unwrap();
    assert_eq!(
        denied(&doc.to_string()),
        BTreeSet::from([rl.grant_id]),
        "the ended grant's entry left with its tombstone; the other stays until its end"
    );
}

#[tokio::test]
async fn past_the_inline_statement_revoked_grants_go_to_an_attached_managed_policy_and_leave_it() {
    use jitsudo_providers::reconcile::Expected;
    let a = account().await;
    let p = provider(&a, false, |_| {}).await;
    // The inline statement holds 210: 208 entries of earlier revokes (written as jitsudod
    // writes them), then two grants of ours fill it.
    let earlier: Vec<String> = (0..208).map(|_| Uuid::new_v4().to_string()).collect();
    let seeded = serde_json::json!({"Version": "2012-10-17", "Statement": [{
        "Sid": "JitsudoRevokedSessions", "Effect": "Deny", "Action": "*", "Resource": "*",
        "Condition": {"StringEquals": {"aws:PrincipalTag/jitsudo-grant": earlier}}}]});
    a.iam
        .put_role_policy()
        .role_name(ROLE)
        .policy_name(DENY_POLICY)
        .policy_document(seeded.to_string())
        .send()
        .await
        .unwrap();
    for who in ["alice", "bob"] {
        let r = p.grant(&spec(&a, who, TimeDelta::hours(1))).await.unwrap();
        p.revoke(&r).await.unwrap();
    }
    // Three more, one at a time (a new version of the managed policy each), ending soon.
    let mut short = Vec::new();
    for who in ["carol", "dave", "erin"] {
        let r = p
            .grant(&spec(&a, who, TimeDelta::seconds(4)))
            .await
            .unwrap();
        p.revoke(&r).await.unwrap();
        short.push(r);
    }
    let inline = denied(&deny_document(&a, ROLE).await.unwrap().to_string());
    assert_eq!(inline.len(), 210, "the inline statement is full");
    let attached = a
        .iam
        .list_attached_role_policies()
        .role_name(ROLE)
        .send()
        .await
        .unwrap();
    let names: Vec<_> = attached
        .attached_policies()
        .iter()
        .filter_map(|p| p.policy_name())
        .collect();
    assert_eq!(names, ["jitsudo-deny-readonly-1"]);
    let arn = attached.attached_policies()[0]
        .policy_arn()
        .unwrap()
        .to_owned();
    let policy = a.iam.get_policy().policy_arn(&arn).send().await.unwrap();
    let version = policy
        .policy()
        .unwrap()
        .default_version_id()
        .unwrap()
        .to_owned();
    let doc = a
        .iam
        .get_policy_version()
        .policy_arn(&arn)
        .version_id(version)
        .send()
        .await
        .unwrap();
    let text =
        percent_encoding::percent_decode_str(doc.policy_version().unwrap().document().unwrap())
            .decode_utf8()
            .unwrap()
            .into_owned();
    let managed = denied(&text);
    assert_eq!(
        managed,
        short.iter().map(|r| r.grant_id).collect::<BTreeSet<_>>(),
        "the overflow holds exactly the three later revokes"
    );
    assert!(inline.is_disjoint(&managed), "each id is in one policy");
    let versions = a
        .iam
        .list_policy_versions()
        .policy_arn(&arn)
        .send()
        .await
        .unwrap();
    assert!(
        versions.versions().len() <= 2,
        "old versions are deleted: {versions:?}"
    );
    // Once those grants have ended, the reconciler's pass takes them out: the managed
    // policy is detached and deleted; the inline entries stay.
    let expected = short
        .iter()
        .map(|r| (r.grant_id, Expected::Ended))
        .collect();
    let wait = (short[2].not_after - Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(wait + std::time::Duration::from_millis(1100)).await;
    jitsudo_providers::conformance::pass(&p, &expected, &[]).await;
    let attached = a
        .iam
        .list_attached_role_policies()
        .role_name(ROLE)
        .send()
        .await
        .unwrap();
    assert!(attached.attached_policies().is_empty(), "{attached:?}");
    assert!(
        a.iam.get_policy().policy_arn(&arn).send().await.is_err(),
        "deleted"
    );
    assert_eq!(
        denied(&deny_document(&a, ROLE).await.unwrap().to_string()),
        inline
    );
}

/// A provider whose every AWS call goes through a fault proxy in front of moto.
async fn through_proxy(a: &Account) -> (AwsProvider, AwsFaultProxy) {
    let proxy = AwsFaultProxy::start(&moto::moto().unwrap().url).expect("the proxy starts");
    let url = proxy.url.clone();
    let p = provider(a, false, |c| c.endpoint_url = Some(url)).await;
    (p, proxy)
}

#[tokio::test]
async fn assume_role_carries_the_session_name_source_identity_tags_and_a_bounded_duration() {
    let a = account().await;
    let (p, proxy) = through_proxy(&a).await;
    let s = spec(&a, "alice@example.com", TimeDelta::minutes(40));
    let r = p.grant(&s).await.unwrap();
    p.credentials(&r).await.unwrap();
    let calls = proxy.seen("AssumeRole");
    assert_eq!(calls.len(), 1, "{calls:?}");
    let c = &calls[0];
    assert_eq!(
        c.param("RoleArn"),
        Some(format!("arn:aws:iam::{}:role/{ROLE}", a.id).as_str())
    );
    assert_eq!(
        c.param("RoleSessionName"),
        Some(format!("jitsudo-{}", r.grant_id).as_str())
    );
    assert_eq!(c.param("SourceIdentity"), Some("alice@example.com"));
    let tags: Vec<(&str, &str)> = (1..=2)
        .map(|i| {
            (
                c.param(&format!("Tags.member.{i}.Key")).unwrap_or_default(),
                c.param(&format!("Tags.member.{i}.Value"))
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        tags,
        [
            (GRANT_TAG, r.grant_id.to_string().as_str()),
            ("jitsudo-request", r.request_id.to_string().as_str())
        ]
    );
    let seconds: i64 = c.param("DurationSeconds").unwrap().parse().unwrap();
    assert!(
        (900..=40 * 60).contains(&seconds),
        "{seconds} s: at most what is left of the grant (40 min), at least AWS's 900"
    );
}

#[tokio::test]
async fn throttling_is_retried_and_a_lasting_throttle_is_retryable() {
    let a = account().await;
    let (p, proxy) = through_proxy(&a).await;
    // Two throttles: the SDK's own retries (three attempts) get through.
    proxy.fail("CreatePolicy", AwsFault::Throttle, 2);
    p.grant(&spec(&a, "alice", TimeDelta::hours(1)))
        .await
        .expect("a grant through two throttles");
    assert_eq!(proxy.seen("CreatePolicy").len(), 3);
    // Throttled throughout: the engine is told to come back later.
    proxy.fail("GetRole", AwsFault::Throttle, 100);
    let e = p
        .validate(&spec(&a, "alice", TimeDelta::minutes(30)))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ProviderError::Throttled { .. }) && e.is_retryable(),
        "{e}"
    );
}

#[tokio::test]
async fn a_grant_whose_answer_was_lost_ends_with_one_record() {
    let a = account().await;
    let (p, proxy) = through_proxy(&a).await;
    proxy.fail("CreatePolicy", AwsFault::DropAfterApply, 1);
    let s = spec(&a, "alice", TimeDelta::hours(1));
    // The SDK retries a lost answer itself, or the engine does: the same outcome either way.
    let mut result = p.grant(&s).await;
    for _ in 0..3 {
        match &result {
            Err(e) if e.is_retryable() => result = p.grant(&s).await,
            _ => break,
        }
    }
    let r = result.expect("the grant completes");
    let listed: Vec<_> = jitsudo_providers::reconcile::list_all(&p)
        .await
        .unwrap()
        .into_iter()
        .filter(|g| g.grant_id == s.grant_id)
        .collect();
    assert_eq!(listed.len(), 1, "one record for the grant: {listed:?}");
    assert_eq!(p.inspect(&r).await.unwrap(), GrantState::Active);
    assert!(
        proxy
            .seen("CreatePolicy")
            .iter()
            .any(|c| c.fault == Some(AwsFault::DropAfterApply)),
        "the fault was hit"
    );
}

#[tokio::test]
async fn a_revoke_whose_deny_cannot_be_written_fails_retryably_and_a_retry_completes_it() {
    let a = account().await;
    let (p, proxy) = through_proxy(&a).await;
    let r = p
        .grant(&spec(&a, "alice", TimeDelta::hours(1)))
        .await
        .unwrap();
    proxy.fail("PutRolePolicy", AwsFault::ServerError, 100);
    let e = p.revoke(&r).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(
        e.to_string().contains("ServiceFailure"),
        "the AWS code is kept: {e}"
    );
    assert!(
        deny_document(&a, ROLE).await.is_none(),
        "nothing was denied yet"
    );
    proxy.clear();
    p.revoke(&r).await.expect("the retried revoke completes");
    let doc = deny_document(&a, ROLE).await.expect("the deny is written");
    assert_eq!(denied(&doc.to_string()), BTreeSet::from([r.grant_id]));
}

#[tokio::test]
async fn a_missing_permission_is_forbidden_with_the_aws_code_and_what_to_do() {
    let a = account().await;
    let (p, proxy) = through_proxy(&a).await;
    proxy.fail("GetRole", AwsFault::AccessDenied, 100);
    let e = p
        .validate(&spec(&a, "alice", TimeDelta::minutes(30)))
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Forbidden { .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::Permanent);
    let text = e.to_string();
    assert!(
        text.contains("AccessDenied")
            && text.contains("HTTP 403")
            && text.contains("docs/providers.md"),
        "{text}"
    );
}

#[tokio::test]
async fn a_revoke_on_a_role_deleted_meanwhile_completes() {
    let a = account().await;
    let p = provider(&a, false, |_| {}).await;
    create_role(&a.iam, "AdminTemp").await;
    let s = GrantSpec {
        role: "AdminTemp".into(),
        ..spec(&a, "alice", TimeDelta::hours(1))
    };
    let r = p.grant(&s).await.unwrap();
    a.iam
        .delete_role()
        .role_name("AdminTemp")
        .send()
        .await
        .unwrap();
    p.revoke(&r)
        .await
        .expect("no session of a deleted role lives on: nothing to deny");
    assert_eq!(p.inspect(&r).await.unwrap(), GrantState::Gone);
}

#[test]
fn the_shipped_examples_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-config/aws");
    let text = std::fs::read_to_string(dir.join("providers.toml")).unwrap();
    let doc: toml::Table = text.parse().expect("providers.toml is TOML");
    let tables = doc["providers"].as_array().expect("[[providers]]");
    assert!(!tables.is_empty());
    for t in tables {
        let section =
            jitsudo_providers::config::ProviderSection::from_table(t.as_table().unwrap().clone())
                .unwrap_or_else(|e| panic!("cluster-config/aws/providers.toml: {e}"));
        assert_eq!(section.kind.kind(), "aws");
    }
    let modes: Vec<_> = tables
        .iter()
        .filter_map(|t| t.get("mode")?.as_str())
        .collect();
    assert_eq!(modes, ["sts", "identity_center"], "an example of each mode");
    for f in [
        "jitsudod-policy.json",
        "target-role-trust.json",
        "jitsudod-identity-center-policy.json",
    ] {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(f)).unwrap())
                .unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(v["Version"], "2012-10-17", "{f}");
    }
    let policy = std::fs::read_to_string(dir.join("jitsudod-policy.json")).unwrap();
    for action in [
        "iam:ListPolicies",
        "iam:CreatePolicy",
        "iam:DeletePolicy",
        "iam:GetRole",
        "iam:GetRolePolicy",
        "iam:PutRolePolicy",
        "iam:DeleteRolePolicy",
        "iam:ListAttachedRolePolicies",
        "iam:AttachRolePolicy",
        "iam:DetachRolePolicy",
        "iam:GetPolicy",
        "iam:GetPolicyVersion",
        "iam:CreatePolicyVersion",
        "iam:DeletePolicyVersion",
        "iam:ListPolicyVersions",
        "sts:AssumeRole",
        "sts:SetSourceIdentity",
        "sts:TagSession",
    ] {
        assert!(
            policy.contains(action),
            "jitsudod-policy.json lacks {action}"
        );
    }
    // Mode identity_center: every call the provider makes.
    let policy = std::fs::read_to_string(dir.join("jitsudod-identity-center-policy.json")).unwrap();
    for action in [
        "sso:ListInstances",
        "sso:ListPermissionSets",
        "sso:DescribePermissionSet",
        "sso:ListAccountAssignments",
        "sso:CreateAccountAssignment",
        "sso:DeleteAccountAssignment",
        "sso:DescribeAccountAssignmentCreationStatus",
        "sso:DescribeAccountAssignmentDeletionStatus",
        "sso:GetInlinePolicyForPermissionSet",
        "sso:PutInlinePolicyToPermissionSet",
        "sso:DeleteInlinePolicyFromPermissionSet",
        "sso:ProvisionPermissionSet",
        "sso:DescribePermissionSetProvisioningStatus",
        "identitystore:GetUserId",
        "iam:ListPolicies",
        "iam:CreatePolicy",
        "iam:DeletePolicy",
    ] {
        assert!(
            policy.contains(action),
            "jitsudod-identity-center-policy.json lacks {action}"
        );
    }
}

#[tokio::test]
async fn a_role_asked_by_arn_or_by_name_is_one_role_with_one_deny_and_no_drift() {
    // (IAM also takes role names in any case; moto compares them case-sensitively, so the
    // lower-cased record keys that cover that are checked in records.rs, not here.)
    use jitsudo_providers::reconcile::{Expected, ExpectedGrant, Finding};
    let a = account().await;
    let p = provider(&a, false, |c| c.roles = vec!["*".into()]).await;
    let by_arn = GrantSpec {
        role: format!("arn:aws:iam::{}:role/{ROLE}", a.id),
        ..spec(&a, "alice", TimeDelta::hours(1))
    };
    let by_name = spec(&a, "bob", TimeDelta::hours(1));
    let r1 = p.grant(&by_arn).await.unwrap();
    let r2 = p.grant(&by_name).await.unwrap();
    // The reconciler sees each grant with the role as the store keeps it: no drift.
    let expect = |s: &GrantSpec| ExpectedGrant {
        grant_id: s.grant_id,
        request_id: s.request_id,
        subject: s.subject.clone(),
        role: s.role.clone(),
        scope: s.scope.clone(),
        not_after: s.not_after,
    };
    let expected = [
        (by_arn.grant_id, Expected::Live(expect(&by_arn))),
        (by_name.grant_id, Expected::Live(expect(&by_name))),
    ]
    .into();
    let found =
        jitsudo_providers::conformance::pass(&p, &expected, &[expect(&by_arn), expect(&by_name)])
            .await;
    assert!(
        !found
            .iter()
            .any(|f| matches!(f, Finding::Drift { .. } | Finding::Orphan { .. })),
        "{found:?}"
    );
    // Both are one IAM role: one deny holds both revokes.
    p.revoke(&r1).await.unwrap();
    p.revoke(&r2).await.unwrap();
    let doc = deny_document(&a, ROLE).await.unwrap();
    assert_eq!(
        denied(&doc.to_string()),
        BTreeSet::from([r1.grant_id, r2.grant_id])
    );
}
