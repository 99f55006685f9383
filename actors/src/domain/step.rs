//! The lifecycle of docs/engine.md as a pure function: `step(request, event, now, rules)`
//! returns the next request, the one audit entry, the notices and the effects the actor
//! must carry out — or a typed refusal that changes nothing.

use chrono::Duration;
use serde_json::{Value, json};
use uuid::Uuid;

use jitsudo_providers::ErrorClass;

use super::request::*;
use super::{Idempotency, PersonRef, Principal, RequestId, Timestamp, grant_id_for, same_person};
use crate::policy::{Decision, PolicyRefusal};

/// Engine-wide knobs that the lifecycle depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// How long after the grant intent the grant may still succeed.
    pub grant_timeout: Duration,
    /// Failed grant attempts after which the grant is given up (ENDING(failed)).
    pub max_grant_attempts: u32,
    /// Consecutive revoke failures after which the stuck-revocation alert is raised.
    pub stuck_after_failures: u32,
    /// Requests of one requester that are not yet final, at most; 0 for no cap.
    pub max_open_per_requester: i64,
    /// After a break-glass request, the same requester gets no other for this long.
    pub break_glass_cooldown: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            grant_timeout: Duration::minutes(5),
            max_grant_attempts: 8,
            stuck_after_failures: 5,
            max_open_per_requester: 25,
            break_glass_cooldown: Duration::minutes(15),
        }
    }
}

/// What the store knows of a requester that a create must weigh: read by the engine, judged
/// by [`create`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequesterLoad {
    /// Their requests not yet final (counted up to the cap, no further).
    pub open: i64,
    /// When their last break-glass request was made, if ever.
    pub last_break_glass: Option<Timestamp>,
}

/// A person deciding on a request, with what the caller established about them: whether
/// the approval policy allows them for this request, and whether they are an admin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decider {
    pub principal: Principal,
    pub approver_allowed: bool,
    pub is_admin: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    AutoApprove,
    Approve {
        by: Decider,
        comment: String,
    },
    Deny {
        by: Decider,
        reason: String,
    },
    Cancel {
        by: Principal,
    },
    Revoke {
        by: Decider,
        reason: String,
    },
    /// Timer events carry the deadline they were armed for.
    ApprovalDeadline {
        deadline: Timestamp,
    },
    GrantDeadline {
        deadline: Timestamp,
    },
    Expiry {
        expires_at: Timestamp,
    },
    GrantSucceeded {
        grant_id: Uuid,
        provider_ref: String,
    },
    GrantFailed {
        grant_id: Uuid,
        class: ErrorClass,
        message: String,
    },
    RevokeSucceeded {
        grant_id: Uuid,
    },
    RevokeFailed {
        grant_id: Uuid,
        message: String,
    },
    /// The provider expired the grant natively and `inspect` confirmed it is gone.
    GoneAtProvider {
        grant_id: Uuid,
        evidence: String,
    },
    RequestExtension {
        by: Principal,
        by_seconds: i64,
        reason: String,
    },
    ApproveExtension {
        number: u32,
        by: Decider,
        comment: String,
    },
    DenyExtension {
        number: u32,
        by: Decider,
        reason: String,
    },
}

impl Event {
    /// Every value [`Event::name`] answers (the `event` label of the refusal counter).
    pub const NAMES: [&'static str; 16] = [
        "auto_approve",
        "approve",
        "deny",
        "cancel",
        "revoke",
        "approval_deadline",
        "grant_deadline",
        "expiry",
        "grant_succeeded",
        "grant_failed",
        "revoke_succeeded",
        "revoke_failed",
        "gone_at_provider",
        "request_extension",
        "approve_extension",
        "deny_extension",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Event::AutoApprove => "auto_approve",
            Event::Approve { .. } => "approve",
            Event::Deny { .. } => "deny",
            Event::Cancel { .. } => "cancel",
            Event::Revoke { .. } => "revoke",
            Event::ApprovalDeadline { .. } => "approval_deadline",
            Event::GrantDeadline { .. } => "grant_deadline",
            Event::Expiry { .. } => "expiry",
            Event::GrantSucceeded { .. } => "grant_succeeded",
            Event::GrantFailed { .. } => "grant_failed",
            Event::RevokeSucceeded { .. } => "revoke_succeeded",
            Event::RevokeFailed { .. } => "revoke_failed",
            Event::GoneAtProvider { .. } => "gone_at_provider",
            Event::RequestExtension { .. } => "request_extension",
            Event::ApproveExtension { .. } => "approve_extension",
            Event::DenyExtension { .. } => "deny_extension",
        }
    }

    pub fn is_timer(&self) -> bool {
        matches!(
            self,
            Event::ApprovalDeadline { .. } | Event::GrantDeadline { .. } | Event::Expiry { .. }
        )
    }
}

/// Why an event or a create was refused. A refusal changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Policy(#[from] PolicyRefusal),
    #[error("the request is {state}, which is final; nothing can change it")]
    Terminal { state: State },
    #[error("a request in state {state} does not accept {event}")]
    NotAccepted { state: State, event: &'static str },
    #[error("nobody may approve or deny their own request")]
    SelfApproval,
    #[error("this person has already approved; a quorum needs different people")]
    AlreadyApproved,
    #[error("the approval policy does not allow this approver for this request")]
    NotAnApprover,
    #[error("the approval deadline passed at {deadline}; the request can no longer be decided")]
    ApprovalDeadlinePassed { deadline: Timestamp },
    #[error("only the requester may do this")]
    NotRequester,
    #[error("only the requester, an allowed approver or an admin may revoke this request")]
    NotAllowedToRevoke,
    #[error("the request is already ending")]
    AlreadyEnding,
    #[error("break-glass requests cannot be extended")]
    BreakGlassNotExtendable,
    #[error(
        "the extension would bring the total to {total_seconds}s, above the policy maximum of {max_seconds}s"
    )]
    ExtensionExceedsMaximum {
        total_seconds: i64,
        max_seconds: i64,
    },
    #[error("extension {number} is still in progress; wait for it to finish")]
    ExtensionInProgress { number: u32 },
    #[error("the request has no extension {number} awaiting a decision")]
    UnknownExtension { number: u32 },
    #[error("the request has no grant {grant_id}")]
    UnknownGrant { grant_id: Uuid },
    #[error("the timer was armed for a deadline that has changed since; ignored")]
    StaleTimer,
    #[error("the timer fired before its deadline {deadline}; re-arm it")]
    TimerEarly { deadline: Timestamp },
    #[error("this outcome was already recorded")]
    Duplicate,
    #[error(
        "break-glass is on cooldown for this person until {until} (one emergency at a time; ask an approver for normal access meanwhile)"
    )]
    BreakGlassCooldown { until: Timestamp },
    #[error(
        "{live} of your requests are still open, the most allowed; cancel or finish some first"
    )]
    TooManyLive { live: i64 },
    #[error("nobody reviews their own request; ask another admin or auditor")]
    SelfReview,
}

