//! The [`Provider`] implementation over kube-rs.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::config::KubernetesConfig;
use super::errors::{Call, map};
use crate::{
    Credentials, GrantRecord, GrantSpec, GrantState, ManagedGrant, ManagedPage, Provider,
    ProviderError, ProviderInfo,
};

pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "jitsudo";
pub const LABEL_GRANT_ID: &str = "jitsudo.dev/grant-id";
pub const LABEL_REQUEST_ID: &str = "jitsudo.dev/request-id";
/// On a revoked grant's binding: it holds the name and grants nothing.
pub const LABEL_TOMBSTONE: &str = "jitsudo.dev/tombstone";
pub const ANNOTATION_NOT_AFTER: &str = "jitsudo.dev/not-after";
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
/// The scope that asks for a ClusterRoleBinding.
const CLUSTER_SCOPE: &str = "cluster";
/// Bindings per list call of the reconciler.
const PAGE_SIZE: u32 = 100;
/// Read-modify-write rounds before a write that keeps conflicting is given up (retryable).
const WRITE_ROUNDS: u32 = 6;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries of a 429/503/504 inside one call (each after Retry-After, or a short back-off).
const IN_CALL_RETRIES: u32 = 2;

/// The binding name of a grant: the idempotency key of every call about it.
pub fn binding_name(grant_id: Uuid) -> String {
    format!("jitsudo-{grant_id}")
}

/// Where a grant lives.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Namespace(String),
    Cluster,
}

/// What a grant's binding points at.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RoleName {
    ClusterRole(String),
    /// A Role in the target namespace.
    Role(String),
}

impl RoleName {
    fn parse(role: &str) -> RoleName {
        match role.strip_prefix("Role/") {
            Some(name) => RoleName::Role(name.to_owned()),
            None => RoleName::ClusterRole(role.to_owned()),
        }
    }

    fn role_ref(&self) -> RoleRef {
        let (kind, name) = match self {
            RoleName::ClusterRole(n) => ("ClusterRole", n),
            RoleName::Role(n) => ("Role", n),
        };
        RoleRef {
            api_group: RBAC_GROUP.into(),
            kind: kind.into(),
            name: name.clone(),
        }
    }

    fn of(role_ref: &RoleRef) -> String {
        match role_ref.kind.as_str() {
            "Role" => format!("Role/{}", role_ref.name),
            _ => role_ref.name.clone(),
        }
    }
}

fn target_of(scope: &str) -> Target {
    if scope == CLUSTER_SCOPE {
        Target::Cluster
    } else {
        Target::Namespace(scope.to_owned())
    }
}

/// The two binding kinds look alike; this is what the adapter needs of either.
trait Binding:
    kube::Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync
{
    const PLURAL: &'static str;
    fn make(meta: ObjectMeta, role_ref: RoleRef, subjects: Option<Vec<Subject>>) -> Self;
    fn role_ref(&self) -> &RoleRef;
    fn subjects(&self) -> &[Subject];
    fn clear_subjects(&mut self);
}

/// RoleBinding and ClusterRoleBinding have the same fields.
macro_rules! binding {
    ($kind:ty, $plural:literal) => {
        impl Binding for $kind {
            const PLURAL: &'static str = $plural;
            fn make(
                metadata: ObjectMeta,
                role_ref: RoleRef,
                subjects: Option<Vec<Subject>>,
            ) -> Self {
                Self {
                    metadata,
                    role_ref,
                    subjects,
                }
            }
            fn role_ref(&self) -> &RoleRef {
                &self.role_ref
            }
            fn subjects(&self) -> &[Subject] {
                self.subjects.as_deref().unwrap_or_default()
            }
            fn clear_subjects(&mut self) {
                self.subjects = None;
            }
        }
    };
}

binding!(RoleBinding, "rolebindings");
binding!(ClusterRoleBinding, "clusterrolebindings");

fn label<'a, B: Binding>(b: &'a B, key: &str) -> Option<&'a str> {
    b.meta().labels.as_ref()?.get(key).map(String::as_str)
}

fn is_tombstone<B: Binding>(b: &B) -> bool {
    label(b, LABEL_TOMBSTONE) == Some("true")
}

