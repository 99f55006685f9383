//! The real `jitsudo` binary against a dev-mode jitsudod: the whole life of a request as
//! the people involved type it.

use std::io::Write as _;
use std::process::Stdio;

use crate::harness::{Jitsudod, eventually, id, state};

const VIEWER: &[&str] = &[
    "request",
    "--provider",
    "demo",
    "--role",
    "viewer",
    "--scope",
    "demo-account",
    "--duration",
    "30m",
    "--reason",
    "read the logs",
];

const OPERATOR: &[&str] = &[
    "request",
    "--provider",
    "demo",
    "--role",
    "operator",
    "--scope",
    "demo-account",
    "--duration",
    "1h",
    "--reason",
    "deploy the fix",
];

fn with<'a>(base: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(more).copied().collect()
}

#[test]
fn login_request_wait_exec_extend_and_revoke() {
    let jd = Jitsudod::dev();
    let alice = jd.user("alice");

    let r = alice.run(&["status"]).fails(3);
    assert!(
        r.stderr.contains("not logged in") && r.stderr.contains("jitsudo login"),
        "{}",
        r.stderr
    );
    let r = alice.run(&["login", "--dev", "mallory"]).fails(3);
    assert!(r.stderr.contains("not a dev user"), "{}", r.stderr);

    alice.login_dev();
    let me = alice.json(&["whoami"]);
    assert_eq!(me["subject"], "alice");
    assert_eq!(me["groups"], serde_json::json!(["engineering"]));
    let tokens = alice.home.path().join("state/tokens.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&tokens)
            .expect("token file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the token file is private");
    }

    // --wait follows the request to ACTIVE and exits 0.
    let run = alice.run(&with(VIEWER, &["--wait", "-o", "json"])).ok();
    let req = run.json();
    assert_eq!(state(&req), "REQUEST_STATE_ACTIVE", "{req}");
    assert!(run.stderr.contains("active until"), "{}", run.stderr);
    let rid = id(&req);

    // exec: the credentials in the environment, the command's exit code, stdin passed on.
    let r = alice.run(&[
        "exec",
        &rid,
        "--",
        "sh",
        "-c",
        "echo \"$JITSUDO_ROLE $JITSUDO_SCOPE $JITSUDO_ELEVATED $JITSUDO_REQUEST_ID\"; exit 7",
    ]);
    assert_eq!(r.code, 7, "the command's exit code: {}", r.stderr);
    assert_eq!(r.stdout.trim(), format!("viewer demo-account 1 {rid}"));
    let mut child = alice
        .command()
        .args(["exec", &rid, "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn exec");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"through the pipe\n")
        .expect("write stdin");
    let out = child.wait_with_output().expect("exec cat");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through the pipe\n");
    let r = alice
        .run(&["exec", &rid, "--", "no-such-command-here"])
        .fails(127);
    assert!(r.stderr.contains("command not found"), "{}", r.stderr);

    // status: detail and list.
    let detail = alice.run(&["status", &rid]).ok().stdout;
    assert!(detail.contains("ACTIVE"), "{detail}");
    assert!(detail.contains("demo-account"), "{detail}");
    let list = alice.json(&["status"]);
    assert_eq!(list["requests"][0]["id"], rid.as_str());

    // extend: viewer extensions need no approval here.
    let before = req["expiresAt"].as_str().expect("expiresAt").to_owned();
    let ext = alice.json(&["extend", &rid, "--by", "15m", "--reason", "not done"]);
    assert_eq!(ext["extensions"][0]["bySeconds"], "900", "{ext}");
    let extended = eventually(20, "the extension to take effect", || {
        let r = alice.json(&["status", &rid]);
        (r["expiresAt"].as_str() != Some(before.as_str())).then_some(r)
    });
    assert_eq!(state(&extended), "REQUEST_STATE_ACTIVE");

    // revoke: access ends; exec is refused with where the request is.
    let revoked = alice.json(&["revoke", &rid, "--reason", "done early"]);
    assert!(
        ["REQUEST_STATE_ENDING", "REQUEST_STATE_REVOKED"].contains(&state(&revoked)),
        "{revoked}"
    );
    eventually(20, "REVOKED", || {
        (state(&alice.json(&["status", &rid])) == "REQUEST_STATE_REVOKED").then_some(())
    });
    let r = alice.run(&["exec", &rid, "--", "true"]).fails(1);
    assert!(r.stderr.contains("has ended: REVOKED"), "{}", r.stderr);

    alice.run(&["logout"]).ok();
    alice.run(&["whoami"]).fails(3);
}

