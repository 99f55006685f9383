//! Getting and keeping a token: the OpenID device authorization grant (openidconnect), a
//! silent refresh when the access token is about to expire, and `--dev USER` against a
//! dev-mode jitsudod. HTTP goes through reqwest with redirects off.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use base64::Engine as _;
use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod,
    CoreDeviceAuthorizationResponse, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode,
    CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AsyncHttpClient, AuthType, ClientId, DeviceAuthorizationUrl,
    HttpClientError, HttpRequest, HttpResponse, IssuerUrl, OAuth2TokenResponse, ProviderMetadata,
    RefreshToken, Scope,
};
use serde::{Deserialize, Serialize};

use crate::config::StoredToken;
use crate::error::{CliError, CliResult, Exit};

/// Refresh when the access token has less than this left (or a quarter of its lifetime,
/// for short-lived tokens).
const REFRESH_MARGIN_SECONDS: i64 = 30;

const DEFAULT_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];

#[derive(Clone, Debug, Deserialize, Serialize)]
struct DeviceEndpoint {
    device_authorization_endpoint: DeviceAuthorizationUrl,
}

impl AdditionalProviderMetadata for DeviceEndpoint {}

type DeviceProviderMetadata = ProviderMetadata<
    DeviceEndpoint,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// openidconnect's HTTP, carried by reqwest (no redirects: a redirect from a token endpoint
/// could carry the device code elsewhere).
#[derive(Clone)]
pub struct Http(reqwest::Client);

impl Http {
    pub fn new() -> CliResult<Http> {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .map(Http)
            .map_err(|e| CliError::failure(format!("cannot set up HTTPS: {e}")))
    }
}

impl<'c> AsyncHttpClient<'c> for Http {
    type Error = HttpClientError<reqwest::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Self::Error>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request).map_err(Box::new)?;
            let response = self.0.execute(request).await.map_err(Box::new)?;
            let mut builder = http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            let body = response.bytes().await.map_err(Box::new)?;
            builder.body(body.to_vec()).map_err(HttpClientError::Http)
        })
    }
}

fn oidc_err(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::new(Exit::Unavailable, format!("{what}: {e}"))
}

/// What the device flow asks the person to do.
pub struct DevicePrompt {
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub user_code: String,
    pub expires_in: Duration,
}

/// Runs the device authorization grant: `show` is called once with what to tell the person;
/// then the token endpoint is polled until they approve, refuse, or the code expires.
pub async fn device_login(
    issuer: &str,
    client_id: &str,
    scopes: &[String],
    show: impl FnOnce(&DevicePrompt),
) -> CliResult<StoredToken> {
    let http = Http::new()?;
    let metadata = discover(issuer, &http).await?;
    let device_url = metadata
        .additional_metadata()
        .device_authorization_endpoint
        .clone();
    let client =
        CoreClient::from_provider_metadata(metadata, ClientId::new(client_id.into()), None)
            .set_device_authorization_url(device_url)
            .set_auth_type(AuthType::RequestBody);
    let mut request = client.exchange_device_code();
    let scopes: Vec<String> = if scopes.is_empty() {
        DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect()
    } else {
        scopes.to_vec()
    };
    for s in scopes.iter().filter(|s| s.as_str() != "openid") {
        request = request.add_scope(Scope::new(s.clone()));
    }
    let details: CoreDeviceAuthorizationResponse =
        request.request_async(&http).await.map_err(|e| {
            oidc_err(
                &format!("{issuer} refused the device authorization request"),
                error_chain(&e),
            )
        })?;
    show(&DevicePrompt {
        verification_uri: details.verification_uri().to_string(),
        verification_uri_complete: details
            .verification_uri_complete()
            .map(|u| u.secret().to_owned()),
        user_code: details.user_code().secret().to_owned(),
        expires_in: details.expires_in(),
    });
    let token = client
        .exchange_device_access_token(&details)
        .map_err(|e| oidc_err("the provider has no token endpoint", e))?
        .request_async(&http, tokio::time::sleep, None)
        .await
        .map_err(|e| {
            CliError::new(
                Exit::Denied,
                format!(
                    "login did not complete: {} — run `jitsudo login` again",
                    error_chain(&e)
                ),
            )
        })?;
    Ok(stored_oidc(&token, None, issuer, client_id))
}

