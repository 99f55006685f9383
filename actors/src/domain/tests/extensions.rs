//! §4 row "ACTIVE → extend approved → ACTIVE": an extension is a child record with its own
//! approvals and its own grant, and moves the expiry only once the provider granted the new
//! window; break-glass requests are not extended and policy caps the total.

use jitsudo_providers::ErrorClass;

use crate::domain::{
    Effect, EndingCause, Event, ExtensionState, GrantPurpose, GrantStatus, Limits, NoticeKind,
    Refusal, Stamp, State, TimerKind, grant_id_for, outstanding_calls, timers,
};
use crate::policy::Decision;

use super::support::*;

/// Granted at `t(120)`: expires at `t(120 + HOUR)`.
const EXPIRES: i64 = 120 + HOUR;

fn no_approval_needed() -> Decision {
    Decision {
        extend_requires_approval: false,
        ..decision()
    }
}

#[test]
fn extension_requested_by_the_requester_awaits_approval_without_touching_the_expiry() {
    let mut life = Life::active();
    let tx = life.at(300).step(extend(alice(), HOUR));
    assert_eq!(life.state(), State::Active);
    assert_eq!(life.req.extensions.len(), 1);
    let e = &life.req.extensions[0];
    assert_eq!((e.number, e.by_seconds), (1, HOUR));
    assert_eq!(e.state, ExtensionState::Pending);
    assert_eq!(e.requested_at, t(300));
    assert_eq!(e.grant_id, None);
    assert_eq!(life.req.expires_at, Some(t(EXPIRES)));
    assert_eq!(tx.times.expires_at, None);
    assert!(tx.effects.is_empty());
    assert_eq!(notice_kinds(&tx), [NoticeKind::ExtensionRequested]);
    assert_eq!(tx.audit.kind, "extension.requested");
}

#[test]
fn extension_requested_by_the_requesters_other_verified_account_is_accepted() {
    let mut life = Life::active();
    life.at(300).step(extend(alice_second_account(), HOUR));
    assert_eq!(life.req.extensions.len(), 1);
}

#[test]
fn extension_requested_by_anyone_but_the_requester_is_refused() {
    let mut life = Life::active();
    for p in [bob(), mallory_claiming_alices_email()] {
        assert_eq!(life.at(300).refuse(extend(p, HOUR)), Refusal::NotRequester);
    }
}

#[test]
fn break_glass_requests_cannot_be_extended() {
    let mut life = Life::break_glass_active();
    assert_eq!(
        life.at(300).refuse(extend(alice(), 60)),
        Refusal::BreakGlassNotExtendable
    );
}

#[test]
fn extension_above_the_policy_total_is_refused() {
    // One hour granted, four hours allowed in total.
    let mut life = Life::active();
    assert_eq!(
        life.at(300).refuse(extend(alice(), 3 * HOUR + 1)),
        Refusal::ExtensionExceedsMaximum {
            total_seconds: 4 * HOUR + 1,
            max_seconds: 4 * HOUR
        }
    );
    life.step(extend(alice(), 3 * HOUR));
    assert_eq!(life.req.extensions[0].state, ExtensionState::Pending);
}

#[test]
fn extensions_already_granted_count_towards_the_total() {
    let mut life = Life::active_with(no_approval_needed());
    life.at(300).step(extend(alice(), 2 * HOUR));
    let ext = life.extension_grant(1);
    life.step(granted(ext));
    assert_eq!(life.req.total_duration_seconds(), 3 * HOUR);
    assert_eq!(
        life.refuse(extend(alice(), HOUR + 1)),
        Refusal::ExtensionExceedsMaximum {
            total_seconds: 4 * HOUR + 1,
            max_seconds: 4 * HOUR
        }
    );
    life.step(extend(alice(), HOUR));
}

#[test]
fn a_non_positive_or_absurd_extension_is_refused() {
    let mut life = Life::active_with(Decision {
        max_total_duration_seconds: i64::MAX,
        ..decision()
    });
    for by in [0, -60, i64::MAX, Limits::MAX_DURATION_SECONDS + 1] {
        assert!(
            matches!(
                life.at(300).refuse(extend(alice(), by)),
                Refusal::Invalid {
                    field: "extension",
                    ..
                }
            ),
            "{by}"
        );
    }
}

#[test]
fn extension_with_an_oversized_reason_is_refused() {
    let mut life = Life::active();
    let ev = Event::RequestExtension {
        by: alice(),
        by_seconds: 60,
        reason: "x".repeat(Limits::REASON + 1),
    };
    assert!(matches!(
        life.at(300).refuse(ev),
        Refusal::Invalid {
            field: "reason",
            ..
        }
    ));
}

