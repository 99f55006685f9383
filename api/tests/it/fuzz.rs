//! Property-based fuzzing (proptest, bounded cases so CI stays fast) of every decoder an
//! attacker reaches before authorization: REST bodies of every request type, the bearer
//! token path, the policy input builder and the page-token decoder. Nothing panics; nothing
//! malformed is accepted; and against a running server, refused input changes nothing.

use std::sync::Arc;

use axum::body::Bytes;
use jitsudo_actors::domain::RequestSpec;
use jitsudo_actors::policy::{PolicyInput, PolicySet, dev_example_policies};
use jitsudo_api::auth::{AuthConfig, Authenticator};
use jitsudo_api::rest::body;
use jitsudo_api::state::{open_token, sign_token};
use jitsudo_proto::v1;
use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use reqwest::Method;

use crate::harness::*;

/// Field names of the API, so that generated JSON hits the real decoders' paths.
const FIELDS: &[&str] = &[
    "id",
    "provider",
    "role",
    "scope",
    "durationSeconds",
    "reason",
    "ticket",
    "breakGlass",
    "metadata",
    "idempotencyKey",
    "comment",
    "bySeconds",
    "number",
    "name",
    "rego",
    "inputJson",
    "subject",
    "trustTier",
    "states",
    "pageSize",
    "pageToken",
    "afterVersion",
    "mine",
];

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,40}".prop_map(serde_json::Value::from),
        "-?[0-9]{1,25}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(FIELDS).prop_map(str::to_owned),
                    ".{0,12}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `n` cases, or `PROPTEST_CASES` when set (to run longer than CI does).
fn cases(n: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n)
}

fn decode_all(bytes: &Bytes) {
    let _ = body::<v1::CreateRequestRequest>(bytes);
    let _ = body::<v1::DecideRequest>(bytes);
    let _ = body::<v1::DenyRequestRequest>(bytes);
    let _ = body::<v1::CancelRequestRequest>(bytes);
    let _ = body::<v1::RevokeRequestRequest>(bytes);
    let _ = body::<v1::ExtendRequestRequest>(bytes);
    let _ = body::<v1::DecideExtensionRequest>(bytes);
    let _ = body::<v1::GetCredentialsRequest>(bytes);
    let _ = body::<v1::ListRequestsRequest>(bytes);
    let _ = body::<v1::WatchRequestRequest>(bytes);
    let _ = body::<v1::ApplyPolicyRequest>(bytes);
    let _ = body::<v1::EvalPolicyRequest>(bytes);
    let _ = body::<v1::SetTrustTierRequest>(bytes);
    let _ = body::<v1::QueryAuditRequest>(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn rest_bodies_of_every_request_type_never_panic(raw in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&Bytes::from(raw));
    }

    #[test]
    fn rest_json_with_api_field_names_never_panics(v in json_value()) {
        decode_all(&Bytes::from(v.to_string()));
    }

    #[test]
    fn page_tokens_that_were_not_signed_are_refused(token in ".{0,600}", scope in ".{0,40}") {
        let key = [7u8; 32];
        prop_assert!(open_token(&key, &scope, &token).is_err());
    }

    #[test]
    fn a_signed_page_token_opens_only_unchanged_and_for_its_scope(
        payload in ".{0,100}",
        scope in "[a-z|]{1,30}",
        flip in 0usize..400,
    ) {
        let key = [9u8; 32];
        let token = sign_token(&key, &scope, &payload);
        prop_assert_eq!(open_token(&key, &scope, &token).ok(), Some(payload.clone()));
        let other_scope = format!("{}x", scope);
        prop_assert!(open_token(&key, &other_scope, &token).is_err());
        let mut bytes = token.clone().into_bytes();
        let i = flip % bytes.len();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).expect("ASCII");
        if tampered != token {
            prop_assert!(open_token(&key, &scope, &tampered).is_err());
        }
    }

    #[test]
    fn policy_inputs_from_any_json_never_panic_the_example_policies(v in json_value(), s in ".{0,300}") {
        let set = example_set();
        for text in [v.to_string(), s] {
            if let Ok(input) = serde_json::from_str::<PolicyInput>(&text) {
                let _ = set.evaluate(&input);
                let _ = set.approver_allowed(&input);
            }
        }
    }

    #[test]
    fn request_specs_of_any_content_build_policy_inputs(
        provider in ".{0,50}", role in ".{0,50}", scope in ".{0,50}",
        duration in any::<i64>(), reason in ".{0,80}", break_glass in any::<bool>(),
        meta in prop::collection::btree_map(".{0,10}", ".{0,20}", 0..4),
    ) {
        let spec = RequestSpec {
            provider, role, scope, duration_seconds: duration, reason,
            ticket: None, break_glass, metadata: meta,
        };
        let input = spec.policy_input();
        let _ = serde_json::to_string(&input);
    }
}

