//! The connection to jitsudod: one gRPC channel (TLS unless the server is on loopback and
//! named with `http://`), every call carrying the caller's bearer token.

use std::path::PathBuf;
use std::time::Duration;

use jitsudo_proto::v1::admin_service_client::AdminServiceClient;
use jitsudo_proto::v1::audit_service_client::AuditServiceClient;
use jitsudo_proto::v1::policy_service_client::PolicyServiceClient;
use jitsudo_proto::v1::principal_service_client::PrincipalServiceClient;
use jitsudo_proto::v1::request_service_client::RequestServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::{CliError, CliResult, Exit};

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Target {
    /// As the user gave it, without a trailing slash.
    pub server: String,
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl Target {
    /// Checks the URL: `https://…`, or `http://` on a loopback address (dev mode) only, so a
    /// token never crosses a network in clear text.
    pub fn parse_url(&self) -> CliResult<reqwest::Url> {
        let url = reqwest::Url::parse(&self.server).map_err(|e| {
            CliError::usage(format!(
                "--server {:?} is not a URL ({e}) — for example https://jitsudo.example.com:8443",
                self.server
            ))
        })?;
        match url.scheme() {
            "https" => Ok(url),
            "http" if is_loopback(&url) => Ok(url),
            "http" => Err(CliError::usage(format!(
                "refusing to send your token to {} over plain http — use https:// (plain http is for a dev-mode server on this machine only)",
                self.server
            ))),
            other => Err(CliError::usage(format!(
                "--server must be an http(s) URL, not {other}://…"
            ))),
        }
    }

    fn read(&self, path: &PathBuf, what: &str) -> CliResult<Vec<u8>> {
        std::fs::read(path)
            .map_err(|e| CliError::usage(format!("cannot read the {what} {}: {e}", path.display())))
    }

    pub async fn channel(&self) -> CliResult<Channel> {
        let url = self.parse_url()?;
        let mut endpoint = Endpoint::from_shared(self.server.clone())
            .map_err(|e| CliError::usage(format!("--server {:?}: {e}", self.server)))?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if url.scheme() == "https" {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = &self.ca_cert {
                tls = tls.ca_certificate(Certificate::from_pem(self.read(ca, "CA certificate")?));
            }
            match (&self.client_cert, &self.client_key) {
                (Some(c), Some(k)) => {
                    tls = tls.identity(Identity::from_pem(
                        self.read(c, "client certificate")?,
                        self.read(k, "client key")?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(CliError::usage(
                        "--client-cert and --client-key go together: give both or neither",
                    ));
                }
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| {
                CliError::usage(format!("the TLS settings are not usable: {e}")).with_detail(e)
            })?;
        }
        endpoint.connect().await.map_err(|e| {
            let mut source: Option<&dyn std::error::Error> = Some(&e);
            let mut chain = Vec::new();
            while let Some(s) = source {
                chain.push(s.to_string());
                source = s.source();
            }
            let cause = chain.last().cloned().unwrap_or_default();
            CliError::new(
                Exit::Unavailable,
                format!(
                    "cannot reach jitsudod at {} ({cause}) — is it running, and are --server and --ca-cert right?",
                    self.server
                ),
            )
            .with_detail(chain.join(": "))
        })
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Adds `authorization: Bearer …` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// Every jitsudo.v1 service, as the logged-in caller.
#[derive(Clone)]
pub struct Api {
    pub server: String,
    pub requests: RequestServiceClient<Authed>,
    pub policies: PolicyServiceClient<Authed>,
    pub audit: AuditServiceClient<Authed>,
    pub principals: PrincipalServiceClient<Authed>,
    pub admin: AdminServiceClient<Authed>,
}

impl Api {
    pub async fn connect(target: &Target, token: &str) -> CliResult<Api> {
        let channel = target.channel().await?;
        let value: MetadataValue<Ascii> = format!("Bearer {token}").parse().map_err(|_| {
            CliError::usage("the token has characters a header cannot carry — log in again")
        })?;
        let bearer = Bearer(value);
        let limit = 16 * 1024 * 1024;
        Ok(Api {
            server: target.server.clone(),
            requests: RequestServiceClient::with_interceptor(channel.clone(), bearer.clone())
                .max_decoding_message_size(limit),
            policies: PolicyServiceClient::with_interceptor(channel.clone(), bearer.clone())
                .max_decoding_message_size(limit),
            audit: AuditServiceClient::with_interceptor(channel.clone(), bearer.clone())
                .max_decoding_message_size(limit),
            principals: PrincipalServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            admin: AdminServiceClient::with_interceptor(channel, bearer),
        })
    }

    /// Turns an API error into a CLI error naming this server.
    pub fn err(&self, status: tonic::Status) -> CliError {
        CliError::from_status(&status, &self.server)
    }
}
