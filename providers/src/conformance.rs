//! The provider conformance suite: the contract of [`crate::Provider`] as executable checks.
//!
//! [`provider_conformance!`](crate::provider_conformance) stamps one `#[tokio::test]` per
//! property for an implementation; each property is also a plain async function here, so a
//! failing test points at one sentence of the contract.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use uuid::Uuid;

use std::collections::BTreeMap;

use crate::reconcile::{self, Drift, Expected, ExpectedGrant, Finding, OrphanCause};
use crate::{ErrorClass, GrantRecord, GrantSpec, GrantState, Provider, ProviderError};

/// How long an ordinary test grant lasts: far longer than any test.
const LIFETIME: Duration = Duration::from_secs(3600);
/// The lifetime of the grant that must expire during the `not_after` test: short, but long
/// enough for the grant call itself to land before it.
const SHORT_LIFETIME: Duration = Duration::from_secs(2);
/// After `not_after`, how long to wait before asking: covers clock granularity only.
const PAST_NOT_AFTER: Duration = Duration::from_millis(100);

/// What the suite grants: a role and scope the implementation accepts, and a role it rejects.
#[derive(Clone, Debug)]
pub struct SpecTemplate {
    pub subject: String,
    pub role: String,
    pub scope: String,
    /// A role the provider must refuse as invalid (a permanent error).
    pub invalid_role: String,
    /// The cloud itself ends access at `not_after`. Without it (Kubernetes), the property
    /// is that one reconcile pass after `not_after` removes the access.
    pub native_expiry: bool,
}

impl Default for SpecTemplate {
    fn default() -> Self {
        SpecTemplate {
            subject: "alice@example.com".to_owned(),
            role: "reader".to_owned(),
            scope: "projects/conformance".to_owned(),
            invalid_role: "invalid-role".to_owned(),
            native_expiry: true,
        }
    }
}

impl SpecTemplate {
    /// A fresh spec (new `grant_id` and `request_id`) ending `lifetime` from now.
    pub fn spec(&self, lifetime: Duration) -> GrantSpec {
        GrantSpec {
            grant_id: Uuid::now_v7(),
            request_id: Uuid::now_v7(),
            subject: self.subject.clone(),
            role: self.role.clone(),
            scope: self.scope.clone(),
            not_after: Utc::now() + TimeDelta::from_std(lifetime).unwrap_or(TimeDelta::MAX),
            metadata: [("suite".to_owned(), "conformance".to_owned())].into(),
        }
    }

    pub fn invalid_spec(&self) -> GrantSpec {
        GrantSpec {
            role: self.invalid_role.clone(),
            ..self.spec(LIFETIME)
        }
    }
}

async fn granted(provider: &dyn Provider, spec: &GrantSpec) -> GrantRecord {
    match provider.grant(spec).await {
        Ok(record) => record,
        Err(e) => panic!("grant of a valid spec failed: {e}"),
    }
}

async fn revoked(provider: &dyn Provider, record: &GrantRecord) {
    if let Err(e) = provider.revoke(record).await {
        panic!("revoke failed: {e}");
    }
}

async fn state(provider: &dyn Provider, record: &GrantRecord) -> GrantState {
    match provider.inspect(record).await {
        Ok(state) => state,
        Err(e) => panic!("inspect failed: {e}"),
    }
}

fn assert_not_active(result: Result<crate::Credentials, ProviderError>, when: &str) {
    match result {
        Err(e @ ProviderError::NotActive { .. }) => assert_eq!(e.class(), ErrorClass::Permanent),
        Err(e) => panic!("credentials {when}: expected NotActive, got {e}"),
        Ok(_) => panic!("credentials {when} were minted"),
    }
}

pub async fn validate_accepts_a_valid_spec(provider: &dyn Provider, t: &SpecTemplate) {
    let spec = t.spec(LIFETIME);
    if let Err(e) = provider.validate(&spec).await {
        panic!("validate refused a valid spec: {e}");
    }
}

