//! The reference server of the http protocol: a small, faithful fake cloud for tests.
//!
//! Owns signature checking, in-memory grants with tombstones and native expiry, an event log
//! of every call, and fault injection. Each call is decided and logged atomically under one
//! lock (never held across an await), so concurrent callers see a consistent cloud.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{ErrorBody, InspectBody, ListBody, Op, SIGNATURE_HEADER, verify_signature};
use crate::demo::{FakeGrant, check_fake_rules, fake_grant, fake_list};
use crate::{Credentials, GrantRecord, GrantSpec, GrantState, ManagedGrant};

/// The fake token in every credential this server mints.
pub const FAKE_TOKEN_VAR: &str = "FAKE_CLOUD_TOKEN";
/// `shutdown` waits this long for calls in flight (e.g. injected delays) before giving up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const CREDENTIAL_LIFETIME: TimeDelta = TimeDelta::minutes(15);

/// How an injected fault answers a call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Answer this status with `{"error":"injected"}`; the call does not take effect.
    /// A 429 carries `Retry-After: 1`.
    Status(u16),
    /// Answer exactly this status and body; the call does not take effect (protocol edges:
    /// malformed answers, bodies that must not leak into errors).
    Respond { status: u16, body: String },
    /// The call takes effect, then its answer is held back this long (client timeouts: the
    /// caller cannot know the outcome).
    Delay(Duration),
    /// The call takes effect, then the answer is this status anyway (a cloud that applied a
    /// change and reported a failure).
    StatusAfterEffect(u16),
    /// The call arrives this much later: it is decided (and takes effect, if it still can)
    /// only after the delay — the late call of a caller frozen between its decision and
    /// its call. Only as a queued `fail_next` fault.
    Late(Duration),
}

/// What the server did with one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The signature was missing, wrong or outside the time window (401).
    BadSignature,
    /// The body was not the JSON the operation expects (400).
    BadRequest,
    /// A fault injected by the test answered; nothing took effect.
    Injected,
    Valid,
    /// Validation refused the spec (422); nothing took effect.
    Invalid,
    /// A new grant was created.
    Granted,
    /// A repeat of an earlier grant: the same record was returned, nothing new was created.
    AlreadyGranted,
    /// The `grant_id` had been revoked: nothing was granted (409 tombstoned).
    Tombstoned,
    /// The `grant_id` was already used for a different grant (409 conflict).
    Conflict,
    /// An existing grant was removed (and its `grant_id` tombstoned).
    Revoked,
    /// Nothing to remove (unknown, already revoked or expired); the `grant_id` is tombstoned.
    RevokedNothing,
    Active,
    Gone,
    CredentialsIssued,
    /// Credentials were refused: the grant is not active (404 not_active).
    NotActive,
    /// A page of managed grants was answered.
    Listed,
    /// A tombstone was removed (or there was none).
    Forgotten,
}

/// One call as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServerEvent {
    /// When the call was decided (and took effect, if it did).
    pub at: DateTime<Utc>,
    pub op: Op,
    /// `None` when the body could not be trusted or read (bad signature, bad request).
    pub grant_id: Option<Uuid>,
    pub outcome: Outcome,
    /// The status answered (or to be answered after an injected delay).
    pub status: u16,
    /// The fault injected into this call, if any.
    pub fault: Option<FailureKind>,
}

#[derive(Default)]
struct Faults {
    /// Consumed front to back: `(remaining calls, kind)`.
    next: HashMap<Op, Vec<(usize, FailureKind)>>,
    always: HashMap<Op, FailureKind>,
}

impl Faults {
    /// Takes the next queued fault of `op` if it is a `Late` one.
    fn take_late(&mut self, op: Op) -> Option<Duration> {
        match self.next.get(&op).and_then(|q| q.first()) {
            Some((_, FailureKind::Late(d))) => {
                let d = *d;
                self.take(op);
                Some(d)
            }
            _ => None,
        }
    }

    fn take(&mut self, op: Op) -> Option<FailureKind> {
        if let Some(queue) = self.next.get_mut(&op)
            && let Some((remaining, kind)) = queue.first_mut()
        {
            let kind = kind.clone();
            *remaining -= 1;
            if *remaining == 0 {
                queue.remove(0);
            }
            return Some(kind);
        }
        self.always.get(&op).cloned()
    }
}

#[derive(Default)]
struct Cloud {
    grants: HashMap<Uuid, GrantRecord>,
    tombstones: HashMap<Uuid, GrantRecord>,
    events: Vec<ServerEvent>,
    faults: Faults,
    next_ref: u64,
}

