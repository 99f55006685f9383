//! Bearer-token authentication against a test issuer of our own (discovery and a JWKS the test
//! rotates and whose fetches it counts, over HTTP on 127.0.0.1:0), and the dev issuer end to end.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse as _;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jitsudo_api::auth::{AuthConfig, AuthError, Authenticator, DevIssuer};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const AUDIENCE: &str = "jitsudo";

fn init() {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .ok();
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A signing key of the test issuer and its public JWK.
struct TestKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    public_pem: String,
    jwk: Value,
}

impl TestKey {
    fn rsa(kid: &str) -> Self {
        Self::generate(
            kid,
            &rcgen::PKCS_RSA_SHA256,
            Algorithm::RS256,
            EncodingKey::from_rsa_pem,
        )
    }

    fn ec(kid: &str) -> Self {
        Self::generate(
            kid,
            &rcgen::PKCS_ECDSA_P256_SHA256,
            Algorithm::ES256,
            EncodingKey::from_ec_pem,
        )
    }

    fn generate(
        kid: &str,
        rcgen_alg: &'static rcgen::SignatureAlgorithm,
        alg: Algorithm,
        from_pem: fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>,
    ) -> Self {
        let pair = rcgen::KeyPair::generate_for(rcgen_alg).expect("generate a test key");
        let encoding = from_pem(pair.serialize_pem().as_bytes()).expect("load the test key");
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).expect("public JWK of the test key");
        jwk.common.key_id = Some(kid.to_owned());
        let jwk = serde_json::to_value(jwk).expect("serialize the JWK");
        TestKey {
            kid: kid.to_owned(),
            alg,
            encoding,
            public_pem: pair.public_key_pem(),
            jwk,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_with(claims, Some("at+jwt"))
    }

    fn sign_with(&self, claims: &Value, typ: Option<&str>) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        header.typ = typ.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign a test token")
    }
}

/// Discovery plus a JWKS the test can rotate; counts what it serves.
struct TestIssuer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    jwks_down: Arc<AtomicBool>,
    jwks_fetches: Arc<AtomicUsize>,
    discovery_fetches: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct IssuerState {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    jwks_down: Arc<AtomicBool>,
    jwks_fetches: Arc<AtomicUsize>,
    discovery_fetches: Arc<AtomicUsize>,
}

