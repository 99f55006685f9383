//! Builds and runs jitsudod: the store and the engine first (migrations run before anything
//! serves), then one listener (TLS unless explicitly disabled) carrying gRPC, REST/JSON,
//! health, readiness and metrics. SIGTERM/SIGINT stop accepting, let in-flight calls finish
//! (bounded) and stop the actors cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use jitsudo_actors::audit::load_signing_key;
use jitsudo_actors::config::{AuditConfig, MeshConfig, NotifyConfig, ReconcileConfig, SinkConfig};
use jitsudo_actors::engine::types::Mode;
use jitsudo_actors::{Engine, EngineConfig};
use jitsudo_proto::v1;
use jitsudo_providers::Registry;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::Layer as _;

use crate::auth::{AuthConfig, Authenticator, DevIssuer};
use crate::config::{ClientPrincipal, Config};
use crate::error::ApiError;
use crate::rpc::Api;
use crate::state::AppState;

/// Dev-mode extras: the built-in OpenID issuer.
pub struct DevExtras {
    pub issuer: Arc<DevIssuer>,
}

pub struct Server {
    pub state: Arc<AppState>,
    router: Router,
    /// grpc.health.v1: follows readiness (`/readyz`), NOT_SERVING while stopping.
    health: tonic_health::server::HealthReporter,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    grace: Duration,
}

/// Bucket bounds of every histogram, in seconds: sub-millisecond handler and policy times up
/// to cloud calls and expiry lags of minutes. The expiry SLO (docs/metrics.md) is at 1 s.
const HISTOGRAM_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];

fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Histograms with buckets (not summaries): they add up across nodes, and the
            // expiry-lag SLO rules count what fell under a bucket's bound.
            let builder = PrometheusBuilder::new();
            let builder = builder
                .set_buckets(HISTOGRAM_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|_| handle)
        })
        .clone()
}

/// The API's own series, each label set it can have, at zero from the start (the engine
/// registers its own: `jitsudo_actors::stats::register_series`). Per RPC only `code="OK"`:
/// a failure code's series appears with the first such failure.
fn register_api_series() {
    for rpc in jitsudo_proto::rpc_names() {
        metrics::counter!("jitsudo_rpc_total", "rpc" => rpc.clone(), "code" => "OK").increment(0);
        let _ = metrics::histogram!("jitsudo_rpc_seconds", "rpc" => rpc);
    }
    for reason in crate::auth::AuthError::REASONS {
        metrics::counter!("jitsudo_auth_refusals_total", "reason" => reason).increment(0);
    }
    for outcome in ["ok", "error"] {
        metrics::counter!("jitsudo_auth_jwks_fetches_total", "outcome" => outcome).increment(0);
    }
    for reason in ["token_expired", "shutdown"] {
        metrics::counter!("jitsudo_watch_ended_total", "reason" => reason).increment(0);
    }
    metrics::counter!("jitsudo_watch_reads_total").increment(0);
}

/// The `[cluster]` section as the engine takes it; `None` without a mesh.
fn mesh_config(c: &crate::config::ClusterSection) -> anyhow::Result<Option<MeshConfig>> {
    let Some(listen) = c.listen else {
        return Ok(None);
    };
    let advertise = c
        .advertise()
        .map_err(anyhow::Error::msg)?
        .unwrap_or_default();
    let need = |p: &Option<std::path::PathBuf>, key: &str| {
        p.clone().ok_or_else(|| {
            anyhow::anyhow!("[cluster] listen is set, so [cluster] {key} is required (mutual TLS between the nodes)")
        })
    };
    let (cert, key, ca, cookie) = (
        need(&c.tls_cert, "tls_cert")?,
        need(&c.tls_key, "tls_key")?,
        need(&c.ca, "ca")?,
        need(&c.cookie_file, "cookie_file")?,
    );
    let (server, client) = crate::tls::mesh_configs(&cert, &key, &ca)?;
    let cookie = String::from_utf8(read_secret(&cookie, "cluster cookie")?)
        .map_err(|_| anyhow::anyhow!("the cluster cookie file must hold text"))?;
    Ok(Some(MeshConfig {
        listen,
        advertise,
        cookie,
        server,
        client,
    }))
}

