//! A fake of Cloud Resource Manager v3's IAM policy methods (`getIamPolicy`, `setIamPolicy`
//! on projects, folders and organizations) over HTTP/JSON, built from Google's API
//! definitions and documentation: proto3 JSON policies with base64 etags that change on
//! every write, `ABORTED` (409) on a stale etag, policy versions (conditions need 3), the
//! documented limits, conditions compiled and **evaluated** with CEL, callers authenticated
//! by their service account's self-signed JWT (RS256, checked against the key's public
//! half), Google's error bodies, and faults (latency, 429 with `RetryInfo`, 503, a write
//! applied whose answer is lost). `NOTES.md` beside this file lists what is modelled, from
//! where, and what is left out.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use jitsudo_testkit::fakes::gcp::{FakeGcp, Rpc};
//! let gcp = FakeGcp::start()?;
//! gcp.add_resource("projects/p1");
//! let key = gcp.service_account("jitsudod@p1.iam.gserviceaccount.com");
//! gcp.faults().throttle(1, 2, Rpc::Set);
//! // ... point a client at gcp.url() with `key` as its credentials ...
//! let now = chrono::Utc::now();
//! assert!(!gcp.has_role("projects/p1", "user:a@example.com", "roles/browser", now));
//! # Ok(()) }
//! ```

mod policy;
mod status;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Result;
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use serde_json::{Value, json};

use super::serve::{self, Answer, ResponseLost};

use policy::Stored;
pub use policy::{Binding, Expr};
use status::ApiError;

/// Which calls a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    Get,
    Set,
    Any,
}

impl Rpc {
    fn matches(self, method: &str) -> bool {
        match self {
            Rpc::Get => method == "getIamPolicy",
            Rpc::Set => method == "setIamPolicy",
            Rpc::Any => true,
        }
    }
}

#[derive(Clone, Debug)]
enum Fault {
    /// Answered as usual: lets a later fault aim past some calls.
    Pass,
    Throttle(u32),
    Unavailable,
    DropAfterApply,
    /// Answered, then another writer adds this binding (a new etag).
    EditAfter(Binding),
}

/// One request the fake answered (or dropped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedCall {
    /// `getIamPolicy`, `setIamPolicy`, or the path when it named no method.
    pub method: String,
    pub resource: String,
    /// `None` when the answer was dropped.
    pub status: Option<u16>,
    /// The authenticated service account.
    pub caller: Option<String>,
}

#[derive(Default)]
struct State {
    resources: BTreeMap<String, Stored>,
    /// Service accounts by key id: (email, public key PEM).
    keys: HashMap<String, (String, String)>,
    /// Permissions taken away from a caller: (email, permission).
    denied: BTreeSet<(String, String)>,
    next_etag: u64,
    latency: Duration,
    faults: Vec<(Fault, usize, Rpc)>,
    log: Vec<LoggedCall>,
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running fake; stops when dropped.
pub struct FakeGcp {
    shared: Arc<Shared>,
    server: serve::Server,
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

    /// The next `n` matching calls answer 429 `RESOURCE_EXHAUSTED` with a `RetryInfo` of
    /// `retry_secs`, unapplied.
    pub fn throttle(&self, n: usize, retry_secs: u32, rpc: Rpc) {
        self.shared
            .lock()
            .faults
            .push((Fault::Throttle(retry_secs), n, rpc));
    }

    /// The next `n` matching calls answer 503 `UNAVAILABLE`, unapplied.
    pub fn unavailable(&self, n: usize, rpc: Rpc) {
        self.shared.lock().faults.push((Fault::Unavailable, n, rpc));
    }

    /// The next `n` matching calls are applied, then the connection is closed unanswered.
    pub fn drop_after_apply(&self, n: usize, rpc: Rpc) {
        self.shared
            .lock()
            .faults
            .push((Fault::DropAfterApply, n, rpc));
    }

    /// The next `n` matching calls are answered as usual (a fault armed after this one
    /// then applies to the calls after them).
    pub fn pass(&self, n: usize, rpc: Rpc) {
        self.shared.lock().faults.push((Fault::Pass, n, rpc));
    }

    /// The next `n` matching calls are answered, then another writer adds `binding` to the
    /// policy (its etag changes): a read-modify-write that read there meets a conflict.
    pub fn edit_after(&self, n: usize, rpc: Rpc, binding: Binding) {
        self.shared
            .lock()
            .faults
            .push((Fault::EditAfter(binding), n, rpc));
    }