/// Outbox notices a transition enqueues in its own commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoticeKind {
    Created,
    ApprovalNeeded,
    Approved,
    Denied,
    Cancelled,
    TimedOut,
    Active,
    Ended,
    BreakGlass,
    StuckRevocation,
    StuckCleared,
    ExtensionRequested,
    Extended,
    ExtensionDenied,
    ExtensionFailed,
    /// A request was auto-approved by a policy its requester wrote.
    SelfBenefit,
    /// The reconciler found a live grant deleted or changed at the provider.
    GrantDrift,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Created => "request.created",
            NoticeKind::ApprovalNeeded => "request.approval_needed",
            NoticeKind::Approved => "request.approved",
            NoticeKind::Denied => "request.denied",
            NoticeKind::Cancelled => "request.cancelled",
            NoticeKind::TimedOut => "request.timed_out",
            NoticeKind::Active => "request.active",
            NoticeKind::Ended => "request.ended",
            NoticeKind::BreakGlass => "alert.break_glass",
            NoticeKind::StuckRevocation => "alert.revocation_stuck",
            NoticeKind::StuckCleared => "alert.revocation_unstuck",
            NoticeKind::ExtensionRequested => "extension.approval_needed",
            NoticeKind::Extended => "extension.active",
            NoticeKind::ExtensionDenied => "extension.denied",
            NoticeKind::ExtensionFailed => "extension.failed",
            NoticeKind::SelfBenefit => "alert.self_benefit",
            NoticeKind::GrantDrift => "alert.grant_drift",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub kind: NoticeKind,
    pub details: Value,
}

/// The one audit event of a transition.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    pub kind: String,
    /// Subject of the acting principal, `policy`, or `system` for timers and providers.
    pub actor: String,
    pub details: Value,
}

/// What the actor does after the transition has committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    CallGrant {
        grant_id: Uuid,
    },
    CallRevoke {
        grant_id: Uuid,
    },
    /// Back off, then call again (`attempt` failures so far).
    RetryGrantLater {
        grant_id: Uuid,
        attempt: u32,
    },
    RetryRevokeLater {
        grant_id: Uuid,
        attempt: u32,
    },
    /// Feed this event back in once the transition has committed.
    Followup(Event),
}

/// A condition the store checks against its own clock in the same statement, so that a
/// guard holds even if the node's clock or timer is late.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    BeforeApprovalDeadline,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub next: Request,
    pub times: TimePatch,
    pub audit: AuditEntry,
    pub notices: Vec<Notice>,
    pub effects: Vec<Effect>,
    pub guard: Option<Guard>,
    /// A create's idempotency key, committed with the new request; `None` otherwise.
    pub idempotency: Option<Idempotency>,
    /// Grants whose revokes go out *before* the commit (an expiry's): revocation is safe to
    /// repeat, so access ends on time even while the database is slow or unreachable. They
    /// are in `effects` too; the actor issues each once.
    pub revoke_first: Vec<Uuid>,
    /// This commit records an expiry (ENDING(expired) or its end): the node paces such
    /// commits (`NodeContext::expiry_records`) so that a burst leaves connections for the
    /// revokes.
    pub records_expiry: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerKind {
    ApprovalDeadline,
    GrantDeadline,
    Expiry,
}

impl TimerKind {
    pub fn event(self, at: Timestamp) -> Event {
        match self {
            TimerKind::ApprovalDeadline => Event::ApprovalDeadline { deadline: at },
            TimerKind::GrantDeadline => Event::GrantDeadline { deadline: at },
            TimerKind::Expiry => Event::Expiry { expires_at: at },
        }
    }
}

/// The deadline timers a request in its current state needs.
pub fn timers(req: &Request) -> Vec<(TimerKind, Timestamp)> {
    let at = match req.state {
        State::Pending => req
            .approval_deadline
            .map(|t| (TimerKind::ApprovalDeadline, t)),
        State::Approved => req.grant_deadline.map(|t| (TimerKind::GrantDeadline, t)),
        State::Active => req.expires_at.map(|t| (TimerKind::Expiry, t)),
        _ => None,
    };
    at.into_iter().collect()
}

/// The provider calls a request in its current state still needs; used to resume a request
/// after a restart or takeover, and after a retry back-off.
pub fn outstanding_calls(req: &Request) -> Vec<Effect> {
    let mut out = Vec::new();
    for g in &req.grants {
        let call = match (req.state, g.status) {
            (State::Ending, s) if s != GrantStatus::Revoked => Some(Effect::CallRevoke {
                grant_id: g.grant_id,
            }),
            (State::Approved, GrantStatus::Intended) if g.purpose == GrantPurpose::Primary => {
                Some(Effect::CallGrant {
                    grant_id: g.grant_id,
                })
            }
            (State::Active, GrantStatus::Intended) => Some(Effect::CallGrant {
                grant_id: g.grant_id,
            }),
            (State::Active, GrantStatus::Abandoned) => Some(Effect::CallRevoke {
                grant_id: g.grant_id,
            }),
            _ => None,
        };
        out.extend(call);
    }
    out
}

