//! Privilege-escalation prevention as the RBAC docs describe it and pkg/registry/rbac enforces
//! it: who may bind a role, and which rules a user already holds.

use serde_json::Value;

use super::api::set_meta;
use super::rbac::{self, Rule};
use super::status::{ApiError, RBAC_GROUP, go_quote};
use super::store::{Store, key};
use super::{Kind, User};

type Result<T> = std::result::Result<T, ApiError>;

/// The rules a non-admin holds: what its `Rights` let it do with RBAC objects and namespaces,
/// discovery, and whatever the stored bindings grant it (cluster-wide, and in `ns`).
fn held_rules(store: &Store, user: &User, ns: Option<&str>) -> Vec<Rule> {
    let rbac_resources = [
        "clusterroles",
        "clusterrolebindings",
        "roles",
        "rolebindings",
    ];
    let mut verbs = vec!["get", "list", "watch"];
    if !user.rights.read_only {
        verbs.extend(["create", "update", "patch", "delete", "deletecollection"]);
    }
    let mut held = vec![
        Rule::resource(&[RBAC_GROUP], &rbac_resources, &verbs),
        Rule::resource(&[""], &["namespaces"], &["get", "list", "watch"]),
        Rule::urls(
            &[
                "/api",
                "/api/*",
                "/apis",
                "/apis/*",
                "/healthz",
                "/livez",
                "/openapi",
                "/openapi/*",
                "/readyz",
                "/version",
                "/version/",
            ],
            &["get"],
        ),
    ];
    let applies = |b: &Value, binding_ns: &str| {
        b["subjects"].as_array().is_some_and(|subjects| {
            subjects.iter().any(|s| {
                let name = s["name"].as_str().unwrap_or("");
                match s["kind"].as_str().unwrap_or("") {
                    "User" => name == user.name,
                    "Group" => user.groups.iter().any(|g| g == name),
                    "ServiceAccount" => {
                        let sa_ns = s["namespace"]
                            .as_str()
                            .filter(|n| !n.is_empty())
                            .unwrap_or(binding_ns);
                        !sa_ns.is_empty()
                            && user.name == format!("system:serviceaccount:{sa_ns}:{name}")
                    }
                    _ => false,
                }
            })
        })
    };
    let role_rules = |rr: &Value, binding_ns: &str| -> Vec<Rule> {
        let name = rr["name"].as_str().unwrap_or("");
        let role = match rr["kind"].as_str() {
            Some("ClusterRole") => store.get(Kind::ClusterRole, name),
            Some("Role") if !binding_ns.is_empty() => {
                store.get(Kind::Role, &key(Some(binding_ns), name))
            }
            _ => None,
        };
        role.and_then(|r| r["rules"].as_array())
            .map(|rules| rules.iter().map(Rule::of).collect())
            .unwrap_or_default()
    };
    for b in store.all(Kind::ClusterRoleBinding) {
        if applies(&b, "") {
            held.extend(role_rules(&b["roleRef"], ""));
        }
    }
    if let Some(ns) = ns {
        for (_, b) in store.scan(Kind::RoleBinding, &format!("{ns}/"), "", store.current_rv()) {
            if applies(b, ns) {
                held.extend(role_rules(&b["roleRef"], ns));
            }
        }
    }
    held
}

/// The policy-based storages of pkg/registry/rbac: a binding needs `bind` on its role or all of
/// the role's rules; a role needs all of its rules (non-admins never have `escalate`). Updates
/// touching only GC fields (ownerReferences, finalizers) skip the check.
pub(crate) fn escalation_check(
    store: &Store,
    user: &User,
    kind: Kind,
    ns: Option<&str>,
    name: &str,
    obj: &Value,
    old: Option<&Value>,
) -> Result<()> {
    if user.admin {
        return Ok(());
    }
    if let Some(old) = old {
        let mut copy = obj.clone();
        for f in ["ownerReferences", "finalizers", "selfLink", "managedFields"] {
            set_meta(
                &mut copy,
                f,
                old["metadata"].get(f).cloned().unwrap_or(Value::Null),
            );
        }
        if &copy == old {
            return Ok(());
        }
    }
    let gr = kind.group_resource();
    let ns = ns.filter(|_| kind.namespaced());
    let wanted: Vec<Rule> = if kind.is_binding() {
        let rr = &obj["roleRef"];
        let role_kind = rr["kind"].as_str().unwrap_or("");
        let role_name = rr["name"].as_str().unwrap_or("");
        if user.may_bind(role_kind, role_name) {
            return Ok(());
        }
        let role = match role_kind {
            "ClusterRole" => store.get(Kind::ClusterRole, role_name).ok_or_else(|| {
                ApiError::not_found(&Kind::ClusterRole.group_resource(), role_name)
            })?,
            "Role" => store
                .get(Kind::Role, &key(Some(ns.unwrap_or("")), role_name))
                .filter(|_| ns.is_some())
                .ok_or_else(|| ApiError::not_found(&Kind::Role.group_resource(), role_name))?,
            other => {
                return Err(ApiError::unclassified(format!(
                    "unsupported role reference kind: {}",
                    go_quote(other)
                )));
            }
        };
        role["rules"]
            .as_array()
            .map(|r| r.iter().map(Rule::of).collect())
            .unwrap_or_default()
    } else {
        if kind == Kind::ClusterRole && obj["aggregationRule"].is_object() {
            return Err(ApiError::forbidden(
                &gr,
                name,
                "must have cluster-admin privileges to use the aggregationRule",
            ));
        }
        obj["rules"]
            .as_array()
            .map(|r| r.iter().map(Rule::of).collect())
            .unwrap_or_default()
    };
    let held = held_rules(store, user, ns);
    match rbac::escalation(&user.name, &user.groups, &held, &wanted) {
        Some(why) => Err(ApiError::forbidden(&gr, name, &why)),
        None => Ok(()),
    }
}
