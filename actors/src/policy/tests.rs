use std::collections::BTreeMap;
use std::time::Instant;

use chrono::{DateTime, TimeZone, Utc};

use super::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 2, 9, 30, 0).unwrap()
}

fn person(subject: &str, groups: &[&str]) -> Principal {
    Principal {
        subject: subject.to_string(),
        email: Some(format!("{subject}@example.com")),
        email_verified: true,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        trust_tier: 0,
    }
}

fn alice() -> Principal {
    person("alice", &["engineering"])
}

fn bob() -> Principal {
    person("bob", &["approvers", "engineering"])
}

fn erin_oncall() -> Principal {
    person("erin", &["engineering", "oncall"])
}

fn demo(role: &str, duration_seconds: i64) -> RequestInput {
    RequestInput {
        provider: "demo".into(),
        role: role.into(),
        scope: String::new(),
        duration_seconds,
        reason: None,
        ticket: None,
        break_glass: false,
        metadata: BTreeMap::new(),
    }
}

fn examples() -> PolicySet {
    PolicySet::compile(dev_example_policies()).expect("the example policies compile")
}

fn source(name: &str, rego: &str) -> PolicySource {
    PolicySource {
        name: name.into(),
        version: 1,
        author: "tester".into(),
        rego: rego.into(),
    }
}

fn allow_all() -> PolicySource {
    source("allow", "package jitsudo.eligibility\nallow := true\n")
}

fn decide(set: &PolicySet, who: Principal, request: RequestInput) -> Decision {
    set.evaluate(&PolicyInput::new(who, request, now()))
        .expect("evaluation succeeds")
}

#[test]
fn no_policy_denies_everything() {
    for set in [PolicySet::empty(), PolicySet::compile(vec![]).unwrap()] {
        let d = decide(&set, alice(), demo("viewer", 600));
        assert!(!d.eligible);
        assert_eq!(d.deny_reasons, vec![NO_POLICY_REASON.to_string()]);
        assert_eq!(d.policy_version, "empty");
        assert!(matches!(
            d.check(&demo("viewer", 600)),
            Err(PolicyRefusal::NotEligible { .. })
        ));
        let as_bob = PolicyInput::new(alice(), demo("viewer", 600), now()).with_approver(bob());
        assert!(!set.approver_allowed(&as_bob).unwrap());
    }
}

#[test]
fn approval_rules_without_eligibility_policy_deny_with_a_reason() {
    let set = PolicySet::compile(vec![source(
        "a",
        "package jitsudo.approval\nauto_approve := true\n",
    )])
    .unwrap();
    let d = decide(&set, alice(), demo("viewer", 600));
    assert!(!d.eligible);
    assert!(
        d.deny_reasons[0].contains("jitsudo.eligibility.allow"),
        "{:?}",
        d.deny_reasons
    );
}

#[test]
fn syntax_error_is_rejected_naming_the_policy_and_line() {
    let broken = "package jitsudo.eligibility\n\nallow if {\n  input.request.role ==\n}\n";
    let err =
        PolicySet::compile(vec![allow_all_named("ok"), source("broken", broken)]).unwrap_err();
    let PolicyError::Compile { policy, message } = &err else {
        panic!("expected a compile error, got {err:?}");
    };
    assert_eq!(policy, "broken");
    assert!(message.contains("broken:5:"), "{message}");
    println!("{err}");
}

fn allow_all_named(name: &str) -> PolicySource {
    PolicySource {
        name: name.into(),
        ..allow_all()
    }
}

