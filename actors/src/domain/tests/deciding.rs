//! §4 rows from PENDING: approve (quorum of distinct people, never the requester, before the
//! approval deadline), auto-approve, deny and cancel, with every refusal.

use crate::domain::{
    Effect, Event, GrantPurpose, GrantStatus, Guard, Limits, NoticeKind, PersonRef, Refusal, Stamp,
    State, TimerKind, grant_id_for, same_person, timers,
};
use crate::policy::Decision;

use super::support::*;

#[test]
fn approve_by_an_allowed_approver_meets_a_quorum_of_one_and_commits_the_grant_intent() {
    let mut life = Life::pending();
    let tx = life.at(60).step(approve(approver(bob())));
    let grant_id = grant_id_for(request_id(), 0);
    assert_eq!(life.state(), State::Approved);
    assert_eq!(life.req.approvals.len(), 1);
    assert_eq!(life.req.approvals[0].by, bob().person());
    assert_eq!(life.req.approvals[0].kind, "approver");
    assert_eq!(life.req.approvals[0].at, t(60));
    assert_eq!(life.req.grants.len(), 1);
    assert_eq!(life.req.grants[0].grant_id, grant_id);
    assert_eq!(life.req.grants[0].purpose, GrantPurpose::Primary);
    assert_eq!(life.req.grants[0].status, GrantStatus::Intended);
    assert_eq!(
        life.req.grant_deadline,
        Some(t(60) + life.rules.grant_timeout)
    );
    assert_eq!(
        tx.times.grant_deadline,
        Some(Stamp::NowPlus(life.rules.grant_timeout))
    );
    assert_eq!(tx.effects, [Effect::CallGrant { grant_id }]);
    assert_eq!(tx.guard, Some(Guard::BeforeApprovalDeadline));
    assert_eq!(notice_kinds(&tx), [NoticeKind::Approved]);
    assert_eq!(tx.audit.kind, "request.approved");
    assert_eq!(tx.audit.actor, "bob");
    assert_eq!(
        timers(&life.req),
        [(TimerKind::GrantDeadline, t(60) + life.rules.grant_timeout)]
    );
}

#[test]
fn first_of_two_required_approvals_is_recorded_and_the_request_stays_pending() {
    let mut life = Life::pending_with(quorum(2));
    let tx = life.at(60).step(approve(approver(bob())));
    assert_eq!(life.state(), State::Pending);
    assert_eq!(tx.guard, Some(Guard::BeforeApprovalDeadline));
    assert!(tx.effects.is_empty() && life.req.grants.is_empty());
    assert_eq!(tx.audit.kind, "request.approval_recorded");
    assert_eq!(tx.audit.details["approvals"], 1);
    assert_eq!(tx.audit.details["approvals_required"], 2);
    assert_eq!(life.req.grant_deadline, None);

    let tx = life.at(70).step(approve(approver(carol())));
    assert_eq!(life.state(), State::Approved);
    assert_eq!(
        tx.effects,
        [Effect::CallGrant {
            grant_id: life.primary()
        }]
    );
    let who: Vec<_> = life.req.approvals.iter().map(|a| a.by.clone()).collect();
    assert_eq!(who, [bob().person(), carol().person()]);
}

#[test]
fn approve_by_requester_is_refused() {
    let mut life = Life::pending();
    assert_eq!(
        life.at(60).refuse(approve(approver(alice()))),
        Refusal::SelfApproval
    );
    // Being an admin changes nothing.
    let mut me = approver(alice());
    me.is_admin = true;
    assert_eq!(life.refuse(approve(me)), Refusal::SelfApproval);
}

#[test]
fn approve_by_requesters_other_account_with_the_same_verified_email_is_refused() {
    let mut life = Life::pending();
    assert_eq!(
        life.at(60)
            .refuse(approve(approver(alice_second_account()))),
        Refusal::SelfApproval
    );
}

#[test]
fn an_unverified_email_matching_the_requesters_does_not_make_the_same_person() {
    let mut life = Life::pending();
    life.at(60)
        .step(approve(approver(mallory_claiming_alices_email())));
    assert_eq!(life.state(), State::Approved);
}

#[test]
fn the_same_approver_twice_is_refused() {
    let mut life = Life::pending_with(quorum(2));
    life.at(60).step(approve(approver(bob())));
    assert_eq!(
        life.at(61).refuse(approve(approver(bob()))),
        Refusal::AlreadyApproved
    );
    assert_eq!(life.state(), State::Pending);
}

