//! The real `jitsudo` binary against a production-mode jitsudod: PostgreSQL, TLS with a
//! private CA (`--ca-cert`), tokens from an OpenID issuer handed over in JITSUDO_TOKEN.

use crate::harness::{Jitsudod, demo_request, eventually, id, state};

#[test]
fn tls_postgres_request_approve_and_inspect() {
    let jd = Jitsudod::postgres();
    let (alice, bob, carol) = (jd.user("alice"), jd.user("bob"), jd.user("carol"));

    // Without the CA the server's certificate is not trusted, and the error says where to look.
    let r = alice
        .command()
        .args(["status"])
        .env_remove("JITSUDO_CA_CERT")
        .output()
        .expect("run");
    assert_eq!(r.status.code(), Some(5));
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("--ca-cert"), "{stderr}");

    let me = alice.json(&["whoami"]);
    assert_eq!(me["subject"], "alice");

    // Auto-approved viewer access, followed to ACTIVE.
    let viewer = alice.json(
        &[
            demo_request("viewer", "20m", "look at the dashboards"),
            vec!["--meta", "team=payments", "--wait"],
        ]
        .concat(),
    );
    assert_eq!(state(&viewer), "REQUEST_STATE_ACTIVE", "{viewer}");
    assert_eq!(viewer["metadata"]["team"], "payments");

    // An operator request approved by bob.
    let op = alice.json(&demo_request("operator", "1h", "restart the workers"));
    let rid = id(&op);
    assert_eq!(state(&op), "REQUEST_STATE_PENDING");
    let pending = bob.json(&["status", "--pending"]);
    assert_eq!(pending["requests"][0]["id"], rid.as_str(), "{pending}");
    bob.run(&["approve", &rid]).ok();
    eventually(20, "ACTIVE after bob's approval", || {
        (state(&alice.json(&["status", &rid])) == "REQUEST_STATE_ACTIVE").then_some(())
    });

    // The list: both requests, newest first; the table has one row each.
    let list = alice.json(&["status", "--limit", "1"]);
    assert_eq!(list["requests"][0]["id"], rid.as_str());
    let token = list["nextPageToken"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let next = alice.json(&["status", "--limit", "1", "--page-token", &token]);
    assert_eq!(next["requests"][0]["id"], id(&viewer).as_str());
    let table = alice.run(&["status", "--state", "active"]).ok().stdout;
    assert_eq!(table.lines().count(), 3, "header and two rows: {table}");

    let r = alice
        .run(&[
            "exec",
            &rid,
            "--",
            "sh",
            "-c",
            "test \"$JITSUDO_ROLE\" = operator",
        ])
        .ok();
    assert!(r.stdout.is_empty());

    let tree = carol.run(&["server", "actors"]).ok().stdout;
    assert!(tree.starts_with("node cli-it"), "{tree}");
    let status = carol.json(&["server", "status"]);
    assert_eq!(status["store"], "postgres", "{status}");
    carol.run(&["audit", "verify"]).ok();
}

#[test]
fn a_self_approved_request_is_listed_for_review_and_closed_by_an_auditor() {
    let jd = Jitsudod::postgres();
    let (carol, erin) = (jd.user("carol"), jd.user("erin"));
    // No dev user is on call (break-glass), so the request to review is a self-approval:
    // carol, an admin, writes policies that auto-approve a role and then asks for it.
    let good = carol.home.path().join("approval.rego");
    std::fs::write(
        &good,
        "package jitsudo.eligibility\n\nallow if input.request.role == \"auditor-view\"\n",
    )
    .expect("write");
    carol
        .run(&[
            "policy",
            "apply",
            "-f",
            good.to_str().expect("utf-8"),
            "--name",
            "carol-elig",
        ])
        .ok();
    let approval = carol.home.path().join("approval2.rego");
    std::fs::write(
        &approval,
        "package jitsudo.approval\n\nauto_approve if input.request.role == \"auditor-view\"\n",
    )
    .expect("write");
    carol
        .run(&[
            "policy",
            "apply",
            "-f",
            approval.to_str().expect("utf-8"),
            "--name",
            "carol-approval",
        ])
        .ok();
    let r = carol.json(
        &[
            demo_request("auditor-view", "10m", "look at the trail"),
            vec!["--wait"],
        ]
        .concat(),
    );
    let rid = id(&r);
    assert_eq!(
        r["reviewReason"], "auto-approved by a policy its requester wrote",
        "{r}"
    );
    let open = erin.json(&["status", "--needs-review"]);
    assert_eq!(open["requests"][0]["id"], rid.as_str(), "{open}");
    let own = carol
        .run(&["review", &rid, "--verdict", "mine is fine"])
        .fails(3);
    assert!(own.stderr.contains("own request"), "{}", own.stderr);
    let closed = erin.json(&["review", &rid, "--verdict", "checked the policy diff"]);
    assert_eq!(closed["reviewer"], "erin");
    let open = erin.json(&["status", "--needs-review"]);
    assert!(open.get("requests").is_none(), "{open}");
    let again = erin.run(&["review", &rid, "--verdict", "again"]).fails(1);
    assert!(!again.stderr.is_empty());
}
