//! Contract cases for what the API reads and records besides transitions: request pages,
//! idempotency keys, watch events, principals, free audit events, audit queries, policies.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use jitsudo_actors::domain::{
    self, Decider, Event, Idempotency, NewRequest, PersonRef, Principal, Request, RequestId,
    RequestSpec, Rules, State, Transition,
};
use jitsudo_actors::policy::Decision;
use jitsudo_actors::store::{AUDIT_LEASE, AuditQuery, ChainRow, ListFilter, StoreError, Write};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::fixtures::*;

fn transition(requester: Principal, spec: RequestSpec, d: Decision) -> Transition {
    let new = NewRequest {
        id: RequestId::new(),
        requester,
        spec,
    };
    domain::create(new, d, Utc::now(), &Rules::default(), &Default::default())
        .expect("valid request")
}

fn keyed(mut tr: Transition, key: &str) -> Transition {
    tr.idempotency = Some(Idempotency::new(key, &tr.next.spec).expect("valid key"));
    tr
}

async fn commit(db: &Db, tr: &Transition) -> Result<Write, StoreError> {
    let fence = db.fence_for(tr.next.id).await;
    let ob = outbox(tr);
    db.store.create(&fence, persist(tr, &ob, 0)).await
}

async fn stored(db: &Db, tr: &Transition) -> Request {
    let w = commit(db, tr).await.expect("create");
    assert!(matches!(w, Write::Updated { version: 1, .. }), "{w:?}");
    db.store.get(tr.next.id).await.unwrap().expect("stored")
}

async fn apply(db: &Db, req: &Request, ev: Event) -> Request {
    let tr = domain::step(req, ev, Utc::now(), &Rules::default()).expect("accepted");
    let fence = db.fence_for(req.id).await;
    let ob = outbox(&tr);
    let w = db
        .store
        .transition(&fence, persist(&tr, &ob, req.version))
        .await
        .unwrap();
    assert!(matches!(w, Write::Updated { .. }), "{w:?}");
    db.store.get(req.id).await.unwrap().unwrap()
}

fn approver(p: Principal) -> Decider {
    Decider {
        principal: p,
        approver_allowed: true,
        is_admin: false,
    }
}

fn bob() -> Principal {
    Principal::new("bob")
        .with_groups(["approvers"])
        .with_verified_email("bob@example.com")
}

fn ids(reqs: &[Request]) -> Vec<RequestId> {
    reqs.iter().map(|r| r.id).collect()
}

fn newest_first(reqs: &[Request]) -> Vec<RequestId> {
    let mut sorted: Vec<&Request> = reqs.iter().collect();
    sorted.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.id)));
    sorted.iter().map(|r| r.id).collect()
}

pub(super) async fn requests_page_newest_first_with_a_keyset_cursor(db: Db) {
    let mut all = Vec::new();
    for _ in 0..5 {
        all.push(stored(&db, &new_request(decision(false, 1))).await);
    }
    let expected = newest_first(&all);
    let mut seen = Vec::new();
    let mut filter = ListFilter {
        limit: 2,
        ..ListFilter::default()
    };
    loop {
        let page = db.store.list_requests(&filter).await.unwrap();
        assert!(page.len() <= 2);
        if page.is_empty() {
            break;
        }
        let last = page.last().unwrap();
        filter.before = Some((last.created_at, last.id.0));
        seen.extend(ids(&page));
    }
    assert_eq!(seen, expected, "every request once, newest first");
    // Listed requests are whole records, equal to what `get` reads.
    let first = db
        .store
        .list_requests(&ListFilter::default())
        .await
        .unwrap();
    assert_eq!(first.len(), 5);
    assert_eq!(
        first[0],
        db.store.get(first[0].id).await.unwrap().unwrap(),
        "a listed request reads back whole"
    );
}