#[test]
fn the_same_person_under_another_subject_with_the_same_verified_email_counts_once() {
    let mut life = Life::pending_with(quorum(2));
    life.at(60).step(approve(approver(bob())));
    assert_eq!(
        life.at(61).refuse(approve(approver(bob_second_account()))),
        Refusal::AlreadyApproved
    );
    // And the other way round.
    let mut life = Life::pending_with(quorum(2));
    life.at(60).step(approve(approver(bob_second_account())));
    assert_eq!(
        life.at(61).refuse(approve(approver(bob()))),
        Refusal::AlreadyApproved
    );
}

#[test]
fn another_subject_with_the_same_unverified_email_is_a_different_approver() {
    let mut life = Life::pending_with(quorum(2));
    life.at(60).step(approve(approver(bob())));
    life.at(61)
        .step(approve(approver(robert_with_bobs_unverified_email())));
    assert_eq!(life.state(), State::Approved);
    // Two subjects that both merely claim the same email are two people as well.
    let mut life = Life::pending_with(quorum(2));
    let mut x = crate::domain::Principal::new("x");
    x.email = Some("shared@example.com".into());
    let mut y = crate::domain::Principal::new("y");
    y.email = Some("shared@example.com".into());
    life.at(60).step(approve(approver(x)));
    life.at(61).step(approve(approver(y)));
    assert_eq!(life.state(), State::Approved);
}

#[test]
fn approve_by_someone_the_approval_policy_does_not_allow_is_refused() {
    let mut life = Life::pending();
    assert_eq!(
        life.at(60).refuse(approve(outsider(dave()))),
        Refusal::NotAnApprover
    );
    // Admins manage policies; they approve only where the approval policy says so.
    assert_eq!(life.refuse(approve(admin(dave()))), Refusal::NotAnApprover);
}

#[test]
fn approve_at_the_approval_deadline_is_refused_even_before_its_timer_fires() {
    let mut life = Life::pending();
    let deadline = life.req.approval_deadline.unwrap();
    assert_eq!(
        life.at_time(deadline).refuse(approve(approver(bob()))),
        Refusal::ApprovalDeadlinePassed { deadline }
    );
    assert_eq!(
        life.at_time(deadline + secs(30))
            .refuse(approve(approver(bob()))),
        Refusal::ApprovalDeadlinePassed { deadline }
    );
    // One second earlier it is still in time, and the store re-checks with its own clock.
    let tx = life
        .at_time(deadline - secs(1))
        .step(approve(approver(bob())));
    assert_eq!(tx.guard, Some(Guard::BeforeApprovalDeadline));
    assert_eq!(life.state(), State::Approved);
}

#[test]
fn approve_with_an_oversized_comment_is_refused() {
    let mut life = Life::pending();
    let ev = Event::Approve {
        by: approver(bob()),
        comment: "x".repeat(Limits::COMMENT + 1),
    };
    assert!(matches!(
        life.at(60).refuse(ev),
        Refusal::Invalid {
            field: "comment",
            ..
        }
    ));
}

#[test]
fn approve_once_approved_is_not_accepted() {
    let mut life = Life::approved();
    assert!(matches!(
        life.at(61).refuse(approve(approver(carol()))),
        Refusal::NotAccepted {
            state: State::Approved,
            event: "approve"
        }
    ));
}

#[test]
fn auto_approve_is_recorded_with_approver_policy() {
    let mut life = Life::pending_with(Decision {
        auto_approve: true,
        ..decision()
    });
    let tx = life.at(1).step(Event::AutoApprove);
    assert_eq!(life.state(), State::Approved);
    assert_eq!(tx.audit.actor, "policy");
    assert_eq!(tx.audit.kind, "request.approved");
    assert_eq!(tx.guard, Some(Guard::BeforeApprovalDeadline));
    assert_eq!(life.req.approvals.len(), 1);
    let a = &life.req.approvals[0];
    assert_eq!(a.kind, "policy");
    assert_eq!(
        a.by,
        PersonRef {
            subject: "policy".into(),
            verified_email: None,
            links: Vec::new(),
        }
    );
    assert!(!same_person(&a.by, &alice().person()));
    assert_eq!(
        tx.effects,
        [Effect::CallGrant {
            grant_id: life.primary()
        }]
    );
    assert_eq!(life.req.grants[0].status, GrantStatus::Intended);
}

