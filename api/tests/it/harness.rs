//! One in-process jitsudod per test, as a client sees it: TLS on 127.0.0.1:0 with its own CA,
//! a private PostgreSQL database, its own OpenID issuer (the dev issuer on another ephemeral
//! port), the demo provider and the http provider's reference server as a fake cloud.
//! Clients are the generated gRPC clients and reqwest, each carrying one user's token.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use jitsudo_actors::domain::RequestId;
use jitsudo_actors::store::{AuditEvent, AuditQuery};
use jitsudo_api::auth::DevIssuer;
use jitsudo_api::config::{Config, ProviderConfig};
use jitsudo_api::server::Server;
use jitsudo_api::state::AppState;
use jitsudo_proto::v1;
use jitsudo_proto::v1::admin_service_client::AdminServiceClient;
use jitsudo_proto::v1::audit_service_client::AuditServiceClient;
use jitsudo_proto::v1::policy_service_client::PolicyServiceClient;
use jitsudo_proto::v1::principal_service_client::PrincipalServiceClient;
use jitsudo_proto::v1::request_service_client::RequestServiceClient;
use jitsudo_providers::http::server::TestServer;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Status};

pub use v1::RequestState as St;

const AUDIENCE: &str = "jitsudo";
const CLOUD_SECRET: &str = "api-it-fake-cloud-secret";
/// The key file the dev issuer loads from its directory (written by the harness first, so
/// that it can also sign tokens for people who are not dev users).
const ISSUER_KEY_FILE: &str = "dev-oidc-signing-key.pem";

/// Who may ask for what in these tests: engineering asks, `viewer` is open to everyone and
/// approved by policy, everything else needs `approvers` (two of them for admin roles), and
/// on-call engineers may use break-glass.
pub const ELIGIBILITY: &str = r#"
package jitsudo.eligibility

allow if "engineering" in input.requester.groups

allow if input.request.role == "viewer"

allow if {
	input.request.break_glass
	"oncall" in input.requester.groups
}
"#;

pub const APPROVAL: &str = r#"
package jitsudo.approval

admin_role if contains(input.request.role, "admin")

auto_approve if {
	input.request.role == "viewer"
	not input.request.break_glass
}

approver_groups := {"approvers"}

default approvals_required := 1

approvals_required := 2 if admin_role

max_duration_seconds := 7200

max_total_duration_seconds := 14400

default extend_requires_approval := true

extend_requires_approval := false if input.request.role == "viewer"

break_glass_allowed if "oncall" in input.requester.groups
"#;

/// People beyond the dev issuer's users: `(subject, email, email_verified, groups)`.
const EXTRA_PEOPLE: &[(&str, &str, bool, &[&str])] = &[
    // An ordinary engineer: neither approver, auditor nor admin.
    ("mallory", "mallory@example.com", true, &["engineering"]),
    ("oscar", "oscar@example.com", true, &["oncall"]),
    // bob under a second subject, with his verified email: the same person.
    ("bob-alt", "bob@example.com", true, &["approvers"]),
];

pub fn init() {
    jitsudo_testkit::init_crypto();
    // Everything this process logs (jitsudo's own crates at trace, the rest at info) is
    // kept so that the secret-hygiene test can search it.
    let _ = tracing_subscriber::fmt()
        .with_writer(|| LogSink)
        .with_ansi(false)
        .with_env_filter("info,jitsudo_api=trace,jitsudo_actors=trace,jitsudo_providers=trace")
        .try_init();
}

static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// Everything logged so far in this test process.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: the oldest half goes when it grows past 256 MiB.
        if logs.len() > 256 << 20 {
            let half = logs.len() / 2;
            logs.drain(..half);
        }
        logs.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Signs access tokens for the test issuer's key.
struct Tokens {
    issuer: Arc<DevIssuer>,
    key: EncodingKey,
    kid: String,
    iss: String,
}

impl Tokens {
    fn mint(&self, user: &str) -> String {
        if let Some((sub, email, verified, groups)) =
            EXTRA_PEOPLE.iter().find(|(sub, ..)| *sub == user)
        {
            return self.sign(sub, Some(email), *verified, groups);
        }
        self.issuer
            .mint(user)
            .unwrap_or_else(|e| panic!("the dev issuer mints for {user}: {e}"))
    }

