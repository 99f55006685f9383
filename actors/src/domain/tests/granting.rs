//! §4 rows from APPROVED: the grant intent, grant success (the clock starts at the grant),
//! retryable and permanent failures, exhausted attempts, the grant deadline, cancel and
//! revoke while a grant may be in flight, and outcomes that arrive late or twice.

use jitsudo_providers::ErrorClass;

use crate::domain::{
    Effect, EndingCause, GrantStatus, NoticeKind, Refusal, Rules, Stamp, State, TimerKind,
    outstanding_calls, timers,
};
use crate::policy::Decision;

use super::support::*;

#[test]
fn no_grant_call_is_asked_for_before_the_intent_is_in_the_committed_request() {
    let mut life = Life::pending();
    let tx = life.at(60).step(approve(approver(bob())));
    for effect in &tx.effects {
        if let Effect::CallGrant { grant_id } = effect {
            let g = tx
                .next
                .grant(*grant_id)
                .expect("the intent is in the same commit");
            assert_eq!(g.status, GrantStatus::Intended);
            assert!(
                tx.next.not_after(g).is_some(),
                "not_after is fixed at intent"
            );
        }
    }
    // After a restart the committed request alone says which call is still owed.
    assert_eq!(
        outstanding_calls(&life.req),
        [Effect::CallGrant {
            grant_id: life.primary()
        }]
    );
}

#[test]
fn the_primary_grant_tells_the_provider_an_absolute_not_after() {
    let life = Life::approved();
    let g = life.req.grant(life.primary()).unwrap();
    let deadline = life.req.grant_deadline.unwrap();
    assert_eq!(life.req.not_after(g), Some(deadline + secs(HOUR)));
    let spec = life.req.grant_spec(g).unwrap();
    assert_eq!(spec.grant_id, life.primary());
    assert_eq!(spec.subject, "alice");
    assert_eq!(spec.not_after, deadline + secs(HOUR));
}

#[test]
fn grant_success_activates_with_the_expiry_counted_from_the_grant_not_the_request() {
    let mut life = Life::pending();
    life.at(600).step(approve(approver(bob())));
    let g = life.primary();
    let tx = life.at(800).step(granted(g));
    assert_eq!(life.state(), State::Active);
    assert_eq!(tx.times.granted_at, Some(Stamp::now()));
    assert_eq!(tx.times.expires_at, Some(Stamp::NowPlus(secs(HOUR))));
    assert_eq!(life.req.granted_at, Some(t(800)));
    assert_eq!(life.req.expires_at, Some(t(800 + HOUR)));
    assert_ne!(life.req.expires_at, Some(life.req.created_at + secs(HOUR)));
    let entry = life.req.grant(g).unwrap();
    assert_eq!(entry.status, GrantStatus::Active);
    assert_eq!(entry.provider_ref, format!("ref-{g}"));
    assert_eq!(notice_kinds(&tx), [NoticeKind::Active]);
    assert_eq!(tx.audit.kind, "request.active");
    assert!(tx.effects.is_empty());
    assert_eq!(timers(&life.req), [(TimerKind::Expiry, t(800 + HOUR))]);

    // The database clock of the committing transaction decides, not the node's.
    let mut stored = tx.next.clone();
    stored.apply_times(&tx.times, t(807));
    assert_eq!(stored.granted_at, Some(t(807)));
    assert_eq!(stored.expires_at, Some(t(807 + HOUR)));
}

#[test]
fn break_glass_grant_success_activates_the_request() {
    let life = Life::break_glass_active();
    assert_eq!(life.state(), State::Active);
    assert_eq!(life.req.expires_at, Some(t(30 + HOUR)));
}

#[test]
fn retryable_grant_failure_stays_approved_and_retries_later() {
    for class in [ErrorClass::Retryable, ErrorClass::Unknown] {
        let mut life = Life::approved();
        let g = life.primary();
        let tx = life.at(70).step(grant_failed(g, class));
        assert_eq!(life.state(), State::Approved);
        assert_eq!(
            tx.effects,
            [Effect::RetryGrantLater {
                grant_id: g,
                attempt: 1
            }]
        );
        let entry = life.req.grant(g).unwrap();
        assert_eq!(entry.attempts, 1);
        assert_eq!(entry.status, GrantStatus::Intended);
        assert_eq!(tx.audit.details["attempt"], 1);
        assert_eq!(tx.audit.details["class"], class.as_str());
        let tx = life.at(80).step(grant_failed(g, class));
        assert_eq!(
            tx.effects,
            [Effect::RetryGrantLater {
                grant_id: g,
                attempt: 2
            }]
        );
        assert_eq!(life.req.grant(g).unwrap().attempts, 2);
        // Still owed after a restart.
        assert_eq!(
            outstanding_calls(&life.req),
            [Effect::CallGrant { grant_id: g }]
        );
        // A success after retries activates as usual.
        life.at(90).step(granted(g));
        assert_eq!(life.state(), State::Active);
    }
}

