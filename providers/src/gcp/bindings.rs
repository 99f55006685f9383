//! How a grant lives in an IAM policy, without I/O: one conditional binding per grant, its
//! condition titled `jitsudo-<grant_id>`, its expression ending access at `not_after`, its
//! description carrying the request and the end; a revoke turns it into a tombstone whose
//! condition can never hold.

use chrono::{DateTime, SecondsFormat, Utc};
use google_cloud_iam_v1::model::Binding;
use google_cloud_type::model::Expr;
use uuid::Uuid;

use crate::{GrantRecord, GrantSpec, ManagedGrant};

const TITLE_PREFIX: &str = "jitsudo-";
const LIVE: &str = "jitsudo grant";
const REVOKED: &str = "jitsudo revoked";
/// A tombstone's expression: false at any time IAM may evaluate it, whatever the clocks.
pub const NEVER: &str = "request.time < timestamp(\"1970-01-01T00:00:00Z\")";

pub fn title(grant_id: Uuid) -> String {
    format!("{TITLE_PREFIX}{grant_id}")
}

/// The expression of a live grant: access until `not_after`.
pub fn until(not_after: DateTime<Utc>) -> String {
    format!(
        "request.time < timestamp(\"{}\")",
        not_after.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    )
}

/// `<kind>; provider <name>; request <id>; not_after <t>; principal <p>`: at most ~230
/// characters of IAM's 256 for a principal of up to 100.
fn description(
    kind: &str,
    provider: &str,
    request_id: Uuid,
    not_after: DateTime<Utc>,
    principal: &str,
) -> String {
    let mut d = format!(
        "{kind}; provider {provider}; request {request_id}; not_after {}",
        not_after.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    );
    if d.len() + principal.len() + 12 <= 256 {
        d.push_str("; principal ");
        d.push_str(principal);
    }
    d
}

/// An IAM member as Google stores it: the email of `user:`, `group:`, `serviceAccount:`
/// and `domain:` in lower case (IAM lower-cases them on write); anything else as given.
pub fn member(principal: &str) -> String {
    match principal.split_once(':') {
        Some((t @ ("user" | "group" | "serviceAccount" | "domain"), v)) => {
            format!("{t}:{}", v.to_lowercase())
        }
        _ => principal.to_owned(),
    }
}

/// What a jitsudo binding says about its grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    pub grant_id: Uuid,
    /// The provider that wrote it (another provider or installation may share the scope).
    pub provider: Option<String>,
    pub request_id: Option<Uuid>,
    pub not_after: Option<DateTime<Utc>>,
    /// The principal as the request named it (the member may be its lower-cased form).
    pub principal: Option<String>,
    /// Its expression never holds. Only the expression counts: a binding whose description
    /// says "revoked" but whose expression still grants is treated as live, so a revoke
    /// rewrites it.
    pub tombstone: bool,
}

pub fn marker(b: &Binding) -> Option<Marker> {
    let c = b.condition.as_ref()?;
    let grant_id: Uuid = c.title.strip_prefix(TITLE_PREFIX)?.parse().ok()?;
    // Only the exact title jitsudo writes (hyphenated, lower case) is one of ours.
    if c.title != title(grant_id) {
        return None;
    }
    let mut m = Marker {
        grant_id,
        provider: None,
        request_id: None,
        not_after: None,
        principal: None,
        tombstone: c.expression == NEVER,
    };
    for p in c.description.split("; ").skip(1) {
        if let Some(v) = p.strip_prefix("provider ") {
            m.provider = Some(v.to_owned());
        } else if let Some(r) = p.strip_prefix("request ") {
            m.request_id = r.parse().ok();
        } else if let Some(t) = p.strip_prefix("not_after ") {
            m.not_after = DateTime::parse_from_rfc3339(t).ok().map(|t| t.to_utc());
        } else if let Some(v) = p.strip_prefix("principal ") {
            m.principal = Some(v.to_owned());
        }
    }
    Some(m)
}

/// Every binding carrying this grant's title (a hand-made copy included).
fn positions(bindings: &[Binding], grant_id: Uuid) -> Vec<usize> {
    let t = title(grant_id);
    (0..bindings.len())
        .filter(|&i| bindings[i].condition.as_ref().is_some_and(|c| c.title == t))
        .collect()
}

/// Removes jitsudo's bindings and tombstones (of any provider) whose end is more than
/// `margin` behind `now`: they grant nothing, and IAM's limits count them.
pub fn purge_ended(
    bindings: &mut Vec<Binding>,
    now: DateTime<Utc>,
    margin: chrono::TimeDelta,
) -> usize {
    let before = bindings.len();
    bindings.retain(|b| {
        marker(b)
            .and_then(|m| m.not_after)
            .is_none_or(|t| t + margin > now)
    });
    before - bindings.len()
}