struct Shared {
    secret: Vec<u8>,
    cloud: Mutex<Cloud>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Cloud> {
        // Every handler finishes its update before releasing the lock, so a poisoned lock
        // still guards consistent state.
        self.cloud.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running reference server on `127.0.0.1` (port chosen by the OS). Shuts down on
/// [`TestServer::shutdown`] or when dropped.
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// Starts a server on `127.0.0.1:0` that accepts calls signed with `secret`.
    ///
    /// # Panics
    /// If no loopback port can be bound (use [`TestServer::try_start`] to handle that).
    pub async fn start(secret: impl Into<Vec<u8>>) -> TestServer {
        match Self::try_start(secret).await {
            Ok(server) => server,
            Err(e) => panic!("cannot start the http provider test server on 127.0.0.1:0: {e}"),
        }
    }

    pub async fn try_start(secret: impl Into<Vec<u8>>) -> io::Result<TestServer> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), secret).await
    }

    /// Starts on a given address (e.g. to come back on the same port after a shutdown).
    pub async fn start_on(addr: SocketAddr, secret: impl Into<Vec<u8>>) -> io::Result<TestServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            secret: secret.into(),
            cloud: Mutex::default(),
        });
        let mut app = Router::new();
        for op in Op::ALL {
            app = app.route(
                &format!("/{op}"),
                post(
                    move |State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes| {
                        handle(shared, op, headers, body)
                    },
                ),
            );
        }
        let app = app.with_state(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                // A dropped sender means the server handle is gone: stop as well.
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "http provider test server failed");
            }
        });
        Ok(TestServer {
            addr,
            shared,
            stop: Mutex::new(Some(stop)),
            task: Mutex::new(Some(task)),
        })
    }

    /// `http://127.0.0.1:<port>`, the `base_url` of an [`super::HttpProvider`].
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and waits (briefly) for calls in flight. Idempotent.
    pub async fn shutdown(&self) {
        if let Some(stop) = self
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = stop.send(());
        }
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut task) = task
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }

    /// Every call so far, in the order the server decided them.
    pub fn events(&self) -> Vec<ServerEvent> {
        self.shared.lock().events.clone()
    }

    /// How many `op` calls for `grant_id` the server has seen (any outcome).
    pub fn count(&self, op: Op, grant_id: Uuid) -> usize {
        self.shared
            .lock()
            .events
            .iter()
            .filter(|e| e.op == op && e.grant_id == Some(grant_id))
            .count()
    }

    /// How many `op` calls ended with `outcome` (any grant).
    pub fn count_outcome(&self, op: Op, outcome: Outcome) -> usize {
        self.shared
            .lock()
            .events
            .iter()
            .filter(|e| e.op == op && e.outcome == outcome)
            .count()
    }

    /// The grants usable now (neither revoked nor past `not_after`), by `grant_id`.
    pub fn active_grants(&self) -> Vec<GrantRecord> {
        let now = Utc::now();
        let mut grants: Vec<_> = self
            .shared
            .lock()
            .grants
            .values()
            .filter(|g| now < g.not_after)
            .cloned()
            .collect();
        grants.sort_by_key(|g| g.grant_id);
        grants
    }

    pub fn is_active(&self, grant_id: Uuid) -> bool {
        let now = Utc::now();
        self.shared
            .lock()
            .grants
            .get(&grant_id)
            .is_some_and(|g| now < g.not_after)
    }

    pub fn is_tombstoned(&self, grant_id: Uuid) -> bool {
        self.shared.lock().tombstones.contains_key(&grant_id)
    }

    /// The next `n` calls of `op` fail with `kind` (after any faults queued before).
    pub fn fail_next(&self, op: Op, n: usize, kind: FailureKind) {
        if n > 0 {
            self.shared
                .lock()
                .faults
                .next
                .entry(op)
                .or_default()
                .push((n, kind));
        }
    }

    /// Calls of `op` that queued `fail_next` faults are still waiting for (0 once every
    /// queued fault has met its call: a `Late` call has then arrived and is held).
    pub fn queued_faults(&self, op: Op) -> usize {
        self.shared
            .lock()
            .faults
            .next
            .get(&op)
            .map_or(0, |q| q.iter().map(|(n, _)| *n).sum())
    }

    /// Every call of `op` fails with `kind` once the queued `fail_next` faults are used up.
    pub fn set_fail_always(&self, op: Op, kind: FailureKind) {
        self.shared.lock().faults.always.insert(op, kind);
    }

    /// Removes every injected fault, queued or permanent.
    pub fn clear_failures(&self) {
        self.shared.lock().faults = Faults::default();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self
            .stop
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = stop.send(());
        }
    }
}

