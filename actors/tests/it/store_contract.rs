//! One contract suite, stamped for PostgreSQL and SQLite: every store must behave the same.

use std::time::Duration;

use chrono::Utc;
use jitsudo_actors::domain::{self, Decider, Event, Rules, State};
use jitsudo_actors::store::{Fence, Mode, StoreError, Write};

use crate::fixtures::*;

mod queries;
use queries::*;
mod reconcile;
use reconcile::*;

/// Stamps every case once per backend, as `store_contract::<backend>::<case>`.
macro_rules! store_contract {
    (backends: [$($backend:ident => $open:path),* $(,)?], cases: $cases:tt) => {
        $( store_contract!(@stamp $backend, $open, $cases); )*
    };
    (@stamp $backend:ident, $open:path, [$($case:ident),* $(,)?]) => {
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

store_contract!(
    backends: [
        postgres => crate::fixtures::postgres,
        sqlite => crate::fixtures::sqlite,
    ],
    cases: [
        created_request_reads_back_equal,
        transition_bumps_version_and_writes_one_audit_event_per_version,
        stale_version_writes_nothing,
        wrong_epoch_is_stale,
        lapsed_lease_is_stale,
        handover_releases_only_the_listed_shards,
        concurrent_first_starts_agree_on_the_shard_count,
        unknown_request_is_missing,
        duplicate_create_is_refused,
        failure_mid_way_writes_nothing,
        deadlines_come_from_the_database_clock,
        approval_guard_is_checked_by_the_store,
        takeover_bumps_the_epoch_and_fences_the_old_owner,
        live_lease_is_not_taken,
        shard_count_cannot_change,
        live_requests_excludes_terminal_ones,
        policies_are_versioned_and_deletable,
        dev_database_is_refused_in_production_mode,
        requests_page_newest_first_with_a_keyset_cursor,
        requests_filter_by_requester_state_and_provider,
        awaiting_approval_lists_pending_requests_of_my_groups_but_not_my_own,
        idempotency_key_is_stored_with_the_create_and_used_once_per_requester,
        concurrent_creates_with_one_key_make_one_request,
        request_events_resume_after_a_version,
        trust_tier_changes_are_stored_with_their_audit_event,
        concurrent_trust_tier_changes_each_record_what_they_replaced,
        free_audit_events_carry_no_version,
        audit_queries_page_both_ways_and_filter,
        policies_read_back_with_their_creation_time,
        identities_keep_the_last_verified_email,
        reviews_are_listed_until_closed_once,
        open_requests_and_last_break_glass_of_a_requester,
        overdue_requests_are_found_by_the_database_clock,
        heartbeats_keep_one_process_per_node_name,
        shard_table_lists_owners_epochs_and_leases,
        the_reconciler_finds_requests_by_grant_and_active_ones_by_provider,
        reconciler_findings_are_fenced_by_its_lease,
        the_last_reconcile_pass_of_each_provider_is_kept,
        the_audit_log_refuses_every_change_and_removal,
    ]
);

fn bob() -> Decider {
    Decider {
        principal: domain::Principal::new("bob").with_groups(["approvers"]),
        approver_allowed: true,
        is_admin: false,
    }
}

/// Creates a request needing one approval and returns it as stored.
async fn created(db: &Db) -> (domain::Request, Fence) {
    let tr = new_request(decision(false, 1));
    let fence = db.fence_for(tr.next.id).await;
    let ob = outbox(&tr);
    let w = db
        .store
        .create(&fence, persist(&tr, &ob, 0))
        .await
        .expect("create");
    assert!(matches!(w, Write::Updated { version: 1, .. }), "{w:?}");
    let stored = db
        .store
        .get(tr.next.id)
        .await
        .expect("get")
        .expect("exists");
    (stored, fence)
}

async fn created_request_reads_back_equal(db: Db) {
    let tr = new_request(decision(false, 1));
    let fence = db.fence_for(tr.next.id).await;
    let ob = outbox(&tr);
    let Write::Updated { version, db_now } =
        db.store.create(&fence, persist(&tr, &ob, 0)).await.unwrap()
    else {
        panic!("create must commit")
    };
    let mut expected = tr.next.clone();
    expected.version = version;
    expected.apply_times(&tr.times, db_now);
    let stored = db.store.get(tr.next.id).await.unwrap().unwrap();
    // Times round-trip at microsecond precision.
    assert_eq!(
        stored.created_at.timestamp_micros(),
        expected.created_at.timestamp_micros()
    );
    expected.created_at = stored.created_at;
    expected.approval_deadline = stored.approval_deadline;
    assert_eq!(stored, expected);
    let audit = db.store.request_audit(tr.next.id).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].kind, "request.created");
    assert_eq!(audit[0].request_version, Some(1));
    assert_eq!(
        audit[0].details,
        tr.audit.details.to_string(),
        "details are stored as the exact text"
    );
    let rows = db.store.request_outbox(tr.next.id).await.unwrap();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["request.created", "request.approval_needed"]);
    assert!(
        rows.iter().all(|r| r.event_id == audit[0].id),
        "outbox rows carry their audit event id"
    );
}

