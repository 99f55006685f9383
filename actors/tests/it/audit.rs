//! The audit chain end to end: the sequencer chains every committed event exactly once,
//! `verify` names the first problem after any edit, deletion, reordering or truncation in
//! SQL, and a handover between sequencers never forks the chain.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ed25519_dalek::SigningKey;
use jitsudo_actors::audit::{SequencerArgs, SequencerHandle, VerifyOptions, VerifyReport, verify};
use jitsudo_actors::config::AuditConfig;
use jitsudo_actors::domain::{self, Decider, Event, Principal, RequestId, Rules};
use jitsudo_actors::stats::ActorRegistry;
use jitsudo_actors::store::{SharedStore, Write};
use jitsudo_proto::audit::{Anchor, AnchorKind};
use sqlx::Connection;
use uuid::Uuid;

use crate::fixtures::*;

fn key() -> Arc<SigningKey> {
    Arc::new(SigningKey::from_bytes(&[42u8; 32]))
}

fn audit_config(checkpoint_every: i64) -> AuditConfig {
    AuditConfig {
        signing_key: Some(key()),
        checkpoint_every,
        checkpoint_interval: Duration::from_secs(3600),
        poll: Duration::from_millis(20),
        ..AuditConfig::default()
    }
}

async fn sequencer(
    store: &SharedStore,
    node: &str,
    ttl: Duration,
    cfg: AuditConfig,
) -> SequencerHandle {
    let args = SequencerArgs {
        store: store.clone(),
        node: node.into(),
        incarnation: Uuid::now_v7(),
        lease_ttl: ttl,
        config: cfg,
        sinks: vec!["log".into()],
        registry: ActorRegistry::default(),
    };
    SequencerHandle::spawn(args, None)
        .await
        .expect("sequencer starts")
}

/// Writes `n` requests (one audit event each) and approves every other one (a second event).
async fn events(db: &Db, n: usize) -> Vec<RequestId> {
    let bob = Decider {
        principal: Principal::new("bob"),
        approver_allowed: true,
        is_admin: false,
    };
    let mut ids = Vec::new();
    for i in 0..n {
        let tr = new_request(decision(false, 1));
        let fence = db.fence_for(tr.next.id).await;
        let ob = outbox(&tr);
        let Write::Updated { version, db_now } =
            db.store.create(&fence, persist(&tr, &ob, 0)).await.unwrap()
        else {
            panic!("create")
        };
        if i % 2 == 0 {
            let mut req = tr.next.clone();
            req.version = version;
            req.apply_times(&tr.times, db_now);
            let ap = domain::step(
                &req,
                Event::Approve {
                    by: bob.clone(),
                    comment: String::new(),
                },
                Utc::now(),
                &Rules::default(),
            )
            .unwrap();
            let ob = outbox(&ap);
            db.store
                .transition(&fence, persist(&ap, &ob, version))
                .await
                .unwrap();
        }
        ids.push(tr.next.id);
    }
    ids
}

async fn wait_all_chained(store: &SharedStore) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = store.audit_stats(None).await.unwrap();
        if s.unchained == 0 && s.chain_length > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events were not chained: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_checkpoint(store: &SharedStore, seq: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !store
        .checkpoints()
        .await
        .unwrap()
        .iter()
        .any(|c| c.seq >= seq)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint at {seq}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn report(db: &Db) -> VerifyReport {
    verify(
        db.store.as_ref(),
        Some(&key().verifying_key()),
        &VerifyOptions::default(),
    )
    .await
    .unwrap()
}

/// Tampering as an attacker who owns the tables (or is superuser) can: past the
/// append-only triggers, which only the owner may switch off.
async fn sql(db: &Db, statements: &[String]) {
    let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("SET session_replication_role = replica")
        .execute(&mut c)
        .await
        .unwrap();
    for s in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(s.clone()))
            .execute(&mut c)
            .await
            .unwrap();
    }
}

/// A chained log of 30 events (20 requests), checkpointed after every batch (last at 30).
async fn chained_log() -> (Db, SequencerHandle) {
    let db = postgres().await;
    let seq = sequencer(
        &db.store,
        "node-a",
        Duration::from_secs(30),
        audit_config(1),
    )
    .await;
    for round in 1..=10 {
        events(&db, 2).await;
        wait_all_chained(&db.store).await;
        wait_checkpoint(&db.store, 3 * round).await;
    }
    seq.actor.stop(None);
    let r = report(&db).await;
    assert!(r.is_intact(), "{r:#?}");
    assert_eq!(r.chain_length, 30);
    // At least one checkpoint per round (the sequencer may pick a round up in two batches).
    assert!(r.checkpoints >= 10, "{r:#?}");
    assert_eq!(r.last_checkpoint_seq, Some(30));
    (db, seq)
}

