//! The Microsoft Entra token endpoint (v2.0) for the client-credentials grant, as MSAL and
//! azure-identity call it: OpenID metadata, then `POST /{tenant}/oauth2/v2.0/token` with a
//! form body. Errors are Entra's: `{"error", "error_description", "error_codes", ...}`, the
//! description ending in the `\r\n`-separated trace lines real answers carry.

use bytes::Bytes;
use chrono::Utc;
use http::HeaderMap;
use serde_json::json;

use super::{Reply, Shared, Token};

const TOKEN_LIFETIME: i64 = 3599;

fn oauth_error(status: u16, error: &str, code: u32, text: &str) -> Reply {
    let trace = uuid::Uuid::new_v4();
    let correlation = uuid::Uuid::new_v4();
    let now = Utc::now().format("%Y-%m-%d %H:%M:%SZ");
    Reply::json(
        status,
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {text}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {now}"),
            "error_codes": [code],
            "timestamp": now.to_string(),
            "trace_id": trace.to_string(),
            "correlation_id": correlation.to_string(),
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

pub(super) fn handle(
    shared: &Shared,
    method: &str,
    path: &str,
    _headers: &HeaderMap,
    body: &Bytes,
) -> Reply {
    let base = shared.base();
    let tenant = shared.lock().tenant.clone();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let asked = parts.first().copied().unwrap_or_default();
    let rest = parts.get(1..).map(|r| r.join("/")).unwrap_or_default();
    let known = asked == tenant || asked.eq_ignore_ascii_case("organizations");
    match (method, rest.as_str()) {
        ("GET", "v2.0/.well-known/openid-configuration") if known => Reply::json(
            200,
            json!({
                "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
                "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": format!("{base}/{tenant}/v2.0"),
                "request_uri_parameter_supported": false,
                "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
                "device_authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/devicecode"),
                "end_session_endpoint": format!("{base}/{tenant}/oauth2/v2.0/logout"),
                "tenant_region_scope": "EU",
            }),
        ),
        ("POST", "oauth2/v2.0/token") if known => token(shared, &tenant, body),
        (_, "v2.0/.well-known/openid-configuration" | "oauth2/v2.0/token") => oauth_error(
            400,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{asked}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
            ),
        ),
        _ => Reply::json(404, json!({"error": "not_found"})),
    }
}

/// A client assertion as Entra checks it: a certificate's (signed by the application, for
/// the token endpoint) or a federated token (another issuer's, matched by issuer and
/// subject, for `api://AzureADTokenExchange`).
fn check_assertion(
    assertion: &str,
    client_id: &str,
    endpoint: &str,
    keys: &[super::AssertionKey],
) -> Result<(), (u16, &'static str, u32, String)> {
    use super::AssertionKey;
    let invalid = |code: u32, text: String| (401, "invalid_client", code, text);
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| {
        (
            400,
            "invalid_request",
            50027,
            "JWT token is invalid or malformed.".to_owned(),
        )
    })?;
    // Who it claims to be decides which key checks it.
    let claims: serde_json::Value = {
        use base64::Engine as _;
        assertion
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or((
                400,
                "invalid_request",
                50027,
                "JWT token is invalid or malformed.".to_owned(),
            ))?
    };
    let verify = |pem: &str, aud: &str| -> bool {
        let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()) else {
            return false;
        };
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_audience(&[aud]);
        v.leeway = 300;
        jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &v).is_ok()
    };
    let iss = claims["iss"].as_str().unwrap_or_default();
    if iss == client_id {
        let Some(thumbprint) = header.x5t_s256.clone().or(header.x5t.clone()) else {
            return Err(invalid(
                700027,
                "Client assertion contains an invalid signature. [Reason - The key was not found., Thumbprint of key used by client: '']".into(),
            ));
        };
        let Some(pem) = keys.iter().find_map(|k| match k {
            AssertionKey::Certificate {
                thumbprints,
                public_pem,
                // MSAL pads its base64url thumbprints; Entra takes both spellings.
            } if thumbprints
                .iter()
                .any(|t| t == thumbprint.trim_end_matches('=')) =>
            {
                Some(public_pem)
            }
            _ => None,
        }) else {
            return Err(invalid(
                700027,
                format!(
                    "Client assertion contains an invalid signature. [Reason - The key was not found., Thumbprint of key used by client: '{thumbprint}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'.]"
                ),
            ));
        };
        if claims["sub"].as_str() != Some(client_id) || !verify(pem, endpoint) {
            return Err(invalid(
                700027,
                "Client assertion failed signature validation.".into(),
            ));
        }
        return Ok(());
    }
    let sub = claims["sub"].as_str().unwrap_or_default();
    let Some(pem) = keys.iter().find_map(|k| match k {
        AssertionKey::Federated {
            issuer,
            subject,
            public_pem,
        } if issuer == iss && subject == sub => Some(public_pem),
        _ => None,
    }) else {
        return Err((
            400,
            "invalid_request",
            70021,
            format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: 'api://AzureADTokenExchange'."
            ),
        ));
    };
    if !verify(pem, "api://AzureADTokenExchange") {
        return Err(invalid(
            700024,
            "Client assertion is not within its valid time range or failed signature validation."
                .into(),
        ));
    }
    Ok(())
}

