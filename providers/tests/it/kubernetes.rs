//! The Kubernetes provider with the real `kube` client over TLS against the faithful fake of
//! the API server (testkit): the conformance suite, then what is specific to RBAC.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use jitsudo_providers::conformance::SpecTemplate;
use jitsudo_providers::kubernetes::{KubernetesConfig, KubernetesProvider, binding_name};
use jitsudo_providers::{ErrorClass, GrantSpec, GrantState, Provider, ProviderError};
use jitsudo_testkit::fakes::kubernetes::{FakeKube, Filter, Kind, Rights};
use serde_json::json;
use uuid::Uuid;

/// The fake and the kubeconfig directory live as long as the test.
pub struct Cluster {
    pub fake: FakeKube,
    pub dir: tempfile::TempDir,
}

pub fn config(kubeconfig: std::path::PathBuf) -> KubernetesConfig {
    KubernetesConfig {
        kubeconfig: Some(kubeconfig),
        context: Some("fake".into()),
        in_cluster: false,
        roles: vec!["view".into(), "edit".into(), "Role/deployer".into()],
        namespaces: vec!["team-a".into(), "dev-*".into()],
        allow_cluster_scope: true,
        subject_kind: Default::default(),
        user_context: Some("prod".into()),
        timeout_seconds: Some(5),
    }
}

pub async fn cluster() -> Cluster {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .ok();
    let fake = FakeKube::start().await.expect("the fake API server starts");
    fake.seed_cluster_role("view");
    fake.seed_namespace("team-a");
    fake.seed_namespace("dev-1");
    fake.seed_role("team-a", "deployer");
    Cluster {
        fake,
        dir: tempfile::tempdir().unwrap(),
    }
}

/// A provider acting with `token` (the fake's admin by default).
pub async fn provider_as(
    c: &Cluster,
    token: &str,
    cfg: impl FnOnce(&mut KubernetesConfig),
) -> KubernetesProvider {
    let path = c.dir.path().join(format!("kubeconfig-{}", Uuid::now_v7()));
    c.fake.write_kubeconfig(&path, token).unwrap();
    let mut config = config(path);
    cfg(&mut config);
    KubernetesProvider::from_config("k8s", &config)
        .await
        .expect("the provider builds from the kubeconfig")
}

pub async fn pair() -> (Cluster, KubernetesProvider) {
    let c = cluster().await;
    let p = provider_as(&c, &c.fake.admin_token(), |_| {}).await;
    (c, p)
}

fn template() -> SpecTemplate {
    SpecTemplate {
        subject: "alice@example.com".into(),
        role: "view".into(),
        scope: "team-a".into(),
        invalid_role: "cluster-admin".into(),
        native_expiry: false,
    }
}

jitsudo_providers::provider_conformance!(
    conformance,
    async {
        let (c, p) = pair().await;
        (Arc::new(p) as Arc<dyn Provider>, c)
    },
    template()
);

fn spec(role: &str, scope: &str) -> GrantSpec {
    GrantSpec {
        grant_id: Uuid::now_v7(),
        request_id: Uuid::now_v7(),
        subject: "alice@example.com".into(),
        role: role.into(),
        scope: scope.into(),
        not_after: Utc::now() + TimeDelta::hours(1),
        metadata: Default::default(),
    }
}

fn invalid_field(e: &ProviderError) -> Option<&'static str> {
    match e {
        ProviderError::Invalid { field, .. } => Some(field),
        _ => None,
    }
}

