//! A fake of the two Azure services jitsudo's Azure provider talks to, over HTTPS with a CA
//! of its own (azure-identity refuses an `http://` authority): the Microsoft Entra token
//! endpoint (OpenID metadata, client-credentials grant with a client secret, Entra's error
//! bodies with their `AADSTS` codes) and Azure Resource Manager's `Microsoft.Authorization`
//! provider — role definitions, role assignments (2022-04-01) and PIM role assignment
//! schedule requests, schedules and instances (2020-10-01) — with bearer tokens, required
//! `api-version`s, `$filter` and `nextLink` paging, ARM's `CloudError` bodies, the conflict
//! and directory replication behaviours, a clock that ends PIM assignments at their
//! expiration, and faults. Built from Microsoft's REST specifications and documentation;
//! `NOTES.md` beside this file lists what is modelled, from where, and what is left out.
//!
//! ```no_run
//! # fn demo() -> anyhow::Result<()> {
//! use jitsudo_testkit::fakes::azure::{FakeAzure, READER};
//! use jitsudo_testkit::fakes::Filter;
//! let az = FakeAzure::start()?;
//! let sub = az.add_subscription();
//! let app = az.add_application("jitsudod");
//! let alice = az.add_user("alice@contoso.example");
//! az.faults().throttle(1, 2, Filter::method("PUT"));
//! // ... point a client at az.url() (trusting az.ca_pem()) with app's client id and secret ...
//! assert!(!az.has_role(&format!("/subscriptions/{sub}"), &alice, READER));
//! # Ok(()) }
//! ```

mod arm;
mod entra;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use chrono::{DateTime, TimeDelta, Utc};
use http::{Request, Response};
use http_body_util::Full;
use serde_json::Value;

use super::Filter;
use super::serve::{self, Answer, ResponseLost};

/// Built-in role definition ids (the same in every tenant).
pub const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
pub const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
pub const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
pub const USER_ACCESS_ADMINISTRATOR: &str = "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9";
pub const STORAGE_BLOB_DATA_READER: &str = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1";

const BUILT_IN: [(&str, &str, &str); 5] = [
    (
        OWNER,
        "Owner",
        "Grants full access to manage all resources, including the ability to assign roles in Azure RBAC.",
    ),
    (
        CONTRIBUTOR,
        "Contributor",
        "Grants full access to manage all resources, but does not allow you to assign roles in Azure RBAC.",
    ),
    (
        READER,
        "Reader",
        "View all resources, but does not allow you to make any changes.",
    ),
    (
        USER_ACCESS_ADMINISTRATOR,
        "User Access Administrator",
        "Lets you manage user access to Azure resources.",
    ),
    (
        STORAGE_BLOB_DATA_READER,
        "Storage Blob Data Reader",
        "Allows for read access to Azure Storage blob containers and data",
    ),
];

/// A registered application (service principal) that may ask for tokens.
#[derive(Clone, Debug)]
pub struct Application {
    pub client_id: String,
    /// The service principal's object id (`oid` of its tokens).
    pub object_id: String,
    pub secret: String,
}

#[derive(Clone, Debug)]
struct Principal {
    kind: &'static str,
    /// Entra replicates a new principal to ARM with a delay: before this, ARM answers
    /// `PrincipalNotFound` for it.
    visible_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
struct RoleDefinition {
    id: String,
    name: String,
    kind: &'static str,
    description: String,
}

/// One role assignment as ARM stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    pub name: String,
    pub scope: String,
    /// The role definition's GUID.
    pub role: String,
    pub principal_id: String,
    pub principal_type: String,
    pub description: Option<String>,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    pub created_by: String,
    /// Made by a PIM schedule request: its schedule and end.
    pub schedule: Option<Schedule>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub name: String,
    pub request: String,
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug)]
struct Token {
    client_id: String,
    object_id: String,
    expires: DateTime<Utc>,
    audience: String,
}

#[derive(Clone, Debug)]
enum Fault {
    Throttle(u32),
    Fail(u16),
    DropAfterApply,
}

