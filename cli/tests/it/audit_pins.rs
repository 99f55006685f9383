//! `jitsudo audit verify` against copies of a real jitsudod's database that an attacker
//! with write access to it has changed: a rewrite with the chain recomputed and the
//! checkpoints that no longer match deleted, truncation after and before the newest
//! checkpoint, and every checkpoint gone. Without a pin the careful rewrite verifies; with
//! one, each change fails and the report names what the log no longer agrees with.

use std::path::Path;

use jitsudo_api::config::Config;
use serde_json::Value;
use sqlx::Connection as _;

use crate::harness::{Jitsudod, User, eventually};

const VIEWER: &[&str] = &[
    "request",
    "--provider",
    "demo",
    "--role",
    "viewer",
    "--scope",
    "demo-account",
    "--duration",
    "1h",
    "--reason",
    "reading the logs",
    "--wait",
];

/// A checkpoint every four entries and never by time: the log nearly always has entries
/// after its newest checkpoint, as a busy one does.
fn every_four(c: &mut Config) {
    c.audit.checkpoint_every = 4;
    c.audit.checkpoint_interval_seconds = 3600;
}

/// proto3 JSON writes int64 as a string.
fn num(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        v => v.as_i64().unwrap_or(0),
    }
}

/// A copy of a stopped server's data dir. SQLite's connections close on their own threads
/// after the server stops; the last one folds the write-ahead log into the database and
/// removes it, so wait for that (a copy taken meanwhile could miss what the log held).
fn copy_dir(from: &Path) -> tempfile::TempDir {
    let wal = from.join("jitsudo.db-wal");
    eventually(20, "SQLite to close its write-ahead log", || {
        (!wal.exists()).then_some(())
    });
    let to = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(from).expect("data dir") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            std::fs::copy(entry.path(), to.path().join(entry.file_name()))
                .unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
    to
}

/// Changes the copy's SQLite database as its owner can: past the append-only triggers.
fn tamper(data: &Path, statements: Vec<String>) {
    let url = format!("sqlite://{}", data.join("jitsudo.db").display());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async move {
            let mut c = sqlx::SqliteConnection::connect(&url).await.expect("open");
            for t in ["events", "chain", "checkpoints"] {
                for op in ["update", "delete"] {
                    let drop = format!("DROP TRIGGER audit_{t}_no_{op}");
                    sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                        .execute(&mut c)
                        .await
                        .expect("the owner lifts the trigger");
                }
            }
            for s in statements {
                sqlx::raw_sql(sqlx::AssertSqlSafe(s.clone()))
                    .execute(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{s}: {e}"));
            }
        });
}

/// The careful rewrite: the event at `from` edited, the chain recomputed from there with
/// the published encoding, the checkpoints that no longer match deleted.
fn rewrite_from(data: &Path, from: i64) -> Vec<String> {
    let url = format!("sqlite://{}", data.join("jitsudo.db").display());
    let page = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async move {
            let store = jitsudo_actors::store::open(&url, jitsudo_actors::store::Mode::Dev)
                .await
                .expect("the copy opens");
            store.chain_page(0, 100_000).await.expect("the chain")
        });
    let mut prev = jitsudo_proto::audit::GENESIS;
    let mut out = vec![format!("DELETE FROM audit_checkpoints WHERE seq >= {from}")];
    for (row, event) in page {
        let mut rec = jitsudo_actors::audit::record(event.as_ref().expect("every event"));
        if row.seq == from {
            rec.details = if rec.details.contains("reading the logs") {
                rec.details
                    .replacen("reading the logs", "nothing to see", 1)
            } else {
                format!("{} ", rec.details)
            };
            out.push(format!(
                "UPDATE audit_events SET details = '{}' WHERE id = '{}'",
                rec.details.replace('\'', "''"),
                row.event_id
            ));
        }
        let hash = jitsudo_proto::audit::chain_hash(&prev, &rec);
        if row.seq >= from {
            out.push(format!(
                "UPDATE audit_chain SET prev_hash = X'{}', hash = X'{}' WHERE seq = {}",
                hex::encode(prev),
                hex::encode(hash),
                row.seq
            ));
        }
        prev = hash;
    }
    out
}

/// Entries (and their events) after `seq` removed from the end of the log.
fn cut_after(seq: i64) -> Vec<String> {
    vec![
        format!("DELETE FROM audit_checkpoints WHERE seq > {seq}"),
        format!("CREATE TEMP TABLE cut AS SELECT event_id FROM audit_chain WHERE seq > {seq}"),
        format!("DELETE FROM audit_chain WHERE seq > {seq}"),
        "DELETE FROM audit_events WHERE id IN (SELECT event_id FROM cut)".into(),
    ]
}

fn verify(user: &User, key: &Path, pin: Option<&Path>) -> crate::harness::Run {
    let mut args = vec![
        "audit",
        "verify",
        "--public-key",
        key.to_str().expect("utf-8"),
    ];
    if let Some(p) = pin {
        args.extend(["--pin", p.to_str().expect("utf-8")]);
    }
    user.run(&args)
}

