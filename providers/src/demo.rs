//! The demo provider of dev mode: grants live in memory and nothing real is ever granted.
//!
//! Keeps the full provider contract (idempotent grant, tombstones, native expiry at
//! `not_after`), and every credential it mints says, in its notice and its values, that it is fake.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use crate::{
    Credentials, GrantRecord, GrantSpec, GrantState, ManagedGrant, ManagedPage, Provider,
    ProviderError, ProviderInfo,
};

/// The value of every secret-looking variable the demo provider hands out.
pub const DEMO_CREDENTIAL: &str = "DEMO-NOT-A-REAL-CREDENTIAL";
/// The notice shown with every demo credential.
pub const DEMO_NOTICE: &str =
    "jitsudo demo provider: nothing was granted anywhere; these are not real credentials";
/// Demo credentials never outlive this, even for a longer grant.
const CREDENTIAL_LIFETIME: TimeDelta = TimeDelta::hours(1);

/// `kind = "demo"` has no keys of its own.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {}

#[derive(Default)]
struct DemoState {
    grants: HashMap<Uuid, GrantRecord>,
    tombstones: HashMap<Uuid, GrantRecord>,
}

/// A [`Provider`] for dev mode that only remembers what it was asked.
pub struct DemoProvider {
    name: String,
    state: Mutex<DemoState>,
}

impl Default for DemoProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl DemoProvider {
    /// A demo provider named `demo`.
    pub fn new() -> Self {
        Self::with_name("demo")
    }

    pub fn with_name(name: impl Into<String>) -> Self {
        DemoProvider {
            name: name.into(),
            state: Mutex::default(),
        }
    }

    /// The grants that are usable now.
    pub fn active_grants(&self) -> Vec<GrantRecord> {
        let now = Utc::now();
        let mut grants: Vec<_> = self
            .lock()
            .grants
            .values()
            .filter(|g| now < g.not_after)
            .cloned()
            .collect();
        grants.sort_by_key(|g| g.grant_id);
        grants
    }

    fn lock(&self) -> MutexGuard<'_, DemoState> {
        // The state stays consistent across a panic: every update is a single insert/remove.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn invalid(&self, (field, reason): (&'static str, String)) -> ProviderError {
        ProviderError::Invalid {
            provider: self.name.clone(),
            field,
            reason,
        }
    }

    fn active(&self, grant_id: Uuid, now: DateTime<Utc>) -> Option<GrantRecord> {
        self.lock()
            .grants
            .get(&grant_id)
            .filter(|g| now < g.not_after)
            .cloned()
    }
}

#[async_trait]
impl Provider for DemoProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn validate(&self, spec: &GrantSpec) -> Result<(), ProviderError> {
        check_fake_rules(spec).map_err(|e| self.invalid(e))
    }

    async fn grant(&self, spec: &GrantSpec) -> Result<GrantRecord, ProviderError> {
        let now = Utc::now();
        let mut state = self.lock();
        let tombstoned = state.tombstones.contains_key(&spec.grant_id);
        match fake_grant(&state.grants, tombstoned, spec, now) {
            FakeGrant::Tombstoned => Err(ProviderError::Tombstoned {
                provider: self.name.clone(),
                grant_id: spec.grant_id,
            }),
            FakeGrant::Existing(record) => Ok(record),
            FakeGrant::Refused(e) => Err(self.invalid(e)),
            FakeGrant::New => {
                let record = GrantRecord {
                    provider_ref: format!("demo:{}", spec.grant_id),
                    ..GrantRecord::from_spec(spec)
                };
                state.grants.insert(spec.grant_id, record.clone());
                tracing::info!(provider = %self.name, grant_id = %spec.grant_id, role = %spec.role, scope = %spec.scope, "demo grant (nothing real was granted)");
                Ok(record)
            }
        }
    }

    async fn revoke(&self, grant: &GrantRecord) -> Result<(), ProviderError> {
        let mut state = self.lock();
        state.tombstones.insert(grant.grant_id, grant.clone());
        state.grants.remove(&grant.grant_id);
        Ok(())
    }

    async fn inspect(&self, grant: &GrantRecord) -> Result<GrantState, ProviderError> {
        Ok(match self.active(grant.grant_id, Utc::now()) {
            Some(_) => GrantState::Active,
            None => GrantState::Gone,
        })
    }

    async fn credentials(&self, grant: &GrantRecord) -> Result<Credentials, ProviderError> {
        let now = Utc::now();
        let Some(record) = self.active(grant.grant_id, now) else {
            return Err(ProviderError::NotActive {
                provider: self.name.clone(),
                grant_id: grant.grant_id,
            });
        };
        let env = BTreeMap::from([
            ("JITSUDO_DEMO".to_owned(), "1".to_owned()),
            ("JITSUDO_DEMO_TOKEN".to_owned(), DEMO_CREDENTIAL.to_owned()),
            ("JITSUDO_GRANT_ID".to_owned(), record.grant_id.to_string()),
            ("JITSUDO_ROLE".to_owned(), record.role.clone()),
            ("JITSUDO_SCOPE".to_owned(), record.scope.clone()),
        ]);
        Ok(Credentials {
            env,
            expires_at: record.not_after.min(now + CREDENTIAL_LIFETIME),
            notice: Some(DEMO_NOTICE.to_owned()),
        })
    }

    async fn list_managed(&self, page: Option<&str>) -> Result<ManagedPage, ProviderError> {
        let state = self.lock();
        fake_list(&state.grants, &state.tombstones, page, Utc::now()).map_err(|e| self.invalid(e))
    }

    async fn forget(&self, tombstone: &ManagedGrant) -> Result<(), ProviderError> {
        self.lock().tombstones.remove(&tombstone.grant_id);
        Ok(())
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            kind: "demo".into(),
            roles: vec!["any (a role starting with \"invalid\" does not exist)".into()],
            scopes: vec!["any".into()],
            native_expiry: true,
        }
    }
}

