//! The transport as an attacker meets it: mutual TLS (`require`: no handler is reached
//! without a certificate of the configured CA), client certificates that authenticate bots
//! on gRPC and REST alike, plaintext to the TLS port, and configurations that would
//! silently weaken client authentication.

use std::path::PathBuf;

use jitsudo_api::config::ClientPrincipal;
use jitsudo_api::server::Server;
use jitsudo_proto::v1;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::harness::{Jitsudo, St, init, ok, refused};

struct Pem {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Pem {
    fn read(cert: PathBuf, key: PathBuf) -> Pem {
        Pem {
            cert: std::fs::read(cert).expect("client certificate"),
            key: std::fs::read(key).expect("client key"),
        }
    }

    fn identity(&self) -> Option<(&[u8], &[u8])> {
        Some((&self.cert, &self.key))
    }
}

/// The harness's client certificate (SAN `client`, signed by the server's CA).
fn our_client(j: &Jitsudo) -> Pem {
    let dir = j
        .config
        .server
        .tls_cert
        .as_ref()
        .and_then(|p| p.parent())
        .expect("the certificate dir")
        .to_path_buf();
    Pem::read(dir.join("client.pem"), dir.join("client-key.pem"))
}

/// A well-formed client certificate from another CA, with the same SAN.
fn foreign_client() -> (tempfile::TempDir, Pem) {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = jitsudo_api::certs::generate(dir.path(), &["localhost".to_owned()], "client")
        .expect("foreign certificates");
    let pem = Pem::read(files.client_cert, files.client_key);
    (dir, pem)
}

async fn with_client_auth(mode: &str, principals: Vec<ClientPrincipal>) -> Jitsudo {
    let mode = mode.to_owned();
    Jitsudo::start_with(move |c| {
        let ca = c
            .server
            .tls_cert
            .as_ref()
            .map(|p| p.with_file_name("ca.pem"));
        c.server.client_ca = ca;
        c.server.client_auth = mode;
        c.server.client_principals = principals;
    })
    .await
}

fn deploy_bot() -> ClientPrincipal {
    ClientPrincipal {
        san: "client".into(),
        subject: "bot:deployer".into(),
        groups: vec!["engineering".into()],
    }
}

#[tokio::test]
async fn with_mtls_required_no_handler_is_reached_without_a_certificate_of_our_ca() {
    let j = with_client_auth("require", vec![]).await;
    let before = j.audit_log().await;
    let token = format!("Bearer {}", j.token("alice"));
    let create = v1::CreateRequestRequest {
        provider: "demo".into(),
        role: "viewer".into(),
        scope: "demo-account".into(),
        duration_seconds: 600,
        reason: "through the front door".into(),
        idempotency_key: "mtls-1".into(),
        ..Default::default()
    };

    // No certificate, then a certificate of another CA: the handshake fails on both front
    // ends, whatever the token.
    let (_foreign_dir, foreign) = foreign_client();
    for identity in [None, foreign.identity()] {
        let mut g = j.grpc_with_identity(Some(&token), identity);
        let err = g
            .requests
            .create_request(create.clone())
            .await
            .expect_err("refused in the handshake");
        assert!(
            matches!(err.code(), tonic::Code::Unavailable | tonic::Code::Unknown),
            "{err:?}"
        );
        let rest = j.rest_with_identity(Some(&token), identity);
        let (status, body) = rest
            .try_post("/api/v1/requests", serde_json::json!({"provider": "demo"}))
            .await;
        assert_eq!(status, None, "no HTTP answer at all: {body}");
    }
    assert_eq!(j.audit_log().await.len(), before.len(), "nothing happened");

    // Our CA's certificate with a token: served.
    let ours = our_client(&j);
    let mut g = j.grpc_with_identity(Some(&token), ours.identity());
    let r = ok(g.requests.create_request(create).await);
    assert_eq!(
        r.requester, "alice",
        "the token, not the certificate, decides"
    );
    let rest = j.rest_with_identity(Some(&token), ours.identity());
    let (status, me) = rest.get("/api/v1/whoami").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["subject"], "alice");
}