/// Validates a new request against the limits and the policy decision, and builds its
/// creating transition: PENDING, or APPROVED with a grant intent for break-glass.
pub fn create(
    new: NewRequest,
    decision: Decision,
    now: Timestamp,
    rules: &Rules,
    load: &RequesterLoad,
) -> Result<Transition, Refusal> {
    validate_spec(&new.spec)?;
    decision.check(&new.spec.policy_input())?;
    if new.spec.break_glass && new.spec.reason.trim().is_empty() {
        return Err(Refusal::Invalid {
            field: "reason",
            reason: "a break-glass request must say why".into(),
        });
    }
    check_requester_load(new.spec.break_glass, load, now, rules)?;
    let mut req = Request {
        id: new.id,
        version: 0,
        state: State::Pending,
        ending: None,
        requester: new.requester,
        principal: None,
        spec: new.spec,
        decision,
        approvals: Vec::new(),
        grants: Vec::new(),
        extensions: Vec::new(),
        revoke_failures: 0,
        stuck: false,
        end_detail: None,
        ended_by: None,
        created_at: now,
        approval_deadline: None,
        grant_deadline: None,
        granted_at: None,
        expires_at: None,
        ended_at: None,
    };
    let actor = req.requester.subject.clone();
    let mut times = TimePatch {
        created_at: Some(Stamp::now()),
        ..TimePatch::default()
    };
    let mut notices = vec![notice(NoticeKind::Created, &req, json!({}))];
    let mut effects = Vec::new();
    let kind;
    if req.spec.break_glass {
        kind = "request.created_break_glass";
        notices.push(notice(
            NoticeKind::BreakGlass,
            &req,
            json!({ "reason": req.spec.reason, "ticket": req.spec.ticket }),
        ));
        req.approvals.push(Approval {
            by: req.requester.person(),
            kind: "break_glass".into(),
            comment: req.spec.reason.clone(),
            at: now,
        });
        effects.push(intend_primary_grant(&mut req, &mut times, now, rules));
        req.state = State::Approved;
    } else {
        kind = "request.created";
        // Policy accepts any positive number; one beyond chrono's range must not panic here.
        let timeout = Duration::seconds(
            req.decision
                .approval_timeout_seconds
                .clamp(1, Limits::MAX_DURATION_SECONDS),
        );
        times.approval_deadline = Some(Stamp::NowPlus(timeout));
        req.approval_deadline = Some(now + timeout);
        if req.decision.auto_approve {
            effects.push(Effect::Followup(Event::AutoApprove));
            // Admin self-benefit: a policy the requester wrote approves their own request —
            // the requester by the same-person rule (a linked second login, the same
            // verified email). It still goes through (the policy says so), never quietly.
            let me = req.requester.person();
            for p in &mut req.decision.policies {
                let author = PersonRef {
                    subject: p.author.clone(),
                    verified_email: p.author_email.clone(),
                    links: Vec::new(),
                };
                p.self_authored = same_person(&author, &me);
            }
            let own: Vec<String> = req
                .decision
                .policies
                .iter()
                .filter(|p| p.self_authored)
                .map(|p| format!("{}@{}", p.name, p.version))
                .collect();
            if !own.is_empty() {
                notices.push(notice(
                    NoticeKind::SelfBenefit,
                    &req,
                    json!({ "policies": own, "requester": req.requester.subject }),
                ));
            }
        } else {
            notices.push(notice(
                NoticeKind::ApprovalNeeded,
                &req,
                json!({
                    "approver_groups": req.decision.approver_groups,
                    "approvals_required": req.decision.approvals_required,
                }),
            ));
        }
    }
    let details = json!({
        "from": Value::Null,
        "to": req.state.as_str(),
        "provider": req.spec.provider,
        "role": req.spec.role,
        "scope": req.spec.scope,
        "duration_seconds": req.spec.duration_seconds,
        "reason": req.spec.reason,
        "ticket": req.spec.ticket,
        "break_glass": req.spec.break_glass,
        "policy_version": req.decision.policy_version,
        "policies": req.decision.policies,
        "approvals_required": req.decision.approvals_required,
        "auto_approve": req.decision.auto_approve,
        "self_benefit": notices.iter().any(|n| n.kind == NoticeKind::SelfBenefit),
        "review_required": req.spec.break_glass
            || notices.iter().any(|n| n.kind == NoticeKind::SelfBenefit),
    });
    Ok(Transition {
        next: req,
        times,
        audit: AuditEntry {
            kind: kind.into(),
            actor,
            details,
        },
        notices,
        effects,
        guard: None,
        idempotency: None,
        revoke_first: Vec::new(),
        records_expiry: false,
    })
}

/// What the provider is asked to validate before request `id` is created: its first grant
/// as it would be if the grant intent were made `now` (the same grant id, subject, role,
/// scope and `not_after` a grant at that moment would carry).
pub fn probe_spec(
    id: RequestId,
    spec: &RequestSpec,
    subject: &str,
    now: Timestamp,
    rules: &Rules,
) -> jitsudo_providers::GrantSpec {
    let not_after = spec.primary_not_after(now + rules.grant_timeout);
    spec.grant_spec(id, grant_id_for(id, 0), subject, not_after)
}

/// The requester cap, then the break-glass cooldown.
fn check_requester_load(
    break_glass: bool,
    load: &RequesterLoad,
    now: Timestamp,
    rules: &Rules,
) -> Result<(), Refusal> {
    let cap = rules.max_open_per_requester;
    if cap > 0 && load.open >= cap {
        return Err(Refusal::TooManyLive { live: load.open });
    }
    // A cooldown beyond the calendar's range is none (as a config value that large was).
    if break_glass
        && let Some(until) = load
            .last_break_glass
            .and_then(|last| last.checked_add_signed(rules.break_glass_cooldown))
        && now < until
    {
        return Err(Refusal::BreakGlassCooldown { until });
    }
    Ok(())
}