async fn transition_bumps_version_and_writes_one_audit_event_per_version(db: Db) {
    let (req, fence) = created(&db).await;
    let tr = domain::step(
        &req,
        Event::Approve {
            by: bob(),
            comment: "ok".into(),
        },
        Utc::now(),
        &Rules::default(),
    )
    .unwrap();
    assert_eq!(tr.next.state, State::Approved);
    let ob = outbox(&tr);
    let w = db
        .store
        .transition(&fence, persist(&tr, &ob, req.version))
        .await
        .unwrap();
    assert!(matches!(w, Write::Updated { version: 2, .. }), "{w:?}");
    let stored = db.store.get(req.id).await.unwrap().unwrap();
    assert_eq!(stored.state, State::Approved);
    assert_eq!(stored.version, 2);
    assert!(stored.grant_deadline.is_some());
    let audit = db.store.request_audit(req.id).await.unwrap();
    let versions: Vec<Option<i64>> = audit.iter().map(|a| a.request_version).collect();
    assert_eq!(versions, [Some(1), Some(2)]);
    assert_eq!(audit[1].kind, "request.approved");
    assert_eq!(audit[1].actor, "bob");
}

async fn stale_version_writes_nothing(db: Db) {
    let (req, fence) = created(&db).await;
    let tr = domain::step(
        &req,
        Event::Approve {
            by: bob(),
            comment: String::new(),
        },
        Utc::now(),
        &Rules::default(),
    )
    .unwrap();
    let ob = outbox(&tr);
    let w = db
        .store
        .transition(&fence, persist(&tr, &ob, req.version + 7))
        .await
        .unwrap();
    assert_eq!(w, Write::Stale);
    assert_eq!(db.store.get(req.id).await.unwrap().unwrap(), req);
    assert_eq!(db.store.request_audit(req.id).await.unwrap().len(), 1);
    assert_eq!(db.store.request_outbox(req.id).await.unwrap().len(), 2);
}

async fn wrong_epoch_is_stale(db: Db) {
    let (req, fence) = created(&db).await;
    let tr = domain::step(
        &req,
        Event::Approve {
            by: bob(),
            comment: String::new(),
        },
        Utc::now(),
        &Rules::default(),
    )
    .unwrap();
    let ob = outbox(&tr);
    let wrong = Fence {
        epoch: fence.epoch + 1,
        ..fence.clone()
    };
    assert_eq!(
        db.store
            .transition(&wrong, persist(&tr, &ob, req.version))
            .await
            .unwrap(),
        Write::Stale
    );
    let other_owner = Fence {
        owner: "node-b".into(),
        ..fence
    };
    assert_eq!(
        db.store
            .transition(&other_owner, persist(&tr, &ob, req.version))
            .await
            .unwrap(),
        Write::Stale
    );
    assert_eq!(db.store.get(req.id).await.unwrap().unwrap().version, 1);
    assert_eq!(db.store.request_audit(req.id).await.unwrap().len(), 1);
}

