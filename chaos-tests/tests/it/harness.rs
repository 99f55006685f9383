//! The chaos harness: real `jitsudod` processes over TLS on one PostgreSQL, each reaching
//! the database through a TCP proxy the harness can cut; the http provider's reference
//! server as the fake cloud, logging every grant and revoke with its time; the faithful
//! Kubernetes API fake as a second provider (`k8s`); the demo OpenID issuer for tokens.
//! Clients use the public gRPC API only.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use jitsudo_proto::v1;
use jitsudo_proto::v1::admin_service_client::AdminServiceClient;
use jitsudo_proto::v1::audit_service_client::AuditServiceClient;
use jitsudo_proto::v1::policy_service_client::PolicyServiceClient;
use jitsudo_proto::v1::request_service_client::RequestServiceClient;
use jitsudo_providers::http::Op;
use jitsudo_providers::http::server::{Outcome, TestServer};
use jitsudo_testkit::fakes::kubernetes::{FakeKube, Kind};
use jitsudo_testkit::{PrivatePostgres, TestDatabase};
use sqlx::Row;
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use uuid::Uuid;

use crate::proxy::Proxy;

const SECRET: &str = "chaos-secret-for-the-fake-cloud";

pub const ELIGIBILITY: &str = r#"
package jitsudo.eligibility

allow if "engineering" in input.requester.groups
"#;

pub const APPROVAL: &str = r#"
package jitsudo.approval

auto_approve if input.request.role == "viewer"
auto_approve if input.request.role == "view"
approvals_required := 1
approver_groups := {"approvers"}
max_duration_seconds := 86400
max_total_duration_seconds := 172800
"#;

/// A create as the chaos tests send it: role `viewer` is approved by the policy at once,
/// `operator` needs an approver. A fresh idempotency key each (clone it to retry).
pub fn new_request(role: &str, duration_seconds: i64, reason: &str) -> v1::CreateRequestRequest {
    v1::CreateRequestRequest {
        provider: "cloud".into(),
        role: role.into(),
        scope: "chaos".into(),
        duration_seconds,
        reason: reason.into(),
        idempotency_key: Uuid::now_v7().to_string(),
        ..Default::default()
    }
}

/// Cluster settings of one scenario.
#[derive(Clone, Debug)]
pub struct Opts {
    pub nodes: usize,
    pub shards: u32,
    pub lease_ttl_seconds: u64,
    /// Nodes advertise their cluster port itself instead of the harness's proxy in front
    /// of it (the benchmarks: no hop through the proxy; the mesh cannot be cut then).
    pub direct_mesh: bool,
    /// A PostgreSQL server of the cluster's own (testkit starts one from the installed
    /// binaries), so that a scenario can stop and start it.
    pub private_postgres: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            nodes: 3,
            shards: 64,
            lease_ttl_seconds: 5,
            direct_mesh: false,
            private_postgres: false,
        }
    }
}

pub struct Node {
    pub name: String,
    pub api_port: u16,
    pub child: Option<Child>,
    pub config: PathBuf,
    pub log: PathBuf,
    /// This node's link to PostgreSQL.
    pub db_link: Proxy,
    /// The way in to this node's cluster port (what it advertises): cutting it drops
    /// every mesh connection to this node, whichever side dialed.
    pub mesh_link: Proxy,
    /// Extra environment of the process, from its next start (libfaketime's, say).
    pub env: Vec<(String, String)>,
}

impl Node {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub db_url: String,
    pub cloud: TestServer,
    /// The Kubernetes API the nodes' `k8s` provider grants RoleBindings in (namespace
    /// `chaos`, ClusterRole `view`).
    pub kube: std::sync::Arc<FakeKube>,
    pub nodes: Vec<Node>,
    pub opts: Opts,
    issuer: Child,
    issuer_url: String,
    db_addr: SocketAddr,
    db_name: String,
    tokens: HashMap<String, String>,
    _db: TestDatabase,
    /// The server of `Opts::private_postgres` (dropped after the database: it stops).
    pg: Option<PrivatePostgres>,
}

/// A call with a bearer token and the harness's 20 s deadline.
pub fn authed<T>(token: &str, m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).expect("ascii"),
    );
    r.set_timeout(Duration::from_secs(20));
    r
}