#[test]
fn approval_by_another_person_self_approval_refused_and_wait_resumes() {
    let jd = Jitsudod::dev();
    let (alice, bob) = (jd.user("alice"), jd.user("bob"));
    alice.login_dev();
    bob.login_dev();

    // alice asks and waits, in the background; the idempotency key is fixed so that the
    // same command run again is the same request.
    let key = uuid::Uuid::now_v7().to_string();
    let waiter = alice
        .command()
        .args(with(OPERATOR, &["--wait", "-o", "json"]))
        .env("JITSUDO_IDEMPOTENCY_KEY", &key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn request --wait");

    let pending = eventually(30, "the request to wait for bob", || {
        let list = bob.json(&["status", "--pending"]);
        list["requests"].as_array().and_then(|a| a.first().cloned())
    });
    let rid = id(&pending);
    assert_eq!(state(&pending), "REQUEST_STATE_PENDING");

    let r = alice.run(&["approve", &rid]).fails(3);
    assert!(
        r.stderr
            .contains("nobody may approve or deny their own request"),
        "{}",
        r.stderr
    );
    let r = alice.run(&["exec", &rid, "--", "true"]).fails(1);
    assert!(
        r.stderr.contains(&format!(
            "request {rid} is pending: waiting for 1 more approval from group approvers"
        )),
        "{}",
        r.stderr
    );

    let approved = bob.json(&["approve", &rid, "--comment", "lgtm"]);
    assert_eq!(approved["approvals"][0]["approver"], "bob");
    assert_eq!(approved["approvals"][0]["comment"], "lgtm");

    let out = waiter.wait_with_output().expect("request --wait ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "--wait exits 0 when active: {stderr}");
    let last: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(state(&last), "REQUEST_STATE_ACTIVE");
    assert_eq!(id(&last), rid);
    assert!(stderr.contains("pending — approvals 0/1"), "{stderr}");

    // The same key again: the same request, not a second one.
    let again = alice
        .command()
        .args(with(OPERATOR, &["-o", "json"]))
        .env("JITSUDO_IDEMPOTENCY_KEY", &key)
        .output()
        .expect("request again");
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).expect("JSON");
    assert_eq!(id(&again), rid);
    assert_eq!(
        alice.json(&["status"])["requests"].as_array().map(Vec::len),
        Some(1)
    );
}

#[test]
fn deny_cancel_and_wait_on_a_refusal() {
    let jd = Jitsudod::dev();
    let (alice, bob) = (jd.user("alice"), jd.user("bob"));
    alice.login_dev();
    bob.login_dev();

    let rid = id(&alice.json(OPERATOR));
    // alice follows her request; every stored version is a line, until it ends.
    let watcher = alice
        .command()
        .args(["status", &rid, "--watch", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn status --watch");
    let r = bob.run(&["deny", &rid]).fails(2);
    assert!(r.stderr.contains("--reason"), "{}", r.stderr);
    let denied = bob.json(&["deny", &rid, "--reason", "use the runbook"]);
    assert_eq!(state(&denied), "REQUEST_STATE_REJECTED", "{denied}");
    let watched = watcher.wait_with_output().expect("status --watch ends");
    assert!(watched.status.success());
    let lines = String::from_utf8_lossy(&watched.stderr).into_owned();
    assert!(lines.contains("v1  PENDING"), "{lines}");
    assert!(
        lines.contains("REJECTED   request.denied by bob"),
        "{lines}"
    );
    let last: serde_json::Value = serde_json::from_slice(&watched.stdout).expect("JSON");
    assert_eq!(state(&last), "REQUEST_STATE_REJECTED");
    let r = alice.run(&["status", &rid]).ok();
    assert!(r.stdout.contains("REJECTED"), "{}", r.stdout);

    let rid = id(&alice.json(OPERATOR));
    let r = bob.run(&["cancel", &rid]).fails(3);
    assert!(!r.stderr.is_empty());
    let cancelled = alice.json(&["cancel", &rid]);
    assert_eq!(state(&cancelled), "REQUEST_STATE_CANCELLED");

    // --wait on a request that is denied exits non-zero, saying how it ended.
    let waiter = alice
        .command()
        .args(with(OPERATOR, &["--wait"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn request --wait");
    let pending = eventually(30, "a pending request", || {
        let list = bob.json(&["status", "--pending"]);
        list["requests"].as_array().and_then(|a| a.first().cloned())
    });
    bob.run(&["deny", &id(&pending), "--reason", "not today"])
        .ok();
    let out = waiter.wait_with_output().expect("request --wait ends");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has ended: REJECTED"), "{stderr}");

    // Unknown ids and malformed ones say so.
    let r = alice
        .run(&["status", &uuid::Uuid::now_v7().to_string()])
        .fails(4);
    assert!(!r.stderr.contains("status:"), "no gRPC noise: {}", r.stderr);
    alice.run(&["status", "not-an-id"]).fails(2);
}

#[test]
fn audit_query_and_client_side_verify() {
    let jd = Jitsudod::dev();
    let (alice, erin) = (jd.user("alice"), jd.user("erin"));
    alice.login_dev();
    erin.login_dev();
    let rid = id(&alice.json(&with(VIEWER, &["--wait"])));
    alice.run(&["revoke", &rid]).ok();

    let r = alice.run(&["audit"]).fails(3);
    assert!(r.stderr.contains("audit"), "{}", r.stderr);

    let events = eventually(20, "the end in the audit log", || {
        let page = erin.json(&["audit", "--request", &rid, "--oldest-first"]);
        let kinds: Vec<String> = page["events"]
            .as_array()?
            .iter()
            .filter_map(|e| e["kind"].as_str().map(str::to_owned))
            .collect();
        kinds.iter().any(|k| k == "request.ended").then_some(kinds)
    });
    assert_eq!(events[0], "request.created", "{events:?}");
    let by_provider = erin.json(&["audit", "--provider", "demo", "--limit", "1000"]);
    assert!(
        by_provider["events"]
            .as_array()
            .is_some_and(|a| a.iter().all(|e| e["requestId"] == rid.as_str())),
        "{by_provider}"
    );
    let none = erin.json(&["audit", "--provider", "no-such"]);
    assert!(none.get("events").is_none(), "{none}");
    let table = erin.run(&["audit", "--since", "1h"]).ok().stdout;
    assert!(table.starts_with("TIME"), "{table}");

    // Verify on the client, with the server's key and then with our own copy of it.
    let verify = eventually(20, "the chain to cover every event", || {
        let r = erin.run(&["audit", "verify", "-o", "json"]);
        let v = r.json();
        (r.code == 0 && v.get("unchained").is_none()).then_some(r)
    });
    assert_eq!(verify.json()["intact"], true);
    assert!(
        verify.stderr.contains("pass --public-key"),
        "{}",
        verify.stderr
    );
    let key = erin.home.path().join("audit.pub.pem");
    jd.dev_audit_public_key(&key);
    let r = erin
        .run(&[
            "audit",
            "verify",
            "--public-key",
            key.to_str().expect("utf-8"),
        ])
        .ok();
    assert!(r.stdout.contains("INTACT"), "{}", r.stdout);
    assert!(!r.stderr.contains("pass --public-key"), "{}", r.stderr);

    // A key that is not the server's: every checkpoint is reported, the exit code says so.
    let other = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let other_key = erin.home.path().join("other.pub.pem");
    {
        use ed25519_dalek::pkcs8::EncodePublicKey as _;
        let pem = other
            .verifying_key()
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("PEM");
        std::fs::write(&other_key, pem).expect("write");
    }
    let checkpoints = eventually(20, "a checkpoint", || {
        let v = erin.json(&["audit", "verify"]);
        v.get("checkpoints").cloned()
    });
    assert!(checkpoints.as_u64().is_some_and(|n| n > 0));
    let r = erin
        .run(&[
            "audit",
            "verify",
            "--public-key",
            other_key.to_str().expect("utf-8"),
        ])
        .fails(1);
    assert!(r.stdout.contains("signed by another key"), "{}", r.stdout);
    assert!(r.stderr.contains("NOT intact"), "{}", r.stderr);
}

#[test]
fn policies_eval_and_the_server() {
    let jd = Jitsudod::dev();
    let (carol, alice) = (jd.user("carol"), jd.user("alice"));
    carol.login_dev();
    alice.login_dev();
    let dir = carol.home.path();

    let good = dir.join("readers.rego");
    std::fs::write(
        &good,
        "package jitsudo.eligibility\n\nallow if input.request.role == \"reader\"\n",
    )
    .expect("write");
    let applied = carol.json(&["policy", "apply", "-f", good.to_str().expect("utf-8")]);
    assert_eq!(applied["name"], "readers");
    assert_eq!(applied["author"], "carol");

    let broken = dir.join("broken.rego");
    std::fs::write(&broken, "package jitsudo.eligibility\n\nallow if {\n").expect("write");
    let r = carol
        .run(&[
            "policy",
            "apply",
            "-f",
            broken.to_str().expect("utf-8"),
            "--name",
            "broken",
        ])
        .fails(2);
    // The compiler's own words, where the mistake is; no gRPC wire noise.
    assert!(r.stderr.starts_with("error: "), "{}", r.stderr);
    assert!(r.stderr.contains("does not compile"), "{}", r.stderr);
    assert!(r.stderr.contains("broken:4"), "{}", r.stderr);
    assert!(!r.stderr.contains("status:"), "{}", r.stderr);
    let names: Vec<String> = carol.json(&["policy", "list"])["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    assert!(names.contains(&"readers".to_owned()), "{names:?}");
    assert!(!names.contains(&"broken".to_owned()), "{names:?}");
    let got = carol.run(&["policy", "get", "readers"]).ok().stdout;
    assert!(
        got.contains("allow if input.request.role == \"reader\""),
        "{got}"
    );
    let r = alice
        .run(&["policy", "apply", "-f", good.to_str().expect("utf-8")])
        .fails(3);
    assert!(!r.stderr.is_empty());

    let input = dir.join("input.json");
    std::fs::write(
        &input,
        r#"{"requester": {"subject": "alice", "groups": ["engineering"]},
            "request": {"provider": "demo", "role": "viewer", "scope": "demo-account",
                        "duration_seconds": 600, "break_glass": false, "reason": "x"}}"#,
    )
    .expect("write");
    let eval = carol.json(&["policy", "eval", "--input", input.to_str().expect("utf-8")]);
    assert_eq!(eval["eligible"], true, "{eval}");
    let decision: serde_json::Value =
        serde_json::from_str(eval["decisionJson"].as_str().expect("decision")).expect("JSON");
    assert_eq!(decision["auto_approve"], true, "{decision}");
    let table = carol
        .run(&["policy", "eval", "--input", input.to_str().expect("utf-8")])
        .ok()
        .stdout;
    assert!(
        table.contains("Eligible") && table.contains("Decision:"),
        "{table}"
    );
    carol.run(&["policy", "delete", "readers"]).ok();
    carol.run(&["policy", "delete", "readers"]).fails(4);

    // The server: actors of a node with a live request.
    alice.run(&with(VIEWER, &["--wait"])).ok();
    let tree = carol.run(&["server", "actors"]).ok().stdout;
    assert!(tree.starts_with("node dev"), "{tree}");
    assert!(tree.contains("request"), "{tree}");
    assert!(tree.contains("mailbox"), "{tree}");
    let cluster = carol.run(&["server", "cluster"]).ok().stdout;
    assert!(
        cluster.contains("NODE") && cluster.contains("Audit sequencer  dev (epoch"),
        "{cluster}"
    );
    let cluster = carol.json(&["server", "cluster"]);
    assert_eq!(cluster["members"][0]["node"], "dev");
    assert_eq!(cluster["members"][0]["alive"], true);
    assert_eq!(cluster["shards"].as_array().map(Vec::len), Some(64));
    let providers = carol.run(&["server", "providers"]).ok().stdout;
    assert!(
        providers.starts_with("NAME") && providers.contains("LAST PASS"),
        "{providers}"
    );
    assert!(providers.contains("demo"), "{providers}");
    assert!(providers.contains(" native "), "{providers}");
    assert!(
        providers.contains(" ok ") && providers.contains(" ago"),
        "{providers}"
    );
    let providers = carol.json(&["server", "providers"]);
    let demo = &providers["providers"][0];
    assert_eq!(demo["name"], "demo", "{providers}");
    assert_eq!(demo["kind"], "demo", "{providers}");
    assert_eq!(demo["nativeExpiry"], true, "{providers}");
    assert_eq!(demo["onDrift"], "report", "{providers}");
    assert_eq!(demo["lastCall"]["outcome"], "ok", "{providers}");
    let yaml = carol
        .run(&["server", "providers", "-o", "yaml"])
        .ok()
        .stdout;
    assert!(yaml.contains("kind: demo"), "{yaml}");
    let r = alice.run(&["server", "providers"]).fails(3);
    assert!(r.stderr.contains("listing providers"), "{}", r.stderr);
    let status = carol.json(&["server", "status"]);
    assert_eq!(status["devMode"], true);
    let version = carol.json(&["server", "version"]);
    assert_eq!(version["client"], env!("CARGO_PKG_VERSION"));
    carol.run(&["server", "reload-policies"]).ok();
}

#[test]
fn usage_errors_and_completions() {
    let jd = Jitsudod::dev();
    let alice = jd.user("alice");
    alice.login_dev();
    let r = alice
        .run(&with(
            &VIEWER[..VIEWER.len() - 4],
            &["--duration", "90", "--reason", "x"],
        ))
        .fails(2);
    assert!(r.stderr.contains("needs a unit"), "{}", r.stderr);
    let r = alice
        .command()
        .args(["status"])
        .env("JITSUDO_SERVER", "http://jitsudo.example.com")
        .output()
        .expect("run");
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("plain http"));
    let r = alice
        .command()
        .args(["status"])
        .env(
            "JITSUDO_SERVER",
            format!("http://127.0.0.1:{}", jitsudo_testkit::free_port()),
        )
        .env("JITSUDO_TOKEN", "any")
        .output()
        .expect("run");
    assert_eq!(
        r.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let r = alice.run(&["completion", "bash"]).ok();
    assert!(r.stdout.contains("jitsudo"), "{}", r.stdout);
    let r = alice.run(&["completion", "zsh"]).ok();
    assert!(r.stdout.contains("#compdef jitsudo"));
}