#[test]
fn a_pin_catches_a_rewritten_recomputed_log_and_a_shortened_one() {
    let port = jitsudo_testkit::free_port();
    let jd = Jitsudod::dev_in(tempfile::tempdir().expect("dir"), port, every_four);
    let (alice, erin) = (jd.user("alice"), jd.user("erin"));
    alice.login_dev();
    erin.login_dev();
    let key = erin.home.path().join("audit.pub.pem");
    jd.dev_audit_public_key(&key);
    let pin = erin.home.path().join("auditor-pin.json");

    // A history with at least two checkpoints and entries after the newest one, pinned by
    // an auditor's own file.
    let (report, saved, said) =
        eventually(90, "two checkpoints and entries after the newest", || {
            let r = erin.run(&[
                "audit",
                "verify",
                "--public-key",
                key.to_str().expect("utf-8"),
                "--pin",
                pin.to_str().expect("utf-8"),
                "-o",
                "json",
            ]);
            let v = r.json();
            let settled = v.get("unchained").is_none();
            if r.code != 0 {
                // Only for want of a first checkpoint, while the log is new.
                assert!(v.get("missingCheckpoint").is_some(), "{}", r.stdout);
                if settled {
                    alice.run(VIEWER).ok();
                }
                return None;
            }
            let saved: Value =
                serde_json::from_str(&std::fs::read_to_string(&pin).ok()?).expect("JSON");
            let (cp, seen) = (
                saved["checkpoint"]["seq"].as_i64()?,
                saved["seen"]["seq"].as_i64()?,
            );
            if settled && v["checkpoints"].as_u64() >= Some(2) && seen > cp {
                return Some((v, saved, r.stderr.clone()));
            }
            if settled {
                alice.run(VIEWER).ok();
            }
            None
        });
    let (newest, head) = (
        num(&report["lastCheckpointSeq"]),
        num(&report["chainLength"]),
    );
    assert_eq!(
        (
            saved["checkpoint"]["seq"].as_i64(),
            saved["seen"]["seq"].as_i64()
        ),
        (Some(newest), Some(head)),
        "the pin holds the newest checkpoint and the last entry: {report}"
    );
    assert_eq!(saved["server"], jd.url.as_str());
    let checkpoints = erin.json(&["audit", "--limit", "1"])["checkpoints"].clone();
    let first_cp = num(&checkpoints[0]["seq"]);
    assert!(first_cp < newest && newest < head, "{report}");
    assert!(
        said.contains(&format!(
            "pinned checkpoint {newest} and entry {head} in {}",
            pin.display()
        )),
        "{said}"
    );
    assert!(!said.contains("the server's own check"), "{said}");
    // The checkpoint as a sink delivers it (the pin keeps it in that form).
    let notice = erin.home.path().join("checkpoint-notice.json");
    std::fs::write(&notice, saved["checkpoint"].to_string()).expect("write");
    // The CLI's own state pins too.
    verify(&erin, &key, None).ok();
    let state_pins = erin.home.path().join("state/audit-pins.json");
    #[cfg(unix)]
    for f in [&pin, &state_pins] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(f).expect("pin file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{} is private", f.display());
    }
    let data = jd.stop();

    // 1. Events rewritten after the first checkpoint, the chain recomputed, the checkpoints
    //    that no longer match deleted (the server itself then signs the forged tip).
    let copy = copy_dir(data.path());
    let statements = rewrite_from(copy.path(), first_cp + 1);
    tamper(copy.path(), statements);
    let jd = Jitsudod::dev_in(copy, port, every_four);
    let newcomer = jd.user("erin");
    newcomer.login_dev();
    let alone = verify(&newcomer, &key, None);
    assert_eq!(
        alone.code, 0,
        "without a pin the careful rewrite verifies: {}",
        alone.stdout
    );
    assert!(
        alone.stderr.contains("trust on first use"),
        "{}",
        alone.stderr
    );
    let r = newcomer
        .run(&[
            "audit",
            "verify",
            "--public-key",
            key.to_str().expect("utf-8"),
            "--checkpoint",
            notice.to_str().expect("utf-8"),
        ])
        .fails(1);
    assert!(
        r.stdout.contains(&format!("the given checkpoint {newest}")),
        "the checkpoint a sink delivered catches it too: {}",
        r.stdout
    );
    let r = verify(&erin, &key, Some(&pin)).fails(1);
    assert!(
        r.stdout.contains(&format!(
            "the log disagrees with pinned checkpoint {newest}"
        )),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("NOT intact"), "{}", r.stderr);
    let r = verify(&erin, &key, None).fails(1);
    assert!(
        r.stdout.contains("pinned checkpoint"),
        "the state pin holds too: {}",
        r.stdout
    );
    drop(jd);

    // 2. Entries cut after the newest checkpoint: the entry the verifier last saw is gone.
    let copy = copy_dir(data.path());
    tamper(copy.path(), cut_after(newest));
    let jd = Jitsudod::dev_in(copy, port, every_four);
    let r = verify(&erin, &key, Some(&pin)).fails(1);
    assert!(
        r.stdout.contains(&format!(
            "chain entry {head} seen by an earlier verification"
        )),
        "{}",
        r.stdout
    );
    drop(jd);

    // 3. Entries cut before the newest checkpoint, with the checkpoints after the cut.
    let copy = copy_dir(data.path());
    tamper(copy.path(), cut_after(newest - 1));
    let jd = Jitsudod::dev_in(copy, port, every_four);
    let r = verify(&erin, &key, Some(&pin)).fails(1);
    assert!(
        r.stdout.contains(&format!("pinned checkpoint {newest}")),
        "{}",
        r.stdout
    );
    drop(jd);

    // 4. Every checkpoint deleted. The server signs the chain it finds again at its next
    //    tick, but the pinned checkpoint is gone: signed checkpoints are append-only.
    let copy = copy_dir(data.path());
    tamper(copy.path(), vec!["DELETE FROM audit_checkpoints".into()]);
    let jd = Jitsudod::dev_in(copy, port, every_four);
    let r = verify(&erin, &key, Some(&pin)).fails(1);
    assert!(
        r.stdout.contains(&format!(
            "pinned checkpoint {newest} is no longer among the log's signed checkpoints"
        )),
        "{}",
        r.stdout
    );
    drop(jd);

    // 5. The same on a server that signs none: with --public-key a checkpoint is
    //    required, and there is none.
    let copy = copy_dir(data.path());
    tamper(copy.path(), vec!["DELETE FROM audit_checkpoints".into()]);
    let jd = Jitsudod::dev_in(copy, port, |c| {
        every_four(c);
        c.audit.signing_key = None;
    });
    let newcomer = jd.user("erin");
    newcomer.login_dev();
    let r = verify(&newcomer, &key, None).fails(1);
    assert!(
        r.stdout.contains("no signed checkpoint covers the log"),
        "{}",
        r.stdout
    );
    let r = newcomer
        .run(&[
            "audit",
            "verify",
            "--public-key",
            key.to_str().expect("utf-8"),
            "--require-checkpoint=false",
        ])
        .ok();
    assert!(r.stdout.contains("INTACT"), "{}", r.stdout);
}