/// One answered (or dropped) request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    /// `None` when the answer was dropped.
    pub status: Option<u16>,
    /// The client id of the caller's token, if any.
    pub caller: Option<String>,
}

/// A key an application may sign client assertions with.
#[derive(Clone, Debug)]
enum AssertionKey {
    /// A certificate registered on the application: its SHA-256 and SHA-1 thumbprints
    /// (`x5t#S256` and `x5t`, base64url) and public key.
    Certificate {
        thumbprints: [String; 2],
        public_pem: String,
    },
    /// A federated identity credential: tokens of `issuer` for `subject` (audience
    /// `api://AzureADTokenExchange`), signed by the issuer's key.
    Federated {
        issuer: String,
        subject: String,
        public_pem: String,
    },
}

struct State {
    tenant: String,
    apps: HashMap<String, Application>,
    assertion_keys: HashMap<String, Vec<AssertionKey>>,
    denied: BTreeSet<(String, String)>,
    tokens: HashMap<String, Token>,
    principals: HashMap<String, Principal>,
    subscriptions: BTreeSet<String>,
    management_groups: BTreeSet<String>,
    definitions: Vec<RoleDefinition>,
    assignments: BTreeMap<String, Assignment>,
    requests: BTreeMap<String, Value>,
    /// Added to the real time: tests move the fake's clock forward.
    offset: TimeDelta,
    replication_delay: TimeDelta,
    /// The longest active PIM assignment the role settings allow.
    max_active: TimeDelta,
    /// How long a PIM assignment must have been active before `AdminRemove` is taken.
    min_active: TimeDelta,
    page_size: usize,
    latency: Duration,
    faults: Vec<(Fault, usize, Filter)>,
    log: Vec<LoggedRequest>,
}