pub(super) async fn requests_filter_by_requester_state_and_provider(db: Db) {
    let a1 = stored(&db, &new_request(decision(false, 1))).await;
    let a2 = stored(&db, &new_request(decision(false, 1))).await;
    let dave = Principal::new("dave").with_groups(["engineering"]);
    let d1 = stored(
        &db,
        &transition(dave.clone(), spec("other", 600), decision(false, 1)),
    )
    .await;
    let a2 = apply(&db, &a2, Event::Cancel { by: alice() }).await;
    assert_eq!(a2.state, State::Cancelled);
    let list = |f: ListFilter| {
        let store = db.store.clone();
        async move {
            let mut got = ids(&store.list_requests(&f).await.unwrap());
            got.sort();
            got
        }
    };
    let sorted = |mut v: Vec<RequestId>| {
        v.sort();
        v
    };
    let by_alice = ListFilter {
        requester: Some("alice".into()),
        ..ListFilter::default()
    };
    assert_eq!(list(by_alice.clone()).await, sorted(vec![a1.id, a2.id]));
    let pending = ListFilter {
        states: vec![State::Pending],
        ..by_alice.clone()
    };
    assert_eq!(list(pending).await, vec![a1.id]);
    let ended = ListFilter {
        states: vec![State::Cancelled, State::Rejected],
        ..ListFilter::default()
    };
    assert_eq!(list(ended).await, vec![a2.id]);
    let other = ListFilter {
        provider: Some("other".into()),
        ..ListFilter::default()
    };
    assert_eq!(list(other).await, vec![d1.id]);
    let nobody = ListFilter {
        requester: Some("dave".into()),
        provider: Some("demo".into()),
        ..ListFilter::default()
    };
    assert!(list(nobody).await.is_empty());
}

pub(super) async fn awaiting_approval_lists_pending_requests_of_my_groups_but_not_my_own(db: Db) {
    let mut security = decision(false, 1);
    security.approver_groups = vec!["security".into()];
    let wanted = stored(&db, &new_request(decision(false, 1))).await;
    let other_groups = stored(&db, &transition(alice(), spec("demo", 600), security)).await;
    let own = stored(
        &db,
        &transition(bob(), spec("demo", 600), decision(false, 1)),
    )
    .await;
    // Another subject, the same verified email: the same person as bob.
    let bob_alias = Principal::new("bob-laptop").with_verified_email("Bob@example.com");
    let own_alias = stored(
        &db,
        &transition(bob_alias, spec("demo", 600), decision(false, 1)),
    )
    .await;
    let approved_by_me = stored(&db, &new_request(decision(false, 2))).await;
    let approved_by_me = apply(
        &db,
        &approved_by_me,
        Event::Approve {
            by: approver(bob()),
            comment: String::new(),
        },
    )
    .await;
    assert_eq!(approved_by_me.state, State::Pending, "one of two approvals");
    let cancelled = stored(&db, &new_request(decision(false, 1))).await;
    apply(&db, &cancelled, Event::Cancel { by: alice() }).await;

    let mine = ListFilter {
        awaiting_groups: Some(vec!["approvers".into(), "ops".into()]),
        caller: Some(bob().person()),
        ..ListFilter::default()
    };
    assert_eq!(
        ids(&db.store.list_requests(&mine).await.unwrap()),
        vec![wanted.id]
    );
    // Without the caller nothing is excluded but the other groups and the finished one.
    let groups_only = ListFilter {
        caller: None,
        ..mine.clone()
    };
    let got: BTreeSet<RequestId> = ids(&db.store.list_requests(&groups_only).await.unwrap())
        .into_iter()
        .collect();
    let expected: BTreeSet<RequestId> = [wanted.id, own.id, own_alias.id, approved_by_me.id]
        .into_iter()
        .collect();
    assert_eq!(got, expected);
    assert!(!got.contains(&other_groups.id));
    // An unverified email links nobody.
    let unverified = ListFilter {
        caller: Some(PersonRef {
            subject: "carol".into(),
            verified_email: None,
            links: Vec::new(),
        }),
        ..mine.clone()
    };
    assert_eq!(db.store.list_requests(&unverified).await.unwrap().len(), 4);
    let no_groups = ListFilter {
        awaiting_groups: Some(vec![]),
        ..mine
    };
    assert!(db.store.list_requests(&no_groups).await.unwrap().is_empty());
}