pub async fn validate_has_no_side_effects(provider: &dyn Provider, t: &SpecTemplate) {
    let spec = t.spec(LIFETIME);
    provider.validate(&spec).await.ok();
    assert_eq!(
        state(provider, &GrantRecord::from_spec(&spec)).await,
        GrantState::Gone
    );
}

pub async fn invalid_role_is_a_permanent_error(provider: &dyn Provider, t: &SpecTemplate) {
    let spec = t.invalid_spec();
    match provider.validate(&spec).await {
        Err(e) => assert_eq!(e.class(), ErrorClass::Permanent, "validate: {e}"),
        Ok(()) => panic!("validate accepted role {:?}", spec.role),
    }
    match provider.grant(&spec).await {
        Err(e) => {
            assert_eq!(e.class(), ErrorClass::Permanent, "grant: {e}");
            assert!(!e.is_retryable());
        }
        Ok(_) => panic!("grant accepted role {:?}", spec.role),
    }
    assert_eq!(
        state(provider, &GrantRecord::from_spec(&spec)).await,
        GrantState::Gone
    );
}

pub async fn grant_is_idempotent_per_grant_id(provider: &dyn Provider, t: &SpecTemplate) {
    let spec = t.spec(LIFETIME);
    let first = granted(provider, &spec).await;
    let second = granted(provider, &spec).await;
    assert_eq!(
        first, second,
        "a repeated grant must return the same record"
    );
    assert_eq!(first.grant_id, spec.grant_id);
    assert_eq!(first.not_after, spec.not_after);
    assert_eq!(state(provider, &first).await, GrantState::Active);
}

pub async fn concurrent_grants_of_one_grant_id_yield_one_record(
    provider: &dyn Provider,
    t: &SpecTemplate,
) {
    let spec = t.spec(LIFETIME);
    let (a, b, c, d) = tokio::join!(
        provider.grant(&spec),
        provider.grant(&spec),
        provider.grant(&spec),
        provider.grant(&spec)
    );
    let records: Vec<GrantRecord> = [a, b, c, d]
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("concurrent grant failed: {e}")))
        .collect();
    assert!(
        records.windows(2).all(|w| w[0] == w[1]),
        "concurrent grants returned different records: {records:?}"
    );
}

pub async fn inspect_of_an_active_grant_is_active(provider: &dyn Provider, t: &SpecTemplate) {
    let record = granted(provider, &t.spec(LIFETIME)).await;
    assert_eq!(state(provider, &record).await, GrantState::Active);
}

pub async fn inspect_of_a_never_granted_grant_is_gone(provider: &dyn Provider, t: &SpecTemplate) {
    let record = GrantRecord::from_spec(&t.spec(LIFETIME));
    assert_eq!(state(provider, &record).await, GrantState::Gone);
}

pub async fn inspect_after_revoke_is_gone(provider: &dyn Provider, t: &SpecTemplate) {
    let record = granted(provider, &t.spec(LIFETIME)).await;
    revoked(provider, &record).await;
    assert_eq!(state(provider, &record).await, GrantState::Gone);
}

pub async fn revoke_is_idempotent(provider: &dyn Provider, t: &SpecTemplate) {
    let record = granted(provider, &t.spec(LIFETIME)).await;
    revoked(provider, &record).await;
    revoked(provider, &record).await;
    assert_eq!(state(provider, &record).await, GrantState::Gone);
}

pub async fn revoke_of_an_unknown_grant_is_ok(provider: &dyn Provider, t: &SpecTemplate) {
    let record = GrantRecord::from_spec(&t.spec(LIFETIME));
    revoked(provider, &record).await;
    assert_eq!(state(provider, &record).await, GrantState::Gone);
}

