//! The outcome of evaluating the policy set for one request, stored with the request, and the
//! checks the engine applies to the request against it.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::input::RequestInput;

/// Defaults for approval rules a policy leaves undefined (documented in `docs/policy.md`).
pub const DEFAULT_APPROVALS_REQUIRED: u32 = 1;
pub const DEFAULT_MAX_DURATION_SECONDS: i64 = 3600;
pub const DEFAULT_APPROVAL_TIMEOUT_SECONDS: i64 = 3600;

/// Deny reason when no policy is installed at all (a fresh install denies everything).
pub const NO_POLICY_REASON: &str = "no policy is installed; an admin must apply policies";

/// One policy module of the set a decision was made with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStamp {
    pub name: String,
    pub version: i64,
    pub author: String,
    /// The author's verified email as last seen on their tokens (filled in by the engine
    /// for an auto-approved request, so the same-person rule can compare people). Used at
    /// create only, never stored: the audit log is append-only and holds no more personal
    /// data than it needs.
    #[serde(skip)]
    pub author_email: Option<String>,
    /// Set at create when the author is the requester by the same-person rule (the same
    /// subject, a linked login, or the same verified email): admin self-benefit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub self_authored: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub eligible: bool,
    /// Never empty when `eligible` is false.
    pub deny_reasons: Vec<String>,
    pub auto_approve: bool,
    pub approvals_required: u32,
    /// Sorted and without duplicates.
    pub approver_groups: Vec<String>,
    pub max_duration_seconds: i64,
    pub max_total_duration_seconds: i64,
    pub approval_timeout_seconds: i64,
    pub extend_requires_approval: bool,
    pub break_glass_allowed: bool,
    pub reason_required: bool,
    /// The whole ticket must match (anchors are implied).
    pub ticket_pattern: Option<String>,
    /// Fingerprint of the policy set (`PolicySet::fingerprint`).
    pub policy_version: String,
    pub policies: Vec<PolicyStamp>,
}

/// Why a request does not pass its decision. Each message says what was wrong and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyRefusal {
    #[error(
        "the policy does not allow this request: {}; request a role you are eligible for, or ask an admin to change the policy",
        .reasons.join("; ")
    )]
    NotEligible { reasons: Vec<String> },
    #[error(
        "the requested duration {} is longer than the policy allows ({}); request {} or less",
        human(*.requested), human(*.max), human(*.max)
    )]
    DurationTooLong { requested: i64, max: i64 },
    #[error(
        "this extension would bring the total duration to {}, more than the policy allows ({}); extend by at most {}",
        human(*.requested_total), human(*.max_total), human(.max_total.saturating_sub(*.granted).max(0))
    )]
    TotalDurationTooLong {
        granted: i64,
        requested_total: i64,
        max_total: i64,
    },
    #[error("the policy requires a reason for this request; say what you need the access for")]
    ReasonRequired,
    #[error(
        "the policy requires a ticket reference for this request; give the ticket of the change or incident (format `{pattern}`)"
    )]
    TicketRequired { pattern: String },
    #[error(
        "ticket `{ticket}` does not have the required format `{pattern}`; give the full ticket reference"
    )]
    TicketMalformed { ticket: String, pattern: String },
    #[error(
        "the policy does not permit break-glass for you on this target; submit a normal request for approval instead"
    )]
    BreakGlassNotAllowed,
}

impl Decision {
    /// Checks a new request against this decision. Break-glass always needs a reason, whatever
    /// `reason_required` says: it is reviewed afterwards and the review needs something to read.
    pub fn check(&self, request: &RequestInput) -> Result<(), PolicyRefusal> {
        if !self.eligible {
            return Err(PolicyRefusal::NotEligible {
                reasons: self.deny_reasons.clone(),
            });
        }
        if request.break_glass && !self.break_glass_allowed {
            return Err(PolicyRefusal::BreakGlassNotAllowed);
        }
        if request.duration_seconds > self.max_duration_seconds {
            return Err(PolicyRefusal::DurationTooLong {
                requested: request.duration_seconds,
                max: self.max_duration_seconds,
            });
        }
        if (self.reason_required || request.break_glass) && is_blank(&request.reason) {
            return Err(PolicyRefusal::ReasonRequired);
        }
        if let Some(pattern) = &self.ticket_pattern {
            let ticket = match request.ticket.as_deref().map(str::trim) {
                Some(t) if !t.is_empty() => t,
                _ => {
                    return Err(PolicyRefusal::TicketRequired {
                        pattern: pattern.clone(),
                    });
                }
            };
            // The pattern was validated when the decision was made; a stored decision that no
            // longer compiles must still refuse rather than let any ticket through.
            let matches = full_match(pattern).is_ok_and(|re| re.is_match(ticket));
            if !matches {
                return Err(PolicyRefusal::TicketMalformed {
                    ticket: ticket.to_string(),
                    pattern: pattern.clone(),
                });
            }
        }
        Ok(())
    }

    /// Checks an extension of `extra_seconds` on a request that already has `granted_seconds`
    /// of access (initial duration plus earlier extensions).
    pub fn check_extension(
        &self,
        granted_seconds: i64,
        extra_seconds: i64,
    ) -> Result<(), PolicyRefusal> {
        if !self.eligible {
            return Err(PolicyRefusal::NotEligible {
                reasons: self.deny_reasons.clone(),
            });
        }
        if extra_seconds > self.max_duration_seconds {
            return Err(PolicyRefusal::DurationTooLong {
                requested: extra_seconds,
                max: self.max_duration_seconds,
            });
        }
        let requested_total = granted_seconds.saturating_add(extra_seconds);
        if requested_total > self.max_total_duration_seconds {
            return Err(PolicyRefusal::TotalDurationTooLong {
                granted: granted_seconds,
                requested_total,
                max_total: self.max_total_duration_seconds,
            });
        }
        Ok(())
    }
}

fn is_blank(s: &Option<String>) -> bool {
    s.as_deref().is_none_or(|s| s.trim().is_empty())
}

/// Compiles a ticket pattern so that it must match the whole ticket.
pub(super) fn full_match(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
}

/// `5400` → `1h30m (5400s)`: readable, and still exact for scripts that parse the seconds.
fn human(seconds: i64) -> String {
    let (h, m, s) = (seconds / 3600, (seconds % 3600) / 60, seconds % 60);
    let mut out = String::new();
    if h != 0 {
        out.push_str(&format!("{h}h"));
    }
    if m != 0 {
        out.push_str(&format!("{m}m"));
    }
    if s != 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    if h != 0 || m != 0 {
        out.push_str(&format!(" ({seconds}s)"));
    }
    out
}

impl fmt::Display for PolicyStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{} by {}", self.name, self.version, self.author)
    }
}
