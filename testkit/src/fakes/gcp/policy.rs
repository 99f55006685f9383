//! IAM allow policies as Cloud Resource Manager v3 keeps them: the proto3 JSON shape, the
//! checks `setIamPolicy` makes before storing one, and condition evaluation with CEL.
//!
//! Each rule names where it comes from in `NOTES.md`; messages are Google's where a real
//! answer was seen, and marked there where they are modelled.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::status::ApiError;

/// `google.type.Expr`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Expr {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub expression: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub location: String,
}

/// `google.iam.v1.Binding`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Expr>,
}

/// What a resource's policy holds (the etag is kept beside it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stored {
    pub bindings: Vec<Binding>,
    /// `auditConfigs`, kept as sent: the fake only stores and returns them.
    pub audit_configs: Vec<serde_json::Value>,
    pub etag: Vec<u8>,
}

impl Stored {
    pub fn has_conditions(&self) -> bool {
        self.bindings.iter().any(|b| b.condition.is_some())
    }

    /// The version a read answers: 3 once a binding has a condition, else 1 ("if you specify
    /// version 3, but the policy has no conditional role bindings, the response uses 1").
    pub fn version(&self) -> i32 {
        if self.has_conditions() { 3 } else { 1 }
    }
}

/// The basic roles, which take no conditions.
pub const BASIC_ROLES: [&str; 3] = ["roles/owner", "roles/editor", "roles/viewer"];

/// Documented limits of one allow policy.
pub const MAX_PRINCIPALS: usize = 1_500;
pub const MAX_GROUPS: usize = 250;
pub const MAX_CONDITIONAL_BINDINGS: usize = 100;
pub const MAX_SAME_ROLE_AND_PRINCIPAL: usize = 20;
pub const MAX_LOGICAL_OPERATORS: usize = 12;

/// Checks a policy a caller wants to store and returns its bindings merged as IAM keeps
/// them (bindings of the same role and condition are one, members deduplicated).
pub fn check(
    resource: &str,
    version: i32,
    bindings: &[Binding],
    stored_version: i32,
    etag_given: bool,
) -> Result<Vec<Binding>, ApiError> {
    if ![0, 1, 3].contains(&version) {
        return Err(ApiError::invalid(format!(
            "Invalid policy version ({version}): valid versions are 0, 1 and 3. For more information, please refer to https://cloud.google.com/iam/docs/policies#versions."
        )));
    }
    let effective = version.max(1);
    if etag_given && effective < stored_version {
        return Err(ApiError::invalid(format!(
            "Specified policy version ({effective}) cannot be less than the existing policy version ({stored_version}). For more information, please refer to https://cloud.google.com/iam/docs/policies#versions"
        )));
    }
    let mut merged: Vec<Binding> = Vec::new();
    for b in bindings {
        // IAM keeps the emails of members in lower case, whatever was sent.
        let mut b = b.clone();
        for m in &mut b.members {
            *m = lower_email(m);
        }
        let b = &b;
        check_role(&b.role)?;
        if b.members.is_empty() {
            return Err(ApiError::invalid(format!(
                "Binding for role {} has no members: each binding must contain at least one principal.",
                b.role
            )));
        }
        for m in &b.members {
            check_member(resource, m, b.condition.is_some())?;
        }
        if let Some(c) = &b.condition {
            if effective < 3 {
                return Err(ApiError::invalid(format!(
                    "Policy version ({effective}) does not support conditional role bindings: set the policy version to 3. For more information, please refer to https://cloud.google.com/iam/docs/policies#versions"
                )));
            }
            if BASIC_ROLES.contains(&b.role.as_str()) {
                return Err(ApiError::invalid(
                    "LintValidationUnits/BindingRoleAllowConditionCheck Error: Conditions can't be set on primitive roles",
                ));
            }
            check_condition(c)?;
        }
        match merged
            .iter_mut()
            .find(|x| x.role == b.role && x.condition == b.condition)
        {
            Some(x) => {
                for m in &b.members {
                    if !x.members.contains(m) {
                        x.members.push(m.clone());
                    }
                }
            }
            None => {
                let mut b = b.clone();
                let mut seen = Vec::new();
                b.members.retain(|m| {
                    let fresh = !seen.contains(m);
                    seen.push(m.clone());
                    fresh
                });
                merged.push(b);
            }
        }
    }
    check_limits(&merged)?;
    Ok(merged)
}

fn lower_email(member: &str) -> String {
    let (deleted, plain) = match member.strip_prefix("deleted:") {
        Some(p) => ("deleted:", p),
        None => ("", member),
    };
    match plain.split_once(':') {
        Some((t @ ("user" | "group" | "serviceAccount" | "domain"), v)) => {
            let (v, uid) = v
                .split_once("?uid=")
                .map_or((v, None), |(a, b)| (a, Some(b)));
            let mut out = format!("{deleted}{t}:{}", v.to_lowercase());
            if let Some(uid) = uid {
                out.push_str("?uid=");
                out.push_str(uid);
            }
            out
        }
        _ => member.to_owned(),
    }
}