fn example_set() -> Arc<PolicySet> {
    static SET: std::sync::OnceLock<Arc<PolicySet>> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        Arc::new(PolicySet::compile(dev_example_policies()).expect("the example policies compile"))
    })
    .clone()
}

/// Bearer tokens: anything at all, and well-formed JWT shapes with random headers, claims
/// and signatures. Every one is refused; none panics. (The issuer is unreachable: a token
/// that gets as far as needing keys is refused as UNAVAILABLE, never accepted.)
#[test]
fn bearer_tokens_of_any_shape_are_refused_without_panicking() {
    init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut cfg = AuthConfig::new("http://127.0.0.1:1/issuer", "jitsudo");
    cfg.http_timeout = std::time::Duration::from_millis(200);
    cfg.jwks_min_refresh_interval = std::time::Duration::from_secs(3600);
    let auth = Authenticator::new(cfg).expect("a valid configuration");
    let b64 = |v: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(128),
        ..ProptestConfig::default()
    });
    let strategy = (
        ".{0,200}",
        json_value(),
        json_value(),
        prop::collection::vec(any::<u8>(), 0..80),
        prop::sample::select(vec![
            "RS256", "ES256", "EdDSA", "none", "HS256", "PS512", "", "rs256",
        ]),
        prop::option::of(prop::sample::select(vec![
            "at+jwt",
            "JWT",
            "id+jwt",
            "application/at+jwt",
        ])),
    );
    runner
        .run(&strategy, |(raw, header_extra, claims, sig, alg, typ)| {
            let mut header = serde_json::json!({"alg": alg, "kid": "k1"});
            if let Some(t) = typ {
                header["typ"] = t.into();
            }
            if let (Some(h), serde_json::Value::Object(extra)) =
                (header.as_object_mut(), header_extra)
            {
                h.extend(extra);
            }
            let shaped = format!(
                "{}.{}.{}",
                b64(header.to_string().as_bytes()),
                b64(claims.to_string().as_bytes()),
                b64(&sig)
            );
            for token in [raw, shaped] {
                let res = rt.block_on(auth.authenticate(&format!("Bearer {token}")));
                prop_assert!(res.is_err(), "accepted {token:?}");
            }
            Ok(())
        })
        .expect("no token is accepted and none panics");
}

/// Against a running server: random bodies on every mutating REST route are refused with a
/// 4xx (never a 5xx, never a hang), and the audit log — every change — is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bodies_against_the_server_change_nothing() {
    let j = Jitsudo::start().await;
    let r = j.create("alice", "demo", "operator", 600).await;
    let before = j.audit_without_denials().await;
    let routes = [
        (Method::POST, "/api/v1/requests".to_owned()),
        (Method::POST, format!("/api/v1/requests/{}/approve", r.id)),
        (Method::POST, format!("/api/v1/requests/{}/deny", r.id)),
        (Method::POST, format!("/api/v1/requests/{}/extend", r.id)),
        (Method::POST, "/api/v1/policy-eval".to_owned()),
        (Method::PUT, "/api/v1/principals/dave/trust-tier".to_owned()),
    ];
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = json_value();
    let bodies: Vec<serde_json::Value> = (0..48)
        .map(|_| {
            strategy
                .new_tree(&mut runner)
                .expect("generate a body")
                .current()
        })
        .collect();
    let rest = j.rest("mallory");
    for (i, v) in bodies.into_iter().enumerate() {
        let (method, path) = &routes[i % routes.len()];
        let raw = if i % 3 == 0 {
            v.to_string().into_bytes().into_iter().rev().collect()
        } else {
            v.to_string().into_bytes()
        };
        let (status, answer) = rest.send_raw(method.clone(), path, raw).await;
        assert!(
            status.is_client_error(),
            "{method} {path}: {status} {answer}"
        );
    }
    assert_eq!(j.audit_without_denials().await, before, "nothing changed");
    j.stop().await.expect("clean stop");
}