/// The input rule for free text: at most `max` bytes, no control or invisible formatting
/// characters, and not blank when `required`.
pub fn check_text(field: &'static str, v: &str, max: usize, required: bool) -> Result<(), Refusal> {
    if required && v.trim().is_empty() {
        return Err(Refusal::Invalid {
            field,
            reason: "must not be empty".into(),
        });
    }
    if v.len() > max {
        return Err(Refusal::Invalid {
            field,
            reason: format!("is {} bytes long; the limit is {max}", v.len()),
        });
    }
    if let Some(reason) = super::text::hidden_reason(v, false) {
        return Err(Refusal::Invalid { field, reason });
    }
    Ok(())
}

fn validate_spec(spec: &RequestSpec) -> Result<(), Refusal> {
    let text = check_text;
    text("provider", &spec.provider, Limits::PROVIDER, true)?;
    text("role", &spec.role, Limits::ROLE, true)?;
    text("scope", &spec.scope, Limits::SCOPE, true)?;
    text("reason", &spec.reason, Limits::REASON, false)?;
    if let Some(t) = &spec.ticket {
        text("ticket", t, Limits::TICKET, true)?;
    }
    if spec.duration_seconds <= 0 {
        return Err(Refusal::Invalid {
            field: "duration",
            reason: format!("must be positive, got {}s", spec.duration_seconds),
        });
    }
    if spec.duration_seconds > Limits::MAX_DURATION_SECONDS {
        return Err(Refusal::Invalid {
            field: "duration",
            reason: format!(
                "{}s is above the hard limit of {}s",
                spec.duration_seconds,
                Limits::MAX_DURATION_SECONDS
            ),
        });
    }
    if spec.metadata.len() > Limits::METADATA_ENTRIES {
        return Err(Refusal::Invalid {
            field: "metadata",
            reason: format!(
                "has {} entries; the limit is {}",
                spec.metadata.len(),
                Limits::METADATA_ENTRIES
            ),
        });
    }
    for (k, v) in &spec.metadata {
        text("metadata key", k, Limits::METADATA_KEY, true)?;
        text("metadata value", v, Limits::METADATA_VALUE, false)?;
    }
    Ok(())
}

fn notice(kind: NoticeKind, req: &Request, extra: Value) -> Notice {
    let mut details = json!({
        "request_id": req.id,
        "requester": req.requester.subject,
        "provider": req.spec.provider,
        "role": req.spec.role,
        "scope": req.spec.scope,
    });
    if let (Value::Object(d), Value::Object(e)) = (&mut details, extra) {
        d.extend(e);
    }
    Notice { kind, details }
}

/// Commits the grant intent: a fresh grant id and the grant deadline, before any call.
fn intend_primary_grant(
    req: &mut Request,
    times: &mut TimePatch,
    now: Timestamp,
    rules: &Rules,
) -> Effect {
    let grant_id = grant_id_for(req.id, req.grants.len());
    req.grants.push(GrantEntry {
        grant_id,
        purpose: GrantPurpose::Primary,
        status: GrantStatus::Intended,
        provider_ref: String::new(),
        attempts: 0,
        evidence: None,
        last_error: None,
    });
    times.grant_deadline = Some(Stamp::NowPlus(rules.grant_timeout));
    req.grant_deadline = Some(now + rules.grant_timeout);
    Effect::CallGrant { grant_id }
}

/// A transition under construction.
struct Tx {
    from: State,
    next: Request,
    times: TimePatch,
    kind: &'static str,
    actor: String,
    details: Value,
    notices: Vec<Notice>,
    effects: Vec<Effect>,
    guard: Option<Guard>,
    /// The revokes among `effects` go out before the commit (see [`Transition::revoke_first`]).
    revoke_first: bool,
}

impl Tx {
    fn new(req: &Request, kind: &'static str, actor: impl Into<String>) -> Tx {
        Tx {
            from: req.state,
            next: req.clone(),
            times: TimePatch::default(),
            kind,
            actor: actor.into(),
            details: json!({}),
            notices: Vec::new(),
            effects: Vec::new(),
            guard: None,
            revoke_first: false,
        }
    }

    fn detail(mut self, key: &str, value: impl serde::Serialize) -> Tx {
        if let Value::Object(m) = &mut self.details {
            m.insert(
                key.into(),
                serde_json::to_value(value).unwrap_or(Value::Null),
            );
        }
        self
    }

    fn notify(&mut self, kind: NoticeKind, extra: Value) {
        self.notices.push(notice(kind, &self.next, extra));
    }

    /// Moves to ENDING and asks for the revoke of every grant not yet confirmed gone;
    /// with nothing left to revoke the request ends at once.
    fn begin_ending(&mut self, cause: EndingCause, detail: String, now: Timestamp) {
        self.next.state = State::Ending;
        self.next.ending = Some(cause);
        self.next.end_detail = Some(detail);
        for e in &mut self.next.extensions {
            if matches!(e.state, ExtensionState::Pending | ExtensionState::Granting) {
                e.state = ExtensionState::Abandoned;
            }
        }
        let calls: Vec<Effect> = outstanding_calls(&self.next);
        if calls.is_empty() {
            self.finish_ending(now);
        } else {
            self.effects.extend(calls);
        }
    }

    fn finish_ending(&mut self, now: Timestamp) {
        let cause = self.next.ending.unwrap_or(EndingCause::Revoked);
        self.next.state = cause.terminal();
        self.times.ended_at = Some(Stamp::now());
        self.next.ended_at = Some(now);
        self.kind = "request.ended";
        if self.next.stuck {
            self.next.stuck = false;
            self.notify(NoticeKind::StuckCleared, json!({}));
        }
        let detail = self.next.end_detail.clone();
        self.notify(
            NoticeKind::Ended,
            json!({ "state": self.next.state.as_str(), "detail": detail }),
        );
    }

