//! A fault-injecting proxy in front of moto_server for the AWS provider's tests, and the log
//! of what went through it. moto itself never throttles, never fails and never loses an
//! answer; real AWS does all three. The proxy reads each call's `Action` from the form body
//! of the query protocol (IAM, STS) and, per rule, answers it as AWS would have failed it —
//! `Throttling` (HTTP 400), `AccessDenied` (HTTP 403), `ServiceFailure` (HTTP 500),
//! `ServiceUnavailable` (HTTP 503) — or forwards it to moto, lets it apply, and then tears
//! the connection down without an answer ("applied, answer lost"). Calls of the JSON
//! protocol (SSO Admin, Identity Store) are told by their `X-Amz-Target` header and failed
//! as those services fail: a JSON body with `__type` (`ThrottlingException` and
//! `AccessDeniedException` with HTTP 400, `InternalServerException` 500,
//! `ServiceUnavailableException` 503). It also records every call's parameters (the form's,
//! or the JSON body's top-level strings), which shows what moto ignores (`SourceIdentity`,
//! session tags).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// How a call fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AwsFault {
    /// HTTP 400 `Throttling` ("Rate exceeded").
    Throttle,
    /// HTTP 403 `AccessDenied`, as for a principal missing the permission.
    AccessDenied,
    /// HTTP 500 `ServiceFailure`, nothing applied.
    ServerError,
    /// HTTP 503 `ServiceUnavailable`, nothing applied.
    Unavailable,
    /// Forwarded to moto and applied there; the connection is then closed without an answer.
    DropAfterApply,
    /// Another operation on the same thing is under way: `ConflictException` (HTTP 400) in the
    /// JSON protocol, `ConcurrentModification` (HTTP 409) in IAM's; nothing applied.
    Conflict,
}

/// One call that reached the proxy.
#[derive(Clone, Debug)]
pub struct Seen {
    pub action: String,
    /// The decoded form parameters, in order.
    pub params: Vec<(String, String)>,
    /// The fault it was answered with, if any.
    pub fault: Option<AwsFault>,
}

impl Seen {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    /// (action, fault, how many more times)
    rules: Vec<(String, AwsFault, usize)>,
    seen: VecDeque<Seen>,
}

pub struct AwsFaultProxy {
    /// `http://127.0.0.1:PORT`: point the SDK's `endpoint_url` here.
    pub url: String,
    state: Arc<Mutex<State>>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl AwsFaultProxy {
    /// A proxy in front of `upstream` (moto's `http://127.0.0.1:PORT`) on its own thread.
    pub fn start(upstream: &str) -> Result<Self> {
        let upstream = upstream
            .strip_prefix("http://")
            .context("the upstream must be http://HOST:PORT")?
            .trim_end_matches('/')
            .to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State::default()));
        let (shutdown, mut stop) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let shared = state.clone();
        std::thread::Builder::new()
            .name("aws-fault-proxy".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    loop {
                        tokio::select! {
                            _ = &mut stop => break,
                            accepted = listener.accept() => {
                                let Ok((tcp, _)) = accepted else { continue };
                                let shared = shared.clone();
                                let upstream = upstream.clone();
                                tokio::spawn(async move {
                                    let svc = service_fn(move |req| {
                                        serve(shared.clone(), upstream.clone(), req)
                                    });
                                    let _ = auto::Builder::new(TokioExecutor::new())
                                        .serve_connection(TokioIo::new(tcp), svc)
                                        .await;
                                });
                            }
                        }
                    }
                });
                drop(runtime);
            })?;
        Ok(AwsFaultProxy {
            url,
            state,
            _shutdown: shutdown,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails the next `times` calls of `action` (`PutRolePolicy`, `AssumeRole`, …).
    pub fn fail(&self, action: &str, fault: AwsFault, times: usize) {
        self.lock().rules.push((action.to_owned(), fault, times));
    }

    /// No more faults.
    pub fn clear(&self) {
        self.lock().rules.clear();
    }

    /// The calls of `action` seen so far, oldest first.
    pub fn seen(&self, action: &str) -> Vec<Seen> {
        self.lock()
            .seen
            .iter()
            .filter(|s| s.action == action)
            .cloned()
            .collect()
    }
}

/// Returned by the service to make hyper drop the connection without an answer.
#[derive(Debug)]
struct AnswerLost;

impl std::fmt::Display for AnswerLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("answer dropped by fault injection")
    }
}

