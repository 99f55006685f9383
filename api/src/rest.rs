//! REST/JSON under `/api/v1/…`: the request, policy, audit and principal RPCs with
//! proto3-JSON bodies (lowerCamelCase fields), the same authentication and TLS as gRPC, and
//! errors as an HTTP status plus `{"error": {"code", "message"}}`. Each route's handler is
//! generated like the gRPC ones: its extractors decode the call, the shared wrapper runs it
//! under the RPC's declaration, and the answer is JSON.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use jitsudo_proto::v1;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::rpc::Rpc;
use crate::state::{AppState, Caller};

type S = State<Arc<AppState>>;
type Res<T> = Result<Json<T>, ApiError>;

/// Parses a JSON body (an empty body is the message's default).
pub fn body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid(format!(
            "the request body is not valid JSON for this call: {e}"
        ))
    })
}

/// A call's JSON body (see [`body`]). A body that does not parse is refused before the
/// call is counted or rate-limited, as a malformed gRPC message is.
pub struct Body<T>(pub T);

impl<St: Send + Sync, T: DeserializeOwned + Default + Send> FromRequest<St> for Body<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &St) -> Result<Self, Response> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        body(&bytes).map(Body).map_err(IntoResponse::into_response)
    }
}

/// A call's message as decoded from the query string.
pub trait FromQuery: Sized {
    fn from_query(q: &HashMap<String, String>) -> Result<Self, ApiError>;
}

/// A call decoded from the query string (see [`FromQuery`]); refused, like a bad body,
/// before the call is counted.
pub struct Params<T>(pub T);

impl<St: Send + Sync, T: FromQuery> FromRequestParts<St> for Params<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, Response> {
        let Query(q) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        T::from_query(&q)
            .map(Params)
            .map_err(IntoResponse::into_response)
    }
}

fn flag(q: &HashMap<String, String>, k: &str) -> Result<bool, ApiError> {
    match q.get(k).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(v) => Err(ApiError::invalid(format!(
            "{k} must be true or false, not {v:?}"
        ))),
    }
}

fn number<T: std::str::FromStr + Default>(
    q: &HashMap<String, String>,
    k: &str,
) -> Result<T, ApiError> {
    match q.get(k) {
        None => Ok(T::default()),
        Some(v) => v
            .parse()
            .map_err(|_| ApiError::invalid(format!("{k} must be a number, not {v:?}"))),
    }
}

fn text(q: &HashMap<String, String>, k: &str) -> String {
    q.get(k).cloned().unwrap_or_default()
}

fn ts(q: &HashMap<String, String>, k: &str) -> Result<Option<pbjson_types::Timestamp>, ApiError> {
    q.get(k)
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| crate::convert::ts(t.with_timezone(&chrono::Utc)))
                .map_err(|_| ApiError::invalid(format!("{k} must be an RFC 3339 time, not {v:?}")))
        })
        .transpose()
}

/// `states=PENDING,ACTIVE` (names, with or without the REQUEST_STATE_ prefix, or numbers).
fn states(q: &HashMap<String, String>) -> Result<Vec<i32>, ApiError> {
    let Some(v) = q.get("states") else {
        return Ok(Vec::new());
    };
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let name = s.trim().to_ascii_uppercase();
            let full = if name.starts_with("REQUEST_STATE_") {
                name.clone()
            } else {
                format!("REQUEST_STATE_{name}")
            };
            v1::RequestState::from_str_name(&full)
                .map(|s| s as i32)
                .or_else(|| s.parse::<i32>().ok())
                .ok_or_else(|| ApiError::invalid(format!("unknown request state {s:?}")))
        })
        .collect()
}

impl FromQuery for v1::ListRequestsRequest {
    fn from_query(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        Ok(v1::ListRequestsRequest {
            mine: flag(q, "mine")?,
            awaiting_my_approval: flag(q, "awaitingMyApproval")?,
            states: states(q)?,
            provider: text(q, "provider"),
            requester: text(q, "requester"),
            page_size: number(q, "pageSize")?,
            page_token: text(q, "pageToken"),
            needs_review: flag(q, "needsReview")?,
        })
    }
}