    fn done(self) -> Transition {
        let mut details = self.details;
        if let Value::Object(m) = &mut details {
            m.insert("from".into(), json!(self.from.as_str()));
            m.insert("to".into(), json!(self.next.state.as_str()));
        }
        let revoke_first = if self.revoke_first {
            self.effects
                .iter()
                .filter_map(|e| match *e {
                    Effect::CallRevoke { grant_id } => Some(grant_id),
                    _ => None,
                })
                .collect()
        } else {
            Vec::new()
        };
        let records_expiry = matches!(self.from, State::Active | State::Ending)
            && self.next.ending == Some(EndingCause::Expired);
        Transition {
            revoke_first,
            records_expiry,
            next: self.next,
            times: self.times,
            audit: AuditEntry {
                kind: self.kind.into(),
                actor: self.actor,
                details,
            },
            notices: self.notices,
            effects: self.effects,
            guard: self.guard,
            idempotency: None,
        }
    }
}

/// Whether `caller` already did this on `req`: gave this approval, or denied, revoked
/// (this very subject, not merely the same person) or cancelled (the requester, any of
/// their identities) it. Decisions are idempotent per caller: when [`step`] refuses such a
/// repeat with a refusal for which [`Refusal::met_by_a_repeat`] holds, the caller is
/// answered with the request as it is (`Engine::decide`). Another identity of someone who
/// already approved is not a repeat: it is told so.
pub fn repeats_own_decision(req: &Request, caller: &Principal, verdict: Verdict) -> bool {
    let ended = |how: Verdict, who: &dyn Fn(&PersonRef) -> bool| {
        req.ended_by
            .as_ref()
            .is_some_and(|e| e.verdict == how && who(&e.by))
    };
    match verdict {
        Verdict::Approve => req
            .approvals
            .iter()
            .any(|a| a.kind == "approver" && a.by.subject == caller.subject),
        Verdict::Deny | Verdict::Revoke => ended(verdict, &|by| by.subject == caller.subject),
        Verdict::Cancel => ended(verdict, &|by| same_person(by, &caller.person())),
    }
}

impl Refusal {
    /// The refusals a repeated decision meets: the approval is on record already, or the
    /// request has moved on because of it.
    pub fn met_by_a_repeat(&self) -> bool {
        matches!(
            self,
            Refusal::AlreadyApproved
                | Refusal::NotAccepted { .. }
                | Refusal::Terminal { .. }
                | Refusal::AlreadyEnding
        )
    }
}

