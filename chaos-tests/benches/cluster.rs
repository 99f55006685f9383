//! Cluster benchmarks of issue 7, on real processes: three `jitsudod` nodes (the chaos
//! harness: TLS, one PostgreSQL, the mesh with mutual TLS, the http provider's reference
//! server as the cloud), driven through the public gRPC API.
//!
//! - `routed`: what a call costs when it lands on a node that does not own the request and
//!   travels over the mesh to the owner, against the same call sent to the owner. Two kinds
//!   of call, alternating between the two nodes: an approval refused by the owner (the
//!   requester approving her own request: the owner decides, nothing is written, so the
//!   difference is the hop alone) and a real approval (one commit).
//! - `steady`: N live requests whose expiries are spread evenly over a window of W seconds
//!   (N/W a second), while new requests arrive at the same rate; issue lag = the revoke at
//!   the cloud − `expires_at`. The baseline, measured in the same run and process: how late
//!   a plain tokio timer in this benchmark fires on the same schedule.
//!
//! ```sh
//! cargo build --release -p jitsudo-api --bin jitsudod     # the nodes (target/release)
//! cargo bench -p jitsudo-chaos --bench cluster             # both parts
//! cargo bench -p jitsudo-chaos --bench cluster -- routed   # one part: routed | steady
//! ```
//!
//! Settings (environment): `JITSUDO_BENCH_ROUTED_N` (calls of each kind through each node,
//! default 2000), `JITSUDO_BENCH_STEADY_N` (live requests, default 30000),
//! `JITSUDO_BENCH_STEADY_WINDOW` (seconds, default 600), `JITSUDO_BENCH_CONCURRENCY`
//! (creates in flight while loading, default 32), `DATABASE_URL` (the PostgreSQL server),
//! `JITSUDO_CHAOS_JITSUDOD` (another jitsudod binary). docs/benchmarks.md records results.

#[allow(dead_code)]
#[path = "../tests/it/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../tests/it/proxy.rs"]
mod proxy;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jitsudo_chaos::{cpu_seconds, pct};
use jitsudo_proto::v1;
use jitsudo_proto::v1::request_service_client::RequestServiceClient;
use tokio::time::Instant;
use tonic::transport::Channel;

use harness::{Cluster, Opts, authed, new_request};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn main() {
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |p: &str| parts.is_empty() || parts.iter().any(|a| a == p);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        if wants("routed") {
            routed().await;
        }
        if wants("steady") {
            steady().await;
        }
    });
}

