//! PrincipalService's messages: the caller as authenticated, and stored principal records.

use jitsudo_actors::engine::types::PrincipalRecord;
use jitsudo_proto::v1;

use super::ts;
use crate::state::Caller;

pub fn caller(c: &Caller) -> v1::Principal {
    let p = &c.principal;
    v1::Principal {
        subject: p.subject.clone(),
        email: p.email.clone().unwrap_or_default(),
        email_verified: p.email_verified,
        groups: p.groups.clone(),
        trust_tier: p.trust_tier,
        admin: c.admin,
        auditor: c.auditor,
    }
}

pub fn record(p: PrincipalRecord) -> v1::PrincipalRecord {
    v1::PrincipalRecord {
        subject: p.subject,
        trust_tier: p.trust_tier,
        updated_by: p.updated_by,
        updated_at: Some(ts(p.updated_at)),
    }
}

/// The record of `subject` if it has one; a principal never given a tier is at tier 0.
pub fn record_or_default(subject: &str, p: Option<PrincipalRecord>) -> v1::PrincipalRecord {
    match p {
        Some(p) => record(p),
        None => v1::PrincipalRecord {
            subject: subject.to_owned(),
            trust_tier: 0,
            updated_by: String::new(),
            updated_at: None,
        },
    }
}
