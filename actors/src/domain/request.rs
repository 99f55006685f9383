//! The request record: what was asked, what policy decided, and where it is in its life.

use std::collections::BTreeMap;
use std::fmt;

use chrono::Duration;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{PersonRef, Principal, RequestId, Timestamp};
use crate::policy::Decision;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Pending,
    Approved,
    Active,
    Ending,
    Expired,
    Revoked,
    Rejected,
    Cancelled,
    TimedOut,
    Failed,
}

impl State {
    pub const ALL: [State; 10] = [
        State::Pending,
        State::Approved,
        State::Active,
        State::Ending,
        State::Expired,
        State::Revoked,
        State::Rejected,
        State::Cancelled,
        State::TimedOut,
        State::Failed,
    ];

    /// The states a committed transition may move this one to (the lifecycle table of
    /// docs/engine.md; the domain's property tests hold `step` to it). A request is created
    /// PENDING.
    pub fn moves(self) -> &'static [State] {
        use State::*;
        match self {
            Pending => &[Pending, Approved, Rejected, Cancelled, TimedOut],
            Approved => &[Approved, Active, Ending],
            Active => &[Active, Ending],
            Ending => &[Ending, Expired, Revoked, Failed],
            Expired | Revoked | Rejected | Cancelled | TimedOut | Failed => &[],
        }
    }

    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            State::Pending | State::Approved | State::Active | State::Ending
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "PENDING",
            State::Approved => "APPROVED",
            State::Active => "ACTIVE",
            State::Ending => "ENDING",
            State::Expired => "EXPIRED",
            State::Revoked => "REVOKED",
            State::Rejected => "REJECTED",
            State::Cancelled => "CANCELLED",
            State::TimedOut => "TIMED_OUT",
            State::Failed => "FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request is ENDING, which decides its terminal state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndingCause {
    Expired,
    Revoked,
    Failed,
}

impl EndingCause {
    pub fn terminal(self) -> State {
        match self {
            EndingCause::Expired => State::Expired,
            EndingCause::Revoked => State::Revoked,
            EndingCause::Failed => State::Failed,
        }
    }
}

/// Input limits (documented in docs/policy.md). Oversized input is refused, never truncated.
pub struct Limits;

impl Limits {
    pub const PROVIDER: usize = 64;
    pub const ROLE: usize = 256;
    pub const SCOPE: usize = 1024;
    pub const REASON: usize = 1024;
    pub const TICKET: usize = 128;
    pub const METADATA_ENTRIES: usize = 32;
    pub const METADATA_KEY: usize = 64;
    pub const METADATA_VALUE: usize = 256;
    pub const COMMENT: usize = 1024;
    pub const IDEMPOTENCY_KEY: usize = 128;
    /// A principal's subject (OIDC allows 255 ASCII characters).
    pub const SUBJECT: usize = 256;
    /// One year: longer is never "just in time".
    pub const MAX_DURATION_SECONDS: i64 = 366 * 24 * 3600;
}

/// What the requester asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSpec {
    pub provider: String,
    pub role: String,
    pub scope: String,
    pub duration_seconds: i64,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub ticket: Option<String>,
    #[serde(default)]
    pub break_glass: bool,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Everything `create` needs besides the policy decision.
