//! Refusal reasons (one sentence for the caller, never the token) and key-fetch failures (for
//! the operator's log).

use std::sync::Arc;

/// Why a bearer token was refused (or the authenticator could not be built).
///
/// Every refusal maps to UNAUTHENTICATED. Messages are meant for the caller: they say what was
/// wrong and never contain the token or a value taken from it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("the bearer token is longer than the {limit}-byte limit")]
    TokenTooLarge { limit: usize },
    #[error("no bearer token: send `Authorization: Bearer <access token>` (jitsudo login)")]
    MissingBearer,
    #[error("the bearer token is not a well-formed signed JWT")]
    Malformed,
    #[error("the token's signing algorithm ({alg}) is not accepted by this server")]
    AlgorithmNotAllowed {
        /// A known algorithm name, or "unrecognised"; never the raw header value.
        alg: String,
    },
    #[error("the token's type (typ) is not an access token; send an access token")]
    WrongTokenType,
    #[error("the token does not name its signing key (kid)")]
    MissingKeyId,
    #[error("the token is signed with a key the issuer does not publish; log in again")]
    UnknownKey,
    #[error("the token's algorithm does not match the issuer's signing key")]
    KeyMismatch,
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token was not issued by the configured issuer {expected}")]
    WrongIssuer { expected: String },
    #[error("the token is not meant for this server (its audience does not include {expected})")]
    WrongAudience { expected: String },
    #[error("the token has expired; log in again")]
    Expired,
    #[error(
        "the token is not valid yet; check the clocks of this server and the identity provider"
    )]
    NotYetValid,
    #[error("the token's `{claim}` claim is missing or malformed")]
    InvalidClaim { claim: &'static str },
    #[error("the token's `{claim}` claim must be an array of strings")]
    InvalidGroups { claim: String },
    #[error("the identity provider's signing keys could not be fetched; try again shortly")]
    KeysUnavailable {
        #[source]
        source: Arc<KeyFetchError>,
    },
    #[error("authentication configuration: `{field}` {problem}")]
    InvalidConfig {
        field: &'static str,
        problem: String,
    },
    #[error("authentication: could not build the HTTP client for the identity provider")]
    HttpClient {
        #[source]
        source: reqwest::Error,
    },
}

impl AuthError {
    /// Every value [`AuthError::reason`] answers (the `reason` label of
    /// `jitsudo_auth_refusals_total`).
    pub const REASONS: [&'static str; 18] = [
        "token_too_large",
        "missing_bearer",
        "malformed",
        "algorithm_not_allowed",
        "wrong_token_type",
        "missing_kid",
        "unknown_kid",
        "key_mismatch",
        "bad_signature",
        "wrong_issuer",
        "wrong_audience",
        "expired",
        "not_yet_valid",
        "invalid_claim",
        "invalid_groups",
        "keys_unavailable",
        "invalid_config",
        "http_client",
    ];

    /// A stable, low-cardinality code for logs and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::TokenTooLarge { .. } => "token_too_large",
            AuthError::MissingBearer => "missing_bearer",
            AuthError::Malformed => "malformed",
            AuthError::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            AuthError::WrongTokenType => "wrong_token_type",
            AuthError::MissingKeyId => "missing_kid",
            AuthError::UnknownKey => "unknown_kid",
            AuthError::KeyMismatch => "key_mismatch",
            AuthError::BadSignature => "bad_signature",
            AuthError::WrongIssuer { .. } => "wrong_issuer",
            AuthError::WrongAudience { .. } => "wrong_audience",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::InvalidClaim { .. } => "invalid_claim",
            AuthError::InvalidGroups { .. } => "invalid_groups",
            AuthError::KeysUnavailable { .. } => "keys_unavailable",
            AuthError::InvalidConfig { .. } => "invalid_config",
            AuthError::HttpClient { .. } => "http_client",
        }
    }
}

/// Why discovery or the JWKS could not be fetched (an operator's concern: logged, and kept as
/// the source of [`AuthError::KeysUnavailable`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFetchError {
    #[error("request to {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} answered more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url} did not answer valid JSON of the expected shape")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the discovery document names issuer {found:?}, not the configured {expected:?}")]
    IssuerMismatch { expected: String, found: String },
    #[error("the discovery document's jwks_uri {url:?} {problem}")]
    BadJwksUri { url: String, problem: &'static str },
    #[error("the JWKS at {url} holds no usable signing key")]
    NoUsableKeys { url: String },
}
