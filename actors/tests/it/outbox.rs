//! The outbox: its store contract on both backends (claims, outcomes, dead letters,
//! re-drive, counts), and the Notifier delivering a real engine's notices to a local webhook
//! receiver that verifies every signature.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use jitsudo_actors::EngineError;
use jitsudo_actors::config::Backoff;
use jitsudo_actors::config::{NotifyConfig, SinkConfig};
use jitsudo_actors::domain::RequestId;
use jitsudo_actors::notify::{
    EVENT_ID_HEADER, EVENT_KIND_HEADER, SIGNATURE_HEADER, Sink, WebhookSink,
};
use jitsudo_actors::store::{OutboxEntry, OutboxRow, SharedStore, Write};
use jitsudo_providers::http::verify_signature;
use sqlx::Row;

use crate::engine::{config, rig_with, rules};
use crate::fixtures::*;

macro_rules! outbox_contract {
    ($backend:ident, $open:path, [$($case:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case($open().await).await;
                }
            )*
        }
    };
}

outbox_contract!(
    postgres,
    crate::fixtures::postgres,
    [
        claim_skips_rows_claimed_by_another_node_until_the_claim_expires,
        concurrent_claims_never_share_a_row,
        claim_takes_at_most_the_limit_oldest_first,
        only_the_claimer_records_an_outcome,
        failure_schedules_the_next_attempt_and_releases_the_claim,
        failure_without_a_retry_is_a_dead_letter_that_is_never_claimed,
        redrive_returns_a_dead_letter_to_pending_and_audits_it,
        stats_count_each_sink_by_state,
        stored_errors_are_cut_to_500_bytes,
    ]
);

outbox_contract!(
    sqlite,
    crate::fixtures::sqlite,
    [
        claim_skips_rows_claimed_by_another_node_until_the_claim_expires,
        concurrent_claims_never_share_a_row,
        claim_takes_at_most_the_limit_oldest_first,
        only_the_claimer_records_an_outcome,
        failure_schedules_the_next_attempt_and_releases_the_claim,
        failure_without_a_retry_is_a_dead_letter_that_is_never_claimed,
        redrive_returns_a_dead_letter_to_pending_and_audits_it,
        stats_count_each_sink_by_state,
        stored_errors_are_cut_to_500_bytes,
    ]
);

const LONG: Duration = Duration::from_secs(30);

/// Creates a request needing approval (two notices) with one outbox row per notice and
/// sink; returns its rows in insertion order.
async fn enqueue(db: &Db, sinks: &[&str]) -> Vec<OutboxEntry> {
    let tr = new_request(decision(false, 1));
    let fence = db.fence_for(tr.next.id).await;
    let rows: Vec<OutboxRow> = sinks
        .iter()
        .flat_map(|s| {
            tr.notices.iter().map(|n| OutboxRow {
                sink: (*s).into(),
                kind: n.kind.as_str().into(),
                payload: n.details.to_string(),
            })
        })
        .collect();
    let w = db
        .store
        .create(&fence, persist(&tr, &rows, 0))
        .await
        .unwrap();
    assert!(matches!(w, Write::Updated { .. }), "{w:?}");
    let stored = db.store.request_outbox(tr.next.id).await.unwrap();
    assert_eq!(stored.len(), rows.len());
    stored
}

async fn row(db: &Db, e: &OutboxEntry) -> OutboxEntry {
    let id = RequestId(e.request_id.expect("a request's row"));
    db.store
        .request_outbox(id)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.id == e.id)
        .expect("row still stored")
}

fn ids(rows: &[OutboxEntry]) -> Vec<i64> {
    rows.iter().map(|r| r.id).collect()
}