async fn lapsed_lease_is_stale(db: Db) {
    let (req, fence) = created(&db).await;
    // Let this node's leases lapse: a fenced write must now be refused.
    db.store
        .release_shards(&db.node, db.incarnation, None)
        .await
        .unwrap();
    let tr = domain::step(
        &req,
        Event::Approve {
            by: bob(),
            comment: String::new(),
        },
        Utc::now(),
        &Rules::default(),
    )
    .unwrap();
    let ob = outbox(&tr);
    assert_eq!(
        db.store
            .transition(&fence, persist(&tr, &ob, req.version))
            .await
            .unwrap(),
        Write::Stale
    );
    // A create is fenced too.
    let tr2 = new_request(decision(false, 1));
    let f2 = Fence {
        shard: tr2.next.id.shard(SHARDS),
        ..fence
    };
    let ob2 = outbox(&tr2);
    assert_eq!(
        db.store.create(&f2, persist(&tr2, &ob2, 0)).await.unwrap(),
        Write::Stale
    );
    assert!(db.store.get(tr2.next.id).await.unwrap().is_none());
}

async fn unknown_request_is_missing(db: Db) {
    let tr = new_request(decision(false, 1));
    let fence = db.fence_for(tr.next.id).await;
    let ob = outbox(&tr);
    assert_eq!(
        db.store
            .transition(&fence, persist(&tr, &ob, 1))
            .await
            .unwrap(),
        Write::Missing
    );
    assert!(db.store.get(tr.next.id).await.unwrap().is_none());
}

async fn duplicate_create_is_refused(db: Db) {
    let tr = new_request(decision(false, 1));
    let fence = db.fence_for(tr.next.id).await;
    let ob = outbox(&tr);
    db.store.create(&fence, persist(&tr, &ob, 0)).await.unwrap();
    let err = db
        .store
        .create(&fence, persist(&tr, &ob, 0))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Duplicate { .. }), "{err}");
    assert_eq!(db.store.request_audit(tr.next.id).await.unwrap().len(), 1);
}

async fn failure_mid_way_writes_nothing(db: Db) {
    let (req, fence) = created(&db).await;
    let tr = domain::step(
        &req,
        Event::Approve {
            by: bob(),
            comment: String::new(),
        },
        Utc::now(),
        &Rules::default(),
    )
    .unwrap();
    // The outbox refuses an empty sink: the failure comes after the update and the audit
    // insert in the same commit, and must undo both.
    let mut ob = outbox(&tr);
    ob.last_mut().unwrap().sink = String::new();
    let res = db
        .store
        .transition(&fence, persist(&tr, &ob, req.version))
        .await;
    assert!(
        res.is_err(),
        "a constraint violation must fail the transition: {res:?}"
    );
    assert_eq!(db.store.get(req.id).await.unwrap().unwrap(), req);
    assert_eq!(db.store.request_audit(req.id).await.unwrap().len(), 1);
    assert_eq!(db.store.request_outbox(req.id).await.unwrap().len(), 2);
}

async fn deadlines_come_from_the_database_clock(db: Db) {
    let mut tr = new_request(decision(false, 1));
    // Pretend the node's clock is an hour off: stored times must not care.
    tr.next.created_at -= chrono::Duration::hours(1);
    tr.next.approval_deadline = tr
        .next
        .approval_deadline
        .map(|t| t - chrono::Duration::hours(1));
    let fence = db.fence_for(tr.next.id).await;
    let before = db.store.db_now().await.unwrap();
    let ob = outbox(&tr);
    db.store.create(&fence, persist(&tr, &ob, 0)).await.unwrap();
    let after = db.store.db_now().await.unwrap();
    let stored = db.store.get(tr.next.id).await.unwrap().unwrap();
    assert!(
        stored.created_at >= before && stored.created_at <= after,
        "{before} <= {} <= {after}",
        stored.created_at
    );
    assert_eq!(
        stored.approval_deadline.unwrap() - stored.created_at,
        chrono::Duration::seconds(1800)
    );
}

