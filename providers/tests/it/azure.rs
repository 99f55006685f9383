//! The Azure provider with the real azure_identity credential (client secret, Entra's token
//! endpoint over HTTPS) and reqwest against the faithful fake of Entra and ARM's
//! Microsoft.Authorization (testkit): the conformance suite in both modes, then PIM's
//! native expiry, shared assignments, standing access, ARM's errors and faults.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use jitsudo_providers::azure::{AzureConfig, AzureProvider, Mode};
use jitsudo_providers::conformance::SpecTemplate;
use jitsudo_providers::{ErrorClass, GrantRecord, GrantSpec, GrantState, Provider, ProviderError};
use jitsudo_testkit::fakes::Filter;
use jitsudo_testkit::fakes::azure::{Application, CONTRIBUTOR, FakeAzure, READER};
use uuid::Uuid;

/// A fake tenant with one subscription, jitsudod's application and a user.
pub struct Azure {
    pub fake: FakeAzure,
    pub sub: String,
    pub app: Application,
    pub alice: String,
    dir: tempfile::TempDir,
}

impl Azure {
    pub fn new() -> Azure {
        rustls::crypto::aws_lc_rs::default_provider()
            .install_default()
            .ok();
        let fake = FakeAzure::start().expect("the fake starts");
        // PIM refuses to remove an assignment in its first five minutes; the suite revokes
        // right after granting, so these tests take the floor away, and
        // `pim_keeps_an_assignment_five_minutes_and_the_revoke_waits_for_it` puts it back.
        fake.set_min_active(Duration::ZERO);
        let sub = fake.add_subscription();
        let app = fake.add_application("jitsudod");
        let alice = fake.add_user("alice@contoso.example");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), format!("{}\n", app.secret)).unwrap();
        std::fs::write(dir.path().join("ca.pem"), fake.ca_pem()).unwrap();
        Azure {
            fake,
            sub,
            app,
            alice,
            dir,
        }
    }

    pub fn scope(&self) -> String {
        format!("/subscriptions/{}", self.sub)
    }

    pub fn config(&self, mode: Mode) -> AzureConfig {
        AzureConfig {
            mode,
            tenant_id: Some(self.fake.tenant()),
            client_id: Some(self.app.client_id.clone()),
            client_secret_file: Some(self.dir.path().join("secret")),
            client_certificate_file: None,
            federated_token_file: None,
            managed_identity: false,
            roles: vec!["Reader".into(), "Contributor".into(), READER.into()],
            scopes: vec![self.scope(), format!("{}/resourceGroups/rg", self.scope())],
            authority_host: Some(self.fake.url()),
            arm_endpoint: Some(self.fake.url()),
            ca_file: Some(self.dir.path().join("ca.pem")),
            timeout_seconds: Some(5),
            replication_wait_seconds: Some(5),
        }
    }

    pub async fn provider(&self, mode: Mode) -> AzureProvider {
        self.with(self.config(mode)).await
    }

    pub async fn with(&self, c: AzureConfig) -> AzureProvider {
        AzureProvider::from_config("azure", &c)
            .await
            .expect("the provider builds")
    }

    pub fn template(&self) -> SpecTemplate {
        SpecTemplate {
            subject: self.alice.clone(),
            role: "Reader".into(),
            scope: self.scope(),
            invalid_role: "Owner".into(),
            native_expiry: true,
        }
    }

    /// Alice's role assignments (not jitsudo's records, whose principals do not exist).
    fn held_by(&self, principal: &str) -> Vec<jitsudo_testkit::fakes::azure::Assignment> {
        self.fake
            .assignments()
            .into_iter()
            .filter(|a| a.principal_id == principal)
            .collect()
    }
}

jitsudo_providers::provider_conformance!(
    conformance_pim,
    templated = async {
        let a = Azure::new();
        let p = Arc::new(a.provider(Mode::Pim).await) as Arc<dyn Provider>;
        let t = a.template();
        (p, a, t)
    }
);

jitsudo_providers::provider_conformance!(
    conformance_assignments,
    templated = async {
        let a = Azure::new();
        let p = Arc::new(a.provider(Mode::Assignments).await) as Arc<dyn Provider>;
        let t = SpecTemplate {
            native_expiry: false,
            ..a.template()
        };
        (p, a, t)
    }
);