#[test]
fn analysis_error_is_rejected_at_compile_not_at_first_request() {
    let unsafe_var = "package jitsudo.approval\n\nauto_approve if {\n  x == 1\n}\n";
    let err = PolicySet::compile(vec![allow_all(), source("unsafe", unsafe_var)]).unwrap_err();
    match &err {
        PolicyError::Compile { policy, message } => {
            assert_eq!(policy, "unsafe", "{message}");
            assert!(message.contains("unsafe:4:"), "{message}");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
    println!("{err}");
}

#[test]
fn rego_v0_syntax_is_refused() {
    let v0 = "package jitsudo.eligibility\n\nallow {\n  true\n}\n";
    assert!(matches!(
        PolicySet::compile(vec![source("v0", v0)]),
        Err(PolicyError::Compile { policy, .. }) if policy == "v0"
    ));
}

#[test]
fn misspelt_jitsudo_package_is_refused() {
    let typo = "package jitsudo.eligibilty\nallow := true\n";
    let err = PolicySet::compile(vec![source("typo", typo)]).unwrap_err();
    assert!(err.to_string().contains("jitsudo.eligibilty"), "{err}");
}

#[test]
fn duplicate_names_are_refused() {
    let err = PolicySet::compile(vec![allow_all(), allow_all()]).unwrap_err();
    assert!(matches!(err, PolicyError::Compile { policy, .. } if policy == "allow"));
}

#[test]
fn wrong_type_from_a_rule_is_an_error_naming_the_rule() {
    let cases = [
        (
            "approvals_required := \"two\"",
            "jitsudo.approval.approvals_required",
        ),
        (
            "approvals_required := 0",
            "jitsudo.approval.approvals_required",
        ),
        (
            "approvals_required := 1.5",
            "jitsudo.approval.approvals_required",
        ),
        ("auto_approve := \"yes\"", "jitsudo.approval.auto_approve"),
        (
            "approver_groups := \"approvers\"",
            "jitsudo.approval.approver_groups",
        ),
        (
            "approver_groups := [\"ok\", 7]",
            "jitsudo.approval.approver_groups",
        ),
        (
            "max_duration_seconds := -5",
            "jitsudo.approval.max_duration_seconds",
        ),
        (
            "max_duration_seconds := 7200\nmax_total_duration_seconds := 3600",
            "jitsudo.approval.max_total_duration_seconds",
        ),
        (
            "ticket_pattern := \"([A-Z\"",
            "jitsudo.approval.ticket_pattern",
        ),
        ("ticket_pattern := 42", "jitsudo.approval.ticket_pattern"),
    ];
    for (body, rule) in cases {
        let set = PolicySet::compile(vec![
            allow_all(),
            source("approval", &format!("package jitsudo.approval\n{body}\n")),
        ])
        .unwrap();
        // Twice: the second answer comes from what the set remembers of the pattern.
        for _ in 0..2 {
            let err = set
                .evaluate(&PolicyInput::new(alice(), demo("viewer", 60), now()))
                .unwrap_err();
            match &err {
                PolicyError::BadValue { rule: r, .. } => assert_eq!(r, rule, "{body}"),
                other => panic!("{body}: expected BadValue, got {other:?}"),
            }
        }
    }
    let set = PolicySet::compile(vec![source(
        "e",
        "package jitsudo.eligibility\nallow := \"yes\"\n",
    )])
    .unwrap();
    let err = set
        .evaluate(&PolicyInput::new(alice(), demo("viewer", 60), now()))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "`jitsudo.eligibility.allow` must be a boolean, but the policy produced a string \"yes\""
    );
}

#[test]
fn conflicting_rule_values_are_an_eval_error_naming_the_rule() {
    let set = PolicySet::compile(vec![
        allow_all(),
        source(
            "approval",
            "package jitsudo.approval\napprovals_required := 1 if true\napprovals_required := 2 if true\n",
        ),
    ])
    .unwrap();
    let err = set
        .evaluate(&PolicyInput::new(alice(), demo("viewer", 60), now()))
        .unwrap_err();
    assert!(
        matches!(&err, PolicyError::Eval { rule, .. } if rule == "jitsudo.approval.approvals_required"),
        "{err:?}"
    );
}

#[test]
fn undefined_rules_take_the_documented_defaults() {
    let set = PolicySet::compile(vec![allow_all()]).unwrap();
    let d = decide(&set, alice(), demo("viewer", 60));
    assert!(d.eligible);
    assert!(d.deny_reasons.is_empty());
    assert!(!d.auto_approve);
    assert_eq!(d.approvals_required, 1);
    assert!(d.approver_groups.is_empty());
    assert_eq!(d.max_duration_seconds, 3600);
    assert_eq!(d.max_total_duration_seconds, 3600);
    assert_eq!(d.approval_timeout_seconds, 3600);
    assert!(d.extend_requires_approval);
    assert!(!d.break_glass_allowed);
    assert!(!d.reason_required);
    assert_eq!(d.ticket_pattern, None);
    let with_bob = PolicyInput::new(alice(), demo("viewer", 60), now()).with_approver(bob());
    assert!(
        !set.approver_allowed(&with_bob).unwrap(),
        "no approver groups: nobody approves"
    );
}

#[test]
fn max_total_defaults_to_the_policys_max_duration() {
    let set = PolicySet::compile(vec![
        allow_all(),
        source(
            "a",
            "package jitsudo.approval\nmax_duration_seconds := 7200\n",
        ),
    ])
    .unwrap();
    let d = decide(&set, alice(), demo("viewer", 60));
    assert_eq!(d.max_total_duration_seconds, 7200);
}

#[test]
fn without_approver_allowed_rule_membership_of_approver_groups_decides() {
    let set = PolicySet::compile(vec![
        allow_all(),
        source(
            "a",
            "package jitsudo.approval\napprover_groups := [\"approvers\", \"approvers\"]\n",
        ),
    ])
    .unwrap();
    let input = PolicyInput::new(alice(), demo("viewer", 60), now());
    assert_eq!(
        set.evaluate(&input).unwrap().approver_groups,
        vec!["approvers"]
    );
    assert!(
        set.approver_allowed(&input.clone().with_approver(bob()))
            .unwrap()
    );
    assert!(
        !set.approver_allowed(&input.with_approver(person("mallory", &["engineering"])))
            .unwrap()
    );
}

#[test]
fn deny_overrides_allow_and_lists_every_reason() {
    let set = PolicySet::compile(vec![source(
        "e",
        r#"package jitsudo.eligibility
allow := true
deny contains "first" if input.request.duration_seconds > 60
deny contains "second" if input.request.duration_seconds > 60
"#,
    )])
    .unwrap();
    let d = decide(&set, alice(), demo("viewer", 120));
    assert!(!d.eligible);
    assert_eq!(d.deny_reasons, vec!["first", "second"]);
    assert!(decide(&set, alice(), demo("viewer", 30)).eligible);
}

#[test]
fn example_alice_viewer_for_30_minutes_is_auto_approved() {
    let request = demo("viewer", 1800);
    let d = decide(&examples(), alice(), request.clone());
    assert!(d.eligible, "{:?}", d.deny_reasons);
    assert!(d.auto_approve);
    assert_eq!(d.approval_timeout_seconds, 1800);
    assert_eq!(d.approver_groups, vec!["approvers"]);
    assert!(!d.extend_requires_approval);
    assert_eq!(d.check(&request), Ok(()));
}

#[test]
fn example_viewer_beyond_an_hour_needs_one_approval() {
    let d = decide(&examples(), alice(), demo("viewer", 7200));
    assert!(d.eligible);
    assert!(!d.auto_approve);
    assert_eq!(d.approvals_required, 1);
}

#[test]
fn example_admin_role_needs_two_approvals_a_reason_and_a_ticket() {
    let mut request = demo("admin", 3600);
    let d = decide(&examples(), alice(), request.clone());
    assert!(d.eligible);
    assert!(!d.auto_approve);
    assert_eq!(d.approvals_required, 2);
    assert_eq!(d.ticket_pattern.as_deref(), Some("^[A-Z]+-[0-9]+$"));
    assert!(d.reason_required);
    assert!(d.extend_requires_approval);

    assert_eq!(d.check(&request), Err(PolicyRefusal::ReasonRequired));
    request.reason = Some("rotate the demo database password".into());
    assert!(matches!(
        d.check(&request),
        Err(PolicyRefusal::TicketRequired { .. })
    ));
    request.ticket = Some("   ".into());
    assert!(matches!(
        d.check(&request),
        Err(PolicyRefusal::TicketRequired { .. })
    ));
    for malformed in ["ops-12", "OPS-12 and more", "see OPS-12", "OPS12"] {
        request.ticket = Some(malformed.into());
        assert!(
            matches!(
                d.check(&request),
                Err(PolicyRefusal::TicketMalformed { .. })
            ),
            "{malformed}"
        );
    }
    request.ticket = Some("OPS-123".into());
    assert_eq!(d.check(&request), Ok(()));
}

#[test]
fn example_duration_over_the_maximum_is_refused() {
    let mut admin = demo("cluster-admin", 3 * 3600);
    admin.reason = Some("incident follow-up".into());
    admin.ticket = Some("INC-7".into());
    let d = decide(&examples(), alice(), admin.clone());
    assert!(d.eligible);
    let refusal = d.check(&admin).unwrap_err();
    assert_eq!(
        refusal,
        PolicyRefusal::DurationTooLong {
            requested: 10800,
            max: 7200
        }
    );
    assert!(refusal.to_string().contains("3h (10800s)"), "{refusal}");
    assert!(
        refusal.to_string().contains("request 2h (7200s) or less"),
        "{refusal}"
    );

    let long = demo("viewer", 5 * 3600);
    let d = decide(&examples(), alice(), long.clone());
    assert!(!d.eligible);
    match d.check(&long) {
        Err(PolicyRefusal::NotEligible { reasons }) => {
            assert_eq!(
                reasons,
                vec!["requests are limited to 4h (14400 seconds) in this example policy"]
            )
        }
        other => panic!("expected NotEligible, got {other:?}"),
    }
}

#[test]
fn example_other_providers_and_groups_are_not_eligible() {
    let mut other = demo("viewer", 600);
    other.provider = "aws".into();
    assert!(!decide(&examples(), alice(), other).eligible);
    let carol = person("carol", &["jitsudo-admins"]);
    assert!(!decide(&examples(), carol, demo("viewer", 600)).eligible);
}

#[test]
fn example_approver_allowed_for_bob_not_for_alice() {
    let set = examples();
    let input = PolicyInput::new(alice(), demo("admin", 600), now());
    assert!(
        set.approver_allowed(&input.clone().with_approver(bob()))
            .unwrap()
    );
    let dave = person("dave", &["approvers", "engineering"]);
    assert!(
        set.approver_allowed(&input.clone().with_approver(dave))
            .unwrap()
    );
    let bob_asks = PolicyInput::new(bob(), demo("admin", 600), now());
    assert!(
        !set.approver_allowed(&bob_asks.with_approver(alice()))
            .unwrap()
    );
    assert!(!set.approver_allowed(&input).unwrap(), "no approver set");
}

#[test]
fn example_break_glass_is_allowed_only_for_oncall() {
    let mut request = demo("admin", 1800);
    request.break_glass = true;
    request.reason = Some("production is down".into());
    request.ticket = Some("INC-1".into());

    let d = decide(&examples(), alice(), request.clone());
    assert!(!d.break_glass_allowed);
    assert_eq!(d.check(&request), Err(PolicyRefusal::BreakGlassNotAllowed));

    let d = decide(&examples(), erin_oncall(), request.clone());
    assert!(d.break_glass_allowed);
    assert_eq!(d.check(&request), Ok(()));

    // Break-glass needs a reason even where the policy does not ask for one.
    let mut viewer = demo("viewer", 600);
    viewer.break_glass = true;
    let d = decide(&examples(), erin_oncall(), viewer.clone());
    assert!(!d.reason_required && !d.auto_approve);
    assert_eq!(d.check(&viewer), Err(PolicyRefusal::ReasonRequired));
}

#[test]
fn decision_records_the_fingerprint_and_the_policies() {
    let set = examples();
    let d = decide(&set, alice(), demo("viewer", 600));
    assert_eq!(d.policy_version, set.fingerprint());
    assert!(d.policy_version.starts_with("sha256:") && d.policy_version.len() == 23);
    let names: Vec<_> = d.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["dev-example-approval", "dev-example-eligibility"]);
    assert!(
        d.policies
            .iter()
            .all(|p| p.version == 1 && p.author == DEV_EXAMPLE_AUTHOR)
    );
    assert_eq!(
        set.versions(),
        vec![
            ("dev-example-approval".to_string(), 1),
            ("dev-example-eligibility".to_string(), 1)
        ]
    );

    let mut reversed = dev_example_policies();
    reversed.reverse();
    assert_eq!(
        PolicySet::compile(reversed).unwrap().fingerprint(),
        set.fingerprint()
    );
    let mut bumped = dev_example_policies();
    bumped[0].version = 2;
    assert_ne!(
        PolicySet::compile(bumped).unwrap().fingerprint(),
        set.fingerprint()
    );
}