    pub fn clear(&self) {
        let mut s = self.shared.lock();
        s.faults.clear();
        s.latency = Duration::ZERO;
    }
}

/// A service account's key file, as the IAM API hands it out (`type: service_account`).
#[derive(Clone, Debug)]
pub struct ServiceAccountKey {
    pub email: String,
    pub json: Value,
}

impl ServiceAccountKey {
    /// Writes the key file (mode 0600) and returns its path.
    pub fn write(&self, path: &std::path::Path) -> Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(&self.json)?)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }
}

impl FakeGcp {
    /// Starts the fake on 127.0.0.1 (a free port), served from a thread of its own.
    pub fn start() -> Result<FakeGcp> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
        });
        let served = shared.clone();
        let server = serve::spawn(
            "fake-gcp-crm",
            serve::bind()?,
            None,
            Arc::new(move |req| Box::pin(serve(served.clone(), req))),
        )?;
        Ok(FakeGcp { shared, server })
    }

    /// The endpoint to give a client (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Makes `projects/ID`, `folders/ID` or `organizations/ID` exist, with an empty policy.
    pub fn add_resource(&self, name: &str) {
        let mut s = self.shared.lock();
        let etag = next_etag(&mut s);
        s.resources.entry(name.to_owned()).or_insert(Stored {
            etag,
            ..Stored::default()
        });
    }

    /// A new service account with a fresh RSA key; it may read and set every resource's
    /// policy until [`FakeGcp::deny`] takes a permission away.
    pub fn service_account(&self, email: &str) -> ServiceAccountKey {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .expect("aws-lc-rs generates RSA keys");
        let kid = format!("{:040x}", uuid::Uuid::new_v4().as_u128());
        self.shared
            .lock()
            .keys
            .insert(kid.clone(), (email.to_owned(), key.public_key_pem()));
        let project = email
            .split('@')
            .nth(1)
            .and_then(|d| d.split('.').next())
            .unwrap_or("test");
        ServiceAccountKey {
            email: email.to_owned(),
            json: json!({
                "type": "service_account",
                "project_id": project,
                "private_key_id": kid,
                "private_key": key.serialize_pem(),
                "client_email": email,
                "client_id": "100000000000000000000",
                "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                "token_uri": "https://oauth2.googleapis.com/token",
                "universe_domain": "googleapis.com",
            }),
        }
    }

    /// Takes `permission` (e.g. `resourcemanager.projects.setIamPolicy`) from a caller.
    pub fn deny(&self, email: &str, permission: &str) {
        self.shared
            .lock()
            .denied
            .insert((email.to_owned(), permission.to_owned()));
    }

    pub fn faults(&self) -> Faults {
        Faults {
            shared: self.shared.clone(),
        }
    }

    /// The bindings of a resource's policy now.
    pub fn bindings(&self, resource: &str) -> Vec<Binding> {
        self.shared
            .lock()
            .resources
            .get(resource)
            .map(|s| s.bindings.clone())
            .unwrap_or_default()
    }

    /// Changes a policy out of band (a human in the console), with a new etag.
    pub fn edit(&self, resource: &str, f: impl FnOnce(&mut Vec<Binding>)) {
        let mut s = self.shared.lock();
        let etag = next_etag(&mut s);
        if let Some(p) = s.resources.get_mut(resource) {
            f(&mut p.bindings);
            p.etag = etag;
        }
    }

    /// Whether `member` holds `role` on `resource` at time `at`, as IAM decides it: a
    /// binding without a condition, or one whose condition evaluates to true then.
    pub fn has_role(&self, resource: &str, member: &str, role: &str, at: DateTime<Utc>) -> bool {
        self.bindings(resource).iter().any(|b| {
            b.role == role
                && b.members.iter().any(|m| m == member)
                && b.condition
                    .as_ref()
                    .is_none_or(|c| policy::holds(&c.expression, resource, at))
        })
    }

    /// Every call answered so far.
    pub fn calls(&self) -> Vec<LoggedCall> {
        self.shared.lock().log.clone()
    }
}

