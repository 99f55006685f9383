//! The GCP provider with the real google-cloud-rust clients (Resource Manager v3 over REST,
//! service-account JWTs) against the faithful fake of Resource Manager's IAM methods
//! (testkit): the conformance suite, then concurrency, native expiry and faults.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use jitsudo_providers::conformance::SpecTemplate;
use jitsudo_providers::gcp::{GcpConfig, GcpProvider};
use jitsudo_providers::reconcile::Expected;
use jitsudo_providers::{ErrorClass, GrantRecord, GrantSpec, GrantState, Provider, ProviderError};
use jitsudo_testkit::fakes::gcp::{Binding, FakeGcp, Rpc};
use uuid::Uuid;

const PROJECT: &str = "projects/jit-test";
const FOLDER: &str = "folders/1234";
const ORG: &str = "organizations/5678";
const ROLE: &str = "roles/compute.viewer";
const SA: &str = "jitsudod@jit-test.iam.gserviceaccount.com";

/// The fake, its key file's directory and the key's path live as long as the test.
pub struct Gcp {
    pub fake: FakeGcp,
    _dir: tempfile::TempDir,
    pub key: std::path::PathBuf,
}

impl Gcp {
    pub async fn new() -> Gcp {
        rustls::crypto::aws_lc_rs::default_provider()
            .install_default()
            .ok();
        let fake = FakeGcp::start().expect("the fake starts");
        for r in [PROJECT, FOLDER, ORG] {
            fake.add_resource(r);
        }
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.json");
        fake.service_account(SA).write(&key).unwrap();
        Gcp {
            fake,
            _dir: dir,
            key,
        }
    }

    pub fn config(&self) -> GcpConfig {
        GcpConfig {
            roles: vec![ROLE.into(), "roles/storage.*".into()],
            scopes: vec![PROJECT.into(), FOLDER.into(), ORG.into()],
            credentials_file: Some(self.key.clone()),
            endpoint: Some(self.fake.url()),
            timeout_seconds: Some(5),
        }
    }

    pub async fn provider(&self) -> GcpProvider {
        GcpProvider::from_config("gcp", &self.config())
            .await
            .expect("the provider builds")
    }
}

fn template() -> SpecTemplate {
    SpecTemplate {
        subject: "user:alice@example.com".into(),
        role: ROLE.into(),
        scope: PROJECT.into(),
        invalid_role: "roles/owner".into(),
        native_expiry: true,
    }
}

jitsudo_providers::provider_conformance!(
    conformance,
    async {
        let g = Gcp::new().await;
        let p = Arc::new(g.provider().await) as Arc<dyn Provider>;
        (p, g)
    },
    template()
);

fn spec(subject: &str, scope: &str, lifetime: TimeDelta) -> GrantSpec {
    GrantSpec {
        grant_id: Uuid::now_v7(),
        request_id: Uuid::now_v7(),
        subject: subject.into(),
        role: ROLE.into(),
        scope: scope.into(),
        not_after: Utc::now() + lifetime,
        metadata: BTreeMap::new(),
    }
}

fn ours(b: &[Binding]) -> Vec<&Binding> {
    b.iter()
        .filter(|b| {
            b.condition
                .as_ref()
                .is_some_and(|c| c.title.starts_with("jitsudo-"))
        })
        .collect()
}

#[tokio::test]
async fn a_grant_is_a_conditional_binding_that_google_ends_at_not_after() {
    let g = Gcp::new().await;
    let p = g.provider().await;
    for scope in [PROJECT, FOLDER, ORG] {
        let s = spec("user:alice@example.com", scope, TimeDelta::hours(1));
        p.grant(&s).await.unwrap();
        let b = g.fake.bindings(scope);
        assert_eq!(b.len(), 1, "{b:?}");
        let c = b[0].condition.as_ref().unwrap();
        assert_eq!(c.title, format!("jitsudo-{}", s.grant_id));
        assert!(c.description.contains(&s.request_id.to_string()), "{c:?}");
        assert_eq!(b[0].members, vec!["user:alice@example.com".to_string()]);
        // IAM's own evaluation: held now, not a second after not_after.
        assert!(
            g.fake
                .has_role(scope, "user:alice@example.com", ROLE, Utc::now())
        );
        assert!(!g.fake.has_role(
            scope,
            "user:alice@example.com",
            ROLE,
            s.not_after + TimeDelta::seconds(1)
        ));
    }
    // Every call went out as the service account, authenticated by its key's JWT.
    assert!(
        g.fake
            .calls()
            .iter()
            .all(|c| c.caller.as_deref() == Some(SA) && c.status == Some(200))
    );
}

