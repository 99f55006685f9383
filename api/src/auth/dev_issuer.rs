//! The dev-mode OpenID issuer built into jitsudod: an Ed25519 key kept in the dev data dir,
//! discovery, JWKS and a token endpoint that signs access tokens for the demo users only.
//! Its tokens are validated by the ordinary [`Authenticator`](super::Authenticator), over HTTP.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::config::AuthConfig;

const KEY_FILE: &str = "dev-oidc-signing-key.pem";
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// A demo user of dev mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevUser {
    pub username: &'static str,
    pub groups: &'static [&'static str],
}

/// The only users the dev issuer signs tokens for.
pub const DEV_USERS: &[DevUser] = &[
    DevUser {
        username: "alice",
        groups: &["engineering"],
    },
    DevUser {
        username: "bob",
        groups: &["approvers", "engineering"],
    },
    DevUser {
        username: "carol",
        groups: &["jitsudo-admins"],
    },
    DevUser {
        username: "dave",
        groups: &["approvers", "engineering"],
    },
    DevUser {
        username: "erin",
        groups: &["auditors"],
    },
];

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevIssuerError {
    #[error("dev issuer: cannot read or write the signing key {path}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("dev issuer: {path} is not a PKCS#8 Ed25519 private key; delete it to get a new one")]
    KeyFormat { path: PathBuf },
    #[error("dev issuer: the issuer URL {url:?} is not an http(s) URL")]
    IssuerUrl { url: String },
    #[error("{username:?} is not a dev user; the dev users are alice, bob, carol, dave and erin")]
    UnknownUser { username: String },
    #[error("dev issuer: could not sign a token")]
    Sign {
        #[source]
        source: jsonwebtoken::errors::Error,
    },
}

/// The dev-mode issuer. Serve it with [`DevIssuer::router`] under [`DevIssuer::MOUNT_PATH`].
pub struct DevIssuer {
    issuer: String,
    audience: String,
    kid: String,
    public_jwk: Value,
    encoding_key: EncodingKey,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenRequest {
    username: String,
}

impl DevIssuer {
    /// Where jitsudod mounts [`DevIssuer::router`].
    pub const MOUNT_PATH: &'static str = "/dev/oidc";

    /// The issuer URL for a server reachable at `base_url` (`https://127.0.0.1:8443` →
    /// `https://127.0.0.1:8443/dev/oidc`).
    pub fn issuer_url_for(base_url: &str) -> String {
        format!("{}{}", base_url.trim_end_matches('/'), Self::MOUNT_PATH)
    }

