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

fn description(kind: &str, request_id: Uuid, not_after: DateTime<Utc>) -> String {
    format!(
        "{kind}; request {request_id}; not_after {}",
        not_after.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    )
}

/// What a jitsudo binding says about its grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    pub grant_id: Uuid,
    pub request_id: Option<Uuid>,
    pub not_after: Option<DateTime<Utc>>,
    pub tombstone: bool,
}

pub fn marker(b: &Binding) -> Option<Marker> {
    let c = b.condition.as_ref()?;
    let grant_id = c.title.strip_prefix(TITLE_PREFIX)?.parse().ok()?;
    let mut parts = c.description.split("; ");
    let kind = parts.next().unwrap_or_default();
    let mut request_id = None;
    let mut not_after = None;
    for p in parts {
        if let Some(r) = p.strip_prefix("request ") {
            request_id = r.parse().ok();
        } else if let Some(t) = p.strip_prefix("not_after ") {
            not_after = DateTime::parse_from_rfc3339(t).ok().map(|t| t.to_utc());
        }
    }
    Some(Marker {
        grant_id,
        request_id,
        not_after,
        // Anything but a live grant's exact condition grants nothing of ours: a binding
        // whose expression was edited by hand is not trusted as live.
        tombstone: kind == REVOKED || c.expression == NEVER,
    })
}