#[tokio::test]
async fn fifty_concurrent_grants_and_revokes_from_two_replicas_all_land_and_lose_nothing() {
    let g = Gcp::new().await;
    // A few milliseconds per call make the two replicas' read-modify-writes overlap.
    g.fake.faults().latency(Duration::from_millis(5));
    // A human's binding must survive every write.
    let human = Binding {
        role: "roles/browser".into(),
        members: vec!["user:carol@example.com".into()],
        condition: None,
    };
    g.fake.edit(PROJECT, |b| b.push(human.clone()));
    let replicas = [Arc::new(g.provider().await), Arc::new(g.provider().await)];
    // 30 grants that stay, 20 that are granted and revoked at once, all at the same time.
    let kept: Vec<GrantSpec> = (0..30)
        .map(|i| {
            spec(
                &format!("user:k{i}@example.com"),
                PROJECT,
                TimeDelta::hours(1),
            )
        })
        .collect();
    let gone: Vec<GrantSpec> = (0..20)
        .map(|i| {
            spec(
                &format!("user:r{i}@example.com"),
                PROJECT,
                TimeDelta::hours(1),
            )
        })
        .collect();
    let mut tasks = Vec::new();
    for (i, s) in kept.iter().enumerate() {
        let p = replicas[i % 2].clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move { p.grant(&s).await.map(|_| ()) }));
    }
    for (i, s) in gone.iter().enumerate() {
        let p = replicas[i % 2].clone();
        let other = replicas[(i + 1) % 2].clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let r = p.grant(&s).await?;
            other.revoke(&r).await
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("every grant and revoke lands");
    }
    let b = g.fake.bindings(PROJECT);
    assert!(b.contains(&human), "the human's binding was lost: {b:?}");
    let jit = ours(&b);
    assert_eq!(jit.len(), 50, "one binding per grant, no duplicates");
    let now = Utc::now();
    for s in &kept {
        assert!(
            g.fake.has_role(PROJECT, &s.subject, ROLE, now),
            "{} lost",
            s.subject
        );
    }
    for s in &gone {
        assert!(
            !g.fake.has_role(PROJECT, &s.subject, ROLE, now),
            "{} kept",
            s.subject
        );
    }
    // The etag caught every cross-replica race: some writes were refused and retried.
    let conflicts = g
        .fake
        .calls()
        .iter()
        .filter(|c| c.status == Some(409))
        .count();
    assert!(
        conflicts > 0,
        "the replicas never raced: the etag path was not exercised"
    );
    let revoked: Vec<String> = gone
        .iter()
        .map(|s| format!("jitsudo-{}", s.grant_id))
        .collect();
    for b in &jit {
        let c = b.condition.as_ref().unwrap();
        assert_eq!(
            revoked.contains(&c.title),
            c.expression == jitsudo_providers::gcp::NEVER,
            "{c:?}"
        );
    }
}

