//! The issuer's signing keys: discovery, JWKS fetch and cache, and the refetch rate limit.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::config::{AuthConfig, check_fetch_url};
use super::error::{AuthError, KeyFetchError};

/// Discovery documents and key sets are small; a bigger answer is a misbehaving endpoint.
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// Keys removed by the issuer (a retired or compromised key) stop being accepted within this
/// time, even when no unknown `kid` ever triggers a refetch.
const JWKS_MAX_AGE: Duration = Duration::from_secs(15 * 60);

/// One verification key from the JWKS, with the algorithms it may verify.
pub(super) struct VerifyKey {
    algorithms: Vec<Algorithm>,
    pub(super) decoding: DecodingKey,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Vec<Arc<VerifyKey>>>,
    /// `None` until the first successful fetch.
    fetched_at: Option<Instant>,
}

#[derive(Default)]
struct RefreshState {
    /// Any fetch: paces retries while the issuer is unreachable and refreshes of an old cache.
    last_attempt: Option<Instant>,
    /// Fetches caused by an unknown kid: at most one per interval, whatever else was fetched,
    /// so a key rotated just after start-up is still picked up at once.
    last_unknown_kid_fetch: Option<Instant>,
    last_error: Option<Arc<KeyFetchError>>,
    discovered_jwks_uri: Option<String>,
}

pub(super) struct KeySource {
    http: reqwest::Client,
    issuer: String,
    configured_jwks_uri: Option<String>,
    min_refresh_interval: Duration,
    /// Read on every request without waiting behind a fetch.
    cache: RwLock<Arc<KeySet>>,
    /// Held for the whole fetch: concurrent callers with unknown kids queue here and then find
    /// either their key or a fetch within the interval, so they share one fetch.
    refresh: tokio::sync::Mutex<RefreshState>,
}

enum Lookup {
    Found(Arc<VerifyKey>),
    NoKeyForAlg,
    UnknownKid,
}

impl KeySource {
    pub(super) fn new(cfg: &AuthConfig) -> Result<Self, AuthError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(cfg.http_timeout)
            .connect_timeout(cfg.http_timeout)
            .user_agent(concat!("jitsudod/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &cfg.extra_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|source| AuthError::HttpClient { source })?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|source| AuthError::HttpClient { source })?;
        Ok(KeySource {
            http,
            issuer: cfg.issuer.clone(),
            configured_jwks_uri: cfg.jwks_uri.clone(),
            min_refresh_interval: cfg.jwks_min_refresh_interval,
            cache: RwLock::default(),
            refresh: tokio::sync::Mutex::default(),
        })
    }

    /// The key named `kid` that may verify `alg`. Fetches the JWKS on first use, when the kid is
    /// unknown (at most once per `min_refresh_interval`) and when the cache is old.
    pub(super) async fn key_for(
        &self,
        kid: &str,
        alg: Algorithm,
    ) -> Result<Arc<VerifyKey>, AuthError> {
        let cached = self.snapshot();
        if cached.fetched_at.is_some() {
            match lookup(&cached, kid, alg) {
                Lookup::Found(key) => {
                    if cached
                        .fetched_at
                        .is_some_and(|at| at.elapsed() >= JWKS_MAX_AGE)
                        && let Some(fresh) = self.refresh_stale().await
                    {
                        return lookup(&fresh, kid, alg).into_result();
                    }
                    return Ok(key);
                }
                Lookup::NoKeyForAlg => return Err(AuthError::KeyMismatch),
                Lookup::UnknownKid => {}
            }
        }
        self.refresh_for_unknown_kid(kid, alg).await
    }

    /// Fetches the keys now unless a fetch happened within the interval; for start-up, so the
    /// first request does not wait for the issuer.
    pub(super) async fn warm_up(&self) -> Result<(), AuthError> {
        let mut state = self.refresh.lock().await;
        if !self.interval_elapsed(state.last_attempt) {
            return match (&self.snapshot().fetched_at, &state.last_error) {
                (None, Some(e)) => Err(AuthError::KeysUnavailable { source: e.clone() }),
                _ => Ok(()),
            };
        }
        self.fetch_and_store(&mut state).await.map(|_| ())
    }

    async fn refresh_for_unknown_kid(
        &self,
        kid: &str,
        alg: Algorithm,
    ) -> Result<Arc<VerifyKey>, AuthError> {
        let mut state = self.refresh.lock().await;
        // Whoever held the lock before us may have fetched the key we need.
        let cached = self.snapshot();
        if cached.fetched_at.is_some() {
            match lookup(&cached, kid, alg) {
                Lookup::UnknownKid => {}
                found => return found.into_result(),
            }
        }
        let may_fetch = match cached.fetched_at {
            None => self.interval_elapsed(state.last_attempt),
            Some(_) => self.interval_elapsed(state.last_unknown_kid_fetch),
        };
        if !may_fetch {
            return Err(match (&cached.fetched_at, &state.last_error) {
                (None, Some(e)) => AuthError::KeysUnavailable { source: e.clone() },
                _ => AuthError::UnknownKey,
            });
        }
        if cached.fetched_at.is_some() {
            state.last_unknown_kid_fetch = Some(Instant::now());
        }
        let fresh = self.fetch_and_store(&mut state).await?;
        lookup(&fresh, kid, alg).into_result()
    }

    /// Refreshes an old cache without making anyone wait behind a fetch already running, and
    /// keeps serving the old keys when the issuer cannot be reached.
    async fn refresh_stale(&self) -> Option<Arc<KeySet>> {
        let mut state = self.refresh.try_lock().ok()?;
        if !self.interval_elapsed(state.last_attempt) {
            return None;
        }
        self.fetch_and_store(&mut state).await.ok()
    }

    fn interval_elapsed(&self, since: Option<Instant>) -> bool {
        since.is_none_or(|at| at.elapsed() >= self.min_refresh_interval)
    }

    fn snapshot(&self) -> Arc<KeySet> {
        self.cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn fetch_and_store(&self, state: &mut RefreshState) -> Result<Arc<KeySet>, AuthError> {
        state.last_attempt = Some(Instant::now());
        match self.fetch(state).await {
            Ok(set) => {
                metrics::counter!("jitsudo_auth_jwks_fetches_total", "outcome" => "ok")
                    .increment(1);
                state.last_error = None;
                let set = Arc::new(set);
                *self.cache.write().unwrap_or_else(PoisonError::into_inner) = set.clone();
                Ok(set)
            }
            Err(e) => {
                metrics::counter!("jitsudo_auth_jwks_fetches_total", "outcome" => "error")
                    .increment(1);
                tracing::warn!(issuer = %self.issuer, error = %DisplayChain(&e), "could not fetch the issuer's signing keys");
                let e = Arc::new(e);
                state.last_error = Some(e.clone());
                Err(AuthError::KeysUnavailable { source: e })
            }
        }
    }

    async fn fetch(&self, state: &mut RefreshState) -> Result<KeySet, KeyFetchError> {
        let uri = match (&self.configured_jwks_uri, &state.discovered_jwks_uri) {
            (Some(uri), _) | (None, Some(uri)) => uri.clone(),
            (None, None) => {
                let uri = self.discover().await?;
                state.discovered_jwks_uri = Some(uri.clone());
                uri
            }
        };
        let result = self.fetch_jwks(&uri).await;
        if result.is_err() && self.configured_jwks_uri.is_none() {
            // The issuer may have moved its keys: discover again next time.
            state.discovered_jwks_uri = None;
        }
        result
    }

    async fn discover(&self) -> Result<String, KeyFetchError> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let doc: Discovery = self.get_json(&url).await?;
        // OpenID Connect Discovery §4.3: a document for another issuer must not be used.
        if doc.issuer != self.issuer {
            return Err(KeyFetchError::IssuerMismatch {
                expected: self.issuer.clone(),
                found: doc.issuer,
            });
        }
        check_fetch_url(&doc.jwks_uri).map_err(|problem| KeyFetchError::BadJwksUri {
            url: doc.jwks_uri.clone(),
            problem,
        })?;
        Ok(doc.jwks_uri)
    }

    async fn fetch_jwks(&self, url: &str) -> Result<KeySet, KeyFetchError> {
        #[derive(Deserialize)]
        struct RawSet {
            keys: Vec<serde_json::Value>,
        }
        let raw: RawSet = self.get_json(url).await?;
        let mut by_kid: HashMap<String, Vec<Arc<VerifyKey>>> = HashMap::new();
        // Keys of kinds we do not use (encryption keys, unknown curves) are skipped one by one
        // rather than failing the whole set.
        for value in raw.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            if let Some((kid, key)) = usable_key(&jwk) {
                by_kid.entry(kid).or_default().push(Arc::new(key));
            }
        }
        if by_kid.is_empty() {
            return Err(KeyFetchError::NoUsableKeys {
                url: url.to_owned(),
            });
        }
        Ok(KeySet {
            by_kid,
            fetched_at: Some(Instant::now()),
        })
    }

