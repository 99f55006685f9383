//! Fixtures for the domain tests: a fixed clock, a policy decision, the cast of principals
//! and `Life`, which walks one request through `step` the way the store would, checking the
//! per-transition guarantees (one audit entry with `from`/`to`, versions untouched, times in
//! the patch) on every accepted event.

use std::collections::BTreeMap;

use chrono::{Duration, TimeZone, Utc};
use serde_json::Value;
use uuid::Uuid;

use jitsudo_providers::ErrorClass;

use crate::domain::{
    Decider, Effect, Event, GrantPurpose, NewRequest, Refusal, Request, RequestId, RequestSpec,
    RequesterLoad, Rules, State, Timestamp, Transition, create, step,
};
use crate::policy::Decision;

/// `secs` seconds after a fixed origin; tests never read the wall clock.
pub fn t(secs: i64) -> Timestamp {
    Utc.with_ymd_and_hms(2025, 6, 2, 9, 0, 0).unwrap() + Duration::seconds(secs)
}

pub fn secs(n: i64) -> Duration {
    Duration::seconds(n)
}

pub const HOUR: i64 = 3600;

pub fn request_id() -> RequestId {
    RequestId(Uuid::from_u128(0x0197_2f00_0000_7000_8000_0000_0000_0001))
}

/// An eligible decision: one approval, one hour, up to four hours in total, one hour to decide.
pub fn decision() -> Decision {
    Decision {
        eligible: true,
        deny_reasons: Vec::new(),
        auto_approve: false,
        approvals_required: 1,
        approver_groups: vec!["sre".into()],
        max_duration_seconds: 2 * HOUR,
        max_total_duration_seconds: 4 * HOUR,
        approval_timeout_seconds: HOUR,
        extend_requires_approval: true,
        break_glass_allowed: true,
        reason_required: false,
        ticket_pattern: None,
        policy_version: "sha256:policy-v1".into(),
        policies: Vec::new(),
    }
}

pub fn quorum(n: u32) -> Decision {
    Decision {
        approvals_required: n,
        ..decision()
    }
}

pub fn spec() -> RequestSpec {
    RequestSpec {
        provider: "aws".into(),
        role: "admin".into(),
        scope: "123456789012".into(),
        duration_seconds: HOUR,
        reason: "investigate the outage".into(),
        ticket: None,
        break_glass: false,
        metadata: BTreeMap::new(),
    }
}

pub fn break_glass_spec() -> RequestSpec {
    RequestSpec {
        break_glass: true,
        reason: "production is down".into(),
        ..spec()
    }
}

// ---- the cast ----

/// The requester.
pub fn alice() -> Principal {
    Principal::new("alice").with_verified_email("alice@example.com")
}

/// Alice's second account: another subject, the same *verified* email — the same person.
pub fn alice_second_account() -> Principal {
    Principal::new("alice-admin").with_verified_email("ALICE@example.com")
}

/// Claims Alice's email without the issuer verifying it: a different person.
pub fn mallory_claiming_alices_email() -> Principal {
    let mut p = Principal::new("mallory");
    p.email = Some("alice@example.com".into());
    p.email_verified = false;
    p
}

pub fn bob() -> Principal {
    Principal::new("bob").with_verified_email("bob@example.com")
}

/// Bob under another subject with his verified email: the same person as bob.
pub fn bob_second_account() -> Principal {
    Principal::new("bob-ops").with_verified_email("bob@example.com")
}

/// Another subject with Bob's email, unverified: a different person from bob.
pub fn robert_with_bobs_unverified_email() -> Principal {
    let mut p = Principal::new("robert");
    p.email = Some("bob@example.com".into());
    p
}

pub fn carol() -> Principal {
    Principal::new("carol").with_verified_email("carol@example.com")
}

pub fn dave() -> Principal {
    Principal::new("dave").with_verified_email("dave@example.com")
}

pub use crate::domain::Principal;

/// Someone the approval policy allows for this request.
pub fn approver(p: Principal) -> Decider {
    Decider {
        principal: p,
        approver_allowed: true,
        is_admin: false,
    }
}

/// Someone the approval policy does not allow, and who is not an admin.
pub fn outsider(p: Principal) -> Decider {
    Decider {
        principal: p,
        approver_allowed: false,
        is_admin: false,
    }
}

