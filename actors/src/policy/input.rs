//! The input document every policy sees as `input`. Its JSON shape is a public contract,
//! documented field by field in `docs/policy.md`; change both together.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A person or bot as the policy sees them: the requester, or the approver being checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// OIDC subject (`sub`), or the bot's name.
    pub subject: String,
    /// Email claim; trust it only together with `email_verified`.
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub email_verified: bool,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub trust_tier: i64,
}

/// What is being asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestInput {
    pub provider: String,
    pub role: String,
    /// Provider-specific target (account, subscription, project, namespace); may be empty.
    #[serde(default)]
    pub scope: String,
    pub duration_seconds: i64,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub ticket: Option<String>,
    #[serde(default)]
    pub break_glass: bool,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// An approval already recorded on the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalInput {
    pub subject: String,
    #[serde(default)]
    pub email: Option<String>,
    pub at: DateTime<Utc>,
}

/// Everything a policy decides on. `now` comes from the caller (the database clock), never
/// from the evaluating node, so that a decision can be replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyInput {
    pub requester: Principal,
    pub request: RequestInput,
    /// Set only when asking whether this person may approve (`approver_allowed`).
    pub approver: Option<Principal>,
    pub approvals: Vec<ApprovalInput>,
    pub now: DateTime<Utc>,
}

impl PolicyInput {
    /// An input for a new request: no approver, no approvals yet.
    pub fn new(requester: Principal, request: RequestInput, now: DateTime<Utc>) -> Self {
        PolicyInput {
            requester,
            request,
            approver: None,
            approvals: Vec::new(),
            now,
        }
    }

    pub fn with_approver(mut self, approver: Principal) -> Self {
        self.approver = Some(approver);
        self
    }

    pub fn with_approvals(mut self, approvals: Vec<ApprovalInput>) -> Self {
        self.approvals = approvals;
        self
    }
}

// `now_unix` is derived from `now` so the two can never disagree.
#[derive(Serialize)]
struct DocumentRef<'a> {
    requester: &'a Principal,
    request: &'a RequestInput,
    approver: Option<&'a Principal>,
    approvals: &'a [ApprovalInput],
    now: &'a DateTime<Utc>,
    now_unix: i64,
}

#[derive(Deserialize)]
struct Document {
    requester: Principal,
    request: RequestInput,
    #[serde(default)]
    approver: Option<Principal>,
    #[serde(default)]
    approvals: Vec<ApprovalInput>,
    now: DateTime<Utc>,
}

impl Serialize for PolicyInput {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        DocumentRef {
            requester: &self.requester,
            request: &self.request,
            approver: self.approver.as_ref(),
            approvals: &self.approvals,
            now: &self.now,
            now_unix: self.now.timestamp(),
        }
        .serialize(serializer)
    }
}

/// Accepts the documented shape (for `policy eval`-style tools); `now_unix` is ignored and
/// recomputed from `now`.
impl<'de> Deserialize<'de> for PolicyInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let doc = Document::deserialize(deserializer)?;
        Ok(PolicyInput {
            requester: doc.requester,
            request: doc.request,
            approver: doc.approver,
            approvals: doc.approvals,
            now: doc.now,
        })
    }
}