    async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, KeyFetchError> {
        let http_err = |source| KeyFetchError::Http {
            url: url.to_owned(),
            source,
        };
        let mut response = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(http_err)?;
        let status = response.status();
        if !status.is_success() {
            return Err(KeyFetchError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        let too_large = || KeyFetchError::TooLarge {
            url: url.to_owned(),
            limit: MAX_DOCUMENT_BYTES,
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(http_err)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|source| KeyFetchError::Json {
            url: url.to_owned(),
            source,
        })
    }
}

impl Lookup {
    fn into_result(self) -> Result<Arc<VerifyKey>, AuthError> {
        match self {
            Lookup::Found(key) => Ok(key),
            Lookup::NoKeyForAlg => Err(AuthError::KeyMismatch),
            Lookup::UnknownKid => Err(AuthError::UnknownKey),
        }
    }
}

fn lookup(set: &KeySet, kid: &str, alg: Algorithm) -> Lookup {
    match set.by_kid.get(kid) {
        None => Lookup::UnknownKid,
        Some(keys) => match keys.iter().find(|k| k.algorithms.contains(&alg)) {
            Some(key) => Lookup::Found(key.clone()),
            None => Lookup::NoKeyForAlg,
        },
    }
}

/// A signature-verification key with a `kid`, and the algorithms its type and its own `alg`
/// allow; `None` for anything else (symmetric keys above all: an HMAC "key" in a public JWKS is
/// public, and accepting it would let anyone sign).
fn usable_key(jwk: &Jwk) -> Option<(String, VerifyKey)> {
    let kid = jwk.common.key_id.clone()?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return None;
    }
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms(),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => return None,
        },
        _ => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        None => by_type.to_vec(),
        Some(declared) => {
            let declared = Algorithm::try_from(declared).ok()?;
            if !by_type.contains(&declared) {
                return None;
            }
            vec![declared]
        }
    };
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some((
        kid,
        VerifyKey {
            algorithms,
            decoding,
        },
    ))
}

/// An error with its sources, on one line, for the operator's log.
struct DisplayChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}