fn check_role(role: &str) -> Result<(), ApiError> {
    let custom = |p: &str| {
        let parts: Vec<&str> = role.split('/').collect();
        parts.len() == 4 && parts[0] == p && parts[2] == "roles" && !parts[1].is_empty()
    };
    let predefined = role
        .strip_prefix("roles/")
        .is_some_and(|r| !r.is_empty() && !r.contains('/'));
    if predefined || custom("projects") || custom("organizations") {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "Role ({role}) does not exist in the resource's hierarchy."
        )))
    }
}

fn check_member(resource: &str, member: &str, conditional: bool) -> Result<(), ApiError> {
    const TYPES: [&str; 4] = ["user", "group", "serviceAccount", "domain"];
    let public = member == "allUsers" || member == "allAuthenticatedUsers";
    if public {
        if resource.starts_with("projects/") || conditional {
            return Err(ApiError::invalid(format!(
                "Request contains an invalid argument: {member} cannot be granted on {resource}."
            )));
        }
        return Ok(());
    }
    let deleted = member.strip_prefix("deleted:");
    let plain = deleted.unwrap_or(member);
    let ok = plain.starts_with("principal://")
        || plain.starts_with("principalSet://")
        || plain.split_once(':').is_some_and(|(t, v)| {
            TYPES.contains(&t) && !v.is_empty() && (t == "domain" || v.contains('@'))
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_member(resource))
    }
}

fn check_condition(c: &Expr) -> Result<(), ApiError> {
    if c.title.trim().is_empty() {
        return Err(ApiError::invalid("Condition title is required."));
    }
    if c.title.chars().count() > 100 {
        return Err(ApiError::invalid(
            "Condition title must be at most 100 characters.",
        ));
    }
    if c.description.chars().count() > 256 {
        return Err(ApiError::invalid(
            "Condition description must be at most 256 characters.",
        ));
    }
    if let Err(e) = cel::Program::compile(&c.expression) {
        let first = e
            .errors
            .first()
            .map(|p| p.msg.clone())
            .unwrap_or_else(|| e.to_string());
        return Err(ApiError::invalid(format!(
            "LintValidationUnits/ConditionCompileCheck Error: Parse expression: {first}"
        )));
    }
    let operators = c.expression.matches("&&").count() + c.expression.matches("||").count();
    if operators > MAX_LOGICAL_OPERATORS {
        return Err(ApiError::invalid(format!(
            "LintValidationUnits/ConditionComplexityCheck Error: Logical operators count must not be more than {MAX_LOGICAL_OPERATORS}."
        )));
    }
    Ok(())
}

fn check_limits(bindings: &[Binding]) -> Result<(), ApiError> {
    let principals: usize = bindings.iter().map(|b| b.members.len()).sum();
    if principals > MAX_PRINCIPALS {
        return Err(ApiError::invalid(format!(
            "The number of principals in the policy ({principals}) is larger than the maximum allowed size {MAX_PRINCIPALS}."
        )));
    }
    let groups = bindings
        .iter()
        .flat_map(|b| &b.members)
        .filter(|m| m.starts_with("group:"))
        .count();
    if groups > MAX_GROUPS {
        return Err(ApiError::invalid(format!(
            "The number of groups in the policy ({groups}) is larger than the maximum allowed size {MAX_GROUPS}."
        )));
    }
    let conditional = bindings.iter().filter(|b| b.condition.is_some()).count();
    if conditional > MAX_CONDITIONAL_BINDINGS {
        return Err(ApiError::invalid(format!(
            "The number of conditional role bindings in the policy ({conditional}) is larger than the maximum allowed {MAX_CONDITIONAL_BINDINGS}."
        )));
    }
    let mut same: HashMap<(&str, &str), usize> = HashMap::new();
    for b in bindings {
        for m in &b.members {
            *same.entry((b.role.as_str(), m.as_str())).or_default() += 1;
        }
    }
    if let Some(((role, member), n)) = same
        .into_iter()
        .find(|(_, n)| *n > MAX_SAME_ROLE_AND_PRINCIPAL)
    {
        return Err(ApiError::invalid(format!(
            "The policy has {n} role bindings for role {role} and principal {member}; at most {MAX_SAME_ROLE_AND_PRINCIPAL} are allowed."
        )));
    }
    Ok(())
}

/// The full resource name conditions see (`resource.name`), e.g.
/// `//cloudresourcemanager.googleapis.com/projects/p`.
pub fn full_name(resource: &str) -> String {
    format!("//cloudresourcemanager.googleapis.com/{resource}")
}