#[test]
fn only_one_extension_is_in_progress_at_a_time() {
    let mut life = Life::active();
    life.at(300).step(extend(alice(), 60));
    assert_eq!(
        life.refuse(extend(alice(), 60)),
        Refusal::ExtensionInProgress { number: 1 }
    );
    life.step(approve_extension(1, approver(bob())));
    assert_eq!(life.req.extensions[0].state, ExtensionState::Granting);
    assert_eq!(
        life.refuse(extend(alice(), 60)),
        Refusal::ExtensionInProgress { number: 1 }
    );
    let ext = life.extension_grant(1);
    life.step(granted(ext));
    let tx = life.step(extend(alice(), 60));
    assert_eq!(tx.audit.details["extension"], 2);
}

#[test]
fn extension_approval_needs_a_quorum_of_distinct_people_who_are_never_the_requester() {
    let mut life = Life::active_with(quorum(2));
    let request_approvals = life.req.approvals.clone();
    life.at(300).step(extend(alice(), HOUR));
    assert_eq!(
        life.refuse(approve_extension(1, approver(alice()))),
        Refusal::SelfApproval
    );
    assert_eq!(
        life.refuse(approve_extension(1, approver(alice_second_account()))),
        Refusal::SelfApproval
    );
    assert_eq!(
        life.refuse(approve_extension(1, outsider(dave()))),
        Refusal::NotAnApprover
    );
    let tx = life.step(approve_extension(1, approver(bob())));
    assert_eq!(tx.audit.kind, "extension.approval_recorded");
    assert!(tx.effects.is_empty());
    assert_eq!(life.req.extensions[0].state, ExtensionState::Pending);
    assert_eq!(
        life.refuse(approve_extension(1, approver(bob()))),
        Refusal::AlreadyApproved
    );
    assert_eq!(
        life.refuse(approve_extension(1, approver(bob_second_account()))),
        Refusal::AlreadyApproved
    );

    let tx = life.step(approve_extension(1, approver(carol())));
    assert_eq!(tx.audit.kind, "extension.approved");
    let grant_id = grant_id_for(request_id(), 1);
    assert_eq!(tx.effects, [Effect::CallGrant { grant_id }]);
    let e = &life.req.extensions[0];
    assert_eq!(e.state, ExtensionState::Granting);
    assert_eq!(e.grant_id, Some(grant_id));
    assert_eq!(e.approvals.len(), 2);
    let entry = life.req.grant(grant_id).unwrap();
    assert_eq!(entry.status, GrantStatus::Intended);
    assert_eq!(
        entry.purpose,
        GrantPurpose::Extension {
            extension: 1,
            not_after: t(EXPIRES + HOUR)
        }
    );
    assert_eq!(
        life.req.grant_spec(entry).unwrap().not_after,
        t(EXPIRES + HOUR)
    );
    // The request's own approvals are not the extension's.
    assert_eq!(life.req.approvals, request_approvals);
}

#[test]
fn an_approver_of_the_request_may_approve_its_extension_too() {
    let mut life = Life::active();
    life.at(300).step(extend(alice(), HOUR));
    life.step(approve_extension(1, approver(bob())));
    assert_eq!(life.req.extensions[0].state, ExtensionState::Granting);
}

#[test]
fn extension_takes_effect_only_after_its_grant_succeeded() {
    let mut life = Life::active();
    life.at(300).step(extend(alice(), HOUR));
    let tx = life.step(approve_extension(1, approver(bob())));
    assert_eq!(tx.times.expires_at, None, "approval alone moves nothing");
    assert_eq!(life.req.expires_at, Some(t(EXPIRES)));
    assert_eq!(timers(&life.req), [(TimerKind::Expiry, t(EXPIRES))]);
    let ext = life.extension_grant(1);
    assert_eq!(
        outstanding_calls(&life.req),
        [Effect::CallGrant { grant_id: ext }]
    );

    let tx = life.at(900).step(granted(ext));
    assert_eq!(life.state(), State::Active);
    assert_eq!(tx.audit.kind, "extension.active");
    // The new window is the one the provider granted: old expiry + by, not now + by.
    assert_eq!(tx.times.expires_at, Some(Stamp::At(t(EXPIRES + HOUR))));
    assert_eq!(life.req.expires_at, Some(t(EXPIRES + HOUR)));
    assert_eq!(life.req.extensions[0].state, ExtensionState::Active);
    assert_eq!(life.req.grant(ext).unwrap().status, GrantStatus::Active);
    assert_eq!(notice_kinds(&tx), [NoticeKind::Extended]);
    assert!(tx.effects.is_empty());
    assert_eq!(timers(&life.req), [(TimerKind::Expiry, t(EXPIRES + HOUR))]);
    // The timer armed for the old expiry is now stale.
    assert_eq!(
        life.at(EXPIRES).refuse(Event::Expiry {
            expires_at: t(EXPIRES)
        }),
        Refusal::StaleTimer
    );
}

