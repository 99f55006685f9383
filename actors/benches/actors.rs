//! One-node benchmarks of the actor tree on PostgreSQL (docs/benchmarks.md). A plain `main`
//! (`harness = false`) that prints a table and a markdown snippet.
//!
//! - `memory`: RSS growth per live request. An Engine with the demo provider and the dev
//!   example policies; N auto-approved `viewer` requests of 1 h (they stay ACTIVE, each
//!   asleep in its ShardActor with its expiry armed in the shard's wheel), or PENDING ones
//!   with a 30 min approval deadline (`JITSUDO_BENCH_MEMORY_STATE=pending`).
//! - `expiry`: N requests against the http provider's TestServer whose `expires_at` fall in
//!   one second; issue lag (revoke seen at the server − `expires_at`), confirmed lag
//!   (`ended_at` − `expires_at`) and the commit rate of the burst.
//! - `chain`: ~100,000 audit events written through the store (requests and their
//!   transitions), then an AuditSequencer chains them; events chained per second, and the
//!   share of that time that is in-memory hashing.
//! - `pgbench`: baselines on the same server for the ratios (docs/benchmarks.md).
//!
//! Run: `cargo bench -p jitsudo-actors --bench actors [-- memory expiry chain pgbench]`.
//! Settings come from the environment (see `Settings::from_env`). Each part works in its own
//! database `jitsudo_bench_<part>_<uuid>` on the server of `JITSUDO_BENCH_DATABASE_URL`,
//! `DATABASE_URL` or `postgres://postgres@127.0.0.1:5432/postgres`, dropped at the end.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use jitsudo_actors::audit::{SequencerArgs, SequencerHandle, record, verify};
use jitsudo_actors::config::AuditConfig;
use jitsudo_actors::domain::{
    self, Decider, Event, NewRequest, Principal, Request, RequestId, RequestSpec, Rules,
    Transition, grant_id_for,
};
use jitsudo_actors::policy::{PolicyInput, PolicySet, dev_example_policies};
use jitsudo_actors::stats::ActorRegistry;
use jitsudo_actors::store::{self, Fence, Mode, OutboxRow, Persist, SharedStore, Write};
use jitsudo_actors::{Engine, EngineConfig};
use jitsudo_providers::demo::DemoProvider;
use jitsudo_providers::http::server::TestServer;
use jitsudo_providers::http::{HttpProvider, HttpProviderConfig, Op};
use jitsudo_providers::{GrantSpec, Provider, Registry};
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

/// jitsudod's allocator, so that the memory and time figures stand for the server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &[u8] = b"bench-secret-for-the-fake-cloud";
const SHARDS: u32 = 64;
/// Share of each second in which the expiry benchmark creates requests (see `expiry`).
const PHASE: f64 = 0.6;

/// The expiry benchmark's policies (as the engine integration tests): `viewer` is approved
/// automatically, up to a day.
const ELIGIBILITY: &str = r#"
package jitsudo.eligibility

allow if "engineering" in input.requester.groups
"#;
const APPROVAL: &str = r#"
package jitsudo.approval

auto_approve if input.request.role == "viewer"
approvals_required := 1
approver_groups := {"approvers"}
max_duration_seconds := 86400
max_total_duration_seconds := 172800
"#;

// ---------------------------------------------------------------------------------------
// Settings

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MemoryState {
    Active,
    Pending,
}

#[derive(Clone, Debug)]
struct Settings {
    admin_url: String,
    parts: Vec<String>,
    memory_n: usize,
    memory_state: MemoryState,
    memory_warmup: usize,
    expiry_n: usize,
    chain_events: usize,
    /// Live requests in the shard that is taken over.
    takeover_n: usize,
    concurrency: usize,
    pgbench: Option<PathBuf>,
    pgbench_scale: u32,
    pgbench_seconds: u32,
}

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .with_context(|| format!("{name}={v} is not a number")),
        Err(_) => Ok(default),
    }
}

impl Settings {
    /// `JITSUDO_BENCH_DATABASE_URL` (else `DATABASE_URL`, else the local server),
    /// `JITSUDO_BENCH_MEMORY_N` (100000), `JITSUDO_BENCH_MEMORY_STATE` (`active` | `pending`),
    /// `JITSUDO_BENCH_EXPIRY_N` (10000), `JITSUDO_BENCH_CHAIN_EVENTS` (100000),
    /// `JITSUDO_BENCH_CONCURRENCY` (64 creates in flight), `JITSUDO_BENCH_PGBENCH` (path, or
    /// `off`), `JITSUDO_BENCH_PGBENCH_SCALE` (16), `JITSUDO_BENCH_PGBENCH_SECONDS` (10).
    fn from_env() -> Result<Settings> {
        let admin_url = std::env::var("JITSUDO_BENCH_DATABASE_URL")
            .or_else(|_| std::env::var("DATABASE_URL"))
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let known = ["memory", "expiry", "chain", "takeover", "pgbench"];
        let mut parts: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect();
        if let Some(bad) = parts.iter().find(|p| !known.contains(&p.as_str())) {
            bail!("unknown part {bad:?}; the parts are {}", known.join(", "));
        }
        if parts.is_empty() {
            parts = known.iter().map(|s| s.to_string()).collect();
        }
        let memory_state = match std::env::var("JITSUDO_BENCH_MEMORY_STATE").as_deref() {
            Err(_) | Ok("active") => MemoryState::Active,
            Ok("pending") => MemoryState::Pending,
            Ok(other) => bail!("JITSUDO_BENCH_MEMORY_STATE={other}: use active or pending"),
        };
        let pgbench = match std::env::var("JITSUDO_BENCH_PGBENCH") {
            Ok(v) if v == "off" => None,
            Ok(v) => Some(PathBuf::from(v)),
            Err(_) => {
                let installed = PathBuf::from("/usr/lib/postgresql/15/bin/pgbench");
                Some(if installed.exists() {
                    installed
                } else {
                    PathBuf::from("pgbench")
                })
            }
        };
        Ok(Settings {
            admin_url,
            parts,
            memory_n: env_usize("JITSUDO_BENCH_MEMORY_N", 100_000)?,
            memory_state,
            memory_warmup: env_usize("JITSUDO_BENCH_MEMORY_WARMUP", 1_000)?,
            expiry_n: env_usize("JITSUDO_BENCH_EXPIRY_N", 10_000)?,
            chain_events: env_usize("JITSUDO_BENCH_CHAIN_EVENTS", 100_000)?,
            takeover_n: env_usize("JITSUDO_BENCH_TAKEOVER_N", 10_000)?,
            concurrency: env_usize("JITSUDO_BENCH_CONCURRENCY", 64)?.max(1),
            pgbench,
            pgbench_scale: env_usize("JITSUDO_BENCH_PGBENCH_SCALE", 16)? as u32,
            pgbench_seconds: env_usize("JITSUDO_BENCH_PGBENCH_SECONDS", 10)? as u32,
        })
    }

