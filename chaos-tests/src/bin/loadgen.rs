//! jitsudo-loadgen: C concurrent clients drive a running jitsudod over real gRPC (+ TLS),
//! then pgbench runs with the same client count on the same PostgreSQL for the same time,
//! so the result is a ratio against a baseline measured in the same run.
//!
//!   jitsudo-loadgen --server https://127.0.0.1:8443 --ca-cert certs/ca.pem \
//!       --dev-issuer https://127.0.0.1:8443/dev/oidc --clients 16 --seconds 20 \
//!       --pgbench-url postgres://postgres@127.0.0.1:5432/loadgen_pgbench
//!
//! Mode `throughput` creates auto-approved requests that stay ACTIVE and measures
//! create→ACTIVE; mode `expiry` creates short requests and measures expiry lag.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use jitsudo_chaos::{cpu_seconds, pct};
use jitsudo_proto::v1;
use jitsudo_proto::v1::request_service_client::RequestServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Throughput,
    Expiry,
}

#[derive(Parser, Debug)]
#[command(
    name = "jitsudo-loadgen",
    about = "Load generator for jitsudod, with a pgbench baseline"
)]
struct Cli {
    #[arg(long, default_value = "throughput")]
    mode: Mode,
    /// jitsudod address (https://… for TLS).
    #[arg(long)]
    server: String,
    /// CA certificate of the server (PEM).
    #[arg(long)]
    ca_cert: Option<std::path::PathBuf>,
    /// A bearer token; or use --dev-issuer.
    #[arg(long, env = "JITSUDO_TOKEN")]
    token: Option<String>,
    /// A dev-mode issuer (…/dev/oidc) to mint a token for --user.
    #[arg(long)]
    dev_issuer: Option<String>,
    #[arg(long, default_value = "alice")]
    user: String,
    #[arg(long, default_value_t = 8)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value = "demo")]
    provider: String,
    #[arg(long, default_value = "viewer")]
    role: String,
    /// Duration of each request (throughput: long enough not to expire during the run).
    #[arg(long, default_value_t = 3000)]
    duration_seconds: i64,
    /// PostgreSQL URL for the pgbench baseline (a scratch database; it is initialised).
    #[arg(long)]
    pgbench_url: Option<String>,
    /// jitsudod's process id, to report its CPU time.
    #[arg(long)]
    server_pid: Option<u32>,
}

async fn token(cli: &Cli) -> Result<String> {
    if let Some(t) = &cli.token {
        return Ok(t.clone());
    }
    let Some(issuer) = &cli.dev_issuer else {
        bail!("give --token (or JITSUDO_TOKEN) or --dev-issuer")
    };
    let mut b = reqwest::Client::builder();
    if let Some(ca) = &cli.ca_cert {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca)?)?);
    }
    let resp: serde_json::Value = b
        .build()?
        .post(format!("{issuer}/token"))
        .json(&serde_json::json!({ "username": cli.user }))
        .send()
        .await?
        .json()
        .await?;
    resp["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("the dev issuer returned no access_token")
}

async fn channel(cli: &Cli) -> Result<Channel> {
    let mut ep = Endpoint::from_shared(cli.server.clone())?.tcp_nodelay(true);
    if cli.server.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().domain_name("localhost");
        if let Some(ca) = &cli.ca_cert {
            tls = tls.ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
        }
        ep = ep.tls_config(tls)?;
    }
    Ok(ep.connect().await?)
}

struct Sample {
    create_to_active: f64,
    issue_lag: Option<f64>,
    confirmed_lag: Option<f64>,
}

fn with_auth<T>(m: T, auth: &MetadataValue<tonic::metadata::Ascii>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut().insert("authorization", auth.clone());
    r
}