/// Grants per page of the fakes' listings: small, so that paging is exercised.
const FAKE_PAGE: usize = 50;

/// The listing of the fakes (this provider and the http reference server): live grants and
/// tombstones ordered by `grant_id`; the page token is the last `grant_id` of the page before.
pub(crate) fn fake_list(
    grants: &HashMap<Uuid, GrantRecord>,
    tombstones: &HashMap<Uuid, GrantRecord>,
    page: Option<&str>,
    now: DateTime<Utc>,
) -> Result<ManagedPage, (&'static str, String)> {
    let after = page
        .map(|p| {
            p.parse::<Uuid>().map_err(|_| {
                (
                    "page",
                    format!("{p:?} is not a page token of this provider"),
                )
            })
        })
        .transpose()?;
    let live = grants
        .values()
        .filter(|g| now < g.not_after)
        .map(|g| (g, false));
    let dead = tombstones.values().map(|g| (g, true));
    let mut all: Vec<(&GrantRecord, bool)> = live
        .chain(dead)
        .filter(|(g, _)| after.is_none_or(|a| g.grant_id > a))
        .collect();
    all.sort_by_key(|(g, _)| g.grant_id);
    let more = all.len() > FAKE_PAGE;
    all.truncate(FAKE_PAGE);
    let next = more
        .then(|| all.last().map(|(g, _)| g.grant_id.to_string()))
        .flatten();
    let grants = all
        .into_iter()
        .map(|(g, tombstone)| ManagedGrant {
            grant_id: g.grant_id,
            request_id: Some(g.request_id),
            subject: if tombstone {
                String::new()
            } else {
                g.subject.clone()
            },
            role: g.role.clone(),
            scope: g.scope.clone(),
            not_after: Some(g.not_after),
            provider_ref: g.provider_ref.clone(),
            tombstone,
        })
        .collect();
    Ok(ManagedPage { grants, next })
}

/// The validation rules of the fakes (this provider and the http reference server): role,
/// scope and subject must be non-empty; a role starting with `invalid` does not exist, so
/// that tests can provoke a permanent error.
pub(crate) fn check_fake_rules(spec: &GrantSpec) -> Result<(), (&'static str, String)> {
    if spec.subject.trim().is_empty() {
        return Err(("subject", "must not be empty".to_owned()));
    }
    if spec.role.trim().is_empty() {
        return Err(("role", "must not be empty".to_owned()));
    }
    if spec.scope.trim().is_empty() {
        return Err(("scope", "must not be empty".to_owned()));
    }
    if spec.role.starts_with("invalid") {
        return Err(("role", format!("role {:?} does not exist", spec.role)));
    }
    Ok(())
}

/// What a fake does with a grant call, decided from its current state.
pub(crate) enum FakeGrant {
    /// The `grant_id` was revoked before: nothing is granted.
    Tombstoned,
    /// A repeat of an earlier grant: the same record again.
    Existing(GrantRecord),
    Refused((&'static str, String)),
    New,
}

pub(crate) fn fake_grant(
    grants: &HashMap<Uuid, GrantRecord>,
    tombstoned: bool,
    spec: &GrantSpec,
    now: DateTime<Utc>,
) -> FakeGrant {
    if tombstoned {
        return FakeGrant::Tombstoned;
    }
    if let Some(existing) = grants.get(&spec.grant_id) {
        let same = GrantRecord {
            provider_ref: existing.provider_ref.clone(),
            ..GrantRecord::from_spec(spec)
        };
        return if &same == existing {
            FakeGrant::Existing(existing.clone())
        } else {
            FakeGrant::Refused((
                "grant_id",
                "was already used for a different grant".to_owned(),
            ))
        };
    }
    if let Err(e) = check_fake_rules(spec) {
        return FakeGrant::Refused(e);
    }
    if spec.not_after <= now {
        return FakeGrant::Refused(("not_after", "is already in the past".to_owned()));
    }
    FakeGrant::New
}