async fn event_at(db: &Db, seq: i64) -> Uuid {
    db.store.chain_page(seq - 1, 1).await.unwrap()[0].0.event_id
}

#[tokio::test]
async fn every_event_is_chained_exactly_once_and_the_log_verifies() {
    for db in [postgres().await, sqlite().await] {
        let ids = events(&db, 25).await;
        let seq = sequencer(
            &db.store,
            "node-a",
            Duration::from_secs(30),
            audit_config(10),
        )
        .await;
        wait_all_chained(&db.store).await;
        wait_checkpoint(&db.store, 38).await;
        let mut seen = std::collections::HashSet::new();
        let page = db.store.chain_page(0, 1000).await.unwrap();
        assert_eq!(page.len(), 25 + 13);
        for (link, ev) in &page {
            assert!(seen.insert(link.event_id), "event chained twice");
            assert!(ev.is_some());
        }
        for id in ids {
            let n = db.store.request_audit(id).await.unwrap().len();
            let chained = page
                .iter()
                .filter(|(_, e)| e.as_ref().unwrap().request_id == Some(id.0))
                .count();
            assert_eq!(chained, n, "every event of {id} is in the chain");
        }
        let r = report(&db).await;
        assert!(r.is_intact(), "{} {r:#?}", db.store.backend());
        assert_eq!(r.unchained, 0);
        assert_eq!(r.checkpoints, 1, "one batch, one checkpoint");
        seq.actor.stop(None);
    }
}

#[tokio::test]
async fn an_edited_event_is_named_as_the_first_broken_link() {
    let (db, _) = chained_log().await;
    let id = event_at(&db, 17).await;
    sql(
        &db,
        &[format!(
            "UPDATE audit_events SET details = details || ' ' WHERE id = '{id}'"
        )],
    )
    .await;
    let r = report(&db).await;
    assert_eq!(r.first_broken_seq, Some(17), "{r:#?}");
    assert!(r.first_broken.unwrap().contains("hash does not match"));
    assert_eq!(r.verified_through, 16);
}

#[tokio::test]
async fn an_edited_actor_is_caught_too() {
    let (db, _) = chained_log().await;
    let id = event_at(&db, 5).await;
    sql(
        &db,
        &[format!(
            "UPDATE audit_events SET actor = 'mallory' WHERE id = '{id}'"
        )],
    )
    .await;
    assert_eq!(report(&db).await.first_broken_seq, Some(5));
}

#[tokio::test]
async fn a_deleted_event_is_a_gap_in_the_chain_and_in_its_request_versions() {
    let (db, _) = chained_log().await;
    let id = event_at(&db, 12).await;
    sql(
        &db,
        &[
            "DELETE FROM audit_chain WHERE seq = 12".into(),
            format!("DELETE FROM audit_events WHERE id = '{id}'"),
        ],
    )
    .await;
    let r = report(&db).await;
    assert_eq!(r.first_broken_seq, Some(13), "{r:#?}");
    assert!(
        r.first_broken
            .as_deref()
            .unwrap()
            .contains("expected sequence number 12")
    );
    assert_eq!(r.version_gaps.len(), 1, "{r:#?}");
}

#[tokio::test]
async fn a_deleted_unchained_event_shows_as_a_version_gap() {
    let db = postgres().await;
    let ids = events(&db, 2).await;
    sql(
        &db,
        &[format!(
            "DELETE FROM audit_events WHERE request_id = '{}' AND request_version = 1",
            ids[0]
        )],
    )
    .await;
    let r = report(&db).await;
    assert_eq!(r.version_gaps, vec![(ids[0].to_string(), 2, vec![1])]);
    assert!(!r.is_intact());
}

#[tokio::test]
async fn reordered_chain_entries_are_named() {
    let (db, _) = chained_log().await;
    sql(
        &db,
        &[
            "UPDATE audit_chain SET seq = -seq WHERE seq IN (8, 9)".into(),
            "UPDATE audit_chain SET seq = 9 WHERE seq = -8".into(),
            "UPDATE audit_chain SET seq = 8 WHERE seq = -9".into(),
        ],
    )
    .await;
    assert_eq!(report(&db).await.first_broken_seq, Some(8));
}