fn read_secret(path: &std::path::Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let s = std::fs::read(path).map_err(|e| {
        anyhow::anyhow!("cannot read the {what} secret file {}: {e}", path.display())
    })?;
    let trimmed = String::from_utf8_lossy(&s).trim().as_bytes().to_vec();
    anyhow::ensure!(
        !trimmed.is_empty(),
        "the {what} secret file {} is empty",
        path.display()
    );
    Ok(trimmed)
}

impl Server {
    /// Opens the store (running migrations), starts the engine and binds the listener.
    pub async fn build(config: Config, dev: Option<DevExtras>) -> anyhow::Result<Server> {
        // The recorder comes first: what the engine records while it starts (the actors it
        // spawns, the shards it takes) is lost if there is no recorder yet.
        let metrics = metrics_handle();
        register_api_series();
        let dev_mode = dev.is_some();
        let tls = match (
            &config.server.tls_cert,
            &config.server.tls_key,
            config.server.insecure_plaintext,
        ) {
            (Some(c), Some(k), _) => Some(TlsAcceptor::from(crate::tls::server_config(
                c,
                k,
                config.server.client_ca.as_deref(),
                &config.server.client_auth,
            )?)),
            (_, _, true) => None,
            _ => anyhow::bail!(
                "no TLS certificate: set server.tls_cert and server.tls_key (`jitsudod certs` makes test certificates), \
                 or pass --insecure-plaintext to serve without TLS (never in production)"
            ),
        };
        if tls.is_none() && config.server.client_auth != "off" {
            anyhow::bail!(
                "server.client_auth = {:?} needs TLS (server.tls_cert and server.tls_key): client certificates cannot be checked on a plaintext listener",
                config.server.client_auth
            );
        }
        if !config.server.client_principals.is_empty() && config.server.client_auth == "off" {
            anyhow::bail!(
                "server.client_principals map client certificates to bots, but server.client_auth is off: set it to optional or require"
            );
        }
        if tls.is_none() && !dev_mode {
            tracing::warn!(
                "serving WITHOUT TLS (--insecure-plaintext): tokens and credentials cross the network in clear text"
            );
        }
        let mode = if dev_mode {
            Mode::Dev
        } else {
            Mode::Production
        };
        let store = Engine::open_store(&config.database.url, mode, config.lease_ttl()).await?;
        // One key per cluster, kept in the database: a page token from one node continues
        // on any other. A configured file seeds it at the cluster's first start and must
        // match it later.
        let seed: [u8; 32] = match &config.server.page_token_key_file {
            Some(p) => {
                use sha2::Digest;
                sha2::Sha256::digest(read_secret(p, "page token")?).into()
            }
            None => rand::random(),
        };
        let stored = Engine::page_token_key(&store, &hex::encode(seed))
            .await
            .map_err(|e| anyhow::anyhow!("reading the cluster's page token key: {e}"))?;
        let page_key: [u8; 32] = hex::decode(&stored)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "cluster_meta holds a page_token_key that is not 32 bytes of hex: delete that row to make a new key (open page tokens stop working)"
                )
            })?;
        anyhow::ensure!(
            config.server.page_token_key_file.is_none() || page_key == seed,
            "server.page_token_key_file differs from the page token key this cluster's database holds: give every node the same file, or remove the setting (the key is kept in the database)"
        );

        let mut registry = Registry::new();
        for p in &config.providers {
            if registry.get(&p.name).is_some() {
                anyhow::bail!(
                    "provider {:?} is configured twice: every [[providers]] table needs its own name",
                    p.name
                );
            }
            registry = registry.with_entry(p.build().await?);
        }
        let mut sinks = Vec::new();
        for s in &config.sinks {
            sinks.push(match s.kind.as_str() {
                "log" => SinkConfig::log(&s.name),
                "webhook" => {
                    let url = s
                        .url
                        .clone()
                        .ok_or_else(|| anyhow::anyhow!("sink {}: url is required", s.name))?;
                    let secret = s.secret_file.as_ref().ok_or_else(|| {
                        anyhow::anyhow!("sink {}: secret_file is required", s.name)
                    })?;
                    SinkConfig::webhook(&s.name, url, read_secret(secret, "webhook")?)
                }
                other => anyhow::bail!("sink {}: unknown kind {other:?} (log or webhook)", s.name),
            });
        }
        let mut notify = NotifyConfig::default();
        if !sinks.is_empty() {
            notify.sinks = sinks;
        }
        let signing_key = match &config.audit.signing_key {
            Some(p) => Some(Arc::new(load_signing_key(p)?)),
            None => {
                tracing::warn!(
                    "no audit.signing_key: the audit chain is kept but no checkpoints are signed"
                );
                None
            }
        };
        let verifying_key = signing_key.as_ref().map(|k| k.verifying_key());
        let mesh = mesh_config(&config.cluster)?;
        let scheme = if config.server.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        let engine_config = EngineConfig {
            mesh,
            api_addr: format!("{scheme}://{}", config.server.listen),
            node: config.node.name.clone(),
            shards: config.node.shards,
            lease_ttl: config.lease_ttl(),
            notify,
            audit: Some(AuditConfig {
                signing_key,
                checkpoint_every: config.audit.checkpoint_every,
                checkpoint_interval: Duration::from_secs(
                    config.audit.checkpoint_interval_seconds.max(1),
                ),
                ..AuditConfig::default()
            }),
            admin_groups: config.authz.admin_groups.clone(),
            rules: jitsudo_actors::domain::Rules {
                grant_timeout: chrono::Duration::seconds(
                    i64::try_from(config.limits.grant_timeout_seconds.max(1)).unwrap_or(300),
                ),
                break_glass_cooldown: chrono::Duration::from_std(Duration::from_secs(
                    config.limits.break_glass_cooldown_seconds,
                ))
                .unwrap_or(chrono::Duration::MAX),
                max_open_per_requester: config.limits.max_live_requests_per_principal.max(0),
                ..jitsudo_actors::domain::Rules::default()
            },
            reconcile: Some(ReconcileConfig {
                interval: Duration::from_secs(config.node.reconcile_interval_seconds.max(1)),
            }),
            ..EngineConfig::default()
        };
        let engine = Engine::start(engine_config, store, registry).await?;

        let listener = TcpListener::bind(config.server.listen).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}: {e} (is another jitsudod running?)",
                config.server.listen
            )
        })?;
        let local = listener.local_addr()?;
        let auth_cfg = auth_config(&config, dev.as_ref(), local, tls.is_some())?;
        let auth = Authenticator::new(auth_cfg)?;
        let state = Arc::new(AppState {
            engine,
            config: config.clone(),
            auth,
            dev: dev_mode,
            started_at: chrono::Utc::now(),
            page_key,
            verifying_key,
            metrics,
            ready: AtomicBool::new(false),
            stopping: tokio::sync::watch::Sender::new(false),
            watch_reads: tokio::sync::Semaphore::new(4),
            denials: Mutex::new(Default::default()),
            identities: Mutex::new(Default::default()),
            mutation_limit: crate::limits::RateLimiter::new(config.limits.mutations_per_minute),
            auth_failure_limit: crate::limits::RateLimiter::new(
                config.limits.auth_failures_per_minute,
            ),
        });
        let (router, health) = router(state.clone(), dev.map(|d| d.issuer)).await?;
        state.ready.store(true, Ordering::Relaxed);
        set_health(&health, ready_check(&state).await.is_none()).await;
        metrics::gauge!(jitsudo_actors::stats::names::TOKEN_LEEWAY)
            .set(config.auth.leeway_seconds as f64);
        Ok(Server {
            state,
            router,
            health,
            listener,
            tls,
            grace: Duration::from_secs(config.server.shutdown_grace_seconds),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves until `shutdown` resolves, then drains in-flight calls (bounded) and stops
    /// the engine.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Server {
            state,
            router,
            mut health,
            listener,
            tls,
            grace,
        } = self;
        let health_watch = watch_health(Arc::downgrade(&state), health.clone());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let principals = Arc::new(state.config.server.client_principals.clone());
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let watcher = graceful.watcher();
            let tls = tls.clone();
            let router = router.clone();
            let principals = principals.clone();
            tokio::spawn(async move {
                let builder = auto::Builder::new(TokioExecutor::new());
                match tls {
                    Some(acceptor) => {
                        let Ok(Ok(stream)) =
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                                .await
                        else {
                            return;
                        };
                        // The certificate was verified in the handshake; which bot it
                        // proves travels with every request of this connection.
                        let cert = ClientCert {
                            addr: peer,
                            bot: stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|der| client_principal(&principals, der)),
                        };
                        let svc = TowerToHyperService::new(Extension(cert).layer(router));
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                        let _ = watcher.watch(conn.into_owned()).await;
                    }
                    None => {
                        let cert = ClientCert {
                            addr: peer,
                            bot: None,
                        };
                        let svc = TowerToHyperService::new(Extension(cert).layer(router));
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
                        let _ = watcher.watch(conn.into_owned()).await;
                    }
                }
            });
        }
        state.ready.store(false, Ordering::Relaxed);
        state.stopping.send_replace(true);
        health_watch.abort();
        let _ = health_watch.await;
        // Load balancers stop sending before the drain, not after it; then the statuses go,
        // which ends every Watch stream (a watcher sees NOT_SERVING first) so no health
        // watcher holds the drain open.
        set_health(&health, false).await;
        for name in HEALTH_SERVICES {
            health.clear_service_status(name).await;
        }
        // The router holds the state too: without dropping it the engine could never stop.
        drop(listener);
        drop(router);
        tracing::info!("shutting down: draining in-flight calls");
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?grace, "in-flight calls did not finish in time; closing them");
        }
        match Arc::try_unwrap(state) {
            Ok(s) => s.engine.shutdown().await,
            Err(_) => tracing::warn!(
                "server state still shared at shutdown; actors stop with the process"
            ),
        }
        Ok(())
    }
}

