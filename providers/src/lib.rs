//! The provider contract of jitsudo: how the control plane grants, revokes, inspects and
//! mints credentials for temporary access in an external system.
//!
//! Guarantees every implementation must keep (checked by [`conformance`]): `grant` is
//! idempotent per `grant_id` and honours the absolute `not_after`; `revoke` is idempotent,
//! accepts an unknown grant and leaves a tombstone so that a late `grant` with a revoked
//! `grant_id` does nothing; credentials are minted on demand and never persisted.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "azure")]
pub mod azure;
pub mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod demo;
#[cfg(feature = "gcp")]
pub mod gcp;
pub mod http;
pub mod identity;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod reconcile;
pub mod registry;

pub use registry::Registry;

/// What to grant: everything a provider needs, fixed at the grant intent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantSpec {
    /// Idempotency key of the grant; a revoked `grant_id` can never be granted again.
    pub grant_id: Uuid,
    pub request_id: Uuid,
    /// The principal the access is for (OIDC subject or bot name).
    pub subject: String,
    pub role: String,
    pub scope: String,
    /// Absolute end of the access. Providers enforce it natively where the cloud allows.
    pub not_after: DateTime<Utc>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// What a provider remembers about a grant. Never holds secrets: it is stored in the database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    pub grant_id: Uuid,
    pub request_id: Uuid,
    pub subject: String,
    pub role: String,
    pub scope: String,
    pub not_after: DateTime<Utc>,
    /// Provider-side reference (role assignment id, binding name, ...), opaque to the engine.
    pub provider_ref: String,
}

impl GrantRecord {
    /// The record a grant would produce before the provider has answered: enough to revoke
    /// or inspect a grant whose outcome is unknown (every provider keys on `grant_id`).
    pub fn from_spec(spec: &GrantSpec) -> Self {
        GrantRecord {
            grant_id: spec.grant_id,
            request_id: spec.request_id,
            subject: spec.subject.clone(),
            role: spec.role.clone(),
            scope: spec.scope.clone(),
            not_after: spec.not_after,
            provider_ref: String::new(),
        }
    }
}

/// What `inspect` found at the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    /// The access exists and is usable.
    Active,
    /// No such access exists (never granted, revoked, or expired natively).
    Gone,
}

/// Short-lived credentials for an active grant. Never stored, never logged: `Debug`
/// redacts the values.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// Environment variables to hand to the user's process.
    pub env: BTreeMap<String, String>,
    pub expires_at: DateTime<Utc>,
    /// A human sentence shown with the credentials (e.g. the demo provider's warning).
    #[serde(default)]
    pub notice: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field(
                "env",
                &self
                    .env
                    .keys()
                    .map(|k| (k, "<redacted>"))
                    .collect::<Vec<_>>(),
            )
            .field("expires_at", &self.expires_at)
            .field("notice", &self.notice)
            .finish()
    }
}

/// One grant as the provider lists it: what the reconciler compares with the store. Built
/// from the provider's own labels, tags or names (`jitsudo-<grant_id>`), never from the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedGrant {
    pub grant_id: Uuid,
    /// The request the object says it belongs to, where the provider records it.
    #[serde(default)]
    pub request_id: Option<Uuid>,
    /// Who holds the access now ("" for a tombstone).
    #[serde(default)]
    pub subject: String,
    pub role: String,
    pub scope: String,
    /// The end the object carries; `None` when the provider keeps none.
    #[serde(default)]
    pub not_after: Option<DateTime<Utc>>,
    #[serde(default)]
    pub provider_ref: String,
    /// A revoke's marker that keeps the `grant_id` from being granted again; grants nothing.
    #[serde(default)]
    pub tombstone: bool,
}

impl ManagedGrant {
    /// The record to revoke or inspect this grant with.
    pub fn record(&self) -> GrantRecord {
        GrantRecord {
            grant_id: self.grant_id,
            request_id: self.request_id.unwrap_or_default(),
            subject: self.subject.clone(),
            role: self.role.clone(),
            scope: self.scope.clone(),
            // An object without a recorded end (made by hand): its tombstone is kept a day.
            not_after: self
                .not_after
                .unwrap_or_else(|| Utc::now() + chrono::TimeDelta::days(1)),
            provider_ref: self.provider_ref.clone(),
        }
    }
}

/// One page of [`Provider::list_managed`]; `next` continues it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedPage {
    pub grants: Vec<ManagedGrant>,
    #[serde(default)]
    pub next: Option<String>,
}