impl TestIssuer {
    async fn start(keys: &[&TestKey]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test issuer");
        let url = format!("http://{}", listener.local_addr().expect("issuer address"));
        let state = IssuerState {
            url: url.clone(),
            keys: Arc::new(Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect())),
            jwks_down: Arc::default(),
            jwks_fetches: Arc::default(),
            discovery_fetches: Arc::default(),
        };
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(|State(s): State<IssuerState>| async move {
                    s.discovery_fetches.fetch_add(1, Ordering::SeqCst);
                    axum::Json(json!({ "issuer": s.url, "jwks_uri": format!("{}/keys", s.url) }))
                }),
            )
            .route(
                "/keys",
                get(|State(s): State<IssuerState>| async move {
                    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
                    if s.jwks_down.load(Ordering::SeqCst) {
                        return (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            axum::Json(json!({})),
                        )
                            .into_response();
                    }
                    let keys = s.keys.lock().expect("keys lock").clone();
                    axum::Json(json!({ "keys": keys })).into_response()
                }),
            )
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        TestIssuer {
            url,
            keys: state.keys,
            jwks_down: state.jwks_down,
            jwks_fetches: state.jwks_fetches,
            discovery_fetches: state.discovery_fetches,
        }
    }

    fn publish(&self, keys: &[&TestKey]) {
        *self.keys.lock().expect("keys lock") = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn jwks_fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    fn config(&self) -> AuthConfig {
        AuthConfig::new(self.url.clone(), AUDIENCE)
    }

    fn authenticator(&self) -> Authenticator {
        Authenticator::new(self.config()).expect("valid test configuration")
    }

    /// Valid access-token claims for this issuer.
    fn claims(&self) -> Value {
        let now = now();
        json!({
            "iss": self.url,
            "aud": [AUDIENCE, "another-api"],
            "sub": "user-7f3a",
            "email": "alice@example.com",
            "email_verified": true,
            "groups": ["engineering", "approvers"],
            "iat": now,
            "nbf": now,
            "exp": now + 600,
        })
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Asserts a refusal whose message does not echo the token, and returns it.
async fn refused(auth: &Authenticator, header_value: &str) -> AuthError {
    let err = auth
        .authenticate(header_value)
        .await
        .expect_err("the token must be refused");
    let message = err.to_string();
    for part in header_value
        .trim_start_matches("Bearer ")
        .split('.')
        .filter(|p| p.len() > 8)
    {
        assert!(
            !message.contains(part),
            "the refusal echoes the token: {message}"
        );
    }
    err
}

#[tokio::test]
async fn valid_access_token_is_accepted_and_mapped_to_an_identity() {
    init();
    let key = TestKey::rsa("rsa-1");
    let issuer = TestIssuer::start(&[&key]).await;
    let auth = issuer.authenticator();
    let claims = issuer.claims();

    let id = auth
        .authenticate(&bearer(&key.sign(&claims)))
        .await
        .expect("a valid token is accepted");

    assert_eq!(id.subject, "user-7f3a");
    assert_eq!(id.email.as_deref(), Some("alice@example.com"));
    assert!(id.email_verified);
    assert_eq!(id.groups, ["engineering", "approvers"]);
    assert_eq!(
        id.expires_at.timestamp(),
        claims["exp"].as_i64().expect("exp")
    );
    assert_eq!(
        (
            issuer.discovery_fetches.load(Ordering::SeqCst),
            issuer.jwks_fetches()
        ),
        (1, 1)
    );

    // The keys are cached: a second token costs no fetch.
    auth.authenticate(&bearer(&key.sign(&claims)))
        .await
        .expect("accepted again");
    assert_eq!(issuer.jwks_fetches(), 1);
}

#[tokio::test]
async fn unverified_email_is_kept_raw_with_the_flag_false() {
    init();
    let key = TestKey::ec("ec-1");
    let issuer = TestIssuer::start(&[&key]).await;
    let auth = issuer.authenticator();
    for flag in [json!(false), json!("true"), Value::Null] {
        let mut claims = issuer.claims();
        claims["email_verified"] = flag;

        let id = auth
            .authenticate(&bearer(&key.sign(&claims)))
            .await
            .expect("accepted");

        assert_eq!(id.email.as_deref(), Some("alice@example.com"));
        assert!(!id.email_verified);
    }
}

#[tokio::test]
async fn alg_none_is_refused_before_any_key_is_fetched() {
    init();
    let key = TestKey::ec("ec-1");
    let issuer = TestIssuer::start(&[&key]).await;
    let auth = issuer.authenticator();
    let header =
        URL_SAFE_NO_PAD.encode(json!({ "alg": "none", "typ": "JWT", "kid": key.kid }).to_string());
    let payload = URL_SAFE_NO_PAD.encode(issuer.claims().to_string());

    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}.c2lnbmF0dXJl"),
    ] {
        let err = refused(&auth, &bearer(&token)).await;
        assert!(
            matches!(&err, AuthError::AlgorithmNotAllowed { alg } if alg == "none"),
            "{err:?}"
        );
    }
    assert_eq!(issuer.jwks_fetches(), 0);
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_as_secret_is_refused() {
    init();
    let key = TestKey::rsa("rsa-1");
    let issuer = TestIssuer::start(&[&key]).await;
    let auth = issuer.authenticator();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    let secret = EncodingKey::from_secret(key.public_pem.as_bytes()).expect("HMAC key");
    let token = jsonwebtoken::encode(&header, &issuer.claims(), &secret).expect("sign");

    let err = refused(&auth, &bearer(&token)).await;

    assert!(
        matches!(&err, AuthError::AlgorithmNotAllowed { alg } if alg == "HS256"),
        "{err:?}"
    );
    assert_eq!(issuer.jwks_fetches(), 0);
}

#[tokio::test]
async fn hmac_or_excessive_leeway_in_the_configuration_is_refused() {
    init();
    let mut cfg = AuthConfig::new("https://id.example.com", AUDIENCE);
    cfg.algorithms = vec![Algorithm::RS256, Algorithm::HS256];
    let err = Authenticator::new(cfg).expect_err("HS256 is refused");
    assert!(
        matches!(
            err,
            AuthError::InvalidConfig {
                field: "algorithms",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(AuthConfig::algorithms_from_names(&["RS256", "HS512"]).is_err());
    assert!(AuthConfig::algorithms_from_names(&["none"]).is_err());

    let mut cfg = AuthConfig::new("https://id.example.com", AUDIENCE);
    cfg.leeway = Duration::from_secs(301);
    assert!(matches!(
        cfg.validate(),
        Err(AuthError::InvalidConfig {
            field: "leeway",
            ..
        })
    ));

    let cfg = AuthConfig::new("http://id.example.com", AUDIENCE);
    assert!(matches!(
        cfg.validate(),
        Err(AuthError::InvalidConfig {
            field: "issuer",
            ..
        })
    ));
}

#[tokio::test]
async fn wrong_issuer_is_refused() {
    init();
    let key = TestKey::ec("ec-1");
    let issuer = TestIssuer::start(&[&key]).await;
    let auth = issuer.authenticator();
    for iss in [
        json!("https://evil.example.com"),
        json!(format!("{}/", issuer.url)),
        Value::Null,
    ] {
        let mut claims = issuer.claims();
        claims["iss"] = iss;

        let err = refused(&auth, &bearer(&key.sign(&claims))).await;

        assert!(matches!(err, AuthError::WrongIssuer { .. }), "{err:?}");
    }
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    init();
    let key = TestKey::ec("ec-1");
    let issuer = TestIssuer::start(&[&key]).await;
    let auth = issuer.authenticator();
    for aud in [
        json!("another-api"),
        json!(["another-api", "jitsudo-cli"]),
        json!([]),
        Value::Null,
    ] {
        let mut claims = issuer.claims();
        claims["aud"] = aud;

        let err = refused(&auth, &bearer(&key.sign(&claims))).await;

        assert!(matches!(err, AuthError::WrongAudience { .. }), "{err:?}");
    }
}

#[tokio::test]
async fn expired_token_beyond_the_leeway_is_refused() {
    init();
    let key = TestKey::ec("ec-1");
    let issuer = TestIssuer::start(&[&key]).await;
    let auth = issuer.authenticator();
    let mut claims = issuer.claims();
    claims["iat"] = json!(now() - 3600);
    claims["nbf"] = json!(now() - 3600);
    claims["exp"] = json!(now() - 31);

    let err = refused(&auth, &bearer(&key.sign(&claims))).await;

    assert!(matches!(err, AuthError::Expired), "{err:?}");
}

#[tokio::test]
async fn token_not_yet_valid_is_refused() {
    init();
    let key = TestKey::ec("ec-1");
    let issuer = TestIssuer::start(&[&key]).await;
    let auth = issuer.authenticator();
    for claim in ["nbf", "iat"] {
        let mut claims = issuer.claims();
        claims[claim] = json!(now() + 120);

        let err = refused(&auth, &bearer(&key.sign(&claims))).await;

        assert!(matches!(err, AuthError::NotYetValid), "{claim}: {err:?}");
    }
}

#[tokio::test]
async fn clock_skew_within_the_leeway_is_accepted() {
    init();
    let key = TestKey::ec("ec-1");
    let issuer = TestIssuer::start(&[&key]).await;
    let auth = issuer.authenticator();
    let mut expired_a_moment_ago = issuer.claims();
    expired_a_moment_ago["exp"] = json!(now() - 10);
    let mut valid_in_a_moment = issuer.claims();
    valid_in_a_moment["nbf"] = json!(now() + 10);
    valid_in_a_moment["iat"] = json!(now() + 10);

    for claims in [expired_a_moment_ago, valid_in_a_moment] {
        auth.authenticate(&bearer(&key.sign(&claims)))
            .await
            .expect("within the 30 s leeway");
    }
}

#[tokio::test]
async fn unknown_kid_refetches_once_then_is_refused_and_a_second_one_costs_no_fetch() {
    init();
    let key = TestKey::ec("ec-1");
    let issuer = TestIssuer::start(&[&key]).await;
    let auth = issuer.authenticator();
    auth.authenticate(&bearer(&key.sign(&issuer.claims())))
        .await
        .expect("accepted");
    assert_eq!(issuer.jwks_fetches(), 1);

    let rogue = TestKey::ec("rogue-1");
    let err = refused(&auth, &bearer(&rogue.sign(&issuer.claims()))).await;
    assert!(matches!(err, AuthError::UnknownKey), "{err:?}");
    assert_eq!(issuer.jwks_fetches(), 2);

    let rogue = TestKey::ec("rogue-2");
    let err = refused(&auth, &bearer(&rogue.sign(&issuer.claims()))).await;
    assert!(matches!(err, AuthError::UnknownKey), "{err:?}");
    assert_eq!(
        issuer.jwks_fetches(),
        2,
        "a second unknown kid within the interval must not refetch"
    );

    auth.authenticate(&bearer(&key.sign(&issuer.claims())))
        .await
        .expect("the known key still works");
}

#[tokio::test]
async fn a_flood_of_random_kids_shares_one_refetch() {
    init();
    let key = TestKey::ec("ec-1");
    let issuer = TestIssuer::start(&[&key]).await;
    let auth = Arc::new(issuer.authenticator());
    auth.authenticate(&bearer(&key.sign(&issuer.claims())))
        .await
        .expect("accepted");

    let claims = issuer.claims();
    let calls = (0..64).map(|i| {
        let auth = auth.clone();
        let mut header = Header::new(key.alg);
        header.kid = Some(format!("random-{i}"));
        let token = jsonwebtoken::encode(&header, &claims, &key.encoding).expect("sign");
        tokio::spawn(async move { auth.authenticate(&bearer(&token)).await })
    });
    for call in futures::future::join_all(calls).await {
        let err = call.expect("task").expect_err("refused");
        assert!(matches!(err, AuthError::UnknownKey), "{err:?}");
    }

    assert_eq!(issuer.jwks_fetches(), 2);
}

#[tokio::test]
async fn concurrent_first_requests_share_one_discovery_and_one_fetch() {
    init();
    let key = TestKey::ec("ec-1");
    let issuer = TestIssuer::start(&[&key]).await;
    let auth = Arc::new(issuer.authenticator());
    let token = key.sign(&issuer.claims());

    let calls = (0..16).map(|_| {
        let (auth, token) = (auth.clone(), token.clone());
        tokio::spawn(async move { auth.authenticate(&bearer(&token)).await })
    });
    for call in futures::future::join_all(calls).await {
        call.expect("task").expect("accepted");
    }

    assert_eq!(
        (
            issuer.discovery_fetches.load(Ordering::SeqCst),
            issuer.jwks_fetches()
        ),
        (1, 1)
    );
}

#[tokio::test]
async fn rotated_key_is_accepted_after_the_refresh() {
    init();
    let first = TestKey::rsa("2026-10");
    let issuer = TestIssuer::start(&[&first]).await;
    let auth = issuer.authenticator();
    auth.authenticate(&bearer(&first.sign(&issuer.claims())))
        .await
        .expect("accepted");

    let second = TestKey::rsa("2026-11");
    issuer.publish(&[&first, &second]);
    let id = auth
        .authenticate(&bearer(&second.sign(&issuer.claims())))
        .await
        .expect("the new key is fetched at once");
    assert_eq!(id.subject, "user-7f3a");
    assert_eq!(issuer.jwks_fetches(), 2);

    // A second rotation within the interval waits for it; the first key is retired meanwhile.
    let third = TestKey::rsa("2026-12");
    issuer.publish(&[&second, &third]);
    let token = third.sign(&issuer.claims());
    let err = refused(&auth, &bearer(&token)).await;
    assert!(matches!(err, AuthError::UnknownKey), "{err:?}");
    assert_eq!(issuer.jwks_fetches(), 2);

    let_time_pass(issuer.config().jwks_min_refresh_interval).await;

    auth.authenticate(&bearer(&token))
        .await
        .expect("accepted after the refresh");
    assert_eq!(issuer.jwks_fetches(), 3);
    let err = refused(&auth, &bearer(&first.sign(&issuer.claims()))).await;
    assert!(
        matches!(err, AuthError::UnknownKey),
        "a retired key is refused once the keys are refreshed: {err:?}"
    );
    assert_eq!(issuer.jwks_fetches(), 3);
    auth.authenticate(&bearer(&second.sign(&issuer.claims())))
        .await
        .expect("still published");
}

/// Moves tokio's clock, which paces JWKS fetches; no request is in flight meanwhile.
async fn let_time_pass(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

#[tokio::test]
async fn unreachable_keys_are_retried_at_most_once_per_interval() {
    init();
    let key = TestKey::ec("ec-1");
    let issuer = TestIssuer::start(&[&key]).await;
    issuer.jwks_down.store(true, Ordering::SeqCst);
    let auth = issuer.authenticator();
    let token = key.sign(&issuer.claims());

    assert!(matches!(
        auth.warm_up().await,
        Err(AuthError::KeysUnavailable { .. })
    ));
    for _ in 0..3 {
        let err = refused(&auth, &bearer(&token)).await;
        assert!(matches!(err, AuthError::KeysUnavailable { .. }), "{err:?}");
    }
    assert_eq!(issuer.jwks_fetches(), 1);

    issuer.jwks_down.store(false, Ordering::SeqCst);
    let_time_pass(issuer.config().jwks_min_refresh_interval).await;
    auth.authenticate(&bearer(&token))
        .await
        .expect("accepted once the keys are back");
    assert_eq!(issuer.jwks_fetches(), 2);
}

#[tokio::test]
async fn retired_key_stops_working_when_the_cache_ages_out() {
    init();
    let old = TestKey::ec("old");
    let issuer = TestIssuer::start(&[&old]).await;
    let auth = issuer.authenticator();
    auth.authenticate(&bearer(&old.sign(&issuer.claims())))
        .await
        .expect("accepted");

    let new = TestKey::ec("new");
    issuer.publish(&[&new]);
    auth.authenticate(&bearer(&old.sign(&issuer.claims())))
        .await
        .expect("the cache is still young");
    assert_eq!(issuer.jwks_fetches(), 1);

    let_time_pass(Duration::from_secs(15 * 60)).await;
    let err = refused(&auth, &bearer(&old.sign(&issuer.claims()))).await;
    assert!(matches!(err, AuthError::UnknownKey), "{err:?}");
    assert_eq!(issuer.jwks_fetches(), 2);
    auth.authenticate(&bearer(&new.sign(&issuer.claims())))
        .await
        .expect("the new key is cached");
}

#[tokio::test]
async fn oversized_token_is_refused_before_any_parsing() {
    init();
    let key = TestKey::ec("ec-1");
    let issuer = TestIssuer::start(&[&key]).await;
    let auth = issuer.authenticator();
    let mut claims = issuer.claims();
    claims["padding"] = json!("x".repeat(9000));

    for header_value in [
        bearer(&key.sign(&claims)),
        bearer(&"%".repeat(8193)),
        "x".repeat(100_000),
    ] {
        let err = refused(&auth, &header_value).await;
        assert!(
            matches!(err, AuthError::TokenTooLarge { limit: 8192 }),
            "{err:?}"
        );
    }
    assert_eq!(issuer.jwks_fetches(), 0);
}

#[tokio::test]
async fn groups_claim_that_is_not_an_array_of_strings_is_refused() {
    init();
    let key = TestKey::ec("ec-1");
    let issuer = TestIssuer::start(&[&key]).await;
    let auth = issuer.authenticator();
    for groups in [
        json!("engineering"),
        json!(["engineering", 7]),
        json!({ "engineering": true }),
        Value::Null,
    ] {
        let mut claims = issuer.claims();
        claims["groups"] = groups;

        let err = refused(&auth, &bearer(&key.sign(&claims))).await;

        assert!(
            matches!(&err, AuthError::InvalidGroups { claim } if claim == "groups"),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("`groups`"),
            "the message names the claim: {err}"
        );
    }

    let mut claims = issuer.claims();
    claims.as_object_mut().expect("object").remove("groups");
    let id = auth
        .authenticate(&bearer(&key.sign(&claims)))
        .await
        .expect("no groups claim means no groups");
    assert!(id.groups.is_empty());
}

#[tokio::test]
async fn missing_bearer_scheme_is_refused() {
    init();
    let key = TestKey::ec("ec-1");
    let issuer = TestIssuer::start(&[&key]).await;
    let auth = issuer.authenticator();
    let token = key.sign(&issuer.claims());

    for header_value in [
        token.clone(),
        format!("Basic {token}"),
        "Bearer".into(),
        "Bearer    ".into(),
        String::new(),
    ] {
        let err = refused(&auth, &header_value).await;
        assert!(matches!(err, AuthError::MissingBearer), "{err:?}");
    }
    auth.authenticate(&format!("bearer {token}"))
        .await
        .expect("the scheme is case-insensitive");
}

#[tokio::test]
async fn token_without_kid_or_with_a_mismatched_or_forged_key_is_refused() {
    init();
    let rsa = TestKey::rsa("rsa-1");
    let ec = TestKey::ec("ec-1");
    let issuer = TestIssuer::start(&[&rsa, &ec]).await;
    let auth = issuer.authenticator();
    let claims = issuer.claims();

    let no_kid =
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &ec.encoding).expect("sign");
    let err = refused(&auth, &bearer(&no_kid)).await;
    assert!(matches!(err, AuthError::MissingKeyId), "{err:?}");

    let mut es256_naming_the_rsa_key = Header::new(Algorithm::ES256);
    es256_naming_the_rsa_key.kid = Some(rsa.kid.clone());
    let token =
        jsonwebtoken::encode(&es256_naming_the_rsa_key, &claims, &ec.encoding).expect("sign");
    let err = refused(&auth, &bearer(&token)).await;
    assert!(matches!(err, AuthError::KeyMismatch), "{err:?}");

    let forger = TestKey::ec(&ec.kid);
    let err = refused(&auth, &bearer(&forger.sign(&claims))).await;
    assert!(matches!(err, AuthError::BadSignature), "{err:?}");

    let mut parts: Vec<String> = ec.sign(&claims).split('.').map(str::to_owned).collect();
    let mut tampered = claims.clone();
    tampered["groups"] = json!(["jitsudo-admins"]);
    parts[1] = URL_SAFE_NO_PAD.encode(tampered.to_string());
    let err = refused(&auth, &bearer(&parts.join("."))).await;
    assert!(matches!(err, AuthError::BadSignature), "{err:?}");
}

#[tokio::test]
async fn id_token_for_the_cli_is_accepted_only_when_configured() {
    init();
    let key = TestKey::ec("ec-1");
    let issuer = TestIssuer::start(&[&key]).await;
    let mut id_token = issuer.claims();
    id_token["aud"] = json!("jitsudo-cli");
    let token = key.sign_with(&id_token, Some("JWT"));

    let err = refused(&issuer.authenticator(), &bearer(&token)).await;
    assert!(matches!(err, AuthError::WrongAudience { .. }), "{err:?}");

    let mut cfg = issuer.config();
    cfg.id_token_client_id = Some("jitsudo-cli".into());
    let auth = Authenticator::new(cfg).expect("valid configuration");
    let id = auth
        .authenticate(&bearer(&token))
        .await
        .expect("an ID token for the CLI is accepted");
    assert_eq!(id.subject, "user-7f3a");
    auth.authenticate(&bearer(&key.sign_with(&id_token, None)))
        .await
        .expect("typ may be absent");

    let err = refused(&auth, &bearer(&key.sign_with(&id_token, Some("at+jwt")))).await;
    assert!(
        matches!(err, AuthError::WrongTokenType),
        "an access token for another audience: {err:?}"
    );
    let err = refused(
        &auth,
        &bearer(&key.sign_with(&issuer.claims(), Some("dpop+jwt"))),
    )
    .await;
    assert!(matches!(err, AuthError::WrongTokenType), "{err:?}");
    id_token["aud"] = json!(["jitsudo-cli", "another-api"]);
    let err = refused(&auth, &bearer(&key.sign_with(&id_token, Some("JWT")))).await;
    assert!(matches!(err, AuthError::WrongAudience { .. }), "{err:?}");
}

/// jitsudod's dev issuer, served the way jitsudod mounts it.
async fn serve_dev_issuer(dir: &std::path::Path) -> (String, Arc<DevIssuer>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let dev = Arc::new(
        DevIssuer::load_or_create(dir, &DevIssuer::issuer_url_for(&base), AUDIENCE)
            .expect("dev issuer"),
    );
    let app = Router::new().nest(DevIssuer::MOUNT_PATH, dev.clone().router());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, dev)
}

#[tokio::test]
async fn dev_issuer_tokens_pass_the_ordinary_authenticator_end_to_end() {
    init();
    let dir = tempfile::tempdir().expect("temp dir");
    let (base, dev) = serve_dev_issuer(dir.path()).await;
    let http = reqwest::Client::new();

    let discovery: Value = http
        .get(format!("{base}/dev/oidc/.well-known/openid-configuration"))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("discovery JSON");
    assert_eq!(discovery["issuer"], format!("{base}/dev/oidc"));
    assert_eq!(discovery["jwks_uri"], format!("{base}/dev/oidc/jwks"));
    assert_eq!(
        discovery["token_endpoint"],
        format!("{base}/dev/oidc/token")
    );
    let jwks: Value = http
        .get(format!("{base}/dev/oidc/jwks"))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("JWKS JSON");
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");

    let response = http
        .post(format!("{base}/dev/oidc/token"))
        .json(&json!({ "username": "alice" }))
        .send()
        .await
        .expect("token");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("token JSON");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().expect("access_token");

    let auth = Authenticator::new(dev.auth_config()).expect("dev configuration");
    let alice = auth
        .authenticate(&bearer(token))
        .await
        .expect("the dev token is accepted");
    assert_eq!(alice.subject, "alice");
    assert_eq!(alice.email.as_deref(), Some("alice@example.com"));
    assert!(alice.email_verified);
    assert_eq!(alice.groups, ["engineering"]);

    let form = http
        .post(format!("{base}/dev/oidc/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("username=carol")
        .send()
        .await
        .expect("token");
    let body: Value = form.json().await.expect("token JSON");
    let carol = auth
        .authenticate(&bearer(body["access_token"].as_str().expect("token")))
        .await
        .expect("accepted");
    assert_eq!(carol.groups, ["jitsudo-admins"]);
    let bob = auth
        .authenticate(&bearer(&dev.mint("bob").expect("mint")))
        .await
        .expect("accepted");
    assert_eq!(bob.groups, ["approvers", "engineering"]);

    let unknown = http
        .post(format!("{base}/dev/oidc/token"))
        .json(&json!({ "username": "mallory" }))
        .send()
        .await
        .expect("token");
    assert_eq!(unknown.status(), 400);
    let body: Value = unknown.json().await.expect("error JSON");
    assert_eq!(body["error"], "invalid_grant");
    assert!(body.get("access_token").is_none());
    assert!(dev.mint("mallory").is_err());
}

#[tokio::test]
async fn dev_issuer_keeps_its_key_across_restarts() {
    init();
    let dir = tempfile::tempdir().expect("temp dir");
    let first = DevIssuer::load_or_create(dir.path(), "http://127.0.0.1:1/dev/oidc", AUDIENCE)
        .expect("first start");
    let (_, second) = serve_dev_issuer(dir.path()).await;
    let token = first.mint("erin").expect("mint");
    // Same key, different issuer URL: the signature verifies but the issuer does not match.
    let auth = Authenticator::new(second.auth_config()).expect("configuration");
    let err = refused(&auth, &bearer(&token)).await;
    assert!(matches!(err, AuthError::WrongIssuer { .. }), "{err:?}");

    let erin = auth
        .authenticate(&bearer(&second.mint("erin").expect("mint")))
        .await
        .expect("accepted");
    assert_eq!(erin.groups, ["auditors"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let key_file = std::fs::read_dir(dir.path())
            .expect("dir")
            .next()
            .expect("the key file")
            .expect("entry");
        assert_eq!(
            key_file.metadata().expect("metadata").permissions().mode() & 0o777,
            0o600
        );
    }
}