/// The lifecycle transition function (the table of docs/engine.md).
pub fn step(
    req: &Request,
    ev: Event,
    now: Timestamp,
    rules: &Rules,
) -> Result<Transition, Refusal> {
    use State::*;
    if req.state.is_terminal() {
        return Err(Refusal::Terminal { state: req.state });
    }
    let refuse = |ev: &Event| Refusal::NotAccepted {
        state: req.state,
        event: ev.name(),
    };
    match (req.state, ev) {
        // ---- timers: ignore stale, re-arm early, act on due ----
        (s, Event::ApprovalDeadline { deadline }) => {
            check_timer(s == Pending, req.approval_deadline, deadline, now)?;
            let mut tx = Tx::new(req, "request.timed_out", "system").detail("deadline", deadline);
            tx.next.state = TimedOut;
            tx.times.ended_at = Some(Stamp::now());
            tx.next.ended_at = Some(now);
            tx.notify(NoticeKind::TimedOut, json!({}));
            Ok(tx.done())
        }
        (s, Event::GrantDeadline { deadline }) => {
            check_timer(s == Approved, req.grant_deadline, deadline, now)?;
            let mut tx = Tx::new(req, "request.ending", "system").detail("deadline", deadline);
            tx.begin_ending(
                EndingCause::Failed,
                "the grant did not succeed before its deadline".into(),
                now,
            );
            Ok(tx.done())
        }
        (s, Event::Expiry { expires_at }) => {
            check_timer(s == Active, req.expires_at, expires_at, now)?;
            let mut tx = Tx::new(req, "request.ending", "system").detail("expires_at", expires_at);
            tx.begin_ending(EndingCause::Expired, "expired".into(), now);
            tx.revoke_first = true;
            Ok(tx.done())
        }

        // ---- decisions while PENDING ----
        (Pending, Event::AutoApprove) => {
            if !req.decision.auto_approve {
                return Err(Refusal::NotAnApprover);
            }
            check_deadline(req, now)?;
            let mut tx = Tx::new(req, "request.approved", "policy")
                .detail("policy_version", &req.decision.policy_version);
            tx.guard = Some(Guard::BeforeApprovalDeadline);
            tx.next.approvals.push(Approval {
                by: super::PersonRef {
                    subject: "policy".into(),
                    verified_email: None,
                    links: Vec::new(),
                },
                kind: "policy".into(),
                comment: format!("auto-approved by policy {}", req.decision.policy_version),
                at: now,
            });
            approve_now(&mut tx, now, rules);
            Ok(tx.done())
        }
        (Pending, Event::Approve { by, comment }) => {
            check_deadline(req, now)?;
            check_approver(req, &req.approvals, &by)?;
            check_len("comment", &comment, Limits::COMMENT)?;
            let mut tx = Tx::new(
                req,
                "request.approval_recorded",
                by.principal.subject.clone(),
            )
            .detail("comment", &comment);
            tx.guard = Some(Guard::BeforeApprovalDeadline);
            tx.next.approvals.push(Approval {
                by: by.principal.person(),
                kind: "approver".into(),
                comment,
                at: now,
            });
            let have = tx.next.approvals.len() as u32;
            let need = req.decision.approvals_required.max(1);
            tx = tx
                .detail("approvals", have)
                .detail("approvals_required", need);
            if have >= need {
                tx.kind = "request.approved";
                approve_now(&mut tx, now, rules);
            }
            Ok(tx.done())
        }
        (Pending, Event::Deny { by, reason }) => {
            check_deadline(req, now)?;
            check_decider(req, &by)?;
            check_len("reason", &reason, Limits::REASON)?;
            let mut tx = Tx::new(req, "request.denied", by.principal.subject.clone())
                .detail("reason", &reason);
            tx.guard = Some(Guard::BeforeApprovalDeadline);
            tx.next.state = Rejected;
            tx.next.end_detail = Some(format!("denied by {}: {reason}", by.principal.subject));
            tx.next.ended_by = Some(Box::new(EndedBy::new(Verdict::Deny, by.principal.person())));
            tx.times.ended_at = Some(Stamp::now());
            tx.next.ended_at = Some(now);
            tx.notify(
                NoticeKind::Denied,
                json!({ "by": by.principal.subject, "reason": reason }),
            );
            Ok(tx.done())
        }
        (Pending, Event::Cancel { by }) => {
            if !same_person(&by.person(), &req.requester.person()) {
                return Err(Refusal::NotRequester);
            }
            let mut tx = Tx::new(req, "request.cancelled", by.subject.clone());
            tx.next.state = Cancelled;
            tx.next.end_detail = Some("cancelled by the requester".into());
            tx.next.ended_by = Some(Box::new(EndedBy::new(Verdict::Cancel, by.person())));
            tx.times.ended_at = Some(Stamp::now());
            tx.next.ended_at = Some(now);
            tx.notify(NoticeKind::Cancelled, json!({}));
            Ok(tx.done())
        }

        // ---- granting ----
        (
            Approved | Active | Ending,
            Event::GrantSucceeded {
                grant_id,
                provider_ref,
            },
        ) => {
            let g = req
                .grant(grant_id)
                .ok_or(Refusal::UnknownGrant { grant_id })?;
            if g.status != GrantStatus::Intended {
                return Err(Refusal::Duplicate);
            }
            let purpose = g.purpose;
            let mut tx = Tx::new(req, "grant.succeeded", "system").detail("grant_id", grant_id);
            if let Some(g) = tx.next.grant_mut(grant_id) {
                g.status = GrantStatus::Active;
                g.provider_ref = provider_ref;
                g.last_error = None;
            }
            match (req.state, purpose) {
                (Approved, GrantPurpose::Primary)
                    if req.grant_deadline.is_some_and(|d| now >= d) =>
                {
                    // Too late: the grant's window (`not_after`) is already shorter than the
                    // approved duration. Take it back rather than activate a cut-short grant.
                    tx.kind = "request.ending";
                    if let Some(g) = tx.next.grant_mut(grant_id) {
                        g.status = GrantStatus::Abandoned;
                    }
                    tx.begin_ending(
                        EndingCause::Failed,
                        "the grant succeeded only after its deadline".into(),
                        now,
                    );
                }
                (Approved, GrantPurpose::Primary) => {
                    tx.kind = "request.active";
                    tx.next.state = Active;
                    let d = Duration::seconds(req.spec.duration_seconds);
                    tx.times.granted_at = Some(Stamp::now());
                    tx.times.expires_at = Some(Stamp::NowPlus(d));
                    tx.next.granted_at = Some(now);
                    tx.next.expires_at = Some(now + d);
                    tx.notify(
                        NoticeKind::Active,
                        json!({ "duration_seconds": req.spec.duration_seconds }),
                    );
                }
                (
                    Active,
                    GrantPurpose::Extension {
                        extension,
                        not_after,
                    },
                ) => {
                    tx.kind = "extension.active";
                    if let Some(e) = tx
                        .next
                        .extensions
                        .iter_mut()
                        .find(|e| e.number == extension)
                    {
                        e.state = ExtensionState::Active;
                    }
                    // The new window is exactly the one the provider granted.
                    tx.times.expires_at = Some(Stamp::At(not_after));
                    tx.next.expires_at = Some(not_after);
                    tx = tx
                        .detail("extension", extension)
                        .detail("expires_at", not_after);
                    tx.notify(
                        NoticeKind::Extended,
                        json!({ "extension": extension, "expires_at": not_after }),
                    );
                }
                _ => {
                    // A late success while ending (or of a grant given up): revoke it too.
                    tx.kind = "grant.late_success";
                    if let Some(g) = tx.next.grant_mut(grant_id) {
                        g.status = GrantStatus::Abandoned;
                    }
                    if req.state != Ending {
                        return Err(refuse(&Event::GrantSucceeded {
                            grant_id,
                            provider_ref: String::new(),
                        }));
                    }
                    tx.effects.push(Effect::CallRevoke { grant_id });
                }
            }
            Ok(tx.done())
        }
        (
            Approved | Active,
            Event::GrantFailed {
                grant_id,
                class,
                message,
            },
        ) => {
            let g = req
                .grant(grant_id)
                .ok_or(Refusal::UnknownGrant { grant_id })?;
            if g.status != GrantStatus::Intended {
                return Err(Refusal::Duplicate);
            }
            let purpose = g.purpose;
            let attempts = g.attempts + 1;
            let give_up = class == ErrorClass::Permanent || attempts >= rules.max_grant_attempts;
            let mut tx = Tx::new(req, "grant.attempt_failed", "system")
                .detail("grant_id", grant_id)
                .detail("attempt", attempts)
                .detail("class", class.as_str())
                .detail("error", &message);
            if let Some(g) = tx.next.grant_mut(grant_id) {
                g.attempts = attempts;
                g.last_error = Some(message.clone());
            }
            match (give_up, purpose) {
                (false, _) => tx.effects.push(Effect::RetryGrantLater {
                    grant_id,
                    attempt: attempts,
                }),
                (true, GrantPurpose::Primary) => {
                    tx.kind = "request.ending";
                    tx.begin_ending(
                        EndingCause::Failed,
                        format!("the grant failed: {message}"),
                        now,
                    );
                }
                (true, GrantPurpose::Extension { extension, .. }) => {
                    tx.kind = "extension.failed";
                    if let Some(g) = tx.next.grant_mut(grant_id) {
                        g.status = GrantStatus::Abandoned;
                    }
                    if let Some(e) = tx
                        .next
                        .extensions
                        .iter_mut()
                        .find(|e| e.number == extension)
                    {
                        e.state = ExtensionState::Failed;
                    }
                    tx.effects.push(Effect::CallRevoke { grant_id });
                    tx.notify(
                        NoticeKind::ExtensionFailed,
                        json!({ "extension": extension, "error": message }),
                    );
                }
            }
            Ok(tx.done())
        }
        (Ending, Event::GrantFailed { .. }) => Err(Refusal::Duplicate),

        // ---- revoking ----
        (Approved | Active, Event::Revoke { by, reason }) => {
            let is_requester = same_person(&by.principal.person(), &req.requester.person());
            if !(is_requester || by.approver_allowed || by.is_admin) {
                return Err(Refusal::NotAllowedToRevoke);
            }
            check_len("reason", &reason, Limits::REASON)?;
            let mut tx = Tx::new(req, "request.ending", by.principal.subject.clone())
                .detail("reason", &reason);
            tx.begin_ending(
                EndingCause::Revoked,
                format!("revoked by {}: {reason}", by.principal.subject),
                now,
            );
            tx.next.ended_by = Some(Box::new(EndedBy::new(
                Verdict::Revoke,
                by.principal.person(),
            )));
            Ok(tx.done())
        }
        (Approved, Event::Cancel { by }) => {
            if !same_person(&by.person(), &req.requester.person()) {
                return Err(Refusal::NotRequester);
            }
            let mut tx =
                Tx::new(req, "request.ending", by.subject.clone()).detail("cancelled", true);
            tx.begin_ending(
                EndingCause::Revoked,
                "cancelled by the requester while granting".into(),
                now,
            );
            tx.next.ended_by = Some(Box::new(EndedBy::new(Verdict::Cancel, by.person())));
            Ok(tx.done())
        }
        (Ending, Event::Revoke { .. } | Event::Cancel { .. }) => Err(Refusal::AlreadyEnding),
        (Approved | Active | Ending, Event::RevokeSucceeded { grant_id }) => {
            confirm_gone(req, grant_id, "revoke".into(), now)
        }
        (Approved | Active | Ending, Event::GoneAtProvider { grant_id, evidence }) => {
            confirm_gone(req, grant_id, evidence, now)
        }
        (Ending | Active, Event::RevokeFailed { grant_id, message }) => {
            let g = req
                .grant(grant_id)
                .ok_or(Refusal::UnknownGrant { grant_id })?;
            if g.status == GrantStatus::Revoked {
                return Err(Refusal::Duplicate);
            }
            // Outside ENDING only an abandoned extension grant is being revoked: a stray
            // report for live access must not make the actor revoke it.
            if req.state != Ending && g.status != GrantStatus::Abandoned {
                return Err(refuse(&Event::RevokeFailed { grant_id, message }));
            }
            let failures = req.revoke_failures + 1;
            let mut tx = Tx::new(req, "grant.revoke_failed", "system")
                .detail("grant_id", grant_id)
                .detail("failures", failures)
                .detail("error", &message);
            tx.next.revoke_failures = failures;
            if let Some(g) = tx.next.grant_mut(grant_id) {
                g.last_error = Some(message.clone());
            }
            if failures >= rules.stuck_after_failures.max(1) && !req.stuck {
                tx.next.stuck = true;
                tx.kind = "alert.revocation_stuck";
                tx.notify(
                    NoticeKind::StuckRevocation,
                    json!({ "failures": failures, "error": message }),
                );
            }
            tx.effects.push(Effect::RetryRevokeLater {
                grant_id,
                attempt: failures,
            });
            Ok(tx.done())
        }

        // ---- extensions ----
        (
            Active,
            Event::RequestExtension {
                by,
                by_seconds,
                reason,
            },
        ) => {
            if !same_person(&by.person(), &req.requester.person()) {
                return Err(Refusal::NotRequester);
            }
            if req.spec.break_glass {
                return Err(Refusal::BreakGlassNotExtendable);
            }
            if by_seconds <= 0 {
                return Err(Refusal::Invalid {
                    field: "extension",
                    reason: format!("must be positive, got {by_seconds}s"),
                });
            }
            if by_seconds > Limits::MAX_DURATION_SECONDS {
                return Err(Refusal::Invalid {
                    field: "extension",
                    reason: format!(
                        "{by_seconds}s is above the hard limit of {}s",
                        Limits::MAX_DURATION_SECONDS
                    ),
                });
            }
            check_len("reason", &reason, Limits::REASON)?;
            if let Some(e) = req
                .extensions
                .iter()
                .find(|e| matches!(e.state, ExtensionState::Pending | ExtensionState::Granting))
            {
                return Err(Refusal::ExtensionInProgress { number: e.number });
            }
            let total = req.total_duration_seconds().saturating_add(by_seconds);
            let max = req.decision.max_total_duration_seconds;
            if total > max {
                return Err(Refusal::ExtensionExceedsMaximum {
                    total_seconds: total,
                    max_seconds: max,
                });
            }
            let number = req.extensions.len() as u32 + 1;
            let mut tx = Tx::new(req, "extension.requested", by.subject.clone())
                .detail("extension", number)
                .detail("by_seconds", by_seconds)
                .detail("reason", &reason);
            tx.next.extensions.push(Extension {
                number,
                by_seconds,
                reason,
                state: ExtensionState::Pending,
                approvals: Vec::new(),
                requested_at: now,
                grant_id: None,
            });
            if req.decision.extend_requires_approval {
                tx.notify(
                    NoticeKind::ExtensionRequested,
                    json!({ "extension": number, "by_seconds": by_seconds, "approver_groups": req.decision.approver_groups }),
                );
            } else {
                tx.kind = "extension.approved";
                intend_extension_grant(&mut tx, number);
            }
            Ok(tx.done())
        }
        (
            Active,
            Event::ApproveExtension {
                number,
                by,
                comment,
            },
        ) => {
            let ext = pending_extension(req, number)?;
            check_approver(req, &ext.approvals, &by)?;
            check_len("comment", &comment, Limits::COMMENT)?;
            let mut tx = Tx::new(
                req,
                "extension.approval_recorded",
                by.principal.subject.clone(),
            )
            .detail("extension", number)
            .detail("comment", &comment);
            let need = req.decision.approvals_required.max(1);
            let mut have = 0;
            if let Some(e) = tx.next.extensions.iter_mut().find(|e| e.number == number) {
                e.approvals.push(Approval {
                    by: by.principal.person(),
                    kind: "approver".into(),
                    comment,
                    at: now,
                });
                have = e.approvals.len() as u32;
            }
            if have >= need {
                tx.kind = "extension.approved";
                intend_extension_grant(&mut tx, number);
            }
            Ok(tx.done())
        }
        (Active, Event::DenyExtension { number, by, reason }) => {
            pending_extension(req, number)?;
            check_decider(req, &by)?;
            check_len("reason", &reason, Limits::REASON)?;
            let mut tx = Tx::new(req, "extension.denied", by.principal.subject.clone())
                .detail("extension", number)
                .detail("reason", &reason);
            if let Some(e) = tx.next.extensions.iter_mut().find(|e| e.number == number) {
                e.state = ExtensionState::Rejected;
            }
            tx.notify(
                NoticeKind::ExtensionDenied,
                json!({ "extension": number, "reason": reason }),
            );
            Ok(tx.done())
        }

        (_, ev) => Err(refuse(&ev)),
    }
}

