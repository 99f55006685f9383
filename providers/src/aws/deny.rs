//! The inline policy on a role that ends revoked grants' live sessions: one Deny of
//! everything for sessions whose `jitsudo-grant` session tag names a revoked grant. Every
//! session jitsudod mints carries that tag (set at `AssumeRole`; a session cannot change its
//! own tags), so the statement matches the revoked grant's sessions and no other session
//! of the role. Pure: the document from the set of revoked grant ids, and back.
//!
//! More revoked grants than the inline policy holds go into customer managed policies
//! attached to the role (`jitsudo-deny-<role>-<k>` at path `/jitsudo-deny/`, 6,144
//! characters each), filled in order. An id stays in the policy it was first written to
//! until it leaves, so no write ever moves one: at every moment each revoked grant is
//! denied by some policy of the role.

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

/// A customer managed policy counts up to 6,144 characters: a statement of 150 ids takes
/// about 6,050.
pub const PER_MANAGED: usize = 150;
/// Managed policies jitsudo attaches to one role at most (IAM's default quota is 10
/// attached per role; two are left for the role's own).
pub const MAX_MANAGED: usize = 8;
/// The path of the managed deny policies.
pub const MANAGED_PATH: &str = "/jitsudo-deny/";

/// The name of the `k`-th managed deny policy of a role (`k` from 1), unique in the account.
pub fn managed_name(role: &str, k: usize) -> String {
    format!("jitsudo-deny-{}-{k}", role.to_ascii_lowercase())
}

/// Where a role's denied ids are: the inline policy, and each managed policy (index `k-1`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub inline: BTreeSet<Uuid>,
    pub managed: Vec<BTreeSet<Uuid>>,
}

impl Placement {
    /// Every id denied, wherever it is.
    pub fn all(&self) -> BTreeSet<Uuid> {
        let mut all = self.inline.clone();
        for m in &self.managed {
            all.extend(m);
        }
        all
    }

    /// `wanted` placed without moving an id that stays: leaving ids go, new ones fill the
    /// inline policy, then the managed ones in order. `None` when they do not all fit.
    pub fn place(&self, wanted: &BTreeSet<Uuid>) -> Option<Placement> {
        let keep =
            |s: &BTreeSet<Uuid>| -> BTreeSet<Uuid> { s.intersection(wanted).copied().collect() };
        let mut next = Placement {
            inline: keep(&self.inline),
            managed: self.managed.iter().map(keep).collect(),
        };
        next.managed.resize(MAX_MANAGED, BTreeSet::new());
        let placed = next.all();
        for id in wanted.difference(&placed) {
            if next.inline.len() < MAX_IDS {
                next.inline.insert(*id);
                continue;
            }
            next.managed
                .iter_mut()
                .find(|m| m.len() < PER_MANAGED)?
                .insert(*id);
        }
        while next.managed.last().is_some_and(|m| m.is_empty()) {
            next.managed.pop();
        }
        Some(next)
    }
}

/// The most revoked grants one role holds at once, inline and managed together.
pub const CAPACITY: usize = MAX_IDS + MAX_MANAGED * PER_MANAGED;

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

// The inline statement's ids alone stay well inside the role's inline limit.
const _: () = assert!(MAX_IDS * PER_ID + 1_500 < INLINE_LIMIT);

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
        let size = counted_size(&document(&ids).unwrap());
        assert!(
            size + 1_500 < INLINE_LIMIT,
            "{size} characters leave too little of {INLINE_LIMIT} for the role's other inline policies"
        );
    }

    #[test]
    fn a_full_managed_statement_stays_inside_the_managed_limit() {
        let ids: BTreeSet<Uuid> = (0..PER_MANAGED).map(|_| Uuid::new_v4()).collect();
        let size = counted_size(&document(&ids).unwrap());
        assert!(
            size < 6_144,
            "{size} characters: over a managed policy's 6,144"
        );
    }

    #[test]
    fn placing_never_moves_an_id_that_stays() {
        let ids: Vec<Uuid> = (0..CAPACITY + 1).map(|_| Uuid::new_v4()).collect();
        let first: BTreeSet<Uuid> = ids[..400].iter().copied().collect();
        let p = Placement::default().place(&first).unwrap();
        assert_eq!(p.inline.len(), MAX_IDS);
        assert_eq!(p.managed.len(), 2);
        assert_eq!(p.managed[0].len(), PER_MANAGED);
        assert_eq!(p.managed[1].len(), 400 - MAX_IDS - PER_MANAGED);
        assert_eq!(p.all(), first);
        // Some inline ids leave and new ones come: the new fill the gaps inline; nothing
        // in the managed policies moves.
        let mut next = first.clone();
        let gone: Vec<Uuid> = p.inline.iter().take(10).copied().collect();
        for g in &gone {
            next.remove(g);
        }
        next.extend(ids[400..405].iter().copied());
        let q = p.place(&next).unwrap();
        assert_eq!(q.all(), next);
        assert_eq!(q.managed, p.managed, "the managed policies are untouched");
        assert!(ids[400..405].iter().all(|i| q.inline.contains(i)));
        // Everything leaves: no managed policy is left.
        assert_eq!(q.place(&BTreeSet::new()).unwrap(), Placement::default());
        // Past the capacity: refused.
        let all: BTreeSet<Uuid> = ids.iter().copied().collect();
        assert_eq!(Placement::default().place(&all), None);
        assert!(
            Placement::default()
                .place(&ids[..CAPACITY].iter().copied().collect())
                .is_some()
        );
    }

    #[test]
    fn managed_names_are_per_role_and_valid_iam_names() {
        let n = managed_name(&"R".repeat(64), MAX_MANAGED);
        assert!(n.len() <= 128, "{n}");
        assert_eq!(managed_name("ReadOnly", 1), managed_name("readonly", 1));
        assert_ne!(managed_name("ReadOnly", 1), managed_name("ReadOnly", 2));
    }

    #[test]
    fn foreign_or_broken_documents_deny_nothing() {
        assert!(denied("not json").is_empty());
        assert!(denied(r#"{"Statement":[{"Sid":"Other","Effect":"Deny"}]}"#).is_empty());
    }
}