#[tokio::test]
async fn a_chain_truncated_below_its_last_checkpoint_is_reported() {
    let (db, _) = chained_log().await;
    sql(&db, &["DELETE FROM audit_chain WHERE seq > 25".into()]).await;
    let r = report(&db).await;
    assert_eq!(
        r.truncated
            .as_ref()
            .map(|t| (t.chain_length, t.checkpoint_seq)),
        Some((25, 30)),
        "{r:#?}"
    );
    assert_eq!(r.unchained, 5, "the cut events are unchained again");
    assert!(!r.is_intact());
}

#[tokio::test]
async fn events_after_the_last_checkpoint_and_unchained_ones_are_reported() {
    let (db, _) = chained_log().await;
    // The sequencer is stopped: new events stay unchained, and the chain stops at 30.
    events(&db, 3).await;
    let r = report(&db).await;
    assert!(r.is_intact());
    assert_eq!(r.events_after_last_checkpoint, 0);
    assert_eq!(r.unchained, 5);
    assert!(r.oldest_unchained_age_seconds.is_some());
    // The windowed form the sequencer's metrics read counts only events from `since` on.
    let all = db.store.audit_stats(None).await.unwrap();
    let oldest = all.oldest_unchained_at.expect("unchained events");
    let window = db.store.audit_stats(Some(oldest)).await.unwrap();
    assert_eq!(
        (window.unchained, window.oldest_unchained_at),
        (5, Some(oldest))
    );
    let later = oldest + chrono::Duration::hours(1);
    let none = db.store.audit_stats(Some(later)).await.unwrap();
    assert_eq!((none.unchained, none.oldest_unchained_at), (0, None));
    assert_eq!(
        none.chain_length, 30,
        "the chain's length whatever the window"
    );
    // Chained but not yet checkpointed.
    let seq = sequencer(
        &db.store,
        "node-a",
        Duration::from_secs(30),
        audit_config(1000),
    )
    .await;
    wait_all_chained(&db.store).await;
    seq.actor.stop(None);
    let r = report(&db).await;
    assert_eq!(r.chain_length, 35);
    assert_eq!(r.events_after_last_checkpoint, 5);
    assert_eq!(r.unchained, 0);
}

#[tokio::test]
async fn a_forged_or_mismatched_checkpoint_is_reported() {
    let (db, _) = chained_log().await;
    let forged = db.store.checkpoints().await.unwrap()[4].seq;
    sql(
        &db,
        &[format!(
            "UPDATE audit_checkpoints SET at = at + interval '1 second' WHERE seq = {forged}"
        )],
    )
    .await;
    let r = report(&db).await;
    assert_eq!(r.checkpoint_problems.len(), 1, "{r:#?}");
    assert_eq!(r.checkpoint_problems[0].seq, forged);
    assert!(r.checkpoint_problems[0].problem.contains("signature"));
    let other = SigningKey::from_bytes(&[1u8; 32]).verifying_key();
    let r = verify(db.store.as_ref(), Some(&other), &VerifyOptions::default())
        .await
        .unwrap();
    assert!(!r.checkpoint_problems.is_empty());
    assert!(
        r.checkpoint_problems
            .iter()
            .all(|p| p.problem.contains("another key"))
    );
}

/// The careful rewrite: edit the event at `from`, recompute the (public, unkeyed) chain from
/// there to its end, and delete every checkpoint that no longer matches it.
async fn rewrite_from(db: &Db, from: i64) {
    let page = db.store.chain_page(0, 1000).await.unwrap();
    let mut prev = jitsudo_proto::audit::GENESIS;
    let mut statements = vec![format!("DELETE FROM audit_checkpoints WHERE seq >= {from}")];
    for (row, event) in page {
        let mut rec = jitsudo_actors::audit::record(event.as_ref().unwrap());
        if row.seq == from {
            rec.details.push(' ');
            statements.push(format!(
                "UPDATE audit_events SET details = details || ' ' WHERE id = '{}'",
                row.event_id
            ));
        }
        let hash = jitsudo_proto::audit::chain_hash(&prev, &rec);
        if row.seq >= from {
            statements.push(format!(
                "UPDATE audit_chain SET prev_hash = '\\x{}', hash = '\\x{}' WHERE seq = {}",
                hex::encode(prev),
                hex::encode(hash),
                row.seq
            ));
        }
        prev = hash;
    }
    sql(db, &statements).await;
}

