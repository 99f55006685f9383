//! `jitsudod certs`: a CA plus server and client certificates (rcgen) for tests and small
//! installs. Real deployments should use their own PKI.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// PEM files written by [`generate`].
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The cluster mesh's node certificate: the server's names, good for server and
    /// client authentication (mutual TLS between nodes).
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
}

fn write(path: PathBuf, data: &str, private: bool) -> Result<PathBuf, CertError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    use std::io::Write;
    let mut f = opts.open(&path).map_err(|source| CertError::Write {
        path: path.clone(),
        source,
    })?;
    f.write_all(data.as_bytes())
        .map_err(|source| CertError::Write {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

/// A CA, a server certificate for `hosts` (DNS names or IP addresses), a client
/// certificate for `client_name` and a node certificate for the cluster mesh (the server's
/// names, server and client use), all written as PEM into `dir`.
pub fn generate(dir: &Path, hosts: &[String], client_name: &str) -> Result<CertFiles, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.into(),
        source,
    })?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "jitsudo CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(Vec::<String>::new())?;
    server
        .distinguished_name
        .push(DnType::CommonName, "jitsudod");
    for h in hosts {
        server
            .subject_alt_names
            .push(match h.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(h.clone().try_into()?),
            });
    }
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer)?;

    let client_key = KeyPair::generate()?;
    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client
        .distinguished_name
        .push(DnType::CommonName, client_name);
    client
        .subject_alt_names
        .push(SanType::DnsName(client_name.to_owned().try_into()?));
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer)?;

    let node_key = KeyPair::generate()?;
    let mut node = server.clone();
    node.distinguished_name = rcgen::DistinguishedName::new();
    node.distinguished_name
        .push(DnType::CommonName, "jitsudod node");
    node.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let node_cert = node.signed_by(&node_key, &issuer)?;

    Ok(CertFiles {
        ca_cert: write(dir.join("ca.pem"), &ca_cert.pem(), false)?,
        server_cert: write(dir.join("server.pem"), &server_cert.pem(), false)?,
        server_key: write(
            dir.join("server-key.pem"),
            &server_key.serialize_pem(),
            true,
        )?,
        client_cert: write(dir.join("client.pem"), &client_cert.pem(), false)?,
        client_key: write(
            dir.join("client-key.pem"),
            &client_key.serialize_pem(),
            true,
        )?,
        node_cert: write(dir.join("node.pem"), &node_cert.pem(), false)?,
        node_key: write(dir.join("node-key.pem"), &node_key.serialize_pem(), true)?,
    })
}