    fn sign(&self, sub: &str, email: Option<&str>, verified: bool, groups: &[&str]) -> String {
        self.sign_for(sub, email, verified, groups, 3600)
    }

    fn sign_for(
        &self,
        sub: &str,
        email: Option<&str>,
        verified: bool,
        groups: &[&str],
        lifetime_seconds: i64,
    ) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "iss": self.iss,
            "aud": AUDIENCE,
            "sub": sub,
            "email": email,
            "email_verified": verified,
            "groups": groups,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime_seconds,
        });
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("at+jwt".into());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).expect("sign a test token")
    }
}

/// Adds `authorization: Bearer …` (or nothing) to every gRPC call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// Every jitsudo.v1 service, as one user.
#[derive(Clone)]
pub struct Grpc {
    pub requests: RequestServiceClient<Authed>,
    pub policies: PolicyServiceClient<Authed>,
    pub audit: AuditServiceClient<Authed>,
    pub principals: PrincipalServiceClient<Authed>,
    pub admin: AdminServiceClient<Authed>,
}

/// REST/JSON as one user.
#[derive(Clone)]
pub struct Rest {
    http: reqwest::Client,
    base: String,
    authorization: Option<String>,
}

impl Rest {
    /// Calls `path` and answers the status and the JSON body (`Value::String` for text).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(a) = &self.authorization {
            req = req.header("authorization", a);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("the REST call reaches the server");
        let status = resp.status();
        let text = resp.text().await.expect("a readable body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// As `post`, but a connection that fails answers `None` (and the error) instead of
    /// panicking: for calls the transport must refuse.
    pub async fn try_post(&self, path: &str, body: Value) -> (Option<StatusCode>, String) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(a) = &self.authorization {
            req = req.header("authorization", a);
        }
        match req.send().await {
            Ok(resp) => (Some(resp.status()), resp.text().await.unwrap_or_default()),
            Err(e) => (None, e.to_string()),
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }

    /// A raw body with a content type (for oversized and malformed bodies).
    pub async fn send_raw(&self, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(a) = &self.authorization {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.expect("the REST call reaches the server");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

/// Asserts a REST error: the status and `{"error": {"code", "message"}}`; answers the message.
#[track_caller]
pub fn rest_error(resp: &(StatusCode, Value), status: StatusCode, code: &str) -> String {
    let (got, body) = resp;
    assert_eq!(*got, status, "HTTP status; body {body}");
    let err = &body["error"];
    assert_eq!(err["code"], code, "error code; body {body}");
    let message = err["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "an error says what was wrong: {body}");
    message.to_owned()
}

/// Asserts a gRPC refusal with `code`; answers the message.
#[track_caller]
pub fn refused<T: std::fmt::Debug>(res: Result<tonic::Response<T>, Status>, code: Code) -> String {
    match res {
        Ok(r) => panic!(
            "expected {code:?}, the call succeeded: {:?}",
            r.into_inner()
        ),
        Err(s) => {
            assert_eq!(s.code(), code, "{}", s.message());
            assert!(!s.message().is_empty(), "a refusal says what was wrong");
            s.message().to_owned()
        }
    }
}

#[track_caller]
pub fn ok<T>(res: Result<tonic::Response<T>, Status>) -> T {
    match res {
        Ok(r) => r.into_inner(),
        Err(s) => panic!("the call failed: {:?} {}", s.code(), s.message()),
    }
}

pub struct Jitsudo {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub cloud: TestServer,
    pub config: Config,
    dir: Option<tempfile::TempDir>,
    ca_pem: Vec<u8>,
    tokens: Tokens,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    issuer_task: tokio::task::JoinHandle<()>,
    db: Option<jitsudo_testkit::TestDatabase>,
}

/// What a stopped server leaves behind: its database, its files and its configuration.
pub struct Leftovers {
    pub config: Config,
    /// Held until dropped: the database and the files the configuration names.
    _db: jitsudo_testkit::TestDatabase,
    _dir: tempfile::TempDir,
}

/// Writes `data` to `path` owner-only (secrets).
fn write_private(path: &Path, data: &[u8]) {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
        .and_then(|mut f| f.write_all(data))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

impl Jitsudo {
    /// A server with the test policies applied.
    pub async fn start() -> Jitsudo {
        Self::start_with(|_| {}).await
    }

    /// As [`Jitsudo::start`], with a last word on the configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Jitsudo {
        init();
        let db = jitsudo_testkit::postgres().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = jitsudo_api::certs::generate(
            &dir.path().join("certs"),
            &["localhost".to_owned(), "127.0.0.1".to_owned()],
            "client",
        )
        .expect("test certificates");

        // The issuer: its own port, its own key.
        let issuer_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the issuer");
        let issuer_url = format!(
            "http://{}{}",
            issuer_listener.local_addr().expect("issuer address"),
            DevIssuer::MOUNT_PATH
        );
        let issuer_dir = dir.path().join("issuer");
        std::fs::create_dir_all(&issuer_dir).expect("issuer dir");
        let signing = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let pem = signing
            .to_pkcs8_pem(LineEnding::LF)
            .expect("issuer key PEM");
        write_private(&issuer_dir.join(ISSUER_KEY_FILE), pem.as_bytes());
        let issuer = Arc::new(
            DevIssuer::load_or_create(&issuer_dir, &issuer_url, AUDIENCE).expect("dev issuer"),
        );
        let der = signing.to_pkcs8_der().expect("issuer key DER");
        let tokens = Tokens {
            issuer: issuer.clone(),
            key: EncodingKey::from_ed_der(der.as_bytes()),
            kid: kid_of(&signing),
            iss: issuer_url.clone(),
        };
        let dev_kid = jsonwebtoken::decode_header(tokens.mint("alice"))
            .expect("a dev token has a header")
            .kid;
        assert_eq!(
            dev_kid.as_deref(),
            Some(tokens.kid.as_str()),
            "the dev issuer must sign with the key the harness wrote for it"
        );
        let app = axum::Router::new().nest(DevIssuer::MOUNT_PATH, issuer.clone().router());
        let issuer_task = tokio::spawn(async move {
            let _ = axum::serve(issuer_listener, app).await;
        });

        let cloud = TestServer::start(CLOUD_SECRET).await;
        let secret_file = dir.path().join("cloud-secret");
        write_private(&secret_file, CLOUD_SECRET.as_bytes());
        let audit_key = dir.path().join("audit-signing-key.pem");
        jitsudo_actors::audit::generate_signing_key(&audit_key).expect("audit signing key");

        let mut config = Config::default();
        config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.server.tls_cert = Some(certs.server_cert.clone());
        config.server.tls_key = Some(certs.server_key.clone());
        config.server.shutdown_grace_seconds = 2;
        config.database.url = db.url.clone();
        config.node.name = "api-it".into();
        config.node.shards = 4;
        config.auth.issuer = issuer_url;
        config.auth.audience = AUDIENCE.into();
        config.audit.signing_key = Some(audit_key);
        config.audit.checkpoint_every = 5;
        config.audit.checkpoint_interval_seconds = 1;
        config.providers = vec![
            ProviderConfig::demo("demo"),
            ProviderConfig::http("cloud", cloud.base_url(), secret_file, Some(5)),
        ];
        tweak(&mut config);

        let server = Server::build(config.clone(), None)
            .await
            .expect("jitsudod builds");
        let policy = server.state.engine.policy();
        policy
            .apply("eligibility", ELIGIBILITY, "test-setup")
            .await
            .expect("the eligibility policy compiles");
        policy
            .apply("approval", APPROVAL, "test-setup")
            .await
            .expect("the approval policy compiles");
        let addr = server.local_addr();
        let state = server.state.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Jitsudo {
            addr,
            state,
            cloud,
            config,
            dir: Some(dir),
            ca_pem: std::fs::read(&certs.ca_cert).expect("CA certificate"),
            tokens,
            stop: Some(stop),
            served: Some(served),
            issuer_task,
            db: Some(db),
        }
    }

    pub fn token(&self, user: &str) -> String {
        self.tokens.mint(user)
    }

    /// The CA certificate (PEM) the server's TLS certificate is signed by.
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// A token for anyone: the issuer's key, any claims.
    pub fn token_for(
        &self,
        sub: &str,
        email: Option<&str>,
        verified: bool,
        groups: &[&str],
    ) -> String {
        self.tokens.sign(sub, email, verified, groups)
    }

    /// A token that expires `lifetime_seconds` from now.
    pub fn token_lasting(
        &self,
        sub: &str,
        email: Option<&str>,
        groups: &[&str],
        lifetime_seconds: i64,
    ) -> String {
        self.tokens
            .sign_for(sub, email, email.is_some(), groups, lifetime_seconds)
    }

    fn channel(&self) -> Channel {
        self.channel_with_identity(None)
    }

    /// A channel presenting `identity` (client certificate and key, PEM) in the handshake.
    pub fn channel_with_identity(&self, identity: Option<(&[u8], &[u8])>) -> Channel {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        Channel::from_shared(format!("https://127.0.0.1:{}", self.addr.port()))
            .expect("a valid URI")
            .tls_config(tls)
            .expect("client TLS")
            .connect_lazy()
    }

    /// gRPC clients sending `authorization` exactly as given (or not at all).
    pub fn grpc_with(&self, authorization: Option<&str>) -> Grpc {
        self.grpc_with_identity(authorization, None)
    }

    /// gRPC clients over a channel presenting a client certificate.
    pub fn grpc_with_identity(
        &self,
        authorization: Option<&str>,
        identity: Option<(&[u8], &[u8])>,
    ) -> Grpc {
        let bearer = Bearer(authorization.map(|a| a.parse().expect("an ASCII header value")));
        let ch = self.channel_with_identity(identity);
        Grpc {
            requests: RequestServiceClient::with_interceptor(ch.clone(), bearer.clone()),
            policies: PolicyServiceClient::with_interceptor(ch.clone(), bearer.clone()),
            audit: AuditServiceClient::with_interceptor(ch.clone(), bearer.clone()),
            principals: PrincipalServiceClient::with_interceptor(ch.clone(), bearer.clone()),
            admin: AdminServiceClient::with_interceptor(ch, bearer),
        }
    }

    /// gRPC clients as `user`.
    pub fn grpc(&self, user: &str) -> Grpc {
        self.grpc_with(Some(&format!("Bearer {}", self.token(user))))
    }

    /// A channel without credentials (health, reflection).
    pub fn bare_channel(&self) -> Channel {
        self.channel()
    }

    pub fn rest_with(&self, authorization: Option<&str>) -> Rest {
        self.rest_with_identity(authorization, None)
    }

    /// REST presenting a client certificate (cert and key PEM) in the handshake.
    pub fn rest_with_identity(
        &self,
        authorization: Option<&str>,
        identity: Option<(&[u8], &[u8])>,
    ) -> Rest {
        let ca = reqwest::Certificate::from_pem(&self.ca_pem).expect("CA certificate");
        let mut builder = reqwest::Client::builder().tls_certs_only([ca]);
        if let Some((cert, key)) = identity {
            let pem = [cert, key].concat();
            builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("client identity"));
        }
        let http = builder
            .resolve("localhost", self.addr)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client");
        Rest {
            http,
            base: format!("https://localhost:{}", self.addr.port()),
            authorization: authorization.map(str::to_owned),
        }
    }

    pub fn rest(&self, user: &str) -> Rest {
        self.rest_with(Some(&format!("Bearer {}", self.token(user))))
    }

    // ---- the truth, read from the store ----

    pub async fn stored(&self, id: &str) -> jitsudo_actors::domain::Request {
        let id: RequestId = id.parse().expect("a request id");
        self.state
            .engine
            .get(id)
            .await
            .expect("the request is stored")
    }

    /// Polls the store until the request is in `state` (30 s at most).
    pub async fn wait_state(&self, id: &str, state: St) -> v1::Request {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let r = jitsudo_api::convert::request(&self.stored(id).await);
            if r.state == state as i32 {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "request {id} never became {state:?}; it is {:?} ({})",
                St::try_from(r.state),
                r.end_detail
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Every audit event of the log, oldest first.
    pub async fn audit_log(&self) -> Vec<AuditEvent> {
        let store = self.state.engine.store();
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .query_audit(&AuditQuery {
                    oldest_first: true,
                    after,
                    limit: AuditQuery::MAX_LIMIT,
                    ..AuditQuery::default()
                })
                .await
                .expect("the audit log is readable");
            let n = page.len();
            after = page.last().map(|(e, _)| (e.at, e.id));
            out.extend(page.into_iter().map(|(e, _)| e));
            if n < AuditQuery::MAX_LIMIT as usize {
                return out;
            }
        }
    }

    /// The audit log without authorization refusals: what a refused call must not change.
    pub async fn audit_without_denials(&self) -> Vec<AuditEvent> {
        self.audit_log()
            .await
            .into_iter()
            .filter(|e| !e.kind.starts_with("authz.denied"))
            .collect()
    }

    pub async fn denials(&self, actor: &str) -> Vec<Value> {
        self.audit_log()
            .await
            .into_iter()
            .filter(|e| e.kind == "authz.denied" && e.actor == actor)
            .map(|e| {
                let mut d: Value = serde_json::from_str(&e.details).expect("JSON details");
                d["request_id"] = json!(e.request_id.map(|u| u.to_string()));
                d
            })
            .collect()
    }

    // ---- requests ----

    /// A request as `user`; answers it as created.
    pub async fn create(
        &self,
        user: &str,
        provider: &str,
        role: &str,
        seconds: i64,
    ) -> v1::Request {
        ok(self
            .grpc(user)
            .requests
            .create_request(new_request(provider, role, seconds))
            .await)
    }

    /// An ACTIVE `viewer` request of `user` (approved by policy).
    pub async fn active_viewer(&self, user: &str, provider: &str, seconds: i64) -> v1::Request {
        let r = self.create(user, provider, "viewer", seconds).await;
        self.wait_state(&r.id, St::Active).await
    }

    /// An ACTIVE `operator` request of `user`, approved by bob: extensions need approval.
    pub async fn active_operator(&self, user: &str, provider: &str, seconds: i64) -> v1::Request {
        let r = self.create(user, provider, "operator", seconds).await;
        ok(self
            .grpc("bob")
            .requests
            .approve_request(v1::DecideRequest {
                id: r.id.clone(),
                comment: "ok".into(),
            })
            .await);
        self.wait_state(&r.id, St::Active).await
    }

    /// Stops serving, lets the engine stop cleanly and answers what `serve` returned.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop_keeping_data().await.0
    }

    /// As [`Jitsudo::stop`], keeping the database and the files (for a restart).
    pub async fn stop_keeping_data(mut self) -> (anyhow::Result<()>, Leftovers) {
        let served = self.served.take().expect("serving");
        let left = Leftovers {
            _db: self.db.take().expect("the database"),
            _dir: self.dir.take().expect("the data dir"),
            config: self.config.clone(),
        };
        // The server stops its engine only once nothing else holds its state: dropping the
        // harness drops our handle and sends the stop signal.
        drop(self);
        let res = tokio::time::timeout(Duration::from_secs(20), served)
            .await
            .expect("jitsudod stops within its grace period")
            .expect("the serve task did not panic");
        (res, left)
    }
}

impl Drop for Jitsudo {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.issuer_task.abort();
    }
}

/// RFC 7638 thumbprint of an Ed25519 public key (the dev issuer's `kid`).
fn kid_of(key: &SigningKey) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use sha2::Digest as _;
    let x = URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()))
}

pub fn new_request(provider: &str, role: &str, seconds: i64) -> v1::CreateRequestRequest {
    v1::CreateRequestRequest {
        provider: provider.into(),
        role: role.into(),
        scope: "staging".into(),
        duration_seconds: seconds,
        reason: "integration test".into(),
        ..Default::default()
    }
}

/// A parsed REST body of a proto3-JSON message.
#[track_caller]
pub fn from_json<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("not the expected message ({e}): {v}"))
}
