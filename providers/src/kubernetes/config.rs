//! `kind = "kubernetes"`: the keys of its `[[providers]]` table.

use std::path::PathBuf;

use serde::Deserialize;

/// How the mapped principal is named in a binding's subjects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum SubjectKind {
    /// A user as the API server authenticates it (OIDC username, client certificate CN).
    #[default]
    User,
    /// A group: the mapped principal names a group (one person per group by convention).
    Group,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::User => "User",
            SubjectKind::Group => "Group",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// A kubeconfig file (its CA, server and credentials); with `in_cluster = false`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The context of `kubeconfig` to use; its current context when unset.
    #[serde(default)]
    pub context: Option<String>,
    /// Use the pod's service account (`KUBERNETES_SERVICE_HOST`, the mounted token and CA).
    #[serde(default)]
    pub in_cluster: bool,
    /// Roles that may be granted: ClusterRole names, or `Role/NAME` for a Role in the
    /// requested namespace. Required: nothing is grantable by default.
    pub roles: Vec<String>,
    /// Namespaces that may be requested; a trailing `*` matches a prefix (`team-*`).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Whether `scope = "cluster"` (a ClusterRoleBinding) may be requested.
    #[serde(default)]
    pub allow_cluster_scope: bool,
    /// `User` (default) or `Group`.
    #[serde(default)]
    pub subject_kind: SubjectKind,
    /// The kubeconfig context users reach this cluster by; `jitsudo exec` sets it as
    /// `JITSUDO_KUBE_CONTEXT`.
    #[serde(default)]
    pub user_context: Option<String>,
    /// Per API call (connect, send, answer).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}
