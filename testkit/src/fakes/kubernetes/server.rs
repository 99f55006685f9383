//! The API server's request handling on the fakes' shared server loop (TLS, HTTP/2 and
//! HTTP/1.1, its own thread; a dropped answer for "applied, response lost").

use std::net::TcpListener;
use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;

use super::super::serve::{self, Answer, ResponseLost};

use super::api::{self, ApiRequest, ApiResponse};
use super::faults::{Fault, LoggedRequest, Throttle};
use super::status::ApiError;
use super::{Shared, User};

pub(crate) fn spawn(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> Result<serve::Server> {
    serve::spawn(
        "fake-kube-apiserver",
        listener,
        Some(tls),
        Arc::new(move |req| Box::pin(serve(shared.clone(), req))),
    )
}

fn authenticate(shared: &Shared, headers: &HeaderMap) -> Option<User> {
    let auth = headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, token) = auth.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    shared.user(token.trim())
}

fn fault_response(fault: &Fault) -> ApiResponse {
    match fault {
        Fault::Throttle {
            style: Throttle::PriorityAndFairness,
            retry_after,
        } => {
            // http.Error in the APF filter: text, not a Status.
            let mut r = ApiResponse::error(&ApiError::too_many_requests("", *retry_after));
            r.content_type = "text/plain; charset=utf-8";
            r.body = b"Too many requests, please try again later.\n".to_vec();
            r.headers.push(("X-Content-Type-Options", "nosniff".into()));
            r
        }
        Fault::Throttle {
            style: Throttle::Status,
            retry_after,
        } => ApiResponse::error(&ApiError::too_many_requests(
            "Too many requests, please try again later.",
            *retry_after,
        )),
        Fault::Fail | Fault::DropAfterApply => ApiResponse::error(&ApiError::internal(
            "fault injected by the testkit Kubernetes fake",
        )),
    }
}

async fn serve(shared: Arc<Shared>, req: Request<Bytes>) -> Answer {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers = req.headers().clone();
    let body = req.into_body();

    let latency = shared.faults.current_latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let user = authenticate(&shared, &headers);
    let mut lost = false;
    let resp = match &user {
        // Authentication runs first in the real filter chain, before flow control.
        None => ApiResponse::error(&ApiError::unauthorized()),
        Some(u) => {
            let decision = shared.faults.decide(&method, &path);
            match decision.before {
                Some(fault) => fault_response(&fault),
                None => {
                    lost = decision.drop_after_apply;
                    let header =
                        |name: http::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
                    api::handle(
                        &shared,
                        &ApiRequest {
                            method: &method,
                            path: &path,
                            query: &query,
                            content_type: header(http::header::CONTENT_TYPE),
                            accept: header(http::header::ACCEPT),
                            body: &body,
                            user: u,
                        },
                    )
                }
            }
        }
    };
    shared.faults.log(LoggedRequest {
        method,
        path,
        query,
        status: (!lost).then_some(resp.status),
        user: user.map(|u| u.name),
    });
    if lost {
        return Err(ResponseLost);
    }
    Ok(build(resp))
}

fn build(r: ApiResponse) -> Response<Full<Bytes>> {
    let mut b = Response::builder()
        .status(r.status)
        .header(http::header::CONTENT_TYPE, r.content_type)
        .header(http::header::CACHE_CONTROL, "no-cache, private")
        .header("Audit-Id", uuid::Uuid::new_v4().to_string())
        .header("X-Kubernetes-Pf-Flowschema-Uid", FLOW_SCHEMA_UID)
        .header("X-Kubernetes-Pf-Prioritylevel-Uid", PRIORITY_LEVEL_UID);
    for (k, v) in r.headers {
        b = b.header(k, v);
    }
    b.body(Full::new(Bytes::from(r.body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

const FLOW_SCHEMA_UID: &str = "5f5c8b8e-1d5e-4a8b-9f58-2c1b8f3f0a01";
const PRIORITY_LEVEL_UID: &str = "0b9a1c9e-6e2f-4d36-8a8e-7f4f3c2d1e02";