#[derive(Clone, Debug)]
pub struct NewRequest {
    pub id: RequestId,
    pub requester: Principal,
    pub spec: RequestSpec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub by: PersonRef,
    /// `policy` for an auto-approval.
    pub kind: String,
    #[serde(default)]
    pub comment: String,
    pub at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantStatus {
    /// The intent is committed; the provider has not confirmed (the call may be in flight).
    Intended,
    /// The provider confirmed the grant.
    Active,
    /// Given up (extension that failed): must be revoked, it may be partially applied.
    Abandoned,
    /// The provider confirmed the revoke (or inspect confirmed it is gone).
    Revoked,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum GrantPurpose {
    /// The request's own grant: `not_after = grant_deadline + duration`.
    Primary,
    /// The grant of an extension: its `not_after` is fixed at its intent.
    Extension {
        extension: u32,
        not_after: Timestamp,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantEntry {
    pub grant_id: Uuid,
    pub purpose: GrantPurpose,
    pub status: GrantStatus,
    #[serde(default)]
    pub provider_ref: String,
    /// Failed attempts of the grant call so far.
    #[serde(default)]
    pub attempts: u32,
    /// How the revoke was confirmed ("revoke" or "inspect: gone").
    #[serde(default)]
    pub evidence: Option<String>,
    /// The provider's answer to the last failed grant or revoke call, until a call
    /// succeeds: why a request is still APPROVED or ENDING (`jitsudo status` shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtensionState {
    Pending,
    Granting,
    Active,
    Rejected,
    Failed,
    /// The request ended before the extension took effect.
    Abandoned,
}

/// An extension: a child record with its own approvals and its own grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extension {
    pub number: u32,
    pub by_seconds: i64,
    pub reason: String,
    pub state: ExtensionState,
    pub approvals: Vec<Approval>,
    pub requested_at: Timestamp,
    #[serde(default)]
    pub grant_id: Option<Uuid>,
}

/// A request as stored. `version` is bumped by the store on every committed transition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: RequestId,
    pub version: i64,
    pub state: State,
    #[serde(default)]
    pub ending: Option<EndingCause>,
    pub requester: Principal,
    /// The requester as the provider knows them (identity mapping at create); `None` for
    /// requests made before mapping existed, whose grants use the requester's subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    pub spec: RequestSpec,
    pub decision: Decision,
    #[serde(default)]
    pub approvals: Vec<Approval>,
    #[serde(default)]
    pub grants: Vec<GrantEntry>,
    #[serde(default)]
    pub extensions: Vec<Extension>,
    /// Consecutive revoke failures while ENDING.
    #[serde(default)]
    pub revoke_failures: u32,
    /// The stuck-revocation alert is raised and not yet cleared.
    #[serde(default)]
    pub stuck: bool,
    #[serde(default)]
    pub end_detail: Option<String>,
    /// Who ended it by their own act (denied, cancelled, revoked): the same act repeated by
    /// the same caller is answered, not refused ([`crate::domain::repeats_own_decision`]).
    /// Boxed: a live request carries none, and the inline struct would add 80 bytes to
    /// every request a shard holds (measured in docs/benchmarks.md, issue 14).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<Box<EndedBy>>,
    // Times. Deadlines are set by the database clock of the committing transaction.
    pub created_at: Timestamp,
    pub approval_deadline: Option<Timestamp>,
    pub grant_deadline: Option<Timestamp>,
    pub granted_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
}

impl Request {
    /// Why this request needs an after-the-fact review by an admin or auditor, if it does:
    /// break-glass, or auto-approval by a policy version its own requester wrote.
    pub fn review_reason(&self) -> Option<&'static str> {
        if self.spec.break_glass {
            Some("break-glass")
        } else if self.decision.auto_approve
            && self
                .decision
                .policies
                .iter()
                .any(|p| p.self_authored || p.author == self.requester.subject)
        {
            Some("auto-approved by a policy its requester wrote")
        } else {
            None
        }
    }

    pub fn shard(&self, shards: u32) -> u32 {
        self.id.shard(shards)
    }

    pub fn grant(&self, grant_id: Uuid) -> Option<&GrantEntry> {
        self.grants.iter().find(|g| g.grant_id == grant_id)
    }

    pub(crate) fn grant_mut(&mut self, grant_id: Uuid) -> Option<&mut GrantEntry> {
        self.grants.iter_mut().find(|g| g.grant_id == grant_id)
    }

    /// The absolute end the provider is told to enforce for this grant.
    pub fn not_after(&self, grant: &GrantEntry) -> Option<Timestamp> {
        match grant.purpose {
            GrantPurpose::Primary => self.grant_deadline.map(|d| self.spec.primary_not_after(d)),
            GrantPurpose::Extension { not_after, .. } => Some(not_after),
        }
    }

    /// Who the provider grants to: the mapped principal, or the subject for older requests.
    pub fn cloud_principal(&self) -> &str {
        self.principal.as_deref().unwrap_or(&self.requester.subject)
    }

    /// The provider's view of a grant of this request.
    pub fn grant_spec(&self, grant: &GrantEntry) -> Option<jitsudo_providers::GrantSpec> {
        Some(self.spec.grant_spec(
            self.id,
            grant.grant_id,
            self.cloud_principal(),
            self.not_after(grant)?,
        ))
    }

    pub fn grant_record(&self, grant: &GrantEntry) -> Option<jitsudo_providers::GrantRecord> {
        let spec = self.grant_spec(grant)?;
        let mut rec = jitsudo_providers::GrantRecord::from_spec(&spec);
        rec.provider_ref = grant.provider_ref.clone();
        Some(rec)
    }

    /// Seconds granted so far including active extensions.
    pub fn total_duration_seconds(&self) -> i64 {
        self.spec.duration_seconds
            + self
                .extensions
                .iter()
                .filter(|e| matches!(e.state, ExtensionState::Active))
                .map(|e| e.by_seconds)
                .sum::<i64>()
    }

    /// Applies the database clock's reading to the times a transition set relative to "now".
    pub fn apply_times(&mut self, patch: &TimePatch, db_now: Timestamp) {
        let set = |slot: &mut Option<Timestamp>, stamp: &Option<Stamp>| {
            if let Some(s) = stamp {
                *slot = Some(s.resolve(db_now));
            }
        };
        if let Some(s) = &patch.created_at {
            self.created_at = s.resolve(db_now);
        }
        set(&mut self.approval_deadline, &patch.approval_deadline);
        set(&mut self.grant_deadline, &patch.grant_deadline);
        set(&mut self.granted_at, &patch.granted_at);
        set(&mut self.expires_at, &patch.expires_at);
        set(&mut self.ended_at, &patch.ended_at);
    }
}

/// A time a transition sets: relative to the committing transaction's database clock, or
/// an absolute instant derived from times already stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stamp {
    NowPlus(Duration),
    At(Timestamp),
}