impl std::error::Error for AnswerLost {}

async fn serve(
    state: Arc<Mutex<State>>,
    upstream: String,
    req: Request<Incoming>,
) -> std::result::Result<Response<Full<Bytes>>, AnswerLost> {
    let (parts, body) = req.into_parts();
    // A body that cannot be read is not guessed at: the connection goes.
    let body = body.collect().await.map_err(|_| AnswerLost)?.to_bytes();
    // JSON protocol: `X-Amz-Target: SWBExternalService.CreateAccountAssignment`.
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(|t| t.rsplit('.').next().unwrap_or(t).to_owned());
    let json = target.is_some();
    let params = if json {
        json_params(&body)
    } else {
        form(&body)
    };
    let action = target.unwrap_or_else(|| {
        params
            .iter()
            .find(|(k, _)| k == "Action")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    });
    let fault = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        let fault = s
            .rules
            .iter_mut()
            .find(|(a, _, n)| *a == action && *n > 0)
            .map(|(_, f, n)| {
                *n -= 1;
                *f
            });
        s.seen.push_back(Seen {
            action: action.clone(),
            params,
            fault,
        });
        fault
    };
    let service = if json {
        "json"
    } else if parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("/sts/aws4_request"))
    {
        "sts"
    } else {
        "iam"
    };
    match fault {
        Some(AwsFault::DropAfterApply) => {
            // Applied upstream, then no answer.
            let _ = tokio::task::spawn_blocking(move || forward(&upstream, &parts, &body)).await;
            Err(AnswerLost)
        }
        Some(f) => Ok(error(service, f, &action)),
        None => {
            let answer = tokio::task::spawn_blocking(move || forward(&upstream, &parts, &body))
                .await
                .ok()
                .and_then(|r| r.ok());
            Ok(answer.unwrap_or_else(|| error(service, AwsFault::Unavailable, &action)))
        }
    }
}

/// The call sent on to moto over a connection of its own; its whole answer.
fn forward(
    upstream: &str,
    parts: &hyper::http::request::Parts,
    body: &[u8],
) -> std::io::Result<Response<Full<Bytes>>> {
    let mut s = TcpStream::connect(upstream)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    s.set_write_timeout(Some(std::time::Duration::from_secs(30)))?;
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut head = format!("{} {target} HTTP/1.1\r\n", parts.method);
    for (k, v) in &parts.headers {
        // Hop-by-hop headers, and `expect` (moto would answer 100 Continue first).
        if [
            "connection",
            "content-length",
            "transfer-encoding",
            "expect",
            "te",
            "keep-alive",
            "upgrade",
            "proxy-connection",
        ]
        .contains(&k.as_str())
        {
            continue;
        }
        head.push_str(&format!("{}: {}\r\n", k, v.to_str().unwrap_or("")));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    // Interim (1xx) heads come before the answer: skip them.
    let mut rest: &[u8] = &raw;
    let (head, body) = loop {
        let split = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no header end in moto's answer"))?;
        let head = String::from_utf8_lossy(&rest[..split]).into_owned();
        let body = &rest[split + 4..];
        if head
            .split_whitespace()
            .nth(1)
            .is_some_and(|c| c.starts_with('1'))
        {
            rest = body;
            continue;
        }
        break (head, body.to_vec());
    };
    let mut body = body;
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status in moto's answer"))?;
    let mut builder = Response::builder().status(status);
    let mut chunked = false;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.eq_ignore_ascii_case("chunked");
                continue;
            }
            if k.eq_ignore_ascii_case("connection") || k.eq_ignore_ascii_case("content-length") {
                continue;
            }
            builder = builder.header(k, v);
        }
    }
    if chunked {
        body = dechunk(&body)?;
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .map_err(std::io::Error::other)
}