fn check_timer(
    right_state: bool,
    current: Option<Timestamp>,
    armed: Timestamp,
    now: Timestamp,
) -> Result<(), Refusal> {
    if !right_state || current != Some(armed) {
        return Err(Refusal::StaleTimer);
    }
    if now < armed {
        return Err(Refusal::TimerEarly { deadline: armed });
    }
    Ok(())
}

fn check_deadline(req: &Request, now: Timestamp) -> Result<(), Refusal> {
    match req.approval_deadline {
        Some(deadline) if now >= deadline => Err(Refusal::ApprovalDeadlinePassed { deadline }),
        _ => Ok(()),
    }
}

fn check_len(field: &'static str, v: &str, max: usize) -> Result<(), Refusal> {
    if v.len() > max {
        return Err(Refusal::Invalid {
            field,
            reason: format!("is {} bytes long; the limit is {max}", v.len()),
        });
    }
    Ok(())
}

/// The requester never decides on their own request; the policy must allow the approver.
fn check_decider(req: &Request, by: &Decider) -> Result<(), Refusal> {
    if same_person(&by.principal.person(), &req.requester.person()) {
        return Err(Refusal::SelfApproval);
    }
    if !by.approver_allowed {
        return Err(Refusal::NotAnApprover);
    }
    Ok(())
}

