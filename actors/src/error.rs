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
}

impl EngineError {
    pub fn unavailable(reason: impl Into<String>) -> Self {
        EngineError::Unavailable {
            reason: reason.into(),
        }
    }
}