fn spec(a: &Azure, role: &str, lifetime: TimeDelta) -> GrantSpec {
    GrantSpec {
        grant_id: Uuid::now_v7(),
        request_id: Uuid::now_v7(),
        subject: a.alice.clone(),
        role: role.into(),
        scope: a.scope(),
        not_after: Utc::now() + lifetime,
        metadata: BTreeMap::new(),
    }
}

#[tokio::test]
async fn a_pim_grant_ends_at_not_after_by_azure_itself() {
    let a = Azure::new();
    let p = a.provider(Mode::Pim).await;
    let s = spec(&a, "Reader", TimeDelta::hours(1));
    p.grant(&s).await.unwrap();
    let held = a.held_by(&a.alice);
    assert_eq!(held.len(), 1, "{held:?}");
    let sched = held[0].schedule.as_ref().expect("made by a PIM request");
    assert_eq!(sched.end.unwrap().timestamp(), s.not_after.timestamp());
    assert!(a.fake.has_role(&a.scope(), &a.alice, READER));
    // Every call went out with the application's token.
    let calls = a.fake.requests();
    assert!(
        calls
            .iter()
            .filter(|c| !c.path.contains("oauth2"))
            .all(|c| c.caller.as_deref() == Some(a.app.client_id.as_str())),
        "{calls:?}"
    );
    // With nothing of jitsudo's running, Azure's clock ends the access.
    drop(p);
    a.fake.advance(Duration::from_secs(3601));
    assert!(!a.fake.has_role(&a.scope(), &a.alice, READER));
}

#[tokio::test]
async fn pim_keeps_an_assignment_five_minutes_and_the_revoke_waits_for_it() {
    let a = Azure::new();
    a.fake.set_min_active(Duration::from_secs(300));
    let p = a.provider(Mode::Pim).await;
    let s = spec(&a, "Reader", TimeDelta::hours(1));
    let r = p.grant(&s).await.unwrap();
    let e = p.revoke(&r).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Retryable, "{e}");
    assert!(e.to_string().contains("ActiveDurationTooShort"), "{e}");
    // Meanwhile the tombstone keeps a late grant out, and the access is still there.
    assert!(matches!(
        p.grant(&s).await,
        Err(ProviderError::Tombstoned { .. })
    ));
    assert!(a.fake.has_role(&a.scope(), &a.alice, READER));
    // Five minutes on, the engine's retry takes it away.
    a.fake.advance(Duration::from_secs(301));
    p.revoke(&r).await.unwrap();
    assert!(!a.fake.has_role(&a.scope(), &a.alice, READER));
    assert_eq!(p.inspect(&r).await.unwrap(), GrantState::Gone);
}

#[tokio::test]
async fn revokes_of_two_grants_sharing_access_on_two_replicas_leave_none_behind() {
    for mode in [Mode::Assignments, Mode::Pim] {
        let a = Azure::new();
        // Two replicas: two providers, no lock in common.
        let (p1, p2) = (a.provider(mode).await, a.provider(mode).await);
        let s1 = spec(&a, "Reader", TimeDelta::hours(1));
        let s2 = spec(&a, "Reader", TimeDelta::hours(2));
        let r1 = p1.grant(&s1).await.unwrap();
        let r2 = p2.grant(&s2).await.unwrap();
        let (x, y) = tokio::join!(p1.revoke(&r1), p2.revoke(&r2));
        x.unwrap();
        y.unwrap();
        assert!(
            !a.fake.has_role(&a.scope(), &a.alice, READER),
            "{mode:?}: {:?}",
            a.held_by(&a.alice)
        );
    }
}

#[tokio::test]
async fn grants_of_one_role_share_the_pim_assignment_and_its_end_follows_the_latest() {
    let a = Azure::new();
    let p = a.provider(Mode::Pim).await;
    let early = spec(&a, "Reader", TimeDelta::hours(1));
    let late = GrantSpec {
        grant_id: Uuid::now_v7(),
        request_id: Uuid::now_v7(),
        not_after: early.not_after + TimeDelta::hours(1),
        ..early.clone()
    };
    let r1 = p.grant(&early).await.unwrap();
    let r2 = p.grant(&late).await.unwrap();
    let end = |a: &Azure| {
        a.held_by(&a.alice)
            .iter()
            .map(|x| x.schedule.as_ref().unwrap().end.unwrap().timestamp())
            .collect::<Vec<_>>()
    };
    assert_eq!(end(&a), [late.not_after.timestamp()]);
    // The later grant goes first: the end moves back to the earlier one's.
    p.revoke(&r2).await.unwrap();
    assert_eq!(end(&a), [early.not_after.timestamp()]);
    assert_eq!(p.inspect(&r1).await.unwrap(), GrantState::Active);
    assert_eq!(p.inspect(&r2).await.unwrap(), GrantState::Gone);
    p.revoke(&r1).await.unwrap();
    assert!(end(&a).is_empty());
}

