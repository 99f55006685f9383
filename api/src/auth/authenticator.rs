//! The validation path of one bearer token, in the order of docs/security.md: size, scheme,
//! header, algorithm, key, signature, then claims. Each refusal has its own [`AuthError`].

use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::config::AuthConfig;
use super::error::AuthError;
use super::keys::{KeySource, VerifyKey};

/// Room for the scheme and spaces in front of a token of `max_token_bytes`.
const SCHEME_ALLOWANCE: usize = 16;

/// Who the token says the caller is. `email` is the raw claim: it identifies a person only
/// when `email_verified` is true, a rule the caller applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub groups: Vec<String>,
    pub expires_at: DateTime<Utc>,
    /// When the token stops being accepted: `exp` plus the leeway. A stream opened with it
    /// (WatchRequest) ends then.
    pub valid_until: DateTime<Utc>,
    /// The token's string-valued claims (for identity mapping: `{claim:oid}`).
    pub claims: std::collections::BTreeMap<String, String>,
}

/// Validates bearer tokens for one issuer; build once and share (it holds the key cache and
/// the HTTP client).
pub struct Authenticator {
    cfg: AuthConfig,
    keys: KeySource,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.cfg.issuer)
            .field("audience", &self.cfg.audience)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TokenType {
    Unspecified,
    Jwt,
    AccessToken,
}

impl Authenticator {
    /// Validates the configuration and builds the HTTP client; fetches nothing yet.
    pub fn new(cfg: AuthConfig) -> Result<Self, AuthError> {
        cfg.validate()?;
        let keys = KeySource::new(&cfg)?;
        Ok(Authenticator { cfg, keys })
    }

    pub fn config(&self) -> &AuthConfig {
        &self.cfg
    }

    /// Fetches discovery and the JWKS now (it counts as the interval's fetch). Optional: call at
    /// start-up so the first request does not wait; a failure here is worth a warning, not an
    /// exit, since the next request retries after the interval.
    pub async fn warm_up(&self) -> Result<(), AuthError> {
        self.keys.warm_up().await
    }

    /// Validates the value of an `Authorization` header and returns the caller's identity.
    pub async fn authenticate(
        &self,
        authorization_header_value: &str,
    ) -> Result<Identity, AuthError> {
        let result = self.check(authorization_header_value).await;
        if let Err(e) = &result {
            metrics::counter!("jitsudo_auth_refusals_total", "reason" => e.reason()).increment(1);
            tracing::debug!(reason = e.reason(), "bearer token refused");
        }
        result
    }

    async fn check(&self, header_value: &str) -> Result<Identity, AuthError> {
        let token = bearer_token(header_value, self.cfg.max_token_bytes)?;
        let header = decode_header(token)?;
        let alg = self.allowed_algorithm(&header.alg)?;
        let typ = token_type(header.typ.as_deref())?;
        // An issuer that marks its access tokens `at+jwt` (RFC 9068): anything else it
        // signs (an ID token, a logout token) is not an access token.
        if self.cfg.require_at_jwt && typ != TokenType::AccessToken {
            return Err(AuthError::WrongTokenType);
        }
        let kid = header.kid.ok_or(AuthError::MissingKeyId)?;
        let key = self.keys.key_for(&kid, alg).await?;
        let claims = verify_signature(token, &key, alg)?;
        identity_from_claims(&self.cfg, typ, &claims, Utc::now().timestamp())
    }

    fn allowed_algorithm(&self, name: &str) -> Result<Algorithm, AuthError> {
        match Algorithm::from_str(name) {
            Ok(alg) if self.cfg.algorithms.contains(&alg) => Ok(alg),
            Ok(_) => Err(AuthError::AlgorithmNotAllowed {
                alg: name.to_owned(),
            }),
            Err(_) if name.eq_ignore_ascii_case("none") => {
                Err(AuthError::AlgorithmNotAllowed { alg: "none".into() })
            }
            Err(_) => Err(AuthError::AlgorithmNotAllowed {
                alg: "unrecognised".into(),
            }),
        }
    }
}