async fn claim_skips_rows_claimed_by_another_node_until_the_claim_expires(db: Db) {
    let rows = enqueue(&db, &["log"]).await;
    let ttl = Duration::from_secs(1);
    let a = db.store.claim_outbox("node-a", 10, ttl).await.unwrap();
    assert_eq!(ids(&a), ids(&rows));
    assert!(
        db.store
            .claim_outbox("node-b", 10, LONG)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        db.store
            .claim_outbox("node-a", 10, LONG)
            .await
            .unwrap()
            .is_empty(),
        "a live claim is not granted twice"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let b = loop {
        let b = db.store.claim_outbox("node-b", 10, LONG).await.unwrap();
        if !b.is_empty() {
            break b;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the claim never lapsed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(ids(&b), ids(&rows), "node-b takes over every lapsed claim");
    assert!(
        !db.store
            .outbox_delivered(rows[0].id, "node-a")
            .await
            .unwrap(),
        "node-a lost its claim"
    );
    assert!(
        db.store
            .outbox_delivered(rows[0].id, "node-b")
            .await
            .unwrap()
    );
    assert_eq!(row(&db, &rows[0]).await.state, "delivered");
}

async fn concurrent_claims_never_share_a_row(db: Db) {
    let mut rows = Vec::new();
    for _ in 0..3 {
        rows.extend(enqueue(&db, &["log"]).await);
    }
    let claim = |node: &'static str| {
        let store = db.store.clone();
        tokio::spawn(async move { store.claim_outbox(node, 3, LONG).await.unwrap() })
    };
    let (a, b, c) = (claim("node-a"), claim("node-b"), claim("node-c"));
    let mut claimed: Vec<i64> = Vec::new();
    for got in [a.await.unwrap(), b.await.unwrap(), c.await.unwrap()] {
        assert!(got.len() <= 3);
        claimed.extend(ids(&got));
    }
    let total = claimed.len();
    claimed.sort_unstable();
    claimed.dedup();
    assert_eq!(claimed.len(), total, "a row was claimed twice");
    assert!(claimed.iter().all(|id| rows.iter().any(|r| r.id == *id)));
}

async fn claim_takes_at_most_the_limit_oldest_first(db: Db) {
    let mut rows = enqueue(&db, &["log"]).await;
    rows.extend(enqueue(&db, &["log"]).await);
    let first = db.store.claim_outbox("node-a", 3, LONG).await.unwrap();
    assert_eq!(ids(&first), ids(&rows[..3]));
    assert!(
        first
            .iter()
            .all(|r| r.state == "pending" && r.attempts == 0)
    );
    let rest = db.store.claim_outbox("node-b", 3, LONG).await.unwrap();
    assert_eq!(ids(&rest), ids(&rows[3..]));
}

async fn only_the_claimer_records_an_outcome(db: Db) {
    let rows = enqueue(&db, &["log"]).await;
    db.store.claim_outbox("node-a", 10, LONG).await.unwrap();
    let r = &rows[0];
    assert!(!db.store.outbox_delivered(r.id, "node-b").await.unwrap());
    assert!(
        !db.store
            .outbox_failed(r.id, "node-b", "boom", None)
            .await
            .unwrap()
    );
    let untouched = row(&db, r).await;
    assert_eq!(
        (untouched.state.as_str(), untouched.attempts),
        ("pending", 0)
    );
    assert!(db.store.outbox_delivered(r.id, "node-a").await.unwrap());
    // Once delivered, no later outcome changes it.
    assert!(!db.store.outbox_delivered(r.id, "node-a").await.unwrap());
    assert!(
        !db.store
            .outbox_failed(r.id, "node-a", "late", Some(Duration::ZERO))
            .await
            .unwrap()
    );
    let done = row(&db, r).await;
    assert_eq!((done.state.as_str(), done.attempts), ("delivered", 0));
    assert_eq!(done.last_error, None);
}

async fn failure_schedules_the_next_attempt_and_releases_the_claim(db: Db) {
    let rows = enqueue(&db, &["log"]).await;
    db.store.claim_outbox("node-a", 10, LONG).await.unwrap();
    let hour = Duration::from_secs(3600);
    let before = db.store.db_now().await.unwrap();
    assert!(
        db.store
            .outbox_failed(
                rows[0].id,
                "node-a",
                "the receiver answered HTTP 503",
                Some(hour)
            )
            .await
            .unwrap()
    );
    let after = db.store.db_now().await.unwrap();
    let failed = row(&db, &rows[0]).await;
    assert_eq!(failed.state, "pending");
    assert_eq!(failed.attempts, 1);
    assert_eq!(
        failed.last_error.as_deref(),
        Some("the receiver answered HTTP 503")
    );
    let hour = chrono::Duration::hours(1);
    assert!(
        failed.next_attempt_at >= before + hour && failed.next_attempt_at <= after + hour,
        "next attempt {} not an hour after {before}",
        failed.next_attempt_at
    );
    assert!(
        db.store
            .claim_outbox("node-b", 10, LONG)
            .await
            .unwrap()
            .is_empty(),
        "a row backing off is not due"
    );
    // Released with no delay: due at once, for anyone.
    assert!(
        db.store
            .outbox_failed(rows[1].id, "node-a", "boom", Some(Duration::ZERO))
            .await
            .unwrap()
    );
    let b = db.store.claim_outbox("node-b", 10, LONG).await.unwrap();
    assert_eq!(ids(&b), [rows[1].id]);
    assert_eq!(b[0].attempts, 1);
}

async fn failure_without_a_retry_is_a_dead_letter_that_is_never_claimed(db: Db) {
    let rows = enqueue(&db, &["log", "hook"]).await;
    let hook = &rows[2];
    assert_eq!(hook.sink, "hook");
    db.store.claim_outbox("node-a", 10, LONG).await.unwrap();
    assert!(
        db.store
            .outbox_failed(hook.id, "node-a", "gave up", None)
            .await
            .unwrap()
    );
    let dead = row(&db, hook).await;
    assert_eq!((dead.state.as_str(), dead.attempts), ("dead", 1));
    assert_eq!(
        ids(&db.store.dead_letters(None, 10).await.unwrap()),
        [hook.id]
    );
    assert_eq!(
        ids(&db.store.dead_letters(Some("hook"), 10).await.unwrap()),
        [hook.id]
    );
    assert!(
        db.store
            .dead_letters(Some("log"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    for r in rows.iter().filter(|r| r.id != hook.id) {
        db.store
            .outbox_failed(r.id, "node-a", "boom", Some(Duration::ZERO))
            .await
            .unwrap();
    }
    let again = db.store.claim_outbox("node-b", 10, LONG).await.unwrap();
    assert_eq!(again.len(), rows.len() - 1);
    assert!(
        !ids(&again).contains(&hook.id),
        "a dead letter is never claimed"
    );
}

async fn redrive_returns_a_dead_letter_to_pending_and_audits_it(db: Db) {
    let rows = enqueue(&db, &["log"]).await;
    db.store.claim_outbox("node-a", 10, LONG).await.unwrap();
    db.store
        .outbox_failed(rows[0].id, "node-a", "gave up", None)
        .await
        .unwrap();
    assert!(
        !db.store
            .redrive(rows[1].id, "carol", "node-a")
            .await
            .unwrap(),
        "only a dead letter is re-driven"
    );
    assert!(!db.store.redrive(999_999, "carol", "node-a").await.unwrap());
    assert!(redriven_events(&db).await.is_empty());
    assert!(
        db.store
            .redrive(rows[0].id, "carol", "node-a")
            .await
            .unwrap()
    );
    assert!(
        !db.store
            .redrive(rows[0].id, "carol", "node-a")
            .await
            .unwrap()
    );
    let back = row(&db, &rows[0]).await;
    assert_eq!((back.state.as_str(), back.attempts), ("pending", 0));
    assert!(back.next_attempt_at <= db.store.db_now().await.unwrap());
    assert!(db.store.dead_letters(None, 10).await.unwrap().is_empty());
    let b = db.store.claim_outbox("node-b", 10, LONG).await.unwrap();
    assert_eq!(ids(&b), [rows[0].id], "due again at once");
    let events = redriven_events(&db).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let (actor, node, details) = &events[0];
    assert_eq!((actor.as_str(), node.as_str()), ("carol", "node-a"));
    let details: serde_json::Value = serde_json::from_str(details).unwrap();
    assert_eq!(details["outbox_id"], rows[0].id);
    assert_eq!(details["event_id"], rows[0].event_id.to_string());
    assert_eq!(details["sink"], "log");
    assert_eq!(details["kind"], rows[0].kind);
}

/// `(actor, node, details)` of every `outbox.redriven` audit event; they concern no request.
async fn redriven_events(db: &Db) -> Vec<(String, String, String)> {
    const SQL: &str = "SELECT actor, node, details FROM audit_events
                        WHERE kind = 'outbox.redriven' AND request_id IS NULL AND request_version IS NULL
                        ORDER BY at";
    let rows: Vec<(String, String, String)> = if db.store.backend() == "postgres" {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        let rows = sqlx::query(SQL).fetch_all(&pool).await.unwrap();
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    } else {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.url))
            .await
            .unwrap();
        let rows = sqlx::query(SQL).fetch_all(&pool).await.unwrap();
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    };
    rows
}

async fn stats_count_each_sink_by_state(db: Db) {
    assert!(db.store.outbox_stats().await.unwrap().is_empty());
    let rows = enqueue(&db, &["log", "hook"]).await;
    db.store.claim_outbox("node-a", 10, LONG).await.unwrap();
    let [log0, log1, hook0, _hook1] = &rows[..] else {
        panic!("four rows")
    };
    db.store.outbox_delivered(log0.id, "node-a").await.unwrap();
    db.store
        .outbox_failed(log1.id, "node-a", "boom", Some(LONG))
        .await
        .unwrap();
    db.store
        .outbox_failed(hook0.id, "node-a", "gave up", None)
        .await
        .unwrap();
    let stats = db.store.outbox_stats().await.unwrap();
    let counts: Vec<(&str, i64, i64, i64)> = stats
        .iter()
        .map(|s| (s.sink.as_str(), s.pending, s.dead, s.delivered))
        .collect();
    assert_eq!(counts, [("hook", 1, 1, 0), ("log", 1, 0, 1)]);
    for s in &stats {
        assert!((0.0..60.0).contains(&s.oldest_pending_age_seconds), "{s:?}");
    }
}

async fn stored_errors_are_cut_to_500_bytes(db: Db) {
    let rows = enqueue(&db, &["log"]).await;
    db.store.claim_outbox("node-a", 10, LONG).await.unwrap();
    let long = "x".repeat(2000);
    db.store
        .outbox_failed(rows[0].id, "node-a", &long, Some(LONG))
        .await
        .unwrap();
    assert_eq!(
        row(&db, &rows[0]).await.last_error.map(|e| e.len()),
        Some(500)
    );
}

#[tokio::test]
async fn webhook_failure_text_names_the_cause_but_not_the_url_or_the_secret() {
    init();
    let url = format!(
        "http://127.0.0.1:{}/hooks/token-in-the-path",
        jitsudo_testkit::free_port()
    );
    let sink = WebhookSink::new("hook", &url, HOOK_SECRET.to_vec(), Duration::from_secs(2))
        .expect("a valid sink");
    let at = Utc::now();
    let entry = OutboxEntry {
        id: 1,
        event_id: uuid::Uuid::now_v7(),
        request_id: None,
        sink: "hook".into(),
        kind: "request.created".into(),
        payload: "{}".into(),
        state: "pending".into(),
        attempts: 0,
        created_at: at,
        next_attempt_at: at,
        last_error: None,
    };
    let err = sink.deliver(&entry).await.expect_err("nobody listens");
    let EngineError::Delivery { sink, reason } = &err else {
        panic!("{err}")
    };
    assert_eq!(sink, "hook");
    assert!(reason.starts_with("cannot connect"), "{reason}");
    let secret = String::from_utf8_lossy(HOOK_SECRET);
    assert!(
        !reason.contains("token-in-the-path") && !reason.contains(secret.as_ref()),
        "{reason}"
    );
}

// ---- The Notifier against a webhook receiver --------------------------------------------

const HOOK_SECRET: &[u8] = b"webhook-secret-never-stored";

/// What a receiver saw. Deliveries are keyed by `(event id, kind)`: the notices of one
/// commit share an event id.
#[derive(Default)]
struct Inbox {
    /// Answer 500 to the first this many posts of every key.
    fail_first: u32,
    fail_always: bool,
    posts: HashMap<(String, String), u32>,
    /// 2xx answers per key: a receiver deduplicating by key keeps exactly one.
    accepted: HashMap<(String, String), u32>,
    bodies: Vec<serde_json::Value>,
    bad_signatures: u32,
}

struct Receiver {
    url: String,
    inbox: Arc<Mutex<Inbox>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(fail_first: u32, fail_always: bool) -> Receiver {
        let inbox = Arc::new(Mutex::new(Inbox {
            fail_first,
            fail_always,
            ..Inbox::default()
        }));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(inbox.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, inbox, task }
    }

    fn inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Verifies the signature (and its time window) exactly as a production receiver would.
async fn receive(
    State(inbox): State<Arc<Mutex<Inbox>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut inbox = inbox.lock().unwrap();
    if verify_signature(HOOK_SECRET, &header(SIGNATURE_HEADER), &body, Utc::now()).is_err() {
        inbox.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let key = (header(EVENT_ID_HEADER), header(EVENT_KIND_HEADER));
    if header("content-type") != "application/json"
        || json["event_id"] != key.0.as_str()
        || json["kind"] != key.1.as_str()
    {
        return StatusCode::BAD_REQUEST;
    }
    let posts = inbox.posts.entry(key.clone()).or_default();
    *posts += 1;
    let posts = *posts;
    if inbox.fail_always || posts <= inbox.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    *inbox.accepted.entry(key).or_default() += 1;
    inbox.bodies.push(json);
    StatusCode::OK
}

fn notifying_to(url: &str, max_attempts: u32) -> jitsudo_actors::EngineConfig {
    jitsudo_actors::EngineConfig {
        notify: NotifyConfig {
            sinks: vec![SinkConfig::webhook("hook", url, HOOK_SECRET.to_vec())],
            max_attempts,
            backoff: Backoff {
                base: Duration::from_millis(20),
                max: Duration::from_millis(80),
            },
            poll_interval: Duration::from_millis(25),
            claim_ttl: Duration::from_secs(30),
            batch: 8,
        },
        ..config(rules())
    }
}

/// A request waiting for approval: its creation enqueues two notices.
async fn pending_request(engine: &jitsudo_actors::Engine) -> RequestId {
    let mut s = spec("cloud", 600);
    s.role = "operator".into();
    engine.create(alice(), s).await.expect("created").id
}

async fn wait_outbox(
    store: &SharedStore,
    id: RequestId,
    what: &str,
    pred: impl Fn(&OutboxEntry) -> bool,
) -> Vec<OutboxEntry> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows = store.request_outbox(id).await.unwrap();
        if !rows.is_empty() && rows.iter().all(&pred) {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox rows never became {what}: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn key(r: &OutboxEntry) -> (String, String) {
    (r.event_id.to_string(), r.kind.clone())
}

async fn each_notice_reaches_the_webhook_once_after_two_failures(db: Db) {
    let hook = Receiver::start(2, false).await;
    let rig = rig_with(db, notifying_to(&hook.url, 10)).await;
    let id = pending_request(&rig.engine).await;
    let rows = wait_outbox(&rig.store, id, "delivered", |r| r.state == "delivered").await;
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["request.created", "request.approval_needed"]);
    for r in &rows {
        assert_eq!(r.attempts, 2, "{r:?}");
        assert_eq!(
            r.last_error.as_deref(),
            Some("the receiver answered HTTP 500")
        );
    }
    {
        let inbox = hook.inbox();
        assert_eq!(inbox.bad_signatures, 0);
        assert_eq!(inbox.accepted.len(), rows.len());
        for r in &rows {
            assert_eq!(inbox.posts.get(&key(r)), Some(&3), "{r:?}");
            assert_eq!(inbox.accepted.get(&key(r)), Some(&1), "{r:?}");
        }
        for b in &inbox.bodies {
            assert_eq!(b["payload"]["request_id"], id.to_string());
            assert!(b["created_at"].as_str().is_some_and(|t| t.ends_with('Z')));
        }
    }
    assert!(
        rig.engine.actors().iter().any(|a| a.kind == "notifier"),
        "the notifier shows in the actor tree"
    );
    rig.engine.shutdown().await;
}

#[tokio::test]
async fn each_notice_reaches_the_webhook_once_after_two_failures_on_postgres() {
    each_notice_reaches_the_webhook_once_after_two_failures(postgres().await).await;
}

#[tokio::test]
async fn each_notice_reaches_the_webhook_once_after_two_failures_on_sqlite() {
    each_notice_reaches_the_webhook_once_after_two_failures(sqlite().await).await;
}

/// Drives a pending request's notices into dead letters against a receiver that always fails.
async fn dead_lettered(
    hook: &Receiver,
    db: Db,
    max_attempts: u32,
) -> (crate::engine::Rig, Vec<OutboxEntry>) {
    let rig = rig_with(db, notifying_to(&hook.url, max_attempts)).await;
    let id = pending_request(&rig.engine).await;
    let rows = wait_outbox(&rig.store, id, "dead", |r| r.state == "dead").await;
    (rig, rows)
}

#[tokio::test]
async fn notice_the_webhook_keeps_refusing_is_dead_lettered_after_max_attempts() {
    let hook = Receiver::start(0, true).await;
    let (rig, rows) = dead_lettered(&hook, postgres().await, 3).await;
    for r in &rows {
        assert_eq!(r.attempts, 3, "{r:?}");
        let err = r.last_error.as_deref().unwrap_or_default();
        assert_eq!(err, "the receiver answered HTTP 500");
        assert_eq!(
            hook.inbox().posts.get(&key(r)),
            Some(&3),
            "no attempt after the last"
        );
    }
    let dead = rig.store.dead_letters(Some("hook"), 100).await.unwrap();
    assert_eq!(ids(&dead), ids(&rows));
    assert!(hook.inbox().accepted.is_empty());
    rig.engine.shutdown().await;
}

#[tokio::test]
async fn redriven_dead_letter_is_delivered_once_the_webhook_recovers() {
    let hook = Receiver::start(0, true).await;
    let (rig, rows) = dead_lettered(&hook, sqlite().await, 2).await;
    hook.inbox().fail_always = false;
    for r in &rows {
        assert!(rig.store.redrive(r.id, "carol", "node-a").await.unwrap());
    }
    rig.engine.notifier().nudge();
    let id = RequestId(rows[0].request_id.unwrap());
    let delivered = wait_outbox(&rig.store, id, "delivered", |r| r.state == "delivered").await;
    for r in &delivered {
        assert_eq!(
            r.attempts, 0,
            "delivered at the first attempt after the re-drive"
        );
        assert_eq!(hook.inbox().accepted.get(&key(r)), Some(&1), "{r:?}");
    }
    assert!(rig.store.dead_letters(None, 100).await.unwrap().is_empty());
    rig.engine.shutdown().await;
}