async fn verify_with(db: &Db, anchors: Vec<Anchor>, require_checkpoint: bool) -> VerifyReport {
    let options = VerifyOptions {
        anchors,
        require_checkpoint,
    };
    verify(db.store.as_ref(), Some(&key().verifying_key()), &options)
        .await
        .unwrap()
}

fn pinned(cp: &jitsudo_actors::store::Checkpoint, kind: AnchorKind) -> Anchor {
    Anchor {
        kind,
        seq: cp.seq,
        hash: cp.hash.as_slice().try_into().unwrap(),
    }
}

#[tokio::test]
async fn a_rewritten_log_with_a_recomputed_chain_verifies_alone_but_not_against_its_pin() {
    let (db, _) = chained_log().await;
    let newest = db.store.checkpoints().await.unwrap().pop().unwrap();
    let pin = pinned(&newest, AnchorKind::PinnedCheckpoint);
    assert!(verify_with(&db, vec![pin.clone()], true).await.is_intact());

    rewrite_from(&db, 17).await;
    let alone = verify_with(&db, vec![], true).await;
    assert!(
        alone.is_intact(),
        "the careful rewrite is what a pin exists for: {alone:#?}"
    );
    let r = verify_with(&db, vec![pin], true).await;
    assert!(!r.is_intact());
    assert_eq!(
        r.anchor_problems,
        [
            "pinned checkpoint 30 is no longer among the log's signed checkpoints: they are append-only, so it was deleted or replaced",
            "the log disagrees with pinned checkpoint 30: the chain's hash there is different, so entries up to 30 were rewritten or replaced",
        ],
        "{r:#?}"
    );
    // The same from a checkpoint received through a sink.
    let given = pinned(&newest, AnchorKind::GivenCheckpoint);
    let r = verify_with(&db, vec![given], false).await;
    assert!(
        r.anchor_problems
            .iter()
            .any(|p| p.starts_with("the log disagrees with the given checkpoint 30")),
        "{r:#?}"
    );
}

#[tokio::test]
async fn truncation_is_caught_by_the_pinned_checkpoint_or_the_entry_last_seen() {
    let (db, _) = chained_log().await;
    let cps = db.store.checkpoints().await.unwrap();
    let newest = cps.last().unwrap();
    let older = cps.iter().rev().find(|c| c.seq < 28).unwrap();
    let head = db.store.chain_page(29, 1).await.unwrap()[0].0.clone();
    let seen = Anchor {
        kind: AnchorKind::SeenEntry,
        seq: head.seq,
        hash: head.hash.as_slice().try_into().unwrap(),
    };
    // Pinned at the older checkpoint, the verifier saw entry 30: cutting 28–30 (after the
    // pinned checkpoint, with the newer checkpoints gone) is caught by the entry it saw.
    let pin = pinned(older, AnchorKind::PinnedCheckpoint);
    sql(
        &db,
        &[
            "DELETE FROM audit_checkpoints WHERE seq >= 28".into(),
            "DELETE FROM audit_chain WHERE seq >= 28".into(),
        ],
    )
    .await;
    let alone = verify_with(&db, vec![pin.clone()], true).await;
    assert!(alone.is_intact(), "{alone:#?}");
    let r = verify_with(&db, vec![pin, seen], true).await;
    assert_eq!(r.anchor_problems.len(), 1, "{r:#?}");
    assert!(
        r.anchor_problems[0].starts_with("the log ends at entry 27, before chain entry 30 seen"),
        "{r:#?}"
    );
    // Pinned at the newest checkpoint (30): the cut is before it.
    let r = verify_with(
        &db,
        vec![pinned(newest, AnchorKind::PinnedCheckpoint)],
        true,
    )
    .await;
    assert!(
        r.anchor_problems
            .iter()
            .any(|p| p.starts_with("the log ends at entry 27, before pinned checkpoint 30")),
        "{r:#?}"
    );
}

