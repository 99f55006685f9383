//! The GCP IAM provider: a grant is a conditional role binding in the allow policy of a
//! project, folder or organization, its condition titled `jitsudo-<grant_id>` and ending
//! access at `not_after` (`request.time < timestamp(..)`): Google itself ends the access,
//! even while jitsudod is down.
//!
//! Every change is a read-modify-write of the whole policy (version 3) with the etag read;
//! a concurrent change (`ABORTED`) is read again and retried with jittered back-off, so no
//! other binding — another grant's, a human's — is ever lost. The condition's title is the
//! idempotency key: a repeated grant finds its binding. A revoke turns the binding into a
//! tombstone whose expression never holds, so a late grant of the same id finds it and
//! grants nothing; the reconciler removes tombstones and ended bindings after `not_after`,
//! so policies do not fill up. No credentials are minted: users keep their own identity.

mod bindings;
mod config;
mod errors;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use google_cloud_auth::credentials::Credentials as GoogleCredentials;
use google_cloud_gax::options::RequestOptionsBuilder as _;
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_iam_v1::model::{Binding, GetPolicyOptions, Policy};
use google_cloud_resourcemanager_v3::client::{Folders, Organizations, Projects};

pub use bindings::{NEVER, title, until};
pub use config::{BASIC_ROLES, GcpConfig};

use crate::{
    Credentials, GrantRecord, GrantSpec, GrantState, ManagedGrant, ManagedPage, Provider,
    ProviderError, ProviderInfo,
};
use errors::Call;

/// How many read-modify-write rounds a change may take before it gives up (retryable).
const MAX_ROUNDS: u32 = 12;
/// jitsudo bindings this long past their end are removed by any change to the policy:
/// they grant nothing (the condition has ended) and IAM's limits count them. The margin
/// covers replicas' clocks.
const PURGE_AFTER: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// The member prefixes IAM accepts for a principal.
const MEMBER_TYPES: [&str; 6] = [
    "user:",
    "group:",
    "serviceAccount:",
    "domain:",
    "principal://",
    "principalSet://",
];

pub struct GcpProvider {
    name: String,
    config: GcpConfig,
    projects: Projects,
    folders: Folders,
    organizations: Organizations,
    timeout: Duration,
    /// One change at a time per resource from this process: our own writes never race
    /// each other (other replicas' and humans' are caught by the etag).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Debug for GcpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpProvider")
            .field("name", &self.name)
            .field("scopes", &self.config.scopes)
            .finish_non_exhaustive()
    }
}

/// The same call on the client of the scope's kind (the three clients share no trait).
macro_rules! on_client {
    ($self:ident, $scope:expr, $c:ident => $call:expr) => {
        match config::scope_kind($scope) {
            Some("folders") => {
                let $c = &$self.folders;
                $call
            }
            Some("organizations") => {
                let $c = &$self.organizations;
                $call
            }
            _ => {
                let $c = &$self.projects;
                $call
            }
        }
    };
}

/// What one round of a change decided.
enum Round<T> {
    /// Write the edited bindings, then answer `T`.
    Write(T),
    /// Nothing to write: answer `T` now.
    Done(T),
}