pub async fn revoke_leaves_other_grants_alone(provider: &dyn Provider, t: &SpecTemplate) {
    let kept = granted(provider, &t.spec(LIFETIME)).await;
    let gone = granted(provider, &t.spec(LIFETIME)).await;
    revoked(provider, &gone).await;
    assert_eq!(state(provider, &kept).await, GrantState::Active);
    assert_eq!(state(provider, &gone).await, GrantState::Gone);
}

pub async fn grant_after_revoke_of_same_grant_id_does_nothing(
    provider: &dyn Provider,
    t: &SpecTemplate,
) {
    let spec = t.spec(LIFETIME);
    let record = granted(provider, &spec).await;
    revoked(provider, &record).await;
    match provider.grant(&spec).await {
        Err(e @ ProviderError::Tombstoned { .. }) => {
            assert_eq!(e.class(), ErrorClass::Permanent);
        }
        Err(e) => panic!("late grant: expected Tombstoned, got {e}"),
        Ok(_) => panic!("a grant after a revoke of the same grant_id succeeded"),
    }
    assert_eq!(state(provider, &record).await, GrantState::Gone);
}

/// The race the tombstone exists for: a revoke issued while the grant's outcome was unknown
/// overtakes the grant call itself.
pub async fn grant_after_revoke_of_unknown_grant_id_does_nothing(
    provider: &dyn Provider,
    t: &SpecTemplate,
) {
    let spec = t.spec(LIFETIME);
    revoked(provider, &GrantRecord::from_spec(&spec)).await;
    match provider.grant(&spec).await {
        Err(ProviderError::Tombstoned { grant_id, .. }) => assert_eq!(grant_id, spec.grant_id),
        Err(e) => panic!("late grant: expected Tombstoned, got {e}"),
        Ok(_) => panic!("a grant after a revoke of the same grant_id succeeded"),
    }
    assert_eq!(
        state(provider, &GrantRecord::from_spec(&spec)).await,
        GrantState::Gone
    );
}

pub async fn not_after_is_honoured(provider: &dyn Provider, t: &SpecTemplate) {
    let spec = t.spec(SHORT_LIFETIME);
    let record = granted(provider, &spec).await;
    // Only assert "active" while the deadline is clearly ahead: a slow machine must not
    // turn this into a timing assertion.
    if Utc::now() + TimeDelta::milliseconds(500) < spec.not_after {
        assert_eq!(state(provider, &record).await, GrantState::Active);
    }
    let wait = (spec.not_after - Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO)
        + PAST_NOT_AFTER;
    tokio::time::sleep(wait).await;
    if !t.native_expiry {
        // The store still thinks the request is ACTIVE (its expiry is late): the pass must
        // reap the grant anyway, because it is past its not_after.
        let expected = BTreeMap::from([(spec.grant_id, Expected::Live(expected_of(&spec)))]);
        let found = pass(provider, &expected, &[expected_of(&spec)]).await;
        assert!(
            found.iter().any(|f| matches!(f, Finding::Orphan { grant, cause: OrphanCause::PastNotAfter } if grant.grant_id == spec.grant_id)),
            "a grant past its not_after was not reaped: {found:?}"
        );
    }
    assert_eq!(
        state(provider, &record).await,
        GrantState::Gone,
        "a grant past its not_after must be gone"
    );
    assert_not_active(provider.credentials(&record).await, "past not_after");
}

fn expected_of(spec: &GrantSpec) -> ExpectedGrant {
    ExpectedGrant {
        grant_id: spec.grant_id,
        request_id: spec.request_id,
        subject: spec.subject.clone(),
        role: spec.role.clone(),
        scope: spec.scope.clone(),
        not_after: spec.not_after,
    }
}