    /// Loads the signing key from `dir` (written there, owner-only, on first start), so tokens
    /// minted before a restart stay valid. `issuer_url` is the full issuer, e.g. from
    /// [`DevIssuer::issuer_url_for`].
    pub fn load_or_create(
        dir: &Path,
        issuer_url: &str,
        audience: &str,
    ) -> Result<Self, DevIssuerError> {
        let issuer = issuer_url.trim_end_matches('/').to_owned();
        if !(issuer.starts_with("http://") || issuer.starts_with("https://")) {
            return Err(DevIssuerError::IssuerUrl {
                url: issuer_url.to_owned(),
            });
        }
        let path = dir.join(KEY_FILE);
        let key_file_err = |source| DevIssuerError::KeyFile {
            path: path.clone(),
            source,
        };
        let signing_key = match std::fs::read_to_string(&path) {
            Ok(pem) => SigningKey::from_pkcs8_pem(&pem)
                .map_err(|_| DevIssuerError::KeyFormat { path: path.clone() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(key_file_err)?;
                let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
                write_private(&path, &key).map_err(key_file_err)?;
                key
            }
            Err(e) => return Err(key_file_err(e)),
        };
        Self::from_signing_key(&signing_key, issuer, audience.to_owned(), &path)
    }

    fn from_signing_key(
        key: &SigningKey,
        issuer: String,
        audience: String,
        path: &Path,
    ) -> Result<Self, DevIssuerError> {
        let der = key.to_pkcs8_der().map_err(|_| DevIssuerError::KeyFormat {
            path: path.to_owned(),
        })?;
        let encoding_key = EncodingKey::from_ed_der(der.as_bytes());
        let x = URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
        // RFC 7638 thumbprint: the kid changes exactly when the key does.
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        let public_jwk = json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig" });
        Ok(DevIssuer {
            issuer,
            audience,
            kid,
            public_jwk,
            encoding_key,
        })
    }

    pub fn issuer_url(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// An [`AuthConfig`] for this issuer (defaults otherwise; its keys are fetched over HTTP).
    pub fn auth_config(&self) -> AuthConfig {
        AuthConfig::new(self.issuer.clone(), self.audience.clone())
    }

    /// Signs a one-hour access token for a demo user.
    pub fn mint(&self, username: &str) -> Result<String, DevIssuerError> {
        let user = DEV_USERS
            .iter()
            .find(|u| u.username == username)
            .ok_or_else(|| DevIssuerError::UnknownUser {
                username: username.to_owned(),
            })?;
        let now = chrono::Utc::now().timestamp();
        let ttl = TOKEN_TTL.as_secs() as i64;
        let claims = json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user.username,
            "email": format!("{}@example.com", user.username),
            "email_verified": true,
            "groups": user.groups,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid::Uuid::now_v7().to_string(),
        });
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("at+jwt".into());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding_key)
            .map_err(|source| DevIssuerError::Sign { source })
    }

    /// Discovery, JWKS and token endpoint, relative to [`DevIssuer::MOUNT_PATH`]:
    /// `app.nest(DevIssuer::MOUNT_PATH, issuer.router())`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/token", post(token))
            .with_state(self)
    }
}

fn write_private(path: &Path, key: &SigningKey) -> std::io::Result<()> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(std::io::Error::other)?;
    let tmp = path.with_extension("pem.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(pem.as_bytes())?;
    file.sync_all()?;
    // A crash mid-write leaves the temporary file, never a truncated key.
    std::fs::rename(&tmp, path)
}

async fn discovery(State(dev): State<Arc<DevIssuer>>) -> Json<Value> {
    Json(json!({
        "issuer": dev.issuer,
        "jwks_uri": format!("{}/jwks", dev.issuer),
        "token_endpoint": format!("{}/token", dev.issuer),
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "token_endpoint_auth_methods_supported": ["none"],
        "claims_supported": ["iss", "aud", "sub", "email", "email_verified", "groups", "iat", "nbf", "exp", "jti"],
    }))
}

async fn jwks(State(dev): State<Arc<DevIssuer>>) -> Json<Value> {
    Json(json!({ "keys": [dev.public_jwk] }))
}

async fn token(State(dev): State<Arc<DevIssuer>>, request: Request) -> Response {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    let username = if is_json {
        Json::<TokenRequest>::from_request(request, &())
            .await
            .map(|Json(r)| r.username)
            .ok()
    } else {
        Form::<TokenRequest>::from_request(request, &())
            .await
            .map(|Form(r)| r.username)
            .ok()
    };
    let Some(username) = username else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send {\"username\": \"alice\"} as JSON or username=alice as a form",
        );
    };
    match dev.mint(&username) {
        Ok(access_token) => no_store(Json(json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": TOKEN_TTL.as_secs(),
        }))),
        Err(DevIssuerError::UnknownUser { .. }) => oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "not a dev user; the dev users are alice, bob, carol, dave and erin",
        ),
        Err(e) => {
            tracing::error!(error = %e, "dev issuer could not sign a token");
            oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the dev issuer could not sign a token",
            )
        }
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = no_store(Json(
        json!({ "error": error, "error_description": description }),
    ));
    *response.status_mut() = status;
    response
}

/// RFC 6749 §5.1: token responses must not be cached.
fn no_store(body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