/// The token from `Bearer <token>`; the length is checked before anything else looks at it.
fn bearer_token(value: &str, max_token_bytes: usize) -> Result<&str, AuthError> {
    let too_large = AuthError::TokenTooLarge {
        limit: max_token_bytes,
    };
    if value.len() > max_token_bytes.saturating_add(SCHEME_ALLOWANCE) {
        return Err(too_large);
    }
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(AuthError::MissingBearer)?;
    // RFC 9110 §11.1: the scheme is case-insensitive.
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::MissingBearer);
    }
    let token = token.trim_start_matches(' ');
    if token.is_empty() {
        return Err(AuthError::MissingBearer);
    }
    if token.len() > max_token_bytes {
        return Err(too_large);
    }
    let jws_charset = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if !token.bytes().all(jws_charset) || token.split('.').count() != 3 {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// Our own reading of the header, so that `alg: none` or an unknown algorithm is refused as
/// such instead of as a parse failure.
fn decode_header(token: &str) -> Result<RawHeader, AuthError> {
    let encoded = token.split('.').next().ok_or(AuthError::Malformed)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

/// RFC 9068 access tokens say `at+jwt`; many providers still say `JWT` or nothing.
fn token_type(typ: Option<&str>) -> Result<TokenType, AuthError> {
    let Some(typ) = typ else {
        return Ok(TokenType::Unspecified);
    };
    let lower = typ.to_ascii_lowercase();
    // RFC 7515 §4.1.9: an "application/" prefix may be left out.
    match lower.strip_prefix("application/").unwrap_or(&lower) {
        "at+jwt" => Ok(TokenType::AccessToken),
        "jwt" => Ok(TokenType::Jwt),
        _ => Err(AuthError::WrongTokenType),
    }
}

fn verify_signature(
    token: &str,
    key: &VerifyKey,
    alg: Algorithm,
) -> Result<Map<String, Value>, AuthError> {
    // Only the signature is checked here; the claims are checked below, where each refusal
    // gets its own reason.
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation) {
        Ok(data) => Ok(data.claims),
        Err(e) => Err(match e.kind() {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey => AuthError::KeyMismatch,
            _ => AuthError::Malformed,
        }),
    }
}

/// Checks the claims of a token whose signature is valid, in the order of docs/security.md.
fn identity_from_claims(
    cfg: &AuthConfig,
    typ: TokenType,
    claims: &Map<String, Value>,
    now: i64,
) -> Result<Identity, AuthError> {
    if claims.get("iss").and_then(Value::as_str) != Some(cfg.issuer.as_str()) {
        return Err(AuthError::WrongIssuer {
            expected: cfg.issuer.clone(),
        });
    }
    check_audience(cfg, typ, claims)?;

    let leeway = i64::try_from(cfg.leeway.as_secs()).unwrap_or(i64::MAX);
    let exp = numeric_date(claims, "exp")?.ok_or(AuthError::InvalidClaim { claim: "exp" })?;
    if now >= exp.saturating_add(leeway) {
        return Err(AuthError::Expired);
    }
    // A token issued "in the future" is as suspect as one not valid yet.
    for not_before in [numeric_date(claims, "nbf")?, numeric_date(claims, "iat")?]
        .into_iter()
        .flatten()
    {
        if not_before > now.saturating_add(leeway) {
            return Err(AuthError::NotYetValid);
        }
    }
    let expires_at =
        DateTime::from_timestamp(exp, 0).ok_or(AuthError::InvalidClaim { claim: "exp" })?;

    let subject = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(AuthError::InvalidClaim { claim: "sub" }),
    };
    let groups = match claims.get(&cfg.groups_claim) {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|g| g.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| AuthError::InvalidGroups {
                claim: cfg.groups_claim.clone(),
            })?,
        Some(_) => {
            return Err(AuthError::InvalidGroups {
                claim: cfg.groups_claim.clone(),
            });
        }
    };
    let email = match claims.get("email") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(AuthError::InvalidClaim { claim: "email" }),
    };
    // Only a JSON `true` counts: a string "true" or anything else is unverified.
    let email_verified = matches!(claims.get("email_verified"), Some(Value::Bool(true)));
    // Only short string claims: identity mapping needs names, never documents.
    let strings = claims
        .iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) if s.len() <= 256 => Some((k.clone(), s.clone())),
            _ => None,
        })
        .collect();
    Ok(Identity {
        subject,
        email,
        email_verified,
        groups,
        expires_at,
        valid_until: chrono::Duration::try_seconds(leeway)
            .and_then(|l| expires_at.checked_add_signed(l))
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
        claims: strings,
    })
}

/// An access token must name our audience; an ID token (only when configured) must be for the
/// CLI's client id alone and must not be typed as an access token.
fn check_audience(
    cfg: &AuthConfig,
    typ: TokenType,
    claims: &Map<String, Value>,
) -> Result<(), AuthError> {
    let wrong = || AuthError::WrongAudience {
        expected: cfg.audience.clone(),
    };
    let audiences: Vec<&str> = match claims.get("aud") {
        None | Some(Value::Null) => return Err(wrong()),
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<_>>>()
            .ok_or(AuthError::InvalidClaim { claim: "aud" })?,
        Some(_) => return Err(AuthError::InvalidClaim { claim: "aud" }),
    };
    if audiences.contains(&cfg.audience.as_str()) {
        return Ok(());
    }
    let Some(client_id) = cfg.id_token_client_id.as_deref() else {
        return Err(wrong());
    };
    if audiences != [client_id] {
        return Err(wrong());
    }
    if typ == TokenType::AccessToken {
        return Err(AuthError::WrongTokenType);
    }
    match claims.get("azp") {
        None => Ok(()),
        Some(Value::String(azp)) if azp == client_id => Ok(()),
        Some(_) => Err(wrong()),
    }
}

/// A NumericDate claim (RFC 7519 §2): seconds, possibly fractional. `Ok(None)` when absent.
fn numeric_date(
    claims: &Map<String, Value>,
    claim: &'static str,
) -> Result<Option<i64>, AuthError> {
    let invalid = AuthError::InvalidClaim { claim };
    match claims.get(claim) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && f.abs() < 1e15)
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or(invalid),
        Some(_) => Err(invalid),
    }
}