/// One reconcile pass as the engine's reconciler makes it: list everything, compare with
/// what the "store" expects, revoke orphans and forget expired tombstones.
pub async fn pass(
    provider: &dyn Provider,
    expected: &BTreeMap<uuid::Uuid, Expected>,
    live: &[ExpectedGrant],
) -> Vec<Finding> {
    let listed = reconcile::list_all(provider)
        .await
        .unwrap_or_else(|e| panic!("listing managed grants failed: {e}"));
    let found = reconcile::compare(&listed, expected, live, Utc::now());
    for f in &found {
        match f {
            Finding::Orphan { grant, .. } => revoked(provider, &grant.record()).await,
            Finding::ExpiredTombstone { grant } => {
                if let Err(e) = provider.forget(grant).await {
                    panic!("forgetting an expired tombstone failed: {e}");
                }
            }
            Finding::Drift { .. } => {}
        }
    }
    found
}

async fn listed(provider: &dyn Provider, grant_id: uuid::Uuid) -> Vec<crate::ManagedGrant> {
    reconcile::list_all(provider)
        .await
        .unwrap_or_else(|e| panic!("listing managed grants failed: {e}"))
        .into_iter()
        .filter(|g| g.grant_id == grant_id)
        .collect()
}

pub async fn listing_shows_a_grant_as_granted(provider: &dyn Provider, t: &SpecTemplate) {
    let spec = t.spec(LIFETIME);
    granted(provider, &spec).await;
    let found = listed(provider, spec.grant_id).await;
    assert_eq!(found.len(), 1, "the grant is listed once: {found:?}");
    let g = &found[0];
    assert!(!g.tombstone);
    assert_eq!(
        (g.subject.as_str(), g.role.as_str(), g.scope.as_str()),
        (
            spec.subject.as_str(),
            spec.role.as_str(),
            spec.scope.as_str()
        )
    );
    assert_eq!(g.request_id, Some(spec.request_id));
    // Providers may store not_after at second precision.
    let not_after = g.not_after.expect("a listed grant carries its not_after");
    assert!(
        (not_after - spec.not_after).num_seconds().abs() <= 1,
        "{not_after} vs {}",
        spec.not_after
    );
}

pub async fn an_orphan_is_reaped_in_one_pass(provider: &dyn Provider, t: &SpecTemplate) {
    let kept = t.spec(LIFETIME);
    let orphan = t.spec(LIFETIME);
    let kept_record = granted(provider, &kept).await;
    let orphan_record = granted(provider, &orphan).await;
    // The store knows `kept` as live and has never heard of `orphan`.
    let expected = BTreeMap::from([(kept.grant_id, Expected::Live(expected_of(&kept)))]);
    let found = pass(provider, &expected, &[expected_of(&kept)]).await;
    let reaped: Vec<_> = found
        .iter()
        .filter_map(|f| match f {
            Finding::Orphan { grant, cause } => Some((grant.grant_id, *cause)),
            _ => None,
        })
        .collect();
    assert!(
        reaped.contains(&(orphan.grant_id, OrphanCause::UnknownToStore)),
        "{found:?}"
    );
    assert!(
        !reaped.iter().any(|(id, _)| *id == kept.grant_id),
        "{found:?}"
    );
    assert_eq!(state(provider, &orphan_record).await, GrantState::Gone);
    assert_eq!(state(provider, &kept_record).await, GrantState::Active);
    // The orphan's grant_id is tombstoned like any revoke.
    assert!(matches!(
        provider.grant(&orphan).await,
        Err(ProviderError::Tombstoned { .. })
    ));
}