#[tokio::test]
async fn a_change_between_our_read_and_write_is_read_again_and_kept() {
    let g = Gcp::new().await;
    let p = g.provider().await;
    let human = Binding {
        role: "roles/browser".into(),
        members: vec!["user:carol@example.com".into()],
        condition: None,
    };
    // Someone else writes right after each of our first two reads: two conflicts.
    g.fake.faults().edit_after(1, Rpc::Get, human.clone());
    let other = Binding {
        role: "roles/storage.objectViewer".into(),
        members: vec!["user:frank@example.com".into()],
        condition: None,
    };
    g.fake.faults().edit_after(1, Rpc::Get, other.clone());
    let s = spec("user:alice@example.com", PROJECT, TimeDelta::hours(1));
    p.grant(&s)
        .await
        .expect("the grant retries past the conflicts");
    let calls = g.fake.calls();
    let refused = calls.iter().filter(|c| c.status == Some(409)).count();
    assert_eq!(refused, 2, "{calls:?}");
    let b = g.fake.bindings(PROJECT);
    assert!(b.contains(&human) && b.contains(&other), "{b:?}");
    assert_eq!(ours(&b).len(), 1);
    assert!(g.fake.has_role(PROJECT, &s.subject, ROLE, Utc::now()));
}

#[tokio::test]
async fn a_late_grant_after_revoke_is_inert_and_reaped_in_one_pass() {
    let g = Gcp::new().await;
    let p = g.provider().await;
    let s = spec("user:dave@example.com", PROJECT, TimeDelta::hours(1));
    let r = p.grant(&s).await.unwrap();
    p.revoke(&r).await.unwrap();
    assert!(!g.fake.has_role(PROJECT, &s.subject, ROLE, Utc::now()));
    // A late grant (a replica that lost its lease) finds the tombstone and writes nothing.
    let before = g.fake.bindings(PROJECT);
    assert!(matches!(
        p.grant(&s).await,
        Err(ProviderError::Tombstoned { .. })
    ));
    assert_eq!(g.fake.bindings(PROJECT), before);
    // A binding past its end (written late by another tool, or left by a crash) grants
    // nothing, and one reconcile pass removes it.
    let ended = spec("user:erin@example.com", PROJECT, TimeDelta::seconds(1));
    p.grant(&ended).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!g.fake.has_role(PROJECT, &ended.subject, ROLE, Utc::now()));
    let expected = BTreeMap::from([
        (s.grant_id, Expected::Ended),
        (ended.grant_id, Expected::Ended),
    ]);
    jitsudo_providers::conformance::pass(&p, &expected, &[]).await;
    let left: Vec<_> = ours(&g.fake.bindings(PROJECT))
        .into_iter()
        .filter_map(|b| b.condition.as_ref().map(|c| c.title.clone()))
        .collect();
    assert_eq!(
        left,
        vec![format!("jitsudo-{}", s.grant_id)],
        "only the live tombstone stays"
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_what_to_do() {
    let g = Gcp::new().await;
    let p = g.provider().await;
    let mut s = spec("user:alice@example.com", PROJECT, TimeDelta::hours(1));
    s.role = "roles/editor".into();
    let e = p.validate(&s).await.unwrap_err().to_string();
    assert!(e.contains("basic role") && e.contains("condition"), "{e}");
    s.role = "roles/iam.securityAdmin".into();
    let e = p.validate(&s).await.unwrap_err().to_string();
    assert!(
        e.contains("not in this provider's roles") && e.contains(ROLE),
        "{e}"
    );
    s.role = "roles/storage.objectViewer".into();
    p.validate(&s).await.expect("a prefix entry allows it");
    s.scope = "projects/elsewhere".into();
    let e = p.validate(&s).await.unwrap_err().to_string();
    assert!(
        e.contains("not in this provider's scopes") && e.contains(PROJECT),
        "{e}"
    );
    s.scope = PROJECT.into();
    s.subject = "alice@example.com".into();
    let e = p.validate(&s).await.unwrap_err().to_string();
    assert!(
        e.contains("user:EMAIL") && e.contains("subject template"),
        "{e}"
    );
    assert!(g.fake.calls().is_empty(), "validate calls nothing");
}

#[tokio::test]
async fn a_missing_set_permission_is_named_with_the_role_that_carries_it() {
    let g = Gcp::new().await;
    g.fake.deny(SA, "resourcemanager.projects.setIamPolicy");
    let p = g.provider().await;
    let e = p
        .grant(&spec(
            "user:alice@example.com",
            PROJECT,
            TimeDelta::hours(1),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Permanent);
    let m = e.to_string();
    assert!(
        m.contains("resourcemanager.projects.setIamPolicy")
            && m.contains("roles/resourcemanager.projectIamAdmin"),
        "{m}"
    );
    assert!(!m.contains("PRIVATE KEY"), "{m}");
}

#[tokio::test]
async fn throttling_and_outages_are_retryable_and_a_lost_answer_lands_once() {
    let g = Gcp::new().await;
    let p = g.provider().await;
    g.fake.faults().throttle(1, 3, Rpc::Get);
    let s = spec("user:alice@example.com", PROJECT, TimeDelta::hours(1));
    match p.grant(&s).await {
        Err(ProviderError::Throttled { retry_after, .. }) => {
            assert_eq!(
                retry_after,
                Some(Duration::from_secs(3)),
                "RetryInfo honoured"
            )
        }
        other => panic!("{other:?}"),
    }
    g.fake.faults().unavailable(1, Rpc::Get);
    let e = p.grant(&s).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Retryable, "{e}");
    assert!(g.fake.bindings(PROJECT).is_empty(), "nothing was written");
    // The write lands, its answer is lost: the next round reads it back as done.
    g.fake.faults().drop_after_apply(1, Rpc::Set);
    p.grant(&s)
        .await
        .expect("the lost answer is recovered in the same call");
    assert_eq!(ours(&g.fake.bindings(PROJECT)).len(), 1);
    // A 503 on the write: outcome unknown inside, read again, written once.
    let t = spec("user:bob@example.com", PROJECT, TimeDelta::hours(1));
    g.fake.faults().unavailable(1, Rpc::Set);
    p.grant(&t).await.unwrap();
    assert_eq!(ours(&g.fake.bindings(PROJECT)).len(), 2);
    assert_eq!(
        p.inspect(&GrantRecord::from_spec(&t)).await.unwrap(),
        GrantState::Active
    );
}

#[tokio::test]
async fn members_are_matched_as_iam_stores_them() {
    let g = Gcp::new().await;
    let p = g.provider().await;
    let s = spec("user:Alice@Example.COM", PROJECT, TimeDelta::hours(1));
    let r = p.grant(&s).await.unwrap();
    assert!(
        g.fake
            .has_role(PROJECT, "user:alice@example.com", ROLE, Utc::now())
    );
    assert_eq!(p.inspect(&r).await.unwrap(), GrantState::Active);
    p.credentials(&r)
        .await
        .expect("credentials for the mixed-case principal");
    let listed = jitsudo_providers::reconcile::list_all(&p).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].subject, s.subject,
        "listed as requested: no drift from case"
    );
    // Another provider's binding on the same scope is not this one's to reap.
    let other = GcpProvider::from_config("gcp-staging", &g.config())
        .await
        .unwrap();
    assert!(
        jitsudo_providers::reconcile::list_all(&other)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_full_policy_refuses_a_grant_by_name_and_its_revoke_still_completes() {
    let g = Gcp::new().await;
    let p = g.provider().await;
    // 100 conditional bindings of people's own: Google's limit.
    g.fake.edit(PROJECT, |b| {
        for i in 0..100 {
            b.push(Binding {
                role: "roles/browser".into(),
                members: vec![format!("user:h{i}@example.com")],
                condition: Some(jitsudo_testkit::fakes::gcp::Expr {
                    title: format!("office hours {i}"),
                    expression: "request.time.getHours(\"Europe/Berlin\") < 18".into(),
                    ..Default::default()
                }),
            });
        }
    });
    let s = spec("user:alice@example.com", PROJECT, TimeDelta::hours(1));
    let e = p.grant(&s).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Permanent);
    let m = e.to_string();
    assert!(m.contains("no room") && m.contains("limit of 100"), "{m}");
    // The engine then revokes the grant that never landed: IAM refuses its tombstone for
    // the same reason, and the revoke completes instead of being retried for ever.
    p.revoke(&GrantRecord::from_spec(&s))
        .await
        .expect("the revoke completes");
    assert_eq!(
        g.fake.bindings(PROJECT).len(),
        100,
        "nothing of ours was written"
    );
}