fn token(shared: &Shared, tenant: &str, body: &Bytes) -> Reply {
    let base = shared.base();
    let f = form(body);
    let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match get("grant_type") {
        Some("client_credentials") => {}
        Some(other) => {
            return oauth_error(
                400,
                "unsupported_grant_type",
                70003,
                &format!("The app requested an unsupported grant type '{other}'."),
            );
        }
        None => {
            return oauth_error(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
            );
        }
    }
    let Some(client_id) = get("client_id") else {
        return oauth_error(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    let scope = get("scope").unwrap_or_default();
    if !scope.split(' ').any(|s| s.ends_with("/.default")) {
        return oauth_error(
            400,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        );
    }
    let mut s = shared.lock();
    let Some(app) = s.apps.get(client_id).cloned() else {
        return oauth_error(
            400,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        );
    };
    if let Some(assertion) = get("client_assertion") {
        if get("client_assertion_type")
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return oauth_error(
                400,
                "invalid_request",
                90014,
                "The required field 'client_assertion_type' is missing or is not urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
            );
        }
        let keys = s.assertion_keys.get(client_id).cloned().unwrap_or_default();
        if let Err((status, error, code, text)) = check_assertion(
            assertion,
            client_id,
            &format!("{base}/{tenant}/oauth2/v2.0/token"),
            &keys,
        ) {
            return oauth_error(status, error, code, &text);
        }
    } else {
        match get("client_secret") {
            Some(secret) if secret == app.secret => {}
            Some(_) => {
                return oauth_error(
                    401,
                    "invalid_client",
                    7000215,
                    &format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                    ),
                );
            }
            None => {
                return oauth_error(
                    401,
                    "invalid_client",
                    7000218,
                    "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                );
            }
        }
    }
    let access = format!("eyJ0eXAiOiJKV1QifQ.{}.fake", uuid::Uuid::new_v4().simple());
    // Tokens live by the real clock, as clients cache them by it: moving the fake's clock
    // (to end PIM assignments) must not expire every cached token.
    let expires = Utc::now() + chrono::TimeDelta::seconds(TOKEN_LIFETIME);
    s.tokens.insert(
        access.clone(),
        Token {
            client_id: app.client_id.clone(),
            object_id: app.object_id.clone(),
            expires,
            // The resource the token is for (`aud`): the scope without `/.default`.
            audience: scope
                .split(' ')
                .find_map(|s| s.strip_suffix("/.default"))
                .unwrap_or_default()
                .to_owned(),
        },
    );
    Reply::json(
        200,
        json!({
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME,
            "ext_expires_in": TOKEN_LIFETIME,
            "access_token": access,
        }),
    )
}
