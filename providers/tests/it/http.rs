//! The http provider against its reference server: how every kind of answer (or its
//! absence) maps to a `ProviderError`, what the server saw, and that nothing secret leaks.

use std::time::Duration;

use jitsudo_providers::conformance::SpecTemplate;
use jitsudo_providers::http::server::{FailureKind, Outcome};
use jitsudo_providers::http::{HttpProvider, HttpProviderConfig, Op};
use jitsudo_providers::{ErrorClass, GrantRecord, GrantSpec, GrantState, Provider, ProviderError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{self, SECRET, http_pair};

fn spec() -> GrantSpec {
    SpecTemplate::default().spec(Duration::from_secs(3600))
}

#[tokio::test]
async fn server_unavailable_is_retryable_and_grants_nothing() {
    let (server, provider) = http_pair().await;
    let spec = spec();
    server.fail_next(Op::Grant, 1, FailureKind::Status(503));

    let err = provider.grant(&spec).await.expect_err("injected 503");
    assert!(matches!(err, ProviderError::Unavailable { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Retryable);
    assert!(server.active_grants().is_empty());

    let record = provider.grant(&spec).await.expect("retry after the outage");
    assert_eq!(server.active_grants(), vec![record]);
    assert_eq!(server.count(Op::Grant, spec.grant_id), 2);
}

#[tokio::test]
async fn throttling_is_retryable_with_the_servers_retry_after() {
    let (server, provider) = http_pair().await;
    server.fail_next(Op::Grant, 1, FailureKind::Status(429));

    let err = provider.grant(&spec()).await.expect_err("injected 429");
    match &err {
        ProviderError::Throttled { retry_after, .. } => {
            assert_eq!(*retry_after, Some(Duration::from_secs(1)))
        }
        other => panic!("expected Throttled, got {other}"),
    }
    assert_eq!(err.class(), ErrorClass::Retryable);
    assert!(server.active_grants().is_empty());
}

#[tokio::test]
async fn forbidden_is_permanent_and_passes_on_the_integrations_reason() {
    let (server, provider) = http_pair().await;
    server.fail_next(
        Op::Grant,
        1,
        FailureKind::Respond {
            status: 403,
            body: r#"{"error":"forbidden","message":"org policy forbids this role"}"#.to_owned(),
        },
    );

    let err = provider.grant(&spec()).await.expect_err("injected 403");
    assert!(matches!(err, ProviderError::Forbidden { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert!(
        err.to_string().contains("org policy forbids this role"),
        "{err}"
    );
    assert!(server.active_grants().is_empty());
}

#[tokio::test]
async fn plain_403_is_forbidden() {
    let (server, provider) = http_pair().await;
    server.fail_next(Op::Revoke, 1, FailureKind::Status(403));
    let err = provider
        .revoke(&GrantRecord::from_spec(&spec()))
        .await
        .expect_err("injected 403");
    assert!(matches!(err, ProviderError::Forbidden { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent);
}

#[tokio::test]
async fn client_timeout_is_an_unknown_outcome_and_a_retry_returns_the_same_grant() {
    support::init();
    let (server, _) = http_pair().await;
    let timeout = Duration::from_millis(200);
    let provider = support::provider(support::config(&server.base_url()).with_timeout(timeout));
    let spec = spec();
    // The server applies the grant, then holds its answer far beyond the client's patience.
    server.fail_next(Op::Grant, 1, FailureKind::Delay(Duration::from_secs(60)));

    let err = provider
        .grant(&spec)
        .await
        .expect_err("the answer is held back");
    assert!(
        matches!(err, ProviderError::Timeout { after, .. } if after == timeout),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::Unknown);
    assert!(err.is_retryable());
    // On a loaded machine the client may give up before its call even reaches the server;
    // either way an idempotent retry must leave exactly one grant behind.
    let record = provider.grant(&spec).await.expect("idempotent retry");
    assert_eq!(server.active_grants(), vec![record]);
    assert_eq!(server.count_outcome(Op::Grant, Outcome::Granted), 1);
    let events = server.events();
    let timed_out = events.iter().find(|e| e.fault.is_some());
    if let Some(timed_out) = timed_out {
        assert_eq!(
            timed_out.outcome,
            Outcome::Granted,
            "the timed-out call took effect"
        );
        assert_eq!(
            events.last().map(|e| e.outcome),
            Some(Outcome::AlreadyGranted)
        );
    }
}

#[tokio::test]
async fn failure_reported_after_the_effect_is_repaired_by_an_idempotent_retry() {
    let (server, provider) = http_pair().await;
    let spec = spec();
    server.fail_next(Op::Grant, 1, FailureKind::StatusAfterEffect(500));

    let err = provider
        .grant(&spec)
        .await
        .expect_err("500 after the effect");
    assert_eq!(err.class(), ErrorClass::Retryable, "{err}");
    assert!(server.is_active(spec.grant_id));

    let record = provider.grant(&spec).await.expect("retry");
    assert_eq!(server.active_grants(), vec![record]);
    assert_eq!(server.count_outcome(Op::Grant, Outcome::Granted), 1);
}

#[tokio::test]
async fn gateway_timeout_is_an_unknown_outcome() {
    let (server, provider) = http_pair().await;
    server.fail_next(Op::Revoke, 1, FailureKind::Status(504));
    let err = provider
        .revoke(&GrantRecord::from_spec(&spec()))
        .await
        .expect_err("injected 504");
    assert!(matches!(err, ProviderError::Unknown { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Unknown);
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    support::init();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let provider = support::provider(support::config(&format!("http://{addr}")));

    let err = provider.grant(&spec()).await.expect_err("nobody listens");
    assert!(matches!(err, ProviderError::Unavailable { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Retryable);
}

/// Accepts one connection, reads one whole request, and returns its head and body.
async fn read_request(socket: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = socket.read(&mut chunk).await.expect("read request");
        assert!(n > 0, "client closed before sending a whole request");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + length {
            return (
                String::from_utf8_lossy(&buf[..end]).into_owned(),
                buf[end + 4..end + 4 + length].to_vec(),
            );
        }
    }
}

#[tokio::test]
async fn connection_dropped_after_sending_is_an_unknown_outcome() {
    support::init();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let provider = support::provider(support::config(&format!(
        "http://{}",
        listener.local_addr().expect("addr")
    )));
    let peer = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        read_request(&mut socket).await;
        // Dropping the socket closes the connection without an answer.
    });

    let err = provider.grant(&spec()).await.expect_err("no answer");
    peer.await.expect("peer saw the whole request");
    assert!(matches!(err, ProviderError::Unknown { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Unknown);
}

#[tokio::test]
async fn every_call_is_signed_and_carries_the_grant_id_as_idempotency_key() {
    support::init();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let provider = support::provider(support::config(&format!(
        "http://{}/hooks/jit",
        listener.local_addr().expect("addr")
    )));
    let peer = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let request = read_request(&mut socket).await;
        let answer = "{\"state\":\"active\"}";
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
            answer.len()
        );
        socket.write_all(response.as_bytes()).await.expect("answer");
        request
    });
    let record = GrantRecord::from_spec(&spec());

    assert_eq!(
        provider.inspect(&record).await.expect("inspect"),
        GrantState::Active
    );
    let (head, body) = peer.await.expect("peer");
    assert!(
        head.starts_with("POST /hooks/jit/inspect HTTP/1.1"),
        "{head}"
    );
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no {name} header in {head}"))
    };
    assert_eq!(header("idempotency-key"), record.grant_id.to_string());
    assert_eq!(header("content-type"), "application/json");
    let signature = header("x-jitsudo-signature");
    jitsudo_providers::http::verify_signature(
        SECRET.as_bytes(),
        &signature,
        &body,
        chrono::Utc::now(),
    )
    .expect("the signature covers the exact body sent");
    let sent: GrantRecord = serde_json::from_slice(&body).expect("body is the grant record");
    assert_eq!(sent, record);
}

#[tokio::test]
async fn wrong_secret_is_refused_by_the_server_and_reported_as_a_signature_problem() {
    support::init();
    let (server, _) = http_pair().await;
    let provider = support::provider(HttpProviderConfig::new(
        "fake-cloud",
        server.base_url(),
        "not-the-secret",
    ));
    let spec = spec();

    let err = provider.grant(&spec).await.expect_err("bad signature");
    assert!(matches!(err, ProviderError::Forbidden { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert!(err.to_string().contains("signature"), "{err}");
    assert!(server.active_grants().is_empty());
    let events = server.events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].op, events[0].outcome, events[0].status),
        (Op::Grant, Outcome::BadSignature, 401)
    );
}

#[tokio::test]
async fn invalid_role_names_the_field_and_is_permanent() {
    let (server, provider) = http_pair().await;
    let spec = SpecTemplate::default().invalid_spec();

    let err = provider.grant(&spec).await.expect_err("invalid role");
    match &err {
        ProviderError::Invalid { field, reason, .. } => {
            assert_eq!(*field, "role");
            assert!(reason.contains("does not exist"), "{reason}");
        }
        other => panic!("expected Invalid, got {other}"),
    }
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(server.count_outcome(Op::Grant, Outcome::Invalid), 1);
    assert!(server.active_grants().is_empty());
}

#[tokio::test]
async fn empty_scope_is_invalid_at_validate() {
    let (server, provider) = http_pair().await;
    let spec = GrantSpec {
        scope: String::new(),
        ..spec()
    };
    let err = provider.validate(&spec).await.expect_err("empty scope");
    assert!(
        matches!(err, ProviderError::Invalid { field: "scope", .. }),
        "{err}"
    );
    assert_eq!(server.count_outcome(Op::Validate, Outcome::Invalid), 1);
}

#[tokio::test]
async fn wrong_base_path_is_a_permanent_error() {
    support::init();
    let (server, _) = http_pair().await;
    let provider = support::provider(support::config(&format!(
        "{}/no-such-prefix",
        server.base_url()
    )));
    let err = provider.grant(&spec()).await.expect_err("404");
    assert!(matches!(err, ProviderError::Invalid { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert!(server.events().is_empty(), "no operation was reached");
}

#[tokio::test]
async fn grant_id_reused_for_a_different_grant_is_refused() {
    let (server, provider) = http_pair().await;
    let spec = spec();
    let record = provider.grant(&spec).await.expect("grant");
    let other = GrantSpec {
        role: "admin".to_owned(),
        ..spec.clone()
    };

    let err = provider
        .grant(&other)
        .await
        .expect_err("different grant, same id");
    assert!(
        matches!(
            err,
            ProviderError::Invalid {
                field: "grant_id",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(server.active_grants(), vec![record]);
    assert_eq!(server.count_outcome(Op::Grant, Outcome::Conflict), 1);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (server, provider) = http_pair().await;
    server.fail_next(
        Op::Grant,
        1,
        FailureKind::Respond {
            status: 307,
            body: String::new(),
        },
    );
    let spec = spec();
    let err = provider.grant(&spec).await.expect_err("redirect");
    assert!(
        matches!(
            err,
            ProviderError::Invalid {
                field: "base_url",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        server.count(Op::Grant, spec.grant_id),
        1,
        "the redirect was not followed into a second call"
    );
    assert!(server.active_grants().is_empty());
}

#[tokio::test]
async fn unreadable_grant_answer_is_an_unknown_outcome() {
    let (server, provider) = http_pair().await;
    server.fail_next(
        Op::Grant,
        1,
        FailureKind::Respond {
            status: 200,
            body: "<html>ok</html>".to_owned(),
        },
    );
    let err = provider.grant(&spec()).await.expect_err("not JSON");
    assert!(matches!(err, ProviderError::Unknown { .. }), "{err}");
    assert!(!err.to_string().contains("html"), "{err}");
}

#[tokio::test]
async fn credentials_answers_are_never_echoed_into_errors() {
    let (server, provider) = http_pair().await;
    let record = provider.grant(&spec()).await.expect("grant");
    let leak = "AKIA-LEAKED-TOKEN-VALUE";
    let answers = [
        (200, format!(r#"{{"env":"{leak}"}}"#)),
        (200, format!(r#"{{"env":{{"TOKEN":"{leak}"}}}}"#)),
        (
            422,
            format!(r#"{{"error":"invalid","field":"role","message":"{leak}"}}"#),
        ),
        (
            403,
            format!(r#"{{"error":"forbidden","message":"{leak}"}}"#),
        ),
        (500, leak.to_owned()),
        (418, leak.to_owned()),
    ];
    for (status, body) in answers {
        server.fail_next(Op::Credentials, 1, FailureKind::Respond { status, body });
        let err = provider
            .credentials(&record)
            .await
            .expect_err("malformed or refused");
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains(leak), "HTTP {status} leaked into {shown}");
        }
    }
}

#[tokio::test]
async fn secret_never_appears_in_debug_or_errors() {
    let (server, provider) = http_pair().await;
    let config = support::config(&server.base_url());
    let hex_secret = hex::encode(SECRET);
    let mut shown = vec![format!("{config:?}"), format!("{provider:?}")];
    for kind in [
        FailureKind::Status(400),
        FailureKind::Status(401),
        FailureKind::Status(403),
        FailureKind::Status(409),
        FailureKind::Status(429),
        FailureKind::Status(503),
        FailureKind::Respond {
            status: 200,
            body: "garbage".to_owned(),
        },
    ] {
        server.fail_next(Op::Grant, 1, kind);
        let err = provider.grant(&spec()).await.expect_err("injected");
        shown.extend([err.to_string(), format!("{err:?}")]);
    }
    let wrong = support::provider(HttpProviderConfig::new(
        "fake-cloud",
        server.base_url(),
        "other",
    ));
    let err = wrong.grant(&spec()).await.expect_err("bad signature");
    shown.extend([err.to_string(), format!("{err:?}")]);
    for text in shown {
        assert!(
            !text.contains(SECRET) && !text.contains(&hex_secret),
            "secret shown in {text}"
        );
    }
}

#[tokio::test]
async fn config_is_checked_when_the_provider_is_built() {
    support::init();
    let base = HttpProviderConfig::new("fake-cloud", "https://integration.example.com/jit", SECRET);
    assert!(HttpProvider::new(base.clone()).is_ok());
    let cases = [
        (
            HttpProviderConfig {
                name: " ".to_owned(),
                ..base.clone()
            },
            "name",
        ),
        (
            HttpProviderConfig {
                secret: Vec::new(),
                ..base.clone()
            },
            "secret",
        ),
        (
            HttpProviderConfig {
                timeout: Duration::ZERO,
                ..base.clone()
            },
            "timeout",
        ),
        (
            HttpProviderConfig {
                base_url: "not a url".to_owned(),
                ..base.clone()
            },
            "base_url",
        ),
        (
            HttpProviderConfig {
                base_url: "ftp://example.com".to_owned(),
                ..base.clone()
            },
            "base_url",
        ),
        (
            HttpProviderConfig {
                base_url: "http://integration.example.com".to_owned(),
                ..base.clone()
            },
            "base_url",
        ),
        (
            HttpProviderConfig {
                base_url: "https://user:pw@example.com".to_owned(),
                ..base.clone()
            },
            "base_url",
        ),
        (
            HttpProviderConfig {
                base_url: "https://example.com/?a=1".to_owned(),
                ..base.clone()
            },
            "base_url",
        ),
    ];
    for (config, expected) in cases {
        let shown = format!("{config:?}");
        match HttpProvider::new(config) {
            Err(ProviderError::Invalid { field, .. }) => assert_eq!(field, expected, "{shown}"),
            Err(e) => panic!("{shown}: expected Invalid, got {e}"),
            Ok(_) => panic!("{shown} was accepted"),
        }
    }
    for loopback in [
        "http://127.0.0.1:9",
        "http://[::1]:9",
        "http://localhost:9/x/",
    ] {
        let config = HttpProviderConfig {
            base_url: loopback.to_owned(),
            ..base.clone()
        };
        assert!(HttpProvider::new(config).is_ok(), "{loopback}");
    }
}