/// An admin the approval policy does not allow for this request.
pub fn admin(p: Principal) -> Decider {
    Decider {
        principal: p,
        approver_allowed: false,
        is_admin: true,
    }
}

// ---- events ----

pub fn approve(by: Decider) -> Event {
    Event::Approve {
        by,
        comment: "looks fine".into(),
    }
}

pub fn deny(by: Decider) -> Event {
    Event::Deny {
        by,
        reason: "not now".into(),
    }
}

pub fn revoke(by: Decider) -> Event {
    Event::Revoke {
        by,
        reason: "done".into(),
    }
}

pub fn cancel(by: Principal) -> Event {
    Event::Cancel { by }
}

pub fn granted(grant_id: Uuid) -> Event {
    Event::GrantSucceeded {
        grant_id,
        provider_ref: format!("ref-{grant_id}"),
    }
}

pub fn grant_failed(grant_id: Uuid, class: ErrorClass) -> Event {
    Event::GrantFailed {
        grant_id,
        class,
        message: format!("provider said {}", class.as_str()),
    }
}

pub fn revoked(grant_id: Uuid) -> Event {
    Event::RevokeSucceeded { grant_id }
}

pub fn revoke_failed(grant_id: Uuid) -> Event {
    Event::RevokeFailed {
        grant_id,
        message: "throttled".into(),
    }
}

pub fn extend(by: Principal, by_seconds: i64) -> Event {
    Event::RequestExtension {
        by,
        by_seconds,
        reason: "the migration runs long".into(),
    }
}

pub fn approve_extension(number: u32, by: Decider) -> Event {
    Event::ApproveExtension {
        number,
        by,
        comment: "ok".into(),
    }
}

pub fn deny_extension(number: u32, by: Decider) -> Event {
    Event::DenyExtension {
        number,
        by,
        reason: "no".into(),
    }
}

/// A grant id no request of these tests has.
pub fn unknown_grant() -> Uuid {
    Uuid::from_u128(0xdead_beef)
}

// ---- checks every accepted transition must pass ----

/// One audit entry naming `from` and `to`; the version left to the store; the in-memory
/// times exactly those the store derives from the patch, and no time changed outside it.
pub fn check_transition(prev: Option<&Request>, tx: &Transition, now: Timestamp) {
    let from = prev.map_or(Value::Null, |p| Value::from(p.state.as_str()));
    assert_eq!(tx.audit.details["from"], from, "audit `from` of {tx:#?}");
    assert_eq!(
        tx.audit.details["to"],
        Value::from(tx.next.state.as_str()),
        "audit `to` of {tx:#?}"
    );
    assert!(!tx.audit.kind.is_empty() && !tx.audit.actor.is_empty());
    if let Some(p) = prev {
        assert_eq!(tx.next.version, p.version, "step never touches the version");
        assert_eq!(tx.next.id, p.id);
        let changed_outside_patch = [
            (
                p.created_at != tx.next.created_at,
                tx.times.created_at.is_none(),
            ),
            (
                p.approval_deadline != tx.next.approval_deadline,
                tx.times.approval_deadline.is_none(),
            ),
            (
                p.grant_deadline != tx.next.grant_deadline,
                tx.times.grant_deadline.is_none(),
            ),
            (
                p.granted_at != tx.next.granted_at,
                tx.times.granted_at.is_none(),
            ),
            (
                p.expires_at != tx.next.expires_at,
                tx.times.expires_at.is_none(),
            ),
            (p.ended_at != tx.next.ended_at, tx.times.ended_at.is_none()),
        ]
        .iter()
        .any(|(changed, unpatched)| *changed && *unpatched);
        assert!(
            !changed_outside_patch,
            "a time changed that the store would not write: {tx:#?}"
        );
    }
    let mut stored = tx.next.clone();
    stored.apply_times(&tx.times, now);
    assert_eq!(
        stored, tx.next,
        "the store's reading of the patch differs from the request step returned"
    );
}

/// One request walked through its life, the way the actor and store would.
pub struct Life {
    pub req: Request,
    pub now: Timestamp,
    pub rules: Rules,
}