/// What a provider says about itself (`jitsudo server providers`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderInfo {
    /// `kubernetes`, `http`, `demo`, ...
    pub kind: String,
    /// The roles it accepts, in the provider's words ("any", a list, a pattern).
    pub roles: Vec<String>,
    /// The scopes it accepts.
    pub scopes: Vec<String>,
    /// Whether the cloud itself ends access at `not_after` (else the engine's expiry and the
    /// reconciler do).
    pub native_expiry: bool,
}

/// Whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Throttled, unavailable, timed out before sending: retry with backoff.
    Retryable,
    /// Invalid role or scope, forbidden: retrying cannot help.
    Permanent,
    /// The call may or may not have taken effect: retry idempotently.
    Unknown,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 3] = [
        ErrorClass::Retryable,
        ErrorClass::Permanent,
        ErrorClass::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Unknown => "unknown",
        }
    }
}

/// A provider failure. Messages never contain credentials or tokens.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("provider {provider}: invalid {field}: {reason}")]
    Invalid {
        provider: String,
        field: &'static str,
        reason: String,
    },
    #[error("provider {provider}: forbidden: {reason}")]
    Forbidden { provider: String, reason: String },
    #[error("provider {provider}: throttled{}", retry_after.map(|d| format!(" (retry after {d:?})")).unwrap_or_default())]
    Throttled {
        provider: String,
        retry_after: Option<Duration>,
    },
    #[error("provider {provider}: unavailable: {reason}")]
    Unavailable { provider: String, reason: String },
    #[error("provider {provider}: timed out after {after:?}; the call may have taken effect")]
    Timeout { provider: String, after: Duration },
    #[error("provider {provider}: outcome unknown: {reason}")]
    Unknown { provider: String, reason: String },
    #[error("provider {provider}: grant {grant_id} is not active")]
    NotActive { provider: String, grant_id: Uuid },
    /// A grant call for a `grant_id` that was revoked before: nothing was granted.
    #[error("provider {provider}: grant {grant_id} was revoked before; nothing was granted")]
    Tombstoned { provider: String, grant_id: Uuid },
}

impl ProviderError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ProviderError::Invalid { .. }
            | ProviderError::Forbidden { .. }
            | ProviderError::NotActive { .. }
            | ProviderError::Tombstoned { .. } => ErrorClass::Permanent,
            ProviderError::Throttled { .. } | ProviderError::Unavailable { .. } => {
                ErrorClass::Retryable
            }
            ProviderError::Timeout { .. } | ProviderError::Unknown { .. } => ErrorClass::Unknown,
        }
    }

    /// Worth another attempt (with backoff, idempotently).
    pub fn is_retryable(&self) -> bool {
        self.class() != ErrorClass::Permanent
    }
}

/// One external system that jitsudo grants access in.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// Checks role and scope without side effects.
    async fn validate(&self, spec: &GrantSpec) -> Result<(), ProviderError>;
    /// Idempotent per `spec.grant_id`; honours `spec.not_after`; a no-op (returning
    /// [`ProviderError::Tombstoned`]) for a `grant_id` that was revoked before.
    async fn grant(&self, spec: &GrantSpec) -> Result<GrantRecord, ProviderError>;
    /// Idempotent; an unknown grant is OK; leaves a tombstone of `grant_id`.
    async fn revoke(&self, grant: &GrantRecord) -> Result<(), ProviderError>;
    /// Drift check: does the access exist at the provider now?
    async fn inspect(&self, grant: &GrantRecord) -> Result<GrantState, ProviderError>;
    /// Minted on demand for an active grant; never stored.
    async fn credentials(&self, grant: &GrantRecord) -> Result<Credentials, ProviderError>;
    /// Every grant (and tombstone) this provider manages, one page at a time, found by the
    /// provider's own markers. Cheap: one list call per page, no per-grant reads.
    async fn list_managed(&self, page: Option<&str>) -> Result<ManagedPage, ProviderError>;
    /// Removes a tombstone whose `not_after` has passed (the reconciler's clean-up); a
    /// no-op for anything that is not a tombstone or is already gone.
    async fn forget(&self, tombstone: &ManagedGrant) -> Result<(), ProviderError>;
    /// Kind, accepted roles and scopes, and whether expiry is native.
    fn info(&self) -> ProviderInfo;
}