#[test]
fn permanent_grant_failure_ends_failed_and_revokes_the_partial_grant() {
    let mut life = Life::approved();
    let g = life.primary();
    let tx = life.at(70).step(grant_failed(g, ErrorClass::Permanent));
    assert_eq!(life.state(), State::Ending);
    assert_eq!(life.req.ending, Some(EndingCause::Failed));
    assert_eq!(revokes(&tx.effects), [g]);
    assert!(
        life.req
            .end_detail
            .as_deref()
            .unwrap()
            .contains("provider said permanent")
    );
    assert_eq!(
        outstanding_calls(&life.req),
        [Effect::CallRevoke { grant_id: g }]
    );
    assert!(timers(&life.req).is_empty());
    // FAILED only once the provider confirms nothing is left.
    let tx = life.at(80).step(revoked(g));
    assert_eq!(life.state(), State::Failed);
    assert!(notice_kinds(&tx).contains(&NoticeKind::Ended));
}

#[test]
fn grant_failures_up_to_the_maximum_attempts_end_failed() {
    let rules = Rules {
        max_grant_attempts: 3,
        ..Rules::default()
    };
    let (mut life, _) = Life::create_with(decision(), spec(), rules);
    life.at(60).step(approve(approver(bob())));
    let g = life.primary();
    for attempt in 1..=2 {
        let tx = life.step(grant_failed(g, ErrorClass::Retryable));
        assert_eq!(life.state(), State::Approved);
        assert_eq!(
            tx.effects,
            [Effect::RetryGrantLater {
                grant_id: g,
                attempt
            }]
        );
    }
    let tx = life.step(grant_failed(g, ErrorClass::Retryable));
    assert_eq!(life.state(), State::Ending);
    assert_eq!(life.req.ending, Some(EndingCause::Failed));
    assert_eq!(life.req.grant(g).unwrap().attempts, 3);
    assert_eq!(revokes(&tx.effects), [g]);
}

#[test]
fn grant_deadline_timer_ends_failed_and_revokes_what_may_be_in_flight() {
    let mut life = Life::approved();
    let g = life.primary();
    let deadline = life.req.grant_deadline.unwrap();
    let tx = life
        .at_time(deadline)
        .step(crate::domain::Event::GrantDeadline { deadline });
    assert_eq!(life.state(), State::Ending);
    assert_eq!(life.req.ending, Some(EndingCause::Failed));
    assert_eq!(revokes(&tx.effects), [g]);
    assert_eq!(tx.audit.actor, "system");
    life.step(revoked(g));
    assert_eq!(life.state(), State::Failed);
}

#[test]
fn cancel_while_approved_ends_revoked_and_revokes_the_in_flight_grant() {
    let mut life = Life::approved();
    let g = life.primary();
    let tx = life.at(70).step(cancel(alice()));
    assert_eq!(life.state(), State::Ending);
    assert_eq!(life.req.ending, Some(EndingCause::Revoked));
    assert_eq!(revokes(&tx.effects), [g]);
    assert_eq!(tx.audit.details["cancelled"], true);
    life.at(75).step(revoked(g));
    assert_eq!(life.state(), State::Revoked);
}

#[test]
fn cancel_while_approved_by_anyone_but_the_requester_is_refused() {
    let mut life = Life::approved();
    for p in [bob(), mallory_claiming_alices_email()] {
        assert_eq!(life.at(70).refuse(cancel(p)), Refusal::NotRequester);
    }
}

#[test]
fn revoke_while_approved_by_requester_approver_or_admin_ends_revoked() {
    for by in [
        outsider(alice()),
        outsider(alice_second_account()),
        approver(carol()),
        admin(dave()),
    ] {
        let mut life = Life::approved();
        let g = life.primary();
        let who = by.principal.subject.clone();
        let tx = life.at(70).step(revoke(by));
        assert_eq!(life.state(), State::Ending, "{who}");
        assert_eq!(life.req.ending, Some(EndingCause::Revoked));
        assert_eq!(revokes(&tx.effects), [g], "{who}");
        assert_eq!(tx.audit.actor, who);
    }
}