fn not_after_of<B: Binding>(b: &B) -> Option<DateTime<Utc>> {
    let text = b.meta().annotations.as_ref()?.get(ANNOTATION_NOT_AFTER)?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A pause between read-modify-write rounds that lost a race: jittered, growing.
async fn conflict_pause(round: u32) {
    let base = 20u64 << round.min(6);
    let ms = rand::rng().random_range(base / 2..=base);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// A [`Provider`] granting RBAC bindings in one cluster.
pub struct KubernetesProvider {
    name: String,
    client: kube::Client,
    config: KubernetesConfig,
}

impl Debug for KubernetesProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesProvider")
            .field("name", &self.name)
            .field("roles", &self.config.roles)
            .field("namespaces", &self.config.namespaces)
            .finish_non_exhaustive()
    }
}

impl KubernetesProvider {
    /// Checks the configuration and builds the client from the kubeconfig or the pod's
    /// service account. Errors name the key at fault.
    pub async fn from_config(name: &str, c: &KubernetesConfig) -> Result<Self, String> {
        check(c)?;
        let mut kube_config = match (&c.kubeconfig, c.in_cluster) {
            (Some(_), true) => {
                return Err("set either kubeconfig or in_cluster = true, not both".into());
            }
            (None, false) => {
                return Err(
                    "kubeconfig is required (a file path), or in_cluster = true to use the pod's service account"
                        .into(),
                );
            }
            (None, true) => kube::Config::incluster()
                .map_err(|e| format!("in_cluster: cannot use the pod's service account: {e}"))?,
            (Some(path), false) => {
                let file = Kubeconfig::read_from(path)
                    .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
                let options = KubeConfigOptions {
                    context: c.context.clone(),
                    ..KubeConfigOptions::default()
                };
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| match &c.context {
                        Some(ctx) => format!("kubeconfig {} context {ctx:?}: {e}", path.display()),
                        None => format!("kubeconfig {}: {e}", path.display()),
                    })?
            }
        };
        let timeout = c
            .timeout_seconds
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TIMEOUT);
        kube_config.connect_timeout = Some(timeout);
        kube_config.read_timeout = Some(timeout);
        kube_config.write_timeout = Some(timeout);
        // kube's default retries 15 times over up to 1000 s: far past any call timeout.
        // Instead a throttled or unavailable call is retried twice inside the call, waiting
        // what Retry-After asks (API Priority and Fairness sends it with a text body, so it
        // never reaches a Status); past that the engine's own back-off takes over and the
        // request's status shows why.
        kube_config.default_retry = false;
        let retry = kube::client::retry::RetryPolicy::new(
            Duration::from_millis(200),
            Duration::from_secs(2),
            IN_CALL_RETRIES,
            true,
        )
        .map_err(|e| format!("cannot build the retry policy: {e}"))?;
        let client = kube::client::ClientBuilder::try_from(kube_config)
            .map_err(|e| format!("cannot build the Kubernetes client: {e}"))?
            // Retrying needs a service it can clone: a buffer in front of kube's stack.
            .with_layer(&tower::buffer::BufferLayer::new(256))
            .with_layer(&tower::retry::RetryLayer::new(retry))
            .build();
        Ok(Self::new(name, client, c.clone()))
    }

    pub fn new(name: &str, client: kube::Client, config: KubernetesConfig) -> Self {
        KubernetesProvider {
            name: name.to_owned(),
            client,
            config,
        }
    }

    fn invalid(&self, field: &'static str, reason: String) -> ProviderError {
        ProviderError::Invalid {
            provider: self.name.clone(),
            field,
            reason,
        }
    }

    fn err(&self, what: &str, call: Call) -> impl FnOnce(kube::Error) -> ProviderError {
        let (name, what) = (self.name.clone(), what.to_owned());
        move |e| map(&name, &what, call, e)
    }

    /// The target and role of a request, checked against the allow-lists.
    fn allowed(&self, role: &str, scope: &str) -> Result<(Target, RoleName), ProviderError> {
        if !self.config.roles.iter().any(|r| r == role) {
            return Err(self.invalid(
                "role",
                format!(
                    "role {role:?} is not grantable by this provider; allowed: {}",
                    self.config.roles.join(", ")
                ),
            ));
        }
        let target = target_of(scope);
        let role = RoleName::parse(role);
        match &target {
            Target::Cluster if !self.config.allow_cluster_scope => {
                return Err(self.invalid(
                    "scope",
                    format!(
                        "scope \"cluster\" (a ClusterRoleBinding) is not allowed by this provider; request a namespace: {}",
                        self.config.namespaces.join(", ")
                    ),
                ));
            }
            Target::Cluster if matches!(role, RoleName::Role(_)) => {
                return Err(self.invalid(
                    "role",
                    "a Role/NAME lives in a namespace: request it for a namespace, not \"cluster\""
                        .into(),
                ));
            }
            Target::Namespace(ns) if !namespace_allowed(&self.config.namespaces, ns) => {
                return Err(self.invalid(
                    "scope",
                    format!(
                        "namespace {ns:?} is not allowed by this provider; allowed: {}{}",
                        self.config.namespaces.join(", "),
                        if self.config.allow_cluster_scope {
                            ", cluster"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            _ => {}
        }
        Ok((target, role))
    }

    fn labels(
        &self,
        grant_id: Uuid,
        request_id: Uuid,
        tombstone: bool,
    ) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
            (LABEL_GRANT_ID.to_owned(), grant_id.to_string()),
        ]);
        if !request_id.is_nil() {
            labels.insert(LABEL_REQUEST_ID.to_owned(), request_id.to_string());
        }
        if tombstone {
            labels.insert(LABEL_TOMBSTONE.to_owned(), "true".to_owned());
        }
        labels
    }

    fn binding<B: Binding>(
        &self,
        record: &GrantRecord,
        target: &Target,
        role: &RoleName,
        tombstone: bool,
    ) -> B {
        let meta = ObjectMeta {
            name: Some(binding_name(record.grant_id)),
            namespace: match target {
                Target::Namespace(ns) => Some(ns.clone()),
                Target::Cluster => None,
            },
            labels: Some(self.labels(record.grant_id, record.request_id, tombstone)),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_NOT_AFTER.to_owned(),
                record
                    .not_after
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            )])),
            ..ObjectMeta::default()
        };
        let subjects = (!tombstone).then(|| vec![self.subject(&record.subject)]);
        B::make(meta, role.role_ref(), subjects)
    }

    fn subject(&self, principal: &str) -> Subject {
        Subject {
            api_group: Some(RBAC_GROUP.into()),
            kind: self.config.subject_kind.as_str().into(),
            name: principal.to_owned(),
            namespace: None,
        }
    }

    fn provider_ref(target: &Target, grant_id: Uuid) -> String {
        match target {
            Target::Namespace(ns) => format!("rolebindings/{ns}/{}", binding_name(grant_id)),
            Target::Cluster => format!("clusterrolebindings/{}", binding_name(grant_id)),
        }
    }

    fn record(spec: &GrantSpec, target: &Target) -> GrantRecord {
        GrantRecord {
            provider_ref: Self::provider_ref(target, spec.grant_id),
            ..GrantRecord::from_spec(spec)
        }
    }

    async fn grant_in<B: Binding>(
        &self,
        api: &Api<B>,
        spec: &GrantSpec,
        target: &Target,
        role: &RoleName,
    ) -> Result<GrantRecord, ProviderError> {
        let record = Self::record(spec, target);
        let want: B = self.binding(&record, target, role, false);
        let name = binding_name(spec.grant_id);
        for round in 0..WRITE_ROUNDS {
            match api.create(&PostParams::default(), &want).await {
                Ok(_) => return Ok(record),
                Err(kube::Error::Api(s)) if s.is_already_exists() => {
                    match api
                        .get_opt(&name)
                        .await
                        .map_err(self.err("reading the existing binding", Call::Read))?
                    {
                        Some(existing) => return self.judge_existing(&existing, &want, record),
                        // Deleted between our create and read: create again.
                        None => conflict_pause(round).await,
                    }
                }
                Err(kube::Error::Api(s)) if s.is_not_found() => {
                    return Err(self.invalid(
                        "scope",
                        format!(
                            "the cluster has no namespace {:?} ({})",
                            spec.scope, s.message
                        ),
                    ));
                }
                Err(e) => return Err(self.err("creating the binding", Call::Write)(e)),
            }
        }
        Err(ProviderError::Unavailable {
            provider: self.name.clone(),
            reason: format!("binding {name} kept appearing and disappearing; retry"),
        })
    }

    /// A binding of the grant's name exists already: ours from an earlier attempt (the
    /// repeated grant is a success), a tombstone (nothing is granted), or something else.
    fn judge_existing<B: Binding>(
        &self,
        existing: &B,
        want: &B,
        record: GrantRecord,
    ) -> Result<GrantRecord, ProviderError> {
        if is_tombstone(existing) {
            return Err(ProviderError::Tombstoned {
                provider: self.name.clone(),
                grant_id: record.grant_id,
            });
        }
        let ours = label(existing, LABEL_GRANT_ID) == Some(record.grant_id.to_string().as_str());
        let same_role = existing.role_ref() == want.role_ref();
        let holds = existing
            .subjects()
            .iter()
            .any(|s| s.name == record.subject && s.kind == self.config.subject_kind.as_str());
        if ours && same_role && holds {
            return Ok(record);
        }
        Err(self.invalid(
            "grant_id",
            format!(
                "a binding named {} exists with other content (role {}, subjects {}); it was not made by this grant",
                binding_name(record.grant_id),
                RoleName::of(existing.role_ref()),
                existing
                    .subjects()
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ))
    }

    /// Turns the binding into a tombstone in one conditional write (or creates the
    /// tombstone when there is none), so a grant call still on its way finds the name taken.
    async fn revoke_in<B: Binding>(
        &self,
        api: &Api<B>,
        record: &GrantRecord,
        target: &Target,
    ) -> Result<(), ProviderError> {
        let name = binding_name(record.grant_id);
        let role = RoleName::parse(&record.role);
        for round in 0..WRITE_ROUNDS {
            let current = api
                .get_opt(&name)
                .await
                .map_err(self.err("reading the binding to revoke", Call::Read))?;
            let result = match current {
                Some(b) if is_tombstone(&b) => return Ok(()),
                Some(mut b) => {
                    // Precondition: the resourceVersion we read (kept in b.metadata).
                    b.clear_subjects();
                    let labels = b.meta_mut().labels.get_or_insert_with(BTreeMap::new);
                    labels.insert(LABEL_TOMBSTONE.to_owned(), "true".to_owned());
                    labels.insert(LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned());
                    labels.insert(LABEL_GRANT_ID.to_owned(), record.grant_id.to_string());
                    let keep_until =
                        not_after_of(&b).map_or(record.not_after, |t| t.max(record.not_after));
                    b.meta_mut()
                        .annotations
                        .get_or_insert_with(BTreeMap::new)
                        .insert(
                            ANNOTATION_NOT_AFTER.to_owned(),
                            keep_until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        );
                    api.replace(&name, &PostParams::default(), &b)
                        .await
                        .map(drop)
                }
                None => {
                    let tombstone: B = self.binding(record, target, &role, true);
                    api.create(&PostParams::default(), &tombstone)
                        .await
                        .map(drop)
                }
            };
            match result {
                Ok(()) => return Ok(()),
                // Lost a race (a grant landed, or another revoke): read again.
                Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => {
                    conflict_pause(round).await;
                }
                // The escalation check applies to updates too: without `bind` on the role
                // any more, the tombstone cannot be written. Delete instead — access ends
                // now, and a late grant of this role is refused for the same reason.
                Err(kube::Error::Api(s)) if s.is_forbidden() => {
                    return match api.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
                        Err(e) => Err(self.err("deleting the binding to revoke", Call::Write)(e)),
                    };
                }
                // No such namespace: nothing can be granted in it either.
                Err(kube::Error::Api(s)) if s.is_not_found() => return Ok(()),
                Err(e) => return Err(self.err("revoking the binding", Call::Write)(e)),
            }
        }
        Err(ProviderError::Unavailable {
            provider: self.name.clone(),
            reason: format!("binding {name} kept changing while it was revoked; retry"),
        })
    }

    async fn state_in<B: Binding>(
        &self,
        api: &Api<B>,
        grant_id: Uuid,
    ) -> Result<GrantState, ProviderError> {
        let found = api
            .get_opt(&binding_name(grant_id))
            .await
            .map_err(self.err("reading the binding", Call::Read))?;
        Ok(match found {
            Some(b) if !is_tombstone(&b) && !b.subjects().is_empty() => GrantState::Active,
            _ => GrantState::Gone,
        })
    }

    async fn state(&self, grant: &GrantRecord) -> Result<GrantState, ProviderError> {
        match target_of(&grant.scope) {
            Target::Namespace(ns) => {
                self.state_in(
                    &Api::<RoleBinding>::namespaced(self.client.clone(), &ns),
                    grant.grant_id,
                )
                .await
            }
            Target::Cluster => {
                self.state_in(
                    &Api::<ClusterRoleBinding>::all(self.client.clone()),
                    grant.grant_id,
                )
                .await
            }
        }
    }

    async fn list_page<B: Binding>(
        &self,
        api: &Api<B>,
        continue_token: Option<String>,
    ) -> Result<(Vec<ManagedGrant>, Option<String>), ProviderError> {
        let params = ListParams {
            label_selector: Some(format!("{LABEL_MANAGED_BY}={MANAGED_BY}")),
            limit: Some(PAGE_SIZE),
            continue_token,
            ..ListParams::default()
        };
        let list = api
            .list(&params)
            .await
            .map_err(self.err(&format!("listing {}", B::PLURAL), Call::Read))?;
        let grants = list
            .items
            .iter()
            .filter_map(|b| {
                let grant_id = label(b, LABEL_GRANT_ID)?.parse().ok()?;
                let namespace = b.meta().namespace.clone();
                let target = namespace.map_or(Target::Cluster, Target::Namespace);
                Some(ManagedGrant {
                    grant_id,
                    request_id: label(b, LABEL_REQUEST_ID).and_then(|r| r.parse().ok()),
                    subject: b
                        .subjects()
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    role: RoleName::of(b.role_ref()),
                    scope: match &target {
                        Target::Namespace(ns) => ns.clone(),
                        Target::Cluster => CLUSTER_SCOPE.into(),
                    },
                    not_after: not_after_of(b),
                    provider_ref: Self::provider_ref(&target, grant_id),
                    tombstone: is_tombstone(b),
                })
            })
            .collect();
        let next = list.metadata.continue_.filter(|c| !c.is_empty());
        Ok((grants, next))
    }

    async fn forget_in<B: Binding>(
        &self,
        api: &Api<B>,
        grant_id: Uuid,
    ) -> Result<(), ProviderError> {
        let name = binding_name(grant_id);
        let Some(b) = api
            .get_opt(&name)
            .await
            .map_err(self.err("reading the tombstone", Call::Read))?
        else {
            return Ok(());
        };
        // Only a tombstone whose time is over goes: nothing can turn it back into a grant,
        // since a grant past its not_after is refused before any call.
        if !is_tombstone(&b) || not_after_of(&b).is_some_and(|t| t > Utc::now()) {
            return Ok(());
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => Err(self.err("deleting the tombstone", Call::Write)(e)),
        }
    }
}