impl State {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset
    }

    /// PIM assignments end at their expiration, by the fake's clock.
    fn expire(&mut self) {
        let now = self.now();
        self.assignments.retain(|_, a| {
            a.schedule
                .as_ref()
                .and_then(|s| s.end)
                .is_none_or(|end| end > now)
        });
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    base: Mutex<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn base(&self) -> String {
        self.base.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The running fake; stops when dropped.
pub struct FakeAzure {
    shared: Arc<Shared>,
    server: serve::Server,
    ca_pem: String,
}

/// Switches faults on the running fake.
#[derive(Clone)]
pub struct Faults {
    shared: Arc<Shared>,
}

impl Faults {
    /// Added before every answer.
    pub fn latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// The next `n` matching ARM requests answer 429 `TooManyRequests` with `Retry-After`.
    pub fn throttle(&self, n: usize, retry_after_secs: u32, filter: Filter) {
        self.push(Fault::Throttle(retry_after_secs), n, filter);
    }

    /// The next `n` matching ARM requests answer `status` (500 or 503), unapplied.
    pub fn fail(&self, n: usize, status: u16, filter: Filter) {
        self.push(Fault::Fail(status), n, filter);
    }

    /// The next `n` matching ARM requests are applied, then the connection is closed.
    pub fn drop_after_apply(&self, n: usize, filter: Filter) {
        self.push(Fault::DropAfterApply, n, filter);
    }

    pub fn clear(&self) {
        let mut s = self.shared.lock();
        s.faults.clear();
        s.latency = Duration::ZERO;
    }

    fn push(&self, fault: Fault, n: usize, filter: Filter) {
        if n > 0 {
            self.shared.lock().faults.push((fault, n, filter));
        }
    }
}

fn guid() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl FakeAzure {
    /// Starts the fake on 127.0.0.1 (a free port) with a tenant of its own.
    pub fn start() -> Result<FakeAzure> {
        let tls = super::tls::generate("azure", &["management.azure.local", "login.azure.local"])?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                tenant: guid(),
                apps: HashMap::new(),
                assertion_keys: HashMap::new(),
                denied: BTreeSet::new(),
                tokens: HashMap::new(),
                principals: HashMap::new(),
                subscriptions: BTreeSet::new(),
                management_groups: BTreeSet::new(),
                definitions: BUILT_IN
                    .iter()
                    .map(|(id, name, description)| RoleDefinition {
                        id: (*id).to_owned(),
                        name: (*name).to_owned(),
                        kind: "BuiltInRole",
                        description: (*description).to_owned(),
                    })
                    .collect(),
                assignments: BTreeMap::new(),
                requests: BTreeMap::new(),
                offset: TimeDelta::zero(),
                replication_delay: TimeDelta::zero(),
                max_active: TimeDelta::days(180),
                min_active: TimeDelta::minutes(5),
                page_size: 100,
                latency: Duration::ZERO,
                faults: Vec::new(),
                log: Vec::new(),
            }),
            base: Mutex::new(String::new()),
        });
        let served = shared.clone();
        let server = serve::spawn(
            "fake-azure",
            serve::bind()?,
            Some(tls.config),
            Arc::new(move |req| Box::pin(serve(served.clone(), req))),
        )?;
        *shared.base.lock().unwrap_or_else(|p| p.into_inner()) =
            format!("https://127.0.0.1:{}", server.addr.port());
        Ok(FakeAzure {
            shared,
            server,
            ca_pem: tls.ca_pem,
        })
    }

    /// Both the authority host and the ARM endpoint (`https://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.server.addr.port())
    }

    /// The CA that signed the fake's certificate.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    pub fn tenant(&self) -> String {
        self.shared.lock().tenant.clone()
    }

    /// A new subscription id the fake knows.
    pub fn add_subscription(&self) -> String {
        let id = guid();
        self.shared.lock().subscriptions.insert(id.clone());
        id
    }

    pub fn add_management_group(&self, name: &str) {
        self.shared.lock().management_groups.insert(name.to_owned());
    }

    /// Registers a new certificate on an application; its PEM (certificate, then private
    /// key), as `az ad sp credential reset --create-cert` writes it.
    pub fn add_certificate(&self, client_id: &str) -> String {
        use base64::Engine as _;
        use sha2::Digest as _;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .expect("aws-lc-rs generates RSA keys");
        let mut params =
            rcgen::CertificateParams::new(vec![format!("{client_id}.fake")]).expect("valid names");
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).expect("a self-signed certificate");
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let thumbprints = [
            b64.encode(sha2::Sha256::digest(cert.der())),
            b64.encode(<sha1::Sha1 as sha1::Digest>::digest(cert.der())),
        ];
        self.shared
            .lock()
            .assertion_keys
            .entry(client_id.to_owned())
            .or_default()
            .push(AssertionKey::Certificate {
                thumbprints,
                public_pem: key.public_key_pem(),
            });
        format!("{}{}", cert.pem(), key.serialize_pem())
    }

    /// Trusts tokens of `issuer` for `subject` as the application (workload identity
    /// federation); returns a token of that issuer, valid for an hour, as AKS projects it.
    pub fn add_federated_credential(&self, client_id: &str, issuer: &str, subject: &str) -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .expect("aws-lc-rs generates RSA keys");
        self.shared
            .lock()
            .assertion_keys
            .entry(client_id.to_owned())
            .or_default()
            .push(AssertionKey::Federated {
                issuer: issuer.to_owned(),
                subject: subject.to_owned(),
                public_pem: key.public_key_pem(),
            });
        let now = Utc::now().timestamp();
        let claims = serde_json::json!({
            "iss": issuer, "sub": subject, "aud": ["api://AzureADTokenExchange"],
            "iat": now, "nbf": now, "exp": now + 3600,
        });
        let signing = jsonwebtoken::EncodingKey::from_rsa_pem(key.serialize_pem().as_bytes())
            .expect("an RSA key");
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &signing,
        )
        .expect("the token signs")
    }

    /// A new application with a client secret; its service principal may do everything
    /// until [`FakeAzure::deny`].
    pub fn add_application(&self, _display_name: &str) -> Application {
        let app = Application {
            client_id: guid(),
            object_id: guid(),
            secret: format!("{}~{}", &guid()[..8], guid().replace('-', "")),
        };
        let mut s = self.shared.lock();
        s.principals.insert(
            app.object_id.clone(),
            Principal {
                kind: "ServicePrincipal",
                visible_at: DateTime::<Utc>::MIN_UTC,
            },
        );
        s.apps.insert(app.client_id.clone(), app.clone());
        app
    }

    /// A user in the directory, visible to ARM after the replication delay; its object id.
    pub fn add_user(&self, _user_principal_name: &str) -> String {
        self.add_principal("User")
    }

    pub fn add_group(&self, _name: &str) -> String {
        self.add_principal("Group")
    }

    fn add_principal(&self, kind: &'static str) -> String {
        let id = guid();
        let mut s = self.shared.lock();
        let visible_at = s.now() + s.replication_delay;
        s.principals
            .insert(id.clone(), Principal { kind, visible_at });
        id
    }

    /// How long a new principal stays unknown to ARM (`PrincipalNotFound`).
    pub fn set_replication_delay(&self, delay: Duration) {
        self.shared.lock().replication_delay = TimeDelta::from_std(delay).unwrap_or_default();
    }

    /// A custom role definition; its id.
    pub fn add_custom_role(&self, name: &str) -> String {
        let id = guid();
        self.shared.lock().definitions.push(RoleDefinition {
            id: id.clone(),
            name: name.to_owned(),
            kind: "CustomRole",
            description: String::new(),
        });
        id
    }

    /// Takes an action (e.g. `Microsoft.Authorization/roleAssignments/write`) from an
    /// application's service principal.
    pub fn deny(&self, client_id: &str, action: &str) {
        self.shared
            .lock()
            .denied
            .insert((client_id.to_owned(), action.to_owned()));
    }

    /// The longest active PIM assignment allowed (the role settings' expiration rule).
    pub fn set_max_active(&self, max: Duration) {
        self.shared.lock().max_active = TimeDelta::from_std(max).unwrap_or_default();
    }

    /// How long a PIM assignment must be active before it may be removed (`AdminRemove`
    /// answers `ActiveDurationTooShort` before): five minutes, as in Azure.
    pub fn set_min_active(&self, min: Duration) {
        self.shared.lock().min_active = TimeDelta::from_std(min).unwrap_or_default();
    }

    /// Items per list page before a `nextLink`.
    pub fn set_page_size(&self, n: usize) {
        self.shared.lock().page_size = n.max(1);
    }

    /// Moves the fake's clock forward (PIM assignments past their end disappear).
    pub fn advance(&self, by: Duration) {
        let mut s = self.shared.lock();
        s.offset += TimeDelta::from_std(by).unwrap_or_default();
        s.expire();
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.shared.lock().now()
    }

    /// Every role assignment now.
    pub fn assignments(&self) -> Vec<Assignment> {
        let mut s = self.shared.lock();
        s.expire();
        s.assignments.values().cloned().collect()
    }

    /// Adds an assignment out of band (a human in the portal).
    pub fn put_assignment(&self, scope: &str, role: &str, principal_id: &str) -> String {
        let name = guid();
        let mut s = self.shared.lock();
        let now = s.now();
        s.assignments.insert(
            name.clone(),
            Assignment {
                name: name.clone(),
                scope: scope.to_owned(),
                role: role.to_owned(),
                principal_id: principal_id.to_owned(),
                principal_type: "User".into(),
                description: None,
                created: now,
                updated: now,
                created_by: guid(),
                schedule: None,
            },
        );
        name
    }

    /// Removes an assignment out of band.
    pub fn remove_assignment(&self, name: &str) -> bool {
        self.shared.lock().assignments.remove(name).is_some()
    }

    /// Whether `principal` holds role `role` (a definition GUID) at `scope`, directly or
    /// inherited from a scope above it, now by the fake's clock.
    pub fn has_role(&self, scope: &str, principal: &str, role: &str) -> bool {
        let scope = scope.to_ascii_lowercase();
        self.assignments().iter().any(|a| {
            a.principal_id == principal
                && a.role == role
                && arm::covers(&a.scope.to_ascii_lowercase(), &scope)
        })
    }

    pub fn faults(&self) -> Faults {
        Faults {
            shared: self.shared.clone(),
        }
    }

    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.lock().log.clone()
    }
}