/// As [`check_decider`], and the same person never counts twice towards a quorum.
fn check_approver(req: &Request, so_far: &[Approval], by: &Decider) -> Result<(), Refusal> {
    check_decider(req, by)?;
    let person = by.principal.person();
    if so_far.iter().any(|a| same_person(&a.by, &person)) {
        return Err(Refusal::AlreadyApproved);
    }
    Ok(())
}

fn approve_now(tx: &mut Tx, now: Timestamp, rules: &Rules) {
    tx.next.state = State::Approved;
    let call = intend_primary_grant(&mut tx.next, &mut tx.times, now, rules);
    tx.effects.push(call);
    tx.notify(NoticeKind::Approved, json!({}));
}

fn pending_extension(req: &Request, number: u32) -> Result<&Extension, Refusal> {
    req.extensions
        .iter()
        .find(|e| e.number == number && e.state == ExtensionState::Pending)
        .ok_or(Refusal::UnknownExtension { number })
}

/// The extension's grant intent: the new window starts where the current one ends.
fn intend_extension_grant(tx: &mut Tx, number: u32) {
    let grant_id = grant_id_for(tx.next.id, tx.next.grants.len());
    let by = tx
        .next
        .extensions
        .iter()
        .find(|e| e.number == number)
        .map(|e| e.by_seconds)
        .unwrap_or(0);
    let base = tx.next.expires_at.unwrap_or(tx.next.created_at);
    let not_after = base + Duration::seconds(by);
    tx.next.grants.push(GrantEntry {
        grant_id,
        purpose: GrantPurpose::Extension {
            extension: number,
            not_after,
        },
        status: GrantStatus::Intended,
        provider_ref: String::new(),
        attempts: 0,
        evidence: None,
        last_error: None,
    });
    if let Some(e) = tx.next.extensions.iter_mut().find(|e| e.number == number) {
        e.state = ExtensionState::Granting;
        e.grant_id = Some(grant_id);
    }
    tx.effects.push(Effect::CallGrant { grant_id });
}

fn confirm_gone(
    req: &Request,
    grant_id: Uuid,
    evidence: String,
    now: Timestamp,
) -> Result<Transition, Refusal> {
    let g = req
        .grant(grant_id)
        .ok_or(Refusal::UnknownGrant { grant_id })?;
    if g.status == GrantStatus::Revoked {
        return Err(Refusal::Duplicate);
    }
    // Outside ENDING only an abandoned extension grant is revoked.
    if req.state != State::Ending && g.status != GrantStatus::Abandoned {
        return Err(Refusal::NotAccepted {
            state: req.state,
            event: "revoke_succeeded",
        });
    }
    let mut tx = Tx::new(req, "grant.revoked", "system")
        .detail("grant_id", grant_id)
        .detail("evidence", &evidence);
    if let Some(g) = tx.next.grant_mut(grant_id) {
        g.status = GrantStatus::Revoked;
        g.evidence = Some(evidence);
        g.last_error = None;
    }
    tx.next.revoke_failures = 0;
    let all_gone = tx
        .next
        .grants
        .iter()
        .all(|g| g.status == GrantStatus::Revoked);
    // Progress on one grant does not clear the stuck alert while others still fail.
    if req.state == State::Ending && all_gone {
        tx.finish_ending(now);
    } else if req.state != State::Ending
        && req.stuck
        && !tx
            .next
            .grants
            .iter()
            .any(|g| g.status == GrantStatus::Abandoned)
    {
        // The stuck revoke was of an abandoned extension grant, and none is left.
        tx.next.stuck = false;
        tx.notify(NoticeKind::StuckCleared, json!({}));
    }
    Ok(tx.done())
}