pub async fn drift_is_reported(provider: &dyn Provider, t: &SpecTemplate) {
    let spec = t.spec(LIFETIME);
    granted(provider, &spec).await;
    let never = t.spec(LIFETIME);
    let mut edited = expected_of(&spec);
    edited.subject = format!("not-{}", spec.subject);
    let expected = BTreeMap::from([(spec.grant_id, Expected::Live(edited.clone()))]);
    let found = pass(provider, &expected, &[edited, expected_of(&never)]).await;
    assert!(
        found.iter().any(|f| matches!(f, Finding::Drift { expected, drift: Drift::Changed { field: "subject", .. } } if expected.grant_id == spec.grant_id)),
        "a changed subject was not reported: {found:?}"
    );
    assert!(
        found.iter().any(|f| matches!(f, Finding::Drift { expected, drift: Drift::Missing } if expected.grant_id == never.grant_id)),
        "a missing grant was not reported: {found:?}"
    );
    // Drift is reported, never acted on by the pass itself.
    assert_eq!(
        state(provider, &GrantRecord::from_spec(&spec)).await,
        GrantState::Active
    );
}

pub async fn a_late_grant_after_revoke_is_never_applied(provider: &dyn Provider, t: &SpecTemplate) {
    let spec = t.spec(LIFETIME);
    revoked(provider, &GrantRecord::from_spec(&spec)).await;
    let late = provider.grant(&spec).await;
    assert!(
        matches!(late, Err(ProviderError::Tombstoned { .. })),
        "{late:?}"
    );
    let expected = BTreeMap::from([(spec.grant_id, Expected::Ended)]);
    pass(provider, &expected, &[]).await;
    let found = listed(provider, spec.grant_id).await;
    assert!(
        found.iter().all(|g| g.tombstone),
        "a late grant is listed as live: {found:?}"
    );
    assert_eq!(
        state(provider, &GrantRecord::from_spec(&spec)).await,
        GrantState::Gone
    );
}

pub async fn tombstones_are_forgotten_after_not_after(provider: &dyn Provider, t: &SpecTemplate) {
    let spec = t.spec(SHORT_LIFETIME);
    let record = granted(provider, &spec).await;
    revoked(provider, &record).await;
    let expected = BTreeMap::from([(spec.grant_id, Expected::Ended)]);
    pass(provider, &expected, &[]).await;
    if Utc::now() + TimeDelta::milliseconds(500) < spec.not_after {
        assert!(
            !listed(provider, spec.grant_id).await.is_empty(),
            "the tombstone went before its not_after"
        );
    }
    let wait = (spec.not_after - Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO)
        + Duration::from_millis(1100);
    tokio::time::sleep(wait).await;
    let found = pass(provider, &expected, &[]).await;
    assert!(
        found.iter().any(
            |f| matches!(f, Finding::ExpiredTombstone { grant } if grant.grant_id == spec.grant_id)
        ) || listed(provider, spec.grant_id).await.is_empty(),
        "{found:?}"
    );
    assert!(
        listed(provider, spec.grant_id).await.is_empty(),
        "the tombstone is still there"
    );
}

pub async fn revoke_of_one_of_two_overlapping_grants_leaves_the_other_active(
    provider: &dyn Provider,
    t: &SpecTemplate,
) {
    // Same principal, role and scope: a second request while the first is active.
    let first = t.spec(LIFETIME);
    let second = GrantSpec {
        grant_id: uuid::Uuid::now_v7(),
        request_id: uuid::Uuid::now_v7(),
        ..first.clone()
    };
    let a = granted(provider, &first).await;
    let b = granted(provider, &second).await;
    revoked(provider, &a).await;
    assert_eq!(state(provider, &a).await, GrantState::Gone);
    assert_eq!(state(provider, &b).await, GrantState::Active);
    if let Err(e) = provider.credentials(&b).await {
        panic!("credentials of the remaining grant: {e}");
    }
}

pub async fn credentials_for_an_active_grant_are_minted(provider: &dyn Provider, t: &SpecTemplate) {
    let spec = t.spec(LIFETIME);
    let record = granted(provider, &spec).await;
    let credentials = match provider.credentials(&record).await {
        Ok(credentials) => credentials,
        Err(e) => panic!("credentials for an active grant failed: {e}"),
    };
    assert!(
        !credentials.env.is_empty(),
        "credentials carry no environment"
    );
    assert!(
        credentials.expires_at <= spec.not_after,
        "credentials outlive the grant"
    );
    let shown = format!("{credentials:?}");
    for value in credentials.env.values().filter(|v| v.len() >= 4) {
        assert!(
            !shown.contains(value.as_str()),
            "Debug shows a credential value"
        );
    }
}

