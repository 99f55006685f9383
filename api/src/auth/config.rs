//! What the operator configures for authentication, and the checks that refuse a configuration
//! which would weaken validation (HMAC or `none`, a long leeway, keys over plain HTTP).

use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use reqwest::Url;

use super::error::AuthError;

/// Signature algorithms accepted when the configuration names none.
pub const DEFAULT_ALGORITHMS: [Algorithm; 7] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

const MAX_LEEWAY: Duration = Duration::from_secs(300);
const MIN_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
const MAX_TOKEN_BYTES_LIMIT: usize = 64 * 1024;

/// How bearer tokens are validated: one issuer, one audience, an algorithm allow-list.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// The issuer URL, compared byte for byte with the token's `iss`.
    pub issuer: String,
    /// Access tokens must carry this value in `aud`.
    pub audience: String,
    /// Where the issuer's keys are; when absent, taken from
    /// `{issuer}/.well-known/openid-configuration`.
    pub jwks_uri: Option<String>,
    /// Allowed `alg` values. `none` cannot be expressed and HMAC is refused by [`Self::validate`].
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat` (at most 300 s).
    pub leeway: Duration,
    /// The claim holding the caller's groups (an array of strings).
    pub groups_claim: String,
    /// When set, ID tokens whose `aud` is exactly this client id are accepted too, for identity
    /// providers that only issue opaque access tokens.
    pub id_token_client_id: Option<String>,
    /// At most one JWKS fetch per interval, however many unknown `kid`s arrive.
    pub jwks_min_refresh_interval: Duration,
    /// Longer tokens are refused before any parsing.
    pub max_token_bytes: usize,
    /// Timeout of each discovery or JWKS request.
    pub http_timeout: Duration,
    /// Only tokens whose header says `typ: at+jwt` are accepted (for issuers that set it).
    pub require_at_jwt: bool,
    /// Extra PEM certificates trusted (besides the system roots) for the issuer's TLS.
    pub extra_ca_pem: Option<String>,
}

impl AuthConfig {
    /// The defaults for everything but the issuer and the audience.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        AuthConfig {
            issuer: issuer.into(),
            audience: audience.into(),
            ..AuthConfig::default()
        }
    }

    /// Parses algorithm names as written in a configuration file; an empty list means
    /// [`DEFAULT_ALGORITHMS`]. `none` and the HMAC family are refused here already.
    pub fn algorithms_from_names<S: AsRef<str>>(names: &[S]) -> Result<Vec<Algorithm>, AuthError> {
        if names.is_empty() {
            return Ok(DEFAULT_ALGORITHMS.to_vec());
        }
        names
            .iter()
            .map(|name| {
                let name = name.as_ref();
                match Algorithm::from_str(name) {
                    Ok(alg) if alg.family() != AlgorithmFamily::Hmac => Ok(alg),
                    Ok(_) => Err(invalid(
                        "algorithms",
                        format!(
                            "{name} is an HMAC algorithm; only public-key signatures are accepted"
                        ),
                    )),
                    Err(_) => Err(invalid(
                        "algorithms",
                        format!("{name:?} is not a supported signature algorithm"),
                    )),
                }
            })
            .collect()
    }

    /// Refuses a configuration that would weaken validation or could never work.
    pub fn validate(&self) -> Result<(), AuthError> {
        check_fetch_url(&self.issuer).map_err(|problem| invalid("issuer", problem))?;
        let issuer = Url::parse(&self.issuer).map_err(|_| invalid("issuer", "is not a URL"))?;
        if issuer.query().is_some() || issuer.fragment().is_some() {
            return Err(invalid("issuer", "must not have a query or a fragment"));
        }
        if let Some(uri) = &self.jwks_uri {
            check_fetch_url(uri).map_err(|problem| invalid("jwks_uri", problem))?;
        }
        if self.audience.trim().is_empty() {
            return Err(invalid("audience", "must not be empty"));
        }
        if let Some(client_id) = &self.id_token_client_id {
            if client_id.trim().is_empty() {
                return Err(invalid("id_token_client_id", "must not be empty when set"));
            }
            // With equal values every ID token would pass as an access token, silently.
            if *client_id == self.audience {
                return Err(invalid(
                    "id_token_client_id",
                    "must differ from the audience",
                ));
            }
        }
        if self.algorithms.is_empty() {
            return Err(invalid("algorithms", "must name at least one algorithm"));
        }
        if let Some(alg) = self
            .algorithms
            .iter()
            .find(|a| a.family() == AlgorithmFamily::Hmac)
        {
            return Err(invalid(
                "algorithms",
                format!("{alg:?} is an HMAC algorithm; only public-key signatures are accepted"),
            ));
        }
        if self.leeway > MAX_LEEWAY {
            return Err(invalid(
                "leeway",
                format!(
                    "is {} s; the maximum is {} s",
                    self.leeway.as_secs(),
                    MAX_LEEWAY.as_secs()
                ),
            ));
        }
        if self.groups_claim.trim().is_empty() {
            return Err(invalid("groups_claim", "must not be empty"));
        }
        if self.jwks_min_refresh_interval < MIN_JWKS_REFRESH_INTERVAL {
            return Err(invalid("jwks_min_refresh_interval", "must be at least 1 s"));
        }
        if self.max_token_bytes == 0 || self.max_token_bytes > MAX_TOKEN_BYTES_LIMIT {
            return Err(invalid(
                "max_token_bytes",
                format!("must be between 1 and {MAX_TOKEN_BYTES_LIMIT}"),
            ));
        }
        if self.http_timeout.is_zero() {
            return Err(invalid("http_timeout", "must be positive"));
        }
        if let Some(pem) = &self.extra_ca_pem {
            match reqwest::Certificate::from_pem_bundle(pem.as_bytes()) {
                Ok(certs) if !certs.is_empty() => {}
                _ => return Err(invalid("extra_ca_pem", "holds no PEM certificate")),
            }
        }
        Ok(())
    }
}

impl Default for AuthConfig {
    /// Defaults with an empty issuer and audience, which [`AuthConfig::validate`] refuses.
    fn default() -> Self {
        AuthConfig {
            issuer: String::new(),
            audience: String::new(),
            jwks_uri: None,
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            leeway: Duration::from_secs(30),
            groups_claim: "groups".into(),
            id_token_client_id: None,
            jwks_min_refresh_interval: Duration::from_secs(30),
            max_token_bytes: 8192,
            http_timeout: Duration::from_secs(10),
            require_at_jwt: false,
            extra_ca_pem: None,
        }
    }
}

fn invalid(field: &'static str, problem: impl Into<String>) -> AuthError {
    AuthError::InvalidConfig {
        field,
        problem: problem.into(),
    }
}

/// Keys must come over TLS; plain HTTP is tolerated on loopback only (dev mode, tests), where
/// nobody can sit between the two ends.
pub(super) fn check_fetch_url(url: &str) -> Result<(), &'static str> {
    let url = Url::parse(url).map_err(|_| "is not an absolute URL")?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if jitsudo_providers::http::is_loopback(&url) => Ok(()),
        "http" => Err("must use https (plain http is allowed on loopback only)"),
        _ => Err("must be an https URL"),
    }
}
