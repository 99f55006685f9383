//! The Kubernetes RBAC provider: a grant is a RoleBinding (scope = a namespace) or a
//! ClusterRoleBinding (scope = `cluster`) named `jitsudo-<grant_id>`, made with the real
//! `kube` client.
//!
//! Guarantees: the binding's name is the idempotency key (a repeated grant finds what a lost
//! answer created); a revoke turns the binding into a tombstone — no subjects, labelled
//! `jitsudo.dev/tombstone` — in one conditional write, so a late grant of the same id finds
//! the name taken and grants nothing; the reconciler deletes tombstones after `not_after`.
//! Kubernetes has no native expiry: the engine's expiry revokes at `not_after`, and the
//! reconciler reaps any binding past it. No credentials are minted: users keep their own
//! identity; `credentials` answers the variables `jitsudo exec` sets.

mod adapter;
mod config;
mod errors;

pub use adapter::{
    ANNOTATION_NOT_AFTER, KubernetesProvider, LABEL_GRANT_ID, LABEL_MANAGED_BY, LABEL_REQUEST_ID,
    LABEL_TOMBSTONE, MANAGED_BY, binding_name,
};
pub use config::{KubernetesConfig, SubjectKind};