pub(super) async fn idempotency_key_is_stored_with_the_create_and_used_once_per_requester(db: Db) {
    let first = keyed(new_request(decision(false, 1)), "retry-1");
    let req = stored(&db, &first).await;
    let (found, hash) = db
        .store
        .get_by_idempotency_key("alice", "retry-1")
        .await
        .unwrap()
        .expect("the key finds its request");
    assert_eq!(found, req);
    assert_eq!(hash, first.idempotency.as_ref().unwrap().content_hash);

    // The same key again (same or other content) writes nothing at all.
    let again = keyed(new_request(decision(false, 1)), "retry-1");
    let err = commit(&db, &again).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::IdempotencyKeyTaken { requester, key } if requester == "alice" && key == "retry-1"),
        "{err}"
    );
    assert!(db.store.get(again.next.id).await.unwrap().is_none());
    assert!(
        db.store
            .request_audit(again.next.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        db.store
            .request_outbox(again.next.id)
            .await
            .unwrap()
            .is_empty()
    );

    // Keys belong to their requester; creates without a key never collide.
    let dave = keyed(
        transition(
            Principal::new("dave"),
            spec("demo", 600),
            decision(false, 1),
        ),
        "retry-1",
    );
    stored(&db, &dave).await;
    stored(&db, &new_request(decision(false, 1))).await;
    stored(&db, &new_request(decision(false, 1))).await;
    assert!(
        db.store
            .get_by_idempotency_key("alice", "retry-2")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        db.store
            .get_by_idempotency_key("dave", "retry-1")
            .await
            .unwrap()
            .unwrap()
            .0
            .id,
        dave.next.id
    );
}