fn auth_config(
    config: &Config,
    dev: Option<&DevExtras>,
    local: SocketAddr,
    tls: bool,
) -> anyhow::Result<AuthConfig> {
    let mut cfg = AuthConfig::default();
    match dev {
        Some(d) => {
            cfg.issuer = d.issuer.issuer_url().to_owned();
            cfg.audience = d.issuer.audience().to_owned();
        }
        None => {
            anyhow::ensure!(
                !config.auth.issuer.is_empty(),
                "auth.issuer is required: the URL of your OpenID provider (jitsudod --dev brings its own)"
            );
            cfg.issuer = config.auth.issuer.clone();
            cfg.audience = config.auth.audience.clone();
        }
    }
    let _ = (local, tls);
    cfg.jwks_uri = config.auth.jwks_uri.clone();
    cfg.leeway = Duration::from_secs(config.auth.leeway_seconds);
    cfg.groups_claim = config.auth.groups_claim.clone();
    cfg.id_token_client_id = config.auth.id_token_client_id.clone();
    cfg.require_at_jwt = config.auth.require_at_jwt;
    if !config.auth.algorithms.is_empty() {
        cfg.algorithms = config
            .auth
            .algorithms
            .iter()
            .map(|a| {
                a.parse::<jsonwebtoken::Algorithm>()
                    .map_err(|_| anyhow::anyhow!("auth.algorithms: unknown algorithm {a:?}"))
            })
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(ca) = &config.auth.issuer_ca {
        cfg.extra_ca_pem = Some(
            std::fs::read_to_string(ca)
                .map_err(|e| anyhow::anyhow!("auth.issuer_ca {}: {e}", ca.display()))?,
        );
    }
    Ok(cfg)
}

const PUBLIC_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

fn is_public(path: &str) -> bool {
    PUBLIC_PATHS.contains(&path)
        || path.starts_with("/dev/oidc/")
        || path.starts_with("/grpc.health.v1.")
        || path.starts_with("/grpc.reflection.")
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Authenticates every call except health, readiness, metrics, reflection and the dev
/// issuer; the caller travels to the handlers in the request's extensions.
async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    if is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let grpc = is_grpc(req.headers());
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let peer = req.extensions().get::<ClientCert>().cloned();
    let bot = peer.as_ref().and_then(|c| c.bot.clone());
    let addr = peer.map(|p| p.addr.ip().to_string()).unwrap_or_default();
    // An address that keeps failing to authenticate is refused for a while, token or not:
    // guessing tokens costs the guesser, not the issuer's JWKS endpoint or our CPU.
    let result = match state.auth_failure_limit.check(&addr) {
        Err(wait) => Err(ApiError::rate_limited(
            "too many failed authentications from this address; try again later",
            wait,
        )),
        Ok(()) => {
            let r = state.caller(header.as_deref(), bot.as_deref()).await;
            if let Err(e) = &r
                && e.code == tonic::Code::Unauthenticated
            {
                let _ = state.auth_failure_limit.take(&addr);
            }
            r
        }
    };
    match result {
        Ok(c) => {
            req.extensions_mut().insert(c);
            next.run(req).await
        }
        Err(e) => {
            if grpc {
                tonic::Status::from(e).into_http::<axum::body::Body>()
            } else {
                e.into_response()
            }
        }
    }
}

/// The gRPC services health reports on (and `""`, the server as a whole).
const HEALTH_SERVICES: [&str; 6] = [
    "",
    <v1::request_service_server::RequestServiceServer<Api> as tonic::server::NamedService>::NAME,
    <v1::policy_service_server::PolicyServiceServer<Api> as tonic::server::NamedService>::NAME,
    <v1::audit_service_server::AuditServiceServer<Api> as tonic::server::NamedService>::NAME,
    <v1::principal_service_server::PrincipalServiceServer<Api> as tonic::server::NamedService>::NAME,
    <v1::admin_service_server::AdminServiceServer<Api> as tonic::server::NamedService>::NAME,
];

async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for name in HEALTH_SERVICES {
        health.set_service_status(name, status).await;
    }
}