#[test]
fn auto_approve_meets_any_quorum_the_policy_asks_for() {
    let mut life = Life::pending_with(Decision {
        auto_approve: true,
        approvals_required: 3,
        ..decision()
    });
    life.at(1).step(Event::AutoApprove);
    assert_eq!(life.state(), State::Approved);
}

#[test]
fn auto_approve_the_policy_did_not_grant_is_refused() {
    let mut life = Life::pending();
    assert_eq!(
        life.at(1).refuse(Event::AutoApprove),
        Refusal::NotAnApprover
    );
}

#[test]
fn auto_approve_after_the_approval_deadline_is_refused() {
    let mut life = Life::pending_with(Decision {
        auto_approve: true,
        ..decision()
    });
    let deadline = life.req.approval_deadline.unwrap();
    assert_eq!(
        life.at_time(deadline).refuse(Event::AutoApprove),
        Refusal::ApprovalDeadlinePassed { deadline }
    );
}

#[test]
fn deny_by_an_allowed_approver_rejects_the_request() {
    let mut life = Life::pending_with(quorum(2));
    life.at(30).step(approve(approver(carol())));
    let tx = life.at(60).step(deny(approver(bob())));
    assert_eq!(life.state(), State::Rejected);
    assert_eq!(life.req.ended_at, Some(t(60)));
    assert_eq!(tx.times.ended_at, Some(Stamp::now()));
    assert_eq!(tx.guard, Some(Guard::BeforeApprovalDeadline));
    assert_eq!(notice_kinds(&tx), [NoticeKind::Denied]);
    assert_eq!(tx.audit.kind, "request.denied");
    assert_eq!(tx.audit.actor, "bob");
    assert!(tx.effects.is_empty() && life.req.grants.is_empty());
    assert!(life.req.end_detail.as_deref().unwrap().contains("bob"));
    assert!(timers(&life.req).is_empty());
}

#[test]
fn deny_by_requester_is_refused() {
    let mut life = Life::pending();
    assert_eq!(
        life.at(60).refuse(deny(approver(alice()))),
        Refusal::SelfApproval
    );
    assert_eq!(
        life.refuse(deny(approver(alice_second_account()))),
        Refusal::SelfApproval
    );
}

#[test]
fn deny_by_someone_the_approval_policy_does_not_allow_is_refused() {
    let mut life = Life::pending();
    assert_eq!(
        life.at(60).refuse(deny(outsider(dave()))),
        Refusal::NotAnApprover
    );
    assert_eq!(life.refuse(deny(admin(dave()))), Refusal::NotAnApprover);
}

#[test]
fn deny_after_the_approval_deadline_is_refused() {
    let mut life = Life::pending();
    let deadline = life.req.approval_deadline.unwrap();
    assert_eq!(
        life.at_time(deadline).refuse(deny(approver(bob()))),
        Refusal::ApprovalDeadlinePassed { deadline }
    );
}

#[test]
fn deny_with_an_oversized_reason_is_refused() {
    let mut life = Life::pending();
    let ev = Event::Deny {
        by: approver(bob()),
        reason: "x".repeat(Limits::REASON + 1),
    };
    assert!(matches!(
        life.at(60).refuse(ev),
        Refusal::Invalid {
            field: "reason",
            ..
        }
    ));
}

#[test]
fn cancel_by_requester_while_pending_cancels_the_request() {
    let mut life = Life::pending();
    let tx = life.at(60).step(cancel(alice()));
    assert_eq!(life.state(), State::Cancelled);
    assert_eq!(life.req.ended_at, Some(t(60)));
    assert_eq!(tx.times.ended_at, Some(Stamp::now()));
    assert_eq!(notice_kinds(&tx), [NoticeKind::Cancelled]);
    assert_eq!(tx.audit.kind, "request.cancelled");
    assert!(tx.effects.is_empty());
}

#[test]
fn cancel_by_requesters_other_verified_account_is_the_requester_cancelling() {
    let mut life = Life::pending();
    life.at(60).step(cancel(alice_second_account()));
    assert_eq!(life.state(), State::Cancelled);
}

#[test]
fn cancel_by_anyone_but_the_requester_is_refused() {
    let mut life = Life::pending();
    for p in [bob(), mallory_claiming_alices_email()] {
        assert_eq!(life.at(60).refuse(cancel(p)), Refusal::NotRequester);
    }
}

#[test]
fn revoke_while_pending_is_not_accepted() {
    let mut life = Life::pending();
    assert!(matches!(
        life.at(60).refuse(revoke(admin(dave()))),
        Refusal::NotAccepted {
            state: State::Pending,
            event: "revoke"
        }
    ));
}