#[test]
fn extension_without_required_approval_is_granted_at_once() {
    let mut life = Life::active_with(no_approval_needed());
    let tx = life.at(300).step(extend(alice(), HOUR));
    assert_eq!(tx.audit.kind, "extension.approved");
    let ext = life.extension_grant(1);
    assert_eq!(tx.effects, [Effect::CallGrant { grant_id: ext }]);
    assert_eq!(life.req.extensions[0].state, ExtensionState::Granting);
    assert_eq!(life.req.expires_at, Some(t(EXPIRES)));
}

#[test]
fn extension_grant_retryable_failure_retries_and_keeps_the_request_active() {
    let mut life = Life::active_with(no_approval_needed());
    life.at(300).step(extend(alice(), HOUR));
    let ext = life.extension_grant(1);
    let tx = life.step(grant_failed(ext, ErrorClass::Retryable));
    assert_eq!(
        tx.effects,
        [Effect::RetryGrantLater {
            grant_id: ext,
            attempt: 1
        }]
    );
    assert_eq!(life.state(), State::Active);
    assert_eq!(life.req.extensions[0].state, ExtensionState::Granting);
}

#[test]
fn extension_grant_permanent_failure_fails_the_extension_and_revokes_its_grant_while_active() {
    let mut life = Life::active_with(no_approval_needed());
    life.at(300).step(extend(alice(), HOUR));
    let ext = life.extension_grant(1);
    let primary = life.primary();
    let tx = life.at(301).step(grant_failed(ext, ErrorClass::Permanent));
    assert_eq!(life.state(), State::Active);
    assert_eq!(tx.audit.kind, "extension.failed");
    assert_eq!(tx.effects, [Effect::CallRevoke { grant_id: ext }]);
    assert_eq!(notice_kinds(&tx), [NoticeKind::ExtensionFailed]);
    assert_eq!(life.req.extensions[0].state, ExtensionState::Failed);
    assert_eq!(life.req.grant(ext).unwrap().status, GrantStatus::Abandoned);
    assert_eq!(life.req.grant(primary).unwrap().status, GrantStatus::Active);
    assert_eq!(life.req.expires_at, Some(t(EXPIRES)));
    assert_eq!(
        outstanding_calls(&life.req),
        [Effect::CallRevoke { grant_id: ext }]
    );

    let tx = life.at(302).step(revoked(ext));
    assert_eq!(life.state(), State::Active);
    assert_eq!(tx.audit.kind, "grant.revoked");
    assert_eq!(life.req.grant(ext).unwrap().status, GrantStatus::Revoked);
    assert!(outstanding_calls(&life.req).is_empty());
    assert_eq!(life.req.total_duration_seconds(), HOUR);
    // A failed extension does not block the next one.
    life.step(extend(alice(), HOUR));
    assert_eq!(life.req.extensions.len(), 2);
}

#[test]
fn extension_grant_that_exhausts_its_attempts_fails_the_extension_only() {
    let mut life = Life::active_with(no_approval_needed());
    life.rules.max_grant_attempts = 2;
    life.at(300).step(extend(alice(), HOUR));
    let ext = life.extension_grant(1);
    life.step(grant_failed(ext, ErrorClass::Unknown));
    let tx = life.step(grant_failed(ext, ErrorClass::Unknown));
    assert_eq!(life.state(), State::Active);
    assert_eq!(life.req.extensions[0].state, ExtensionState::Failed);
    assert_eq!(tx.effects, [Effect::CallRevoke { grant_id: ext }]);
}

#[test]
fn a_stuck_revoke_of_a_failed_extension_grant_is_cleared_once_it_is_revoked() {
    let mut life = Life::active_with(no_approval_needed());
    life.rules.stuck_after_failures = 2;
    life.at(300).step(extend(alice(), HOUR));
    let ext = life.extension_grant(1);
    life.step(grant_failed(ext, ErrorClass::Permanent));
    life.step(revoke_failed(ext));
    let tx = life.step(revoke_failed(ext));
    assert!(notice_kinds(&tx).contains(&NoticeKind::StuckRevocation));
    assert!(life.req.stuck);
    let tx = life.step(revoked(ext));
    assert_eq!(life.state(), State::Active);
    assert!(!life.req.stuck, "nothing is stuck any more");
    assert_eq!(notice_kinds(&tx), [NoticeKind::StuckCleared]);
}