pub async fn credentials_are_refused_after_revoke(provider: &dyn Provider, t: &SpecTemplate) {
    let record = granted(provider, &t.spec(LIFETIME)).await;
    revoked(provider, &record).await;
    assert_not_active(provider.credentials(&record).await, "after revoke");
}

pub async fn credentials_are_refused_for_a_never_granted_grant(
    provider: &dyn Provider,
    t: &SpecTemplate,
) {
    assert_not_active(
        provider
            .credentials(&GrantRecord::from_spec(&t.spec(LIFETIME)))
            .await,
        "never granted",
    );
}

/// Stamps the conformance suite as a module of `#[tokio::test]`s.
///
/// `$setup` is an expression of a future yielding `(provider, guard)`: the provider (any
/// `Arc`/`Box`/reference of a [`Provider`](crate::Provider)) and whatever must live as long as
/// the test (a server, a temporary directory, `()`). It is evaluated once per test, inside the
/// new module, which imports the enclosing module (`use super::*`). An optional third
/// argument is a [`SpecTemplate`] with the role and scope the provider accepts.
///
/// ```no_run
/// jitsudo_providers::provider_conformance!(demo, async {
///     (std::sync::Arc::new(jitsudo_providers::demo::DemoProvider::new()), ())
/// });
/// ```
/// With `templated = $setup`, the future yields `(provider, guard, template)`: for a provider
/// whose accepted scope differs per test (a fresh cloud account each).
///
/// The calling crate needs `tokio` (with the `macros` and `rt` features) as a dev-dependency.
#[macro_export]
macro_rules! provider_conformance {
    (@tests $setup:expr; $($property:ident),* $(,)?) => {
        $(
            #[::tokio::test]
            async fn $property() {
                let (provider, _guard, template) = $setup.await;
                let template: $crate::conformance::SpecTemplate = template;
                $crate::conformance::$property(&*provider, &template).await;
            }
        )*
    };
    ($name:ident, templated = $setup:expr $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $crate::provider_conformance!(@tests $setup;
                validate_accepts_a_valid_spec,
                validate_has_no_side_effects,
                invalid_role_is_a_permanent_error,
                grant_is_idempotent_per_grant_id,
                concurrent_grants_of_one_grant_id_yield_one_record,
                inspect_of_an_active_grant_is_active,
                inspect_of_a_never_granted_grant_is_gone,
                inspect_after_revoke_is_gone,
                revoke_is_idempotent,
                revoke_of_an_unknown_grant_is_ok,
                revoke_leaves_other_grants_alone,
                grant_after_revoke_of_same_grant_id_does_nothing,
                grant_after_revoke_of_unknown_grant_id_does_nothing,
                not_after_is_honoured,
                credentials_for_an_active_grant_are_minted,
                credentials_are_refused_after_revoke,
                credentials_are_refused_for_a_never_granted_grant,
                revoke_of_one_of_two_overlapping_grants_leaves_the_other_active,
                listing_shows_a_grant_as_granted,
                an_orphan_is_reaped_in_one_pass,
                drift_is_reported,
                a_late_grant_after_revoke_is_never_applied,
                tombstones_are_forgotten_after_not_after,
            );
        }
    };
    ($name:ident, $setup:expr, $template:expr $(,)?) => {
        $crate::provider_conformance!($name, templated = async {
            let (provider, guard) = $setup.await;
            (provider, guard, $template)
        });
    };
    ($name:ident, $setup:expr $(,)?) => {
        $crate::provider_conformance!($name, $setup, $crate::conformance::SpecTemplate::default());
    };
}