pub(super) async fn concurrent_creates_with_one_key_make_one_request(db: Db) {
    db.fences().await;
    for round in 0..5 {
        let key = format!("race-{round}");
        let a = keyed(new_request(decision(false, 1)), &key);
        let b = keyed(new_request(decision(false, 1)), &key);
        let (fa, fb) = (db.fence_for(a.next.id).await, db.fence_for(b.next.id).await);
        let spawn = |tr: Transition, fence| {
            let store = db.store.clone();
            tokio::spawn(async move {
                let ob = outbox(&tr);
                store.create(&fence, persist(&tr, &ob, 0)).await
            })
        };
        let (ra, rb) = tokio::join!(spawn(a.clone(), fa), spawn(b.clone(), fb));
        let results = [ra.unwrap(), rb.unwrap()];
        let won = results
            .iter()
            .filter(|r| matches!(r, Ok(Write::Updated { .. })))
            .count();
        let lost = results
            .iter()
            .filter(|r| matches!(r, Err(StoreError::IdempotencyKeyTaken { .. })))
            .count();
        assert_eq!((won, lost), (1, 1), "{results:?}");
        let (winner, _) = db
            .store
            .get_by_idempotency_key("alice", &key)
            .await
            .unwrap()
            .unwrap();
        let loser = if winner.id == a.next.id { &b } else { &a };
        assert!(db.store.get(loser.next.id).await.unwrap().is_none());
        assert!(
            db.store
                .request_audit(loser.next.id)
                .await
                .unwrap()
                .is_empty()
        );
    }
    let all = db
        .store
        .list_requests(&ListFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
}

pub(super) async fn request_events_resume_after_a_version(db: Db) {
    let req = stored(&db, &new_request(decision(false, 1))).await;
    let req = apply(
        &db,
        &req,
        Event::Approve {
            by: approver(bob()),
            comment: String::new(),
        },
    )
    .await;
    assert_eq!(req.version, 2);
    db.store
        .append_audit(
            "credentials.issued",
            "alice",
            Some(req.id.0),
            &json!({ "grant_id": "g" }),
            "node-a",
        )
        .await
        .unwrap();
    let versions = |events: Vec<jitsudo_actors::store::AuditEvent>| -> Vec<Option<i64>> {
        events.iter().map(|e| e.request_version).collect()
    };
    assert_eq!(
        versions(db.store.request_events(req.id, 0).await.unwrap()),
        [Some(1), Some(2)]
    );
    assert_eq!(
        versions(db.store.request_events(req.id, 1).await.unwrap()),
        [Some(2)]
    );
    assert!(db.store.request_events(req.id, 2).await.unwrap().is_empty());
    assert!(
        db.store
            .request_events(RequestId::new(), 0)
            .await
            .unwrap()
            .is_empty()
    );
    // The request's whole audit trail has the versions first, then the free events.
    let all = db.store.request_audit(req.id).await.unwrap();
    assert_eq!(versions(all.clone()), [Some(1), Some(2), None]);
    assert_eq!(all[2].kind, "credentials.issued");
}

pub(super) async fn trust_tier_changes_are_stored_with_their_audit_event(db: Db) {
    assert!(db.store.get_principal("dave").await.unwrap().is_none());
    let before = db.store.db_now().await.unwrap();
    let set = db
        .store
        .set_trust_tier("dave", 2, "carol", "on call this week", "node-a")
        .await
        .unwrap();
    assert_eq!(
        (
            set.subject.as_str(),
            set.trust_tier,
            set.updated_by.as_str()
        ),
        ("dave", 2, "carol")
    );
    assert!(set.updated_at >= before);
    assert_eq!(db.store.get_principal("dave").await.unwrap(), Some(set));
    let again = db
        .store
        .set_trust_tier("dave", 0, "erin", "rotation over", "node-a")
        .await
        .unwrap();
    assert_eq!((again.trust_tier, again.updated_by.as_str()), (0, "erin"));
    let events = db
        .store
        .query_audit(&AuditQuery {
            kind: Some("principal.trust_tier_changed".into()),
            oldest_first: true,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    let details: Vec<Value> = events
        .iter()
        .map(|(e, _)| serde_json::from_str(&e.details).unwrap())
        .collect();
    assert_eq!(
        details[0],
        json!({ "subject": "dave", "from": null, "to": 2, "reason": "on call this week" })
    );
    assert_eq!(
        details[1],
        json!({ "subject": "dave", "from": 2, "to": 0, "reason": "rotation over" })
    );
    let actors: Vec<&str> = events.iter().map(|(e, _)| e.actor.as_str()).collect();
    assert_eq!(actors, ["carol", "erin"]);
    assert!(
        events
            .iter()
            .all(|(e, _)| e.request_id.is_none() && e.request_version.is_none())
    );
}

pub(super) async fn concurrent_trust_tier_changes_each_record_what_they_replaced(db: Db) {
    let writes = (0..4i64).map(|tier| {
        let store = db.store.clone();
        tokio::spawn(async move {
            store
                .set_trust_tier("frank", tier + 1, "carol", "", "node-a")
                .await
        })
    });
    for w in join_all(writes).await {
        w.unwrap();
    }
    let events = db
        .store
        .query_audit(&AuditQuery {
            kind: Some("principal.trust_tier_changed".into()),
            oldest_first: true,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 4);
    // The changes form one chain: each starts where another ended. (Listed by statement
    // time, a writer that waited for the row lock can come before the one it waited for.)
    let mut links: Vec<(Option<i64>, Option<i64>)> = events
        .iter()
        .map(|(e, _)| {
            let d: Value = serde_json::from_str(&e.details).unwrap();
            (d["from"].as_i64(), d["to"].as_i64())
        })
        .collect();
    let mut at: Option<i64> = None;
    while !links.is_empty() {
        let next = links
            .iter()
            .position(|(from, _)| *from == at)
            .unwrap_or_else(|| panic!("no change starts at {at:?}: {links:?}"));
        at = links.remove(next).1;
    }
    assert_eq!(
        db.store
            .get_principal("frank")
            .await
            .unwrap()
            .unwrap()
            .trust_tier,
        at.unwrap()
    );
}

async fn join_all<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await.expect("task"));
    }
    out
}

pub(super) async fn free_audit_events_carry_no_version(db: Db) {
    let req = stored(&db, &new_request(decision(false, 1))).await;
    let details = json!({ "why": "not an approver", "n": 3 });
    let free = db
        .store
        .append_audit("authz.refused", "mallory", None, &details, "node-a")
        .await
        .unwrap();
    let tied = db
        .store
        .append_audit(
            "credentials.issued",
            "alice",
            Some(req.id.0),
            &details,
            "node-b",
        )
        .await
        .unwrap();
    let events = db
        .store
        .query_audit(&AuditQuery {
            oldest_first: true,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let free_ev = &events.iter().find(|(e, _)| e.id == free).unwrap().0;
    assert_eq!(
        (
            free_ev.kind.as_str(),
            free_ev.actor.as_str(),
            free_ev.request_id,
            free_ev.request_version
        ),
        ("authz.refused", "mallory", None, None)
    );
    assert_eq!(free_ev.details, details.to_string(), "the exact text");
    let tied_ev = &events.iter().find(|(e, _)| e.id == tied).unwrap().0;
    assert_eq!(
        (
            tied_ev.request_id,
            tied_ev.request_version,
            tied_ev.node.as_str()
        ),
        (Some(req.id.0), None, "node-b")
    );
    // Free events do not count as version gaps.
    assert!(db.store.version_gaps(10).await.unwrap().is_empty());
}

pub(super) async fn audit_queries_page_both_ways_and_filter(db: Db) {
    let mut appended = Vec::new();
    for i in 0..7 {
        let kind = if i % 2 == 0 { "k.even" } else { "k.odd" };
        let id = db
            .store
            .append_audit(kind, "auditor-x", None, &json!({ "i": i }), "node-a")
            .await
            .unwrap();
        appended.push(id);
    }
    db.store
        .append_audit("k.even", "someone-else", None, &json!({}), "node-a")
        .await
        .unwrap();
    let page_through = |oldest_first: bool| {
        let store = db.store.clone();
        async move {
            let mut q = AuditQuery {
                actor: Some("auditor-x".into()),
                oldest_first,
                limit: 3,
                ..AuditQuery::default()
            };
            let mut out = Vec::new();
            loop {
                let page = store.query_audit(&q).await.unwrap();
                assert!(page.len() <= 3);
                let Some((last, _)) = page.last() else { break };
                q.after = Some((last.at, last.id));
                out.extend(page.into_iter().map(|(e, _)| e));
            }
            out
        }
    };
    let oldest = page_through(true).await;
    let newest = page_through(false).await;
    let mut expected: Vec<(chrono::DateTime<Utc>, Uuid)> =
        oldest.iter().map(|e| (e.at, e.id)).collect();
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(expected, sorted, "oldest first is (at, id) order");
    assert_eq!(
        oldest.iter().map(|e| e.id).collect::<BTreeSet<_>>(),
        appended.iter().copied().collect::<BTreeSet<_>>()
    );
    expected.reverse();
    assert_eq!(
        newest.iter().map(|e| (e.at, e.id)).collect::<Vec<_>>(),
        expected
    );

    let odd = db
        .store
        .query_audit(&AuditQuery {
            kind: Some("k.odd".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(odd.len(), 3);
    // since is inclusive, until exclusive.
    let (from, to) = (oldest[2].at, oldest[5].at);
    let window = db
        .store
        .query_audit(&AuditQuery {
            actor: Some("auditor-x".into()),
            since: Some(from),
            until: Some(to),
            oldest_first: true,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert!(window.iter().all(|(e, _)| e.at >= from && e.at < to));
    assert!(window.iter().any(|(e, _)| e.id == oldest[2].id));
    assert!(!window.iter().any(|(e, _)| e.id == oldest[5].id));
    assert_eq!(
        window.len(),
        oldest.iter().filter(|e| e.at >= from && e.at < to).count()
    );

    // Chained events come with their link.
    let leases = db
        .store
        .acquire_shards(
            "sequencer",
            Uuid::now_v7(),
            &[AUDIT_LEASE],
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let link = ChainRow {
        seq: 1,
        event_id: oldest[0].id,
        prev_hash: vec![0; 32],
        hash: vec![7; 32],
    };
    let w = db
        .store
        .append_chain(&leases[0].fence, std::slice::from_ref(&link))
        .await
        .unwrap();
    assert!(matches!(w, Write::Updated { .. }), "{w:?}");
    let first_two = db
        .store
        .query_audit(&AuditQuery {
            actor: Some("auditor-x".into()),
            oldest_first: true,
            limit: 2,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(first_two[0].1.as_ref(), Some(&link));
    assert_eq!(first_two[1].1, None);

    let req = stored(&db, &new_request(decision(false, 1))).await;
    let of_request = db
        .store
        .query_audit(&AuditQuery {
            request_id: Some(req.id.0),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(of_request.len(), 1);
    assert_eq!(of_request[0].0.kind, "request.created");

    // By provider: the events of that provider's requests, none of free events.
    let of_provider = |p: &str| {
        let store = db.store.clone();
        let q = AuditQuery {
            provider: Some(p.into()),
            ..AuditQuery::default()
        };
        async move { store.query_audit(&q).await.unwrap() }
    };
    let mine = of_provider(&req.spec.provider).await;
    assert_eq!(
        mine.iter().map(|(e, _)| e.id).collect::<Vec<_>>(),
        of_request.iter().map(|(e, _)| e.id).collect::<Vec<_>>()
    );
    assert!(of_provider("no-such-provider").await.is_empty());
}

pub(super) async fn policies_read_back_with_their_creation_time(db: Db) {
    assert!(db.store.get_policy("p").await.unwrap().is_none());
    assert!(db.store.list_policies().await.unwrap().is_empty());
    let before = db.store.db_now().await.unwrap();
    db.store
        .put_policy("p", "package jitsudo.eligibility\n", "carol", "node-a")
        .await
        .unwrap();
    db.store
        .put_policy("q", "package jitsudo.approval\n", "dave", "node-a")
        .await
        .unwrap();
    db.store
        .put_policy("p", "package jitsudo.eligibility\n# v2\n", "erin", "node-a")
        .await
        .unwrap();
    let (p, at) = db.store.get_policy("p").await.unwrap().unwrap();
    assert_eq!((p.version, p.author.as_str()), (2, "erin"));
    assert!(p.rego.contains("v2"));
    assert!(at >= before);
    let listed = db.store.list_policies().await.unwrap();
    let names: Vec<(&str, i64)> = listed
        .iter()
        .map(|(p, _)| (p.name.as_str(), p.version))
        .collect();
    assert_eq!(names, [("p", 2), ("q", 1)]);
    assert_eq!(listed[0].1, at);
    assert!(
        db.store
            .delete_policy("q", "carol", "node-a")
            .await
            .unwrap()
    );
    assert!(db.store.get_policy("q").await.unwrap().is_none());
    let names: Vec<String> = db
        .store
        .list_policies()
        .await
        .unwrap()
        .into_iter()
        .map(|(p, _)| p.name)
        .collect();
    assert_eq!(names, ["p"]);
    assert_eq!(
        db.store.policies().await.unwrap(),
        vec![p],
        "the same versions as the policy actor loads"
    );
}

pub(super) async fn identities_keep_the_last_verified_email(db: Db) {
    assert_eq!(db.store.verified_email_of("carol").await.unwrap(), None);
    db.store
        .note_identity("carol", "carol@example.com")
        .await
        .unwrap();
    db.store
        .note_identity("carol", "carol@example.com")
        .await
        .unwrap();
    assert_eq!(
        db.store
            .verified_email_of("carol")
            .await
            .unwrap()
            .as_deref(),
        Some("carol@example.com")
    );
    db.store
        .note_identity("carol", "carol@new.example.com")
        .await
        .unwrap();
    assert_eq!(
        db.store
            .verified_email_of("carol")
            .await
            .unwrap()
            .as_deref(),
        Some("carol@new.example.com")
    );
    assert_eq!(db.store.verified_email_of("dave").await.unwrap(), None);
}

pub(super) async fn reviews_are_listed_until_closed_once(db: Db) {
    // A self-approved request (alice wrote a deciding policy) and an ordinary one.
    let mut mine = decision(true, 1);
    mine.policies = vec![jitsudo_actors::policy::PolicyStamp {
        name: "approval".into(),
        version: 2,
        author: "alice".into(),
        author_email: None,
        self_authored: false,
    }];
    let self_approved = stored(&db, &new_request(mine)).await;
    let mut theirs = decision(true, 1);
    theirs.policies = vec![jitsudo_actors::policy::PolicyStamp {
        name: "approval".into(),
        version: 2,
        author: "carol".into(),
        author_email: None,
        self_authored: false,
    }];
    let ordinary = stored(&db, &new_request(theirs)).await;
    // Written by her second login: judged at create by the same-person rule.
    let mut linked = decision(true, 1);
    linked.policies = vec![jitsudo_actors::policy::PolicyStamp {
        name: "approval".into(),
        version: 2,
        author: "alice-admin".into(),
        author_email: Some("alice@example.com".into()),
        self_authored: true,
    }];
    let by_second_login = stored(&db, &new_request(linked)).await;
    assert!(by_second_login.review_reason().is_some());
    assert!(self_approved.review_reason().is_some());
    assert!(ordinary.review_reason().is_none());
    let open = |store: jitsudo_actors::store::SharedStore| async move {
        store
            .list_requests(&ListFilter {
                needs_review: true,
                ..ListFilter::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    let mut listed = open(db.store.clone()).await;
    listed.sort_by_key(|id| id.0);
    let mut want = vec![self_approved.id, by_second_login.id];
    want.sort_by_key(|id| id.0);
    assert_eq!(listed, want);
    db.store
        .close_review(by_second_login.id.0, "self", "erin", "fine", "node-a")
        .await
        .unwrap()
        .expect("closed");
    let closed = db
        .store
        .close_review(self_approved.id.0, "self", "erin", "fine", "node-a")
        .await
        .unwrap()
        .expect("closed");
    assert_eq!(
        (closed.reviewer.as_str(), closed.verdict.as_str()),
        ("erin", "fine")
    );
    assert!(
        db.store
            .close_review(self_approved.id.0, "self", "carol", "again", "node-a")
            .await
            .unwrap()
            .is_none(),
        "closed once"
    );
    assert!(open(db.store.clone()).await.is_empty());
    let events = db
        .store
        .query_audit(&AuditQuery {
            kind: Some("review.closed".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.0.request_id == Some(self_approved.id.0))
        .collect::<Vec<_>>();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0.actor, "erin");
    assert_eq!(events[0].0.request_version, None);
}

pub async fn open_requests_and_last_break_glass_of_a_requester(db: Db) {
    let none = |store: jitsudo_actors::store::SharedStore| async move {
        (
            store.open_requests_of("alice", 10).await.unwrap(),
            store.last_break_glass_of("alice").await.unwrap(),
        )
    };
    assert_eq!(none(db.store.clone()).await, (0, None));
    let first = stored(&db, &new_request(decision(false, 1))).await;
    stored(&db, &new_request(decision(false, 1))).await;
    stored(&db, &new_request(decision(false, 1))).await;
    assert_eq!(db.store.open_requests_of("alice", 10).await.unwrap(), 3);
    // The count stops at `at_most`: the cap's check costs what the cap allows, not more.
    assert_eq!(db.store.open_requests_of("alice", 2).await.unwrap(), 2);
    assert_eq!(db.store.open_requests_of("bob", 10).await.unwrap(), 0);
    // A final request is not open.
    let cancelled = apply(&db, &first, Event::Cancel { by: alice() }).await;
    assert_eq!(cancelled.state, State::Cancelled);
    assert_eq!(db.store.open_requests_of("alice", 10).await.unwrap(), 2);
    assert_eq!(db.store.last_break_glass_of("alice").await.unwrap(), None);

    let mut bg = new_request(decision(false, 1));
    bg.next.spec.break_glass = true;
    let bg = stored(&db, &bg).await;
    assert_eq!(
        db.store.last_break_glass_of("alice").await.unwrap(),
        Some(bg.created_at)
    );
    assert_eq!(db.store.last_break_glass_of("bob").await.unwrap(), None);
}

pub async fn overdue_requests_are_found_by_the_database_clock(db: Db) {
    let hour = Duration::from_secs(3600);
    let mut d = decision(false, 1);
    d.approval_timeout_seconds = 1;
    let soon = stored(&db, &new_request(d.clone())).await;
    let later = stored(&db, &new_request(decision(false, 1))).await;
    let overdue = |grace: Duration| {
        let (store, shard) = (db.store.clone(), soon.id.shard(SHARDS));
        async move {
            store
                .overdue_requests(shard, grace, hour, 100)
                .await
                .unwrap()
        }
    };
    assert!(
        !overdue(Duration::ZERO).await.contains(&soon.id),
        "not due yet"
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(overdue(Duration::ZERO).await.contains(&soon.id));
    assert!(!overdue(hour).await.contains(&soon.id), "within the grace");
    let mut later_shard = db
        .store
        .overdue_requests(later.id.shard(SHARDS), Duration::ZERO, hour, 100)
        .await
        .unwrap();
    later_shard.retain(|id| *id == later.id);
    assert!(later_shard.is_empty(), "its deadline is 30 min away");
    // Final requests are never overdue.
    apply(&db, &soon, Event::Cancel { by: alice() }).await;
    assert!(!overdue(Duration::ZERO).await.contains(&soon.id));
}

pub async fn heartbeats_keep_one_process_per_node_name(db: Db) {
    use jitsudo_actors::store::Heartbeat;
    // Long enough that a loaded machine cannot age the first heartbeat by accident.
    let ttl = Duration::from_secs(2);
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let hb = |incarnation| Heartbeat {
        node: "node-x",
        incarnation,
        cluster_addr: "10.0.0.1:7946",
        api_addr: "10.0.0.1:8443",
        clock_offset_us: -1200,
    };
    let member = |store: jitsudo_actors::store::SharedStore| async move {
        let (now, members) = store.members().await.unwrap();
        let m = members
            .into_iter()
            .find(|m| m.node == "node-x")
            .expect("listed");
        (now, m)
    };
    assert!(db.store.heartbeat(&hb(first), ttl).await.unwrap());
    let (now, m) = member(db.store.clone()).await;
    assert_eq!(
        (
            m.incarnation,
            m.cluster_addr.as_str(),
            m.api_addr.as_str(),
            m.clock_offset_us
        ),
        (first, "10.0.0.1:7946", "10.0.0.1:8443", -1200)
    );
    assert!(now >= m.heartbeat_at);
    let started = m.started_at;
    // Beating again keeps the start time.
    assert!(db.store.heartbeat(&hb(first), ttl).await.unwrap());
    let (_, again) = member(db.store.clone()).await;
    assert_eq!(again.started_at, started);
    assert!(again.heartbeat_at >= m.heartbeat_at);
    // A second process under the same name is refused while the first is alive.
    assert!(!db.store.heartbeat(&hb(second), ttl).await.unwrap());
    assert_eq!(member(db.store.clone()).await.1.incarnation, first);
    // Once the first's heartbeat is older than the TTL, a new incarnation takes the row.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert!(db.store.heartbeat(&hb(second), ttl).await.unwrap());
    let (_, taken) = member(db.store.clone()).await;
    assert_eq!(taken.incarnation, second);
    assert!(taken.started_at > started);
    // Leaving marks the heartbeat as long past: the name is free at once.
    db.store.leave("node-x", second).await.unwrap();
    let (now, gone) = member(db.store.clone()).await;
    assert!(now - gone.heartbeat_at > chrono::Duration::hours(1));
    assert!(db.store.heartbeat(&hb(first), ttl).await.unwrap());
}

pub async fn shard_table_lists_owners_epochs_and_leases(db: Db) {
    let fences = db.fences().await;
    let table = db.store.shard_table().await.unwrap();
    assert_eq!(table.len(), SHARDS as usize);
    for row in &table {
        let fence = fences
            .iter()
            .find(|f| f.shard == row.shard)
            .expect("a fence per shard");
        assert_eq!((&row.owner, row.epoch), (&fence.owner, fence.epoch));
        assert_eq!(row.incarnation, db.incarnation);
        assert!(row.lease_expires_at.is_some_and(|t| t > row.acquired_at));
    }
}