fn resource_type(resource: &str) -> &'static str {
    match resource.split('/').next() {
        Some("folders") => "cloudresourcemanager.googleapis.com/Folder",
        Some("organizations") => "cloudresourcemanager.googleapis.com/Organization",
        _ => "cloudresourcemanager.googleapis.com/Project",
    }
}

/// Whether a condition holds for a request at `at` on `resource`. As IAM does, a condition
/// that fails to evaluate or yields anything but `true` grants nothing.
pub fn holds(expression: &str, resource: &str, at: DateTime<Utc>) -> bool {
    let Ok(program) = cel::Program::compile(expression) else {
        return false;
    };
    let mut ctx = cel::Context::default();
    let request: HashMap<&str, cel::Value> =
        HashMap::from([("time", cel::Value::from(at.fixed_offset()))]);
    let res: HashMap<&str, cel::Value> = HashMap::from([
        ("name", cel::Value::from(full_name(resource))),
        ("type", cel::Value::from(resource_type(resource))),
        (
            "service",
            cel::Value::from("cloudresourcemanager.googleapis.com"),
        ),
    ]);
    ctx.add_variable_from_value("request", request);
    ctx.add_variable_from_value("resource", res);
    matches!(program.execute(&ctx), Ok(cel::Value::Bool(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed(title: &str, until: &str) -> Binding {
        Binding {
            role: "roles/browser".into(),
            members: vec!["user:a@example.com".into()],
            condition: Some(Expr {
                expression: format!("request.time < timestamp(\"{until}\")"),
                title: title.into(),
                ..Expr::default()
            }),
        }
    }

    #[test]
    fn conditions_are_evaluated_at_the_asked_time() {
        let e = "request.time < timestamp(\"2030-01-01T00:00:00Z\")";
        let before = "2029-12-31T23:59:59Z".parse().unwrap();
        let after = "2030-01-01T00:00:00Z".parse().unwrap();
        assert!(holds(e, "projects/p", before));
        assert!(!holds(e, "projects/p", after));
        assert!(holds(
            "resource.name.startsWith(\"//cloudresourcemanager.googleapis.com/projects/\")",
            "projects/p",
            before
        ));
        // Not a boolean, or not valid: grants nothing.
        assert!(!holds("1 + 1", "projects/p", before));
        assert!(!holds("request.time <", "projects/p", before));
    }

    #[test]
    fn writes_are_checked_as_iam_checks_them() {
        let ok = timed("t", "2030-01-01T00:00:00Z");
        assert!(check("projects/p", 3, std::slice::from_ref(&ok), 1, true).is_ok());
        let e = check("projects/p", 1, std::slice::from_ref(&ok), 1, true).unwrap_err();
        assert!(e.message.contains("version"), "{}", e.message);
        let basic = Binding {
            role: "roles/viewer".into(),
            ..ok.clone()
        };
        let e = check("projects/p", 3, &[basic], 1, true).unwrap_err();
        assert!(e.message.contains("primitive roles"), "{}", e.message);
        let untitled = timed("", "2030-01-01T00:00:00Z");
        assert!(check("projects/p", 3, &[untitled], 1, true).is_err());
        let bad = Binding {
            members: vec!["alice".into()],
            ..ok.clone()
        };
        let e = check("projects/p", 3, &[bad], 1, true).unwrap_err();
        assert!(e.message.contains("<type>:<value>"), "{}", e.message);
        // A version-1 write over a version-3 policy with its etag is refused.
        let plain = Binding {
            condition: None,
            ..ok.clone()
        };
        assert!(check("projects/p", 1, std::slice::from_ref(&plain), 3, true).is_err());
        assert!(check("projects/p", 1, &[plain], 3, false).is_ok());
    }

    #[test]
    fn bindings_of_one_role_and_condition_merge_and_limits_hold() {
        let a = timed("t", "2030-01-01T00:00:00Z");
        let mut b = a.clone();
        b.members = vec!["user:b@example.com".into(), "user:a@example.com".into()];
        b.members = vec!["user:b@example.com".into(), "user:A@Example.com".into()];
        let merged = check("projects/p", 3, &[a.clone(), b], 1, true).unwrap();
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].members.len(), 2);
        let many: Vec<Binding> = (0..=MAX_CONDITIONAL_BINDINGS)
            .map(|i| Binding {
                members: vec![format!("user:u{i}@example.com")],
                ..timed(&format!("t{i}"), "2030-01-01T00:00:00Z")
            })
            .collect();
        let e = check("projects/p", 3, &many, 1, true).unwrap_err();
        assert!(
            e.message.contains("conditional role bindings"),
            "{}",
            e.message
        );
    }
}