impl FromQuery for v1::QueryAuditRequest {
    fn from_query(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        Ok(v1::QueryAuditRequest {
            request_id: text(q, "requestId"),
            actor: text(q, "actor"),
            kind: text(q, "kind"),
            since: ts(q, "since")?,
            until: ts(q, "until")?,
            page_size: number(q, "pageSize")?,
            page_token: text(q, "pageToken"),
            oldest_first: flag(q, "oldestFirst")?,
            chain_after_seq: number(q, "chainAfterSeq")?,
            chain_mode: flag(q, "chainMode")?,
            provider: text(q, "provider"),
        })
    }
}

/// `afterVersion` of the events page: where a watch resumes.
pub struct AfterVersion(i64);

impl FromQuery for AfterVersion {
    fn from_query(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        number(q, "afterVersion").map(AfterVersion)
    }
}

pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let _ = state;
    Router::new()
        .route("/api/v1/requests", post(create).get(list))
        .route("/api/v1/requests/{id}", get(get_one))
        .route("/api/v1/requests/{id}/events", get(events))
        .route("/api/v1/requests/{id}/approve", post(approve))
        .route("/api/v1/requests/{id}/deny", post(deny))
        .route("/api/v1/requests/{id}/cancel", post(cancel))
        .route("/api/v1/requests/{id}/revoke", post(revoke))
        .route("/api/v1/requests/{id}/review", post(review))
        .route("/api/v1/requests/{id}/extend", post(extend))
        .route(
            "/api/v1/requests/{id}/extensions/{number}/approve",
            post(approve_ext),
        )
        .route(
            "/api/v1/requests/{id}/extensions/{number}/deny",
            post(deny_ext),
        )
        .route("/api/v1/requests/{id}/credentials", post(credentials))
        .route("/api/v1/policies", get(list_policies))
        .route(
            "/api/v1/policies/{name}",
            get(get_policy).put(apply_policy).delete(delete_policy),
        )
        .route("/api/v1/policy-eval", post(eval_policy))
        .route("/api/v1/audit", get(query_audit))
        .route("/api/v1/audit/verify", post(verify_audit))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/principals/{subject}", get(get_principal))
        .route(
            "/api/v1/principals/{subject}/trust-tier",
            put(set_trust_tier),
        )
}

/// One REST handler per route, declared like a gRPC method in its service's `rpc/` file: the extractors
/// (`Path`, `Params`, `Body`) decode the call, `$rpc` declares it (reads or changes), `$id`
/// names the request it concerns for the refusal audit, and `$call` is the shared RPC
/// function, run by the shared wrapper (metrics, rate limit, refusal audit).
macro_rules! handlers {
    ($(
        $name:ident($($ext:ident($arg:pat): $t:ty),*) -> $out:ty =
            $rpc:expr, $id:expr, |$s:ident, $c:ident| $call:expr;
    )*) => {$(
        async fn $name(
            State($s): S,
            Extension($c): Extension<Caller>,
            $($ext($arg): $ext<$t>),*
        ) -> Res<$out> {
            $s.run($rpc, Some(&$c), $id, $call).await.map(Json)
        }
    )*};
}

/// The events page: the stored versions after `afterVersion`, and whether the request has
/// reached a terminal state.
#[derive(serde::Serialize)]
struct Events {
    events: Vec<v1::RequestEvent>,
    terminal: bool,
}

