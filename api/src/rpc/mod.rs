//! Every RPC of jitsudo.v1 as one function on the server state, shared by the gRPC and the
//! REST front ends, one file per service (requests, policies, audit, principals, admin):
//! the service's gRPC face (thin adapters from its tonic trait; the caller was
//! authenticated by the server's middleware and travels in the extensions), validation, the
//! authorization matrix (docs/security.md) and the call into the engine; `convert` builds the
//! answer and `error` maps the failures. This file holds what the services share: each
//! RPC's declaration ([`Rpc`]), the caller's identity, the wrapper every call runs in
//! (metrics, rate limit, refusal audit) and the input checks.

use std::sync::Arc;
use std::time::Instant;

use jitsudo_actors::domain::{Principal, RequestId};
use tonic::Code;
use uuid::Uuid;

use crate::config::ClientPrincipal;
use crate::error::ApiError;
use crate::state::{AppState, Caller};

/// The tonic services of jitsudo.v1, one `impl` per service in that service's file.
#[derive(Clone)]
pub struct Api(pub Arc<AppState>);

/// The caller the server's middleware authenticated.
fn caller<T>(r: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
    r.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| ApiError::unauthenticated("the call was not authenticated").into())
}

/// Runs an RPC through the shared wrapper (metrics, rate limit, refusal audit) and maps
/// the error once. `$rpc` is the RPC's declaration ([`Rpc`]: reads or changes).
macro_rules! rpc {
    ($self:ident, $rpc:expr, $req:ident, |$state:ident, $c:ident, $m:ident| $body:expr) => {{
        let $c = $crate::rpc::caller(&$req)?;
        let $m = $req.into_inner();
        let $state = &$self.0;
        let res = $state.run($rpc, Some(&$c), None, async { $body }).await;
        res.map(::tonic::Response::new)
            .map_err(::tonic::Status::from)
    }};
    ($self:ident, $rpc:expr, $req:ident, id = $id:expr, |$state:ident, $c:ident, $m:ident| $body:expr) => {{
        let $c = $crate::rpc::caller(&$req)?;
        let $m = $req.into_inner();
        let $state = &$self.0;
        let id: String = $id(&$m);
        let res = $state
            .run($rpc, Some(&$c), Some(&id), async { $body })
            .await;
        res.map(::tonic::Response::new)
            .map_err(::tonic::Status::from)
    }};
}

mod admin;
mod audit;
mod policies;
mod principals;
mod requests;

/// One RPC as the shared wrapper sees it: its name (metrics, the refusal audit) and whether
/// it changes something. Only [`Rpc::reads`] and [`Rpc::changes`] make one, and
/// [`AppState::run`] takes nothing else, so every RPC's declaration (the table at the top of
/// its service's file, shared by gRPC and REST) says which it is: a new RPC cannot skip the
/// rate limit by being left off a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rpc {
    name: &'static str,
    changes: bool,
}

impl Rpc {
    /// A call that only reads.
    pub const fn reads(name: &'static str) -> Rpc {
        Rpc {
            name,
            changes: false,
        }
    }

    /// A call that changes something (or hands out credentials): rate-limited per principal.
    pub const fn changes(name: &'static str) -> Rpc {
        Rpc {
            name,
            changes: true,
        }
    }

    /// The method's name in jitsudo.v1 (`CreateRequest`).
    pub fn name(self) -> &'static str {
        self.name
    }

    pub fn is_mutation(self) -> bool {
        self.changes
    }
}

const MAX_ID: usize = 64;
const MAX_KEY: usize = 128;

pub fn parse_id(id: &str) -> Result<RequestId, ApiError> {
    if id.is_empty() {
        return Err(ApiError::invalid("id is required"));
    }
    if id.len() > MAX_ID {
        return Err(ApiError::invalid("id is too long; request ids are UUIDs"));
    }
    id.parse::<RequestId>()
        .map_err(|_| ApiError::invalid(format!("id {id:?} is not a request id (a UUID)")))
}

fn required(field: &str, v: &str) -> Result<(), ApiError> {
    if v.is_empty() {
        return Err(ApiError::invalid(format!("{field} is required")));
    }
    Ok(())
}

/// Free text and names: at most `max` bytes, no control or invisible formatting characters.
fn check_text(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    check(field, v, max, false)
}

/// Source text (Rego, JSON input): line breaks and tabs allowed, invisible formatting not
/// (a bidirectional override makes code read differently from what runs).
fn check_code(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    check(field, v, max, true)
}

fn check(field: &str, v: &str, max: usize, layout: bool) -> Result<(), ApiError> {
    if v.len() > max {
        return Err(ApiError::invalid(format!(
            "{field} is {} bytes long; the limit is {max}",
            v.len()
        )));
    }
    if let Some(why) = jitsudo_actors::domain::hidden_reason(v, layout) {
        return Err(ApiError::invalid(format!("{field} {why}")));
    }
    Ok(())
}