impl Stamp {
    pub fn now() -> Stamp {
        Stamp::NowPlus(Duration::zero())
    }

    pub fn resolve(self, db_now: Timestamp) -> Timestamp {
        match self {
            Stamp::NowPlus(d) => db_now + d,
            Stamp::At(t) => t,
        }
    }
}

/// The request times a transition sets; `None` leaves a time as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimePatch {
    pub created_at: Option<Stamp>,
    pub approval_deadline: Option<Stamp>,
    pub grant_deadline: Option<Stamp>,
    pub granted_at: Option<Stamp>,
    pub expires_at: Option<Stamp>,
    pub ended_at: Option<Stamp>,
}

/// A person's say on a request: the two decisions on a pending one, and the two ways a
/// person ends one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    Deny,
    Cancel,
    Revoke,
}

/// Who ended a request by their own act, and which.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedBy {
    pub verdict: Verdict,
    pub by: PersonRef,
}

impl EndedBy {
    pub fn new(verdict: Verdict, by: PersonRef) -> Self {
        EndedBy { verdict, by }
    }
}

impl RequestSpec {
    /// The end of the primary grant when its intent's deadline is `grant_deadline`: the
    /// grant may succeed as late as that, and then lasts the requested duration.
    pub fn primary_not_after(&self, grant_deadline: Timestamp) -> Timestamp {
        grant_deadline + Duration::seconds(self.duration_seconds.max(0))
    }

    /// The one constructor of a [`jitsudo_providers::GrantSpec`]: for a grant of request
    /// `id`, and for the provider's check of a request about to be created (see
    /// [`crate::domain::probe_spec`]).
    pub fn grant_spec(
        &self,
        id: RequestId,
        grant_id: Uuid,
        subject: &str,
        not_after: Timestamp,
    ) -> jitsudo_providers::GrantSpec {
        jitsudo_providers::GrantSpec {
            grant_id,
            request_id: id.0,
            subject: subject.to_owned(),
            role: self.role.clone(),
            scope: self.scope.clone(),
            not_after,
            metadata: self.metadata.clone(),
        }
    }

    /// The `request` part of the policy input document.
    pub fn policy_input(&self) -> crate::policy::RequestInput {
        crate::policy::RequestInput {
            provider: self.provider.clone(),
            role: self.role.clone(),
            scope: self.scope.clone(),
            duration_seconds: self.duration_seconds,
            reason: (!self.reason.is_empty()).then(|| self.reason.clone()),
            ticket: self.ticket.clone(),
            break_glass: self.break_glass,
            metadata: self.metadata.clone(),
        }
    }
}

impl Principal {
    /// The principal as the policy input document shows it.
    pub fn policy_input(&self) -> crate::policy::Principal {
        crate::policy::Principal {
            subject: self.subject.clone(),
            email: self.email.clone(),
            email_verified: self.email_verified,
            groups: self.groups.clone(),
            trust_tier: self.trust_tier,
        }
    }
}
