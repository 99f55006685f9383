//! The engine's one error type. The API maps it to gRPC codes in exactly one place.

use jitsudo_providers::ProviderError;

use crate::domain::{Refusal, RequestId};
use crate::policy::PolicyError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The lifecycle refused the operation; nothing changed.
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("no request {id}")]
    NotFound { id: RequestId },
    #[error("unknown provider {name:?}; configured providers: {known}")]
    UnknownProvider { name: String, known: String },
    /// The requester has no principal at the provider (identity mapping failed).
    #[error(transparent)]
    Unmappable(#[from] jitsudo_providers::identity::IdentityError),
    #[error("policy evaluation failed")]
    Policy(#[from] PolicyError),
    #[error("the provider refused the request")]
    Provider(#[source] ProviderError),
    /// Someone else changed the request at the same moment; retry.
    #[error("the request changed concurrently; retry")]
    Conflict,
    /// Retryable: the node cannot serve this now (store unreachable, shard not owned, stopping).
    #[error("temporarily unavailable: {reason}; retry")]
    Unavailable { reason: String },
    #[error("overloaded: {what}; retry later")]
    Overloaded { what: String },
    #[error("store failure")]
    Store(#[from] StoreError),
    /// A notification sink did not take a notice; `reason` never carries a secret or the
    /// receiver's response body (it is stored as the outbox row's `last_error`).
    #[error("delivery to sink {sink:?} failed: {reason}")]
    Delivery { sink: String, reason: String },
    #[error("invalid configuration: {reason}")]
    InvalidConfig { reason: String },
    /// The idempotency key was already used by this requester for a request with other
    /// content; nothing was created.
    #[error(
        "idempotency key {key:?} was already used for a different request; send a new key for a new request, or resend exactly the same request to get the one already created"
    )]
    IdempotencyConflict { key: String },
    /// The caller would grant something to themselves.
    #[error("nobody may change their own {what}; ask another admin to do it")]
    SelfBenefit { what: &'static str },
    /// The node that holds the request's shard answered this (a routed call).
    #[error("{message}")]
    Remote { kind: ErrorKind, message: String },
}

/// What kind of failure an [`EngineError`] is, as a client sees it; the API maps each to
/// one gRPC code (and HTTP status). Routed calls carry it across the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    PermissionDenied,
    AlreadyExists,
    ResourceExhausted,
    FailedPrecondition,
    NotFound,
    Aborted,
    Unavailable,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::FailedPrecondition => "failed_precondition",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Aborted => "aborted",
            ErrorKind::Unavailable => "unavailable",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorKind> {
        [
            ErrorKind::InvalidArgument,
            ErrorKind::PermissionDenied,
            ErrorKind::AlreadyExists,
            ErrorKind::ResourceExhausted,
            ErrorKind::FailedPrecondition,
            ErrorKind::NotFound,
            ErrorKind::Aborted,
            ErrorKind::Unavailable,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

impl Refusal {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Refusal::Invalid { .. }
            | Refusal::Policy(_)
            | Refusal::ExtensionExceedsMaximum { .. } => ErrorKind::InvalidArgument,
            Refusal::SelfApproval
            | Refusal::NotAnApprover
            | Refusal::NotRequester
            | Refusal::NotAllowedToRevoke
            | Refusal::SelfReview => ErrorKind::PermissionDenied,
            Refusal::AlreadyApproved | Refusal::Duplicate => ErrorKind::AlreadyExists,
            Refusal::TooManyLive { .. } => ErrorKind::ResourceExhausted,
            // Every variant by name: a new refusal does not compile until it has a kind.
            Refusal::Terminal { .. }
            | Refusal::NotAccepted { .. }
            | Refusal::ApprovalDeadlinePassed { .. }
            | Refusal::AlreadyEnding
            | Refusal::BreakGlassNotExtendable
            | Refusal::ExtensionInProgress { .. }
            | Refusal::UnknownExtension { .. }
            | Refusal::UnknownGrant { .. }
            | Refusal::StaleTimer
            | Refusal::TimerEarly { .. }
            | Refusal::BreakGlassCooldown { .. } => ErrorKind::FailedPrecondition,
        }
    }
}

impl EngineError {
    pub fn unavailable(reason: impl Into<String>) -> Self {
        EngineError::Unavailable {
            reason: reason.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Refused(r) => r.kind(),
            EngineError::NotFound { .. } => ErrorKind::NotFound,
            EngineError::UnknownProvider { .. }
            | EngineError::IdempotencyConflict { .. }
            | EngineError::Unmappable(_) => ErrorKind::InvalidArgument,
            EngineError::Policy(_)
            | EngineError::Delivery { .. }
            | EngineError::InvalidConfig { .. } => ErrorKind::FailedPrecondition,
            EngineError::Provider(p) => match p.class() {
                jitsudo_providers::ErrorClass::Permanent => ErrorKind::InvalidArgument,
                _ => ErrorKind::Unavailable,
            },
            EngineError::Conflict => ErrorKind::Aborted,
            EngineError::Unavailable { .. } | EngineError::Store(_) => ErrorKind::Unavailable,
            EngineError::Overloaded { .. } => ErrorKind::ResourceExhausted,
            EngineError::SelfBenefit { .. } => ErrorKind::PermissionDenied,
            EngineError::Remote { kind, .. } => *kind,
        }
    }

    /// A refusal that a repeated decision meets ([`Refusal::met_by_a_repeat`]), here or as a
    /// routed call's kind (which carries no more than that).
    pub fn may_be_a_repeat(&self) -> bool {
        match self {
            EngineError::Refused(r) => r.met_by_a_repeat(),
            EngineError::Remote { kind, .. } => {
                matches!(
                    kind,
                    ErrorKind::AlreadyExists | ErrorKind::FailedPrecondition
                )
            }
            _ => false,
        }
    }

    /// The message a client may see: store failures are not detailed (they are logged).
    pub fn public_message(&self) -> String {
        match self {
            EngineError::Refused(r) => r.to_string(),
            EngineError::Policy(p) => format!("policy evaluation failed: {p}"),
            EngineError::Provider(p) => p.to_string(),
            EngineError::Store(s) => {
                tracing::error!(error = %s, "store failure");
                "the store is unavailable; retry".to_string()
            }
            other => other.to_string(),
        }
    }
}