#[tokio::test]
async fn a_throttled_write_and_a_lost_answer_that_cannot_be_read_back() {
    let g = Gcp::new().await;
    let p = g.provider().await;
    let s = spec("user:alice@example.com", PROJECT, TimeDelta::hours(1));
    g.fake.faults().throttle(1, 2, Rpc::Set);
    assert!(matches!(
        p.grant(&s).await,
        Err(ProviderError::Throttled { retry_after: Some(d), .. }) if d == Duration::from_secs(2)
    ));
    assert!(ours(&g.fake.bindings(PROJECT)).is_empty());
    // The write lands, its answer is lost, and the read back fails: the outcome is
    // unknown (the engine retries idempotently), not "failed".
    g.fake.faults().pass(1, Rpc::Get);
    g.fake.faults().unavailable(1, Rpc::Get);
    g.fake.faults().drop_after_apply(1, Rpc::Set);
    let t = spec("user:bob@example.com", PROJECT, TimeDelta::hours(1));
    let e = p.grant(&t).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Unknown, "{e}");
    assert_eq!(ours(&g.fake.bindings(PROJECT)).len(), 1, "it did land");
    // The engine's retry finds it.
    p.grant(&t).await.expect("the retry reads it back");
    assert_eq!(ours(&g.fake.bindings(PROJECT)).len(), 1);
}