fn next_etag(s: &mut State) -> Vec<u8> {
    s.next_etag += 1;
    // Real etags are 8 opaque bytes ("BwXk..."): a version marker and a counter.
    let mut etag = vec![0x07];
    etag.extend_from_slice(&s.next_etag.to_be_bytes()[1..]);
    etag
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A verified caller: its email and the scopes its token carries (`None`: an audience).
struct Caller {
    email: String,
    scopes: Option<Vec<String>>,
}

const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const AUDIENCE: &str = "https://cloudresourcemanager.googleapis.com/";

fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<Caller, bool> {
    let Some(auth) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(true);
    };
    let token = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))
        .ok_or(false)?
        .trim();
    let header = jsonwebtoken::decode_header(token).map_err(|_| false)?;
    let kid = header.kid.ok_or(false)?;
    let (email, pem) = shared.lock().keys.get(&kid).cloned().ok_or(false)?;
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| false)?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
    v.set_issuer(&[&email]);
    v.sub = Some(email.clone());
    let claims = jsonwebtoken::decode::<Value>(token, &key, &v)
        .map_err(|_| false)?
        .claims;
    let scopes = claims
        .get("scope")
        .and_then(Value::as_str)
        .map(|s| s.split(' ').map(str::to_owned).collect::<Vec<_>>());
    let audience_ok = claims.get("aud").and_then(Value::as_str) == Some(AUDIENCE);
    if scopes.is_none() && !audience_ok {
        return Err(false);
    }
    Ok(Caller { email, scopes })
}