#[tokio::test]
async fn standing_access_is_never_taken_over_or_removed() {
    for mode in [Mode::Pim, Mode::Assignments] {
        let a = Azure::new();
        let p = a.provider(mode).await;
        let standing = a.fake.put_assignment(&a.scope(), READER, &a.alice);
        let s = spec(&a, "Reader", TimeDelta::hours(1));
        let e = p.grant(&s).await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::Permanent, "{e}");
        assert!(e.to_string().contains("jitsudo did not make"), "{e}");
        p.revoke(&GrantRecord::from_spec(&s)).await.unwrap();
        let held = a.held_by(&a.alice);
        assert_eq!(held.len(), 1, "{mode:?}: {held:?}");
        assert_eq!(held[0].name, standing);
    }
}

#[tokio::test]
async fn an_assignment_is_a_role_assignment_that_the_last_revoke_removes() {
    let a = Azure::new();
    let p = a.provider(Mode::Assignments).await;
    let s1 = spec(&a, "Reader", TimeDelta::hours(1));
    let s2 = spec(&a, READER, TimeDelta::hours(2));
    let r1 = p.grant(&s1).await.unwrap();
    let r2 = p.grant(&s2).await.unwrap();
    let held = a.held_by(&a.alice);
    assert_eq!(held.len(), 1, "one assignment for both: {held:?}");
    assert!(held[0].schedule.is_none());
    assert!(
        held[0]
            .description
            .as_deref()
            .is_some_and(|d| d.starts_with("jitsudo-access")),
        "{held:?}"
    );
    p.revoke(&r1).await.unwrap();
    assert!(a.fake.has_role(&a.scope(), &a.alice, READER));
    p.revoke(&r2).await.unwrap();
    assert!(!a.fake.has_role(&a.scope(), &a.alice, READER));
    // The records went; the tombstones stay until not_after, and grant nothing to anyone.
    let left = a.fake.assignments();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|x| {
        x.principal_type == "ServicePrincipal"
            && x.description
                .as_deref()
                .is_some_and(|d| d.starts_with("jitsudo-tombstone"))
    }));
}

