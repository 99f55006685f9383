//! The AWS provider end to end with real binaries: jitsudod (PostgreSQL, TLS) with a
//! `kind = "aws"` provider against moto_server, the `jitsudo` CLI, and the AWS CLI from PyPI
//! (installed pinned by testkit) as the independent client: request → approve →
//! `jitsudo exec` runs `aws sts get-caller-identity` with the minted session → the AWS CLI
//! itself takes `jitsudo credential-process` in a profile → revoke → the role's deny names
//! exactly that grant.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::harness::{Jitsudod, User, eventually, id, state};

const REGION: &str = "us-east-1";

/// The AWS CLI of the test venv, with nothing of the machine's own AWS setup.
fn aws(moto: &jitsudo_testkit::moto::Moto) -> Command {
    let mut c = Command::new(moto.aws_cli());
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c.env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_DEFAULT_REGION", REGION)
        .env("AWS_ENDPOINT_URL", &moto.url);
    c
}

fn keys(c: &mut Command, k: &Value) {
    c.env("AWS_ACCESS_KEY_ID", k["AccessKeyId"].as_str().unwrap())
        .env(
            "AWS_SECRET_ACCESS_KEY",
            k["SecretAccessKey"].as_str().unwrap(),
        )
        .env("AWS_SESSION_TOKEN", k["SessionToken"].as_str().unwrap());
}

