//! §4 rows "— → PENDING", "PENDING → APPROVED (auto-approve)" and "— → APPROVED (break-glass)",
//! and every refusal of `create`: input limits first, then the stored policy decision.

use crate::domain::{
    Approval, Effect, Event, GrantPurpose, GrantStatus, Limits, NewRequest, NoticeKind, Refusal,
    RequestSpec, RequesterLoad, Rules, Stamp, State, TimerKind, create, grant_id_for,
    outstanding_calls, timers,
};
use crate::policy::{Decision, PolicyRefusal, PolicyStamp};

use super::support::*;

fn try_create(decision: Decision, spec: RequestSpec) -> Result<(), Refusal> {
    let new = NewRequest {
        id: request_id(),
        requester: alice(),
        spec,
    };
    create(
        new,
        decision,
        t(0),
        &Rules::default(),
        &RequesterLoad::default(),
    )
    .map(|tx| check_transition(None, &tx, t(0)))
}

/// A decision that lets every limit of the hard input checks be reached.
fn permissive() -> Decision {
    Decision {
        max_duration_seconds: Limits::MAX_DURATION_SECONDS,
        max_total_duration_seconds: Limits::MAX_DURATION_SECONDS,
        ..decision()
    }
}

#[test]
fn create_makes_a_pending_request_with_the_decision_and_an_approval_deadline() {
    let (life, tx) = Life::create(decision(), spec());
    let req = &life.req;
    assert_eq!(req.state, State::Pending);
    assert_eq!(req.version, 0);
    assert_eq!(
        req.decision,
        decision(),
        "the decision is stored with the request"
    );
    assert_eq!(req.requester, alice());
    assert_eq!(req.created_at, t(0));
    assert_eq!(req.approval_deadline, Some(t(HOUR)));
    assert_eq!(tx.times.created_at, Some(Stamp::now()));
    assert_eq!(tx.times.approval_deadline, Some(Stamp::NowPlus(secs(HOUR))));
    assert!(req.grants.is_empty() && req.approvals.is_empty());
    assert!(tx.effects.is_empty(), "nothing to call before a decision");
    assert_eq!(
        notice_kinds(&tx),
        [NoticeKind::Created, NoticeKind::ApprovalNeeded]
    );
    assert_eq!(tx.audit.kind, "request.created");
    assert_eq!(tx.audit.actor, "alice");
    assert_eq!(tx.audit.details["policy_version"], "sha256:policy-v1");
    assert_eq!(
        timers(req),
        [(TimerKind::ApprovalDeadline, t(HOUR))],
        "the approval deadline is armed"
    );
    assert!(outstanding_calls(req).is_empty());
}

#[test]
fn approval_deadline_comes_from_the_policy_and_is_at_least_one_second() {
    let (life, _) = Life::create(
        Decision {
            approval_timeout_seconds: 90,
            ..decision()
        },
        spec(),
    );
    assert_eq!(life.req.approval_deadline, Some(t(90)));
    let (life, tx) = Life::create(
        Decision {
            approval_timeout_seconds: 0,
            ..decision()
        },
        spec(),
    );
    assert_eq!(life.req.approval_deadline, Some(t(1)));
    assert_eq!(tx.times.approval_deadline, Some(Stamp::NowPlus(secs(1))));
}

#[test]
fn create_with_auto_approve_asks_for_the_auto_approval_as_a_follow_up() {
    let (life, tx) = Life::create(
        Decision {
            auto_approve: true,
            ..decision()
        },
        spec(),
    );
    assert_eq!(life.state(), State::Pending);
    assert_eq!(tx.effects, [Effect::Followup(Event::AutoApprove)]);
    assert!(
        !notice_kinds(&tx).contains(&NoticeKind::ApprovalNeeded),
        "nobody needs to be asked"
    );
    assert_eq!(tx.audit.details["auto_approve"], true);
}

