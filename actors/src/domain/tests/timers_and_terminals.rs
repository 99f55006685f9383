//! §4 row "PENDING → approval deadline → TIMED_OUT", the timer rules of §3 (a timer carries
//! the deadline it was armed for: stale ones are ignored, early ones re-armed, late ones act),
//! and "terminal states absorb every event".

use jitsudo_providers::ErrorClass;

use crate::domain::{
    Event, NoticeKind, Refusal, Stamp, State, TimerKind, outstanding_calls, timers,
};

use super::support::*;

#[test]
fn approval_deadline_timer_times_out_a_pending_request() {
    let mut life = Life::pending_with(quorum(2));
    life.at(10).step(approve(approver(bob())));
    let deadline = life.req.approval_deadline.unwrap();
    let tx = life
        .at_time(deadline)
        .step(Event::ApprovalDeadline { deadline });
    assert_eq!(life.state(), State::TimedOut);
    assert_eq!(life.req.ended_at, Some(deadline));
    assert_eq!(tx.times.ended_at, Some(Stamp::now()));
    assert_eq!(notice_kinds(&tx), [NoticeKind::TimedOut]);
    assert_eq!(tx.audit.kind, "request.timed_out");
    assert_eq!(tx.audit.actor, "system");
    assert!(tx.effects.is_empty());
    assert!(timers(&life.req).is_empty() && outstanding_calls(&life.req).is_empty());
}

#[test]
fn a_timer_that_fires_late_still_acts() {
    let mut life = Life::pending();
    let deadline = life.req.approval_deadline.unwrap();
    life.at_time(deadline + secs(3600))
        .step(Event::ApprovalDeadline { deadline });
    assert_eq!(life.state(), State::TimedOut);
}

#[test]
fn timers_that_fire_early_are_refused_so_they_can_be_rearmed() {
    let mut pending = Life::pending();
    let deadline = pending.req.approval_deadline.unwrap();
    assert_eq!(
        pending
            .at_time(deadline - secs(1))
            .refuse(Event::ApprovalDeadline { deadline }),
        Refusal::TimerEarly { deadline }
    );

    let mut approved = Life::approved();
    let deadline = approved.req.grant_deadline.unwrap();
    assert_eq!(
        approved
            .at_time(deadline - secs(1))
            .refuse(Event::GrantDeadline { deadline }),
        Refusal::TimerEarly { deadline }
    );

    let mut active = Life::active();
    let expires_at = active.req.expires_at.unwrap();
    assert_eq!(
        active
            .at_time(expires_at - secs(1))
            .refuse(Event::Expiry { expires_at }),
        Refusal::TimerEarly {
            deadline: expires_at
        }
    );
}

#[test]
fn timers_armed_for_another_deadline_are_stale() {
    let mut pending = Life::pending();
    let deadline = pending.req.approval_deadline.unwrap();
    for other in [deadline - secs(1), deadline + secs(1)] {
        assert_eq!(
            pending
                .at_time(deadline + secs(5))
                .refuse(Event::ApprovalDeadline { deadline: other }),
            Refusal::StaleTimer
        );
    }

    let mut approved = Life::approved();
    let deadline = approved.req.grant_deadline.unwrap();
    assert_eq!(
        approved
            .at_time(deadline + secs(5))
            .refuse(Event::GrantDeadline {
                deadline: deadline - secs(60)
            }),
        Refusal::StaleTimer
    );

    let mut active = Life::active();
    let expires_at = active.req.expires_at.unwrap();
    assert_eq!(
        active.at_time(expires_at + secs(5)).refuse(Event::Expiry {
            expires_at: expires_at - secs(1)
        }),
        Refusal::StaleTimer
    );
}

#[test]
fn timers_of_a_state_the_request_has_left_are_stale() {
    // The approval deadline of an approved request, even though the time has come.
    let mut approved = Life::approved();
    let deadline = approved.req.approval_deadline.unwrap();
    assert_eq!(
        approved
            .at_time(deadline)
            .refuse(Event::ApprovalDeadline { deadline }),
        Refusal::StaleTimer
    );
    // The grant deadline of an active request.
    let mut active = Life::active();
    let deadline = active.req.grant_deadline.unwrap();
    assert_eq!(
        active
            .at_time(deadline)
            .refuse(Event::GrantDeadline { deadline }),
        Refusal::StaleTimer
    );
    // An expiry that fires twice: the second finds the request ENDING.
    let expires_at = active.req.expires_at.unwrap();
    active
        .at_time(expires_at)
        .step(Event::Expiry { expires_at });
    assert_eq!(
        active.refuse(Event::Expiry { expires_at }),
        Refusal::StaleTimer
    );
    // An expiry timer for a request that has not been granted yet.
    let mut approved = Life::approved();
    assert_eq!(
        approved.at(10_000).refuse(Event::Expiry {
            expires_at: t(10_000)
        }),
        Refusal::StaleTimer
    );
}