/// IAM's limits of one policy that a grant can run into (Google's documented numbers).
pub const MAX_CONDITIONAL_BINDINGS: usize = 100;
pub const MAX_SAME_ROLE_AND_MEMBER: usize = 20;
pub const MAX_PRINCIPALS: usize = 1_500;

/// Why the policy cannot take one more grant, in words, when it cannot.
pub fn full(bindings: &[Binding], role: &str, member: &str) -> Option<String> {
    let conditional = bindings.iter().filter(|b| b.condition.is_some()).count();
    if conditional > MAX_CONDITIONAL_BINDINGS {
        return Some(format!(
            "the policy would hold {conditional} conditional bindings, more than Google's limit of {MAX_CONDITIONAL_BINDINGS}; room comes back as grants end (tombstones count until their grant's end)"
        ));
    }
    let same = bindings
        .iter()
        .filter(|b| b.role == role && b.members.iter().any(|m| m == member))
        .count();
    if same > MAX_SAME_ROLE_AND_MEMBER {
        return Some(format!(
            "{member} would have {same} bindings of {role}, more than Google's limit of {MAX_SAME_ROLE_AND_MEMBER}; room comes back as their grants end"
        ));
    }
    let principals: usize = bindings.iter().map(|b| b.members.len()).sum();
    if principals > MAX_PRINCIPALS {
        return Some(format!(
            "the policy would name {principals} principals, more than Google's limit of {MAX_PRINCIPALS}"
        ));
    }
    None
}

/// What a grant must do to a policy.
#[derive(Debug, PartialEq, Eq)]
pub enum GrantEdit {
    /// Added the binding: write the policy.
    Added,
    /// This grant's binding is there already (a repeated call, a lost answer).
    Present,
    /// Its tombstone is there: a revoke came first.
    Tombstoned,
}

pub fn grant(bindings: &mut Vec<Binding>, spec: &GrantSpec, provider: &str) -> GrantEdit {
    let found = positions(bindings, spec.grant_id);
    if !found.is_empty() {
        return if found
            .iter()
            .any(|&i| marker(&bindings[i]).is_some_and(|m| m.tombstone))
        {
            GrantEdit::Tombstoned
        } else {
            GrantEdit::Present
        };
    }
    bindings.push(
        Binding::new()
            .set_role(spec.role.clone())
            .set_members([member(&spec.subject)])
            .set_condition(
                Expr::new()
                    .set_title(title(spec.grant_id))
                    .set_description(description(
                        LIVE,
                        provider,
                        spec.request_id,
                        spec.not_after,
                        &spec.subject,
                    ))
                    .set_expression(until(spec.not_after)),
            ),
    );
    GrantEdit::Added
}

/// What a revoke did to a policy.
#[derive(Debug, PartialEq, Eq)]
pub enum RevokeEdit {
    /// Nothing to write: already a tombstone, or gone past its end.
    Unchanged,
    /// The grant's binding turned into a tombstone, or removed past its end.
    Changed,
    /// No binding was there: a tombstone alone was added (IAM may refuse it for the same
    /// reason it refused the grant, which then can never land either).
    TombstoneOnly,
}

/// Turns every binding with the grant's title into a tombstone (or adds one when none was
/// written), so a late grant of the same id grants nothing; past `not_after` nothing can
/// be late, and the bindings just go.
pub fn revoke(
    bindings: &mut Vec<Binding>,
    record: &GrantRecord,
    provider: &str,
    now: DateTime<Utc>,
) -> RevokeEdit {
    let tombstone =
        |role: String, members: Vec<String>, request: Uuid, not_after, principal: &str| {
            Binding::new()
                .set_role(role)
                .set_members(members)
                .set_condition(
                    Expr::new()
                        .set_title(title(record.grant_id))
                        .set_description(description(
                            REVOKED, provider, request, not_after, principal,
                        ))
                        .set_expression(NEVER),
                )
        };
    let found = positions(bindings, record.grant_id);
    if found.is_empty() {
        // Never written (or already forgotten): a tombstone keeps a late grant out. IAM
        // needs a member in every binding; the grant's own principal holds an expression
        // that never holds.
        if record.not_after > now && !record.subject.is_empty() {
            bindings.push(tombstone(
                record.role.clone(),
                vec![member(&record.subject)],
                record.request_id,
                record.not_after,
                &record.subject,
            ));
            return RevokeEdit::TombstoneOnly;
        }
        return RevokeEdit::Unchanged;
    }
    let mut changed = false;
    for &i in found.iter().rev() {
        let m = marker(&bindings[i]);
        let not_after = m
            .as_ref()
            .and_then(|m| m.not_after)
            .unwrap_or(record.not_after);
        if not_after <= now {
            bindings.remove(i);
            changed = true;
            continue;
        }
        if m.as_ref().is_some_and(|m| m.tombstone) {
            continue;
        }
        let b = &bindings[i];
        let request = m
            .as_ref()
            .and_then(|m| m.request_id)
            .unwrap_or(record.request_id);
        let principal = m
            .and_then(|m| m.principal)
            .unwrap_or_else(|| record.subject.clone());
        bindings[i] = tombstone(
            b.role.clone(),
            b.members.clone(),
            request,
            not_after,
            &principal,
        );
        changed = true;
    }
    if changed {
        RevokeEdit::Changed
    } else {
        RevokeEdit::Unchanged
    }
}

