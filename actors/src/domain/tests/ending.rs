//! §4 rows into and out of ENDING: expiry, revoke while ACTIVE, confirmation of every grant
//! (by revoke or by `inspect` after a native expiry), and revoke failures with the stuck alert.

use crate::domain::{
    Effect, EndingCause, Event, GrantStatus, NoticeKind, Refusal, Rules, Stamp, State,
    outstanding_calls, timers,
};

use super::support::*;

fn expire(life: &mut Life) -> crate::domain::Transition {
    let expires_at = life.req.expires_at.unwrap();
    life.at_time(expires_at).step(Event::Expiry { expires_at })
}

#[test]
fn expiry_timer_ends_expired_and_revokes_the_grant() {
    let mut life = Life::active();
    let g = life.primary();
    let tx = expire(&mut life);
    assert_eq!(life.state(), State::Ending);
    assert_eq!(life.req.ending, Some(EndingCause::Expired));
    assert_eq!(tx.effects, [Effect::CallRevoke { grant_id: g }]);
    assert_eq!(tx.audit.kind, "request.ending");
    assert_eq!(tx.audit.actor, "system");
    assert_eq!(
        life.req.ended_at, None,
        "not ended before the provider confirms"
    );
    assert!(timers(&life.req).is_empty());
    assert_eq!(
        outstanding_calls(&life.req),
        [Effect::CallRevoke { grant_id: g }]
    );
}

#[test]
fn an_overdue_expiry_fires_late_and_still_ends_expired() {
    let mut life = Life::active();
    let expires_at = life.req.expires_at.unwrap();
    life.at_time(expires_at + secs(600))
        .step(Event::Expiry { expires_at });
    assert_eq!(life.req.ending, Some(EndingCause::Expired));
}

#[test]
fn revoke_while_active_by_requester_approver_or_admin_ends_revoked() {
    for by in [
        outsider(alice()),
        outsider(alice_second_account()),
        approver(carol()),
        admin(dave()),
    ] {
        let mut life = Life::active();
        let g = life.primary();
        let who = by.principal.subject.clone();
        let tx = life.at(200).step(revoke(by));
        assert_eq!(life.state(), State::Ending, "{who}");
        assert_eq!(life.req.ending, Some(EndingCause::Revoked));
        assert_eq!(tx.effects, [Effect::CallRevoke { grant_id: g }]);
        assert_eq!(tx.audit.actor, who);
        assert_eq!(tx.audit.details["reason"], "done");
        assert!(life.req.end_detail.as_deref().unwrap().contains(&who));
    }
}

#[test]
fn revoke_while_active_by_anyone_else_is_refused() {
    let mut life = Life::active();
    for p in [dave(), mallory_claiming_alices_email()] {
        assert_eq!(
            life.at(200).refuse(revoke(outsider(p))),
            Refusal::NotAllowedToRevoke
        );
    }
}

#[test]
fn revoke_with_an_oversized_reason_is_refused() {
    let mut life = Life::active();
    let ev = Event::Revoke {
        by: admin(dave()),
        reason: "x".repeat(crate::domain::Limits::REASON + 1),
    };
    assert!(matches!(
        life.at(200).refuse(ev),
        Refusal::Invalid {
            field: "reason",
            ..
        }
    ));
}

#[test]
fn cancel_while_active_is_not_accepted() {
    let mut life = Life::active();
    assert!(matches!(
        life.at(200).refuse(cancel(alice())),
        Refusal::NotAccepted {
            state: State::Active,
            event: "cancel"
        }
    ));
}

#[test]
fn revoke_or_cancel_while_ending_is_refused() {
    let mut life = Life::active();
    life.at(200).step(revoke(admin(dave())));
    assert_eq!(life.refuse(revoke(admin(dave()))), Refusal::AlreadyEnding);
    assert_eq!(life.refuse(cancel(alice())), Refusal::AlreadyEnding);
}