#[test]
fn the_timers_a_request_needs_follow_its_state() {
    let pending = Life::pending();
    assert_eq!(
        timers(&pending.req),
        [(TimerKind::ApprovalDeadline, t(HOUR))]
    );
    let approved = Life::approved();
    assert_eq!(
        timers(&approved.req),
        [(
            TimerKind::GrantDeadline,
            approved.req.grant_deadline.unwrap()
        )]
    );
    let mut active = Life::active();
    assert_eq!(timers(&active.req), [(TimerKind::Expiry, t(120 + HOUR))]);
    active.at(200).step(revoke(admin(dave())));
    assert!(
        timers(&active.req).is_empty(),
        "ENDING waits for the provider"
    );
    // A timer event built from `timers` is accepted at its time.
    let mut pending = Life::pending();
    let (kind, at) = timers(&pending.req)[0];
    pending.at_time(at).step(kind.event(at));
    assert_eq!(pending.state(), State::TimedOut);
}

/// One of every event, aimed at the request's real grant ids where an event names one.
fn every_event(life: &Life) -> Vec<Event> {
    let grant_id = life
        .req
        .grants
        .first()
        .map_or_else(unknown_grant, |g| g.grant_id);
    let at = t(0);
    vec![
        Event::AutoApprove,
        approve(approver(bob())),
        deny(approver(bob())),
        cancel(alice()),
        revoke(admin(dave())),
        Event::ApprovalDeadline {
            deadline: life.req.approval_deadline.unwrap_or(at),
        },
        Event::GrantDeadline {
            deadline: life.req.grant_deadline.unwrap_or(at),
        },
        Event::Expiry {
            expires_at: life.req.expires_at.unwrap_or(at),
        },
        granted(grant_id),
        grant_failed(grant_id, ErrorClass::Permanent),
        revoked(grant_id),
        revoke_failed(grant_id),
        Event::GoneAtProvider {
            grant_id,
            evidence: "inspect: gone".into(),
        },
        extend(alice(), 60),
        approve_extension(1, approver(bob())),
        deny_extension(1, approver(bob())),
    ]
}

fn every_terminal_state() -> Vec<Life> {
    let rejected = {
        let mut l = Life::pending();
        l.at(10).step(deny(approver(bob())));
        l
    };
    let cancelled = {
        let mut l = Life::pending();
        l.at(10).step(cancel(alice()));
        l
    };
    let timed_out = {
        let mut l = Life::pending();
        let deadline = l.req.approval_deadline.unwrap();
        l.at_time(deadline)
            .step(Event::ApprovalDeadline { deadline });
        l
    };
    let expired = {
        let mut l = Life::active();
        let expires_at = l.req.expires_at.unwrap();
        l.at_time(expires_at).step(Event::Expiry { expires_at });
        let g = l.primary();
        l.step(revoked(g));
        l
    };
    let revoked_ = {
        let mut l = Life::active();
        l.at(200).step(revoke(approver(bob())));
        let g = l.primary();
        l.step(revoked(g));
        l
    };
    let failed = {
        let mut l = Life::approved();
        let g = l.primary();
        l.at(70).step(grant_failed(g, ErrorClass::Permanent));
        l.step(revoked(g));
        l
    };
    vec![rejected, cancelled, timed_out, expired, revoked_, failed]
}

#[test]
fn every_terminal_state_absorbs_every_event() {
    let lives = every_terminal_state();
    let states: Vec<State> = lives.iter().map(Life::state).collect();
    let mut want: Vec<State> = State::ALL.into_iter().filter(|s| s.is_terminal()).collect();
    let mut have = states.clone();
    want.sort_by_key(|s| s.as_str());
    have.sort_by_key(|s| s.as_str());
    assert_eq!(have, want, "every terminal state is covered");
    for mut life in lives {
        let state = life.state();
        assert!(timers(&life.req).is_empty(), "{state}");
        assert!(outstanding_calls(&life.req).is_empty(), "{state}");
        for ev in every_event(&life) {
            for at in [t(0), t(100 * HOUR)] {
                let name = ev.name();
                assert_eq!(
                    life.at_time(at).refuse(ev.clone()),
                    Refusal::Terminal { state },
                    "{state} must absorb {name}"
                );
            }
        }
    }
}

#[test]
fn the_terminal_states_are_exactly_the_ones_section_4_names() {
    let terminal: Vec<&str> = State::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(State::as_str)
        .collect();
    assert_eq!(
        terminal,
        [
            "EXPIRED",
            "REVOKED",
            "REJECTED",
            "CANCELLED",
            "TIMED_OUT",
            "FAILED"
        ]
    );
    for s in State::ALL {
        assert_eq!(State::parse(s.as_str()), Some(s));
    }
}