#[track_caller]
fn run_json(c: &mut Command) -> Value {
    let out = c.output().expect("run the AWS CLI");
    assert!(
        out.status.success(),
        "{c:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Value::Null;
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `jitsudo`'s environment (server, token, CA, dirs) for a process that runs it itself.
fn with_user_env(c: &mut Command, u: &User) {
    for (k, v) in u.command().get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
}

/// `alice` asks for ReadOnly in `account`; `bob` approves; waits until ACTIVE.
fn approved(alice: &User, bob: &User, account: &str, duration: &str, reason: &str) -> String {
    let r = alice.json(&[
        "request",
        "--provider",
        "aws",
        "--role",
        "ReadOnly",
        "--scope",
        account,
        "--duration",
        duration,
        "--reason",
        reason,
    ]);
    let rid = id(&r);
    assert_eq!(state(&r), "REQUEST_STATE_PENDING", "{r}");
    bob.run(&["approve", &rid]).ok();
    eventually(30, "ACTIVE after bob's approval", || {
        (state(&alice.json(&["status", &rid])) == "REQUEST_STATE_ACTIVE").then_some(())
    });
    rid
}

fn grant_of_session(arn: &str) -> String {
    arn.rsplit_once("/jitsudo-")
        .map(|(_, g)| g.to_owned())
        .unwrap_or_else(|| panic!("{arn} is not a jitsudo session"))
}

#[test]
fn an_aws_role_session_from_request_to_revoke() {
    let moto = jitsudo_testkit::moto::moto().expect("moto_server starts");
    let account = jitsudo_testkit::moto::fresh_account();
    // An administrator's session in a fresh account (moto files calls by credentials).
    let admin = run_json(
        aws(moto)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .args(["sts", "assume-role", "--role-arn"])
            .arg(format!("arn:aws:iam::{account}:role/test-admin"))
            .args(["--role-session-name", "setup"]),
    )["Credentials"]
        .clone();
    let trust = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"AWS": format!("arn:aws:iam::{account}:root")},
        "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"]}]});
    let mut create = aws(moto);
    keys(&mut create, &admin);
    run_json(
        create
            .args(["iam", "create-role", "--role-name", "ReadOnly"])
            .args(["--max-session-duration", "7200"])
            .arg("--assume-role-policy-document")
            .arg(trust.to_string()),
    );

    // jitsudod's own credentials: a profile in a credentials file of its own.
    let files = tempfile::tempdir().unwrap();
    let creds = files.path().join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[jitsudod]\naws_access_key_id = {}\naws_secret_access_key = {}\naws_session_token = {}\n",
            admin["AccessKeyId"].as_str().unwrap(),
            admin["SecretAccessKey"].as_str().unwrap(),
            admin["SessionToken"].as_str().unwrap()
        ),
    )
    .unwrap();
    let table: toml::Table = format!(
        r#"
name = "aws"
kind = "aws"
region = "{REGION}"
accounts = ["{account}"]
roles = ["ReadOnly"]
endpoint_url = "{}"
profile = "jitsudod"
credentials_file = "{}"
"#,
        moto.url,
        creds.display()
    )
    .parse()
    .unwrap();
    let section =
        jitsudo_api::config::ProviderConfig::from_table(table).expect("a valid aws table");
    let jd = Jitsudod::postgres_with_providers(vec![section], |c| {
        c.node.reconcile_interval_seconds = 1;
        // A grant's end is its approval + this + its duration: short for the second request.
        c.limits.grant_timeout_seconds = 2;
    });
    let (alice, bob, carol) = (jd.user("alice"), jd.user("bob"), jd.user("carol"));
    // The example policies cover the demo provider only: engineering may ask for ReadOnly.
    let rego = files.path().join("aws.rego");
    std::fs::write(
        &rego,
        "package jitsudo.eligibility\n\nallow if {\n\tinput.request.provider == \"aws\"\n\tinput.request.role == \"ReadOnly\"\n\t\"engineering\" in input.requester.groups\n}\n",
    )
    .unwrap();
    carol
        .run(&[
            "policy",
            "apply",
            "--file",
            rego.to_str().unwrap(),
            "--name",
            "aws-eligibility",
        ])
        .ok();

    let rid = approved(&alice, &bob, &account, "30m", "read the bucket inventory");

    // `jitsudo exec` hands the session to the AWS CLI, which calls moto with it.
    let cli = moto.aws_cli();
    let out = alice
        .command()
        .args(["exec", &rid, "--"])
        .arg(&cli)
        .args(["sts", "get-caller-identity", "--output", "json"])
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_ENDPOINT_URL", &moto.url)
        .output()
        .expect("jitsudo exec");
    assert!(
        out.status.success(),
        "jitsudo exec -- aws: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let who: Value = serde_json::from_slice(&out.stdout).expect("get-caller-identity JSON");
    let arn = who["Arn"].as_str().unwrap().to_owned();
    assert!(
        arn.starts_with(&format!(
            "arn:aws:sts::{account}:assumed-role/ReadOnly/jitsudo-"
        )),
        "{who}"
    );
    let grant = grant_of_session(&arn);

    // The AWS CLI itself runs `jitsudo credential-process` from a profile.
    let config = files.path().join("config");
    write_profile(&config, &account, &moto.url);
    let mut profile = aws(moto);
    profile
        .env("AWS_CONFIG_FILE", &config)
        .env_remove("AWS_ENDPOINT_URL")
        .args([
            "sts",
            "get-caller-identity",
            "--profile",
            "jitsudo-test",
            "--output",
            "json",
        ]);
    with_user_env(&mut profile, &alice);
    let who = run_json(&mut profile);
    assert_eq!(
        grant_of_session(who["Arn"].as_str().unwrap()),
        grant,
        "the profile's session is the same grant's: {who}"
    );

    // Revoke: the role's deny names exactly this grant's sessions.
    alice.run(&["revoke", &rid, "--reason", "done early"]).ok();
    eventually(30, "REVOKED", || {
        (state(&alice.json(&["status", &rid])) == "REQUEST_STATE_REVOKED").then_some(())
    });
    let mut read = aws(moto);
    keys(&mut read, &admin);
    let policy = run_json(read.args([
        "iam",
        "get-role-policy",
        "--role-name",
        "ReadOnly",
        "--policy-name",
        "jitsudo-revoked-sessions",
        "--output",
        "json",
    ]));
    assert_eq!(
        policy["PolicyDocument"]["Statement"][0]["Condition"]["StringEquals"]["aws:PrincipalTag/jitsudo-grant"],
        json!([grant]),
        "{policy}"
    );
    // And the profile now fails with jitsudo's reason, shown by the AWS CLI.
    let out = profile.output().expect("aws");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no ACTIVE request"), "{stderr}");

    // A second, short grant revoked at once joins the deny, and jitsudod's reconciler takes
    // its entry out again once the grant's end has passed (no session can outlive it); the
    // first grant's entry stays until its own end.
    let sid = approved(&alice, &bob, &account, "20s", "one quick look");
    alice.run(&["revoke", &sid, "--reason", "seen enough"]).ok();
    let denied_now = |read: &mut Command| -> Vec<String> {
        let p = run_json(read);
        p["PolicyDocument"]["Statement"][0]["Condition"]["StringEquals"]
            ["aws:PrincipalTag/jitsudo-grant"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let both = eventually(30, "both grants denied", || {
        let ids = denied_now(&mut read);
        (ids.len() == 2).then_some(ids)
    });
    assert!(both.contains(&grant), "{both:?}");
    eventually(90, "the short grant's entry removed after its end", || {
        (denied_now(&mut read) == [grant.clone()]).then_some(())
    });
}

fn write_profile(path: &Path, account: &str, endpoint: &str) {
    std::fs::write(
        path,
        format!(
            "[profile jitsudo-test]\ncredential_process = {} credential-process --provider aws --role ReadOnly --scope {account}\nendpoint_url = {endpoint}\nregion = {REGION}\n",
            env!("CARGO_BIN_EXE_jitsudo")
        ),
    )
    .unwrap();
}