#[test]
fn a_checkpoint_from_a_sink_anchors_the_log_and_a_forged_one_is_refused() {
    let jd = Jitsudod::dev_in(
        tempfile::tempdir().expect("dir"),
        jitsudo_testkit::free_port(),
        every_four,
    );
    let (alice, erin) = (jd.user("alice"), jd.user("erin"));
    alice.login_dev();
    erin.login_dev();
    alice.run(VIEWER).ok();
    let key = erin.home.path().join("audit.pub.pem");
    jd.dev_audit_public_key(&key);
    let cp = eventually(30, "a checkpoint", || {
        let page = erin.json(&["audit", "--limit", "1"]);
        page["checkpoints"]
            .as_array()
            .and_then(|c| c.last().cloned())
    });
    // The notice as a webhook delivers it (hashes in hex, the signed time in microseconds).
    let b64 = |v: &Value| {
        use base64::Engine as _;
        hex::encode(
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().expect("bytes"))
                .expect("base64"),
        )
    };
    let notice = serde_json::json!({
        "id": "01900000-0000-7000-8000-000000000001",
        "kind": "audit.checkpoint",
        "payload": {
            "seq": num(&cp["seq"]),
            "hash": b64(&cp["hash"]),
            "at_micros": num(&cp["atMicros"]),
            "key_id": cp["keyId"],
            "signature": b64(&cp["signature"]),
        }
    });
    let file = erin.home.path().join("checkpoint.json");
    std::fs::write(&file, notice.to_string()).expect("write");
    let k = key.to_str().expect("utf-8");
    let f = file.to_str().expect("utf-8");
    let r = erin
        .run(&["audit", "verify", "--public-key", k, "--checkpoint", f])
        .ok();
    assert!(r.stdout.contains("INTACT"), "{}", r.stdout);

    let mut forged = notice.clone();
    forged["payload"]["hash"] = Value::String(hex::encode([7u8; 32]));
    std::fs::write(&file, forged.to_string()).expect("write");
    let r = erin
        .run(&["audit", "verify", "--public-key", k, "--checkpoint", f])
        .fails(1);
    assert!(
        r.stderr.contains(&format!(
            "the signature of checkpoint {} does not verify",
            num(&cp["seq"])
        )),
        "{}",
        r.stderr
    );
    std::fs::write(&file, "{}").expect("write");
    let r = erin
        .run(&["audit", "verify", "--public-key", k, "--checkpoint", f])
        .fails(2);
    assert!(
        r.stderr.contains("is not an audit.checkpoint notice"),
        "{}",
        r.stderr
    );
}
