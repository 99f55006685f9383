//! What jitsudo writes into Azure besides the access itself, and how it finds it again.
//!
//! ARM has no labels on role assignments and no compare-and-set, so jitsudo keeps its own
//! state in role assignments that grant nothing: each names a principal that cannot exist
//! (a version-5 GUID derived from the grant id; Entra assigns random version-4 object ids)
//! and carries a JSON description. Per grant:
//! - the **record** (`jitsudo-record`), while the grant is live: who, what, where, until when;
//! - the **tombstone** (`jitsudo-tombstone`), from the revoke until `not_after` has passed.
//!
//! The access — the requester's role assignment, or PIM's — is shared by every live grant of
//! the same principal, role and scope (ARM allows one); it is taken away when the last
//! record that needs it goes.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The namespace of every name jitsudo derives (a fixed, random v4 GUID).
const NAMESPACE: Uuid = Uuid::from_u128(0x4c0f_59a2_3d41_4f3e_9a71_2b6e_8f0d_c6a5);

pub const RECORD: &str = "jitsudo-record ";
pub const TOMBSTONE: &str = "jitsudo-tombstone ";
pub const ACCESS: &str = "jitsudo-access ";

fn derive(what: &str, grant_id: Uuid) -> String {
    Uuid::new_v5(&NAMESPACE, format!("{what}:{grant_id}").as_bytes()).to_string()
}

/// The role assignment name of a grant's record.
pub fn record_name(grant_id: Uuid) -> String {
    derive("record", grant_id)
}

pub fn tombstone_name(grant_id: Uuid) -> String {
    derive("tombstone", grant_id)
}

/// The principal a record or tombstone names: one that cannot exist.
pub fn nobody(what: &str, grant_id: Uuid) -> String {
    derive(&format!("nobody-{what}"), grant_id)
}

/// The name of the requester's role assignment made for a grant (mode `assignments`).
pub fn access_name(grant_id: Uuid) -> String {
    derive("access", grant_id)
}

/// The name of the PIM request that assigns for a grant: a retry finds it taken.
pub fn assign_request_name(grant_id: Uuid) -> String {
    derive("assign", grant_id)
}

/// What a record or tombstone says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// The provider (its `name`) that wrote it: two providers on one scope keep apart.
    pub provider: String,
    pub grant: Uuid,
    pub request: Uuid,
    /// The principal as requested (an Entra object id).
    pub principal: String,
    /// The role as requested (name or GUID).
    pub role: String,
    /// The scope as requested.
    #[serde(default)]
    pub scope: String,
    #[serde(with = "seconds")]
    pub until: DateTime<Utc>,
}

mod seconds {
    use super::*;
    pub fn serialize<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.to_utc())
            .map_err(serde::de::Error::custom)
    }
}

impl Note {
    pub fn describe(&self, kind: &str) -> String {
        format!(
            "{kind}{} (made by jitsudo; grants nothing: the principal does not exist)",
            serde_json::to_string(self).unwrap_or_default()
        )
    }
}

/// A record or tombstone found in a description; `None` for anything else.
pub fn parse(description: &str) -> Option<(bool, Note)> {
    let (tombstone, rest) = if let Some(r) = description.strip_prefix(RECORD) {
        (false, r)
    } else {
        (true, description.strip_prefix(TOMBSTONE)?)
    };
    let end = rest.find("} (made by jitsudo")? + 1;
    serde_json::from_str(&rest[..end])
        .ok()
        .map(|n| (tombstone, n))
}

/// The description of a requester's role assignment jitsudo made.
pub fn access_description(provider: &str) -> String {
    format!(
        "{ACCESS}{{\"provider\":{}}} (made by jitsudo for a time-limited grant; jitsudo removes it)",
        serde_json::Value::from(provider)
    )
}

/// Whether a role assignment's description says this provider made it.
pub fn is_access_of(description: &str, provider: &str) -> bool {
    description
        .strip_prefix(ACCESS)
        .and_then(|r| r.split_once("} (").map(|(j, _)| format!("{j}}}")))
        .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
        .is_some_and(|v| v["provider"] == provider)
}

/// The justification of a PIM request jitsudo makes (Azure shows it in the portal).
pub fn justification(provider: &str, grant: Uuid, request: Uuid) -> String {
    format!("jitsudo ({provider}): request {request}, grant {grant}")
}

/// Whether a PIM request's justification says this provider made it.
pub fn is_request_of(justification: &str, provider: &str) -> bool {
    justification.starts_with(&format!("jitsudo ({provider}): "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_survive_the_description_and_names_are_stable() {
        let n = Note {
            provider: "azure \"prod\"".into(),
            grant: Uuid::now_v7(),
            request: Uuid::now_v7(),
            principal: "11111111-1111-4111-8111-111111111111".into(),
            role: "Reader".into(),
            scope: "/subscriptions/x".into(),
            until: DateTime::parse_from_rfc3339("2026-12-04T10:00:00.250Z")
                .unwrap()
                .to_utc(),
        };
        assert_eq!(parse(&n.describe(RECORD)), Some((false, n.clone())));
        assert_eq!(parse(&n.describe(TOMBSTONE)), Some((true, n.clone())));
        assert_eq!(parse("a human's note"), None);
        assert_eq!(record_name(n.grant), record_name(n.grant));
        assert_ne!(record_name(n.grant), tombstone_name(n.grant));
        let nobody = Uuid::parse_str(&nobody("record", n.grant)).unwrap();
        assert_eq!(nobody.get_version_num(), 5, "never an Entra (v4) object id");
        assert!(is_access_of(&access_description("a\"b"), "a\"b"));
        assert!(!is_access_of(&access_description("a"), "b"));
        assert!(is_request_of(&justification("p", n.grant, n.request), "p"));
        assert!(!is_request_of(&justification("p", n.grant, n.request), "q"));
    }
}