#[tokio::test]
async fn a_grant_is_a_labelled_binding_of_the_mapped_subject() {
    let (c, p) = pair().await;
    let s = spec("view", "team-a");
    let record = p.grant(&s).await.unwrap();
    assert_eq!(
        record.provider_ref,
        format!("rolebindings/team-a/{}", binding_name(s.grant_id))
    );
    let b = c
        .fake
        .object(Kind::RoleBinding, Some("team-a"), &binding_name(s.grant_id))
        .expect("the binding exists");
    assert_eq!(
        b["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"})
    );
    assert_eq!(
        b["subjects"],
        json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice@example.com"}])
    );
    let labels = &b["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/managed-by"], "jitsudo");
    assert_eq!(labels["jitsudo.dev/grant-id"], s.grant_id.to_string());
    assert_eq!(labels["jitsudo.dev/request-id"], s.request_id.to_string());
    let not_after = b["metadata"]["annotations"]["jitsudo.dev/not-after"]
        .as_str()
        .unwrap();
    let parsed = chrono::DateTime::parse_from_rfc3339(not_after).unwrap();
    assert!(
        (parsed.with_timezone(&Utc) - s.not_after)
            .num_milliseconds()
            .abs()
            <= 1
    );

    // A Role of the namespace, and the whole cluster.
    let role = spec("Role/deployer", "team-a");
    p.grant(&role).await.unwrap();
    let b = c
        .fake
        .object(
            Kind::RoleBinding,
            Some("team-a"),
            &binding_name(role.grant_id),
        )
        .unwrap();
    assert_eq!(b["roleRef"]["kind"], "Role");
    assert_eq!(b["roleRef"]["name"], "deployer");
    let cluster_wide = spec("view", "cluster");
    let rec = p.grant(&cluster_wide).await.unwrap();
    assert!(rec.provider_ref.starts_with("clusterrolebindings/"));
    assert!(
        c.fake
            .object(
                Kind::ClusterRoleBinding,
                None,
                &binding_name(cluster_wide.grant_id)
            )
            .is_some()
    );
    let creds = p.credentials(&record).await.unwrap();
    assert_eq!(creds.env["JITSUDO_KUBE_NAMESPACE"], "team-a");
    assert_eq!(creds.env["JITSUDO_KUBE_CONTEXT"], "prod");
    assert!(creds.notice.unwrap().contains("JITSUDO_KUBE_CONTEXT"));
}

#[tokio::test]
async fn bad_roles_and_scopes_are_refused_with_what_is_allowed() {
    let (_c, p) = pair().await;
    let e = p
        .validate(&spec("cluster-admin", "team-a"))
        .await
        .unwrap_err();
    assert_eq!(invalid_field(&e), Some("role"));
    assert!(e.to_string().contains("view, edit, Role/deployer"), "{e}");
    let e = p.validate(&spec("view", "kube-system")).await.unwrap_err();
    assert_eq!(invalid_field(&e), Some("scope"));
    assert!(e.to_string().contains("team-a, dev-*, cluster"), "{e}");
    assert!(p.validate(&spec("view", "dev-1")).await.is_ok());
    // Allowed by the configuration, but no such ClusterRole exists in the cluster.
    let e = p.validate(&spec("edit", "team-a")).await.unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = p
        .validate(&spec("Role/deployer", "cluster"))
        .await
        .unwrap_err();
    assert_eq!(invalid_field(&e), Some("role"));
    // A namespace that matches the pattern but does not exist: the create says so.
    let e = p.grant(&spec("view", "dev-2")).await.unwrap_err();
    assert_eq!(invalid_field(&e), Some("scope"));
    assert!(e.to_string().contains("dev-2"), "{e}");
    let mut past = spec("view", "team-a");
    past.not_after = Utc::now() - TimeDelta::seconds(1);
    assert_eq!(
        invalid_field(&p.grant(&past).await.unwrap_err()),
        Some("not_after")
    );
}

#[tokio::test]
async fn a_binding_of_the_name_made_by_someone_else_is_not_taken_for_the_grant() {
    let (c, p) = pair().await;
    let s = spec("view", "team-a");
    c.fake.put_object(
        Kind::RoleBinding,
        json!({
            "metadata": {"name": binding_name(s.grant_id), "namespace": "team-a"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}]
        }),
    );
    let e = p.grant(&s).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Permanent);
    assert!(e.to_string().contains("mallory"), "{e}");
}

#[tokio::test]
async fn without_bind_on_the_role_the_api_server_forbids_the_grant() {
    let c = cluster().await;
    c.fake.add_user(
        "weak-token",
        "jitsudod",
        Rights {
            bind_all: false,
            bindable: vec![],
            read_only: false,
        },
    );
    let p = provider_as(&c, "weak-token", |_| {}).await;
    let e = p.grant(&spec("view", "team-a")).await.unwrap_err();
    assert!(matches!(e, ProviderError::Forbidden { .. }), "{e}");
    assert!(e.to_string().contains("Forbidden"), "{e}");
    let bad = provider_as(&c, "no-such-token", |_| {}).await;
    let e = bad.grant(&spec("view", "team-a")).await.unwrap_err();
    assert!(e.to_string().contains("credentials"), "{e}");
    assert!(
        !e.to_string().contains("no-such-token"),
        "the token never shows: {e}"
    );
}

