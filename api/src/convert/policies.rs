//! PolicyService's messages: stored policies and what an evaluation decided.

use jitsudo_actors::domain::Timestamp;
use jitsudo_actors::policy::{Decision, PolicySource, PolicyStamp};
use jitsudo_proto::v1;

use super::ts;

/// A policy version as stored at `at`.
pub fn policy(p: &PolicySource, at: Timestamp) -> v1::Policy {
    v1::Policy {
        name: p.name.clone(),
        version: p.version,
        rego: p.rego.clone(),
        author: p.author.clone(),
        created_at: Some(ts(at)),
    }
}

/// The policies in force, and the fingerprint of the set this node evaluates.
pub fn list(ps: &[(PolicySource, Timestamp)], policy_version: String) -> v1::ListPoliciesResponse {
    v1::ListPoliciesResponse {
        policies: ps.iter().map(|(p, at)| policy(p, *at)).collect(),
        policy_version,
    }
}

pub fn deleted(deleted: bool) -> v1::DeletePolicyResponse {
    v1::DeletePolicyResponse { deleted }
}

/// A policy a decision came from: named and versioned, its text left out.
fn stamp(p: &PolicyStamp) -> v1::Policy {
    v1::Policy {
        name: p.name.clone(),
        version: p.version,
        rego: String::new(),
        author: p.author.clone(),
        created_at: None,
    }
}

pub fn evaluation(decision: Decision, approver_allowed: bool) -> v1::EvalPolicyResponse {
    v1::EvalPolicyResponse {
        decision_json: serde_json::to_string(&decision).unwrap_or_default(),
        eligible: decision.eligible,
        deny_reasons: decision.deny_reasons.clone(),
        approver_allowed,
        policies: decision.policies.iter().map(stamp).collect(),
        policy_version: decision.policy_version,
    }
}