fn position(bindings: &[Binding], grant_id: Uuid) -> Option<usize> {
    let t = title(grant_id);
    bindings
        .iter()
        .position(|b| b.condition.as_ref().is_some_and(|c| c.title == t))
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

pub fn grant(bindings: &mut Vec<Binding>, spec: &GrantSpec) -> GrantEdit {
    if let Some(i) = position(bindings, spec.grant_id) {
        return match marker(&bindings[i]) {
            Some(m) if m.tombstone => GrantEdit::Tombstoned,
            _ => GrantEdit::Present,
        };
    }
    bindings.push(
        Binding::new()
            .set_role(spec.role.clone())
            .set_members([spec.subject.clone()])
            .set_condition(
                Expr::new()
                    .set_title(title(spec.grant_id))
                    .set_description(description(LIVE, spec.request_id, spec.not_after))
                    .set_expression(until(spec.not_after)),
            ),
    );
    GrantEdit::Added
}

/// Turns the grant's binding into a tombstone (or adds one when it was never written), so
/// a late grant of the same id grants nothing; past `not_after` nothing can be late, and
/// the binding just goes. Returns whether the policy changed.
pub fn revoke(bindings: &mut Vec<Binding>, record: &GrantRecord, now: DateTime<Utc>) -> bool {
    let tombstone = |role: String, members: Vec<String>, request: Uuid, not_after| {
        Binding::new()
            .set_role(role)
            .set_members(members)
            .set_condition(
                Expr::new()
                    .set_title(title(record.grant_id))
                    .set_description(description(REVOKED, request, not_after))
                    .set_expression(NEVER),
            )
    };
    match position(bindings, record.grant_id) {
        Some(i) => {
            let m = marker(&bindings[i]);
            let not_after = m
                .as_ref()
                .and_then(|m| m.not_after)
                .unwrap_or(record.not_after);
            if not_after <= now {
                bindings.remove(i);
                return true;
            }
            if m.as_ref().is_some_and(|m| m.tombstone) {
                return false;
            }
            let b = &bindings[i];
            let request = m.and_then(|m| m.request_id).unwrap_or(record.request_id);
            bindings[i] = tombstone(b.role.clone(), b.members.clone(), request, not_after);
            true
        }
        // Never written (or already forgotten): a tombstone keeps a late grant out. IAM
        // needs a member in every binding; the grant's own principal holds an expression
        // that never holds.
        None if record.not_after > now && !record.subject.is_empty() => {
            bindings.push(tombstone(
                record.role.clone(),
                vec![record.subject.clone()],
                record.request_id,
                record.not_after,
            ));
            true
        }
        None => false,
    }
}

/// Removes a tombstone whose `not_after` has passed; returns whether the policy changed.
pub fn forget(bindings: &mut Vec<Binding>, grant_id: Uuid, now: DateTime<Utc>) -> bool {
    let Some(i) = position(bindings, grant_id) else {
        return false;
    };
    match marker(&bindings[i]) {
        Some(m) if m.tombstone && m.not_after.is_none_or(|t| t <= now) => {
            bindings.remove(i);
            true
        }
        _ => false,
    }
}

/// Whether the grant's access exists now: its live binding, holding its principal, with
/// the end still ahead.
pub fn active(bindings: &[Binding], record: &GrantRecord, now: DateTime<Utc>) -> bool {
    position(bindings, record.grant_id).is_some_and(|i| {
        let b = &bindings[i];
        marker(b).is_some_and(|m| !m.tombstone && m.not_after.is_some_and(|t| t > now))
            && b.members.iter().any(|m| m == &record.subject)
            && b.role == record.role
    })
}

/// Every jitsudo binding of one resource as the reconciler sees it.
pub fn managed(bindings: &[Binding], scope: &str) -> Vec<ManagedGrant> {
    bindings
        .iter()
        .filter_map(|b| {
            let m = marker(b)?;
            Some(ManagedGrant {
                grant_id: m.grant_id,
                request_id: m.request_id,
                subject: if m.tombstone {
                    String::new()
                } else {
                    b.members.join(",")
                },
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
        assert_eq!(grant(&mut b, &s), GrantEdit::Added);
        assert_eq!(grant(&mut b, &s), GrantEdit::Present);
        let record = GrantRecord::from_spec(&s);
        assert!(active(&b, &record, now));
        let c = b[1].condition.as_ref().unwrap();
        assert_eq!(c.title, format!("jitsudo-{}", s.grant_id));
        assert!(
            c.expression.starts_with("request.time < timestamp(\""),
            "{}",
            c.expression
        );
        let listed = managed(&b, "projects/p");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].request_id, Some(s.request_id));
        assert_eq!(listed[0].subject, s.subject);
        assert!(revoke(&mut b, &record, now));
        assert!(
            !revoke(&mut b, &record, now),
            "a second revoke changes nothing"
        );
        assert!(!active(&b, &record, now));
        assert_eq!(b[1].condition.as_ref().unwrap().expression, NEVER);
        assert_eq!(grant(&mut b, &s), GrantEdit::Tombstoned);
        assert!(managed(&b, "projects/p")[0].tombstone);
        assert!(!forget(&mut b, s.grant_id, now), "kept until not_after");
        assert!(forget(&mut b, s.grant_id, s.not_after));
        assert_eq!(b, vec![human], "the human's binding is untouched");
    }

    #[test]
    fn a_revoke_of_a_never_written_grant_leaves_a_tombstone_and_past_not_after_none() {
        let now = Utc::now();
        let s = spec(60);
        let mut b = Vec::new();
        assert!(revoke(&mut b, &GrantRecord::from_spec(&s), now));
        assert_eq!(grant(&mut b, &s), GrantEdit::Tombstoned);
        let old = spec(-1);
        let mut b = Vec::new();
        grant(&mut b, &old);
        assert!(
            !active(&b, &GrantRecord::from_spec(&old), now),
            "past its end"
        );
        assert!(revoke(&mut b, &GrantRecord::from_spec(&old), now));
        assert!(b.is_empty(), "an ended grant's binding just goes");
    }

    #[test]
    fn an_edited_expression_is_not_trusted_as_live() {
        let s = spec(60);
        let mut b = Vec::new();
        grant(&mut b, &s);
        b[0].condition.as_mut().unwrap().expression = NEVER.into();
        assert!(marker(&b[0]).unwrap().tombstone);
    }
}
