//! `jitsudo policy test DIR`: Rego unit tests run offline with the engine jitsudod uses.

use std::path::PathBuf;

use crate::harness::User;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cluster-config/dev/policies")
}

#[test]
fn the_example_policies_pass_their_tests_offline() {
    let u = User::offline("alice");
    let dir = examples();
    let r = u.run(&["policy", "test", dir.to_str().expect("path")]).ok();
    for t in [
        "test_engineering_may_request_demo",
        "test_other_providers_are_not_allowed",
        "test_more_than_four_hours_is_denied_with_a_reason",
    ] {
        assert!(
            r.stdout
                .contains(&format!("PASS  data.jitsudo.eligibility_test.{t}")),
            "{}",
            r.stdout
        );
    }
    assert!(r.stdout.ends_with("PASS: 3/3\n"), "{}", r.stdout);
    let only = u
        .run(&[
            "policy",
            "test",
            dir.to_str().expect("path"),
            "--run",
            "four_hours",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(only["passed"], 1, "{only}");
    assert_eq!(
        only["results"][0]["test"],
        "data.jitsudo.eligibility_test.test_more_than_four_hours_is_denied_with_a_reason"
    );
}

#[test]
fn a_failing_test_says_what_it_evaluated_to_shows_its_prints_and_exits_1() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("limits.rego"),
        "package jitsudo.eligibility\n\nmax_request_seconds := 3600\n",
    )
    .expect("policy");
    std::fs::write(
        dir.path().join("limits_test.rego"),
        r#"package jitsudo.eligibility_test

import data.jitsudo.eligibility

test_limit_is_an_hour if {
	eligibility.max_request_seconds == 3600
}

test_limit_is_two_hours if {
	print("limit is", eligibility.max_request_seconds)
	eligibility.max_request_seconds == 7200
}

test_limit_value := eligibility.max_request_seconds
"#,
    )
    .expect("tests");
    let u = User::offline("alice");
    let r = u
        .run(&["policy", "test", dir.path().to_str().expect("path")])
        .fails(1);
    assert!(
        r.stdout
            .contains("PASS  data.jitsudo.eligibility_test.test_limit_is_an_hour"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("FAIL  data.jitsudo.eligibility_test.test_limit_is_two_hours"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("      limits_test.rego: undefined"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("print: limits_test.rego:10: limit is 3600"),
        "{}",
        r.stdout
    );
    // A test rule that is not true (here: a number) fails with its value.
    assert!(
        r.stdout
            .contains("FAIL  data.jitsudo.eligibility_test.test_limit_value"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("      limits_test.rego: 3600"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("PASS: 1/3\nFAIL: 2/3"), "{}", r.stdout);
}

#[test]
fn a_broken_file_or_an_empty_dir_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("dir");
    let u = User::offline("alice");
    let empty = u
        .run(&["policy", "test", dir.path().to_str().expect("path")])
        .fails(2);
    assert!(
        empty.stderr.contains("no .rego files under"),
        "{}",
        empty.stderr
    );
    std::fs::write(dir.path().join("broken.rego"), "package p\n\nallow if {\n").expect("file");
    let broken = u
        .run(&["policy", "test", dir.path().to_str().expect("path")])
        .fails(2);
    assert!(
        broken.stderr.contains("broken.rego does not compile"),
        "{}",
        broken.stderr
    );
    // Two tests of one name would be ORed by Rego: one failing would pass unseen.
    let dup = tempfile::tempdir().expect("dir");
    std::fs::write(
        dup.path().join("dup_test.rego"),
        "package p\n\ntest_a if { true }\n\ntest_a if { false }\n",
    )
    .expect("file");
    let twice = u
        .run(&["policy", "test", dup.path().to_str().expect("path")])
        .fails(2);
    assert!(
        twice
            .stderr
            .contains("dup_test.rego: 2 tests are named test_a"),
        "{}",
        twice.stderr
    );
}