    fn runs(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }
}

// ---------------------------------------------------------------------------------------
// Databases

/// `postgres://user@host:port[/db][?query]` with another database.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

struct BenchDb {
    admin_url: String,
    name: String,
    url: String,
}

impl BenchDb {
    async fn create(admin_url: &str, part: &str) -> Result<BenchDb> {
        let name = format!("jitsudo_bench_{part}_{}", Uuid::now_v7().simple());
        let mut c = PgConnection::connect(admin_url)
            .await
            .with_context(|| format!("connecting to {admin_url}"))?;
        c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .await
            .context("creating the benchmark database")?;
        Ok(BenchDb {
            admin_url: admin_url.into(),
            url: with_database(admin_url, &name),
            name,
        })
    }

    async fn connect(&self) -> Result<PgConnection> {
        Ok(PgConnection::connect(&self.url).await?)
    }

    async fn drop_db(self) {
        let res = async {
            let mut c = PgConnection::connect(&self.admin_url).await?;
            c.execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            )))
            .await?;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        if let Err(e) = res {
            eprintln!("could not drop database {}: {e}", self.name);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

/// Resident set size of this process, KiB (`VmRSS` of /proc/self/status).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds this process has used (utime + stime of /proc/self/stat, at 100 ticks/s).
fn process_cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

/// (busy, total) CPU seconds of the whole machine so far (/proc/stat, 100 ticks/s).
fn machine_cpu_secs() -> (f64, f64) {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let v: Vec<f64> = s
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: f64 = v.iter().take(8).sum();
            let idle = v.get(3)? + v.get(4)?;
            Some(((total - idle) / 100.0, total / 100.0))
        })
        .unwrap_or((0.0, 0.0))
}

/// The `p`-quantile (0..=1) of sorted values (nearest rank).
fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Clone, Copy, Debug, Default)]
struct Dist {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
    min: f64,
}

impl Dist {
    fn of(mut v: Vec<f64>) -> Dist {
        v.sort_by(f64::total_cmp);
        Dist {
            n: v.len(),
            p50: quantile(&v, 0.50),
            p99: quantile(&v, 0.99),
            max: v.last().copied().unwrap_or(f64::NAN),
            min: v.first().copied().unwrap_or(f64::NAN),
        }
    }

    fn ms(&self) -> String {
        format!(
            "p50 {:.0} ms · p99 {:.0} ms · max {:.0} ms (min {:.0} ms, n={})",
            self.p50, self.p99, self.max, self.min, self.n
        )
    }
}

fn alice() -> Principal {
    Principal::new("alice")
        .with_groups(["engineering"])
        .with_verified_email("alice@example.com")
}

fn spec(provider: &str, role: &str, duration_seconds: i64) -> RequestSpec {
    RequestSpec {
        provider: provider.into(),
        role: role.into(),
        scope: "acct-123456789012".into(),
        duration_seconds,
        reason: "benchmark: investigating INC-4711".into(),
        ticket: None,
        break_glass: false,
        metadata: BTreeMap::from([("team".to_string(), "payments".to_string())]),
    }
}

/// One requester makes every request here: the per-person cap on open requests is off.
fn config(node: &str) -> EngineConfig {
    EngineConfig {
        node: node.into(),
        shards: SHARDS,
        rules: jitsudo_actors::domain::Rules {
            max_open_per_requester: 0,
            ..jitsudo_actors::domain::Rules::default()
        },
        ..EngineConfig::default()
    }
}

/// The spec of request `i`, or how long to wait before asking again.
type SpecFor = Arc<dyn Fn(usize) -> Result<RequestSpec, Duration> + Send + Sync>;

/// Creates requests `0..n` through the engine, `concurrency` at a time (worker tasks that
/// pull the next index, so that no task per request waits in memory). Returns the ids (if
/// `keep_ids`) and the number of failed creates.
async fn create_many(
    engine: &Arc<Engine>,
    n: usize,
    concurrency: usize,
    keep_ids: bool,
    spec_for: SpecFor,
) -> (Vec<RequestId>, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(n.max(1)) {
        let (engine, next, failed, spec_for) = (
            engine.clone(),
            next.clone(),
            failed.clone(),
            spec_for.clone(),
        );
        workers.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let spec = loop {
                    match spec_for(i) {
                        Ok(spec) => break spec,
                        Err(wait) => tokio::time::sleep(wait).await,
                    }
                };
                match engine.create(alice(), spec).await {
                    Ok(req) if keep_ids => ids.push(req.id),
                    Ok(_) => {}
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("create {i} failed: {e}");
                        }
                    }
                }
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = workers.join_next().await {
        ids.extend(r.unwrap_or_default());
    }
    (ids, failed.load(Ordering::Relaxed))
}