async fn one(
    client: &mut RequestServiceClient<Channel>,
    auth: &MetadataValue<tonic::metadata::Ascii>,
    cli: &Cli,
    mode: Mode,
) -> Result<Sample> {
    let started = Instant::now();
    let created = client
        .create_request(with_auth(
            v1::CreateRequestRequest {
                provider: cli.provider.clone(),
                role: cli.role.clone(),
                scope: "loadgen".into(),
                duration_seconds: cli.duration_seconds,
                reason: "load test".into(),
                idempotency_key: uuid::Uuid::now_v7().to_string(),
                ..Default::default()
            },
            auth,
        ))
        .await?
        .into_inner();
    let mut stream = client
        .watch_request(with_auth(
            v1::WatchRequestRequest {
                id: created.id.clone(),
                after_version: 0,
            },
            auth,
        ))
        .await?
        .into_inner();
    let mut active_at = None;
    let mut ending_at = None;
    let mut last = None;
    while let Some(ev) = stream.message().await? {
        if ev.state == v1::RequestState::Active as i32 && active_at.is_none() {
            active_at = Some(started.elapsed().as_secs_f64());
            if matches!(mode, Mode::Throughput) {
                break;
            }
        }
        if ev.state == v1::RequestState::Ending as i32 {
            ending_at = ev.at;
        }
        if ev.request.is_some() {
            last = ev.request.clone();
        }
    }
    let Some(create_to_active) = active_at else {
        bail!("request {} never became ACTIVE", created.id)
    };
    let secs = |t: &pbjson_types::Timestamp| t.seconds as f64 + t.nanos as f64 / 1e9;
    let (mut issue_lag, mut confirmed_lag) = (None, None);
    if let (Mode::Expiry, Some(r)) = (mode, last)
        && let Some(exp) = &r.expires_at
    {
        issue_lag = ending_at.as_ref().map(|e| secs(e) - secs(exp));
        confirmed_lag = r.ended_at.as_ref().map(|e| secs(e) - secs(exp));
    }
    Ok(Sample {
        create_to_active,
        issue_lag,
        confirmed_lag,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .ok();
    let cli = Arc::new(Cli::parse());
    let token = token(&cli).await?;
    let auth: MetadataValue<_> = format!("Bearer {token}").parse()?;
    let ch = channel(&cli).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let cpu0 = cli.server_pid.and_then(cpu_seconds);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..cli.clients {
        let (cli, auth, stop, errors) = (cli.clone(), auth.clone(), stop.clone(), errors.clone());
        let mut client = RequestServiceClient::new(ch.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match one(&mut client, &auth, &cli, cli.mode).await {
                    Ok(s) => samples.push(s),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("error: {e:#}");
                        }
                    }
                }
            }
            samples
        }));
    }
    tokio::time::sleep(Duration::from_secs(cli.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await?);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = match (cpu0, cli.server_pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let mut lat: Vec<f64> = samples
        .iter()
        .map(|s| s.create_to_active * 1000.0)
        .collect();
    lat.sort_by(f64::total_cmp);
    let rps = samples.len() as f64 / elapsed;
    println!(
        "mode {:?}, {} clients, {:.1} s",
        cli.mode, cli.clients, elapsed
    );
    println!(
        "requests completed: {} ({:.1}/s), errors: {}",
        samples.len(),
        rps,
        errors.load(Ordering::Relaxed)
    );
    println!(
        "commits/s (create + approve + active = 3 per request): {:.1}",
        rps * 3.0
    );
    println!(
        "create→ACTIVE ms: p50 {:.1}  p99 {:.1}  max {:.1}",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    if let Some(c) = cpu {
        println!(
            "jitsudod CPU: {:.1} s over {:.1} s = {:.0}% of one core",
            c,
            elapsed,
            100.0 * c / elapsed
        );
    }
    if matches!(cli.mode, Mode::Expiry) {
        let mut issue: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.issue_lag.map(|x| x * 1000.0))
            .collect();
        let mut conf: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.confirmed_lag.map(|x| x * 1000.0))
            .collect();
        issue.sort_by(f64::total_cmp);
        conf.sort_by(f64::total_cmp);
        println!(
            "expiry: ENDING committed − expires_at ms: p50 {:.1} p99 {:.1} max {:.1}",
            pct(&issue, 0.5),
            pct(&issue, 0.99),
            issue.last().copied().unwrap_or(f64::NAN)
        );
        println!(
            "expiry: revoke confirmed (EXPIRED) − expires_at ms: p50 {:.1} p99 {:.1} max {:.1}",
            pct(&conf, 0.5),
            pct(&conf, 0.99),
            conf.last().copied().unwrap_or(f64::NAN)
        );
    }
    if let Some(url) = &cli.pgbench_url {
        let pgbench = ["/usr/lib/postgresql/15/bin/pgbench", "pgbench"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists() || *p == "pgbench")
            .unwrap_or("pgbench");
        let init = std::process::Command::new(pgbench)
            .args(["-i", "-q", "-s", "1", url])
            .output()?;
        if !init.status.success() {
            bail!(
                "pgbench -i failed: {}",
                String::from_utf8_lossy(&init.stderr)
            );
        }
        let out = std::process::Command::new(pgbench)
            .args([
                "-b",
                "tpcb-like",
                "-c",
                &cli.clients.to_string(),
                "-j",
                "2",
                "-T",
                &cli.seconds.to_string(),
                url,
            ])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let tps = text
            .lines()
            .find(|l| l.starts_with("tps"))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse::<f64>().ok())
            .context("could not read pgbench's tps")?;
        println!(
            "pgbench tpcb-like, {} clients, {} s: {:.1} tps",
            cli.clients, cli.seconds, tps
        );
        println!(
            "reference limit (tps ÷ 2 commits per request): {:.1} requests/s; achieved {:.0}% of it",
            tps / 2.0,
            100.0 * rps / (tps / 2.0)
        );
    }
    Ok(())
}