impl AppState {
    /// Authenticates a call and builds its caller (groups decide admin and auditor).
    ///
    /// A bearer token decides who calls. Without one, a client certificate mapped to a bot
    /// (`server.client_principals`, verified in the TLS handshake) does.
    pub async fn caller(
        &self,
        authorization: Option<&str>,
        bot: Option<&ClientPrincipal>,
    ) -> Result<Caller, ApiError> {
        let (subject, email, email_verified, groups, claims, valid_until) = match (
            authorization,
            bot,
        ) {
            (Some(header), _) => {
                let id = self.auth.authenticate(header).await?;
                if let (Some(email), true) = (&id.email, id.email_verified) {
                    self.note_identity(&id.subject, email).await?;
                }
                (
                    id.subject,
                    id.email,
                    id.email_verified,
                    id.groups,
                    id.claims,
                    Some(id.valid_until),
                )
            }
            (None, Some(b)) => (
                b.subject.clone(),
                None,
                false,
                b.groups.clone(),
                Default::default(),
                None,
            ),
            (None, None) => {
                return Err(ApiError::unauthenticated(
                    "missing Authorization header: send `Authorization: Bearer <access token>` (jitsudo login)",
                ));
            }
        };
        let trust_tier = self
            .engine
            .principal(&subject)
            .await?
            .map(|p| p.trust_tier)
            .unwrap_or(0);
        let admin = groups
            .iter()
            .any(|g| self.config.authz.admin_groups.contains(g));
        let auditor = groups
            .iter()
            .any(|g| self.config.authz.auditor_groups.contains(g));
        let links: Vec<String> = self
            .config
            .authz
            .same_person
            .iter()
            .filter(|set| set.contains(&subject))
            .flatten()
            .filter(|s| **s != subject)
            .cloned()
            .collect();
        Ok(Caller {
            principal: Principal {
                links,
                subject,
                email,
                email_verified,
                groups,
                trust_tier,
                claims,
            },
            valid_until,
            admin,
            auditor,
        })
    }

    /// Remembers the verified email of a subject, so that "same person" checks about this
    /// subject (when someone else names it) see it. One store write per change, not per call.
    async fn note_identity(&self, subject: &str, email: &str) -> Result<(), ApiError> {
        let known = self
            .identities
            .lock()
            .map(|m| m.get(subject).is_some_and(|e| e == email))
            .unwrap_or(false);
        if known {
            return Ok(());
        }
        self.engine.note_identity(subject, email).await?;
        if let Ok(mut m) = self.identities.lock() {
            if m.len() > 100_000 {
                m.clear();
            }
            m.insert(subject.to_owned(), email.to_owned());
        }
        Ok(())
    }

    /// Runs one RPC: takes a token of the caller's rate limit if it changes something,
    /// records latency and code, and audits authorization refusals (with a per-actor flood
    /// limit: the first few each minute one by one, then one summary).
    pub async fn run<T>(
        &self,
        rpc: Rpc,
        caller: Option<&Caller>,
        request_id: Option<&str>,
        fut: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let started = Instant::now();
        let res = match caller {
            Some(c) if rpc.is_mutation() => match self.mutation_limit.take(c.subject()) {
                Ok(()) => fut.await,
                Err(wait) => Err(ApiError::rate_limited(
                    format!(
                        "too many changes in a minute (limit {} per person); try again in {}s",
                        self.config.limits.mutations_per_minute,
                        wait.as_secs().max(1)
                    ),
                    wait,
                )),
            },
            _ => fut.await,
        };
        let code = match &res {
            Ok(_) => Code::Ok,
            Err(e) => e.code,
        };
        let code_name = crate::error::code_name(code);
        metrics::histogram!("jitsudo_rpc_seconds", "rpc" => rpc.name())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("jitsudo_rpc_total", "rpc" => rpc.name(), "code" => code_name)
            .increment(1);
        if let (Err(e), Some(c)) = (&res, caller)
            && e.code == Code::PermissionDenied
        {
            self.audit_denial(rpc.name(), c, request_id, &e.message)
                .await;
        }
        res
    }

    async fn audit_denial(&self, rpc: &str, c: &Caller, request_id: Option<&str>, why: &str) {
        const PER_MINUTE: u32 = 5;
        let minute = chrono::Utc::now().timestamp() / 60;
        let (write, summary) = {
            let Ok(mut m) = self.denials.lock() else {
                return;
            };
            let entry = m.entry(c.subject().to_owned()).or_insert((minute, 0));
            let mut summary = None;
            if entry.0 != minute {
                if entry.1 > PER_MINUTE {
                    summary = Some(entry.1 - PER_MINUTE);
                }
                *entry = (minute, 0);
            }
            entry.1 += 1;
            (entry.1 <= PER_MINUTE, summary)
        };
        let rid = request_id.and_then(|r| Uuid::parse_str(r).ok());
        if let Some(n) = summary {
            let _ = self.engine.record_denial_summary(c.subject(), n, 60).await;
        }
        if write && let Err(e) = self.engine.record_denial(c.subject(), rpc, rid, why).await {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "could not audit an authorization refusal"
            );
        }
    }
}