#[test]
fn confirmed_revoke_ends_in_the_state_the_cause_names() {
    type Begin = fn(&mut Life);
    let cases: [(&str, Begin, State); 3] = [
        (
            "expired",
            |l| {
                expire(l);
            },
            State::Expired,
        ),
        (
            "revoked",
            |l| {
                l.at(200).step(revoke(approver(bob())));
            },
            State::Revoked,
        ),
        (
            "failed",
            |l| {
                let g = l.primary();
                l.at(200)
                    .step(grant_failed(g, jitsudo_providers::ErrorClass::Permanent));
            },
            State::Failed,
        ),
    ];
    for (name, begin, terminal) in cases {
        let mut life = if terminal == State::Failed {
            Life::approved()
        } else {
            Life::active()
        };
        begin(&mut life);
        assert_eq!(life.state(), State::Ending, "{name}");
        let g = life.primary();
        let ending_at = life.now + secs(5);
        let tx = life.at_time(ending_at).step(revoked(g));
        assert_eq!(life.state(), terminal, "{name}");
        assert_eq!(life.req.ended_at, Some(ending_at));
        assert_eq!(tx.times.ended_at, Some(Stamp::now()));
        assert_eq!(tx.audit.kind, "request.ended");
        assert_eq!(tx.audit.details["to"], terminal.as_str());
        let entry = life.req.grant(g).unwrap();
        assert_eq!(entry.status, GrantStatus::Revoked);
        assert_eq!(entry.evidence.as_deref(), Some("revoke"));
        let ended = tx
            .notices
            .iter()
            .find(|n| n.kind == NoticeKind::Ended)
            .expect("an ended notice");
        assert_eq!(ended.details["state"], terminal.as_str());
        assert!(tx.effects.is_empty());
    }
}

#[test]
fn a_request_with_an_extension_grant_ends_only_when_both_grants_are_revoked() {
    let mut life = Life::active();
    life.at(300).step(extend(alice(), HOUR));
    life.step(approve_extension(1, approver(bob())));
    let ext = life.extension_grant(1);
    life.at(310).step(granted(ext));
    let primary = life.primary();

    let tx = life.at(400).step(revoke(outsider(alice())));
    let mut asked = revokes(&tx.effects);
    asked.sort();
    let mut both = vec![primary, ext];
    both.sort();
    assert_eq!(asked, both, "every grant of the request is revoked");

    let tx = life.at(401).step(revoked(ext));
    assert_eq!(life.state(), State::Ending, "one grant is still there");
    assert_eq!(tx.audit.kind, "grant.revoked");
    assert_eq!(life.req.ended_at, None);
    assert_eq!(
        outstanding_calls(&life.req),
        [Effect::CallRevoke { grant_id: primary }]
    );
    assert_eq!(life.refuse(revoked(ext)), Refusal::Duplicate);

    life.at(402).step(revoked(primary));
    assert_eq!(life.state(), State::Revoked);
    assert!(
        life.req
            .grants
            .iter()
            .all(|g| g.status == GrantStatus::Revoked)
    );
}

#[test]
fn a_grant_the_provider_expired_natively_is_recorded_with_its_evidence() {
    let mut life = Life::active();
    let g = life.primary();
    expire(&mut life);
    let tx = life.step(Event::GoneAtProvider {
        grant_id: g,
        evidence: "inspect: gone (not_after passed at the provider)".into(),
    });
    assert_eq!(life.state(), State::Expired);
    let entry = life.req.grant(g).unwrap();
    assert_eq!(entry.status, GrantStatus::Revoked);
    assert_eq!(
        entry.evidence.as_deref(),
        Some("inspect: gone (not_after passed at the provider)")
    );
    assert_eq!(
        tx.audit.details["evidence"],
        "inspect: gone (not_after passed at the provider)"
    );
}