fn dechunk(mut raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let bad = || std::io::Error::other("a malformed chunked answer from moto");
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let line = String::from_utf8_lossy(&raw[..eol]).into_owned();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad())?;
        if size == 0 {
            return Ok(out);
        }
        let start = eol + 2;
        let end = start + size;
        if raw.len() < end + 2 {
            return Err(bad());
        }
        out.extend_from_slice(&raw[start..end]);
        raw = &raw[end + 2..];
    }
}

/// The answer AWS gives for `fault`, in the query protocol's XML error shape.
fn error(service: &str, fault: AwsFault, action: &str) -> Response<Full<Bytes>> {
    if service == "json" {
        return json_error(fault, action);
    }
    let (status, code, message) = match fault {
        AwsFault::Throttle => (400, "Throttling", "Rate exceeded".to_owned()),
        AwsFault::Conflict => (
            409,
            "ConcurrentModification",
            "The request was rejected because multiple requests to change this object were submitted simultaneously."
                .to_owned(),
        ),
        AwsFault::AccessDenied => (
            403,
            "AccessDenied",
            format!(
                "User: arn:aws:sts::123456789012:assumed-role/jitsudod/test is not authorized to perform: {service}:{action}"
            ),
        ),
        AwsFault::ServerError => (
            500,
            "ServiceFailure",
            "The request processing has failed because of an unknown error, exception or failure."
                .to_owned(),
        ),
        AwsFault::Unavailable | AwsFault::DropAfterApply => (
            503,
            "ServiceUnavailable",
            "Service is unavailable".to_owned(),
        ),
    };
    let kind = if status >= 500 { "Receiver" } else { "Sender" };
    let body = format!(
        "<ErrorResponse xmlns=\"https://{service}.amazonaws.com/doc/{}/\"><Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
        if service == "sts" {
            "2011-06-15"
        } else {
            "2010-05-08"
        },
        uuid::Uuid::new_v4()
    );
    Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// An error as the JSON-protocol services answer it.
fn json_error(fault: AwsFault, action: &str) -> Response<Full<Bytes>> {
    let (status, code, message) = match fault {
        AwsFault::Throttle => (400, "ThrottlingException", "Rate exceeded".to_owned()),
        AwsFault::Conflict => (
            400,
            "ConflictException",
            "Another operation on this permission set is in progress.".to_owned(),
        ),
        AwsFault::AccessDenied => (
            400,
            "AccessDeniedException",
            format!(
                "User: arn:aws:sts::123456789012:assumed-role/jitsudod/test is not authorized to perform: sso:{action}"
            ),
        ),
        AwsFault::ServerError => (
            500,
            "InternalServerException",
            "The request processing has failed because of an unknown error, exception or failure."
                .to_owned(),
        ),
        AwsFault::Unavailable | AwsFault::DropAfterApply => (
            503,
            "ServiceUnavailableException",
            "Service is unavailable".to_owned(),
        ),
    };
    let body = serde_json::json!({"__type": code, "message": message}).to_string();
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amzn-errortype", code)
        .header("x-amzn-requestid", uuid::Uuid::new_v4().to_string())
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// A JSON body's top-level string fields → pairs.
fn json_params(body: &[u8]) -> Vec<(String, String)> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(m)) => m
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_owned())))
            .collect(),
        _ => Vec::new(),
    }
}

/// `application/x-www-form-urlencoded` → pairs.
fn form(body: &[u8]) -> Vec<(String, String)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}