fn namespace_allowed(allowed: &[String], ns: &str) -> bool {
    allowed.iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => ns.starts_with(prefix) && ns.len() > prefix.len(),
        None => a == ns,
    })
}

/// A role name as the API server takes it: RBAC names are path segments, so anything but
/// `/` and `%`, and not `.` or `..`.
fn role_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && !s.contains(['/', '%'])
        && s != "."
        && s != ".."
        && !s.chars().any(char::is_control)
}

/// A namespace name (DNS-1123 label), or a prefix of one followed by `*`.
fn namespace_pattern_ok(n: &str) -> bool {
    let (stem, prefix) = match n.strip_suffix('*') {
        Some(stem) => (stem, true),
        None => (n, false),
    };
    !stem.is_empty()
        && stem.len() <= 63
        && stem
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !stem.starts_with('-')
        && (prefix || !stem.ends_with('-'))
}

fn check(c: &KubernetesConfig) -> Result<(), String> {
    if c.roles.is_empty() {
        return Err(
            "roles is required: the ClusterRoles (or Role/NAME) this provider may grant".into(),
        );
    }
    for r in &c.roles {
        if !role_name_ok(r.strip_prefix("Role/").unwrap_or(r)) {
            return Err(format!("roles: {r:?} is not a valid role name"));
        }
    }
    for n in &c.namespaces {
        if !namespace_pattern_ok(n) {
            return Err(format!(
                "namespaces: {n:?} is not a namespace name or a prefix ending in '*'"
            ));
        }
    }
    if c.namespaces.is_empty() && !c.allow_cluster_scope {
        return Err(
            "nothing could be requested: set namespaces (e.g. [\"team-a\", \"team-*\"]) or allow_cluster_scope = true"
                .into(),
        );
    }
    if c.timeout_seconds == Some(0) {
        return Err("timeout_seconds must be at least 1".into());
    }
    Ok(())
}

