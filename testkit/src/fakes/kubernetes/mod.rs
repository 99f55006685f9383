//! A fake of the Kubernetes API server's RBAC subset (rbac.authorization.k8s.io/v1 over TLS
//! with bearer tokens), built from the API conventions and the apiserver's own code paths so
//! that clients see the real status codes, `metav1.Status` reasons and messages, resource
//! versions, paging tokens and escalation rules. `NOTES.md` beside this file lists what is
//! modelled and what is left out.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use jitsudo_testkit::fakes::kubernetes::{FakeKube, Filter, Kind, Rights};
//! let kube = FakeKube::start().await?;
//! kube.seed_cluster_role("view");
//! kube.add_user("t0k3n", "jitsudo", Rights { bindable: vec!["view".into()], ..Rights::default() });
//! kube.faults().throttle(1, 2, Filter::method("POST"));
//! // ... point a client at kube.url() with kube.ca_pem() ...
//! assert_eq!(kube.objects(Kind::RoleBinding).len(), 0);
//! # Ok(()) }
//! ```

mod api;
mod discovery;
mod escalation;
mod faults;
mod list;
mod patch;
mod rbac;
mod selector;
mod server;
mod status;
mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use base64::Engine;
use serde_json::{Value, json};

pub use faults::{FaultHandle, Filter, LoggedRequest};

use status::{GroupResource, RBAC_GROUP};
use store::Store;

/// The four RBAC kinds the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    ClusterRole,
    ClusterRoleBinding,
    Role,
    RoleBinding,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::ClusterRole,
        Kind::ClusterRoleBinding,
        Kind::Role,
        Kind::RoleBinding,
    ];

    /// The Kind, e.g. "RoleBinding".
    pub fn name(self) -> &'static str {
        match self {
            Kind::ClusterRole => "ClusterRole",
            Kind::ClusterRoleBinding => "ClusterRoleBinding",
            Kind::Role => "Role",
            Kind::RoleBinding => "RoleBinding",
        }
    }

    /// The resource, e.g. "rolebindings".
    pub fn resource(self) -> &'static str {
        match self {
            Kind::ClusterRole => "clusterroles",
            Kind::ClusterRoleBinding => "clusterrolebindings",
            Kind::Role => "roles",
            Kind::RoleBinding => "rolebindings",
        }
    }

    pub fn singular(self) -> &'static str {
        match self {
            Kind::ClusterRole => "clusterrole",
            Kind::ClusterRoleBinding => "clusterrolebinding",
            Kind::Role => "role",
            Kind::RoleBinding => "rolebinding",
        }
    }

    pub fn namespaced(self) -> bool {
        matches!(self, Kind::Role | Kind::RoleBinding)
    }

    pub fn is_binding(self) -> bool {
        matches!(self, Kind::ClusterRoleBinding | Kind::RoleBinding)
    }

    fn list_kind(self) -> String {
        format!("{}List", self.name())
    }

    fn group_resource(self) -> GroupResource {
        GroupResource::new(RBAC_GROUP, self.resource())
    }

    fn from_resource(resource: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.resource() == resource)
    }
}

/// What a (non-admin) token's user may do. Every user may read RBAC objects and namespaces.
///
/// Binding follows the RBAC escalation check: a user may create or update a binding when it
/// may `bind` the referenced role (`bind_all`, or the role's name in `bindable`; write
/// `clusterroles/NAME` or `roles/NAME` to restrict an entry to one kind) *or* already holds
/// every rule of that role (through bindings stored in the fake). Non-admins never hold
/// `escalate`, so they may only create roles whose rules they hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rights {
    pub bind_all: bool,
    pub bindable: Vec<String>,
    /// Writes (create, update, patch, delete) answer 403 Forbidden.
    pub read_only: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct User {
    name: String,
    groups: Vec<String>,
    /// In `system:masters`: no authorization or escalation checks.
    admin: bool,
    rights: Rights,
}

impl User {
    fn may_bind(&self, role_kind: &str, role_name: &str) -> bool {
        let qualified = match role_kind {
            "ClusterRole" => format!("clusterroles/{role_name}"),
            "Role" => format!("roles/{role_name}"),
            _ => return false,
        };
        self.rights.bind_all
            || self
                .rights
                .bindable
                .iter()
                .any(|b| b == role_name || *b == qualified)
    }
}

pub(crate) struct Shared {
    store: Mutex<Store>,
    users: Mutex<HashMap<String, User>>,
    faults: FaultHandle,
    addr: SocketAddr,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn user(&self, token: &str) -> Option<User> {
        self.users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    fn add_user(&self, token: &str, user: User) {
        self.users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_string(), user);
    }
}

pub(crate) fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// metav1.Time on the wire: RFC 3339, second precision, UTC with "Z".
pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A running fake API server; it stops when dropped.
pub struct FakeKube {
    shared: Arc<Shared>,
    ca_pem: String,
    admin_token: String,
    _server: super::serve::Server,
}

const DEFAULT_NAMESPACES: [&str; 4] = ["default", "kube-node-lease", "kube-public", "kube-system"];

impl FakeKube {
    /// Starts a fake on 127.0.0.1 with a fresh CA, the namespaces a new cluster has, and an
    /// admin token (user "kubernetes-admin" in `system:masters`).
    pub async fn start() -> Result<FakeKube> {
        Self::start_blocking()
    }