#[test]
fn revoke_while_approved_by_anyone_else_is_refused() {
    let mut life = Life::approved();
    for p in [dave(), mallory_claiming_alices_email()] {
        assert_eq!(
            life.at(70).refuse(revoke(outsider(p))),
            Refusal::NotAllowedToRevoke
        );
    }
}

#[test]
fn grant_outcomes_for_an_unknown_grant_are_refused() {
    let mut life = Life::approved();
    let grant_id = unknown_grant();
    assert_eq!(
        life.at(70).refuse(granted(grant_id)),
        Refusal::UnknownGrant { grant_id }
    );
    assert_eq!(
        life.refuse(grant_failed(grant_id, ErrorClass::Permanent)),
        Refusal::UnknownGrant { grant_id }
    );
}

#[test]
fn a_duplicate_grant_success_is_refused() {
    let mut life = Life::active();
    let g = life.primary();
    assert_eq!(life.at(130).refuse(granted(g)), Refusal::Duplicate);
}

#[test]
fn a_grant_failure_after_the_grant_succeeded_is_a_duplicate() {
    let mut life = Life::active();
    let g = life.primary();
    assert_eq!(
        life.at(130).refuse(grant_failed(g, ErrorClass::Permanent)),
        Refusal::Duplicate
    );
    assert_eq!(life.state(), State::Active);
}

#[test]
fn a_grant_failure_after_the_request_began_ending_is_refused() {
    let mut life = Life::approved();
    let g = life.primary();
    life.at(70).step(cancel(alice()));
    assert_eq!(
        life.refuse(grant_failed(g, ErrorClass::Retryable)),
        Refusal::Duplicate
    );
}

#[test]
fn late_grant_success_while_ending_revokes_again() {
    let mut life = Life::approved();
    let g = life.primary();
    life.at(70).step(cancel(alice()));
    // The grant call was in flight when the revoke was issued; its success arrives now.
    let tx = life.at(71).step(granted(g));
    assert_eq!(life.state(), State::Ending);
    assert_eq!(tx.audit.kind, "grant.late_success");
    assert_eq!(tx.effects, [Effect::CallRevoke { grant_id: g }]);
    assert_eq!(life.req.grant(g).unwrap().status, GrantStatus::Abandoned);
    assert_eq!(
        outstanding_calls(&life.req),
        [Effect::CallRevoke { grant_id: g }]
    );
    life.at(72).step(revoked(g));
    assert_eq!(life.state(), State::Revoked);
}

#[test]
fn a_grant_success_after_its_revoke_was_confirmed_is_refused() {
    // The provider keeps a tombstone of the revoked id, so the late grant did nothing.
    let mut life = Life::approved();
    let g = life.primary();
    life.at(70).step(cancel(alice()));
    life.at(71).step(revoked(g));
    assert_eq!(life.state(), State::Revoked);
    assert_eq!(
        life.refuse(granted(g)),
        Refusal::Terminal {
            state: State::Revoked
        }
    );
}

#[test]
fn auto_approved_request_is_granted_like_any_other() {
    let mut life = Life::pending_with(Decision {
        auto_approve: true,
        ..decision()
    });
    life.at(1).step(crate::domain::Event::AutoApprove);
    let g = life.primary();
    life.at(5).step(granted(g));
    assert_eq!(life.state(), State::Active);
    assert_eq!(life.req.expires_at, Some(t(5 + HOUR)));
}

#[test]
fn grant_success_reported_after_the_grant_deadline_ends_failed_and_revokes_it() {
    let mut life = Life::approved();
    let g = life.primary();
    let deadline = life.req.grant_deadline.unwrap();
    // The provider answered, but only after the deadline (and before its timer fired): the
    // grant's absolute window is already shorter than the approved duration.
    let tx = life.at_time(deadline).step(granted(g));
    assert_eq!(life.state(), State::Ending);
    assert_eq!(life.req.ending, Some(EndingCause::Failed));
    assert!(life.req.granted_at.is_none(), "never active");
    assert_eq!(revokes(&tx.effects), [g]);
    life.step(revoked(g));
    assert_eq!(life.state(), State::Failed);
}
