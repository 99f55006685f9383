//! REST/JSON under `/api/v1/…`: the request, policy, audit and principal RPCs with
//! proto3-JSON bodies (lowerCamelCase fields), the same authentication and TLS as gRPC, and
//! errors as an HTTP status plus `{"error": {"code", "message"}}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
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

async fn create(State(s): S, Extension(c): Extension<Caller>, b: Bytes) -> Res<v1::Request> {
    let m: v1::CreateRequestRequest = body(&b)?;
    s.run(Rpc::CREATE_REQUEST, Some(&c), None, s.create_request(&c, m))
        .await
        .map(Json)
}

async fn list(
    State(s): S,
    Extension(c): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Res<v1::ListRequestsResponse> {
    let m = v1::ListRequestsRequest {
        mine: flag(&q, "mine")?,
        awaiting_my_approval: flag(&q, "awaitingMyApproval")?,
        states: states(&q)?,
        provider: text(&q, "provider"),
        requester: text(&q, "requester"),
        page_size: number(&q, "pageSize")?,
        page_token: text(&q, "pageToken"),
        needs_review: flag(&q, "needsReview")?,
    };
    s.run(Rpc::LIST_REQUESTS, Some(&c), None, s.list_requests(&c, m))
        .await
        .map(Json)
}

async fn get_one(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Res<v1::Request> {
    s.run(
        Rpc::GET_REQUEST,
        Some(&c),
        Some(&id),
        s.get_request(&c, &id),
    )
    .await
    .map(Json)
}

#[derive(serde::Serialize)]
struct Events {
    events: Vec<v1::RequestEvent>,
    terminal: bool,
}

async fn events(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Res<Events> {
    let after: i64 = number(&q, "afterVersion")?;
    let (events, terminal) = s
        .run(
            Rpc::WATCH_REQUEST,
            Some(&c),
            Some(&id),
            s.request_events(&c, &id, after),
        )
        .await?;
    Ok(Json(Events { events, terminal }))
}

async fn approve(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    b: Bytes,
) -> Res<v1::Request> {
    let m: v1::DecideRequest = body(&b)?;
    s.run(
        Rpc::APPROVE_REQUEST,
        Some(&c),
        Some(&id),
        s.approve(&c, &id, m.comment),
    )
    .await
    .map(Json)
}

async fn deny(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    b: Bytes,
) -> Res<v1::Request> {
    let m: v1::DenyRequestRequest = body(&b)?;
    s.run(
        Rpc::DENY_REQUEST,
        Some(&c),
        Some(&id),
        s.deny(&c, &id, m.reason),
    )
    .await
    .map(Json)
}

async fn cancel(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Res<v1::Request> {
    s.run(Rpc::CANCEL_REQUEST, Some(&c), Some(&id), s.cancel(&c, &id))
        .await
        .map(Json)
}

async fn review(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    b: Bytes,
) -> Res<v1::Review> {
    let m: v1::ReviewRequestRequest = body(&b)?;
    s.run(
        Rpc::REVIEW_REQUEST,
        Some(&c),
        Some(&id),
        s.review(&c, &id, &m.verdict),
    )
    .await
    .map(Json)
}

async fn revoke(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    b: Bytes,
) -> Res<v1::Request> {
    let m: v1::RevokeRequestRequest = body(&b)?;
    s.run(
        Rpc::REVOKE_REQUEST,
        Some(&c),
        Some(&id),
        s.revoke(&c, &id, m.reason),
    )
    .await
    .map(Json)
}

async fn extend(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    b: Bytes,
) -> Res<v1::Request> {
    let m: v1::ExtendRequestRequest = body(&b)?;
    s.run(
        Rpc::EXTEND_REQUEST,
        Some(&c),
        Some(&id),
        s.extend(&c, &id, m.by_seconds, m.reason),
    )
    .await
    .map(Json)
}

async fn approve_ext(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path((id, number)): Path<(String, u32)>,
    b: Bytes,
) -> Res<v1::Request> {
    let mut m: v1::DecideExtensionRequest = body(&b)?;
    m.id = id.clone();
    m.number = number;
    s.run(
        Rpc::APPROVE_EXTENSION,
        Some(&c),
        Some(&id),
        s.decide_extension(&c, m, true),
    )
    .await
    .map(Json)
}

async fn deny_ext(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path((id, number)): Path<(String, u32)>,
    b: Bytes,
) -> Res<v1::Request> {
    let mut m: v1::DecideExtensionRequest = body(&b)?;
    m.id = id.clone();
    m.number = number;
    s.run(
        Rpc::DENY_EXTENSION,
        Some(&c),
        Some(&id),
        s.decide_extension(&c, m, false),
    )
    .await
    .map(Json)
}

async fn credentials(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Res<v1::Credentials> {
    s.run(
        Rpc::GET_CREDENTIALS,
        Some(&c),
        Some(&id),
        s.credentials(&c, &id),
    )
    .await
    .map(Json)
}

async fn list_policies(
    State(s): S,
    Extension(c): Extension<Caller>,
) -> Res<v1::ListPoliciesResponse> {
    s.run(Rpc::LIST_POLICIES, Some(&c), None, s.list_policies(&c))
        .await
        .map(Json)
}

async fn get_policy(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(name): Path<String>,
) -> Res<v1::Policy> {
    s.run(Rpc::GET_POLICY, Some(&c), None, s.get_policy(&c, &name))
        .await
        .map(Json)
}

async fn apply_policy(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(name): Path<String>,
    b: Bytes,
) -> Res<v1::Policy> {
    let mut m: v1::ApplyPolicyRequest = body(&b)?;
    m.name = name;
    s.run(Rpc::APPLY_POLICY, Some(&c), None, s.apply_policy(&c, m))
        .await
        .map(Json)
}

async fn delete_policy(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(name): Path<String>,
) -> Res<v1::DeletePolicyResponse> {
    s.run(
        Rpc::DELETE_POLICY,
        Some(&c),
        None,
        s.delete_policy(&c, &name),
    )
    .await
    .map(Json)
}

async fn eval_policy(
    State(s): S,
    Extension(c): Extension<Caller>,
    b: Bytes,
) -> Res<v1::EvalPolicyResponse> {
    let m: v1::EvalPolicyRequest = body(&b)?;
    s.run(Rpc::EVAL_POLICY, Some(&c), None, s.eval_policy(&c, m))
        .await
        .map(Json)
}

async fn query_audit(
    State(s): S,
    Extension(c): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Res<v1::QueryAuditResponse> {
    let m = v1::QueryAuditRequest {
        request_id: text(&q, "requestId"),
        actor: text(&q, "actor"),
        kind: text(&q, "kind"),
        since: ts(&q, "since")?,
        until: ts(&q, "until")?,
        page_size: number(&q, "pageSize")?,
        page_token: text(&q, "pageToken"),
        oldest_first: flag(&q, "oldestFirst")?,
        chain_after_seq: number(&q, "chainAfterSeq")?,
        chain_mode: flag(&q, "chainMode")?,
        provider: text(&q, "provider"),
    };
    s.run(Rpc::QUERY_AUDIT, Some(&c), None, s.query_audit(&c, m))
        .await
        .map(Json)
}

async fn verify_audit(
    State(s): S,
    Extension(c): Extension<Caller>,
) -> Res<v1::VerifyAuditResponse> {
    s.run(Rpc::VERIFY_AUDIT, Some(&c), None, s.verify_audit(&c))
        .await
        .map(Json)
}

async fn whoami(State(s): S, Extension(c): Extension<Caller>) -> Res<v1::Principal> {
    s.run(Rpc::WHO_AM_I, Some(&c), None, async { Ok(s.who_am_i(&c)) })
        .await
        .map(Json)
}

async fn get_principal(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(subject): Path<String>,
) -> Res<v1::PrincipalRecord> {
    s.run(
        Rpc::GET_PRINCIPAL,
        Some(&c),
        None,
        s.get_principal(&c, &subject),
    )
    .await
    .map(Json)
}

async fn set_trust_tier(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(subject): Path<String>,
    b: Bytes,
) -> Res<v1::PrincipalRecord> {
    let mut m: v1::SetTrustTierRequest = body(&b)?;
    m.subject = subject;
    s.run(Rpc::SET_TRUST_TIER, Some(&c), None, s.set_trust_tier(&c, m))
        .await
        .map(Json)
}