    /// [`FakeKube::start`] for synchronous tests: the fake serves from its own thread.
    pub fn start_blocking() -> Result<FakeKube> {
        crate::init_crypto();
        let tls = super::tls::generate("kube-apiserver", &["kubernetes"])?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            users: Mutex::new(HashMap::new()),
            faults: FaultHandle::default(),
            addr,
        });
        {
            let mut store = shared.store();
            for ns in DEFAULT_NAMESPACES {
                store.add_namespace(ns, new_uid(), now_rfc3339());
            }
        }
        let admin_token = format!("admin-{}", new_uid());
        shared.add_user(
            &admin_token,
            User {
                name: "kubernetes-admin".into(),
                groups: vec!["system:masters".into(), "system:authenticated".into()],
                admin: true,
                rights: Rights {
                    bind_all: true,
                    ..Rights::default()
                },
            },
        );
        let running = server::spawn(shared.clone(), listener, tls.config)?;
        Ok(FakeKube {
            shared,
            ca_pem: tls.ca_pem,
            admin_token,
            _server: running,
        })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.shared.addr)
    }

    /// The PEM of the CA that signed the serving certificate.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    pub fn admin_token(&self) -> String {
        self.admin_token.clone()
    }

    /// Registers `token` for `user` (groups: `system:authenticated`) with `rights`.
    pub fn add_user(&self, token: &str, user: &str, rights: Rights) {
        self.shared.add_user(
            token,
            User {
                name: user.into(),
                groups: vec!["system:authenticated".into()],
                admin: false,
                rights,
            },
        );
    }

    /// Registers another token for a `system:masters` user.
    pub fn add_admin(&self, token: &str, user: &str) {
        self.shared.add_user(
            token,
            User {
                name: user.into(),
                groups: vec!["system:masters".into(), "system:authenticated".into()],
                admin: true,
                rights: Rights {
                    bind_all: true,
                    ..Rights::default()
                },
            },
        );
    }

    /// A kubeconfig with context, cluster and user all named "fake", the CA inline.
    pub fn write_kubeconfig(&self, path: &Path, token: &str) -> Result<()> {
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        // JSON strings are valid YAML double-quoted scalars.
        let q = |s: &str| Value::String(s.to_string()).to_string();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: fake\n  user:\n    token: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\npreferences: {{}}\n",
            q(&self.url()),
            q(&ca),
            q(token)
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Adds a namespace (as if created by an admin); no-op when it exists.
    pub fn seed_namespace(&self, name: &str) {
        self.shared
            .store()
            .add_namespace(name, new_uid(), now_rfc3339());
    }

    /// A ClusterRole with one harmless rule: get on configmaps.
    pub fn seed_cluster_role(&self, name: &str) {
        self.put_object(
            Kind::ClusterRole,
            seed_role_body(Kind::ClusterRole, None, name),
        );
    }

    /// A Role with one harmless rule; the namespace is created if missing.
    pub fn seed_role(&self, namespace: &str, name: &str) {
        self.seed_namespace(namespace);
        self.put_object(
            Kind::Role,
            seed_role_body(Kind::Role, Some(namespace), name),
        );
    }

    /// Every stored object of `kind` in key order, as a GET would return it.
    pub fn objects(&self, kind: Kind) -> Vec<Value> {
        self.shared.store().all(kind)
    }

    pub fn object(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Option<Value> {
        let k = store::key(namespace.filter(|_| kind.namespaced()), name);
        self.shared.store().get(kind, &k).cloned()
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.shared.store().all(kind).len()
    }

    /// Writes `obj` straight to storage, as another client (or an operator with etcdctl)
    /// would have: no validation, admission or escalation check. `uid`, `creationTimestamp`,
    /// `kind` and `apiVersion` are filled in when missing; the object gets the next
    /// resourceVersion. Returns the stored object.
    pub fn put_object(&self, kind: Kind, obj: Value) -> Value {
        let mut obj = match rbac::decode(kind, &obj) {
            Ok((normalized, _)) => normalized,
            Err(_) => obj,
        };
        obj["kind"] = json!(kind.name());
        obj["apiVersion"] = json!("rbac.authorization.k8s.io/v1");
        rbac::apply_defaults(kind, &mut obj);
        let meta = &mut obj["metadata"];
        for (field, value) in [("uid", new_uid()), ("creationTimestamp", now_rfc3339())] {
            if meta[field].as_str().unwrap_or("").is_empty() {
                meta[field] = json!(value);
            }
        }
        if let (false, Some(m)) = (kind.namespaced(), meta.as_object_mut()) {
            m.remove("namespace");
        }
        let name = meta["name"].as_str().unwrap_or("").to_string();
        let ns = meta["namespace"].as_str().map(str::to_string);
        let k = store::key(ns.as_deref().filter(|_| kind.namespaced()), &name);
        self.shared.store().put(kind, &k, obj)
    }

    /// Deletes an object behind the client's back; false when it did not exist.
    pub fn remove_object(&self, kind: Kind, namespace: Option<&str>, name: &str) -> bool {
        let k = store::key(namespace.filter(|_| kind.namespaced()), name);
        self.shared.store().delete(kind, &k).is_some()
    }

    /// The newest resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().current_rv()
    }

    /// Compacts the history like etcd's periodic compaction: list continuations issued before
    /// now answer 410 Expired.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    pub fn faults(&self) -> FaultHandle {
        self.shared.faults.clone()
    }

    /// Every request answered (or dropped) so far, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.faults.requests()
    }
}

fn seed_role_body(kind: Kind, ns: Option<&str>, name: &str) -> Value {
    let mut meta = json!({"name": name});
    if let Some(ns) = ns {
        meta["namespace"] = json!(ns);
    }
    json!({
        "kind": kind.name(), "apiVersion": "rbac.authorization.k8s.io/v1", "metadata": meta,
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]
    })
}
