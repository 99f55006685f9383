//! The rules that used to live outside the pure core (issue #14): the requester cap and the
//! break-glass cooldown are inputs to `create`, a repeated decision is recognised here, and
//! the provider's pre-create check and every grant are built by one constructor.

use chrono::Duration;
use proptest::prelude::*;

use crate::domain::{
    GrantPurpose, NewRequest, Refusal, RequesterLoad, Rules, State, Verdict, create, probe_spec,
    repeats_own_decision, step,
};

use super::support::*;

fn new_request(break_glass: bool, duration_seconds: i64) -> NewRequest {
    let base = if break_glass {
        break_glass_spec()
    } else {
        spec()
    };
    NewRequest {
        id: request_id(),
        requester: alice(),
        spec: crate::domain::RequestSpec {
            duration_seconds,
            ..base
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The cap refuses first, then the cooldown; below both a create is accepted. An invalid
    /// request is refused for what is wrong with it, whatever the load.
    #[test]
    fn the_requester_load_decides_a_create_as_the_rules_say(
        open in 0i64..40,
        cap in 0i64..30,
        break_glass in any::<bool>(),
        last_ago in proptest::option::of(0i64..7200),
        cooldown in 0i64..3600,
    ) {
        let now = t(10_000);
        let rules = Rules {
            max_open_per_requester: cap,
            break_glass_cooldown: Duration::seconds(cooldown),
            ..Rules::default()
        };
        let load = RequesterLoad {
            open,
            last_break_glass: last_ago.map(|ago| now - Duration::seconds(ago)),
        };
        let got = create(new_request(break_glass, 3600), decision(), now, &rules, &load);
        let capped = cap > 0 && open >= cap;
        let cooling = break_glass && last_ago.is_some_and(|ago| ago < cooldown);
        match got {
            Err(Refusal::TooManyLive { live }) => {
                prop_assert!(capped);
                prop_assert_eq!(live, open);
            }
            Err(Refusal::BreakGlassCooldown { until }) => {
                prop_assert!(!capped && cooling);
                prop_assert_eq!(Some(until), load.last_break_glass.map(|l| l + rules.break_glass_cooldown));
            }
            Err(other) => prop_assert!(false, "unexpected refusal {:?}", other),
            Ok(tx) => {
                prop_assert!(!capped && !cooling);
                prop_assert_eq!(tx.next.state, if break_glass { State::Approved } else { State::Pending });
            }
        }
        let invalid = create(new_request(break_glass, 0), decision(), now, &rules, &load);
        prop_assert!(matches!(invalid, Err(Refusal::Invalid { field: "duration", .. })), "{:?}", invalid);
    }

    /// What the provider validates before a create is exactly the first grant the request
    /// would make if its grant intent came at the same moment: same grant id, subject, role,
    /// scope and end.
    #[test]
    fn the_pre_create_check_and_the_first_grant_are_the_same_spec(
        duration in 1i64..7200,
        at in 0i64..1_000_000,
        grant_timeout in 1i64..3600,
    ) {
        let now = t(at);
        let rules = Rules { grant_timeout: Duration::seconds(grant_timeout), ..Rules::default() };
        let new = new_request(true, duration);
        let probe = probe_spec(new.id, &new.spec, "alice-at-the-cloud", now, &rules);
        let tx = create(new, decision(), now, &rules, &RequesterLoad::default()).expect("valid");
        let mut req = tx.next.clone();
        req.apply_times(&tx.times, now);
        req.principal = Some("alice-at-the-cloud".into());
        let primary = req.grants.iter().find(|g| g.purpose == GrantPurpose::Primary).expect("a primary grant intent");
        prop_assert_eq!(req.grant_spec(primary), Some(probe));
    }
}

#[test]
fn a_denial_is_a_repeat_only_for_the_subject_that_denied() {
    let mut life = Life::pending_with(quorum(1));
    let by_bob = deny(approver(bob()));
    let bob_p = bob();
    assert!(
        !repeats_own_decision(&life.req, &bob_p, Verdict::Deny),
        "nothing denied yet"
    );
    life.at(60).step(by_bob.clone());
    assert_eq!(life.state(), State::Rejected);
    assert!(repeats_own_decision(&life.req, &bob_p, Verdict::Deny));
    let refusal = life.at(61).refuse(by_bob);
    assert!(refusal.met_by_a_repeat(), "{refusal:?}");
    // Bob's second account is the same person, but not the caller who denied.
    assert!(!repeats_own_decision(
        &life.req,
        &bob_second_account(),
        Verdict::Deny
    ));
    assert!(!repeats_own_decision(&life.req, &bob_p, Verdict::Approve));
}

#[test]
fn an_approval_is_a_repeat_once_on_record_and_until_the_end() {
    let mut life = Life::pending_with(quorum(2));
    let by_bob = approve(approver(bob()));
    life.at(60).step(by_bob.clone());
    assert!(repeats_own_decision(&life.req, &bob(), Verdict::Approve));
    assert_eq!(life.at(61).refuse(by_bob.clone()), Refusal::AlreadyApproved);
    assert!(Refusal::AlreadyApproved.met_by_a_repeat());
    // Refusals a repeat never meets (the person may not decide, the time is up) stay errors.
    assert!(!Refusal::NotAnApprover.met_by_a_repeat());
    assert!(!Refusal::ApprovalDeadlinePassed { deadline: t(0) }.met_by_a_repeat());
    let _ = step;
}
