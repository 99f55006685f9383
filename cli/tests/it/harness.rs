//! A real jitsudod for the CLI to talk to, run in-process on its own thread and runtime
//! (the same code as the `jitsudod` binary: `dev::prepare` + `Server::build` + `serve`),
//! and people who run the real `jitsudo` binary, each with their own config and state dirs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jitsudo_api::auth::DevIssuer;
use jitsudo_api::config::{Config, ProviderConfig};
use jitsudo_api::server::Server;
use serde_json::Value;

const AUDIENCE: &str = "jitsudo";

pub fn init() {
    jitsudo_testkit::init_crypto();
}

/// One running jitsudod.
pub struct Jitsudod {
    pub url: String,
    pub ca_cert: Option<PathBuf>,
    /// Dev mode's data dir, or the production server's files.
    pub dir: tempfile::TempDir,
    /// The issuer of a production-mode server (tokens are minted here, not by login).
    issuer: Option<Arc<DevIssuer>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Jitsudod {
    /// `jitsudod --dev`: SQLite, demo provider, example policies, built-in issuer, plaintext
    /// on loopback.
    pub fn dev() -> Jitsudod {
        init();
        let dir = tempfile::tempdir().expect("temp dir");
        Self::dev_in(dir, jitsudo_testkit::free_port(), |_| {})
    }

    /// As [`Jitsudod::dev`], on the data dir `dir` (a copy of another server's, say) and
    /// `port`, with a last say over the configuration.
    pub fn dev_in(
        dir: tempfile::TempDir,
        port: u16,
        tune: impl FnOnce(&mut Config) + Send + 'static,
    ) -> Jitsudod {
        init();
        let data = dir.path().to_path_buf();
        Self::spawn(dir, None, None, move || {
            Box::pin(async move {
                let mut config = Config::default();
                config.server.listen = SocketAddr::from(([127, 0, 0, 1], port));
                config.server.shutdown_grace_seconds = 1;
                let (mut config, extras) =
                    jitsudo_api::dev::prepare(config, &data).expect("dev mode prepares");
                tune(&mut config);
                let server = Server::build(config, Some(extras))
                    .await
                    .expect("jitsudod --dev builds");
                jitsudo_api::dev::install_example_policies(&server.state.engine)
                    .await
                    .expect("example policies install");
                (server, None)
            })
        })
    }

    /// Stops the server and hands back its data dir (its SQLite database and keys).
    pub fn stop(mut self) -> tempfile::TempDir {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, dir)
    }

    /// A production-mode jitsudod: PostgreSQL, TLS with its own CA, an OpenID issuer on
    /// another port, the demo provider and the example policies.
    pub fn postgres() -> Jitsudod {
        Self::postgres_with_issuer(None)
    }

    /// As [`Jitsudod::postgres`]; with `Some(url)`, tokens come from that OpenID provider
    /// (audience `jitsudo`) instead of the built-in test issuer.
    pub fn postgres_with_issuer(external_issuer: Option<String>) -> Jitsudod {
        Self::postgres_full(external_issuer, vec![ProviderConfig::demo("demo")], |_| {})
    }

    /// As [`Jitsudod::postgres`] with these providers instead of the demo one, and a last
    /// say over the configuration.
    pub fn postgres_with_providers(
        providers: Vec<ProviderConfig>,
        tune: impl FnOnce(&mut Config) + Send + 'static,
    ) -> Jitsudod {
        Self::postgres_full(None, providers, tune)
    }

