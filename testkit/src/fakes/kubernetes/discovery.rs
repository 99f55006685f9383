//! Discovery documents in the legacy (non-aggregated) form, which every client falls back to.

use serde_json::{Value, json};

use super::Kind;
use super::status::RBAC_GROUP;

const GIT_VERSION: &str = "v1.37.0+testkit";
pub(crate) const RBAC_V1: &str = "rbac.authorization.k8s.io/v1";

pub(crate) fn version() -> Value {
    json!({
        "major": "1", "minor": "37", "emulationMajor": "1", "emulationMinor": "37",
        "minCompatibilityMajor": "1", "minCompatibilityMinor": "36",
        "gitVersion": GIT_VERSION, "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.0", "compiler": "gc", "platform": "linux/amd64"
    })
}

pub(crate) fn rbac_group() -> Value {
    let v = json!({"groupVersion": RBAC_V1, "version": "v1"});
    json!({"name": RBAC_GROUP, "versions": [v.clone()], "preferredVersion": v})
}

const ALL_VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub(crate) fn rbac_resources() -> Value {
    let resources: Vec<Value> = [
        Kind::ClusterRoleBinding,
        Kind::ClusterRole,
        Kind::RoleBinding,
        Kind::Role,
    ]
    .iter()
    .map(|k| {
        json!({
            "name": k.resource(), "singularName": k.singular(), "namespaced": k.namespaced(),
            "kind": k.name(), "verbs": ALL_VERBS,
        })
    })
    .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": RBAC_V1, "resources": resources})
}

pub(crate) fn core_resources() -> Value {
    json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [{
        "name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace",
        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["ns"]
    }]})
}