fn take_fault(shared: &Shared, method: &str, path: &str) -> Option<Fault> {
    let mut s = shared.lock();
    let i = s
        .faults
        .iter()
        .position(|(_, n, f)| *n > 0 && f.matches(method, path))?;
    s.faults[i].1 -= 1;
    let fault = s.faults[i].0.clone();
    s.faults.retain(|(_, n, _)| *n > 0);
    Some(fault)
}

/// What a handler answers: status, JSON body (or none), extra headers.
pub(crate) struct Reply {
    pub status: u16,
    pub body: Option<Value>,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Reply {
            status,
            body: Some(body),
            headers: Vec::new(),
        }
    }

    pub fn empty(status: u16) -> Self {
        Reply {
            status,
            body: None,
            headers: Vec::new(),
        }
    }
}

fn respond(r: Reply, arm: bool) -> Response<Full<Bytes>> {
    let mut b = Response::builder()
        .status(r.status)
        .header(http::header::CACHE_CONTROL, "no-cache");
    if arm {
        let id = guid();
        b = b
            .header("x-ms-request-id", id.clone())
            .header("x-ms-correlation-request-id", id.clone())
            .header(
                "x-ms-routing-request-id",
                format!("WESTEUROPE:20261203T000000Z:{id}"),
            );
    } else {
        b = b
            .header("x-ms-request-id", guid())
            .header("x-ms-ests-server", "2.1.20000.2 - WEULR1 ProdSlices");
    }
    for (k, v) in r.headers {
        b = b.header(k, v);
    }
    let body = match r.body {
        Some(v) => {
            b = b.header(
                http::header::CONTENT_TYPE,
                "application/json; charset=utf-8",
            );
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    b.body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn serve(shared: Arc<Shared>, req: Request<Bytes>) -> Answer {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let latency = shared.lock().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let is_arm = path
        .to_ascii_lowercase()
        .contains("/providers/microsoft.authorization/");
    if !is_arm {
        let reply = entra::handle(&shared, &method, &path, req.headers(), req.body());
        log(&shared, &method, &path, &query, Some(reply.status), None);
        return Ok(respond(reply, false));
    }
    let caller = arm::authenticate(&shared, req.headers());
    let (reply, lost) = match &caller {
        Err(reply) => (Reply::json(reply.0, reply.1.clone()), false),
        Ok(token) => match take_fault(&shared, &method, &path) {
            Some(Fault::Throttle(secs)) => {
                let mut r = Reply::json(
                    429,
                    arm::error_body(
                        "TooManyRequests",
                        &format!(
                            "The request is being throttled as the limit has been reached for operation type - {}. Please try again after {secs} seconds.",
                            if method == "GET" { "Read" } else { "Write" }
                        ),
                    ),
                );
                r.headers.push(("Retry-After", secs.to_string()));
                (r, false)
            }
            Some(Fault::Fail(status)) => (
                Reply::json(
                    status,
                    if status == 503 {
                        arm::error_body(
                            "ServiceUnavailable",
                            "The service is unavailable now, please try again later.",
                        )
                    } else {
                        arm::error_body(
                            "InternalServerError",
                            "Encountered internal server error. Diagnostic information: timestamp '20261203T000000Z'.",
                        )
                    },
                ),
                false,
            ),
            fault => (
                arm::handle(&shared, token, &method, &path, &query, req.body()),
                matches!(fault, Some(Fault::DropAfterApply)),
            ),
        },
    };
    log(
        &shared,
        &method,
        &path,
        &query,
        (!lost).then_some(reply.status),
        caller.ok().map(|t| t.client_id),
    );
    if lost {
        return Err(ResponseLost);
    }
    Ok(respond(reply, true))
}

fn log(
    shared: &Shared,
    method: &str,
    path: &str,
    query: &str,
    status: Option<u16>,
    caller: Option<String>,
) {
    shared.lock().log.push(LoggedRequest {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        status,
        caller,
    });
}