impl Life {
    /// Creates a request at `t(0)`, panicking if `create` refuses it.
    pub fn create(decision: Decision, spec: RequestSpec) -> (Life, Transition) {
        Self::create_with(decision, spec, Rules::default())
    }

    pub fn create_with(decision: Decision, spec: RequestSpec, rules: Rules) -> (Life, Transition) {
        let now = t(0);
        let new = NewRequest {
            id: request_id(),
            requester: alice(),
            spec,
        };
        let tx = create(new, decision, now, &rules, &RequesterLoad::default())
            .expect("create is accepted");
        check_transition(None, &tx, now);
        let mut req = tx.next.clone();
        req.apply_times(&tx.times, now);
        (Life { req, now, rules }, tx)
    }

    pub fn pending() -> Life {
        Self::create(decision(), spec()).0
    }

    pub fn pending_with(decision: Decision) -> Life {
        Self::create(decision, spec()).0
    }

    /// Approved by bob at `t(60)`.
    pub fn approved() -> Life {
        let mut life = Self::pending();
        life.at(60).step(approve(approver(bob())));
        life
    }

    /// Granted at `t(120)`: expires at `t(120 + HOUR)`.
    pub fn active() -> Life {
        let mut life = Self::approved();
        let g = life.primary();
        life.at(120).step(granted(g));
        life
    }

    /// Approved by as many of bob, carol and dave as the decision asks for, then granted at
    /// `t(120)`.
    pub fn active_with(decision: Decision) -> Life {
        let need = decision.approvals_required as usize;
        let mut life = Self::pending_with(decision);
        for p in [bob(), carol(), dave()].into_iter().take(need.max(1)) {
            life.at(60).step(approve(approver(p)));
        }
        let g = life.primary();
        life.at(120).step(granted(g));
        life
    }

    pub fn break_glass_active() -> Life {
        let (mut life, _) = Self::create(decision(), break_glass_spec());
        let g = life.primary();
        life.at(30).step(granted(g));
        life
    }

    pub fn at(&mut self, secs: i64) -> &mut Self {
        self.now = t(secs);
        self
    }

    pub fn at_time(&mut self, now: Timestamp) -> &mut Self {
        self.now = now;
        self
    }

    /// Steps an event that must be accepted; the store's view replaces the request.
    pub fn step(&mut self, ev: Event) -> Transition {
        let tx = match step(&self.req, ev.clone(), self.now, &self.rules) {
            Ok(tx) => tx,
            Err(r) => panic!(
                "{ev:?} refused in {}: {r}\nrequest: {:#?}",
                self.req.state, self.req
            ),
        };
        check_transition(Some(&self.req), &tx, self.now);
        let mut next = tx.next.clone();
        next.apply_times(&tx.times, self.now);
        self.req = next;
        tx
    }

    /// Steps an event that must be refused, and returns the refusal.
    pub fn refuse(&mut self, ev: Event) -> Refusal {
        let before = self.req.clone();
        match step(&self.req, ev.clone(), self.now, &self.rules) {
            Ok(tx) => panic!(
                "{ev:?} accepted in {}, expected a refusal: {tx:#?}",
                self.req.state
            ),
            Err(r) => {
                assert_eq!(self.req, before);
                r
            }
        }
    }

    pub fn state(&self) -> State {
        self.req.state
    }

    /// The request's own grant.
    pub fn primary(&self) -> Uuid {
        self.req
            .grants
            .iter()
            .find(|g| g.purpose == GrantPurpose::Primary)
            .map(|g| g.grant_id)
            .expect("the request has a primary grant")
    }

    /// The grant of extension `number`.
    pub fn extension_grant(&self, number: u32) -> Uuid {
        self.req
            .extensions
            .iter()
            .find(|e| e.number == number)
            .and_then(|e| e.grant_id)
            .expect("the extension has a grant")
    }
}

/// The grant ids an effect list asks to revoke, in order.
pub fn revokes(effects: &[Effect]) -> Vec<Uuid> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::CallRevoke { grant_id } => Some(*grant_id),
            _ => None,
        })
        .collect()
}

pub fn notice_kinds(tx: &Transition) -> Vec<crate::domain::NoticeKind> {
    tx.notices.iter().map(|n| n.kind).collect()
}