/// The jitsudod binary `cargo test --workspace` built beside this test.
fn jitsudod_bin() -> PathBuf {
    // Not JITSUDOD_*: jitsudod reads those as configuration, and the nodes inherit it.
    if let Ok(p) = std::env::var("JITSUDO_CHAOS_JITSUDOD") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let bin = dir.join("jitsudod");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p jitsudo-api --bin jitsudod`; `cargo test --workspace` does), or set JITSUDO_CHAOS_JITSUDOD to a jitsudod binary",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    jitsudo_testkit::free_port()
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `host:port` and database name of a `postgres://user@host:port/db` URL.
fn split_url(url: &str) -> (SocketAddr, String, String) {
    let rest = url.split_once("://").expect("a postgres URL").1;
    let (auth, rest) = rest.rsplit_once('@').unwrap_or(("postgres", rest));
    let (hostport, db) = rest.split_once('/').expect("a database in the URL");
    let db = db.split('?').next().unwrap_or(db).to_owned();
    let addr = hostport
        .replace("localhost", "127.0.0.1")
        .parse()
        .expect("an IP:port host in the PostgreSQL URL");
    (addr, db, auth.to_owned())
}

impl Cluster {
    pub async fn start(opts: Opts) -> Cluster {
        jitsudo_testkit::init_crypto();
        let bin = jitsudod_bin();
        let dir = tempfile::Builder::new()
            .prefix("jitsudo-chaos-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        run(
            Command::new(&bin)
                .arg("certs")
                .arg("--out")
                .arg(d.join("certs")),
            "jitsudod certs",
        );
        run(
            Command::new(&bin)
                .arg("audit-key")
                .arg("--out")
                .arg(d.join("audit.pem")),
            "jitsudod audit-key",
        );
        std::fs::write(d.join("cloud.secret"), SECRET).expect("secret file");
        std::fs::write(d.join("cluster.cookie"), "chaos-cluster-cookie").expect("cookie file");
        let (db, pg) = if opts.private_postgres {
            let pg = tokio::task::spawn_blocking(PrivatePostgres::start)
                .await
                .expect("starting PostgreSQL")
                .expect("a private PostgreSQL from the installed binaries (initdb, pg_ctl)");
            let db = pg.database().await.expect("a database on it");
            (db, Some(pg))
        } else {
            (jitsudo_testkit::postgres().await, None)
        };
        let (db_addr, db_name, _) = split_url(&db.url);
        let cloud = TestServer::start(SECRET.as_bytes()).await;
        let kube = FakeKube::start().await.expect("the Kubernetes fake starts");
        kube.seed_cluster_role("view");
        kube.seed_namespace("chaos");
        kube.write_kubeconfig(&d.join("kubeconfig"), &kube.admin_token())
            .expect("kubeconfig");
        let issuer_port = free_port();
        let issuer_url = format!("http://127.0.0.1:{issuer_port}/dev/oidc");
        let issuer = Command::new(env!("CARGO_BIN_EXE_jitsudo-test-issuer"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{issuer_port}"))
            .arg("--dir")
            .arg(d.join("issuer"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("issuer.log")).expect("log file"))
            .spawn()
            .expect("test issuer starts");
        let mut c = Cluster {
            db_url: db.url.clone(),
            dir,
            cloud,
            kube: std::sync::Arc::new(kube),
            nodes: Vec::new(),
            opts: opts.clone(),
            issuer,
            issuer_url,
            db_addr,
            db_name,
            tokens: HashMap::new(),
            _db: db,
            pg,
        };
        c.wait_issuer().await;
        for _ in 0..opts.nodes {
            c.add_node().await;
        }
        for i in 0..opts.nodes {
            c.wait_ready(i).await;
        }
        let mut p = c.policies(0).await;
        for (name, rego) in [("eligibility", ELIGIBILITY), ("approval", APPROVAL)] {
            p.apply_policy(c.auth(
                "carol",
                v1::ApplyPolicyRequest {
                    name: name.into(),
                    rego: rego.into(),
                },
            ))
            .await
            .expect("policy applies");
        }
        // Every node picks the change up by its revision poll (each second).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c
    }

    async fn wait_issuer(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.fetch_token("alice").await.is_err() {
            assert!(Instant::now() < deadline, "the test issuer did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn fetch_token(&self, user: &str) -> anyhow::Result<String> {
        let v: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/token", self.issuer_url))
            .json(&serde_json::json!({ "username": user }))
            .send()
            .await?
            .json()
            .await?;
        Ok(v["access_token"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no access_token"))?
            .to_owned())
    }

    /// Adds a node (started, not yet waited for): its config, its database link.
    pub async fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let name = format!("node-{i}");
        let d = self.dir.path();
        let api_port = free_port();
        let db_link = Proxy::start(self.db_addr).await;
        let mesh_port = free_port();
        let mesh_link = Proxy::start(SocketAddr::from(([127, 0, 0, 1], mesh_port))).await;
        let config = d.join(format!("{name}.toml"));
        let o = &self.opts;
        std::fs::write(
            &config,
            format!(
                r#"[server]
listen = "127.0.0.1:{api_port}"
tls_cert = "{d}/certs/server.pem"
tls_key = "{d}/certs/server-key.pem"
shutdown_grace_seconds = 2
[database]
url = "postgres://postgres@127.0.0.1:{db_port}/{db_name}"
[node]
name = "{name}"
shards = {shards}
lease_ttl_seconds = {ttl}
[cluster]
listen = "127.0.0.1:{mesh_port}"
advertise = "127.0.0.1:{mesh_proxy}"
tls_cert = "{d}/certs/node.pem"
tls_key = "{d}/certs/node-key.pem"
ca = "{d}/certs/ca.pem"
cookie_file = "{d}/cluster.cookie"
[auth]
issuer = "{issuer}"
audience = "jitsudo"
[audit]
signing_key = "{d}/audit.pem"
[limits]
mutations_per_minute = 0
max_live_requests_per_principal = 0
[[providers]]
name = "cloud"
kind = "http"
base_url = "{cloud}"
secret_file = "{d}/cloud.secret"
timeout_seconds = 5
[[providers]]
name = "k8s"
kind = "kubernetes"
kubeconfig = "{d}/kubeconfig"
context = "fake"
roles = ["view"]
namespaces = ["chaos"]
timeout_seconds = 5
"#,
                d = d.display(),
                db_port = db_link.port,
                mesh_proxy = if o.direct_mesh {
                    mesh_port
                } else {
                    mesh_link.port
                },
                db_name = self.db_name,
                shards = o.shards,
                ttl = o.lease_ttl_seconds,
                issuer = self.issuer_url,
                cloud = self.cloud.base_url(),
            ),
        )
        .expect("node config");
        self.nodes.push(Node {
            name,
            api_port,
            child: None,
            config,
            log: d.join(format!("node-{i}.log")),
            db_link,
            mesh_link,
            env: Vec::new(),
        });
        self.spawn(i);
        i
    }

    /// Starts node `i`'s process (again).
    pub fn spawn(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .expect("node log");
        let child = Command::new(jitsudod_bin())
            .arg("--config")
            .arg(&n.config)
            .env("JITSUDOD_LOG", "info,sqlx=warn,ractor_cluster=warn")
            .env("RUST_BACKTRACE", "0")
            .envs(n.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("jitsudod starts");
        n.child = Some(child);
    }

    fn https(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(
            &std::fs::read(self.dir.path().join("certs/ca.pem")).expect("CA"),
        )
        .expect("CA parses");
        reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .expect("client")
    }

    /// Node `i`'s `/metrics` page.
    pub async fn metrics_text(&self, i: usize) -> String {
        let url = format!("https://localhost:{}/metrics", self.nodes[i].api_port);
        self.https()
            .get(&url)
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text")
    }

    /// The sum of a metric's series on node `i` (its `/metrics`), 0 when absent.
    pub async fn metric(&self, i: usize, name: &str) -> f64 {
        let text = self.metrics_text(i).await;
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Node `i`'s `/readyz`: status code and body.
    pub async fn readyz(&self, i: usize) -> (u16, String) {
        let url = format!("https://localhost:{}/readyz", self.nodes[i].api_port);
        match self.https().get(&url).send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }

    /// Waits until node `i` answers `/readyz`.
    pub async fn wait_ready(&mut self, i: usize) {
        let http = self.https();
        let url = format!("https://localhost:{}/readyz", self.nodes[i].api_port);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(c) = self.nodes[i].child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "{} exited ({status}) while starting:\n{}",
                    self.nodes[i].name,
                    self.log_tail(i, 40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready in 60 s:\n{}",
                self.nodes[i].name,
                self.log_tail(i, 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self.nodes[i].pid().expect("node is running");
        run(
            Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string()),
            "kill",
        );
    }

    /// kill -9: no lease released, no goodbye.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for the process to exit.
    pub async fn terminate(&mut self, i: usize) {
        self.signal(i, "TERM");
        let mut c = self.nodes[i].child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            assert!(Instant::now() < deadline, "node {i} ignored SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the cluster's own PostgreSQL (`Opts::private_postgres`) the hard way, keeps it
    /// down for `down`, starts it again; answers once it accepts connections.
    pub async fn restart_postgres(&mut self, down: Duration) {
        let pg = self.pg.take().expect("Opts::private_postgres");
        let pg = tokio::task::spawn_blocking(move || {
            pg.stop().expect("PostgreSQL stops");
            pg
        })
        .await
        .expect("stop");
        let probe = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(2))
            .connect(&self.db_url)
            .await;
        assert!(probe.is_err(), "PostgreSQL still answers after the stop");
        tokio::time::sleep(down).await;
        let pg = tokio::task::spawn_blocking(move || {
            pg.resume().expect("PostgreSQL starts again");
            pg
        })
        .await
        .expect("start");
        self.pg = Some(pg);
    }

    pub fn freeze(&self, i: usize) {
        self.signal(i, "STOP");
    }

    pub fn thaw(&self, i: usize) {
        self.signal(i, "CONT");
    }

    pub fn auth<T>(&self, user: &str, m: T) -> tonic::Request<T> {
        authed(self.tokens.get(user).expect("token fetched"), m)
    }

    /// A user's bearer token (fetched by the first `channel`), for clients on other tasks.
    #[allow(dead_code)] // benches/cluster.rs
    pub fn token(&self, user: &str) -> String {
        self.tokens.get(user).expect("token fetched").clone()
    }

    pub async fn channel(&mut self, i: usize) -> Channel {
        for user in ["alice", "bob", "carol", "dave", "erin"] {
            if !self.tokens.contains_key(user) {
                let t = self.fetch_token(user).await.expect("token");
                self.tokens.insert(user.into(), t);
            }
        }
        let ca = std::fs::read(self.dir.path().join("certs/ca.pem")).expect("CA");
        Endpoint::from_shared(format!("https://127.0.0.1:{}", self.nodes[i].api_port))
            .expect("endpoint")
            .tls_config(
                ClientTlsConfig::new()
                    .domain_name("localhost")
                    .ca_certificate(Certificate::from_pem(ca)),
            )
            .expect("tls")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connecting to node {i}: {e}"))
    }

    pub async fn requests(&mut self, i: usize) -> RequestServiceClient<Channel> {
        RequestServiceClient::new(self.channel(i).await)
    }

    pub async fn policies(&mut self, i: usize) -> PolicyServiceClient<Channel> {
        PolicyServiceClient::new(self.channel(i).await)
    }

    async fn admin(&mut self, i: usize) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel(i).await)
    }

    /// Creates `n` auto-approved requests on node `i`, durations cycling through
    /// `durations` (seconds); answers their ids (every one acknowledged).
    pub async fn create_many(&mut self, i: usize, n: usize, durations: &[i64]) -> Vec<String> {
        self.create_many_at(i, n, durations, ("cloud", "viewer", "chaos"))
            .await
    }

    /// As [`Cluster::create_many`], at another provider: `(provider, role, scope)`.
    pub async fn create_many_at(
        &mut self,
        i: usize,
        n: usize,
        durations: &[i64],
        (provider, role, scope): (&str, &str, &str),
    ) -> Vec<String> {
        let mut client = self.requests(i).await;
        let mut ids = Vec::with_capacity(n);
        for k in 0..n {
            let mut create = new_request(role, durations[k % durations.len()], "chaos test");
            create.provider = provider.into();
            create.scope = scope.into();
            let req = self.auth("alice", create);
            let r = client
                .create_request(req)
                .await
                .unwrap_or_else(|e| panic!("create on node {i}: {e}"))
                .into_inner();
            ids.push(r.id);
        }
        ids
    }

    /// Creates `n` requests on node `i` that need an approver (role `operator`, 5 s);
    /// their shards are node `i`'s.
    pub async fn create_pending(&mut self, i: usize, n: usize) -> Vec<String> {
        let mut client = self.requests(i).await;
        let mut ids = Vec::new();
        for _ in 0..n {
            let req = self.auth("alice", new_request("operator", 5, "needs an approver"));
            ids.push(
                client
                    .create_request(req)
                    .await
                    .expect("create")
                    .into_inner()
                    .id,
            );
        }
        ids
    }

    /// The cluster as a live node sees it.
    pub async fn status(&mut self, via: usize) -> v1::ClusterStatus {
        let mut a = self.admin(via).await;
        a.get_cluster_status(self.auth("carol", v1::GetClusterStatusRequest::default()))
            .await
            .expect("cluster status")
            .into_inner()
    }

    /// The node holding the most shards, by the database.
    pub async fn busiest_owner(&self) -> usize {
        let pool = self.pool().await;
        let rows = sqlx::query(
            "SELECT o.owner, count(*) AS n FROM shard_owners o JOIN shard_renewals r USING (shard)
              WHERE r.expires_at > now() AND o.shard < $1 GROUP BY o.owner ORDER BY n DESC, o.owner",
        )
        .bind(self.opts.shards as i32)
        .fetch_all(&pool)
        .await
        .expect("shard owners");
        let owner: String = rows[0].get("owner");
        self.nodes
            .iter()
            .position(|n| n.name == owner)
            .expect("a known node")
    }

    /// Shards held with a live lease, per node name.
    pub async fn shares(&self) -> BTreeMap<String, i64> {
        let pool = self.pool().await;
        let rows = sqlx::query(
            "SELECT o.owner, count(*) AS n FROM shard_owners o JOIN shard_renewals r USING (shard)
              WHERE r.expires_at > now() AND o.shard < $1 GROUP BY o.owner",
        )
        .bind(self.opts.shards as i32)
        .fetch_all(&pool)
        .await
        .expect("shard owners");
        rows.iter()
            .map(|r| (r.get::<String, _>("owner"), r.get::<i64, _>("n")))
            .collect()
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.db_url)
            .await
            .expect("harness connects to PostgreSQL")
    }

    /// The promised expiry bound: lease TTL + takeover poll (a round, TTL/5) + shard load
    /// + provider revoke time (both under a second here).
    pub fn bound(&self) -> Duration {
        let ttl = Duration::from_secs(self.opts.lease_ttl_seconds);
        ttl + ttl / 5 + Duration::from_millis(500) + Duration::from_millis(300)
    }

    /// Waits until every request is final, then checks the four properties against the
    /// database and the fake cloud's log; answers each request's expiry lag (seconds).
    pub async fn check(&mut self, ids: &[String], via: usize) -> Report {
        let pool = self.pool().await;
        let uuids: Vec<Uuid> = ids.iter().map(|s| s.parse().expect("uuid")).collect();
        let gate = self.bound() * 2;
        // (d) nothing acknowledged is lost: every id is in the database.
        let deadline = Instant::now() + Duration::from_secs(120);
        let rows = loop {
            let rows = sqlx::query(
                "SELECT id, state, expires_at, ended_at FROM requests WHERE id = ANY($1)",
            )
            .bind(&uuids)
            .fetch_all(&pool)
            .await
            .expect("requests");
            assert_eq!(rows.len(), ids.len(), "acknowledged requests are missing");
            let open = rows
                .iter()
                .filter(|r| r.get::<String, _>("state") != "EXPIRED")
                .count();
            if open == 0 {
                break rows;
            }
            assert!(
                Instant::now() < deadline,
                "{open} requests never expired:\n{}",
                (0..self.nodes.len())
                    .map(|i| format!("--- node {i}\n{}", self.log_tail(i, 15)))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let grants =
            sqlx::query("SELECT grant_id, request_id FROM grants WHERE request_id = ANY($1)")
                .bind(&uuids)
                .fetch_all(&pool)
                .await
                .expect("grants");
        let mut grant_of: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for g in &grants {
            grant_of
                .entry(g.get("request_id"))
                .or_default()
                .push(g.get("grant_id"));
        }
        // The cloud's log by grant: effective grants and the first effective revoke.
        let mut created: HashMap<Uuid, usize> = HashMap::new();
        let mut revoked: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
        for e in self.cloud.events() {
            let Some(g) = e.grant_id else { continue };
            match (e.op, e.outcome) {
                (Op::Grant, Outcome::Granted) => *created.entry(g).or_default() += 1,
                (Op::Revoke, Outcome::Revoked) => {
                    let first = revoked.entry(g).or_insert(e.at);
                    *first = (*first).min(e.at);
                }
                _ => {}
            }
        }
        let mut samples = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: Uuid = r.get("id");
            let expires_at: DateTime<Utc> = r.get("expires_at");
            let gids = grant_of.get(&id).cloned().unwrap_or_default();
            // (b) at most one effective grant per request.
            let granted: Vec<&Uuid> = gids.iter().filter(|g| created.contains_key(g)).collect();
            assert_eq!(granted.len(), 1, "request {id}: grants {granted:?}");
            let gid = *granted[0];
            for g in &gids {
                let n = created.get(g).copied().unwrap_or(0);
                assert!(n <= 1, "grant {g} of {id} was created {n} times");
            }
            // (a) never active at the cloud past expires_at + bound.
            assert!(
                !self.cloud.is_active(gid),
                "grant {gid} of {id} is still active"
            );
            let removed = *revoked
                .get(&gid)
                .unwrap_or_else(|| panic!("grant {gid} of {id} was never revoked at the cloud"));
            let lag = (removed - expires_at).num_milliseconds() as f64 / 1000.0;
            samples.push((expires_at, lag));
        }
        // (c) one audit event per transition, one ACTIVE and one EXPIRED each; the chain
        // verifies once sequenced.
        let audit =
            sqlx::query("SELECT request_id, details FROM audit_events WHERE request_id = ANY($1)")
                .bind(&uuids)
                .fetch_all(&pool)
                .await
                .expect("audit");
        let mut to: HashMap<(Uuid, String), usize> = HashMap::new();
        for a in &audit {
            let d: serde_json::Value =
                serde_json::from_str(&a.get::<String, _>("details")).unwrap_or_default();
            if let Some(state) = d["to"].as_str() {
                *to.entry((a.get("request_id"), state.to_owned()))
                    .or_default() += 1;
            }
        }
        for id in &uuids {
            for state in ["ACTIVE", "EXPIRED"] {
                assert_eq!(
                    to.get(&(*id, state.to_owned())).copied().unwrap_or(0),
                    1,
                    "request {id}: audit events to {state}"
                );
            }
        }
        let verified = self.verify_audit(via).await;
        let mut lags: Vec<f64> = samples.iter().map(|s| s.1).collect();
        lags.sort_by(f64::total_cmp);
        let report = Report {
            lags,
            samples,
            gate: gate.as_secs_f64(),
            chain_length: verified,
        };
        assert!(
            report.max() <= report.gate,
            "expiry lag {:.2} s exceeds twice the bound ({:.2} s): {report}",
            report.max(),
            report.gate
        );
        report
    }

    /// Watches the Kubernetes fake every 50 ms: for each grant's binding, when it was
    /// first seen granting (with subjects) and when it was first seen granting no more
    /// (a tombstone, or gone). Stop it by aborting the task.
    pub fn watch_kube(&self) -> (tokio::task::JoinHandle<()>, KubeSightings) {
        let seen = KubeSightings::default();
        let (kube, out) = (self.kube.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let now = Utc::now();
                let bindings = kube.objects(Kind::RoleBinding);
                let mut live = std::collections::HashSet::new();
                for b in &bindings {
                    let Some(gid) = b["metadata"]["labels"]["jitsudo.dev/grant-id"]
                        .as_str()
                        .and_then(|g| g.parse::<Uuid>().ok())
                    else {
                        continue;
                    };
                    let granting = b["subjects"].as_array().is_some_and(|s| !s.is_empty());
                    if granting {
                        live.insert(gid);
                    }
                }
                if let Ok(mut m) = out.0.lock() {
                    for gid in &live {
                        m.entry(*gid).or_insert((now, None));
                    }
                    for (gid, (_, removed)) in m.iter_mut() {
                        if removed.is_none() && !live.contains(gid) {
                            *removed = Some(now);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        (task, seen)
    }

    /// Waits until every request is EXPIRED, then checks each one's binding against what
    /// the watch saw: granted once, no longer granting within twice the bound of
    /// `expires_at`, and a tombstone (or nothing) left behind. Answers the lags.
    pub async fn check_kube(&mut self, ids: &[String], seen: &KubeSightings) -> Report {
        let pool = self.pool().await;
        let uuids: Vec<Uuid> = ids.iter().map(|s| s.parse().expect("uuid")).collect();
        let gate = self.bound() * 2;
        let deadline = Instant::now() + Duration::from_secs(120);
        let rows = loop {
            let rows = sqlx::query(
                "SELECT r.id, r.state, r.expires_at, g.grant_id FROM requests r
                   JOIN grants g ON g.request_id = r.id WHERE r.id = ANY($1)",
            )
            .bind(&uuids)
            .fetch_all(&pool)
            .await
            .expect("requests");
            let open = rows
                .iter()
                .filter(|r| r.get::<String, _>("state") != "EXPIRED")
                .count();
            if open == 0 && rows.len() == ids.len() {
                break rows;
            }
            assert!(
                Instant::now() < deadline,
                "{open} of {} Kubernetes requests never expired",
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // One more look after the last record, so that every removal has been seen.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sightings = seen.0.lock().map(|m| m.clone()).unwrap_or_default();
        let mut samples = Vec::new();
        for r in &rows {
            let (id, gid): (Uuid, Uuid) = (r.get("id"), r.get("grant_id"));
            let expires_at: DateTime<Utc> = r.get("expires_at");
            let (_, removed) = sightings
                .get(&gid)
                .unwrap_or_else(|| panic!("the binding of {id} was never seen granting"));
            let removed = removed.unwrap_or_else(|| panic!("the binding of {id} still grants"));
            let b = self
                .kube
                .object(Kind::RoleBinding, Some("chaos"), &format!("jitsudo-{gid}"));
            assert!(
                b.as_ref()
                    .is_none_or(|b| b["subjects"].as_array().is_none_or(Vec::is_empty)),
                "the binding of {id} grants again: {b:?}"
            );
            samples.push((
                expires_at,
                (removed - expires_at).num_milliseconds() as f64 / 1000.0,
            ));
        }
        let mut lags: Vec<f64> = samples.iter().map(|s| s.1).collect();
        lags.sort_by(f64::total_cmp);
        let report = Report {
            lags,
            samples,
            gate: gate.as_secs_f64(),
            chain_length: 0,
        };
        assert!(
            report.max() <= report.gate,
            "Kubernetes expiry lag {:.2} s exceeds twice the bound ({:.2} s): {report}",
            report.max(),
            report.gate
        );
        report
    }

    /// Waits for the sequencer to chain every event, then verifies the chain through the
    /// API; answers the chain length.
    pub async fn verify_audit(&mut self, via: usize) -> i64 {
        let mut audit = AuditServiceClient::new(self.channel(via).await);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = audit
                .verify_audit(self.auth("erin", v1::VerifyAuditRequest::default()))
                .await
                .expect("verify audit")
                .into_inner();
            assert!(v.intact, "audit chain broken: {v:?}");
            assert!(v.version_gaps.is_empty(), "version gaps: {v:?}");
            if v.unchained == 0 {
                return v.chain_length;
            }
            assert!(
                Instant::now() < deadline,
                "{} audit events still unchained",
                v.unchained
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = self.issuer.kill();
        let _ = self.issuer.wait();
        if std::thread::panicking() {
            for i in 0..self.nodes.len() {
                eprintln!(
                    "--- {} log (tail)\n{}",
                    self.nodes[i].name,
                    self.log_tail(i, 60)
                );
            }
        }
    }
}

/// What [`Cluster::watch_kube`] saw: per grant id, first seen granting and first seen
/// granting no more.
#[derive(Clone, Default)]
pub struct KubeSightings(
    #[allow(clippy::type_complexity)]
    std::sync::Arc<std::sync::Mutex<HashMap<Uuid, (DateTime<Utc>, Option<DateTime<Utc>>)>>>,
);

/// Expiry lags of one scenario.
pub struct Report {
    /// Seconds from `expires_at` to the revoke at the cloud, sorted.
    pub lags: Vec<f64>,
    /// Each request's `expires_at` and lag, in the order checked.
    #[allow(dead_code)] // benches/cluster.rs
    pub samples: Vec<(DateTime<Utc>, f64)>,
    pub gate: f64,
    pub chain_length: i64,
}

impl Report {
    pub fn pct(&self, p: f64) -> f64 {
        if self.lags.is_empty() {
            return 0.0;
        }
        let k = ((self.lags.len() as f64 - 1.0) * p).round() as usize;
        self.lags[k]
    }

    pub fn max(&self) -> f64 {
        self.lags.last().copied().unwrap_or(0.0)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} expiries: lag p50 {:.2} s, p99 {:.2} s, max {:.2} s (gate {:.1} s); audit chain {} events, intact",
            self.lags.len(),
            self.pct(0.5),
            self.pct(0.99),
            self.max(),
            self.gate,
            self.chain_length
        )
    }
}