#[async_trait]
impl Provider for KubernetesProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn validate(&self, spec: &GrantSpec) -> Result<(), ProviderError> {
        if spec.subject.trim().is_empty() {
            return Err(self.invalid("subject", "the mapped principal is empty".into()));
        }
        let (target, role) = self.allowed(&spec.role, &spec.scope)?;
        let exists = match (&role, &target) {
            (RoleName::ClusterRole(name), _) => Api::<ClusterRole>::all(self.client.clone())
                .get_opt(name)
                .await
                .map(|r| r.is_some()),
            (RoleName::Role(name), Target::Namespace(ns)) => {
                Api::<Role>::namespaced(self.client.clone(), ns)
                    .get_opt(name)
                    .await
                    .map(|r| r.is_some())
            }
            (RoleName::Role(_), Target::Cluster) => Ok(false),
        }
        .map_err(self.err("looking up the role", Call::Read))?;
        if !exists {
            let place = match (&role, &target) {
                (RoleName::Role(_), Target::Namespace(ns)) => format!(" in namespace {ns:?}"),
                _ => String::new(),
            };
            return Err(self.invalid(
                "role",
                format!("role {:?} does not exist in the cluster{place}", spec.role),
            ));
        }
        Ok(())
    }

    async fn grant(&self, spec: &GrantSpec) -> Result<GrantRecord, ProviderError> {
        let (target, role) = self.allowed(&spec.role, &spec.scope)?;
        if spec.subject.trim().is_empty() {
            return Err(self.invalid("subject", "the mapped principal is empty".into()));
        }
        if spec.not_after <= Utc::now() {
            return Err(self.invalid(
                "not_after",
                format!(
                    "{} is already in the past: nothing was granted",
                    spec.not_after
                ),
            ));
        }
        match &target {
            Target::Namespace(ns) => {
                let api = Api::<RoleBinding>::namespaced(self.client.clone(), ns);
                self.grant_in(&api, spec, &target, &role).await
            }
            Target::Cluster => {
                let api = Api::<ClusterRoleBinding>::all(self.client.clone());
                self.grant_in(&api, spec, &target, &role).await
            }
        }
    }

    async fn revoke(&self, grant: &GrantRecord) -> Result<(), ProviderError> {
        // No allow-list check: access granted under an older configuration must still go.
        let target = target_of(&grant.scope);
        match &target {
            Target::Namespace(ns) => {
                let api = Api::<RoleBinding>::namespaced(self.client.clone(), ns);
                self.revoke_in(&api, grant, &target).await
            }
            Target::Cluster => {
                let api = Api::<ClusterRoleBinding>::all(self.client.clone());
                self.revoke_in(&api, grant, &target).await
            }
        }
    }

    async fn inspect(&self, grant: &GrantRecord) -> Result<GrantState, ProviderError> {
        self.state(grant).await
    }

    async fn credentials(&self, grant: &GrantRecord) -> Result<Credentials, ProviderError> {
        if self.state(grant).await? != GrantState::Active {
            return Err(ProviderError::NotActive {
                provider: self.name.clone(),
                grant_id: grant.grant_id,
            });
        }
        let mut env = BTreeMap::from([
            ("JITSUDO_KUBE_PROVIDER".to_owned(), self.name.clone()),
            ("JITSUDO_KUBE_ROLE".to_owned(), grant.role.clone()),
        ]);
        if grant.scope != CLUSTER_SCOPE {
            env.insert("JITSUDO_KUBE_NAMESPACE".to_owned(), grant.scope.clone());
        }
        if let Some(ctx) = &self.config.user_context {
            env.insert("JITSUDO_KUBE_CONTEXT".to_owned(), ctx.clone());
        }
        let mut how = String::from("kubectl");
        if self.config.user_context.is_some() {
            how.push_str(" --context \"$JITSUDO_KUBE_CONTEXT\"");
        }
        if grant.scope != CLUSTER_SCOPE {
            how.push_str(" -n \"$JITSUDO_KUBE_NAMESPACE\"");
        }
        Ok(Credentials {
            env,
            expires_at: grant.not_after,
            // The values stay in `env` only: the notice is shown (and logged) as it is.
            notice: Some(format!(
                "no credentials are minted for Kubernetes: your own identity holds the role until the grant ends; use {how}"
            )),
        })
    }

    async fn list_managed(&self, page: Option<&str>) -> Result<ManagedPage, ProviderError> {
        // Page tokens: "rb:<continue>" walks the RoleBindings of every namespace, then
        // "crb:<continue>" the ClusterRoleBindings.
        let (cluster, token) = match page {
            None => (false, None),
            Some(p) => match p.split_once(':') {
                Some(("rb", t)) => (false, Some(t.to_owned())),
                Some(("crb", t)) => (true, (!t.is_empty()).then(|| t.to_owned())),
                _ => {
                    return Err(self.invalid(
                        "page",
                        format!("{p:?} is not a page token of this provider"),
                    ));
                }
            },
        };
        if !cluster {
            let api = Api::<RoleBinding>::all(self.client.clone());
            let (grants, next) = self.list_page(&api, token).await?;
            let next = Some(match next {
                Some(c) => format!("rb:{c}"),
                None => "crb:".to_owned(),
            });
            return Ok(ManagedPage { grants, next });
        }
        let api = Api::<ClusterRoleBinding>::all(self.client.clone());
        let (grants, next) = self.list_page(&api, token).await?;
        Ok(ManagedPage {
            grants,
            next: next.map(|c| format!("crb:{c}")),
        })
    }

    async fn forget(&self, tombstone: &ManagedGrant) -> Result<(), ProviderError> {
        match target_of(&tombstone.scope) {
            Target::Namespace(ns) => {
                let api = Api::<RoleBinding>::namespaced(self.client.clone(), &ns);
                self.forget_in(&api, tombstone.grant_id).await
            }
            Target::Cluster => {
                let api = Api::<ClusterRoleBinding>::all(self.client.clone());
                self.forget_in(&api, tombstone.grant_id).await
            }
        }
    }

    fn info(&self) -> ProviderInfo {
        let mut scopes = self.config.namespaces.clone();
        if self.config.allow_cluster_scope {
            scopes.push(CLUSTER_SCOPE.into());
        }
        ProviderInfo {
            kind: "kubernetes".into(),
            roles: self.config.roles.clone(),
            scopes,
            native_expiry: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(namespaces: &[&str], cluster: bool) -> KubernetesConfig {
        KubernetesConfig {
            kubeconfig: Some("/k".into()),
            context: None,
            in_cluster: false,
            roles: vec!["view".into(), "Role/deployer".into()],
            namespaces: namespaces.iter().map(|s| (*s).to_owned()).collect(),
            allow_cluster_scope: cluster,
            subject_kind: Default::default(),
            user_context: None,
            timeout_seconds: None,
        }
    }

    #[test]
    fn namespace_patterns_match_exactly_or_by_prefix() {
        let allowed = vec!["team-a".to_owned(), "dev-*".to_owned()];
        assert!(namespace_allowed(&allowed, "team-a"));
        assert!(!namespace_allowed(&allowed, "team-ab"));
        assert!(namespace_allowed(&allowed, "dev-x"));
        assert!(!namespace_allowed(&allowed, "dev-"));
        assert!(!namespace_allowed(&allowed, "prod"));
    }

    #[test]
    fn configuration_faults_name_the_key() {
        assert!(check(&config(&["team-a", "dev-*"], false)).is_ok());
        let e = check(&config(&[], false)).unwrap_err();
        assert!(
            e.contains("namespaces") && e.contains("allow_cluster_scope"),
            "{e}"
        );
        let mut c = config(&["Team_A"], false);
        assert!(check(&c).unwrap_err().contains("namespaces"));
        c = config(&["a"], false);
        c.roles.clear();
        assert!(check(&c).unwrap_err().contains("roles is required"));
        c = config(&["a"], false);
        c.roles = vec!["team/admin".into()];
        assert!(check(&c).unwrap_err().contains("\"team/admin\""));
    }

    #[test]
    fn role_names_round_trip_through_role_refs() {
        for r in ["view", "Role/deployer", "system:aggregate-to-view"] {
            assert_eq!(RoleName::of(&RoleName::parse(r).role_ref()), r);
        }
    }
}