#[test]
fn a_grant_gone_at_the_provider_while_active_is_not_accepted() {
    let mut life = Life::active();
    let g = life.primary();
    assert!(matches!(
        life.at(200).refuse(Event::GoneAtProvider {
            grant_id: g,
            evidence: "inspect: gone".into()
        }),
        Refusal::NotAccepted {
            state: State::Active,
            ..
        }
    ));
    assert!(matches!(
        life.refuse(revoked(g)),
        Refusal::NotAccepted {
            state: State::Active,
            ..
        }
    ));
}

#[test]
fn revoke_outcomes_for_an_unknown_grant_are_refused() {
    let mut life = Life::active();
    expire(&mut life);
    let grant_id = unknown_grant();
    for ev in [
        revoked(grant_id),
        revoke_failed(grant_id),
        Event::GoneAtProvider {
            grant_id,
            evidence: "gone".into(),
        },
    ] {
        assert_eq!(life.refuse(ev), Refusal::UnknownGrant { grant_id });
    }
}

#[test]
fn revoke_failure_keeps_ending_and_retries_later() {
    let mut life = Life::active();
    let g = life.primary();
    expire(&mut life);
    let tx = life.step(revoke_failed(g));
    assert_eq!(life.state(), State::Ending);
    assert_eq!(
        tx.effects,
        [Effect::RetryRevokeLater {
            grant_id: g,
            attempt: 1
        }]
    );
    assert_eq!(life.req.revoke_failures, 1);
    assert_eq!(tx.audit.kind, "grant.revoke_failed");
    assert!(!life.req.stuck);
    assert_eq!(
        outstanding_calls(&life.req),
        [Effect::CallRevoke { grant_id: g }]
    );
}

#[test]
fn the_stuck_alert_is_raised_once_at_the_threshold_and_cleared_when_the_request_ends() {
    let rules = Rules {
        stuck_after_failures: 3,
        ..Rules::default()
    };
    let (mut life, _) = Life::create_with(decision(), spec(), rules);
    life.at(60).step(approve(approver(bob())));
    let g = life.primary();
    life.at(120).step(granted(g));
    expire(&mut life);

    let mut alerts = 0;
    for failure in 1..=10u32 {
        let tx = life.step(revoke_failed(g));
        assert_eq!(life.state(), State::Ending, "retries forever");
        assert_eq!(
            tx.effects,
            [Effect::RetryRevokeLater {
                grant_id: g,
                attempt: failure
            }]
        );
        let raised = notice_kinds(&tx).contains(&NoticeKind::StuckRevocation);
        assert_eq!(raised, failure == 3, "failure {failure}");
        if raised {
            assert_eq!(tx.audit.kind, "alert.revocation_stuck");
            alerts += 1;
        }
        assert_eq!(life.req.stuck, failure >= 3);
    }
    assert_eq!(alerts, 1, "raised exactly once");

    let tx = life.step(revoked(g));
    assert_eq!(life.state(), State::Expired);
    assert!(!life.req.stuck);
    assert_eq!(
        notice_kinds(&tx),
        [NoticeKind::StuckCleared, NoticeKind::Ended]
    );
}

#[test]
fn a_request_that_was_never_stuck_ends_without_a_cleared_alert() {
    let mut life = Life::active();
    let g = life.primary();
    expire(&mut life);
    life.step(revoke_failed(g));
    let tx = life.step(revoked(g));
    assert_eq!(notice_kinds(&tx), [NoticeKind::Ended]);
}

#[test]
fn a_revoke_failure_after_the_grant_was_confirmed_gone_is_a_duplicate() {
    let mut life = Life::active();
    life.at(300).step(extend(alice(), HOUR));
    life.step(approve_extension(1, approver(bob())));
    let ext = life.extension_grant(1);
    life.at(310).step(granted(ext));
    expire(&mut life);
    life.step(revoked(ext));
    assert_eq!(life.refuse(revoke_failed(ext)), Refusal::Duplicate);
}