/// grpc.health.v1 follows readiness, checked every second (a check that hangs counts as
/// not ready). Holds the state weakly: it must not keep the engine from stopping.
fn watch_health(
    state: std::sync::Weak<AppState>,
    health: tonic_health::server::HealthReporter,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // The kind of the last reason (None: ready); the log speaks when it changes.
        let mut last: Option<Option<&'static str>> = None;
        loop {
            let why = match state.upgrade() {
                None => return,
                Some(s) => {
                    match tokio::time::timeout(Duration::from_secs(3), ready_check(&s)).await {
                        Ok(None) => None,
                        Ok(Some(n)) => Some((n.kind(), n.reason())),
                        Err(_) => Some((
                            "slow check",
                            "the readiness check did not finish in 3 s".to_owned(),
                        )),
                    }
                }
            };
            let kind = why.as_ref().map(|(k, _)| *k);
            if last != Some(kind) {
                let serving = why.is_none();
                match (&last, &why) {
                    (_, Some((_, reason))) => {
                        tracing::warn!(reason = %reason, "not ready: gRPC health is NOT_SERVING")
                    }
                    (Some(_), None) => tracing::info!("ready again: gRPC health is SERVING"),
                    (None, None) => {}
                }
                if last.map(|k| k.is_none()) != Some(serving) {
                    set_health(&health, serving).await;
                }
                last = Some(kind);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

async fn router(
    state: Arc<AppState>,
    dev_issuer: Option<Arc<DevIssuer>>,
) -> anyhow::Result<(Router, tonic_health::server::HealthReporter)> {
    let max = state.config.limits.max_message_bytes;
    let api = Api(state.clone());
    let (health, health_service) = tonic_health::server::health_reporter();
    // Not serving until readiness says so (`Server::build` checks once at the end).
    set_health(&health, false).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(jitsudo_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let grpc = tonic::service::Routes::new(health_service)
        .add_service(reflection)
        .add_service(
            v1::request_service_server::RequestServiceServer::new(api.clone())
                .max_decoding_message_size(max),
        )
        .add_service(
            v1::policy_service_server::PolicyServiceServer::new(api.clone())
                .max_decoding_message_size(max),
        )
        .add_service(
            v1::audit_service_server::AuditServiceServer::new(api.clone())
                .max_decoding_message_size(max),
        )
        .add_service(
            v1::principal_service_server::PrincipalServiceServer::new(api.clone())
                .max_decoding_message_size(max),
        )
        .add_service(
            v1::admin_service_server::AdminServiceServer::new(api).max_decoding_message_size(max),
        )
        .into_axum_router();
    let rest = crate::rest::routes(state.clone())
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .with_state(state.clone());
    let mut app = Router::new()
        .merge(grpc)
        .merge(rest)
        .route("/healthz", get(|| async { "ok\n" }));
    if let Some(issuer) = dev_issuer {
        app = app.nest("/dev/oidc", issuer.router());
    }
    Ok((
        app.layer(axum::middleware::from_fn_with_state(state, authenticate))
            .layer(axum::middleware::map_response(json_payload_too_large))
            .layer(axum::extract::DefaultBodyLimit::max(max)),
        health,
    ))
}

/// The body limit answers 413 in plain text; REST clients get the documented JSON error.
async fn json_payload_too_large(res: Response) -> Response {
    if res.status() != StatusCode::PAYLOAD_TOO_LARGE || is_grpc(res.headers()) {
        return res;
    }
    let body = serde_json::json!({ "error": { "code": "RESOURCE_EXHAUSTED", "message": "the request body is larger than the server accepts (limits.max_message_bytes)" } });
    (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response()
}

/// Ready when the store answers, migrations ran (the engine started), the actor tree is up
/// and this node's clock is close enough to the database's for tokens to be accepted.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match ready_check(&state).await {
        Some(not_ready) => not_ready.into_response(),
        None => (StatusCode::OK, "ready\n").into_response(),
    }
}

/// Why this node should take no traffic: what `/readyz` answers and the log says.
enum NotReady {
    Starting,
    Store(ApiError),
    Clock(String),
    NoShards,
}

impl NotReady {
    /// What kind of reason: the log says it again only when this changes.
    fn kind(&self) -> &'static str {
        match self {
            NotReady::Starting => "starting or stopping",
            NotReady::Store(_) => "store unreachable",
            NotReady::Clock(_) => "clock beyond the token leeway",
            NotReady::NoShards => "no shard leases held",
        }
    }

    fn reason(&self) -> String {
        match self {
            NotReady::Store(e) => e.message.clone(),
            NotReady::Clock(why) => why.clone(),
            other => other.kind().to_owned(),
        }
    }

    fn into_response(self) -> Response {
        match self {
            NotReady::Store(e) => e.into_response(),
            other => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}\n", other.reason()),
            )
                .into_response(),
        }
    }
}