fn respond(http: u16, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(http)
        .header(
            http::header::CONTENT_TYPE,
            "application/json; charset=UTF-8",
        )
        .header("Vary", "Origin, X-Origin, Referer")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn serve(shared: Arc<Shared>, req: Request<Bytes>) -> Answer {
    let post = req.method() == http::Method::POST;
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    let body = req.into_body();
    let latency = shared.lock().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    // POST /v3/{projects|folders|organizations}/ID:method
    let target = path
        .strip_prefix("/v3/")
        .and_then(|p| p.rsplit_once(':'))
        .filter(|(r, _)| {
            let mut parts = r.split('/');
            matches!(
                (parts.next(), parts.next(), parts.next()),
                (Some("projects" | "folders" | "organizations"), Some(id), None) if !id.is_empty()
            )
        })
        .filter(|(_, m)| post && (*m == "getIamPolicy" || *m == "setIamPolicy"));
    let Some((resource, method)) = target else {
        let e = ApiError::not_found(&path);
        log(&shared, &path, "", Some(404), None);
        return Ok(respond(e.http, &e.body()));
    };
    let (resource, method) = (resource.to_owned(), method.to_owned());
    let rpc_name = format!(
        "google.cloud.resourcemanager.v3.{}.{}",
        match resource.split('/').next() {
            Some("folders") => "Folders",
            Some("organizations") => "Organizations",
            _ => "Projects",
        },
        if method == "getIamPolicy" {
            "GetIamPolicy"
        } else {
            "SetIamPolicy"
        }
    );
    let caller = match authenticate(&shared, &headers) {
        Ok(c) => c,
        Err(missing) => {
            let e = ApiError::unauthenticated(missing, &rpc_name);
            log(&shared, &method, &resource, Some(e.http), None);
            return Ok(respond(e.http, &e.body()));
        }
    };
    let fault = take_fault(&shared, &method);
    let answer = match &fault {
        Some(Fault::Throttle(secs)) => Err(ApiError::throttled(*secs)),
        Some(Fault::Unavailable) => Err(ApiError::unavailable()),
        _ => handle(&shared, &caller, &resource, &method, &rpc_name, &body),
    };
    if let Some(Fault::EditAfter(binding)) = &fault {
        let mut s = shared.lock();
        let etag = next_etag(&mut s);
        if let Some(p) = s.resources.get_mut(&resource) {
            p.bindings.push(binding.clone());
            p.etag = etag;
        }
    }
    let lost = matches!(fault, Some(Fault::DropAfterApply));
    let (code, body) = match answer {
        Ok(v) => (200, v),
        Err(e) => (e.http, e.body()),
    };
    log(
        &shared,
        &method,
        &resource,
        (!lost).then_some(code),
        Some(caller.email),
    );
    if lost {
        return Err(ResponseLost);
    }
    Ok(respond(code, &body))
}

fn log(shared: &Shared, method: &str, resource: &str, status: Option<u16>, caller: Option<String>) {
    shared.lock().log.push(LoggedCall {
        method: method.to_owned(),
        resource: resource.to_owned(),
        status,
        caller,
    });
}

fn take_fault(shared: &Shared, method: &str) -> Option<Fault> {
    let mut s = shared.lock();
    let i = s
        .faults
        .iter()
        .position(|(_, n, rpc)| *n > 0 && rpc.matches(method))?;
    s.faults[i].1 -= 1;
    let fault = s.faults[i].0.clone();
    s.faults.retain(|(_, n, _)| *n > 0);
    Some(fault)
}

fn handle(
    shared: &Shared,
    caller: &Caller,
    resource: &str,
    method: &str,
    rpc_name: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    let kind = resource.split('/').next().unwrap_or("projects");
    let permission = format!("resourcemanager.{kind}.{method}");
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid(format!("Invalid JSON payload received. {e}")))?
    };
    let mut s = shared.lock();
    if s.denied
        .contains(&(caller.email.clone(), permission.clone()))
        || !s.resources.contains_key(resource)
    {
        return Err(ApiError::permission_denied(&permission, resource));
    }
    let scoped = |allowed: &[&str]| {
        caller
            .scopes
            .as_ref()
            .is_none_or(|sc| sc.iter().any(|x| allowed.contains(&x.as_str())))
    };
    if method == "getIamPolicy" {
        if !scoped(&[
            CLOUD_PLATFORM,
            "https://www.googleapis.com/auth/cloud-platform.read-only",
        ]) {
            return Err(ApiError::scope_insufficient(rpc_name));
        }
        let requested = body
            .pointer("/options/requestedPolicyVersion")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if ![0, 1, 3].contains(&requested) {
            return Err(ApiError::invalid(format!(
                "Invalid requested policy version ({requested}): valid versions are 0, 1 and 3."
            )));
        }
        let stored = &s.resources[resource];
        if stored.has_conditions() && requested < 3 {
            return Err(ApiError::invalid(format!(
                "Requested policy version ({}) cannot be less than the existing policy version (3). For more information, please refer to https://cloud.google.com/iam/docs/policies#versions.",
                requested.max(1)
            )));
        }
        return Ok(render(stored));
    }
    if !scoped(&[CLOUD_PLATFORM]) {
        return Err(ApiError::scope_insufficient(rpc_name));
    }
    let policy = body.get("policy").cloned().unwrap_or_else(|| json!({}));
    let mask: Vec<String> = match body.get("updateMask").and_then(Value::as_str) {
        Some(m) if !m.trim().is_empty() => m.split(',').map(|p| p.trim().to_owned()).collect(),
        _ => vec!["bindings".into(), "etag".into()],
    };
    if let Some(bad) = mask
        .iter()
        .find(|p| !["bindings", "etag", "auditConfigs", "version"].contains(&p.as_str()))
    {
        return Err(ApiError::invalid(format!(
            "Invalid update mask path: \"{bad}\"."
        )));
    }
    let version = policy.get("version").and_then(Value::as_i64).unwrap_or(0) as i32;
    let bindings: Vec<Binding> =
        serde_json::from_value(policy.get("bindings").cloned().unwrap_or_else(|| json!([])))
            .map_err(|e| ApiError::invalid(format!("Invalid value at 'policy.bindings': {e}")))?;
    let sent = match policy.get("etag").and_then(Value::as_str) {
        Some(e) if !e.is_empty() => Some(
            base64::engine::general_purpose::STANDARD
                .decode(e)
                .map_err(|_| ApiError::invalid(format!("Invalid value at 'policy.etag' (TYPE_BYTES), Base64 decoding failed for \"{e}\"")))?,
        ),
        _ => None,
    };
    let current = s.resources[resource].clone();
    if let Some(sent) = &sent
        && *sent != current.etag
    {
        return Err(ApiError::aborted(&b64(sent), &b64(&current.etag)));
    }
    let stored_version = if sent.is_some() { current.version() } else { 1 };
    let merged = if mask.iter().any(|p| p == "bindings") {
        policy::check(resource, version, &bindings, stored_version, sent.is_some())?
    } else {
        current.bindings.clone()
    };
    let audit = if mask.iter().any(|p| p == "auditConfigs") {
        policy
            .get("auditConfigs")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    } else {
        current.audit_configs.clone()
    };
    let etag = next_etag(&mut s);
    let stored = Stored {
        bindings: merged,
        audit_configs: audit,
        etag,
    };
    let out = render(&stored);
    s.resources.insert(resource.to_owned(), stored);
    Ok(out)
}

fn render(p: &Stored) -> Value {
    let mut v = json!({"version": p.version(), "etag": b64(&p.etag)});
    if !p.bindings.is_empty() {
        v["bindings"] = serde_json::to_value(&p.bindings).unwrap_or_default();
    }
    if !p.audit_configs.is_empty() {
        v["auditConfigs"] = Value::Array(p.audit_configs.clone());
    }
    v
}