#[tokio::test]
async fn bad_input_gets_a_message_with_the_cause_and_the_fix() {
    let a = Azure::new();
    let mut c = a.config(Mode::Pim);
    c.roles.push("Nonexistent Role".into());
    c.roles.push("Twice".into());
    a.fake.add_custom_role("Twice");
    a.fake.add_custom_role("Twice");
    let p = a.with(c).await;

    let e = p
        .grant(&spec(&a, "Nonexistent Role", TimeDelta::hours(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ProviderError::Invalid { field: "role", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("no role definition named"), "{e}");

    let e = p
        .grant(&spec(&a, "Twice", TimeDelta::hours(1)))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("names 2 role definitions") && e.to_string().contains("GUID"),
        "{e}"
    );

    let outside = GrantSpec {
        scope: format!("/subscriptions/{}", Uuid::new_v4()),
        ..spec(&a, "Reader", TimeDelta::hours(1))
    };
    let e = p.validate(&outside).await.unwrap_err();
    assert!(
        e.to_string().contains("not in this provider's scopes"),
        "{e}"
    );

    let e = p
        .validate(&GrantSpec {
            subject: "alice@contoso.example".into(),
            ..spec(&a, "Reader", TimeDelta::hours(1))
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("{claim:oid}"), "{e}");

    // A principal ARM never learns of: retried for the replication window, then named.
    let ghost = GrantSpec {
        subject: Uuid::new_v4().to_string(),
        ..spec(&a, "Reader", TimeDelta::hours(1))
    };
    let e = p.grant(&ghost).await.unwrap_err();
    assert!(
        matches!(
            e,
            ProviderError::Invalid {
                field: "subject",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("after 5 s"), "{e}");
    // ... and leaves nothing behind.
    assert!(
        a.fake.assignments().is_empty(),
        "{:?}",
        a.fake.assignments()
    );

    // jitsudod may not write role assignments: the message names the permission and a role.
    a.fake.deny(
        &a.app.client_id,
        "Microsoft.Authorization/roleAssignments/write",
    );
    let e = p
        .grant(&spec(&a, "Reader", TimeDelta::hours(1)))
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Forbidden { .. }), "{e}");
    let m = e.to_string();
    assert!(
        m.contains("AuthorizationFailed")
            && m.contains("Role Based Access Control Administrator")
            && m.contains(&a.app.client_id),
        "{m}"
    );
}

#[tokio::test]
async fn a_principal_replicating_to_arm_is_waited_for() {
    let a = Azure::new();
    a.fake.set_replication_delay(Duration::from_secs(2));
    let bob = a.fake.add_user("bob@contoso.example");
    for mode in [Mode::Assignments, Mode::Pim] {
        let p = a.provider(mode).await;
        let s = GrantSpec {
            subject: bob.clone(),
            ..spec(&a, "Reader", TimeDelta::hours(1))
        };
        let r = p.grant(&s).await.unwrap();
        assert!(a.fake.has_role(&a.scope(), &bob, READER));
        p.revoke(&r).await.unwrap();
        assert!(!a.fake.has_role(&a.scope(), &bob, READER));
    }
}

#[tokio::test]
async fn a_wrong_secret_names_entra_s_refusal_and_leaks_no_secret() {
    let a = Azure::new();
    let mut c = a.config(Mode::Pim);
    let wrong = a.dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-secret-value").unwrap();
    c.client_secret_file = Some(wrong);
    let p = a.with(c).await;
    let e = p
        .grant(&spec(&a, "Reader", TimeDelta::hours(1)))
        .await
        .unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, ProviderError::Forbidden { .. }), "{m}");
    assert!(
        m.contains("AADSTS7000215") && m.contains("client_id"),
        "{m}"
    );
    assert!(
        !m.contains("not-the-secret-value") && !m.contains(&a.app.secret),
        "{m}"
    );
}

#[tokio::test]
async fn throttling_is_waited_out_and_a_lost_answer_is_retried_to_one_grant() {
    let a = Azure::new();
    let p = a.provider(Mode::Pim).await;
    // 429 with Retry-After: 1 on the first two writes, waited out inside the call.
    a.fake.faults().throttle(2, 1, Filter::method("PUT"));
    let s = spec(&a, "Reader", TimeDelta::hours(1));
    p.grant(&s).await.unwrap();
    assert!(a.fake.has_role(&a.scope(), &a.alice, READER));

    // The PIM request is applied, its answer lost: the outcome is unknown; the engine's
    // retry finds the request made and ends in one assignment.
    let s = spec(&a, "Contributor", TimeDelta::hours(1));
    a.fake
        .faults()
        .drop_after_apply(1, Filter::path("roleAssignmentScheduleRequests"));
    let e = p.grant(&s).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    let r = p.grant(&s).await.unwrap();
    assert_eq!(
        a.held_by(&a.alice)
            .iter()
            .filter(|x| x.role == CONTRIBUTOR)
            .count(),
        1
    );
    // ARM down (503): retryable, nothing changed.
    a.fake.faults().fail(1, 503, Filter::method("PUT"));
    let e = p.revoke(&r).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Retryable, "{e}");
    p.revoke(&r).await.unwrap();
    assert!(!a.fake.has_role(&a.scope(), &a.alice, CONTRIBUTOR));
}

#[tokio::test]
async fn the_listing_pages_through_every_record() {
    let a = Azure::new();
    a.fake.set_page_size(3);
    let p = a.provider(Mode::Assignments).await;
    let mut ids = Vec::new();
    for _ in 0..7 {
        let s = spec(&a, "Reader", TimeDelta::hours(1));
        ids.push(p.grant(&s).await.unwrap().grant_id);
    }
    let listed = jitsudo_providers::reconcile::list_all(&p).await.unwrap();
    let mut found: Vec<Uuid> = listed.iter().map(|g| g.grant_id).collect();
    found.sort();
    ids.sort();
    assert_eq!(found, ids);
    assert!(listed.iter().all(|g| !g.tombstone && g.subject == a.alice));
}