#[tokio::test]
async fn credentials_name_the_project_and_mint_nothing() {
    let g = Gcp::new().await;
    let p = g.provider().await;
    let s = spec("user:alice@example.com", PROJECT, TimeDelta::hours(1));
    let r = p.grant(&s).await.unwrap();
    let c = p.credentials(&r).await.unwrap();
    assert_eq!(
        c.env.get("CLOUDSDK_CORE_PROJECT").map(String::as_str),
        Some("jit-test")
    );
    assert_eq!(
        c.env.get("GOOGLE_CLOUD_PROJECT").map(String::as_str),
        Some("jit-test")
    );
    assert_eq!(c.env.len(), 2, "no token, no key");
    assert!(c.notice.unwrap().contains("your own Google identity"));
}

#[test]
fn the_shipped_examples_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-config/gcp");
    let text = std::fs::read_to_string(dir.join("providers.toml")).unwrap();
    let doc: toml::Table = text.parse().expect("providers.toml is TOML");
    let tables = doc["providers"].as_array().expect("[[providers]]");
    assert_eq!(tables.len(), 2);
    for t in tables {
        let section =
            jitsudo_providers::config::ProviderSection::from_table(t.as_table().unwrap().clone())
                .unwrap_or_else(|e| panic!("cluster-config/gcp/providers.toml: {e}"));
        assert_eq!(section.kind.kind(), "gcp");
    }
    let role = std::fs::read_to_string(dir.join("jitsudod-role.yaml")).unwrap();
    for p in [
        "resourcemanager.projects.getIamPolicy",
        "resourcemanager.projects.setIamPolicy",
    ] {
        assert!(role.contains(&format!("- {p}")), "{p}");
    }
}

#[test]
fn a_gcp_table_refuses_basic_roles_and_unknown_keys_by_name() {
    let parse = |t: &str| {
        jitsudo_providers::config::ProviderSection::from_table(t.parse::<toml::Table>().unwrap())
            .map_err(|e| e.to_string())
    };
    let ok =
        "name = \"g\"\nkind = \"gcp\"\nroles = [\"roles/browser\"]\nscopes = [\"projects/p\"]\n";
    parse(ok).unwrap();
    let e = parse(&ok.replace("roles/browser", "roles/owner")).unwrap_err();
    assert!(e.contains("\"g\"") && e.contains("basic role"), "{e}");
    let e = parse(&format!("{ok}region = \"x\"\n")).unwrap_err();
    assert!(e.contains("region") && e.contains("scopes"), "{e}");
}