/// Polls until `count(*) FROM requests WHERE state = $state` reaches `want`; returns how
/// many there were at the end.
async fn wait_state(
    c: &mut PgConnection,
    state: &str,
    want: i64,
    timeout: Duration,
) -> Result<i64> {
    let deadline = Instant::now() + timeout;
    loop {
        let have: i64 = sqlx::query_scalar("SELECT count(*) FROM requests WHERE state = $1")
            .bind(state)
            .fetch_one(&mut *c)
            .await?;
        if have >= want || Instant::now() > deadline {
            return Ok(have);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn start_engine(
    db: &BenchDb,
    node: &str,
    providers: Registry,
    policies: &[(String, String)],
) -> Result<(Arc<Engine>, SharedStore)> {
    let store = store::open(&db.url, Mode::Dev).await?;
    let engine = Engine::start(config(node), store.clone(), providers).await?;
    for (name, rego) in policies {
        engine.policy().apply(name, rego, "bench").await?;
    }
    Ok((Arc::new(engine), store))
}

async fn stop_engine(engine: Arc<Engine>) -> Duration {
    let t = Instant::now();
    match Arc::try_unwrap(engine) {
        Ok(e) => e.shutdown().await,
        Err(_) => eprintln!("engine still shared; not shut down"),
    }
    t.elapsed()
}

// ---------------------------------------------------------------------------------------
// takeover

#[derive(Debug)]
struct TakeoverResult {
    n: usize,
    /// `Engine::start` of the successor: join, acquire the shard, load its live requests
    /// and arm every deadline.
    start_secs: f64,
    /// Live requests the successor lists right after its start returned.
    listed: usize,
    asleep: usize,
}

/// N ACTIVE requests in one shard (a node configured with one shard); the node stops
/// cleanly (its lease released), and another node takes the shard over: the time until
/// `Engine::start` returns, by which every live request is loaded and its deadline armed.
async fn takeover(s: &Settings, db: &BenchDb) -> Result<TakeoverResult> {
    let n = s.takeover_n;
    let store = store::open(&db.url, Mode::Dev).await?;
    let providers = Registry::new().with(Arc::new(DemoProvider::new()) as Arc<dyn Provider>);
    let one_shard = |node: &str| EngineConfig {
        shards: 1,
        ..config(node)
    };
    let first = Arc::new(
        Engine::start(
            one_shard("bench-takeover-a"),
            store.clone(),
            providers.clone(),
        )
        .await?,
    );
    for p in dev_example_policies() {
        first.policy().apply(&p.name, &p.rego, "bench").await?;
    }
    let spec_for: SpecFor = Arc::new(|_| Ok(spec("demo", "viewer", 3600)));
    let (_, failed) = create_many(&first, n, s.concurrency, false, spec_for).await;
    let mut c = db.connect().await?;
    let active = wait_state(
        &mut c,
        "ACTIVE",
        (n - failed) as i64,
        Duration::from_secs(300),
    )
    .await?;
    println!("takeover: {active} ACTIVE requests in one shard ({failed} creates failed)");
    stop_engine(first).await;

    let t = Instant::now();
    let second = Engine::start(one_shard("bench-takeover-b"), store.clone(), providers).await?;
    let start_secs = t.elapsed().as_secs_f64();
    let listed = second.live_request_count();
    let asleep = second
        .actors()
        .into_iter()
        .filter(|a| a.kind == "shard")
        .filter_map(|a| {
            let n = a.state.rsplit('(').next()?;
            n.split(' ').next()?.parse::<usize>().ok()
        })
        .sum();
    second.shutdown().await;
    Ok(TakeoverResult {
        n: active as usize,
        start_secs,
        listed,
        asleep,
    })
}

// ---------------------------------------------------------------------------------------
// memory

#[derive(Debug, Default)]
struct MemoryResult {
    state: String,
    n: usize,
    failed: usize,
    live_actors: usize,
    create_secs: f64,
    settle_secs: f64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    demo_bytes_per_grant: f64,
    shutdown_secs: f64,
}

impl MemoryResult {
    fn per_request(&self) -> f64 {
        (self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 * 1024.0)
            / self.live_actors.max(1) as f64
    }
}

async fn memory(s: &Settings, db: &BenchDb) -> Result<MemoryResult> {
    let n = s.memory_n;
    let (role, want) = match s.memory_state {
        MemoryState::Active => ("viewer", "ACTIVE"),
        MemoryState::Pending => ("editor", "PENDING"),
    };
    // The demo provider keeps one record per grant in this process: measure its share on a
    // separate instance first, and keep it alive so the engine cannot reuse that memory.
    let probe = DemoProvider::new();
    let mut demo_bytes_per_grant = 0.0;
    if s.memory_state == MemoryState::Active {
        let before = rss_kib();
        let not_after = Utc::now() + chrono::Duration::hours(2);
        for i in 0..n {
            let id = RequestId::new();
            let g = GrantSpec {
                grant_id: grant_id_for(id, 0),
                request_id: id.0,
                subject: "alice".into(),
                role: role.into(),
                scope: "acct-123456789012".into(),
                not_after,
                metadata: BTreeMap::from([("team".to_string(), "payments".to_string())]),
            };
            probe
                .grant(&g)
                .await
                .map_err(|e| anyhow!("demo grant {i}: {e}"))?;
        }
        demo_bytes_per_grant = (rss_kib().saturating_sub(before) as f64 * 1024.0) / n as f64;
    }

    let providers = Registry::new().with(Arc::new(DemoProvider::new()) as Arc<dyn Provider>);
    let policies: Vec<(String, String)> = dev_example_policies()
        .into_iter()
        .map(|p| (p.name, p.rego))
        .collect();
    let (engine, _store) = start_engine(db, "bench-memory", providers, &policies).await?;
    let mut c = db.connect().await?;
    let spec_for: SpecFor = Arc::new(move |_| Ok(spec("demo", role, 3600)));

    // Warm-up: pools, caches, the runtime's and the allocator's arenas.
    let warm = s.memory_warmup;
    let (_, warm_failed) = create_many(&engine, warm, s.concurrency, false, spec_for.clone()).await;
    wait_state(
        &mut c,
        want,
        (warm - warm_failed) as i64,
        Duration::from_secs(120),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before_kib = rss_kib();
    let live_before = engine.context().registry.count("request");

    let t = Instant::now();
    let (_, failed) = create_many(&engine, n, s.concurrency, false, spec_for).await;
    let create_secs = t.elapsed().as_secs_f64();
    let total = (warm - warm_failed + n - failed) as i64;
    let reached = wait_state(&mut c, want, total, Duration::from_secs(900)).await?;
    let settle_secs = t.elapsed().as_secs_f64() - create_secs;
    if reached < total {
        eprintln!("memory: only {reached} of {total} requests reached {want}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after_kib = rss_kib();
    let live_actors = engine
        .context()
        .registry
        .count("request")
        .saturating_sub(live_before);
    drop(c);
    let shutdown = stop_engine(engine).await;
    drop(probe);
    Ok(MemoryResult {
        state: want.into(),
        n,
        failed,
        live_actors,
        create_secs,
        settle_secs,
        rss_before_kib,
        rss_after_kib,
        demo_bytes_per_grant,
        shutdown_secs: shutdown.as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------------------
// expiry

#[derive(Debug, Default)]
struct ExpiryResult {
    n: usize,
    failed: usize,
    create_secs: f64,
    active_before_expiry_secs: f64,
    expires_spread_ms: f64,
    issue_lag: Dist,
    confirmed_lag: Dist,
    revoked: usize,
    expired: usize,
    commits: usize,
    commit_window_secs: f64,
    peak_commits_per_sec: usize,
    /// Database clock minus node clock as the engine estimated it while arming the timers.
    clock_offset_ms: Dist,
    /// The same number of revokes straight through the http provider (no engine).
    direct_revokes_per_sec: f64,
    /// From 200 ms before the burst until every request had ended.
    burst_secs: f64,
    burst_process_cpu: f64,
    burst_machine_busy: f64,
    /// The first 2.2 s of the burst: process CPU (cores) and machine busy share.
    issue_process_cpu: f64,
    issue_machine_busy: f64,
    /// Revokes issued per second by the engine during the burst (first to last).
    issued_per_sec: f64,
}

impl ExpiryResult {
    fn commit_rate(&self) -> f64 {
        self.commits as f64 / self.commit_window_secs.max(1e-9)
    }
}

/// id, expires_at, ended_at, state.
type RequestTimes = (Uuid, Option<DateTime<Utc>>, Option<DateTime<Utc>>, String);

/// The fake cloud on a runtime and thread of its own: a real cloud does not run on the
/// engine's worker threads (it still shares the machine's two cores).
fn start_cloud() -> Result<(TestServer, tokio::runtime::Runtime)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fake-cloud")
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    let server = std::thread::spawn(move || handle.block_on(TestServer::start(SECRET)))
        .join()
        .map_err(|_| anyhow!("the fake cloud did not start"))?;
    Ok((server, rt))
}

async fn expiry(s: &Settings, db: &BenchDb) -> Result<ExpiryResult> {
    let n = s.expiry_n;
    let (server, cloud_runtime) = start_cloud()?;
    let provider = HttpProvider::new(HttpProviderConfig::new("cloud", server.base_url(), SECRET))
        .map_err(|e| anyhow!("{e}"))?;
    let providers = Registry::new().with(Arc::new(provider) as Arc<dyn Provider>);
    let policies = vec![
        ("eligibility".to_string(), ELIGIBILITY.to_string()),
        ("approval".to_string(), APPROVAL.to_string()),
    ];
    let (engine, _store) = start_engine(db, "bench-expiry", providers, &policies).await?;
    let mut c = db.connect().await?;

    // Calibration: how fast requests become ACTIVE here, and how long create → ACTIVE takes.
    let calib = (n / 20).clamp(100, 1000);
    let t = Instant::now();
    let long: SpecFor = Arc::new(|_| Ok(spec("cloud", "viewer", 86_400)));
    let (_, cf) = create_many(&engine, calib, s.concurrency, false, long).await;
    wait_state(
        &mut c,
        "ACTIVE",
        (calib - cf) as i64,
        Duration::from_secs(120),
    )
    .await?;
    let rate = calib as f64 / t.elapsed().as_secs_f64();
    let lag_ms: f64 = sqlx::query_scalar(
        "SELECT (percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM granted_at - created_at)) * 1000)::float8 FROM requests WHERE granted_at IS NOT NULL",
    )
    .fetch_one(&mut c)
    .await?;
    // Every request must be ACTIVE well before the burst: plan for a slower create phase
    // (creates pause 40% of each second, see below).
    let lead = Duration::from_secs_f64(n as f64 / (rate * PHASE) * 1.3 + 8.0);
    let ctx = engine.context().clone();
    let target = ctx.now() + chrono::Duration::from_std(lead)?;
    let target = DateTime::from_timestamp(target.timestamp() + 1, 0).unwrap_or(target);
    println!(
        "expiry: calibration {calib} requests at {rate:.0}/s, create→ACTIVE median {lag_ms:.0} ms; burst at {target} (in {:.0} s)",
        (target - ctx.now()).num_milliseconds() as f64 / 1000.0
    );

    // Each request asks for the duration that makes `granted_at + duration` land in the
    // target second: with x = target − (now + expected time to ACTIVE), duration = ceil(x)
    // puts `expires_at` at target + (ceil(x) − x). Durations are whole seconds, so a create
    // is made only while ceil(x) − x < PHASE (else it waits for the next whole second),
    // which leaves 1 − PHASE of the second for the error of the estimate. The expected time
    // to ACTIVE is the median of the last second's creates, kept current.
    let lag_us = Arc::new(AtomicI64::new((lag_ms * 1000.0) as i64));
    let tracker = {
        let (lag_us, url) = (lag_us.clone(), db.url.clone());
        tokio::spawn(async move {
            let Ok(mut c) = PgConnection::connect(&url).await else {
                return;
            };
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let recent: Option<f64> = sqlx::query_scalar(
                    "SELECT (percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM granted_at - created_at)) * 1e6)::float8
                       FROM requests WHERE granted_at > statement_timestamp() - interval '1 second'",
                )
                .fetch_one(&mut c)
                .await
                .ok()
                .flatten();
                if let Some(us) = recent {
                    lag_us.store(us as i64, Ordering::Relaxed);
                }
            }
        })
    };
    let spec_for: SpecFor = {
        let (ctx, lag_us) = (ctx.clone(), lag_us.clone());
        Arc::new(move |_| {
            let expected_active = ctx.now()
                + chrono::Duration::microseconds(lag_us.load(Ordering::Relaxed))
                // The create's own commit, queued behind the others.
                + chrono::Duration::milliseconds(20);
            let x = (target - expected_active).num_microseconds().unwrap_or(0) as f64 / 1e6;
            let early = x.ceil() - x;
            if early >= PHASE {
                return Err(Duration::from_secs_f64(1.0 - early + 0.001));
            }
            Ok(spec("cloud", "viewer", (x.ceil() as i64).max(1)))
        })
    };
    // The node's estimate of the database clock (docs/engine.md, "Time": timers are armed for
    // `deadline − estimated database now`), sampled while the expiry timers are being armed.
    let offsets = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut v = Vec::new();
            loop {
                v.push(ctx.clock_offset().num_microseconds().unwrap_or(0) as f64 / 1000.0);
                if ctx.now() >= target - chrono::Duration::seconds(2) {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let t = Instant::now();
    let (ids, failed) = create_many(&engine, n, s.concurrency, true, spec_for).await;
    let create_secs = t.elapsed().as_secs_f64();
    tracker.abort();
    let id_list: Vec<Uuid> = ids.iter().map(|i| i.0).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM requests WHERE id = ANY($1) AND state = 'ACTIVE'",
        )
        .bind(&id_list)
        .fetch_one(&mut c)
        .await?;
        if active as usize >= ids.len() || Instant::now() > deadline || ctx.now() >= target {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let active_before_expiry_secs = (target - ctx.now()).num_milliseconds() as f64 / 1000.0;
    println!(
        "expiry: {} requests created in {create_secs:.1} s ({failed} failed); all ACTIVE {active_before_expiry_secs:.1} s before the burst",
        ids.len()
    );

    let clock_offset_ms = Dist::of(offsets.await.unwrap_or_default());
    // The burst: wait until every request has ended (or give up after two minutes).
    tokio::time::sleep(
        (target - chrono::Duration::milliseconds(200) - ctx.now())
            .to_std()
            .unwrap_or_default(),
    )
    .await;
    let (cpu0, (busy0, total0), t0) = (process_cpu_secs(), machine_cpu_secs(), Instant::now());
    // The first two seconds are when the revokes are issued.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let issue_process_cpu = (process_cpu_secs() - cpu0) / 2.2;
    let issue_machine_busy = {
        let (b, t) = machine_cpu_secs();
        (b - busy0) / (t - total0).max(1e-9)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ended: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM requests WHERE id = ANY($1) AND state = 'EXPIRED'",
        )
        .bind(&id_list)
        .fetch_one(&mut c)
        .await?;
        if ended as usize >= ids.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let burst_secs = t0.elapsed().as_secs_f64();
    let burst_process_cpu = process_cpu_secs() - cpu0;
    let (busy1, total1) = machine_cpu_secs();
    let burst_machine_busy = (busy1 - busy0) / (total1 - total0).max(1e-9);
    // Issue lag from the fake cloud's own log; confirmed lag and commits from the store.
    let rows: Vec<RequestTimes> =
        sqlx::query_as("SELECT id, expires_at, ended_at, state FROM requests WHERE id = ANY($1)")
            .bind(&id_list)
            .fetch_all(&mut c)
            .await?;
    let mut first_revoke: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
    for e in server.events() {
        if e.op == Op::Revoke
            && let Some(g) = e.grant_id
        {
            first_revoke.entry(g).or_insert(e.at);
        }
    }
    let mine: std::collections::HashSet<Uuid> = ids.iter().map(|id| grant_id_for(*id, 0)).collect();
    let mut issued: Vec<DateTime<Utc>> = first_revoke
        .iter()
        .filter(|(g, _)| mine.contains(g))
        .map(|(_, at)| *at)
        .collect();
    issued.sort();
    let issued_per_sec = match (issued.first(), issued.last()) {
        (Some(a), Some(b)) if b > a => {
            issued.len() as f64 / ((*b - *a).num_microseconds().unwrap_or(1) as f64 / 1e6)
        }
        _ => f64::NAN,
    };
    let ms = |d: chrono::Duration| d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0;
    let (mut issue, mut confirmed, mut expires) = (Vec::new(), Vec::new(), Vec::new());
    let mut expired = 0;
    for (id, exp, ended, state) in &rows {
        let Some(exp) = *exp else { continue };
        expires.push(exp);
        if state == "EXPIRED" {
            expired += 1;
        }
        if let Some(at) = first_revoke.get(&grant_id_for(RequestId(*id), 0)) {
            issue.push(ms(*at - exp));
        }
        if let Some(end) = ended {
            confirmed.push(ms(*end - exp));
        }
    }
    if let Ok(path) = std::env::var("JITSUDO_BENCH_EXPIRY_CSV") {
        let mut csv = String::from("request_id,expires_at,revoke_seen_at,ended_at\n");
        for (id, exp, ended, _) in &rows {
            let revoke = first_revoke.get(&grant_id_for(RequestId(*id), 0));
            let t = |t: Option<&DateTime<Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
            csv.push_str(&format!(
                "{id},{},{},{}\n",
                t(exp.as_ref()),
                t(revoke),
                t(ended.as_ref())
            ));
        }
        std::fs::write(&path, csv)?;
    }
    expires.sort();
    let expires_spread_ms = match (expires.first(), expires.last()) {
        (Some(a), Some(b)) => ms(*b - *a),
        _ => f64::NAN,
    };
    let commit_times: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT at FROM audit_events WHERE request_id = ANY($1) AND kind IN ('request.ending', 'request.ended') ORDER BY at",
    )
    .bind(&id_list)
    .fetch_all(&mut c)
    .await?;
    let commit_window_secs = match (commit_times.first(), commit_times.last()) {
        (Some(a), Some(b)) => ms(*b - *a) / 1000.0,
        _ => 0.0,
    };
    let mut per_second: BTreeMap<i64, usize> = BTreeMap::new();
    for t in &commit_times {
        *per_second.entry(t.timestamp()).or_default() += 1;
    }
    let peak_commits_per_sec = per_second.values().copied().max().unwrap_or(0);
    println!(
        "expiry: commits per second during the burst: {:?}",
        per_second.values().collect::<Vec<_>>()
    );
    drop(c);
    stop_engine(engine).await;

    // Baseline: the provider path alone — the same number of revokes straight through the
    // http provider to the fake cloud, as many at once as the engine's provider cap (64).
    let direct = Arc::new(
        HttpProvider::new(HttpProviderConfig::new("cloud", server.base_url(), SECRET))
            .map_err(|e| anyhow!("{e}"))?,
    );
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (direct, next) = (direct.clone(), next.clone());
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let id = RequestId::new();
                let g = jitsudo_providers::GrantRecord {
                    grant_id: grant_id_for(id, 0),
                    request_id: id.0,
                    subject: "alice".into(),
                    role: "viewer".into(),
                    scope: "acct-123456789012".into(),
                    not_after: Utc::now() + chrono::Duration::hours(1),
                    provider_ref: String::new(),
                };
                let _ = direct.revoke(&g).await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let direct_revokes_per_sec = n as f64 / t.elapsed().as_secs_f64();
    server.shutdown().await;
    cloud_runtime.shutdown_background();
    Ok(ExpiryResult {
        n: ids.len(),
        failed,
        create_secs,
        active_before_expiry_secs,
        expires_spread_ms,
        revoked: issue.len(),
        issue_lag: Dist::of(issue),
        confirmed_lag: Dist::of(confirmed),
        expired,
        commits: commit_times.len(),
        commit_window_secs,
        peak_commits_per_sec,
        clock_offset_ms,
        direct_revokes_per_sec,
        issued_per_sec,
        burst_secs,
        burst_process_cpu,
        burst_machine_busy,
        issue_process_cpu,
        issue_machine_busy,
    })
}

// ---------------------------------------------------------------------------------------
// chain

#[derive(Debug, Default)]
struct ChainResult {
    events: i64,
    writers: usize,
    write_secs: f64,
    chain_secs: f64,
    chained: i64,
    timed_out: bool,
    unchained_after: i64,
    /// Events chained in each whole second of the run.
    per_second: Vec<i64>,
    read_secs: f64,
    hash_secs: f64,
    verify_secs: f64,
    verify_intact: bool,
}

impl ChainResult {
    fn rate(&self) -> f64 {
        self.chained as f64 / self.chain_secs.max(1e-9)
    }
}

fn outbox(tr: &Transition) -> Vec<OutboxRow> {
    tr.notices
        .iter()
        .map(|n| OutboxRow {
            sink: "log".into(),
            kind: n.kind.as_str().into(),
            payload: n.details.to_string(),
        })
        .collect()
}

/// One request's life through the store: create, approve, grant succeeded, expiry, revoke
/// confirmed — five transitions, five audit events, as the actors would commit them.
async fn request_life(
    store: &SharedStore,
    fence: &Fence,
    new: NewRequest,
    decision: &jitsudo_actors::policy::Decision,
) -> Result<usize> {
    let rules = Rules::default();
    let bob = Decider {
        principal: Principal::new("bob")
            .with_groups(["approvers", "engineering"])
            .with_verified_email("bob@example.com"),
        approver_allowed: true,
        is_admin: false,
    };
    let tr = domain::create(
        new,
        decision.clone(),
        Utc::now(),
        &rules,
        &Default::default(),
    )?;
    let ob = outbox(&tr);
    let w = store.create(fence, persist(&tr, 0, &ob)).await?;
    let mut req = applied(w, tr)?;
    let mut events = 1;
    let grant_id = grant_id_for(req.id, 0);
    let steps = [
        Event::Approve {
            by: bob,
            comment: "looks fine".into(),
        },
        Event::GrantSucceeded {
            grant_id,
            provider_ref: format!("demo:{grant_id}"),
        },
        Event::Expiry {
            expires_at: chrono::DateTime::<Utc>::MIN_UTC,
        },
        Event::RevokeSucceeded { grant_id },
    ];
    for ev in steps {
        let (ev, now) = match ev {
            Event::Expiry { .. } => {
                let at = req.expires_at.ok_or_else(|| anyhow!("no expiry"))?;
                (Event::Expiry { expires_at: at }, at)
            }
            other => (other, Utc::now()),
        };
        let tr = domain::step(&req, ev, now, &rules)?;
        let ob = outbox(&tr);
        let w = store
            .transition(fence, persist(&tr, req.version, &ob))
            .await?;
        req = applied(w, tr)?;
        events += 1;
    }
    Ok(events)
}

fn persist<'a>(tr: &'a Transition, version: i64, ob: &'a [OutboxRow]) -> Persist<'a> {
    Persist {
        request: &tr.next,
        expected_version: version,
        times: &tr.times,
        audit: &tr.audit,
        outbox: ob,
        guard: tr.guard,
        node: "bench-writer",
        idempotency: None,
    }
}

fn applied(w: Write, tr: Transition) -> Result<Request> {
    match w {
        Write::Updated { version, db_now } => {
            let mut req = tr.next;
            req.version = version;
            req.apply_times(&tr.times, db_now);
            Ok(req)
        }
        other => Err(anyhow!("write refused: {other:?}")),
    }
}

async fn chain(s: &Settings, db: &BenchDb) -> Result<ChainResult> {
    let store = store::open(&db.url, Mode::Dev).await?;
    store.init_shards(SHARDS).await?;
    let all: Vec<u32> = (0..SHARDS).collect();
    let leases = store
        .acquire_shards(
            "bench-writer",
            Uuid::now_v7(),
            &all,
            Duration::from_secs(3600),
        )
        .await?;
    let fences: Arc<HashMap<u32, Fence>> = Arc::new(
        leases
            .into_iter()
            .map(|l| (l.fence.shard, l.fence))
            .collect(),
    );
    let set = PolicySet::compile(dev_example_policies())?;
    let request_spec = spec("demo", "editor", 3600);
    let decision = Arc::new(set.evaluate(&PolicyInput::new(
        alice().policy_input(),
        request_spec.policy_input(),
        Utc::now(),
    ))?);

    // Write the events: requests of five transitions each, `concurrency` at a time.
    let requests = s.chain_events.div_ceil(5);
    let t = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..s.concurrency {
        let (store, fences, next, decision, request_spec) = (
            store.clone(),
            fences.clone(),
            next.clone(),
            decision.clone(),
            request_spec.clone(),
        );
        workers.spawn(async move {
            let mut written = 0;
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let new = NewRequest {
                    id: RequestId::new(),
                    requester: alice(),
                    spec: request_spec.clone(),
                };
                let fence = &fences[&new.id.shard(SHARDS)];
                written += request_life(&store, fence, new, &decision).await?;
            }
            Ok::<_, anyhow::Error>(written)
        });
    }
    while let Some(r) = workers.join_next().await {
        r??;
    }
    let write_secs = t.elapsed().as_secs_f64();
    let mut c = db.connect().await?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&mut c)
        .await?;
    println!(
        "chain: wrote {events} audit events ({requests} requests × 5 transitions) in {write_secs:.1} s ({:.0} transitions/s through the store)",
        events as f64 / write_secs
    );
    c.execute("VACUUM ANALYZE").await?;

    // Chain them: one sequencer, production defaults (batches of 1000, poll 200 ms,
    // a signed checkpoint every 1000 events).
    let key = Arc::new(SigningKey::from_bytes(&[7u8; 32]));
    let args = SequencerArgs {
        store: store.clone(),
        node: "bench-sequencer".into(),
        incarnation: Uuid::now_v7(),
        lease_ttl: Duration::from_secs(5),
        config: AuditConfig {
            signing_key: Some(key.clone()),
            ..AuditConfig::default()
        },
        sinks: vec!["log".into()],
        registry: ActorRegistry::default(),
    };
    let budget = Duration::from_secs_f64((events as f64 / 2_000.0).clamp(60.0, 300.0));
    let t = Instant::now();
    let seq = SequencerHandle::spawn(args, None)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let mut progress = Vec::new();
    let mut last_report = Instant::now();
    let (chained, timed_out) = loop {
        let chained: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM audit_chain")
            .fetch_one(&mut c)
            .await?;
        if last_report.elapsed() >= Duration::from_secs(1) {
            progress.push(chained);
            last_report = Instant::now();
        }
        if chained >= events {
            break (chained, false);
        }
        if t.elapsed() > budget {
            break (chained, true);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let chain_secs = t.elapsed().as_secs_f64();
    seq.actor.stop(None);
    let stats = store.audit_stats(None).await?;
    println!(
        "chain: {chained} of {events} events chained in {chain_secs:.1} s; chain length after each second: {progress:?}"
    );

    // The in-memory share: read the chained events back and hash them again.
    let t = Instant::now();
    let mut page_events = Vec::with_capacity(chained as usize);
    let mut after = 0;
    loop {
        let page = store.chain_page(after, 10_000).await?;
        let Some((last, _)) = page.last() else { break };
        after = last.seq;
        page_events.extend(page.into_iter().filter_map(|(_, e)| e));
    }
    let read_secs = t.elapsed().as_secs_f64();
    let records: Vec<_> = page_events.iter().map(record).collect();
    let t = Instant::now();
    let mut prev = jitsudo_proto::audit::GENESIS;
    for r in &records {
        prev = jitsudo_proto::audit::chain_hash(&prev, r);
    }
    let hash_secs = t.elapsed().as_secs_f64();
    std::hint::black_box(prev);
    let t = Instant::now();
    let report = verify(
        store.as_ref(),
        Some(&key.verifying_key()),
        &jitsudo_actors::audit::VerifyOptions::default(),
    )
    .await?;
    let verify_secs = t.elapsed().as_secs_f64();
    Ok(ChainResult {
        events,
        writers: s.concurrency,
        write_secs,
        chain_secs,
        chained,
        timed_out,
        unchained_after: stats.unchained,
        per_second: progress
            .iter()
            .scan(0, |prev, &now| {
                let d = now - *prev;
                *prev = now;
                Some(d)
            })
            .collect(),
        read_secs,
        hash_secs,
        verify_secs,
        verify_intact: report.is_intact() && report.chain_length == chained,
    })
}

// ---------------------------------------------------------------------------------------
// pgbench

#[derive(Debug, Default)]
struct Baselines {
    scale: u32,
    seconds: u32,
    select_only_1: Option<f64>,
    simple_update_1: Option<f64>,
    tpcb_like_16: Option<f64>,
}

fn pgbench_run(bin: &PathBuf, args: &[&str], url: &str) -> Result<Option<f64>> {
    let out = std::process::Command::new(bin)
        .args(args)
        .arg(url)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok()))
}

async fn pgbench(s: &Settings, db: &BenchDb) -> Result<Baselines> {
    let Some(bin) = s.pgbench.clone() else {
        return Ok(Baselines::default());
    };
    let (url, scale, secs) = (db.url.clone(), s.pgbench_scale, s.pgbench_seconds);
    tokio::task::spawn_blocking(move || {
        let (sc, t) = (scale.to_string(), secs.to_string());
        pgbench_run(&bin, &["-i", "-q", "-s", &sc], &url)?;
        let select_only_1 = pgbench_run(&bin, &["-b", "select-only", "-c", "1", "-T", &t], &url)?;
        let simple_update_1 =
            pgbench_run(&bin, &["-b", "simple-update", "-c", "1", "-T", &t], &url)?;
        let tpcb_like_16 = pgbench_run(
            &bin,
            &["-b", "tpcb-like", "-c", "16", "-j", "2", "-T", &t],
            &url,
        )?;
        Ok(Baselines {
            scale,
            seconds: secs,
            select_only_1,
            simple_update_1,
            tpcb_like_16,
        })
    })
    .await?
}

// ---------------------------------------------------------------------------------------
// Report

struct Results {
    memory: Option<MemoryResult>,
    expiry: Option<ExpiryResult>,
    chain: Option<ChainResult>,
    takeover: Option<TakeoverResult>,
    baselines: Option<Baselines>,
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".into(),
    }
}

fn report(r: &Results) {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    if let Some(m) = &r.memory {
        let per = m.per_request();
        rows.push((
            format!("memory per live request ({}, N={})", m.state, m.live_actors),
            format!(
                "{:.0} bytes ({:.2} KiB): RSS {} → {} KiB; demo provider's own records ≈ {:.0} bytes of it; engine alone ≈ {:.2} KiB",
                per,
                per / 1024.0,
                m.rss_before_kib,
                m.rss_after_kib,
                m.demo_bytes_per_grant,
                (per - m.demo_bytes_per_grant) / 1024.0
            ),
            "≤ 8 KiB".into(),
        ));
        rows.push((
            "creating them".into(),
            format!(
                "{:.1} s for {} creates ({:.0}/s, {} failed) + {:.1} s until all {}; shutdown {:.1} s",
                m.create_secs,
                m.n,
                m.n as f64 / m.create_secs,
                m.failed,
                m.settle_secs,
                m.state,
                m.shutdown_secs
            ),
            String::new(),
        ));
    }
    if let Some(t) = &r.takeover {
        rows.push((
            format!("takeover of a shard holding {} live requests", t.n),
            format!(
                "{:.2} s until the successor's start returned, every deadline armed ({} listed, {} asleep in the wheel)",
                t.start_secs, t.listed, t.asleep
            ),
            "≤ 2 s".into(),
        ));
    }
    if let Some(e) = &r.expiry {
        rows.push((
            format!("expiry burst: issue lag (N={})", e.n),
            e.issue_lag.ms(),
            "p99 ≤ 100 ms".into(),
        ));
        rows.push((
            "expiry burst: revoke throughput".into(),
            format!(
                "engine issued {:.0} revokes/s (first to last); the provider path alone ({} revokes, 64 at once, no engine) {:.0}/s; ratio {:.2}",
                e.issued_per_sec,
                e.n,
                e.direct_revokes_per_sec,
                e.issued_per_sec / e.direct_revokes_per_sec
            ),
            String::new(),
        ));
        rows.push((
            "expiry burst: CPU".into(),
            format!(
                "{:.1} s from the burst until all ended: this process (engine + fake cloud) used {:.1} CPU-s ({:.0} µs per expired request), the machine's 2 cores were {:.0}% busy (the rest is mostly PostgreSQL); in the first 2.2 s (the revokes): this process {:.2} cores, machine {:.0}% busy",
                e.burst_secs,
                e.burst_process_cpu,
                e.burst_process_cpu * 1e6 / e.n.max(1) as f64,
                e.burst_machine_busy * 100.0,
                e.issue_process_cpu,
                e.issue_machine_busy * 100.0
            ),
            String::new(),
        ));
        rows.push((
            "expiry burst: engine's db-clock offset estimate".into(),
            format!(
                "while the timers were armed: p50 {:.0} ms, min {:.0} ms, max {:.0} ms (database and node share one clock here: the true offset is 0)",
                e.clock_offset_ms.p50, e.clock_offset_ms.min, e.clock_offset_ms.max
            ),
            String::new(),
        ));
        rows.push((
            "expiry burst: confirmed lag".into(),
            e.confirmed_lag.ms(),
            "reported".into(),
        ));
        let tpcb = r.baselines.as_ref().and_then(|b| b.tpcb_like_16);
        rows.push((
            "expiry burst: commit rate".into(),
            format!(
                "{:.0} transitions/s ({} commits in {:.1} s; peak second {}); ÷ pgbench tpcb-like 16 clients = {}",
                e.commit_rate(),
                e.commits,
                e.commit_window_secs,
                e.peak_commits_per_sec,
                ratio(e.commit_rate(), tpcb)
            ),
            "reported".into(),
        ));
        rows.push((
            "expiry burst: setup".into(),
            format!(
                "expires_at of all {} within {:.0} ms; {} revoked, {} EXPIRED; created in {:.1} s ({} failed), all ACTIVE {:.1} s before the burst",
                e.n,
                e.expires_spread_ms,
                e.revoked,
                e.expired,
                e.create_secs,
                e.failed,
                e.active_before_expiry_secs
            ),
            String::new(),
        ));
    }
    if let Some(c) = &r.chain {
        let b = r.baselines.as_ref();
        rows.push((
            format!("audit chaining on PostgreSQL ({} events)", c.events),
            format!(
                "{:.0} events/s ({} chained in {:.1} s{}; unchained after: {}); ÷ pgbench simple-update 1 client = {}, ÷ select-only 1 client = {}",
                c.rate(),
                c.chained,
                c.chain_secs,
                if c.timed_out { ", TIMED OUT" } else { "" },
                c.unchained_after,
                ratio(c.rate(), b.and_then(|b| b.simple_update_1)),
                ratio(c.rate(), b.and_then(|b| b.select_only_1)),
            ),
            "≥ 20,000 events/s".into(),
        ));
        if let (Some(first), Some(last)) = (c.per_second.first(), c.per_second.last()) {
            rows.push((
                "chaining: events per second over the run".into(),
                format!(
                    "first second {first}, last whole second {last} (each second: {:?})",
                    c.per_second
                ),
                String::new(),
            ));
        }
        rows.push((
            "chaining: in-memory hashing share".into(),
            format!(
                "{:.3} s hashing of {:.1} s chaining = {:.1}% ({:.0} events/s in memory); reading the chain back {:.1} s",
                c.hash_secs,
                c.chain_secs,
                100.0 * c.hash_secs / c.chain_secs.max(1e-9),
                c.chained as f64 / c.hash_secs.max(1e-9),
                c.read_secs
            ),
            String::new(),
        ));
        rows.push((
            "verify (store → report)".into(),
            format!(
                "{:.0} events/s ({:.1} s, intact: {})",
                c.chained as f64 / c.verify_secs.max(1e-9),
                c.verify_secs,
                c.verify_intact
            ),
            String::new(),
        ));
        rows.push((
            "writing the events through the store".into(),
            format!(
                "{:.0} transitions/s ({:.1} s, {} concurrent requests)",
                c.events as f64 / c.write_secs.max(1e-9),
                c.write_secs,
                c.writers
            ),
            String::new(),
        ));
    }
    if let Some(b) = &r.baselines {
        let f = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.0} tps"));
        rows.push((
            format!("pgbench baseline (scale {}, {} s each)", b.scale, b.seconds),
            format!(
                "select-only 1 client {}; simple-update 1 client {}; tpcb-like 16 clients {}",
                f(b.select_only_1),
                f(b.simple_update_1),
                f(b.tpcb_like_16)
            ),
            String::new(),
        ));
    }
    println!("\n=== jitsudo actor benchmarks (one node, PostgreSQL) ===");
    for (what, value, target) in &rows {
        println!(
            "{what:<48} {value}{}",
            if target.is_empty() {
                String::new()
            } else {
                format!("   [target {target}]")
            }
        );
    }
    println!("\n## actor benchmarks (markdown)\n");
    println!("| measurement | result | target |");
    println!("|---|---|---|");
    for (what, value, target) in &rows {
        println!("| {what} | {value} | {target} |");
    }
}

// ---------------------------------------------------------------------------------------

async fn part<T, F, Fut>(s: &Settings, name: &str, f: F) -> Option<T>
where
    F: FnOnce(Settings, BenchDb) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    if !s.runs(name) {
        return None;
    }
    println!("--- {name} ---");
    let db = match BenchDb::create(&s.admin_url, name).await {
        Ok(db) => db,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            return None;
        }
    };
    let handle = BenchDb {
        admin_url: db.admin_url.clone(),
        name: db.name.clone(),
        url: db.url.clone(),
    };
    let started = Instant::now();
    // In its own task, so that a panic still lets the database be dropped.
    let res = tokio::spawn(f(s.clone(), db)).await;
    handle.drop_db().await;
    match res {
        Ok(Ok(v)) => {
            println!(
                "--- {name} done in {:.1} s ---",
                started.elapsed().as_secs_f64()
            );
            Some(v)
        }
        Ok(Err(e)) => {
            eprintln!("{name} failed: {e:#}");
            None
        }
        Err(e) => {
            eprintln!("{name} panicked: {e}");
            None
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .ok();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let s = Settings::from_env()?;
    println!(
        "settings: parts {:?}; memory N={} ({:?}); expiry N={}; chain {} events; {} creates in flight; server {}",
        s.parts, s.memory_n, s.memory_state, s.expiry_n, s.chain_events, s.concurrency, s.admin_url
    );
    // Memory first, while the heap is fresh.
    let memory = part(&s, "memory", |s, db| async move { memory(&s, &db).await }).await;
    let expiry = part(&s, "expiry", |s, db| async move { expiry(&s, &db).await }).await;
    let chain = part(&s, "chain", |s, db| async move { chain(&s, &db).await }).await;
    let takeover = part(
        &s,
        "takeover",
        |s, db| async move { takeover(&s, &db).await },
    )
    .await;
    let baselines = part(&s, "pgbench", |s, db| async move { pgbench(&s, &db).await }).await;
    let results = Results {
        memory,
        expiry,
        chain,
        takeover,
        baselines,
    };
    report(&results);
    Ok(())
}