/// Three nodes with their fair shares, meshed directly (no proxy on the mesh).
async fn cluster() -> Cluster {
    let c = Cluster::start(Opts {
        direct_mesh: true,
        ..Opts::default()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let shares = c.shares().await;
        if shares.len() == 3 && shares.values().all(|n| (21..=22).contains(n)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no fair shares in 60 s: {shares:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c
}

async fn routed() {
    let n: usize = env_or("JITSUDO_BENCH_ROUTED_N", 2000);
    let mut c = cluster().await;
    // The owner is node 0: a create lands on a shard of the node that receives it.
    let started = Instant::now();
    let pending = c.create_pending(0, n).await;
    eprintln!(
        "routed: {n} pending requests created on node 0 in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (mut local, mut remote) = (c.requests(0).await, c.requests(1).await);
    let (alice, bob) = (c.token("alice"), c.token("bob"));
    let routed_before = (
        c.metric(0, "jitsudo_routed_calls_total").await,
        c.metric(1, "jitsudo_routed_calls_total").await,
    );

    // The hop alone: the owner refuses (nobody approves their own request), nothing is
    // written. Alternating which node goes first, so drift in the machine's load falls
    // on both alike.
    let refused = |token: &str, id: &str| {
        authed(
            token,
            v1::DecideRequest {
                id: id.to_owned(),
                comment: "own".into(),
            },
        )
    };
    let warmup = n.min(200);
    for id in &pending[..warmup] {
        for client in [&mut local, &mut remote] {
            let e = client
                .approve_request(refused(&alice, id))
                .await
                .expect_err("own approval");
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        }
    }
    let (mut l_ref, mut r_ref) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (k, id) in pending.iter().enumerate() {
        let order: [(&mut RequestServiceClient<Channel>, &mut Vec<f64>); 2] = if k % 2 == 0 {
            [(&mut local, &mut l_ref), (&mut remote, &mut r_ref)]
        } else {
            [(&mut remote, &mut r_ref), (&mut local, &mut l_ref)]
        };
        for (client, into) in order {
            let t = Instant::now();
            let e = client
                .approve_request(refused(&alice, id))
                .await
                .expect_err("own approval");
            into.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        }
    }

    // Real approvals (one commit each), alternating between the owner and node 1.
    let (mut l_app, mut r_app) = (Vec::new(), Vec::new());
    for (k, id) in pending.iter().enumerate() {
        let (client, into) = if k % 2 == 0 {
            (&mut local, &mut l_app)
        } else {
            (&mut remote, &mut r_app)
        };
        let req = authed(
            &bob,
            v1::DecideRequest {
                id: id.clone(),
                comment: "timed".into(),
            },
        );
        let t = Instant::now();
        let r = client
            .approve_request(req)
            .await
            .expect("approve")
            .into_inner();
        into.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.state, v1::RequestState::Approved as i32);
    }
    let routed_after = (
        c.metric(0, "jitsudo_routed_calls_total").await,
        c.metric(1, "jitsudo_routed_calls_total").await,
    );
    let (via_owner, via_other) = (
        routed_after.0 - routed_before.0,
        routed_after.1 - routed_before.1,
    );
    // Every call through node 1 crossed the mesh; none through the owner did.
    assert_eq!(via_owner, 0.0, "calls to the owner were routed");
    assert!(
        via_other >= (r_ref.len() + r_app.len()) as f64,
        "node 1 routed {via_other} calls, sent {}",
        r_ref.len() + r_app.len()
    );

    let mut rows = Vec::new();
    for (what, l, r) in [
        ("refused approval (no write)", l_ref, r_ref),
        ("approval (one commit)", l_app, r_app),
    ] {
        let (l, r) = (sorted(l), sorted(r));
        rows.push(format!(
            "| {what} | {} + {} | {:.3} / {:.3} / {:.3} ms | {:.3} / {:.3} / {:.3} ms | **{:.3} ms** | {:.2} |",
            l.len(),
            r.len(),
            pct(&l, 0.5),
            pct(&l, 0.9),
            pct(&l, 0.99),
            pct(&r, 0.5),
            pct(&r, 0.9),
            pct(&r, 0.99),
            pct(&r, 0.5) - pct(&l, 0.5),
            pct(&r, 0.5) / pct(&l, 0.5),
        ));
    }
    println!(
        "\n| call | calls (owner + other) | on the owner p50 / p90 / p99 | through another node p50 / p90 / p99 | routed overhead (p50 difference) | ratio of p50s |\n|---|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
}

struct Creator {
    clients: Vec<RequestServiceClient<Channel>>,
    token: String,
}

impl Creator {
    /// Creates an auto-approved request of `duration` seconds through node `k % nodes`;
    /// retries UNAVAILABLE (the retryable answer), panics on anything else.
    async fn create(&self, k: usize, duration: i64) -> String {
        let mut client = self.clients[k % self.clients.len()].clone();
        let body = new_request("viewer", duration, "steady state");
        loop {
            match client
                .create_request(authed(&self.token, body.clone()))
                .await
            {
                Ok(r) => return r.into_inner().id,
                Err(e) if e.code() == tonic::Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("create: {e}"),
            }
        }
    }
}

async fn steady() {
    let n: usize = env_or("JITSUDO_BENCH_STEADY_N", 30_000);
    let window: f64 = env_or("JITSUDO_BENCH_STEADY_WINDOW", 600.0);
    let concurrency: usize = env_or("JITSUDO_BENCH_CONCURRENCY", 32);
    let rate = n as f64 / window;
    let mut c = cluster().await;
    let mut clients = Vec::new();
    for i in 0..c.nodes.len() {
        clients.push(c.requests(i).await);
    }
    let creator = Arc::new(Creator {
        clients,
        token: c.token("alice"),
    });

    // Calibration: how fast this machine creates, so that the expiry window starts once
    // every request of the load is live. These stay live (4 h) through the run.
    let cal = 300.min(n);
    let t = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (creator, next) = (creator.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < cal {
                creator.create(0, 4 * 3600).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("calibration");
    }
    let create_rate = cal as f64 / t.elapsed().as_secs_f64();
    let lead = Duration::from_secs_f64(n as f64 / (0.6 * create_rate) + 15.0);
    eprintln!(
        "steady: {create_rate:.0} creates/s; the window of {window} s starts in {:.0} s",
        lead.as_secs_f64()
    );

    // The load: request k expires at about t0 + k / rate (durations are whole seconds, so
    // within a second of it).
    let loading = Instant::now();
    let t0 = loading + lead;
    let wall_t0 = chrono::Utc::now() + chrono::Duration::from_std(lead).expect("lead");
    let next = Arc::new(AtomicUsize::new(0));
    let late = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (creator, next, late) = (creator.clone(), next.clone(), late.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= n {
                    return ids;
                }
                let target = t0 + Duration::from_secs_f64(k as f64 / rate);
                let secs = target
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64();
                if secs < 2.0 {
                    late.fetch_add(1, Ordering::Relaxed);
                }
                ids.push((k, creator.create(k, secs.round().max(1.0) as i64).await));
            }
        }));
    }
    let mut ids = Vec::with_capacity(n);
    for t in tasks {
        ids.extend(t.await.expect("load"));
    }
    ids.sort();
    let ids: Vec<String> = ids.into_iter().map(|(_, id)| id).collect();
    let loaded_in = loading.elapsed().as_secs_f64();
    let late = late.load(Ordering::Relaxed);
    eprintln!(
        "steady: {n} requests live in {loaded_in:.1} s ({:.0}/s); {late} created less than 2 s before their expiry",
        n as f64 / loaded_in
    );
    assert!(
        Instant::now() < t0,
        "loading took longer than planned ({loaded_in:.0} s): the window began before every request was live"
    );
    let pids: Vec<u32> = c.nodes.iter().filter_map(|n| n.pid()).collect();
    tokio::time::sleep_until(t0).await;
    let cpu_before: Vec<f64> = pids
        .iter()
        .map(|p| cpu_seconds(*p).unwrap_or(f64::NAN))
        .collect();

    // The window: expiries at `rate`, new requests arriving at `rate` (expiring after the
    // window, so N stay live), and the baseline timer on the same schedule.
    let end = t0 + Duration::from_secs_f64(window);
    let arrivals = {
        let creator = creator.clone();
        tokio::spawn(async move {
            let mut inflight = tokio::task::JoinSet::new();
            let mut k = 0usize;
            loop {
                let at = t0 + Duration::from_secs_f64(k as f64 / rate);
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at).await;
                let creator = creator.clone();
                let duration = window.ceil() as i64 + 60;
                inflight.spawn(async move { creator.create(k, duration).await });
                k += 1;
            }
            inflight.join_all().await.len()
        })
    };
    let baseline = tokio::spawn(async move {
        let mut lateness = Vec::new();
        let mut k = 0usize;
        loop {
            let at = t0 + Duration::from_secs_f64(k as f64 / rate);
            if at >= end {
                return lateness;
            }
            tokio::time::sleep_until(at).await;
            lateness.push(Instant::now().duration_since(at).as_secs_f64() * 1000.0);
            k += 1;
        }
    });
    // Each node's own view every 30 s: its issue lag (`expires_at` to the revoke issued,
    // a summary over the last minute) next to the lag the cloud sees.
    let mut views = Vec::new();
    while Instant::now() + Duration::from_secs(30) <= end {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let mut row = Vec::new();
        for i in 0..c.nodes.len() {
            let text = c.metrics_text(i).await;
            let q = |quantile: &str| {
                text.lines()
                    .find(|l| {
                        l.starts_with("jitsudo_expiry_issue_lag_seconds{")
                            && l.contains(&format!("quantile=\"{quantile}\""))
                    })
                    .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .map_or(f64::NAN, |v| v * 1000.0)
            };
            row.push(format!("{:.0}/{:.0}", q("0.99"), q("1")));
        }
        let at = (Instant::now() - t0).as_secs();
        eprintln!(
            "steady: {at} s: node issue lag p99/max (ms, last minute): {}",
            row.join(", ")
        );
        views.push(format!("{at} s: {}", row.join(", ")));
    }
    let arrived = arrivals.await.expect("arrivals");
    let baseline = sorted(baseline.await.expect("baseline"));
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&cpu_before)
        .map(|(p, b)| (cpu_seconds(*p).unwrap_or(f64::NAN) - b) / window * 100.0)
        .collect();

    // Every expiry of the window, checked as the chaos scenarios check (one grant, one
    // revoke, audit complete and chained, nothing lost).
    let report = c.check(&ids, 0).await;
    let lag_ms = |q: f64| report.pct(q) * 1000.0;
    let mut by_minute: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for (at, lag) in &report.samples {
        let minute = (*at - wall_t0).num_seconds().max(0) / 60;
        by_minute.entry(minute).or_default().push(lag * 1000.0);
    }
    let minutes: Vec<String> = by_minute
        .into_iter()
        .map(|(m, v)| {
            let v = sorted(v);
            format!("{m}: {} / {:.0} ms", v.len(), pct(&v, 0.99))
        })
        .collect();
    println!(
        "\n| measurement | result |\n|---|---|\n\
         | live requests at the window's start | {n} (+ {cal} of calibration, 4 h) |\n\
         | expiries in the window / new requests in it | {} in {window:.0} s ({rate:.0}/s) / {arrived} |\n\
         | loading: {n} creates, {concurrency} in flight over 3 nodes | {loaded_in:.1} s ({:.0}/s) |\n\
         | **issue lag** (revoke at the cloud − `expires_at`) p50 / p90 / p99 / max | {:.0} / {:.0} / {:.0} / {:.0} ms |\n\
         | baseline: a tokio timer in the benchmark on the same schedule, lateness p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |\n\
         | issue lag p99 ÷ baseline p99 | {:.1} |\n\
         | issue lag p99 per minute of the window (expiries / p99) | {} |\n\
         | jitsudod CPU during the window, per node | {} |\n\
         | each node's own issue lag (to the revoke issued) p99 / max over the last minute, every 30 s (ms) | {} |\n",
        report.lags.len(),
        n as f64 / loaded_in,
        lag_ms(0.5),
        lag_ms(0.9),
        lag_ms(0.99),
        report.max() * 1000.0,
        pct(&baseline, 0.5),
        pct(&baseline, 0.99),
        baseline.last().copied().unwrap_or(f64::NAN),
        lag_ms(0.99) / pct(&baseline, 0.99),
        minutes.join("; "),
        cpu.iter()
            .map(|p| format!("{p:.0} %"))
            .collect::<Vec<_>>()
            .join(", "),
        views.join("; "),
    );
}
