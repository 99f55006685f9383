//! The one mapping from engine, store, policy, provider and authentication errors to gRPC
//! codes and HTTP statuses. Clients see a stable code and a sentence saying what was wrong
//! and what to do — never a wire dump, a token or a credential. Every match here names each
//! variant (no catch-all), so a new kind of failure does not compile until it is mapped.
//! The RPC functions build only their own input-validation and authorization refusals.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jitsudo_actors::EngineError;
use jitsudo_actors::engine::types::StoreError;
use jitsudo_actors::error::ErrorKind;
use jitsudo_actors::policy::PolicyError;
use tonic::Code;

use crate::auth::AuthError;

#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    /// When to try again (sent as `retry-after` seconds: gRPC metadata, HTTP header).
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    /// A rate limit: `RESOURCE_EXHAUSTED` with a retry hint.
    pub fn rate_limited(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(Code::ResourceExhausted, message)
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(Code::PermissionDenied, message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let mut status = tonic::Status::new(e.code, e.message);
        if let Some(d) = e.retry_after
            && let Ok(v) = retry_seconds(d).to_string().parse()
        {
            status.metadata_mut().insert("retry-after", v);
        }
        status
    }
}

fn retry_seconds(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// HTTP status for a gRPC code (the mapping of google.rpc.Code to HTTP).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Cancelled | Code::Unknown | Code::Internal | Code::DataLoss => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// The stable name of a code in REST error bodies (`"PERMISSION_DENIED"`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": code_name(self.code), "message": self.message } });
        let mut response = (http_status(self.code), Json(body)).into_response();
        if let Some(d) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(retry_seconds(d)),
            );
        }
        response
    }
}

/// The one mapping from the engine's kinds of failure to gRPC codes: what a routed call
/// carries across the mesh, and what a refusal says it is.
fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Aborted => Code::Aborted,
        ErrorKind::Unavailable => Code::Unavailable,
    }
}

impl From<EngineError> for ApiError {
    /// The code of the error's kind ([`EngineError::kind`], exhaustive in the engine), which
    /// is also what the node holding a request sends back for a routed call, so a call
    /// answers alike on every node; the engine's public message (a store failure is logged,
    /// not shown).
    fn from(e: EngineError) -> Self {
        ApiError::new(code_of(e.kind()), e.public_message())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            // The identity provider being down is not the caller's fault: retryable.
            AuthError::KeysUnavailable { .. } => ApiError::unavailable(e.to_string()),
            AuthError::TokenTooLarge { .. }
            | AuthError::MissingBearer
            | AuthError::Malformed
            | AuthError::AlgorithmNotAllowed { .. }
            | AuthError::WrongTokenType
            | AuthError::MissingKeyId
            | AuthError::UnknownKey
            | AuthError::KeyMismatch
            | AuthError::BadSignature
            | AuthError::WrongIssuer { .. }
            | AuthError::WrongAudience { .. }
            | AuthError::Expired
            | AuthError::NotYetValid
            | AuthError::InvalidClaim { .. }
            | AuthError::InvalidGroups { .. }
            | AuthError::InvalidConfig { .. }
            | AuthError::HttpClient { .. } => ApiError::unauthenticated(e.to_string()),
        }
    }
}

/// Engine outcomes that are answers to the engine but failures to the caller, and the
/// engine errors one call answers differently from the rest.
impl ApiError {
    /// No policy of this name is in force (unknown, or deleted).
    pub fn no_policy(name: &str) -> Self {
        Self::not_found(format!("no policy named {name:?}"))
    }

    /// A re-drive of an outbox row that is not a dead letter: nothing was written.
    pub fn not_a_dead_letter(id: i64) -> Self {
        Self::new(
            Code::FailedPrecondition,
            format!("outbox row {id} is not a dead letter"),
        )
    }

    /// ApplyPolicy refused: a policy that does not compile is the caller's input here, not
    /// the failed precondition it is to a create that meets a broken policy set.
    pub fn policy_not_applied(e: EngineError) -> Self {
        match e {
            EngineError::Policy(p) => {
                Self::invalid(format!("the policy does not compile; nothing changed: {p}"))
            }
            other => other.into(),
        }
    }

    /// EvalPolicy's evaluation failed: the input document or the policies tried are at
    /// fault, so it is the caller's to fix.
    pub fn evaluation_failed(e: PolicyError) -> Self {
        Self::invalid(format!("evaluation failed: {e}"))
    }

    /// The store did not answer a readiness check.
    pub fn store_unreachable(e: &StoreError) -> Self {
        Self::unavailable(format!("the store is unreachable: {e}"))
    }
}
