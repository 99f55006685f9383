//! The inline policy on a role that ends revoked grants' live sessions: one Deny of
//! everything for sessions whose `jitsudo-grant` session tag names a revoked grant. Every
//! session jitsudod mints carries that tag (set at `AssumeRole`; a session cannot change its
//! own tags), so the statement matches the revoked grant's sessions and no other session
//! of the role. Pure: the document from the set of revoked grant ids, and back.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use uuid::Uuid;

/// The inline policy's name on the role.
pub const POLICY_NAME: &str = "jitsudo-revoked-sessions";
/// The session tag every minted session carries: the grant id.
pub const GRANT_TAG: &str = "jitsudo-grant";
/// The session tag naming the request.
pub const REQUEST_TAG: &str = "jitsudo-request";
const SID: &str = "JitsudoRevokedSessions";
/// IAM counts a role's inline policies together, without white space, up to 10,240
/// characters. What the statement takes besides the ids, plus what other inline policies of
/// the role may need, is kept free.
pub const INLINE_LIMIT: usize = 10_240;
/// Characters of one id in the list (36, two quotes, a comma).
const PER_ID: usize = 39;
/// The most revoked grants one role's statement holds at once: with the statement's own
/// text this leaves about 1,850 characters for other inline policies of the role. Entries
/// leave at their grant's `not_after` (no session of it lives longer), so this bounds the
/// grants of one role revoked early whose end has not come yet.
pub const MAX_IDS: usize = 210;

/// The document denying the sessions of `revoked`; `None` when there is nothing to deny
/// (the inline policy is then deleted).
pub fn document(revoked: &BTreeSet<Uuid>) -> Option<String> {
    if revoked.is_empty() {
        return None;
    }
    let ids: Vec<String> = revoked.iter().map(Uuid::to_string).collect();
    Some(
        json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": SID,
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": {
                    "StringEquals": { format!("aws:PrincipalTag/{GRANT_TAG}"): ids }
                }
            }]
        })
        .to_string(),
    )
}

/// The grant ids a document jitsudo wrote denies; an unreadable or foreign document denies
/// none (it is then rewritten whole from the tombstones).
pub fn denied(document: &str) -> BTreeSet<Uuid> {
    let Ok(doc) = serde_json::from_str::<Value>(document) else {
        return BTreeSet::new();
    };
    let key = format!("aws:PrincipalTag/{GRANT_TAG}");
    let statements = match &doc["Statement"] {
        Value::Array(a) => a.clone(),
        one @ Value::Object(_) => vec![one.clone()],
        _ => Vec::new(),
    };
    statements
        .iter()
        .filter(|s| s["Sid"] == SID && s["Effect"] == "Deny")
        .flat_map(|s| match &s["Condition"]["StringEquals"][&key] {
            Value::Array(a) => a.clone(),
            one @ Value::String(_) => vec![one.clone()],
            _ => Vec::new(),
        })
        .filter_map(|v| v.as_str().and_then(|s| Uuid::parse_str(s).ok()))
        .collect()
}

/// How many ids a statement may hold before the role's inline limit is near.
pub fn room_for(ids: usize) -> bool {
    ids <= MAX_IDS && ids * PER_ID < INLINE_LIMIT
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size IAM counts for a document (white space is not counted).
    pub fn counted_size(document: &str) -> usize {
        document.chars().filter(|c| !c.is_whitespace()).count()
    }

    #[test]
    fn the_document_denies_exactly_the_listed_grants_by_session_tag() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let doc = document(&BTreeSet::from([a, b])).unwrap();
        let v: Value = serde_json::from_str(&doc).unwrap();
        let s = &v["Statement"][0];
        assert_eq!(s["Effect"], "Deny");
        assert_eq!(s["Action"], "*");
        assert_eq!(
            s["Condition"]["StringEquals"]["aws:PrincipalTag/jitsudo-grant"],
            json!([a.min(b).to_string(), a.max(b).to_string()])
        );
        assert_eq!(denied(&doc), BTreeSet::from([a, b]));
        assert_eq!(document(&BTreeSet::new()), None);
    }

    #[test]
    fn a_full_statement_stays_inside_the_inline_limit() {
        let ids: BTreeSet<Uuid> = (0..MAX_IDS).map(|_| Uuid::new_v4()).collect();
        assert!(room_for(ids.len()));
        assert!(!room_for(MAX_IDS + 1));
        let size = counted_size(&document(&ids).unwrap());
        assert!(
            size + 1_500 < INLINE_LIMIT,
            "{size} characters leave too little of {INLINE_LIMIT} for the role's other inline policies"
        );
    }

    #[test]
    fn foreign_or_broken_documents_deny_nothing() {
        assert!(denied("not json").is_empty());
        assert!(denied(r#"{"Statement":[{"Sid":"Other","Effect":"Deny"}]}"#).is_empty());
    }
}