/// `None` when this node should take traffic.
async fn ready_check(state: &AppState) -> Option<NotReady> {
    if !state.ready.load(Ordering::Relaxed) {
        return Some(NotReady::Starting);
    }
    if let Err(e) = state.engine.db_now().await {
        return Some(NotReady::Store(ApiError::store_unreachable(&e)));
    }
    // Before the shards: a node that lost them to its clock should say why.
    match state.engine.clock_offsets().await {
        Ok(offsets) => {
            if let Some(why) = clock_beyond_leeway(&offsets, state.config.auth.leeway_seconds) {
                return Some(NotReady::Clock(why));
            }
        }
        Err(e) => return Some(NotReady::Store(e.into())),
    }
    if state.engine.shards_owned().is_empty() {
        return Some(NotReady::NoShards);
    }
    None
}

/// The sentence for a node whose clock is further from the database clock than the token
/// leeway (at least a second), `None` within it. `offsets` are database clock − node clock,
/// this node's first, then the other live members'. The node must also be that far from
/// the median of the others' offsets and the database's own (0): when every node is off
/// alike, the database's clock is the one that is wrong, and the nodes (whose clocks judge
/// the tokens) are fine.
fn clock_beyond_leeway(offsets: &[chrono::Duration], leeway_seconds: u64) -> Option<String> {
    let own = *offsets.first()?;
    let leeway =
        chrono::Duration::seconds(i64::try_from(leeway_seconds.max(1)).unwrap_or(i64::MAX));
    if own.abs() <= leeway {
        return None;
    }
    {
        let mut sorted: Vec<chrono::Duration> = offsets[1..].to_vec();
        sorted.push(chrono::Duration::zero());
        sorted.sort();
        let mid = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            (sorted[mid - 1] + sorted[mid]) / 2
        } else {
            sorted[mid]
        };
        if (own - median).abs() <= leeway {
            return None;
        }
    }
    let seconds = own.abs().num_milliseconds() as f64 / 1000.0;
    let beyond = seconds - leeway.num_seconds() as f64;
    let (side, effect) = if own > chrono::Duration::zero() {
        (
            "behind",
            format!(
                "tokens issued less than {beyond:.0} s ago are refused here as not yet valid (a fresh login fails)"
            ),
        )
    } else {
        (
            "ahead of",
            format!("tokens are refused here as expired {beyond:.0} s before they expire"),
        )
    };
    Some(format!(
        "this node's clock is {seconds:.1} s {side} the database clock, beyond the token leeway of {} s: {effect}; fix the host's time (NTP). Its shards keep running by the database clock",
        leeway.num_seconds()
    ))
}