#[test]
fn decision_round_trips_through_json() {
    let d = decide(&examples(), alice(), demo("admin", 600));
    let json = serde_json::to_string(&d).unwrap();
    assert_eq!(serde_json::from_str::<Decision>(&json).unwrap(), d);
}

#[test]
fn extension_is_capped_by_the_total_duration() {
    let d = decide(&examples(), alice(), demo("viewer", 3600));
    assert_eq!(d.check_extension(3600, 3600), Ok(()));
    assert_eq!(
        d.check_extension(7 * 3600, 2 * 3600),
        Err(PolicyRefusal::TotalDurationTooLong {
            granted: 7 * 3600,
            requested_total: 9 * 3600,
            max_total: 8 * 3600
        })
    );
    let msg = d
        .check_extension(7 * 3600, 2 * 3600)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("extend by at most 1h (3600s)"), "{msg}");
}

#[test]
fn policies_see_now_and_approvals() {
    let set = PolicySet::compile(vec![source(
        "e",
        r#"package jitsudo.eligibility
allow if {
    input.now == "2025-06-02T09:30:00Z"
    input.now_unix == 1748856600
    count(input.approvals) == 1
    input.approvals[0].subject == "bob"
    input.request.metadata.change == "CHG-1"
}
"#,
    )])
    .unwrap();
    let mut request = demo("viewer", 60);
    request.metadata.insert("change".into(), "CHG-1".into());
    let input = PolicyInput::new(alice(), request, now()).with_approvals(vec![ApprovalInput {
        subject: "bob".into(),
        email: None,
        at: now(),
    }]);
    assert!(set.evaluate(&input).unwrap().eligible);
}

