//! `jitsudo login` with the OpenID device authorization grant against a real OpenID
//! provider (npm `oidc-provider`, JWT access tokens for jitsudod's audience through its
//! resource-indicators feature), a script playing the person who approves the code, and a
//! silent refresh once the short-lived access token has expired. The only test that needs
//! Node.js: the set-up installs the provider with `npm ci` from the committed lock file.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Jitsudod, demo_request};

/// Seconds an access token lives: long enough for login's own first call, short enough
/// that the test sees it expire.
const ACCESS_TTL: u64 = 8;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// `npm ci` once per checkout (node_modules is ignored by git).
fn install_provider() {
    let dir = fixture_dir();
    if dir.join("node_modules/oidc-provider/package.json").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()
        .expect("npm is needed for the device-flow test (Node.js ships on these machines)");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

/// The OpenID provider, stopped when dropped.
struct Provider {
    child: Child,
    issuer: String,
}

impl Provider {
    fn start() -> Provider {
        install_provider();
        let port = jitsudo_testkit::free_port();
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .arg(port.to_string())
            .env("ACCESS_TTL", ACCESS_TTL.to_string())
            .current_dir(fixture_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs the OpenID provider");
        let stdout = child.stdout.take().expect("provider stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(issuer) = line.strip_prefix("READY ") {
                    let _ = tx.send(issuer.to_owned());
                }
            }
        });
        let issuer = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the OpenID provider says READY");
        Provider { child, issuer }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stored_tokens(home: &Path) -> (String, String) {
    let text = std::fs::read_to_string(home.join("state/tokens.json")).expect("tokens.json");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    let (_, t) = v["servers"]
        .as_object()
        .and_then(|m| m.iter().next())
        .expect("one server");
    (
        t["access_token"].as_str().expect("access").to_owned(),
        t["refresh_token"].as_str().expect("refresh").to_owned(),
    )
}

#[test]
fn device_flow_login_and_silent_refresh() {
    let provider = Provider::start();
    let jd = Jitsudod::postgres_with_issuer(Some(provider.issuer.clone()));
    let alice = jd.user("alice");

    let mut login = alice
        .command()
        .args([
            "login",
            "--issuer",
            &provider.issuer,
            "--client-id",
            "jitsudo-cli",
            "--scopes",
            "openid,profile,email,offline_access,api",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("jitsudo login");
    // Read what the person is told: the URL (with the code) to open.
    let stderr = login.stderr.take().expect("login stderr");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let mut told = Vec::new();
    let complete = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("login prints where to go; it said: {told:?}"));
        told.push(line.clone());
        if let Some(rest) = line.strip_prefix("(or open ") {
            break rest.trim_end_matches(')').to_owned();
        }
    };
    assert!(
        told[0].starts_with("To log in, open http://") && told[0].contains("enter the code"),
        "{told:?}"
    );

    let approved = Command::new("node")
        .arg("approve.mjs")
        .arg(&complete)
        .arg("alice")
        .current_dir(fixture_dir())
        .output()
        .expect("node approves the code");
    assert!(
        approved.status.success(),
        "approve.mjs: {}",
        String::from_utf8_lossy(&approved.stderr)
    );

    let status = login.wait().expect("login ends");
    let said = reader.join().expect("stderr reader");
    assert!(status.success(), "login succeeds: {said}");
    assert!(said.contains("as alice"), "{said}");

    let me = alice.json(&["whoami"]);
    assert_eq!(me["subject"], "alice");
    assert_eq!(me["groups"], serde_json::json!(["engineering"]));
    let (first_access, first_refresh) = stored_tokens(alice.home.path());
    assert!(!said.contains(&first_access), "tokens are never printed");

    // Once the access token has expired the next command refreshes it silently.
    std::thread::sleep(Duration::from_secs(ACCESS_TTL + 1));
    let r = alice.run(&["whoami", "-o", "json"]).ok();
    assert_eq!(r.json()["subject"], "alice");
    assert!(r.stderr.is_empty(), "silent: {}", r.stderr);
    let (second_access, second_refresh) = stored_tokens(alice.home.path());
    assert_ne!(second_access, first_access, "a new access token");
    assert_ne!(
        second_refresh, first_refresh,
        "the rotated refresh token is kept"
    );

    // The expired token itself is refused by jitsudod, and the error says what to do.
    let r = alice
        .command()
        .args(["whoami"])
        .env("JITSUDO_TOKEN", &first_access)
        .output()
        .expect("run");
    assert_eq!(r.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&r.stderr).contains("jitsudo login"));

    // A request with the refreshed login works end to end.
    let req = alice.json(
        &[
            demo_request("viewer", "10m", "after a refresh"),
            vec!["--wait"],
        ]
        .concat(),
    );
    assert_eq!(req["requester"], "alice");
    assert_eq!(req["state"], "REQUEST_STATE_ACTIVE");

    // A watch outlives several access tokens: the server ends the stream when the token
    // expires, and the CLI carries on with a refreshed one without a word.
    let short = alice.json(&demo_request(
        "viewer",
        "20s",
        "a watch across token lifetimes",
    ));
    let id = short["id"].as_str().expect("id").to_owned();
    let (_, before) = stored_tokens(alice.home.path());
    let r = alice.run(&["status", &id, "--watch", "-o", "json"]).ok();
    assert_eq!(r.json()["state"], "REQUEST_STATE_EXPIRED", "{}", r.stdout);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert!(
        lines.iter().all(|l| l.contains("  v")),
        "only the request's versions are printed, no error or notice: {}",
        r.stderr
    );
    let versions: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('v')))
        .collect();
    let mut unique = versions.clone();
    unique.dedup();
    assert_eq!(versions, unique, "no version twice: {}", r.stderr);
    let (_, after) = stored_tokens(alice.home.path());
    assert_ne!(before, after, "the watch refreshed the login");
}