#[test]
fn auto_approval_by_a_policy_the_requester_wrote_raises_the_self_benefit_alert() {
    let stamp = |author: &str| PolicyStamp {
        name: "approval".into(),
        version: 3,
        author: author.into(),
        author_email: None,
        self_authored: false,
    };
    let (_, tx) = Life::create(
        Decision {
            auto_approve: true,
            policies: vec![stamp("alice")],
            ..decision()
        },
        spec(),
    );
    assert!(notice_kinds(&tx).contains(&NoticeKind::SelfBenefit));
    assert_eq!(tx.audit.details["self_benefit"], true);
    assert_eq!(tx.audit.details["review_required"], true);
    assert_eq!(tx.audit.details["policies"][0]["author"], "alice");
    let alert = tx
        .notices
        .iter()
        .find(|n| n.kind == NoticeKind::SelfBenefit)
        .expect("the alert");
    assert_eq!(alert.details["policies"], serde_json::json!(["approval@3"]));

    // Somebody else's policy, or no auto-approval: no alert.
    for (auto_approve, author) in [(true, "carol"), (false, "alice")] {
        let (_, tx) = Life::create(
            Decision {
                auto_approve,
                policies: vec![stamp(author)],
                ..decision()
            },
            spec(),
        );
        assert!(!notice_kinds(&tx).contains(&NoticeKind::SelfBenefit));
        assert_eq!(tx.audit.details["self_benefit"], false);
        assert_eq!(tx.audit.details["review_required"], false);
    }
}

#[test]
fn self_benefit_is_judged_by_the_same_person_rule() {
    let stamp = |author: &str, email: Option<&str>| PolicyStamp {
        name: "approval".into(),
        version: 4,
        author: author.into(),
        author_email: email.map(str::to_owned),
        self_authored: false,
    };
    let auto = |p: PolicyStamp| Decision {
        auto_approve: true,
        policies: vec![p],
        ..decision()
    };
    // Alice's second login (the same verified email) wrote the policy that approves her.
    let (life, tx) = Life::create(
        auto(stamp("alice-admin", Some("alice@example.com"))),
        spec(),
    );
    assert!(notice_kinds(&tx).contains(&NoticeKind::SelfBenefit));
    assert_eq!(tx.audit.details["review_required"], true);
    assert!(life.req.decision.policies[0].self_authored);
    assert_eq!(
        life.req.review_reason(),
        Some("auto-approved by a policy its requester wrote")
    );

    // A login configured as hers (a link), without any email.
    let linked = PolicyStamp {
        author: "alice-ops".into(),
        ..stamp("x", None)
    };
    let mut req = alice();
    req.links = vec!["alice-ops".into()];
    let new = NewRequest {
        id: request_id(),
        requester: req,
        spec: spec(),
    };
    let tx = create(
        new,
        auto(linked),
        t(0),
        &Rules::default(),
        &RequesterLoad::default(),
    )
    .expect("created");
    assert!(notice_kinds(&tx).contains(&NoticeKind::SelfBenefit));

    // An author whose email is not verified (none stored), or someone else's: no alert.
    for p in [
        stamp("alice-admin", None),
        stamp("carol", Some("carol@example.com")),
    ] {
        let (life, tx) = Life::create(auto(p), spec());
        assert!(!notice_kinds(&tx).contains(&NoticeKind::SelfBenefit));
        assert_eq!(life.req.review_reason(), None);
    }
}

#[test]
fn break_glass_is_approved_with_a_grant_intent_and_the_alert_in_the_same_transition() {
    let (life, tx) = Life::create(decision(), break_glass_spec());
    let req = &life.req;
    let grant_id = grant_id_for(request_id(), 0);
    assert_eq!(req.state, State::Approved);
    assert_eq!(req.grants.len(), 1);
    assert_eq!(req.grants[0].grant_id, grant_id);
    assert_eq!(req.grants[0].purpose, GrantPurpose::Primary);
    assert_eq!(req.grants[0].status, GrantStatus::Intended);
    assert_eq!(
        req.grant_deadline,
        Some(t(0) + Rules::default().grant_timeout)
    );
    assert_eq!(
        tx.times.grant_deadline,
        Some(Stamp::NowPlus(Rules::default().grant_timeout))
    );
    assert_eq!(req.approval_deadline, None, "nothing left to decide");
    // The alert is an outbox row of the very commit that records the intent: it is enqueued
    // before the actor can make any grant call.
    assert!(notice_kinds(&tx).contains(&NoticeKind::BreakGlass));
    assert_eq!(tx.audit.details["review_required"], true);
    assert_eq!(tx.effects, [Effect::CallGrant { grant_id }]);
    assert_eq!(
        req.approvals,
        [Approval {
            by: alice().person(),
            kind: "break_glass".into(),
            comment: "production is down".into(),
            at: t(0),
        }]
    );
    assert_eq!(tx.audit.kind, "request.created_break_glass");
    assert_eq!(tx.audit.details["to"], "APPROVED");
    assert_eq!(
        timers(req),
        [(
            TimerKind::GrantDeadline,
            t(0) + Rules::default().grant_timeout
        )]
    );
    assert_eq!(outstanding_calls(req), [Effect::CallGrant { grant_id }]);
}