/// Removes a tombstone whose `not_after` has passed; returns whether the policy changed.
pub fn forget(bindings: &mut Vec<Binding>, grant_id: Uuid, now: DateTime<Utc>) -> bool {
    let before = bindings.len();
    let t = title(grant_id);
    bindings.retain(|b| {
        let ours = b.condition.as_ref().is_some_and(|c| c.title == t);
        let done = marker(b).is_some_and(|m| m.tombstone && m.not_after.is_none_or(|t| t <= now));
        !(ours && done)
    });
    bindings.len() != before
}

/// Whether the grant's access exists now: its live binding, holding its principal, with
/// the end still ahead.
pub fn active(bindings: &[Binding], record: &GrantRecord, now: DateTime<Utc>) -> bool {
    let want = member(&record.subject);
    positions(bindings, record.grant_id).into_iter().any(|i| {
        let b = &bindings[i];
        marker(b).is_some_and(|m| !m.tombstone && m.not_after.is_some_and(|t| t > now))
            && b.members.iter().any(|m| member(m) == want)
            && b.role == record.role
    })
}

/// Every jitsudo binding of one resource as the reconciler sees it.
/// Every binding of this provider's (by the provider named in its description) in one
/// resource as the reconciler sees it. The subject is the principal as requested while the
/// members are just its member, else the members as they are (drift).
pub fn managed(bindings: &[Binding], scope: &str, provider: &str) -> Vec<ManagedGrant> {
    bindings
        .iter()
        .filter_map(|b| {
            let m = marker(b)?;
            if m.provider.as_deref() != Some(provider) {
                return None;
            }
            let subject = match &m.principal {
                _ if m.tombstone => String::new(),
                Some(p) if b.members.len() == 1 && member(&b.members[0]) == member(p) => p.clone(),
                _ => b.members.join(","),
            };
            Some(ManagedGrant {
                grant_id: m.grant_id,
                request_id: m.request_id,
                subject,
                role: b.role.clone(),
                scope: scope.to_owned(),
                not_after: m.not_after,
                provider_ref: provider_ref(scope, m.grant_id),
                tombstone: m.tombstone,
            })
        })
        .collect()
}