/// A decided answer, built under the lock and sent after it is released.
struct Reply {
    status: StatusCode,
    body: String,
    retry_after: Option<u64>,
}

impl Reply {
    fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
        // Our own wire types always serialise.
        let body = serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned());
        Reply {
            status,
            body,
            retry_after: None,
        }
    }

    fn ok<T: Serialize>(value: &T) -> Reply {
        Reply::json(StatusCode::OK, value)
    }

    fn error(
        status: StatusCode,
        error: &str,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Reply {
        Reply::json(
            status,
            &ErrorBody {
                error: error.to_owned(),
                field: field.map(str::to_owned),
                message: Some(message.into()),
            },
        )
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

async fn handle(shared: Arc<Shared>, op: Op, headers: HeaderMap, body: Bytes) -> Reply {
    let late = shared.lock().faults.take_late(op);
    if let Some(late) = late {
        tokio::time::sleep(late).await;
    }
    let (reply, delay) = decide(&shared, op, &headers, &body);
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    reply
}

/// Decides, applies and logs one call atomically; returns the answer and how long to hold it.
fn decide(shared: &Shared, op: Op, headers: &HeaderMap, body: &[u8]) -> (Reply, Option<Duration>) {
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let verified = verify_signature(&shared.secret, signature, body, Utc::now());
    let mut cloud = shared.lock();
    let now = Utc::now();
    let log = |cloud: &mut Cloud, grant_id, outcome, reply: &Reply, fault: Option<FailureKind>| {
        cloud.events.push(ServerEvent {
            at: now,
            op,
            grant_id,
            outcome,
            status: reply.status.as_u16(),
            fault,
        });
    };

    if let Err(reason) = verified {
        let reply = Reply::error(StatusCode::UNAUTHORIZED, "bad_signature", None, reason);
        log(&mut cloud, None, Outcome::BadSignature, &reply, None);
        return (reply, None);
    }
    let input = match Input::parse(op, body) {
        Ok(input) => input,
        Err(e) => {
            let reply = Reply::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                None,
                format!("body is not a valid {op} request: {e}"),
            );
            log(&mut cloud, None, Outcome::BadRequest, &reply, None);
            return (reply, None);
        }
    };
    let grant_id = input.grant_id();
    let fault = cloud.faults.take(op);
    match fault.clone() {
        Some(FailureKind::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut reply =
                Reply::error(status, "injected", None, format!("injected failure {code}"));
            if status == StatusCode::TOO_MANY_REQUESTS {
                reply.retry_after = Some(1);
            }
            log(&mut cloud, grant_id, Outcome::Injected, &reply, fault);
            (reply, None)
        }
        Some(FailureKind::Respond { status, body }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let reply = Reply {
                status,
                body,
                retry_after: None,
            };
            log(&mut cloud, grant_id, Outcome::Injected, &reply, fault);
            (reply, None)
        }
        Some(FailureKind::Delay(delay)) => {
            let (outcome, reply) = apply(&mut cloud, input, now);
            log(&mut cloud, grant_id, outcome, &reply, fault);
            (reply, Some(delay))
        }
        Some(FailureKind::StatusAfterEffect(code)) => {
            let (outcome, _) = apply(&mut cloud, input, now);
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let reply = Reply::error(
                status,
                "injected",
                None,
                format!("injected failure {code} after the effect"),
            );
            log(&mut cloud, grant_id, outcome, &reply, fault);
            (reply, None)
        }
        // A `Late` fault was waited out before deciding.
        None | Some(FailureKind::Late(_)) => {
            let (outcome, reply) = apply(&mut cloud, input, now);
            log(&mut cloud, grant_id, outcome, &reply, None);
            (reply, None)
        }
    }
}

enum Input {
    Validate(GrantSpec),
    Grant(GrantSpec),
    Revoke(GrantRecord),
    Inspect(GrantRecord),
    Credentials(GrantRecord),
    List(ListBody),
    Forget(ManagedGrant),
}

impl Input {
    fn parse(op: Op, body: &[u8]) -> Result<Input, serde_json::Error> {
        Ok(match op {
            Op::Validate => Input::Validate(serde_json::from_slice(body)?),
            Op::Grant => Input::Grant(serde_json::from_slice(body)?),
            Op::Revoke => Input::Revoke(serde_json::from_slice(body)?),
            Op::Inspect => Input::Inspect(serde_json::from_slice(body)?),
            Op::Credentials => Input::Credentials(serde_json::from_slice(body)?),
            Op::List => Input::List(serde_json::from_slice(body)?),
            Op::Forget => Input::Forget(serde_json::from_slice(body)?),
        })
    }

    fn grant_id(&self) -> Option<Uuid> {
        match self {
            Input::Validate(spec) | Input::Grant(spec) => Some(spec.grant_id),
            Input::Revoke(record) | Input::Inspect(record) | Input::Credentials(record) => {
                Some(record.grant_id)
            }
            Input::Forget(grant) => Some(grant.grant_id),
            Input::List(_) => None,
        }
    }
}

fn apply(cloud: &mut Cloud, input: Input, now: DateTime<Utc>) -> (Outcome, Reply) {
    let active = |cloud: &Cloud, grant_id| {
        cloud
            .grants
            .get(&grant_id)
            .filter(|g| now < g.not_after)
            .cloned()
    };
    match input {
        Input::Validate(spec) => match check_fake_rules(&spec) {
            Ok(()) => (Outcome::Valid, Reply::ok(&serde_json::json!({}))),
            Err((field, reason)) => (
                Outcome::Invalid,
                Reply::error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    Some(field),
                    reason,
                ),
            ),
        },
        Input::Grant(spec) => match fake_grant(
            &cloud.grants,
            cloud.tombstones.contains_key(&spec.grant_id),
            &spec,
            now,
        ) {
            FakeGrant::Tombstoned => (
                Outcome::Tombstoned,
                Reply::error(
                    StatusCode::CONFLICT,
                    "tombstoned",
                    Some("grant_id"),
                    "this grant_id was revoked before",
                ),
            ),
            FakeGrant::Existing(record) => (Outcome::AlreadyGranted, Reply::ok(&record)),
            FakeGrant::Refused((field @ "grant_id", reason)) => (
                Outcome::Conflict,
                Reply::error(StatusCode::CONFLICT, "conflict", Some(field), reason),
            ),
            FakeGrant::Refused((field, reason)) => (
                Outcome::Invalid,
                Reply::error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    Some(field),
                    reason,
                ),
            ),
            FakeGrant::New => {
                cloud.next_ref += 1;
                let record = GrantRecord {
                    provider_ref: format!("fake-cloud/{}", cloud.next_ref),
                    ..GrantRecord::from_spec(&spec)
                };
                cloud.grants.insert(spec.grant_id, record.clone());
                (Outcome::Granted, Reply::ok(&record))
            }
        },
        Input::Revoke(record) => {
            cloud.tombstones.insert(record.grant_id, record.clone());
            let removed = cloud
                .grants
                .remove(&record.grant_id)
                .is_some_and(|g| now < g.not_after);
            let outcome = if removed {
                Outcome::Revoked
            } else {
                Outcome::RevokedNothing
            };
            (outcome, Reply::ok(&serde_json::json!({})))
        }
        Input::Inspect(record) => match active(cloud, record.grant_id) {
            Some(_) => (
                Outcome::Active,
                Reply::ok(&InspectBody {
                    state: GrantState::Active,
                }),
            ),
            None => (
                Outcome::Gone,
                Reply::ok(&InspectBody {
                    state: GrantState::Gone,
                }),
            ),
        },
        Input::Credentials(record) => match active(cloud, record.grant_id) {
            Some(grant) => {
                let token = format!("fake-{}-{}", grant.grant_id, Uuid::now_v7().simple());
                let credentials = Credentials {
                    env: [
                        (FAKE_TOKEN_VAR.to_owned(), token),
                        ("FAKE_CLOUD_ROLE".to_owned(), grant.role.clone()),
                        ("FAKE_CLOUD_SCOPE".to_owned(), grant.scope.clone()),
                    ]
                    .into(),
                    expires_at: grant.not_after.min(now + CREDENTIAL_LIFETIME),
                    notice: Some("fake cloud credentials for tests".to_owned()),
                };
                (Outcome::CredentialsIssued, Reply::ok(&credentials))
            }
            None => (
                Outcome::NotActive,
                Reply::error(
                    StatusCode::NOT_FOUND,
                    "not_active",
                    Some("grant_id"),
                    "no active grant with this grant_id",
                ),
            ),
        },
        Input::List(body) => {
            match fake_list(&cloud.grants, &cloud.tombstones, body.page.as_deref(), now) {
                Ok(page) => (Outcome::Listed, Reply::ok(&page)),
                Err((field, reason)) => (
                    Outcome::Invalid,
                    Reply::error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid",
                        Some(field),
                        reason,
                    ),
                ),
            }
        }
        Input::Forget(grant) => {
            cloud.tombstones.remove(&grant.grant_id);
            (Outcome::Forgotten, Reply::ok(&serde_json::json!({})))
        }
    }
}