async fn approval_guard_is_checked_by_the_store(db: Db) {
    let mut d = decision(false, 1);
    d.approval_timeout_seconds = 1;
    let tr = {
        let new = domain::NewRequest {
            id: domain::RequestId::new(),
            requester: alice(),
            spec: spec("demo", 600),
        };
        domain::create(new, d, Utc::now(), &Rules::default(), &Default::default()).unwrap()
    };
    let fence = db.fence_for(tr.next.id).await;
    let ob = outbox(&tr);
    db.store.create(&fence, persist(&tr, &ob, 0)).await.unwrap();
    let req = db.store.get(tr.next.id).await.unwrap().unwrap();
    // The node's clock says "before the deadline"; the database clock is past it.
    let node_now = req.approval_deadline.unwrap() - chrono::Duration::milliseconds(500);
    let approve = domain::step(
        &req,
        Event::Approve {
            by: bob(),
            comment: String::new(),
        },
        node_now,
        &Rules::default(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let ob = outbox(&approve);
    assert_eq!(
        db.store
            .transition(&fence, persist(&approve, &ob, req.version))
            .await
            .unwrap(),
        Write::Stale
    );
    assert_eq!(
        db.store.get(req.id).await.unwrap().unwrap().state,
        State::Pending
    );
}

async fn concurrent_first_starts_agree_on_the_shard_count(db: Db) {
    // Nodes of a new cluster start together: every one of them must read the count the
    // first one stored, none may fail on the race.
    let starts: Vec<_> = (0..8)
        .map(|_| {
            let store = db.store.clone();
            tokio::spawn(async move { store.init_shards(SHARDS).await })
        })
        .collect();
    for s in starts {
        assert_eq!(s.await.unwrap().expect("init_shards"), SHARDS);
    }
}

async fn handover_releases_only_the_listed_shards(db: Db) {
    let held = db.fences().await;
    assert_eq!(held.len(), SHARDS as usize);
    let ttl = Duration::from_secs(30);
    db.store
        .release_shards(&db.node, db.incarnation, Some(&[1, 2]))
        .await
        .unwrap();
    let mut kept: Vec<u32> = db
        .store
        .renew_shards(&db.node, db.incarnation, ttl)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.fence.shard)
        .collect();
    kept.sort();
    assert_eq!(kept, vec![0, 3]);
    // The next owner takes exactly the handed-over shards, at the next epoch.
    let all: Vec<u32> = (0..SHARDS).collect();
    let taken = db
        .store
        .acquire_shards("node-b", uuid::Uuid::now_v7(), &all, ttl)
        .await
        .unwrap();
    let got: Vec<(u32, i64)> = taken
        .iter()
        .map(|l| (l.fence.shard, l.fence.epoch))
        .collect();
    let epoch = |s: u32| held.iter().find(|f| f.shard == s).unwrap().epoch;
    assert_eq!(got, vec![(1, epoch(1) + 1), (2, epoch(2) + 1)]);
}

async fn takeover_bumps_the_epoch_and_fences_the_old_owner(db: Db) {
    let (req, fence_a) = created(&db).await;
    db.store
        .release_shards(&db.node, db.incarnation, None)
        .await
        .unwrap();
    let leases = db
        .store
        .acquire_shards(
            "node-b",
            uuid::Uuid::now_v7(),
            &[fence_a.shard],
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(leases.len(), 1);
    let fence_b = leases[0].fence.clone();
    assert_eq!(fence_b.epoch, fence_a.epoch + 1);
    let tr = domain::step(
        &req,
        Event::Approve {
            by: bob(),
            comment: String::new(),
        },
        Utc::now(),
        &Rules::default(),
    )
    .unwrap();
    let ob = outbox(&tr);
    assert_eq!(
        db.store
            .transition(&fence_a, persist(&tr, &ob, req.version))
            .await
            .unwrap(),
        Write::Stale
    );
    assert!(matches!(
        db.store
            .transition(&fence_b, persist(&tr, &ob, req.version))
            .await
            .unwrap(),
        Write::Updated { .. }
    ));
    // The old owner's renewal no longer finds the shard.
    let renewed = db
        .store
        .renew_shards(&db.node, db.incarnation, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(renewed.iter().all(|l| l.fence.shard != fence_a.shard));
}

async fn live_lease_is_not_taken(db: Db) {
    let fences = db.fences().await;
    assert_eq!(fences.len(), SHARDS as usize);
    let all: Vec<u32> = (0..SHARDS).collect();
    let stolen = db
        .store
        .acquire_shards(
            "node-b",
            uuid::Uuid::now_v7(),
            &all,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(
        stolen.is_empty(),
        "a live lease must not be taken: {stolen:?}"
    );
    let renewed = db
        .store
        .renew_shards(&db.node, db.incarnation, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(renewed.len(), SHARDS as usize);
}

async fn shard_count_cannot_change(db: Db) {
    assert_eq!(db.store.init_shards(SHARDS).await.unwrap(), SHARDS);
    let err = db.store.init_shards(SHARDS * 2).await.unwrap_err();
    assert!(
        matches!(err, StoreError::ShardCountMismatch { stored: SHARDS, configured } if configured == SHARDS * 2),
        "{err}"
    );
    assert!(err.to_string().contains("cannot change"));
}

async fn live_requests_excludes_terminal_ones(db: Db) {
    let (a, fence_a) = created(&db).await;
    let (b, _) = created(&db).await;
    let tr = domain::step(
        &a,
        Event::Cancel { by: alice() },
        Utc::now(),
        &Rules::default(),
    )
    .unwrap();
    let ob = outbox(&tr);
    db.store
        .transition(&fence_a, persist(&tr, &ob, a.version))
        .await
        .unwrap();
    let all: Vec<u32> = (0..SHARDS).collect();
    let live: Vec<_> = db
        .store
        .live_requests(&all)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(live, vec![b.id]);
    let only_other_shards: Vec<u32> = all
        .iter()
        .copied()
        .filter(|s| *s != b.id.shard(SHARDS))
        .collect();
    assert!(
        db.store
            .live_requests(&only_other_shards)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn policies_are_versioned_and_deletable(db: Db) {
    assert!(db.store.policies().await.unwrap().is_empty());
    assert_eq!(
        db.store
            .put_policy("p", "package jitsudo.approval\n", "carol", "node-a")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        db.store
            .put_policy("p", "package jitsudo.approval\n# v2\n", "dave", "node-a")
            .await
            .unwrap(),
        2
    );
    let ps = db.store.policies().await.unwrap();
    assert_eq!(ps.len(), 1);
    assert_eq!((ps[0].version, ps[0].author.as_str()), (2, "dave"));
    assert!(ps[0].rego.contains("v2"));
    assert!(
        db.store
            .delete_policy("p", "carol", "node-a")
            .await
            .unwrap()
    );
    assert!(
        !db.store
            .delete_policy("p", "carol", "node-a")
            .await
            .unwrap(),
        "already deleted"
    );
    assert!(
        !db.store
            .delete_policy("nope", "carol", "node-a")
            .await
            .unwrap()
    );
    assert!(db.store.policies().await.unwrap().is_empty());
}

async fn dev_database_is_refused_in_production_mode(db: Db) {
    let url = db.url.clone();
    let backend = db.store.backend();
    // SQLite holds an exclusive lock: the first store must be gone before reopening.
    drop(db.store);
    let err = match jitsudo_actors::store::open(&url, Mode::Production).await {
        Err(e) => e,
        Ok(_) => panic!("a dev database must be refused outside dev mode"),
    };
    assert!(
        matches!(
            err,
            StoreError::ModeMismatch {
                database_is_dev: true
            }
        ),
        "{err}"
    );
    if backend == "sqlite" {
        let _first = jitsudo_actors::store::open(&url, Mode::Dev).await.unwrap();
        let second = jitsudo_actors::store::open(&url, Mode::Dev).await;
        assert!(
            matches!(second, Err(StoreError::Locked { .. })),
            "a second process on one SQLite file is refused"
        );
    }
    drop(db._keep);
}

/// PostgreSQL only: a node's sessions wait for a lock at most half its self-fencing margin
/// (TTL/10), so a takeover never waits long behind a write: a statement behind a lock held
/// elsewhere fails with `lock_not_available` (55P03) instead of waiting out the 10 s
/// statement timeout, and works again once the lock is gone.
#[tokio::test]
async fn postgres_lock_waits_end_at_half_the_fencing_margin() {
    use sqlx::Connection as _;
    init();
    let tdb = jitsudo_testkit::postgres().await;
    let ttl = Duration::from_secs(2);
    assert_eq!(
        jitsudo_actors::lease::lock_wait_for(ttl),
        Duration::from_millis(200)
    );
    let store = jitsudo_actors::store::open_for(&tdb.url, Mode::Dev, ttl)
        .await
        .expect("store opens");
    let mut holder = sqlx::PgConnection::connect(&tdb.url)
        .await
        .expect("a second session");
    sqlx::raw_sql("BEGIN; LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .expect("lock taken");
    let id = domain::RequestId::new();
    match store.get(id).await {
        Err(StoreError::Database {
            source: sqlx::Error::Database(e),
            ..
        }) => assert_eq!(e.code().as_deref(), Some("55P03"), "{e}"),
        other => panic!("expected a lock timeout, got {other:?}"),
    }
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .expect("lock released");
    assert!(store.get(id).await.expect("readable again").is_none());
}

/// The audit tables are append-only by the database: UPDATE, DELETE (and on PostgreSQL
/// TRUNCATE) fail for the role jitsudod connects as, whatever the statement.
async fn the_audit_log_refuses_every_change_and_removal(db: Db) {
    use sqlx::Connection as _;
    created(&db).await;
    let backend = db.store.backend();
    let (bytes, now) = if backend == "postgres" {
        ("'\\x00'::bytea", "now()")
    } else {
        ("x'00'", "0")
    };
    let setup = [
        format!(
            "INSERT INTO audit_chain (seq, event_id, prev_hash, hash) SELECT 1, id, {bytes}, {bytes} FROM audit_events LIMIT 1"
        ),
        format!(
            "INSERT INTO audit_checkpoints (seq, hash, at, key_id, signature) VALUES (1, {bytes}, {now}, 'k', {bytes})"
        ),
    ];
    let mut attempts = vec![
        "UPDATE audit_events SET actor = 'mallory'".to_owned(),
        "DELETE FROM audit_events".to_owned(),
        "UPDATE audit_chain SET seq = 2".to_owned(),
        "DELETE FROM audit_chain".to_owned(),
        format!("UPDATE audit_checkpoints SET signature = {bytes}"),
        "DELETE FROM audit_checkpoints".to_owned(),
    ];
    if backend == "postgres" {
        attempts.extend(
            ["audit_events", "audit_chain", "audit_checkpoints"]
                .map(|t| format!("TRUNCATE {t} CASCADE")),
        );
    }
    macro_rules! run {
        ($conn:expr) => {{
            let mut c = $conn;
            for s in &setup {
                sqlx::raw_sql(sqlx::AssertSqlSafe(s.clone()))
                    .execute(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{s}: {e}"));
            }
            for s in &attempts {
                let e = sqlx::raw_sql(sqlx::AssertSqlSafe(s.clone()))
                    .execute(&mut c)
                    .await
                    .err()
                    .unwrap_or_else(|| panic!("{backend}: {s} was allowed"));
                assert!(
                    e.to_string().contains("the audit log is append-only"),
                    "{backend}: {s}: {e}"
                );
            }
            // Nothing changed: the events are there, as written.
            let kept: i64 =
                sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE actor <> 'mallory'")
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
            assert!(kept > 0, "{backend}");
        }};
    }
    if backend == "postgres" {
        run!(sqlx::PgConnection::connect(&db.url).await.unwrap());
    } else {
        run!(
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.url))
                .await
                .unwrap()
        );
    }
}