async fn metrics_page(State(state): State<Arc<AppState>>) -> Response {
    match &state.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed in this process\n",
        )
            .into_response(),
    }
}

/// Where dev mode keeps its database, keys and issuer key.
pub fn dev_data_dir(dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(|| PathBuf::from(".jitsudo-dev"))
}

/// Who is at the other end of a connection: its address, and the bot its client
/// certificate proves, if any.
#[derive(Clone, Debug)]
pub struct ClientCert {
    pub addr: SocketAddr,
    pub bot: Option<Arc<ClientPrincipal>>,
}

/// The configured principal whose `san` the (already verified) certificate is valid for.
fn client_principal(
    principals: &[ClientPrincipal],
    der: &rustls::pki_types::CertificateDer<'_>,
) -> Option<Arc<ClientPrincipal>> {
    let cert = webpki::EndEntityCert::try_from(der).ok()?;
    principals
        .iter()
        .find(|p| {
            rustls::pki_types::ServerName::try_from(p.san.as_str())
                .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
        })
        .map(|p| Arc::new(p.clone()))
}

#[cfg(test)]
mod tests {
    use super::clock_beyond_leeway;
    use chrono::Duration;

    #[test]
    fn a_clock_beyond_the_token_leeway_is_named_with_its_side_and_effect() {
        let s = Duration::seconds;
        assert_eq!(clock_beyond_leeway(&[s(30)], 30), None);
        assert_eq!(clock_beyond_leeway(&[s(-30)], 30), None);
        let behind = clock_beyond_leeway(&[s(300)], 30).expect("behind");
        assert!(
            behind.contains("300.0 s behind the database clock")
                && behind.contains("leeway of 30 s")
                && behind.contains("issued less than 270 s ago are refused here as not yet valid"),
            "{behind}"
        );
        let ahead = clock_beyond_leeway(&[Duration::milliseconds(-45_500)], 30).expect("ahead");
        assert!(
            ahead.contains("45.5 s ahead of the database clock")
                && ahead.contains("expired 16 s before they expire"),
            "{ahead}"
        );
        // A leeway of 0 still allows a second.
        assert_eq!(clock_beyond_leeway(&[Duration::milliseconds(3)], 0), None);
    }

    #[test]
    fn when_every_node_is_off_alike_the_database_clock_is_the_odd_one_and_nodes_stay_ready() {
        let s = Duration::seconds;
        // All three 90 s off: the database is wrong, not the nodes.
        assert_eq!(clock_beyond_leeway(&[s(90), s(90), s(91)], 30), None);
        // One of three off: it is the outlier.
        assert!(clock_beyond_leeway(&[s(120), s(0), s(1)], 30).is_some());
        assert_eq!(clock_beyond_leeway(&[s(0), s(120), s(1)], 30), None);
        // One of two off: the other and the database agree against it.
        assert!(clock_beyond_leeway(&[s(120), s(0)], 30).is_some());
        assert!(clock_beyond_leeway(&[s(50), s(0)], 30).is_some());
        assert_eq!(clock_beyond_leeway(&[s(0), s(120)], 30), None);
    }
}