#[tokio::test]
async fn a_mapped_client_certificate_authenticates_a_bot_on_grpc_and_rest() {
    let j = with_client_auth("optional", vec![deploy_bot()]).await;
    let ours = our_client(&j);

    let mut g = j.grpc_with_identity(None, ours.identity());
    let me = ok(g.principals.who_am_i(v1::WhoAmIRequest {}).await);
    assert_eq!(me.subject, "bot:deployer");
    assert_eq!(me.groups, vec!["engineering".to_owned()]);
    assert!(!me.email_verified);
    let req = ok(g
        .requests
        .create_request(v1::CreateRequestRequest {
            provider: "demo".into(),
            role: "viewer".into(),
            scope: "demo-account".into(),
            duration_seconds: 600,
            reason: "nightly deploy".into(),
            idempotency_key: "bot-1".into(),
            ..Default::default()
        })
        .await);
    assert_eq!(req.requester, "bot:deployer");
    j.wait_state(&req.id, St::Active).await;

    let rest = j.rest_with_identity(None, ours.identity());
    let (status, me) = rest.get("/api/v1/whoami").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["subject"], "bot:deployer");

    // optional: without a certificate or a token nobody is authenticated.
    let mut anonymous = j.grpc_with_identity(None, None);
    refused(
        anonymous.principals.who_am_i(v1::WhoAmIRequest {}).await,
        tonic::Code::Unauthenticated,
    );
    // A certificate of another CA never maps to the bot.
    let (_foreign_dir, foreign) = foreign_client();
    let mut g = j.grpc_with_identity(None, foreign.identity());
    assert!(g.principals.who_am_i(v1::WhoAmIRequest {}).await.is_err());
}

#[tokio::test]
async fn a_bot_certificate_mapped_to_the_requester_cannot_approve_her_request() {
    // alice's workstation certificate authenticates as alice herself.
    let j = with_client_auth(
        "optional",
        vec![ClientPrincipal {
            san: "client".into(),
            subject: "alice".into(),
            groups: vec!["approvers".into()],
        }],
    )
    .await;
    let mut alice = j.grpc("alice");
    let r = ok(alice
        .requests
        .create_request(v1::CreateRequestRequest {
            provider: "cloud".into(),
            role: "operator".into(),
            scope: "acct-1".into(),
            duration_seconds: 600,
            reason: "deploy".into(),
            idempotency_key: "self-1".into(),
            ..Default::default()
        })
        .await);
    let before = j.audit_without_denials().await;
    let ours = our_client(&j);
    let mut cert = j.grpc_with_identity(None, ours.identity());
    let msg = refused(
        cert.requests
            .approve_request(v1::DecideRequest {
                id: r.id.clone(),
                comment: "me again".into(),
            })
            .await,
        tonic::Code::PermissionDenied,
    );
    assert!(msg.contains("own request"), "{msg}");
    assert_eq!(
        j.stored(&r.id).await.state,
        jitsudo_actors::domain::State::Pending
    );
    assert_eq!(j.audit_without_denials().await.len(), before.len());
}

#[tokio::test]
async fn plaintext_to_the_tls_port_gets_no_http_answer() {
    let j = Jitsudo::start().await;
    let mut tcp = tokio::net::TcpStream::connect(j.addr)
        .await
        .expect("connect");
    tcp.write_all(b"GET /api/v1/whoami HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tcp.read_to_end(&mut answer),
    )
    .await
    .expect("the server closes the connection");
    assert!(
        !answer.starts_with(b"HTTP/"),
        "a TLS port never answers plaintext HTTP: {:?}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn configurations_that_would_silently_drop_client_authentication_are_refused() {
    init();
    let db = jitsudo_testkit::postgres().await;
    let mut config = jitsudo_api::config::Config::default();
    config.database.url = db.url.clone();
    config.server.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.server.insecure_plaintext = true;
    config.auth.issuer = "http://127.0.0.1:1/issuer".into();
    config.server.client_auth = "require".into();
    let err = Server::build(config.clone(), None)
        .await
        .err()
        .expect("require without TLS is refused");
    assert!(err.to_string().contains("needs TLS"), "{err}");

    config.server.client_auth = "off".into();
    config.server.client_principals = vec![deploy_bot()];
    let err = Server::build(config, None)
        .await
        .err()
        .expect("bots without client authentication are refused");
    assert!(err.to_string().contains("client_auth is off"), "{err}");
}