/// The example in docs/policy.md is the contract: it must parse, and serialising it back
/// must give the same document (so every field is named and typed as documented).
#[test]
fn documented_input_example_matches_the_input_document() {
    let doc = include_str!("../../../docs/policy.md");
    let start = doc
        .find("<!-- input-example -->")
        .expect("marker in docs/policy.md");
    let block = &doc[start..];
    let json_start = block.find("```json\n").unwrap() + "```json\n".len();
    let json_end = block[json_start..].find("```").unwrap() + json_start;
    let documented: serde_json::Value = serde_json::from_str(&block[json_start..json_end]).unwrap();
    let input: PolicyInput = serde_json::from_value(documented.clone()).unwrap();
    assert_eq!(serde_json::to_value(&input).unwrap(), documented);
    assert!(input.approver.is_some());
}

#[test]
fn refusals_say_what_to_do() {
    // Each refusal names what was wrong (the values involved) and what to do about it.
    let cases: [(PolicyRefusal, &[&str]); 7] = [
        (
            PolicyRefusal::NotEligible {
                reasons: vec!["role admin is for oncall".into(), "scope prod".into()],
            },
            &[
                "role admin is for oncall; scope prod",
                "request a role you are eligible for",
            ],
        ),
        (
            PolicyRefusal::DurationTooLong {
                requested: 5400,
                max: 3600,
            },
            &[
                "1h30m (5400s)",
                "allows (1h (3600s))",
                "request 1h (3600s) or less",
            ],
        ),
        (
            PolicyRefusal::TotalDurationTooLong {
                granted: 3000,
                requested_total: 4200,
                max_total: 3600,
            },
            &["1h10m (4200s)", "extend by at most 10m (600s)"],
        ),
        (
            PolicyRefusal::ReasonRequired,
            &["requires a reason", "say what you need the access for"],
        ),
        (
            PolicyRefusal::TicketRequired {
                pattern: "^X-[0-9]+$".into(),
            },
            &["requires a ticket", "`^X-[0-9]+$`"],
        ),
        (
            PolicyRefusal::TicketMalformed {
                ticket: "x".into(),
                pattern: "^X-[0-9]+$".into(),
            },
            &[
                "ticket `x`",
                "`^X-[0-9]+$`",
                "give the full ticket reference",
            ],
        ),
        (
            PolicyRefusal::BreakGlassNotAllowed,
            &[
                "break-glass",
                "submit a normal request for approval instead",
            ],
        ),
    ];
    for (refusal, says) in cases {
        let message = refusal.to_string();
        for part in says {
            assert!(message.contains(part), "{message:?} lacks {part:?}");
        }
    }
}