    fn postgres_full(
        external_issuer: Option<String>,
        providers: Vec<ProviderConfig>,
        tune: impl FnOnce(&mut Config) + Send + 'static,
    ) -> Jitsudod {
        init();
        let external = external_issuer.is_some();
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        let certs = jitsudo_api::certs::generate(
            &root.join("certs"),
            &["localhost".to_owned(), "127.0.0.1".to_owned()],
            "client",
        )
        .expect("test certificates");
        let ca = certs.ca_cert.clone();
        let (issuer_tx, issuer_rx) = std::sync::mpsc::channel();
        let issuer_tx = (!external).then_some(issuer_tx);
        let mut jd = Self::spawn(dir, Some(ca), issuer_tx, move || {
            Box::pin(async move {
                let db = jitsudo_testkit::postgres().await;
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind the issuer");
                let test_issuer_url = format!(
                    "http://{}{}",
                    listener.local_addr().expect("issuer address"),
                    DevIssuer::MOUNT_PATH
                );
                let issuer_dir = root.join("issuer");
                std::fs::create_dir_all(&issuer_dir).expect("issuer dir");
                let issuer = Arc::new(
                    DevIssuer::load_or_create(&issuer_dir, &test_issuer_url, AUDIENCE)
                        .expect("issuer"),
                );
                let app = axum::Router::new().nest(DevIssuer::MOUNT_PATH, issuer.clone().router());
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                });
                let issuer_url = external_issuer.unwrap_or(test_issuer_url);
                let audit_key = root.join("audit-signing-key.pem");
                jitsudo_actors::audit::generate_signing_key(&audit_key).expect("audit key");
                let mut config = Config::default();
                config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
                config.server.tls_cert = Some(certs.server_cert.clone());
                config.server.tls_key = Some(certs.server_key.clone());
                config.server.shutdown_grace_seconds = 1;
                config.database.url = db.url.clone();
                config.node.name = "cli-it".into();
                config.node.shards = 4;
                config.auth.issuer = issuer_url;
                config.auth.audience = AUDIENCE.into();
                if external {
                    // Expired means expired: the refresh test checks the old token is refused.
                    config.auth.leeway_seconds = 0;
                }
                config.audit.signing_key = Some(audit_key);
                config.audit.checkpoint_every = 5;
                config.audit.checkpoint_interval_seconds = 1;
                config.providers = providers;
                tune(&mut config);
                let server = Server::build(config, None)
                    .await
                    .expect("jitsudod builds on PostgreSQL");
                for p in jitsudo_actors::policy::dev_example_policies() {
                    server
                        .state
                        .engine
                        .policy()
                        .apply(&p.name, &p.rego, "test-setup")
                        .await
                        .expect("example policies compile");
                }
                (server, Some((issuer, db)))
            })
        });
        if !external {
            jd.issuer = Some(
                issuer_rx
                    .recv_timeout(Duration::from_secs(60))
                    .expect("the issuer starts"),
            );
        }
        jd
    }

    #[allow(clippy::type_complexity)]
    fn spawn(
        dir: tempfile::TempDir,
        ca_cert: Option<PathBuf>,
        issuer_tx: Option<std::sync::mpsc::Sender<Arc<DevIssuer>>>,
        build: impl FnOnce() -> std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = (
                            Server,
                            Option<(Arc<DevIssuer>, jitsudo_testkit::TestDatabase)>,
                        ),
                    > + Send,
            >,
        > + Send
        + 'static,
    ) -> Jitsudod {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("server runtime");
            rt.block_on(async move {
                let (server, extra) = build().await;
                let (issuer, _db) = match extra {
                    Some((i, db)) => (Some(i), Some(db)),
                    None => (None, None),
                };
                if let (Some(tx), Some(i)) = (issuer_tx, issuer) {
                    let _ = tx.send(i);
                }
                let _ = ready_tx.send(server.local_addr());
                server
                    .serve(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("jitsudod serves");
            });
        });
        let addr = ready_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("jitsudod starts");
        let scheme = if ca_cert.is_some() { "https" } else { "http" };
        Jitsudod {
            url: format!("{scheme}://{addr}"),
            ca_cert,
            dir,
            issuer: None,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Someone with their own config and state dirs. On a production server they carry a
    /// token from the test issuer (JITSUDO_TOKEN); on a dev server they log in with `--dev`.
    pub fn user(&self, name: &str) -> User {
        let token = self.issuer.as_ref().map(|i| {
            i.mint(name)
                .unwrap_or_else(|e| panic!("the test issuer mints for {name}: {e}"))
        });
        User {
            name: name.to_owned(),
            home: tempfile::tempdir().expect("user home"),
            server: self.url.clone(),
            ca_cert: self.ca_cert.clone(),
            token,
        }
    }

    /// The dev data dir's audit public key, as PEM (dev mode only).
    pub fn dev_audit_public_key(&self, out: &Path) {
        let key =
            jitsudo_actors::audit::load_signing_key(&self.dir.path().join("audit-signing-key.pem"))
                .expect("the dev audit key");
        std::fs::write(out, jitsudo_actors::audit::public_key_pem(&key)).expect("write key");
    }
}

impl Drop for Jitsudod {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct User {
    pub name: String,
    pub home: tempfile::TempDir,
    server: String,
    ca_cert: Option<PathBuf>,
    token: Option<String>,
}

/// What one run of `jitsudo` did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from_output(o: Output) -> Run {
        Run::from(o)
    }

    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "jitsudo failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn fails(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

impl User {
    /// Someone whose server answers nothing (port 1): for commands that must work offline.
    pub fn offline(name: &str) -> User {
        User {
            name: name.to_owned(),
            home: tempfile::tempdir().expect("user home"),
            server: "http://127.0.0.1:1".into(),
            ca_cert: None,
            token: None,
        }
    }

    /// The `jitsudo` binary with this user's environment.
    pub fn command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_jitsudo"));
        for (k, _) in std::env::vars() {
            if k.starts_with("JITSUDO_") || k == "NO_COLOR" {
                c.env_remove(k);
            }
        }
        c.env("JITSUDO_SERVER", &self.server)
            .env("JITSUDO_CONFIG_DIR", self.home.path().join("config"))
            .env("JITSUDO_STATE_DIR", self.home.path().join("state"))
            .env("TZ", "UTC")
            .env("NO_COLOR", "1");
        if let Some(t) = &self.token {
            c.env("JITSUDO_TOKEN", t);
        }
        if let Some(ca) = &self.ca_cert {
            c.env("JITSUDO_CA_CERT", ca);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = self
            .command()
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run jitsudo");
        Run::from(out)
    }

    /// `jitsudo … -o json`, which must succeed.
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        self.run(&all).ok().json()
    }

    /// Logs in to a dev server as this user.
    #[track_caller]
    pub fn login_dev(&self) {
        let name = self.name.clone();
        let r = self.run(&["login", "--dev", &name]).ok();
        assert!(
            r.stderr.contains(&format!("as {name}")),
            "login says who: {}",
            r.stderr
        );
    }
}

/// Polls `f` until it answers `Some`, for at most `secs` seconds.
#[track_caller]
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `jitsudo request` for the demo provider's demo-account.
pub fn demo_request<'a>(role: &'a str, duration: &'a str, reason: &'a str) -> Vec<&'a str> {
    vec![
        "request",
        "--provider",
        "demo",
        "--role",
        role,
        "--scope",
        "demo-account",
        "--duration",
        duration,
        "--reason",
        reason,
    ]
}

pub fn state(v: &Value) -> &str {
    v["state"].as_str().unwrap_or_default()
}

pub fn id(v: &Value) -> String {
    v["id"].as_str().expect("a request id").to_owned()
}