/// Exchanges the refresh token for a new access token (and keeps the old refresh token when
/// the provider does not rotate it).
pub async fn refresh(stored: &StoredToken) -> CliResult<StoredToken> {
    let (Some(issuer), Some(client_id), Some(refresh_token)) = (
        stored.issuer.as_deref(),
        stored.client_id.as_deref(),
        stored.refresh_token.as_deref(),
    ) else {
        return Err(CliError::new(
            Exit::Denied,
            "your session expired — run `jitsudo login`",
        ));
    };
    let http = Http::new()?;
    let metadata = discover(issuer, &http).await?;
    let client =
        CoreClient::from_provider_metadata(metadata, ClientId::new(client_id.into()), None)
            .set_auth_type(AuthType::RequestBody);
    let token = client
        .exchange_refresh_token(&RefreshToken::new(refresh_token.to_owned()))
        .map_err(|e| oidc_err("the provider has no token endpoint", e))?
        .request_async(&http)
        .await
        .map_err(|e| {
            CliError::new(
                Exit::Denied,
                format!(
                    "your session expired and could not be renewed ({}) — run `jitsudo login`",
                    error_chain(&e)
                ),
            )
        })?;
    Ok(stored_oidc(
        &token,
        stored.refresh_token.clone(),
        issuer,
        client_id,
    ))
}

/// The OpenID configuration of `issuer`, with its device authorization endpoint.
async fn discover(issuer: &str, http: &Http) -> CliResult<DeviceProviderMetadata> {
    let issuer_url = IssuerUrl::new(issuer.to_owned())
        .map_err(|e| CliError::usage(format!("the issuer {issuer:?} is not a URL: {e}")))?;
    DeviceProviderMetadata::discover_async(issuer_url, http)
        .await
        .map_err(|e| {
            oidc_err(
                &format!("cannot read the OpenID configuration of {issuer}"),
                error_chain(&e),
            )
        })
}

/// What to store of a token response; `keep_refresh` when the provider did not rotate it.
fn stored_oidc(
    token: &openidconnect::core::CoreTokenResponse,
    keep_refresh: Option<String>,
    issuer: &str,
    client_id: &str,
) -> StoredToken {
    let access_token = token.access_token().secret().to_owned();
    let (expires_at, lifetime) = expiry(&access_token, token.expires_in());
    StoredToken {
        expires_at,
        lifetime,
        access_token,
        refresh_token: token
            .refresh_token()
            .map(|r| r.secret().to_owned())
            .or(keep_refresh),
        method: "oidc".into(),
        issuer: Some(issuer.to_owned()),
        client_id: Some(client_id.to_owned()),
    }
}

#[derive(Deserialize)]
struct DevTokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// `jitsudo login --dev USER`: asks a dev-mode jitsudod's built-in issuer for a token.
pub async fn dev_login(server: &reqwest::Url, user: &str) -> CliResult<StoredToken> {
    let http = Http::new()?;
    let url = server
        .join("/dev/oidc/token")
        .map_err(|e| CliError::usage(format!("--server: {e}")))?;
    let response = http
        .0
        .post(url.clone())
        .form(&[("username", user)])
        .send()
        .await
        .map_err(|e| {
            CliError::unavailable(format!(
                "cannot reach {server}: {} — is `jitsudod --dev` running there?",
                error_chain(&e)
            ))
        })?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(CliError::usage(format!(
            "{server} is not a dev-mode jitsudod (no /dev/oidc) — log in with `jitsudo login` (OpenID) instead"
        )));
    }
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        let reason = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                v.get("error_description")
                    .or_else(|| v.get("error"))
                    .and_then(|s| s.as_str().map(str::to_owned))
            })
            .unwrap_or_else(|| format!("HTTP {status}"));
        return Err(CliError::new(
            Exit::Denied,
            format!("the dev issuer refused {user:?}: {reason}"),
        ));
    }
    let token: DevTokenResponse = serde_json::from_str(&text)
        .map_err(|e| CliError::failure(format!("the dev issuer answered nonsense: {e}")))?;
    let (expires_at, lifetime) = expiry(
        &token.access_token,
        token.expires_in.map(Duration::from_secs),
    );
    Ok(StoredToken {
        expires_at,
        lifetime,
        access_token: token.access_token,
        refresh_token: None,
        method: "dev".into(),
        issuer: None,
        client_id: None,
    })
}

/// The access token's expiry and lifetime: from `expires_in`, else from the JWT's `exp`
/// and `iat` (read, not verified — the server verifies; this only decides when to refresh).
fn expiry(access_token: &str, expires_in: Option<Duration>) -> (Option<i64>, Option<i64>) {
    let now = chrono::Utc::now().timestamp();
    if let Some(d) = expires_in {
        let secs = d.as_secs() as i64;
        return (Some(now + secs), Some(secs));
    }
    let claims = jwt_claims(access_token);
    let exp = claims.as_ref().and_then(|c| c.get("exp")?.as_i64());
    let iat = claims.as_ref().and_then(|c| c.get("iat")?.as_i64());
    (exp, exp.zip(iat).map(|(e, i)| e - i))
}

/// The unverified claims of a JWT (display and refresh decisions only).
pub fn jwt_claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// True when the token expires within the refresh margin.
pub fn needs_refresh(t: &StoredToken) -> bool {
    let margin = t.lifetime.map_or(REFRESH_MARGIN_SECONDS, |l| {
        (l / 4).min(REFRESH_MARGIN_SECONDS)
    });
    t.expires_at
        .is_some_and(|exp| exp - chrono::Utc::now().timestamp() < margin)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}