impl GcpProvider {
    /// Builds the clients from the table (credentials read now; no call is made).
    pub async fn from_config(name: &str, c: &GcpConfig) -> Result<Self, String> {
        c.check()?;
        let credentials: GoogleCredentials = match &c.credentials_file {
            Some(path) => {
                let text = crate::config::read_secret(path, "credentials_file")?;
                let key: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
                    format!(
                        "credentials_file {} is not a JSON key file: {e}",
                        path.display()
                    )
                })?;
                google_cloud_auth::credentials::service_account::Builder::new(key)
                    .build()
                    .map_err(|e| {
                        format!(
                            "credentials_file {} is not a service-account key: {e}",
                            path.display()
                        )
                    })?
            }
            None => google_cloud_auth::credentials::Builder::default()
                .build()
                .map_err(|e| {
                    format!("no Application Default Credentials (set credentials_file, GOOGLE_APPLICATION_CREDENTIALS, or run on GCP with a service account): {e}")
                })?,
        };
        let timeout = Duration::from_secs(c.timeout_seconds.unwrap_or(10));
        macro_rules! client {
            ($t:ty) => {{
                let mut b = <$t>::builder()
                    .with_credentials(credentials.clone())
                    .with_retry_policy(NeverRetry)
                    .with_attempt_timeout(timeout);
                if let Some(e) = &c.endpoint {
                    b = b.with_endpoint(e.trim_end_matches('/'));
                }
                b.build()
                    .await
                    .map_err(|e| format!("building the Resource Manager client: {e}"))?
            }};
        }
        Ok(GcpProvider {
            name: name.to_owned(),
            config: c.clone(),
            projects: client!(Projects),
            folders: client!(Folders),
            organizations: client!(Organizations),
            timeout,
            locks: Mutex::new(HashMap::new()),
        })
    }

    fn invalid(&self, field: &'static str, reason: String) -> ProviderError {
        ProviderError::Invalid {
            provider: self.name.clone(),
            field,
            reason,
        }
    }

    fn check_spec(&self, role: &str, scope: &str, member: &str) -> Result<(), ProviderError> {
        if BASIC_ROLES.contains(&role) {
            return Err(self.invalid(
                "role",
                format!("{role} is a basic role: IAM takes no condition on basic roles, so it cannot be granted for a limited time; ask for a predefined or custom role"),
            ));
        }
        if !self.config.role_allowed(role) {
            return Err(self.invalid(
                "role",
                format!(
                    "{role:?} is not in this provider's roles: {}",
                    self.config.roles.join(", ")
                ),
            ));
        }
        if !self.config.scopes.iter().any(|s| s == scope) {
            return Err(self.invalid(
                "scope",
                format!(
                    "{scope:?} is not in this provider's scopes: {}",
                    self.config.scopes.join(", ")
                ),
            ));
        }
        if !member_ok(member) {
            return Err(self.invalid(
                "subject",
                format!(
                    "the principal {member:?} is not an IAM member: the provider's subject template must give user:EMAIL, group:EMAIL, serviceAccount:EMAIL, domain:NAME or principal://..."
                ),
            ));
        }
        Ok(())
    }

    fn lock_of(&self, scope: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(scope.to_owned()).or_default().clone()
    }

    async fn read(&self, scope: &str) -> Result<Policy, google_cloud_gax::error::Error> {
        let options = GetPolicyOptions::new().set_requested_policy_version(3);
        let t = self.timeout;
        on_client!(self, scope, c => c
            .get_iam_policy()
            .set_resource(scope)
            .set_options(options)
            .with_attempt_timeout(t)
            .send()
            .await)
    }

    async fn write(
        &self,
        scope: &str,
        policy: Policy,
    ) -> Result<Policy, google_cloud_gax::error::Error> {
        let t = self.timeout;
        on_client!(self, scope, c => c
            .set_iam_policy()
            .set_resource(scope)
            .set_policy(policy)
            .with_attempt_timeout(t)
            .send()
            .await)
    }

    async fn bindings_of(&self, scope: &str, what: &str) -> Result<Vec<Binding>, ProviderError> {
        self.read(scope)
            .await
            .map(|p| p.bindings)
            .map_err(|e| errors::map(&self.name, what, scope, Call::Read, e))
    }

    /// One change to a resource's policy: read (version 3), edit, write with the etag read;
    /// a concurrent change or a write whose answer was lost is read again (the next round's
    /// edit sees whether it landed), with jittered back-off.
    async fn change<T>(
        &self,
        scope: &str,
        what: &str,
        mut edit: impl FnMut(&mut Vec<Binding>) -> Result<Round<T>, ProviderError>,
    ) -> Result<T, ProviderError> {
        let lock = self.lock_of(scope);
        let mut unknown: Option<ProviderError> = None;
        for round in 0..MAX_ROUNDS {
            // Held for one read and one write, not across the pause.
            let held = lock.lock().await;
            let policy = match self.read(scope).await {
                Ok(p) => p,
                // A write of an earlier round may have landed: say so.
                Err(e) => {
                    let e = errors::map(&self.name, what, scope, Call::Read, e);
                    return Err(match unknown {
                        Some(_) if e.is_retryable() => ProviderError::Unknown {
                            provider: self.name.clone(),
                            reason: format!(
                                "{what}: an earlier write's outcome is unknown and the policy cannot be read back: {e}"
                            ),
                        },
                        _ => e,
                    });
                }
            };
            if policy.etag.is_empty() {
                return Err(ProviderError::Unavailable {
                    provider: self.name.clone(),
                    reason: format!(
                        "{what}: the policy of {scope} came without an etag; jitsudo never writes without one"
                    ),
                });
            }
            let mut bindings = policy.bindings.clone();
            let answer = match edit(&mut bindings)? {
                Round::Done(t) => return Ok(t),
                Round::Write(t) => t,
            };
            let purged = bindings::purge_ended(&mut bindings, Utc::now(), PURGE_AFTER);
            if purged > 0 {
                tracing::debug!(provider = %self.name, scope, purged, "removing ended jitsudo bindings");
            }
            let edited = policy.set_version(3).set_bindings(bindings);
            let written = self.write(scope, edited).await;
            drop(held);
            match written {
                Ok(_) => return Ok(answer),
                Err(e) if errors::is_conflict(&e) => {
                    tracing::debug!(provider = %self.name, scope, round, "concurrent policy change; reading again");
                }
                // The answer, not the write, failed (or it timed out): the next read tells.
                Err(e) if errors::outcome_unknown(&e) || e.is_deserialization() => {
                    unknown = Some(errors::map(&self.name, what, scope, Call::Write, e));
                }
                Err(e) => return Err(errors::map(&self.name, what, scope, Call::Write, e)),
            }
            pause(round).await;
        }
        Err(unknown.unwrap_or_else(|| ProviderError::Unavailable {
            provider: self.name.clone(),
            reason: format!("{what}: the policy of {scope} changed under every one of {MAX_ROUNDS} attempts; retrying later"),
        }))
    }
}