#[test]
fn a_revoke_failure_while_active_is_refused_for_a_grant_nobody_is_revoking() {
    // Only an abandoned grant is being revoked while ACTIVE; a stray failure report for the
    // live primary grant (or an extension grant still in flight) must not make the actor
    // revoke live access.
    let mut life = Life::active_with(no_approval_needed());
    life.at(300).step(extend(alice(), HOUR));
    let ext = life.extension_grant(1);
    for g in [life.primary(), ext] {
        assert!(
            matches!(
                life.refuse(revoke_failed(g)),
                Refusal::NotAccepted {
                    state: State::Active,
                    ..
                }
            ),
            "{g}"
        );
    }
}

#[test]
fn expiry_while_extension_in_flight_revokes_both_grants() {
    let mut life = Life::active_with(no_approval_needed());
    life.at(300).step(extend(alice(), HOUR));
    let ext = life.extension_grant(1);
    let primary = life.primary();
    let tx = life.at(EXPIRES).step(Event::Expiry {
        expires_at: t(EXPIRES),
    });
    assert_eq!(life.state(), State::Ending);
    assert_eq!(life.req.ending, Some(EndingCause::Expired));
    assert_eq!(
        tx.effects,
        [
            Effect::CallRevoke { grant_id: primary },
            Effect::CallRevoke { grant_id: ext }
        ]
    );
    assert_eq!(life.req.extensions[0].state, ExtensionState::Abandoned);

    // The extension's grant call was in flight: its success now changes no expiry.
    let tx = life.step(granted(ext));
    assert_eq!(tx.effects, [Effect::CallRevoke { grant_id: ext }]);
    assert_eq!(life.req.expires_at, Some(t(EXPIRES)));
    assert_eq!(life.req.extensions[0].state, ExtensionState::Abandoned);

    life.step(revoked(primary));
    assert_eq!(life.state(), State::Ending);
    life.step(revoked(ext));
    assert_eq!(life.state(), State::Expired);
}

#[test]
fn revoke_while_an_extension_awaits_approval_abandons_it() {
    let mut life = Life::active();
    life.at(300).step(extend(alice(), HOUR));
    let tx = life.step(revoke(approver(bob())));
    assert_eq!(
        tx.effects,
        [Effect::CallRevoke {
            grant_id: life.primary()
        }]
    );
    assert_eq!(life.req.extensions[0].state, ExtensionState::Abandoned);
    assert_eq!(
        life.refuse(approve_extension(1, approver(carol()))),
        Refusal::NotAccepted {
            state: State::Ending,
            event: "approve_extension"
        }
    );
}

#[test]
fn deny_extension_rejects_it_and_leaves_the_request_active() {
    let mut life = Life::active();
    life.at(300).step(extend(alice(), HOUR));
    assert_eq!(
        life.refuse(deny_extension(1, approver(alice()))),
        Refusal::SelfApproval
    );
    assert_eq!(
        life.refuse(deny_extension(1, outsider(dave()))),
        Refusal::NotAnApprover
    );
    let tx = life.step(deny_extension(1, approver(bob())));
    assert_eq!(life.state(), State::Active);
    assert_eq!(tx.audit.kind, "extension.denied");
    assert_eq!(notice_kinds(&tx), [NoticeKind::ExtensionDenied]);
    assert_eq!(life.req.extensions[0].state, ExtensionState::Rejected);
    assert_eq!(life.req.expires_at, Some(t(EXPIRES)));
    assert!(tx.effects.is_empty());
    // A denied extension does not block the next request.
    life.step(extend(alice(), 60));
}

#[test]
fn decisions_on_an_unknown_or_settled_extension_are_refused() {
    let mut life = Life::active();
    assert_eq!(
        life.at(300).refuse(approve_extension(1, approver(bob()))),
        Refusal::UnknownExtension { number: 1 }
    );
    life.step(extend(alice(), 60));
    life.step(approve_extension(1, approver(bob())));
    assert_eq!(
        life.refuse(approve_extension(1, approver(carol()))),
        Refusal::UnknownExtension { number: 1 }
    );
    assert_eq!(
        life.refuse(deny_extension(1, approver(carol()))),
        Refusal::UnknownExtension { number: 1 }
    );
    assert_eq!(
        life.refuse(deny_extension(7, approver(carol()))),
        Refusal::UnknownExtension { number: 7 }
    );
}

#[test]
fn extension_events_before_the_request_is_active_are_not_accepted() {
    let mut pending = Life::pending();
    assert!(matches!(
        pending.at(30).refuse(extend(alice(), 60)),
        Refusal::NotAccepted {
            state: State::Pending,
            ..
        }
    ));
    let mut approved = Life::approved();
    assert!(matches!(
        approved.at(70).refuse(extend(alice(), 60)),
        Refusal::NotAccepted {
            state: State::Approved,
            ..
        }
    ));
}
