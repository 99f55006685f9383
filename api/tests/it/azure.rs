//! jitsudod on PostgreSQL with an `azure` provider in mode `pim` against the faithful fake of
//! Entra and ARM: a request becomes a PIM assignment of the mapped Entra object id that ends
//! at the grant's not_after; a revoke takes it away; with jitsudod stopped, Azure's own clock
//! ends the access.

use std::time::Duration;

use jitsudo_actors::domain::State;
use jitsudo_api::config::ProviderConfig;
use jitsudo_proto::v1;
use jitsudo_testkit::fakes::azure::{Assignment, FakeAzure, READER};

use crate::harness::*;

struct Rig {
    j: Jitsudo,
    fake: FakeAzure,
    scope: String,
    alice: String,
    _dir: tempfile::TempDir,
}

async fn rig() -> Rig {
    let fake = FakeAzure::start().expect("the fake starts");
    let sub = fake.add_subscription();
    let app = fake.add_application("jitsudod");
    let alice = fake.add_user("alice@example.com");
    let dir = tempfile::tempdir().unwrap();
    let (secret, ca, map) = (
        dir.path().join("secret"),
        dir.path().join("ca.pem"),
        dir.path().join("map.toml"),
    );
    std::fs::write(&secret, &app.secret).unwrap();
    std::fs::write(&ca, fake.ca_pem()).unwrap();
    // Entra object ids of the people (what `{claim:oid}` gives when Entra is the issuer).
    std::fs::write(&map, format!("[subjects]\nalice = \"{alice}\"\n")).unwrap();
    let scope = format!("/subscriptions/{sub}");
    let table: toml::Table = format!(
        r#"
name = "azure"
kind = "azure"
mode = "pim"
tenant_id = "{tenant}"
client_id = "{client}"
client_secret_file = "{secret}"
authority_host = "{url}"
arm_endpoint = "{url}"
ca_file = "{ca}"
identity_map_file = "{map}"
roles = ["Reader"]
scopes = ["{scope}"]
"#,
        tenant = fake.tenant(),
        client = app.client_id,
        secret = secret.display(),
        url = fake.url(),
        ca = ca.display(),
        map = map.display(),
    )
    .parse()
    .unwrap();
    let section = ProviderConfig::from_table(table).expect("a valid azure table");
    let j = Jitsudo::start_with(move |c| {
        c.providers.push(section);
        c.node.reconcile_interval_seconds = 1;
    })
    .await;
    Rig {
        j,
        fake,
        scope,
        alice,
        _dir: dir,
    }
}

async fn active(r: &Rig, seconds: i64) -> jitsudo_actors::domain::Request {
    let mut alice = r.j.grpc("alice").requests;
    let mut bob = r.j.grpc("bob").requests;
    let mut create = new_request("azure", "Reader", seconds);
    create.scope = r.scope.clone();
    let created = ok(alice.create_request(create).await);
    ok(bob
        .approve_request(v1::DecideRequest {
            id: created.id.clone(),
            comment: "ok".into(),
        })
        .await);
    r.j.wait_state(&created.id, St::Active).await;
    r.j.stored(&created.id).await
}

fn alice_holds(r: &Rig) -> Vec<Assignment> {
    r.fake
        .assignments()
        .into_iter()
        .filter(|a| a.principal_id == r.alice && a.role == READER)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pim_grant_ends_when_the_grant_does_even_with_jitsudod_stopped() {
    let r = rig().await;
    let req = active(&r, 3600).await;
    let not_after = req
        .not_after(&req.grants[0])
        .expect("a granted grant has an end");
    let held = alice_holds(&r);
    assert_eq!(held.len(), 1, "{held:?}");
    let schedule = held[0].schedule.as_ref().expect("made through PIM");
    assert_eq!(
        schedule.end.map(|e| e.timestamp()),
        Some(not_after.timestamp())
    );
    assert!(r.fake.has_role(&r.scope, &r.alice, READER));

    // jitsudod goes away; Azure's clock passes the end; the access is gone all the same.
    let Rig {
        j,
        fake,
        scope,
        alice,
        _dir,
    } = r;
    j.stop().await.expect("jitsudod stops");
    let until_end = (not_after - fake.now()).to_std().expect("the end is ahead");
    fake.advance(until_end - Duration::from_secs(2));
    assert!(fake.has_role(&scope, &alice, READER), "held until the end");
    fake.advance(Duration::from_secs(3));
    assert!(!fake.has_role(&scope, &alice, READER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_through_jitsudod_removes_the_pim_assignment() {
    let r = rig().await;
    let req = active(&r, 3600).await;
    assert_eq!(alice_holds(&r).len(), 1);
    // PIM removes an assignment only after its first five minutes (ActiveDurationTooShort).
    r.fake.advance(Duration::from_secs(301));
    let mut alice = r.j.grpc("alice").requests;
    ok(alice
        .revoke_request(v1::RevokeRequestRequest {
            id: req.id.to_string(),
            reason: "done early".into(),
        })
        .await);
    r.j.wait_state(&req.id.to_string(), St::Revoked).await;
    assert!(alice_holds(&r).is_empty(), "{:?}", r.fake.assignments());
    assert!(!r.fake.has_role(&r.scope, &r.alice, READER));
    // What stays is the tombstone: a role assignment to a principal that does not exist.
    assert!(r.fake.assignments().iter().all(|a| {
        a.description
            .as_deref()
            .is_some_and(|d| d.starts_with("jitsudo-tombstone"))
    }));
    assert_eq!(r.j.stored(&req.id.to_string()).await.state, State::Revoked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_in_pim_s_first_five_minutes_completes_when_pim_takes_it() {
    let r = rig().await;
    let req = active(&r, 3600).await;
    let id = req.id.to_string();
    let mut alice = r.j.grpc("alice").requests;
    ok(alice
        .revoke_request(v1::RevokeRequestRequest {
            id: id.clone(),
            reason: "done early".into(),
        })
        .await);
    // PIM refuses the removal (ActiveDurationTooShort): the request stays ENDING, the
    // engine retries, and the access is still there.
    r.j.wait_state(&id, St::Ending).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(r.j.stored(&id).await.state, State::Ending);
    assert!(r.fake.has_role(&r.scope, &r.alice, READER));
    // Past the floor, the next retry goes through.
    r.fake.advance(Duration::from_secs(301));
    r.j.wait_state(&id, St::Revoked).await;
    assert!(!r.fake.has_role(&r.scope, &r.alice, READER));
}