#[tokio::test]
async fn a_log_no_signed_checkpoint_covers_fails_when_one_is_required() {
    let (db, _) = chained_log().await;
    sql(&db, &["DELETE FROM audit_checkpoints".into()]).await;
    assert!(verify_with(&db, vec![], false).await.is_intact());
    let r = verify_with(&db, vec![], true).await;
    assert!(!r.is_intact());
    assert!(
        r.missing_checkpoint
            .as_deref()
            .is_some_and(|m| m.starts_with("no signed checkpoint covers the log")),
        "{r:#?}"
    );
    // Without a key nothing can be checked: required means refused.
    let options = VerifyOptions {
        anchors: vec![],
        require_checkpoint: true,
    };
    let r = verify(db.store.as_ref(), None, &options).await.unwrap();
    assert!(r.missing_checkpoint.unwrap().contains("signs none"));
}

#[tokio::test]
async fn handover_between_two_sequencers_does_not_fork_the_chain() {
    let db = postgres().await;
    let ttl = Duration::from_millis(600);
    let a = sequencer(&db.store, "node-a", ttl, audit_config(7)).await;
    let b = sequencer(&db.store, "node-b", ttl, audit_config(7)).await;
    // Both run at once: only the lease holder may append.
    events(&db, 15).await;
    wait_all_chained(&db.store).await;
    // Stop whichever; the other takes over once the lease lapses and continues the chain.
    a.actor.stop(None);
    events(&db, 15).await;
    wait_all_chained(&db.store).await;
    b.actor.stop(None);
    let a2 = sequencer(&db.store, "node-a", ttl, audit_config(7)).await;
    events(&db, 10).await;
    wait_all_chained(&db.store).await;
    a2.actor.stop(None);
    let r = report(&db).await;
    assert!(r.is_intact(), "{r:#?}");
    // 15 requests make 23 events (every other one is approved); 10 make 15.
    assert_eq!(r.chain_length, 23 + 23 + 15);
    let page = db.store.chain_page(0, 1000).await.unwrap();
    let distinct: std::collections::HashSet<_> = page.iter().map(|(l, _)| l.event_id).collect();
    assert_eq!(distinct.len(), page.len());
}

#[tokio::test]
async fn every_transition_of_a_request_is_chained_by_the_engine_within_a_bound() {
    let rig = crate::engine::rig_on(postgres().await, crate::engine::rules()).await;
    let req = rig.engine.create(alice(), spec("cloud", 1)).await.unwrap();
    crate::engine::wait_state(&rig.store, req.id, jitsudo_actors::domain::State::Expired).await;
    wait_all_chained(&rig.store).await;
    let events = rig.store.request_audit(req.id).await.unwrap();
    assert_eq!(events.len(), 5, "one audit event per transition");
    let chain = rig.store.chain_page(0, 1000).await.unwrap();
    for e in &events {
        assert_eq!(
            chain.iter().filter(|(l, _)| l.event_id == e.id).count(),
            1,
            "{} chained once",
            e.kind
        );
    }
    let r = verify(rig.store.as_ref(), None, &VerifyOptions::default())
        .await
        .unwrap();
    assert!(r.is_intact(), "{r:#?}");
    rig.engine.shutdown().await;
}

/// A role with every privilege on the audit tables that does not own them (the role split
/// docs/security.md describes): the triggers refuse its changes, and it cannot switch them
/// off; the log verifies after.
#[tokio::test]
async fn a_role_that_does_not_own_the_audit_tables_cannot_change_them_or_lift_the_triggers() {
    let (db, _) = chained_log().await;
    let role = format!("jitsudo_it_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    for s in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!("GRANT ALL PRIVILEGES ON audit_events, audit_chain, audit_checkpoints TO {role}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(s))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    assert!(db.url.contains("://postgres@"), "{}", db.url);
    let url = db.url.replace("://postgres@", &format!("://{role}@"));
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    for s in [
        "UPDATE audit_events SET actor = 'mallory'",
        "DELETE FROM audit_chain WHERE seq > 25",
        "TRUNCATE audit_checkpoints CASCADE",
    ] {
        let e = sqlx::raw_sql(s).execute(&mut c).await.unwrap_err();
        assert!(
            e.to_string().contains("the audit log is append-only"),
            "{s}: {e}"
        );
    }
    for s in [
        "ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only",
        "DROP TRIGGER audit_chain_append_only ON audit_chain",
        "SET session_replication_role = replica",
    ] {
        assert!(
            sqlx::raw_sql(s).execute(&mut c).await.is_err(),
            "{s} was allowed to a role that does not own the tables"
        );
    }
    drop(c);
    assert!(report(&db).await.is_intact());
    for s in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(s))
            .execute(&mut admin)
            .await
            .unwrap();
    }
}
