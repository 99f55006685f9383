//! What people and scripts see: the table, JSON and YAML of `status` and `audit`, pinned by
//! insta snapshots (ids, times, hashes and the policy fingerprint are masked).

use crate::harness::{Jitsudod, User, demo_request, eventually, id};

fn masked(name: &str, text: &str) {
    insta::with_settings!({
        snapshot_path => "snapshots",
        prepend_module_to_snapshot => false,
        filters => vec![
            (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "[UUID]"),
            (r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} [+-]\d{2}:\d{2}", "[LOCAL TIME]"),
            (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})", "[RFC3339]"),
            (r#""atMicros": "\d+""#, r#""atMicros": "[MICROS]""#),
            (r#"atMicros: "\d+""#, r#"atMicros: "[MICROS]""#),
            (r"\b[0-9a-f]{64}\b", "[SHA256]"),
            (r"\b[0-9a-f]{16}\b", "[FINGERPRINT]"),
            (r"[A-Za-z0-9+/]{86}==", "[SIGNATURE]"),
            // Which event the one checkpoint covers depends on when the sequencer first ran
            // (after one or both policy installs): its seq is masked, the events' are not.
            (r#"(?m)^      "seq": "\d+",$"#, r#"      "seq": "[CHECKPOINT SEQ]","#),
            (r#"(?m)^    seq: "\d+"$"#, r#"    seq: "[CHECKPOINT SEQ]""#),
            (r"[A-Za-z0-9+/]{43}=", "[BASE64 HASH]"),
        ],
    }, {
        insta::assert_snapshot!(name, text);
    });
}

// One checkpoint is in the audit output: the sequencer signs its first batch at once and
// the next only after 60 s or 1000 events, far beyond this test.

/// One finished request of alice's, its audit trail fully chained.
fn scene() -> (Jitsudod, User, User, String) {
    let jd = Jitsudod::dev();
    let (alice, erin) = (jd.user("alice"), jd.user("erin"));
    alice.login_dev();
    erin.login_dev();
    let rid = id(&alice.json(
        &[
            demo_request("viewer", "45m", "read the payment logs"),
            vec!["--ticket", "OPS-7", "--meta", "team=payments", "--wait"],
        ]
        .concat(),
    ));
    alice.run(&["revoke", &rid, "--reason", "done"]).ok();
    eventually(20, "the request to end and its trail to be chained", || {
        let r = alice.json(&["status", &rid]);
        let v = erin.json(&["audit", "verify"]);
        (r["state"] == "REQUEST_STATE_REVOKED" && v.get("unchained").is_none()).then_some(())
    });
    (jd, alice, erin, rid)
}

#[test]
fn status_and_audit_in_every_format() {
    let (_jd, alice, erin, rid) = scene();
    for (fmt, suffix) in [("table", "table"), ("json", "json"), ("yaml", "yaml")] {
        let detail = alice.run(&["status", &rid, "-o", fmt]).ok().stdout;
        masked(&format!("status_detail_{suffix}"), &detail);
        let list = alice.run(&["status", "-o", fmt]).ok().stdout;
        masked(&format!("status_list_{suffix}"), &list);
        let audit = erin
            .run(&["audit", "--request", &rid, "--oldest-first", "-o", fmt])
            .ok()
            .stdout;
        masked(&format!("audit_{suffix}"), &audit);
    }
}