#[test]
fn break_glass_without_a_reason_is_refused_even_where_policy_does_not_require_reasons() {
    for reason in ["", "   \t"] {
        let spec = RequestSpec {
            reason: reason.into(),
            ..break_glass_spec()
        };
        let refusal = try_create(
            Decision {
                reason_required: false,
                ..decision()
            },
            spec,
        )
        .unwrap_err();
        // Tabs are control characters: the input check refuses them before the policy does.
        assert!(
            matches!(
                refusal,
                Refusal::Policy(PolicyRefusal::ReasonRequired)
                    | Refusal::Invalid {
                        field: "reason",
                        ..
                    }
            ),
            "{reason:?}: {refusal:?}"
        );
    }
    assert_eq!(
        try_create(
            decision(),
            RequestSpec {
                reason: "  ".into(),
                ..break_glass_spec()
            }
        ),
        Err(Refusal::Policy(PolicyRefusal::ReasonRequired))
    );
}

#[test]
fn break_glass_where_policy_does_not_permit_it_is_refused() {
    let d = Decision {
        break_glass_allowed: false,
        ..decision()
    };
    assert_eq!(
        try_create(d, break_glass_spec()),
        Err(Refusal::Policy(PolicyRefusal::BreakGlassNotAllowed))
    );
}

#[test]
fn create_refuses_what_the_policy_decision_refuses() {
    let ticketed = Decision {
        ticket_pattern: Some("OPS-[0-9]+".into()),
        ..decision()
    };
    let cases: Vec<(&str, Decision, RequestSpec, PolicyRefusal)> = vec![
        (
            "not eligible",
            Decision {
                eligible: false,
                deny_reasons: vec!["contractors may not assume admin".into()],
                ..decision()
            },
            spec(),
            PolicyRefusal::NotEligible {
                reasons: vec!["contractors may not assume admin".into()],
            },
        ),
        (
            "longer than the policy allows",
            decision(),
            RequestSpec {
                duration_seconds: 2 * HOUR + 1,
                ..spec()
            },
            PolicyRefusal::DurationTooLong {
                requested: 2 * HOUR + 1,
                max: 2 * HOUR,
            },
        ),
        (
            "reason required",
            Decision {
                reason_required: true,
                ..decision()
            },
            RequestSpec {
                reason: String::new(),
                ..spec()
            },
            PolicyRefusal::ReasonRequired,
        ),
        (
            "ticket missing",
            ticketed.clone(),
            spec(),
            PolicyRefusal::TicketRequired {
                pattern: "OPS-[0-9]+".into(),
            },
        ),
        (
            "ticket malformed",
            ticketed.clone(),
            RequestSpec {
                ticket: Some("OPS-12x".into()),
                ..spec()
            },
            PolicyRefusal::TicketMalformed {
                ticket: "OPS-12x".into(),
                pattern: "OPS-[0-9]+".into(),
            },
        ),
        (
            "break-glass not permitted",
            Decision {
                break_glass_allowed: false,
                ..decision()
            },
            break_glass_spec(),
            PolicyRefusal::BreakGlassNotAllowed,
        ),
    ];
    for (name, d, s, want) in cases {
        assert_eq!(try_create(d, s), Err(Refusal::Policy(want)), "{name}");
    }
    let ok = RequestSpec {
        ticket: Some("OPS-1234".into()),
        ..spec()
    };
    assert_eq!(try_create(ticketed, ok), Ok(()), "a matching ticket passes");
    let at_max = RequestSpec {
        duration_seconds: 2 * HOUR,
        ..spec()
    };
    assert_eq!(try_create(decision(), at_max), Ok(()));
}

