//! The server loop the fakes share: a thread of its own with a current-thread runtime (so a
//! fake keeps serving while a test blocks on a child process), plain HTTP or TLS, HTTP/1.1
//! and HTTP/2, and a way for a handler to drop the connection unanswered ("applied, the
//! response lost").

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::oneshot;

/// Returned by a handler to close the connection (HTTP/1.1) or reset the stream (HTTP/2)
/// instead of answering.
#[derive(Debug)]
pub(crate) struct ResponseLost;

impl std::fmt::Display for ResponseLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("response dropped by fault injection")
    }
}

impl std::error::Error for ResponseLost {}

pub(crate) type Answer = std::result::Result<Response<Full<Bytes>>, ResponseLost>;
pub(crate) type Handler =
    Arc<dyn Fn(Request<Bytes>) -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

/// A running server; stops (and joins its thread) when dropped.
pub(crate) struct Server {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A listener on 127.0.0.1 at a free port, for [`spawn`] (bound first, so a fake can know
/// its address before it serves).
pub(crate) fn bind() -> Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 for a fake")
}

/// Serves `handler` on `listener`, with TLS when `tls` is given. Each request reaches the
/// handler with its body read whole.
pub(crate) fn spawn(
    name: &str,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Handler,
) -> Result<Server> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let (shutdown, mut stop) = oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the fake's runtime")?;
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
                loop {
                    tokio::select! {
                        _ = &mut stop => break,
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            let acceptor = acceptor.clone();
                            let handler = handler.clone();
                            tokio::spawn(async move {
                                let svc = service_fn(move |req: Request<Incoming>| {
                                    let handler = handler.clone();
                                    async move {
                                        let (parts, body) = req.into_parts();
                                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                        handler(Request::from_parts(parts, body)).await
                                    }
                                });
                                let builder = auto::Builder::new(TokioExecutor::new());
                                match acceptor {
                                    Some(a) => {
                                        let Ok(stream) = a.accept(tcp).await else { return };
                                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                                    }
                                    None => {
                                        let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                                    }
                                }
                            });
                        }
                    }
                }
            });
        })
        .context("spawning the fake's thread")?;
    Ok(Server {
        addr,
        shutdown: Some(shutdown),
        thread: Some(thread),
    })
}