pub fn provider_ref(scope: &str, grant_id: Uuid) -> String {
    format!("{scope}#{}", title(grant_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn spec(minutes: i64) -> GrantSpec {
        GrantSpec {
            grant_id: Uuid::now_v7(),
            request_id: Uuid::now_v7(),
            subject: "user:alice@example.com".into(),
            role: "roles/compute.viewer".into(),
            scope: "projects/p".into(),
            not_after: Utc::now() + TimeDelta::minutes(minutes),
            metadata: Default::default(),
        }
    }

    #[test]
    fn a_grant_is_one_binding_its_revoke_a_tombstone_and_a_late_grant_finds_it() {
        let now = Utc::now();
        let s = spec(60);
        let human = Binding::new()
            .set_role("roles/compute.viewer")
            .set_members(["user:bob@example.com"]);
        let mut b = vec![human.clone()];
        assert_eq!(grant(&mut b, &s, "gcp"), GrantEdit::Added);
        assert_eq!(grant(&mut b, &s, "gcp"), GrantEdit::Present);
        let record = GrantRecord::from_spec(&s);
        assert!(active(&b, &record, now));
        let c = b[1].condition.as_ref().unwrap();
        assert_eq!(c.title, format!("jitsudo-{}", s.grant_id));
        assert!(
            c.expression.starts_with("request.time < timestamp(\""),
            "{}",
            c.expression
        );
        let listed = managed(&b, "projects/p", "gcp");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].request_id, Some(s.request_id));
        assert_eq!(listed[0].subject, s.subject);
        assert_eq!(revoke(&mut b, &record, "gcp", now), RevokeEdit::Changed);
        assert_eq!(
            revoke(&mut b, &record, "gcp", now),
            RevokeEdit::Unchanged,
            "a second revoke changes nothing"
        );
        assert!(!active(&b, &record, now));
        assert_eq!(b[1].condition.as_ref().unwrap().expression, NEVER);
        assert_eq!(grant(&mut b, &s, "gcp"), GrantEdit::Tombstoned);
        assert!(managed(&b, "projects/p", "gcp")[0].tombstone);
        assert!(!forget(&mut b, s.grant_id, now), "kept until not_after");
        assert!(forget(&mut b, s.grant_id, s.not_after));
        assert_eq!(b, vec![human], "the human's binding is untouched");
    }

    #[test]
    fn a_revoke_of_a_never_written_grant_leaves_a_tombstone_and_past_not_after_none() {
        let now = Utc::now();
        let s = spec(60);
        let mut b = Vec::new();
        assert_eq!(
            revoke(&mut b, &GrantRecord::from_spec(&s), "gcp", now),
            RevokeEdit::TombstoneOnly
        );
        assert_eq!(grant(&mut b, &s, "gcp"), GrantEdit::Tombstoned);
        let old = spec(-1);
        let mut b = Vec::new();
        grant(&mut b, &old, "gcp");
        assert!(
            !active(&b, &GrantRecord::from_spec(&old), now),
            "past its end"
        );
        assert_eq!(
            revoke(&mut b, &GrantRecord::from_spec(&old), "gcp", now),
            RevokeEdit::Changed
        );
        assert!(b.is_empty(), "an ended grant's binding just goes");
    }

    #[test]
    fn only_the_expression_makes_a_tombstone_and_a_revoke_rewrites_every_copy() {
        let now = Utc::now();
        let s = spec(60);
        let mut b = Vec::new();
        grant(&mut b, &s, "gcp");
        // Described as revoked by hand, still granting: live, and a revoke rewrites it.
        let c = b[0].condition.as_mut().unwrap();
        c.description = c.description.replacen(LIVE, REVOKED, 1);
        assert!(!marker(&b[0]).unwrap().tombstone);
        // A hand-made copy under another role carries the same title.
        let mut copy = b[0].clone();
        copy.role = "roles/storage.admin".into();
        b.push(copy);
        let record = GrantRecord::from_spec(&s);
        assert_eq!(revoke(&mut b, &record, "gcp", now), RevokeEdit::Changed);
        assert!(
            b.iter()
                .all(|x| x.condition.as_ref().unwrap().expression == NEVER)
        );
        assert!(forget(&mut b, s.grant_id, s.not_after));
        assert!(b.is_empty(), "both copies go");
    }

    #[test]
    fn members_are_compared_as_iam_stores_them_and_subjects_listed_as_requested() {
        let now = Utc::now();
        let mut s = spec(60);
        s.subject = "user:Alice@Example.com".into();
        let mut b = Vec::new();
        grant(&mut b, &s, "gcp");
        assert_eq!(b[0].members, vec!["user:alice@example.com".to_string()]);
        assert!(active(&b, &GrantRecord::from_spec(&s), now));
        let listed = managed(&b, "projects/p", "gcp");
        assert_eq!(
            listed[0].subject, "user:Alice@Example.com",
            "no drift from case"
        );
        assert!(
            managed(&b, "projects/p", "other").is_empty(),
            "another provider's"
        );
        b[0].members.push("user:mallory@example.com".into());
        let listed = managed(&b, "projects/p", "gcp");
        assert!(
            listed[0].subject.contains("mallory"),
            "an added member is drift"
        );
    }

    #[test]
    fn ended_bindings_are_purged_and_limits_named() {
        let now = Utc::now();
        let mut b = Vec::new();
        let old = spec(-10);
        grant(&mut b, &old, "gcp");
        let live = spec(60);
        grant(&mut b, &live, "gcp");
        assert_eq!(purge_ended(&mut b, now, chrono::TimeDelta::minutes(5)), 1);
        assert_eq!(b.len(), 1);
        for _ in 0..MAX_CONDITIONAL_BINDINGS {
            let mut s = spec(60);
            s.subject = format!("user:u{}@example.com", Uuid::now_v7());
            grant(&mut b, &s, "gcp");
        }
        let why = full(&b, "roles/compute.viewer", "user:x@example.com").unwrap();
        assert!(why.contains("limit of 100"), "{why}");
    }
}