#[tokio::test]
async fn throttling_is_waited_out_as_retry_after_asks_then_reported_as_retryable() {
    let (c, p) = pair().await;
    let posts = |c: &Cluster| {
        c.fake
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .count()
    };
    // API Priority and Fairness: a text body and Retry-After, waited out inside the call.
    c.fake.faults().throttle(1, 1, Filter::method("POST"));
    let started = std::time::Instant::now();
    p.grant(&spec("view", "team-a")).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After: 1 was not honoured"
    );
    assert_eq!(posts(&c), 2);
    // Throttled for longer than the call retries: a retryable error for the engine.
    c.fake
        .faults()
        .throttle_status(5, 1, Filter::method("POST"));
    let e = p.grant(&spec("view", "team-a")).await.unwrap_err();
    match &e {
        ProviderError::Throttled { retry_after, .. } => {
            assert_eq!(*retry_after, Some(Duration::from_secs(1)))
        }
        other => panic!("expected Throttled, got {other}"),
    }
    c.fake.faults().clear();
    c.fake.faults().fail(1, Filter::method("POST"));
    let e = p.grant(&spec("view", "team-a")).await.unwrap_err();
    assert_eq!(
        e.class(),
        ErrorClass::Unknown,
        "a 500 on a write may have applied: {e}"
    );
}

#[tokio::test]
async fn a_grant_applied_but_whose_answer_was_lost_is_found_by_the_retry() {
    let (c, p) = pair().await;
    let s = spec("view", "team-a");
    c.fake.faults().drop_after_apply(1, Filter::method("POST"));
    let e = p.grant(&s).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert_eq!(e.class(), ErrorClass::Unknown, "{e}");
    // The binding is there; the retry finds it and answers the same record.
    let again = p.grant(&s).await.unwrap();
    assert_eq!(again.grant_id, s.grant_id);
    assert_eq!(c.fake.count(Kind::RoleBinding), 1);
    // The revoke's answer lost the same way: the retry sees the tombstone and is done.
    c.fake.faults().drop_after_apply(1, Filter::method("PUT"));
    assert!(p.revoke(&again).await.is_err());
    p.revoke(&again).await.unwrap();
    assert_eq!(p.inspect(&again).await.unwrap(), GrantState::Gone);
    assert!(matches!(
        p.grant(&s).await,
        Err(ProviderError::Tombstoned { .. })
    ));
}

#[tokio::test]
async fn a_revoke_leaves_a_tombstone_binding_with_no_subjects() {
    let (c, p) = pair().await;
    let s = spec("view", "team-a");
    let rec = p.grant(&s).await.unwrap();
    p.revoke(&rec).await.unwrap();
    let b = c
        .fake
        .object(Kind::RoleBinding, Some("team-a"), &binding_name(s.grant_id))
        .expect("the name stays taken");
    assert!(
        b.get("subjects")
            .is_none_or(|s| s.as_array().is_none_or(Vec::is_empty)),
        "{b}"
    );
    assert_eq!(b["metadata"]["labels"]["jitsudo.dev/tombstone"], "true");
}

#[tokio::test]
async fn listing_pages_through_every_managed_binding_and_ignores_others() {
    let (c, p) = pair().await;
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..130 {
        let scope = if i % 10 == 0 { "cluster" } else { "team-a" };
        let s = spec("view", scope);
        p.grant(&s).await.unwrap();
        ids.insert(s.grant_id);
    }
    // Somebody else's binding is not ours to judge.
    c.fake.put_object(
        Kind::RoleBinding,
        json!({
            "metadata": {"name": "ops-readers", "namespace": "team-a"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "ops"}]
        }),
    );
    let listed = jitsudo_providers::reconcile::list_all(&p).await.unwrap();
    let got: std::collections::BTreeSet<Uuid> = listed.iter().map(|g| g.grant_id).collect();
    assert_eq!(got, ids);
    assert_eq!(listed.len(), 130, "each binding once");
    let lists = c
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.query.contains("labelSelector"))
        .count();
    assert!(lists >= 3, "paged: {lists} list calls");
}

#[tokio::test]
async fn a_revoke_without_bind_on_the_role_deletes_the_binding_instead() {
    let (c, admin) = pair().await;
    let s = spec("view", "team-a");
    let record = admin.grant(&s).await.unwrap();
    // `bind` on the role was taken away from jitsudod since: the tombstone (an update) is
    // forbidden by the escalation check, so the binding is deleted.
    c.fake.add_user(
        "no-bind",
        "jitsudod",
        Rights {
            bind_all: false,
            bindable: vec![],
            read_only: false,
        },
    );
    let weak = provider_as(&c, "no-bind", |_| {}).await;
    weak.revoke(&record).await.unwrap();
    assert!(
        c.fake
            .object(Kind::RoleBinding, Some("team-a"), &binding_name(s.grant_id))
            .is_none()
    );
    assert_eq!(weak.inspect(&record).await.unwrap(), GrantState::Gone);
    // And a late grant of the same role by that identity is refused as well.
    assert!(matches!(
        weak.grant(&s).await,
        Err(ProviderError::Forbidden { .. })
    ));
}