/// An IAM member jitsudo can grant to: `user:`, `group:`, `serviceAccount:` with an email,
/// `domain:` with a domain, or a workforce/workload identity principal.
fn member_ok(member: &str) -> bool {
    let Some(t) = MEMBER_TYPES.iter().find(|t| member.starts_with(*t)) else {
        return false;
    };
    let v = &member[t.len()..];
    match *t {
        "domain:" => !v.is_empty() && !v.contains('@') && v.contains('.'),
        "principal://" | "principalSet://" => !v.is_empty(),
        _ => v.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        }),
    }
}

/// Jittered exponential back-off between rounds: 50 ms doubling to 2 s, times 0.5–1.5.
async fn pause(round: u32) {
    let base = Duration::from_millis(50).saturating_mul(1 << round.min(6));
    let base = base.min(Duration::from_secs(2));
    let jitter = 0.5 + rand::random::<f64>();
    tokio::time::sleep(base.mul_f64(jitter)).await;
}

#[async_trait]
impl Provider for GcpProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn validate(&self, spec: &GrantSpec) -> Result<(), ProviderError> {
        self.check_spec(&spec.role, &spec.scope, &spec.subject)
    }

    async fn grant(&self, spec: &GrantSpec) -> Result<GrantRecord, ProviderError> {
        self.check_spec(&spec.role, &spec.scope, &spec.subject)?;
        if spec.not_after <= Utc::now() {
            return Err(self.invalid(
                "not_after",
                format!("{} has passed: nothing to grant", spec.not_after),
            ));
        }
        let what = format!("granting {} on {}", spec.role, spec.scope);
        let tombstoned = self
            .change(&spec.scope, &what, |b| {
                Ok(match bindings::grant(b, spec, &self.name) {
                    bindings::GrantEdit::Added => {
                        bindings::purge_ended(b, Utc::now(), PURGE_AFTER);
                        if let Some(why) =
                            bindings::full(b, &spec.role, &bindings::member(&spec.subject))
                        {
                            return Err(self.invalid(
                                "scope",
                                format!(
                                    "the IAM policy of {} has no room for this grant: {why}",
                                    spec.scope
                                ),
                            ));
                        }
                        Round::Write(false)
                    }
                    bindings::GrantEdit::Present => Round::Done(false),
                    bindings::GrantEdit::Tombstoned => Round::Done(true),
                })
            })
            .await?;
        if tombstoned {
            return Err(ProviderError::Tombstoned {
                provider: self.name.clone(),
                grant_id: spec.grant_id,
            });
        }
        Ok(GrantRecord {
            provider_ref: bindings::provider_ref(&spec.scope, spec.grant_id),
            ..GrantRecord::from_spec(spec)
        })
    }

    async fn revoke(&self, grant: &GrantRecord) -> Result<(), ProviderError> {
        if config::scope_kind(&grant.scope).is_none() {
            return Err(self.invalid(
                "scope",
                format!(
                    "{:?} is not projects/ID, folders/NUMBER or organizations/NUMBER",
                    grant.scope
                ),
            ));
        }
        let what = format!("revoking grant {} on {}", grant.grant_id, grant.scope);
        let tombstone_only = std::sync::atomic::AtomicBool::new(false);
        let done = self
            .change(&grant.scope, &what, |b| {
                let edit = bindings::revoke(b, grant, &self.name, Utc::now());
                tombstone_only.store(
                    edit == bindings::RevokeEdit::TombstoneOnly,
                    std::sync::atomic::Ordering::Relaxed,
                );
                Ok(match edit {
                    bindings::RevokeEdit::Unchanged => Round::Done(()),
                    _ => Round::Write(()),
                })
            })
            .await;
        match done {
            // Google refused the tombstone of a grant that was never written (its role or
            // member is one IAM does not take, or the policy is full): the grant itself
            // can never land the same way, and native expiry bounds it anyway.
            Err(ProviderError::Invalid { reason, .. })
                if tombstone_only.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                tracing::warn!(provider = %self.name, grant = %grant.grant_id, %reason, "no tombstone written: IAM refused it");
                Ok(())
            }
            other => other,
        }
    }

    async fn inspect(&self, grant: &GrantRecord) -> Result<GrantState, ProviderError> {
        let what = format!("reading the policy of {}", grant.scope);
        let b = self.bindings_of(&grant.scope, &what).await?;
        Ok(if bindings::active(&b, grant, Utc::now()) {
            GrantState::Active
        } else {
            GrantState::Gone
        })
    }

    async fn credentials(&self, grant: &GrantRecord) -> Result<Credentials, ProviderError> {
        if self.inspect(grant).await? != GrantState::Active {
            return Err(ProviderError::NotActive {
                provider: self.name.clone(),
                grant_id: grant.grant_id,
            });
        }
        let mut env = std::collections::BTreeMap::new();
        if let Some(project) = grant.scope.strip_prefix("projects/") {
            // gcloud (core/project) and the client libraries read these.
            env.insert("CLOUDSDK_CORE_PROJECT".to_owned(), project.to_owned());
            env.insert("GOOGLE_CLOUD_PROJECT".to_owned(), project.to_owned());
        }
        Ok(Credentials {
            env,
            expires_at: grant.not_after,
            notice: Some(format!(
                "{} is granted to your own Google identity ({}) until {}: gcloud and the client libraries act as you, in the project jitsudo exec sets; jitsudo mints no credentials. IAM may take a few minutes to apply a change.",
                grant.role, grant.subject, grant.not_after
            )),
        })
    }

    /// One page per configured scope; the token is the next scope's index.
    async fn list_managed(&self, page: Option<&str>) -> Result<ManagedPage, ProviderError> {
        let i: usize = match page {
            None => 0,
            Some(p) => p.parse().map_err(|_| {
                self.invalid(
                    "page",
                    format!("{p:?} is not a page token of this provider"),
                )
            })?,
        };
        let Some(scope) = self.config.scopes.get(i) else {
            return Ok(ManagedPage::default());
        };
        let what = format!("listing jitsudo's bindings on {scope}");
        let grants = match self.bindings_of(scope, &what).await {
            Ok(b) => bindings::managed(&b, scope, &self.name),
            // One unreadable scope (deleted, permission taken away) must not stop the
            // reconciler's work on the others; every call there fails loudly anyway.
            Err(e)
                if matches!(
                    e,
                    ProviderError::Forbidden { .. } | ProviderError::Invalid { .. }
                ) =>
            {
                tracing::warn!(provider = %self.name, scope, error = %e, "skipping an unreadable scope in this pass");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        Ok(ManagedPage {
            grants,
            next: (i + 1 < self.config.scopes.len()).then(|| (i + 1).to_string()),
        })
    }

    async fn forget(&self, tombstone: &ManagedGrant) -> Result<(), ProviderError> {
        if !tombstone.tombstone || config::scope_kind(&tombstone.scope).is_none() {
            return Ok(());
        }
        let what = format!(
            "removing the tombstone of grant {} on {}",
            tombstone.grant_id, tombstone.scope
        );
        self.change(&tombstone.scope, &what, |b| {
            Ok(if bindings::forget(b, tombstone.grant_id, Utc::now()) {
                Round::Write(())
            } else {
                Round::Done(())
            })
        })
        .await
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            kind: "gcp".into(),
            roles: self.config.roles.clone(),
            scopes: self.config.scopes.clone(),
            native_expiry: true,
        }
    }
}