handlers! {
    create(Body(m): v1::CreateRequestRequest) -> v1::Request =
        Rpc::CREATE_REQUEST, None, |s, c| s.create_request(&c, m);
    list(Params(m): v1::ListRequestsRequest) -> v1::ListRequestsResponse =
        Rpc::LIST_REQUESTS, None, |s, c| s.list_requests(&c, m);
    get_one(Path(id): String) -> v1::Request =
        Rpc::GET_REQUEST, Some(&id), |s, c| s.get_request(&c, &id);
    events(Path(id): String, Params(AfterVersion(after)): AfterVersion) -> Events =
        Rpc::WATCH_REQUEST, Some(&id), |s, c| async {
            let (events, terminal) = s.request_events(&c, &id, after).await?;
            Ok(Events { events, terminal })
        };
    approve(Path(id): String, Body(m): v1::DecideRequest) -> v1::Request =
        Rpc::APPROVE_REQUEST, Some(&id), |s, c| s.approve(&c, &id, m.comment);
    deny(Path(id): String, Body(m): v1::DenyRequestRequest) -> v1::Request =
        Rpc::DENY_REQUEST, Some(&id), |s, c| s.deny(&c, &id, m.reason);
    cancel(Path(id): String) -> v1::Request =
        Rpc::CANCEL_REQUEST, Some(&id), |s, c| s.cancel(&c, &id);
    review(Path(id): String, Body(m): v1::ReviewRequestRequest) -> v1::Review =
        Rpc::REVIEW_REQUEST, Some(&id), |s, c| s.review(&c, &id, &m.verdict);
    revoke(Path(id): String, Body(m): v1::RevokeRequestRequest) -> v1::Request =
        Rpc::REVOKE_REQUEST, Some(&id), |s, c| s.revoke(&c, &id, m.reason);
    extend(Path(id): String, Body(m): v1::ExtendRequestRequest) -> v1::Request =
        Rpc::EXTEND_REQUEST, Some(&id), |s, c| s.extend(&c, &id, m.by_seconds, m.reason);
    approve_ext(
        Path((id, number)): (String, u32),
        Body(m): v1::DecideExtensionRequest
    ) -> v1::Request =
        Rpc::APPROVE_EXTENSION, Some(&id), |s, c| {
            let m = v1::DecideExtensionRequest { id: id.clone(), number, ..m };
            s.decide_extension(&c, m, true)
        };
    deny_ext(
        Path((id, number)): (String, u32),
        Body(m): v1::DecideExtensionRequest
    ) -> v1::Request =
        Rpc::DENY_EXTENSION, Some(&id), |s, c| {
            let m = v1::DecideExtensionRequest { id: id.clone(), number, ..m };
            s.decide_extension(&c, m, false)
        };
    credentials(Path(id): String) -> v1::Credentials =
        Rpc::GET_CREDENTIALS, Some(&id), |s, c| s.credentials(&c, &id);
    list_policies() -> v1::ListPoliciesResponse =
        Rpc::LIST_POLICIES, None, |s, c| s.list_policies(&c);
    get_policy(Path(name): String) -> v1::Policy =
        Rpc::GET_POLICY, None, |s, c| s.get_policy(&c, &name);
    apply_policy(Path(name): String, Body(m): v1::ApplyPolicyRequest) -> v1::Policy =
        Rpc::APPLY_POLICY, None, |s, c| s.apply_policy(&c, v1::ApplyPolicyRequest { name, ..m });
    delete_policy(Path(name): String) -> v1::DeletePolicyResponse =
        Rpc::DELETE_POLICY, None, |s, c| s.delete_policy(&c, &name);
    eval_policy(Body(m): v1::EvalPolicyRequest) -> v1::EvalPolicyResponse =
        Rpc::EVAL_POLICY, None, |s, c| s.eval_policy(&c, m);
    query_audit(Params(m): v1::QueryAuditRequest) -> v1::QueryAuditResponse =
        Rpc::QUERY_AUDIT, None, |s, c| s.query_audit(&c, m);
    verify_audit(Body(m): v1::VerifyAuditRequest) -> v1::VerifyAuditResponse =
        Rpc::VERIFY_AUDIT, None, |s, c| s.verify_audit(&c, m);
    whoami() -> v1::Principal =
        Rpc::WHO_AM_I, None, |s, c| async { Ok(s.who_am_i(&c)) };
    get_principal(Path(subject): String) -> v1::PrincipalRecord =
        Rpc::GET_PRINCIPAL, None, |s, c| s.get_principal(&c, &subject);
    set_trust_tier(
        Path(subject): String,
        Body(m): v1::SetTrustTierRequest
    ) -> v1::PrincipalRecord =
        Rpc::SET_TRUST_TIER, None, |s, c| {
            s.set_trust_tier(&c, v1::SetTrustTierRequest { subject, ..m })
        };
}
