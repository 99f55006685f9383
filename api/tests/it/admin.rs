//! The node as an operator sees it: AdminService, health, reflection, readiness and metrics,
//! size limits, authentication refusals, and a clean stop.

use std::time::{Duration, Instant};

use jitsudo_api::server::Server;
use jitsudo_proto::v1;
use reqwest::{Method, StatusCode};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_without_a_token() {
    let j = Jitsudo::start().await;
    let mut health = HealthClient::new(j.bare_channel());
    for service in ["", "jitsudo.v1.RequestService", "jitsudo.v1.AuditService"] {
        // Serving once the node is ready (its shards taken).
        let status = serving_within(&mut health, service, Duration::from_secs(15)).await;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(j.bare_channel());
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ok(reflection
        .server_reflection_info(tokio_stream::iter([ask]))
        .await);
    let answer = answers
        .message()
        .await
        .expect("a reflection answer")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for wanted in [
        "jitsudo.v1.RequestService",
        "jitsudo.v1.PolicyService",
        "jitsudo.v1.AuditService",
        "jitsudo.v1.PrincipalService",
        "jitsudo.v1.AdminService",
    ] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_readyz_and_metrics_are_public_and_metrics_count_rpcs() {
    let j = Jitsudo::start().await;
    let anon = j.rest_with(None);
    let (status, body) = anon.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = anon.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // One counted call, then the page shows it by RPC and code.
    ok(j.grpc("alice")
        .admin
        .get_version(v1::GetVersionRequest {})
        .await);
    let (status, body) = anon.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let page = body.as_str().expect("metrics are text");
    assert!(
        page.lines().any(|l| l.starts_with("jitsudo_rpc_total")
            && l.contains(r#"rpc="GetVersion""#)
            && l.contains(r#"code="OK""#)),
        "jitsudo_rpc_total for GetVersion is missing:\n{page}"
    );
    assert!(page.contains("jitsudo_rpc_seconds"), "{page}");
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_service_reports_version_node_actors_and_reloads_policies() {
    let j = Jitsudo::start().await;
    let pending = j.create("alice", "demo", "operator", 600).await;
    let carol = j.grpc("carol");
    let mut admin = carol.admin.clone();

    let version = ok(admin.get_version(v1::GetVersionRequest {}).await);
    assert_eq!(version.api, "jitsudo.v1");
    assert_eq!(version.version, env!("CARGO_PKG_VERSION"));

    let node = ok(admin.get_node_status(v1::GetNodeStatusRequest {}).await);
    assert_eq!(node.node, "api-it");
    assert_eq!((node.shards_owned, node.shards_total), (4, 4));
    assert!(!node.dev_mode);
    assert!(node.policy_version.starts_with("sha256:"), "{node:?}");
    assert!(node.live_requests >= 1, "{node:?}");
    assert!(node.started_at.is_some());

    let cluster = ok(admin
        .get_cluster_status(v1::GetClusterStatusRequest {})
        .await);
    let me = cluster
        .members
        .iter()
        .find(|m| m.node == "api-it")
        .unwrap_or_else(|| panic!("this node is a member: {cluster:?}"));
    assert!(me.alive && me.heartbeat_age_ms < 3000.0, "{me:?}");
    assert_eq!(me.shards_owned, 4);
    assert_eq!(cluster.shards.len(), 4);
    assert!(
        cluster
            .shards
            .iter()
            .all(|s| s.owner == "api-it" && s.leased)
    );
    // The audit sequencer takes its lease on its first tick after the start.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let cluster = ok(admin
            .get_cluster_status(v1::GetClusterStatusRequest {})
            .await);
        if let Some(audit) = cluster.audit_sequencer {
            assert_eq!(audit.owner, "api-it");
            assert!(audit.leased, "{audit:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody took the audit lease"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let actors = ok(admin.list_actors(v1::ListActorsRequest {}).await);
    assert_eq!(actors.node, "api-it");
    let live = actors
        .actors
        .iter()
        .find(|a| a.kind == "request" && a.id == pending.id)
        .unwrap_or_else(|| panic!("no actor for the pending request: {:?}", actors.actors));
    assert_eq!(live.state, "PENDING");

    let listed = ok(carol
        .policies
        .clone()
        .list_policies(v1::ListPoliciesRequest {})
        .await);
    let reloaded = ok(admin.reload_policies(v1::ReloadPoliciesRequest {}).await);
    assert_eq!(reloaded.policy_version, listed.policy_version);
    assert_eq!(reloaded.policy_version, node.policy_version);

    let letters = ok(admin
        .list_dead_letters(v1::ListDeadLettersRequest {
            sink: String::new(),
            limit: 10,
        })
        .await);
    assert!(letters.dead_letters.is_empty(), "{letters:?}");
    let msg = refused(
        admin
            .redrive_dead_letter(v1::RedriveDeadLetterRequest { id: 424242 })
            .await,
        Code::FailedPrecondition,
    );
    assert!(msg.contains("not a dead letter"), "{msg}");
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_see_every_provider_with_its_last_call_and_requesters_are_refused() {
    let j = Jitsudo::start().await;
    let granted = j.active_viewer("alice", "cloud", 600).await;
    let grant: uuid::Uuid = granted.grants[0].grant_id.parse().expect("a grant id");
    assert!(j.cloud.is_active(grant), "the fake cloud holds the grant");
    let mut admin = j.grpc("carol").admin;

    // The reconciler's first pass runs soon after the start, over every provider.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let providers = loop {
        let r = ok(admin.list_providers(v1::ListProvidersRequest {}).await);
        if r.providers.iter().all(|p| p.last_pass.is_some()) {
            break r.providers;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reconciler never passed over every provider: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let names: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["cloud", "demo"], "{providers:?}");
    for (p, kind) in providers.iter().zip(["http", "demo"]) {
        assert_eq!(p.kind, kind, "{p:?}");
        assert!(p.native_expiry, "{p:?}");
        assert_eq!(p.subject_template, "{sub}", "{p:?}");
        assert_eq!(p.on_drift, "report", "{p:?}");
        assert!(!p.roles.is_empty() && !p.scopes.is_empty(), "{p:?}");
        let pass = p.last_pass.as_ref().expect("a pass");
        assert_eq!(pass.node, "api-it", "{pass:?}");
        assert_eq!(pass.error, "", "{pass:?}");
        assert!(pass.at.is_some(), "{pass:?}");
    }
    let call = providers[0]
        .last_call
        .as_ref()
        .unwrap_or_else(|| panic!("cloud was called for the grant: {providers:?}"));
    assert!(
        ["validate", "grant", "inspect", "list"].contains(&call.op.as_str()),
        "{call:?}"
    );
    assert_eq!((call.outcome.as_str(), call.error.as_str()), ("ok", ""));
    assert!(call.at.is_some(), "{call:?}");

    let msg = refused(
        j.grpc("alice")
            .admin
            .list_providers(v1::ListProvidersRequest {})
            .await,
        Code::PermissionDenied,
    );
    assert!(msg.contains("listing providers"), "{msg}");
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_valid_token_are_unauthenticated_on_both_front_ends() {
    let j = Jitsudo::start().await;
    let audit_before = j.audit_log().await;
    let garbage = "Bearer not.a.jwt";
    for authorization in [
        None,
        Some(""),
        Some("Bearer "),
        Some(garbage),
        Some("Basic YWxpY2U6eA=="),
    ] {
        let mut g = j.grpc_with(authorization);
        let msg = refused(
            g.requests
                .create_request(new_request("demo", "viewer", 60))
                .await,
            Code::Unauthenticated,
        );
        assert!(
            !msg.contains("not.a.jwt"),
            "the token is never echoed: {msg}"
        );
        refused(
            g.principals.who_am_i(v1::WhoAmIRequest {}).await,
            Code::Unauthenticated,
        );
        refused(
            g.admin.get_version(v1::GetVersionRequest {}).await,
            Code::Unauthenticated,
        );
        let rest = j.rest_with(authorization);
        let resp = rest.get("/api/v1/whoami").await;
        rest_error(&resp, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
        let resp = rest
            .post("/api/v1/requests", serde_json::json!({"provider": "demo"}))
            .await;
        let msg = rest_error(&resp, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
        assert!(!msg.contains("not.a.jwt"), "{msg}");
    }
    // A token of another issuer's key (same claims, foreign signature) is refused too.
    let foreign = {
        let other = Jitsudo::start().await;
        let t = other.token("alice");
        other.stop().await.expect("clean stop");
        t
    };
    refused(
        j.grpc_with(Some(&format!("Bearer {foreign}")))
            .principals
            .who_am_i(v1::WhoAmIRequest {})
            .await,
        Code::Unauthenticated,
    );
    // Nothing was created or audited by any of it.
    assert_eq!(j.audit_log().await, audit_before);
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_above_the_size_limit_are_refused_cleanly() {
    let j = Jitsudo::start_with(|c| c.limits.max_message_bytes = 16 * 1024).await;
    let mut alice = j.grpc("alice");
    let mut big = new_request("demo", "viewer", 60);
    big.reason = "x".repeat(64 * 1024);
    let status = alice
        .requests
        .create_request(big.clone())
        .await
        .expect_err("an oversized message is refused");
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{:?}: {}",
        status.code(),
        status.message()
    );
    // The connection is still good for the next call.
    let fine = ok(alice
        .requests
        .create_request(new_request("demo", "viewer", 60))
        .await);
    assert_eq!(fine.requester, "alice");

    let body = serde_json::to_vec(&big).expect("JSON");
    let (status, answer) = j
        .rest("alice")
        .send_raw(Method::POST, "/api/v1/requests", body)
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        format!("{answer:?}").contains("RESOURCE_EXHAUSTED"),
        "a JSON error body: {answer:?}"
    );
    // Only the one small request exists.
    let all = ok(j
        .grpc("erin")
        .requests
        .list_requests(v1::ListRequestsRequest::default())
        .await);
    assert_eq!(all.requests.len(), 1, "{:?}", all.requests);
    j.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_releases_its_shards_so_a_successor_starts_at_once() {
    let j = Jitsudo::start().await;
    let pending = j.create("alice", "demo", "operator", 600).await;
    let (served, left) = j.stop_keeping_data().await;
    served.expect("serve returns cleanly");

    // A successor on the same database takes every shard without waiting for leases to lapse.
    let ttl = left.config.lease_ttl();
    let started = Instant::now();
    let successor = tokio::time::timeout(ttl, Server::build(left.config.clone(), None))
        .await
        .unwrap_or_else(|_| {
            panic!("the successor waited {ttl:?} for shard leases: the first server kept them")
        })
        .expect("the successor builds");
    assert!(started.elapsed() < ttl);
    let kept = successor
        .state
        .engine
        .get(pending.id.parse().expect("id"))
        .await
        .expect("the request survived the restart");
    assert_eq!(kept.state, jitsudo_actors::domain::State::Pending);
    tokio::time::timeout(Duration::from_secs(20), successor.serve(async {}))
        .await
        .expect("the successor stops")
        .expect("clean stop");
    drop(left);
}

/// The demo issuer mints tokens without a password: it is a binary of the test crate
/// (`jitsudo-test-issuer`), never a subcommand of the server people deploy.
#[test]
fn jitsudod_carries_no_test_issuer() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jitsudod"))
        .args(["test-issuer", "--listen", "127.0.0.1:9"])
        .output()
        .expect("jitsudod runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unrecognized subcommand") && err.contains("test-issuer"),
        "{err}"
    );
}

/// One page token key per cluster (kept in the database): a listing begun on one node
/// continues on another, and a node whose key file disagrees refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_token_from_one_node_continues_on_another() {
    let a = Jitsudo::start().await;
    for _ in 0..3 {
        a.create("alice", "demo", "viewer", 600).await;
    }
    let url = a.config.database.url.clone();
    let b = Jitsudo::start_with(move |c| {
        c.database.url = url;
        c.node.name = "api-it-b".into();
    })
    .await;
    let list = |token: String| v1::ListRequestsRequest {
        mine: true,
        page_size: 2,
        page_token: token,
        ..Default::default()
    };
    let first = ok(a
        .grpc("alice")
        .requests
        .list_requests(list(String::new()))
        .await);
    assert_eq!(first.requests.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let rest = ok(b
        .grpc("alice")
        .requests
        .list_requests(list(first.next_page_token.clone()))
        .await);
    assert_eq!(
        rest.requests.len(),
        1,
        "the third request, on the other node"
    );
    assert!(
        first.requests.iter().all(|r| r.id != rest.requests[0].id),
        "no request twice"
    );

    // A third node given a key file of its own is refused, saying what to do.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("page.key");
    std::fs::write(&key, b"a key no other node has").unwrap();
    let mut c = b.config.clone();
    c.node.name = "api-it-c".into();
    c.server.page_token_key_file = Some(key);
    let e = Server::build(c, None).await.err().expect("refused");
    assert!(
        e.to_string().contains("page_token_key_file differs"),
        "{e:#}"
    );
}

/// The status `service` reports, polled until it is `Serving` or `within` has passed.
async fn serving_within(
    health: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
    within: Duration,
) -> i32 {
    status_within(health, service, ServingStatus::Serving, within).await
}

async fn status_within(
    health: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
    want: ServingStatus,
    within: Duration,
) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        let status = ok(health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await)
        .status;
        if status == want as i32 || Instant::now() > deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// grpc.health.v1 tells load balancers what /readyz tells: NOT_SERVING while the database
/// is unreachable, SERVING again when it is back, NOT_SERVING once shutdown begins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_follows_readiness_through_a_database_outage_and_shutdown() {
    let pg = tokio::task::spawn_blocking(jitsudo_testkit::PrivatePostgres::start)
        .await
        .unwrap()
        .expect("a private PostgreSQL");
    let db = pg.database().await.expect("a database on it");
    let url = db.url.clone();
    let j = Jitsudo::start_with(move |c| c.database.url = url).await;
    let mut health = HealthClient::new(j.bare_channel());
    assert_eq!(
        serving_within(&mut health, "", Duration::from_secs(15)).await,
        ServingStatus::Serving as i32
    );

    let pg = std::sync::Arc::new(pg);
    let stopper = pg.clone();
    tokio::task::spawn_blocking(move || stopper.stop())
        .await
        .unwrap()
        .expect("PostgreSQL stops");
    let down = status_within(
        &mut health,
        "jitsudo.v1.RequestService",
        ServingStatus::NotServing,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        down,
        ServingStatus::NotServing as i32,
        "while the store is down"
    );
    let (status, _) = j.rest_with(None).get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let starter = pg.clone();
    tokio::task::spawn_blocking(move || starter.resume())
        .await
        .unwrap()
        .expect("PostgreSQL starts again");
    assert_eq!(
        serving_within(&mut health, "", Duration::from_secs(30)).await,
        ServingStatus::Serving as i32,
        "back when the store is"
    );

    // Shutdown: a watcher sees NOT_SERVING before the server goes.
    let mut watch = ok(health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await);
    let stopping = tokio::spawn(async move { j.stop_keeping_data().await });
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(m)) = watch.message().await {
            seen.push(m.status);
        }
    })
    .await;
    assert!(ended.is_ok(), "the Watch stream ends at shutdown: {seen:?}");
    assert_eq!(
        seen.last(),
        Some(&(ServingStatus::NotServing as i32)),
        "{seen:?}"
    );
    // The drain did not wait on the watcher: the engine stopped and let its shards go, so a
    // successor takes them without waiting for leases to lapse.
    let (served, left) = stopping.await.unwrap();
    served.expect("clean stop");
    let ttl = left.config.lease_ttl();
    let successor = tokio::time::timeout(ttl, Server::build(left.config.clone(), None))
        .await
        .expect("the successor takes the shards at once: the first released them")
        .expect("the successor builds");
    tokio::time::timeout(Duration::from_secs(20), successor.serve(async {}))
        .await
        .expect("the successor stops")
        .expect("clean stop");
    drop(left);
    drop(db);
}

/// A node that holds no shard lease cannot act on any request's deadlines: it is not
/// ready, and grpc.health.v1 says NOT_SERVING, while the node holding the only shard serves.
/// With one shard and two nodes, the fair share gives it to the first node by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_shard_lease_is_not_serving() {
    let a = Jitsudo::start_with(|c| c.node.shards = 1).await;
    let url = a.config.database.url.clone();
    let b = Jitsudo::start_with(move |c| {
        c.node.shards = 1;
        c.database.url = url;
        c.node.name = "api-it-second".into();
    })
    .await;
    assert_eq!(a.state.engine.shards_owned().len(), 1, "api-it sorts first");
    assert!(b.state.engine.shards_owned().is_empty());
    let mut holder = HealthClient::new(a.bare_channel());
    let mut idle = HealthClient::new(b.bare_channel());
    assert_eq!(
        serving_within(&mut holder, "", Duration::from_secs(15)).await,
        ServingStatus::Serving as i32
    );
    assert_eq!(
        status_within(
            &mut idle,
            "jitsudo.v1.RequestService",
            ServingStatus::NotServing,
            Duration::from_secs(15)
        )
        .await,
        ServingStatus::NotServing as i32,
        "no shard, not serving"
    );
    let (status, body) = b.rest_with(None).get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.as_str()
            .is_some_and(|t| t.contains("no shard leases held")),
        "{body}"
    );
    b.stop().await.expect("clean stop");
    a.stop().await.expect("clean stop");
}

/// A fresh `jitsudod --dev` puts its banner on the first screen: the shards it takes are
/// one line (count and epochs), not one per shard.
#[test]
fn a_fresh_dev_start_shows_its_banner_on_the_first_screen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("output.txt");
    let file = std::fs::File::create(&log).expect("output file");
    let port = jitsudo_testkit::free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jitsudod"))
        .args([
            "--dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env_remove("JITSUDOD_LOG")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdout(file.try_clone().expect("clone"))
        .stderr(file)
        .spawn()
        .expect("jitsudod starts");
    let deadline = Instant::now() + Duration::from_secs(90);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("The jitsudo CLI:") {
            break text;
        }
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            panic!("no banner: {text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The actors and shards it started with are on /metrics from the first scrape (the
    // recorder is installed before the engine starts).
    let metrics = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("send");
        let mut page = String::new();
        s.read_to_string(&mut page).expect("read");
        page
    };
    let _ = child.kill();
    let _ = child.wait();
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in /metrics:\n{metrics}"))
    };
    assert_eq!(value(r#"jitsudo_actors_live{kind="shard"}"#), 64.0);
    for kind in [
        "node",
        "membership",
        "policy",
        "notifier",
        "audit_sequencer",
        "reconciler",
    ] {
        assert_eq!(
            value(&format!(r#"jitsudo_actors_live{{kind="{kind}"}}"#)),
            1.0,
            "{kind}"
        );
    }
    assert_eq!(value("jitsudo_shard_leases_owned"), 64.0);
    assert_eq!(value("jitsudo_shards_configured"), 64.0);
    assert_eq!(value(r#"jitsudo_actors_live{kind="request"}"#), 0.0);
    assert_eq!(value("jitsudo_sweep_recovered_total"), 0.0);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("is running in DEV MODE"))
        .expect("the banner's first line");
    assert!(at < 12, "the banner starts on line {}:\n{text}", at + 1);
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("took shard ") || l.ends_with("took shard")),
        "no line per shard at INFO:\n{text}"
    );
    let took: Vec<&&str> = lines.iter().filter(|l| l.contains("took shards")).collect();
    assert_eq!(took.len(), 1, "{text}");
    assert!(
        took[0].contains("count=64")
            && took[0].contains("shards=0-63")
            && took[0].contains("epochs=1"),
        "{}",
        took[0]
    );
}
