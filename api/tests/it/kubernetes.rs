//! jitsudod on PostgreSQL with a `kubernetes` provider against the faithful fake API server:
//! request → approve → RoleBinding of the mapped subject → expiry → tombstone → removed; a
//! binding deleted by hand is drift; a stray `jitsudo-*` binding is reaped.

use std::time::Duration;

use jitsudo_api::config::ProviderConfig;
use jitsudo_proto::v1;
use jitsudo_providers::kubernetes::binding_name;
use jitsudo_testkit::fakes::kubernetes::{FakeKube, Kind};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::*;

struct Rig {
    j: Jitsudo,
    fake: FakeKube,
    _dir: tempfile::TempDir,
}

async fn rig() -> Rig {
    let fake = FakeKube::start().await.expect("the fake API server starts");
    fake.seed_cluster_role("edit");
    fake.seed_namespace("team-a");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig, &fake.admin_token())
        .unwrap();
    let table: toml::Table = format!(
        r#"
name = "k8s"
kind = "kubernetes"
kubeconfig = "{}"
context = "fake"
subject = "{{email}}"
roles = ["edit"]
namespaces = ["team-a"]
"#,
        kubeconfig.display()
    )
    .parse()
    .unwrap();
    let section = ProviderConfig::from_table(table).expect("a valid kubernetes table");
    let j = Jitsudo::start_with(move |c| {
        c.providers.push(section);
        c.node.reconcile_interval_seconds = 1;
        c.limits.grant_timeout_seconds = 2;
    })
    .await;
    Rig { j, fake, _dir: dir }
}

async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn binding(fake: &FakeKube, grant_id: Uuid) -> Option<Value> {
    fake.object(Kind::RoleBinding, Some("team-a"), &binding_name(grant_id))
}

fn subjects(b: &Value) -> Vec<String> {
    b["subjects"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn audit_of(j: &Jitsudo, kind: &str) -> Vec<v1::AuditEvent> {
    let mut carol = j.grpc("carol").audit;
    ok(carol
        .query_audit(v1::QueryAuditRequest {
            kind: kind.into(),
            ..Default::default()
        })
        .await)
    .events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_grant_lives_expires_and_leaves_no_binding_behind() {
    let Rig { j, fake, _dir } = rig().await;
    let mut alice = j.grpc("alice").requests;
    let mut bob = j.grpc("bob").requests;
    let mut create = new_request("k8s", "edit", 2);
    create.scope = "team-a".into();
    let created = ok(alice.create_request(create).await);
    let stored = j.stored(&created.id).await;
    assert_eq!(stored.principal.as_deref(), Some("alice@example.com"));
    assert_eq!(
        created.principal, "alice@example.com",
        "the API shows the mapped principal"
    );
    ok(bob
        .approve_request(v1::DecideRequest {
            id: created.id.clone(),
            comment: "ok".into(),
        })
        .await);
    let active = eventually("ACTIVE", async || {
        let r = j.stored(&created.id).await;
        (r.state == jitsudo_actors::domain::State::Active).then_some(r)
    })
    .await;
    let gid = active.grants[0].grant_id;
    let b = binding(&fake, gid).expect("the RoleBinding exists");
    assert_eq!(subjects(&b), ["alice@example.com"]);
    assert_eq!(b["roleRef"]["name"], "edit");

    // Expiry: the binding becomes a tombstone (no subjects) at once, the request EXPIRED.
    eventually("EXPIRED", async || {
        (j.stored(&created.id).await.state == jitsudo_actors::domain::State::Expired).then_some(())
    })
    .await;
    let t = binding(&fake, gid).expect("a tombstone keeps the name");
    assert!(subjects(&t).is_empty(), "{t}");
    assert_eq!(t["metadata"]["labels"]["jitsudo.dev/tombstone"], "true");
    // After its not_after (approval + grant timeout + duration) the reconciler removes it.
    eventually("the tombstone removed", async || {
        binding(&fake, gid).is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_deleted_by_hand_is_drift_and_a_stray_one_is_reaped() {
    let Rig { j, fake, _dir } = rig().await;
    let mut alice = j.grpc("alice").requests;
    let mut bob = j.grpc("bob").requests;
    let mut create = new_request("k8s", "edit", 600);
    create.scope = "team-a".into();
    let created = ok(alice.create_request(create).await);
    ok(bob
        .approve_request(v1::DecideRequest {
            id: created.id.clone(),
            comment: String::new(),
        })
        .await);
    let active = eventually("ACTIVE", async || {
        let r = j.stored(&created.id).await;
        (r.state == jitsudo_actors::domain::State::Active).then_some(r)
    })
    .await;
    let gid = active.grants[0].grant_id;

    assert!(fake.remove_object(Kind::RoleBinding, Some("team-a"), &binding_name(gid)));
    let drift = eventually("drift audited", async || {
        audit_of(&j, "grant.drift_detected")
            .await
            .into_iter()
            .find(|e| e.request_id == created.id)
    })
    .await;
    assert!(drift.details.contains("missing"), "{}", drift.details);
    // Reported, not acted on (on_drift defaults to "report").
    assert_eq!(
        j.stored(&created.id).await.state,
        jitsudo_actors::domain::State::Active
    );

    // A jitsudo-managed binding the store has never heard of.
    let stray = Uuid::now_v7();
    fake.put_object(
        Kind::RoleBinding,
        json!({
            "metadata": {
                "name": binding_name(stray),
                "namespace": "team-a",
                "labels": {"app.kubernetes.io/managed-by": "jitsudo", "jitsudo.dev/grant-id": stray.to_string()},
                "annotations": {"jitsudo.dev/not-after": "2099-01-01T00:00:00Z"}
            },
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}]
        }),
    );
    let reaped = eventually("the stray binding reaped", async || {
        audit_of(&j, "grant.orphan_reaped")
            .await
            .into_iter()
            .find(|e| e.details.contains(&stray.to_string()))
    })
    .await;
    assert!(reaped.details.contains("mallory"), "{}", reaped.details);
    let b = binding(&fake, stray).expect("a tombstone keeps the name");
    assert!(subjects(&b).is_empty(), "mallory's access is gone: {b}");
}