#[test]
fn policy_set_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PolicySet>();

    let set = examples();
    std::thread::scope(|s| {
        for _ in 0..2 {
            let set = set.clone();
            s.spawn(move || {
                for _ in 0..20 {
                    assert!(decide(&set, alice(), demo("viewer", 600)).auto_approve);
                }
            });
        }
    });
}

/// Not a benchmark (no assertion on time): shows that evaluation reuses the compiled set.
#[test]
fn evaluation_does_not_recompile() {
    let started = Instant::now();
    let set = examples();
    let compiled = started.elapsed();
    let input = PolicyInput::new(alice(), demo("admin", 600), now()).with_approver(bob());
    let rounds = 200;
    let started = Instant::now();
    for _ in 0..rounds {
        set.evaluate(&input).unwrap();
        set.approver_allowed(&input).unwrap();
    }
    let per_round = started.elapsed() / rounds;
    println!(
        "compile: {compiled:?}; evaluate + approver_allowed: {per_round:?} per round (debug build)"
    );
}

#[test]
fn runaway_rule_is_stopped_with_an_error() {
    let set = PolicySet::compile(vec![source(
        "slow",
        r#"package jitsudo.eligibility
allow if {
    n := count([1 | some i in numbers.range(1, 5000); some j in numbers.range(1, 5000)])
    n > 0
}
"#,
    )])
    .unwrap();
    let started = Instant::now();
    let err = set
        .evaluate(&PolicyInput::new(alice(), demo("viewer", 60), now()))
        .unwrap_err();
    assert!(
        matches!(&err, PolicyError::Eval { rule, .. } if rule == "jitsudo.eligibility.allow"),
        "{err:?}"
    );
    println!("stopped after {:?}: {err}", started.elapsed());
}