#[test]
fn the_shipped_examples_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-config/azure");
    let text = std::fs::read_to_string(dir.join("providers.toml")).unwrap();
    let doc: toml::Table = text.parse().expect("providers.toml is TOML");
    let tables = doc["providers"].as_array().expect("[[providers]]");
    assert_eq!(tables.len(), 3);
    for t in tables {
        let section =
            jitsudo_providers::config::ProviderSection::from_table(t.as_table().unwrap().clone())
                .unwrap_or_else(|e| panic!("cluster-config/azure/providers.toml: {e}"));
        assert_eq!(section.kind.kind(), "azure");
    }
    let role: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("jitsudod-role.json")).unwrap())
            .expect("jitsudod-role.json is JSON");
    let actions: Vec<&str> = role["Actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    for a in [
        "Microsoft.Authorization/roleAssignments/write",
        "Microsoft.Authorization/roleAssignments/delete",
        "Microsoft.Authorization/roleAssignmentScheduleRequests/write",
        "Microsoft.Authorization/roleAssignmentSchedules/read",
    ] {
        assert!(actions.contains(&a), "{a}");
    }
}

#[test]
fn an_azure_table_names_what_is_wrong() {
    let parse = |t: &str| {
        jitsudo_providers::config::ProviderSection::from_table(t.parse::<toml::Table>().unwrap())
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let e = parse(
        "name = \"az\"\nkind = \"azure\"\nroles = [\"Reader\"]\nscopes = [\"/subscriptions/00000000-0000-0000-0000-000000000001\"]\n",
    );
    assert!(e.contains("no credentials"), "{e}");
    let e = parse(
        "name = \"az\"\nkind = \"azure\"\nmanaged_identity = true\nroles = [\"Reader\"]\nscopes = [\"subscriptions/x\"]\n",
    );
    assert!(e.contains("not an ARM scope"), "{e}");
    let e = parse(
        "name = \"az\"\nkind = \"azure\"\nmanaged_identity = true\nmode = \"eligible\"\nroles = [\"Reader\"]\nscopes = [\"/subscriptions/00000000-0000-0000-0000-000000000001\"]\n",
    );
    assert!(e.contains("mode"), "{e}");
}

#[tokio::test]
async fn a_token_for_another_cloud_s_arm_is_named_as_a_configuration_error() {
    let a = Azure::new();
    let mut c = a.config(Mode::Pim);
    // The same server under another name: Entra's token is for `localhost`, ARM here
    // answers as 127.0.0.1 and takes tokens for itself only.
    c.arm_endpoint = Some(a.fake.url().replace("127.0.0.1", "localhost"));
    let p = a.with(c).await;
    let e = p
        .grant(&spec(&a, "Reader", TimeDelta::hours(1)))
        .await
        .unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, ProviderError::Forbidden { .. }), "{m}");
    assert!(
        m.contains("InvalidAuthenticationTokenAudience") && m.contains("same cloud"),
        "{m}"
    );
}

#[tokio::test]
async fn a_certificate_or_a_federated_token_authenticates_as_the_application() {
    let a = Azure::new();
    let file = |name: &str, text: &str| {
        let path = a.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let works = async |c: AzureConfig| {
        let p = a.with(c).await;
        let r = p.grant(&spec(&a, "Reader", TimeDelta::hours(1))).await?;
        p.revoke(&r).await
    };

    let cert = file("cert.pem", &a.fake.add_certificate(&a.app.client_id));
    let mut c = a.config(Mode::Assignments);
    c.client_secret_file = None;
    c.client_certificate_file = Some(cert);
    works(c.clone()).await.unwrap();

    // Another application's certificate: Entra does not know its thumbprint for this one.
    let other = a.fake.add_application("other");
    c.client_certificate_file = Some(file("other.pem", &a.fake.add_certificate(&other.client_id)));
    let e = works(c).await.unwrap_err();
    assert!(matches!(e, ProviderError::Forbidden { .. }), "{e}");
    assert!(e.to_string().contains("AADSTS700027"), "{e}");

    // Workload identity federation: a Kubernetes service account's token, trusted by Entra.
    let issuer = "https://oidc.aks.example/7c1b";
    let token = a.fake.add_federated_credential(
        &a.app.client_id,
        issuer,
        "system:serviceaccount:jitsudo:jitsudod",
    );
    let mut c = a.config(Mode::Assignments);
    c.client_secret_file = None;
    c.federated_token_file = Some(file("token", &token));
    works(c.clone()).await.unwrap();

    // A token of a subject Entra has no federated credential for.
    let stranger =
        a.fake
            .add_federated_credential(&other.client_id, issuer, "system:serviceaccount:x:y");
    c.federated_token_file = Some(file("stranger", &stranger));
    let e = works(c).await.unwrap_err();
    assert!(e.to_string().contains("AADSTS70021"), "{e}");
}