#[test]
fn create_refuses_input_outside_the_limits() {
    let long = |n: usize| "x".repeat(n);
    type Change = Box<dyn Fn(&mut RequestSpec)>;
    let cases: Vec<(&str, &str, Change)> = vec![
        (
            "empty provider",
            "provider",
            Box::new(|s| s.provider = String::new()),
        ),
        (
            "blank provider",
            "provider",
            Box::new(|s| s.provider = "  ".into()),
        ),
        (
            "oversized provider",
            "provider",
            Box::new(move |s| s.provider = long(Limits::PROVIDER + 1)),
        ),
        (
            "control character in provider",
            "provider",
            Box::new(|s| s.provider = "aws\n".into()),
        ),
        ("empty role", "role", Box::new(|s| s.role = String::new())),
        (
            "oversized role",
            "role",
            Box::new(move |s| s.role = long(Limits::ROLE + 1)),
        ),
        (
            "empty scope",
            "scope",
            Box::new(|s| s.scope = String::new()),
        ),
        (
            "oversized scope",
            "scope",
            Box::new(move |s| s.scope = long(Limits::SCOPE + 1)),
        ),
        (
            "oversized reason",
            "reason",
            Box::new(move |s| s.reason = long(Limits::REASON + 1)),
        ),
        (
            "control character in reason",
            "reason",
            Box::new(|s| s.reason = "why\u{7}".into()),
        ),
        (
            "empty ticket given",
            "ticket",
            Box::new(|s| s.ticket = Some(String::new())),
        ),
        (
            "oversized ticket",
            "ticket",
            Box::new(move |s| s.ticket = Some(long(Limits::TICKET + 1))),
        ),
        (
            "zero duration",
            "duration",
            Box::new(|s| s.duration_seconds = 0),
        ),
        (
            "negative duration",
            "duration",
            Box::new(|s| s.duration_seconds = -60),
        ),
        (
            "duration above the hard limit",
            "duration",
            Box::new(|s| s.duration_seconds = Limits::MAX_DURATION_SECONDS + 1),
        ),
        (
            "absurd duration",
            "duration",
            Box::new(|s| s.duration_seconds = i64::MAX),
        ),
        (
            "too many metadata entries",
            "metadata",
            Box::new(|s| {
                s.metadata = (0..=Limits::METADATA_ENTRIES)
                    .map(|i| (format!("k{i}"), "v".into()))
                    .collect()
            }),
        ),
        (
            "empty metadata key",
            "metadata key",
            Box::new(|s| {
                s.metadata.insert(String::new(), "v".into());
            }),
        ),
        (
            "oversized metadata key",
            "metadata key",
            Box::new(move |s| {
                s.metadata
                    .insert(long(Limits::METADATA_KEY + 1), "v".into());
            }),
        ),
        (
            "oversized metadata value",
            "metadata value",
            Box::new(move |s| {
                s.metadata
                    .insert("k".into(), long(Limits::METADATA_VALUE + 1));
            }),
        ),
    ];
    for (name, field, change) in cases {
        let mut s = spec();
        change(&mut s);
        match try_create(permissive(), s) {
            Err(Refusal::Invalid { field: f, .. }) => assert_eq!(f, field, "{name}"),
            other => panic!("{name}: expected an invalid {field}, got {other:?}"),
        }
    }
}

#[test]
fn input_exactly_at_the_limits_is_accepted() {
    let long = |n: usize| "x".repeat(n);
    let s = RequestSpec {
        provider: long(Limits::PROVIDER),
        role: long(Limits::ROLE),
        scope: long(Limits::SCOPE),
        reason: long(Limits::REASON),
        ticket: Some(long(Limits::TICKET)),
        duration_seconds: Limits::MAX_DURATION_SECONDS,
        metadata: (0..Limits::METADATA_ENTRIES)
            .map(|i| {
                (
                    format!("{i:0>width$}", width = Limits::METADATA_KEY),
                    long(Limits::METADATA_VALUE),
                )
            })
            .collect(),
        ..spec()
    };
    assert_eq!(try_create(permissive(), s), Ok(()));
}

#[test]
fn input_limits_are_checked_before_the_policy() {
    let s = RequestSpec {
        provider: String::new(),
        ..spec()
    };
    let not_eligible = Decision {
        eligible: false,
        deny_reasons: vec!["no".into()],
        ..decision()
    };
    assert!(matches!(
        try_create(not_eligible, s),
        Err(Refusal::Invalid {
            field: "provider",
            ..
        })
    ));
}

#[test]
fn an_absurd_approval_timeout_from_policy_does_not_panic() {
    // The policy engine accepts any positive number of seconds; creating must not panic on
    // a value chrono cannot represent.
    let d = Decision {
        approval_timeout_seconds: i64::MAX,
        ..decision()
    };
    let new = NewRequest {
        id: request_id(),
        requester: alice(),
        spec: spec(),
    };
    let tx = create(new, d, t(0), &Rules::default(), &RequesterLoad::default()).expect("accepted");
    assert!(tx.next.approval_deadline.expect("a deadline") > t(0));
}
