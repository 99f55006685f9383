//! TLS for the API listener (rustls): the server certificate, and optionally client
//! certificates (`off`, `optional`, `require`) verified against a CA bundle.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
}

pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|e| TlsError::Read {
        what: "certificate",
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read {
            what: "certificate",
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Read {
            what: "certificate",
            path: path.display().to_string(),
            reason: "no PEM certificate in it".into(),
        });
    }
    Ok(certs)
}

pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|e| TlsError::Read {
        what: "private key",
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| TlsError::Read {
            what: "private key",
            path: path.display().to_string(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Read {
            what: "private key",
            path: path.display().to_string(),
            reason: "no PEM private key in it".into(),
        })
}

pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    client_auth: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs(cert)?;
    let key = read_key(key)?;
    let builder = ServerConfig::builder();
    let builder = match (client_auth, client_ca) {
        ("off", _) => builder.with_no_client_auth(),
        ("optional" | "require", Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| TlsError::Config(format!("client CA: {e}")))?;
            }
            let v = WebPkiClientVerifier::builder(Arc::new(roots));
            let v = if client_auth == "optional" {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder
                .with_client_cert_verifier(v.build().map_err(|e| TlsError::Config(e.to_string()))?)
        }
        ("optional" | "require", None) => {
            return Err(TlsError::Config(format!(
                "client_auth = {client_auth:?} needs server.client_ca"
            )));
        }
        (other, _) => {
            return Err(TlsError::Config(format!(
                "client_auth must be off, optional or require, not {other:?}"
            )));
        }
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The cluster mesh's TLS (mutual): a node presents `cert` both as server and as client,
/// and accepts only peers whose certificate `ca` signed.
pub fn mesh_configs(
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> Result<(Arc<ServerConfig>, Arc<rustls::ClientConfig>), TlsError> {
    let certs = read_certs(cert)?;
    let key = read_key(key)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| TlsError::Config(format!("cluster CA: {e}")))?;
    }
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder(roots.clone())
        .build()
        .map_err(|e| TlsError::Config(format!("cluster CA: {e}")))?;
    let server = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(|e| TlsError::Config(format!("cluster certificate: {e}")))?;
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| TlsError::Config(format!("cluster certificate: {e}")))?;
    Ok((Arc::new(server), Arc::new(client)))
}
