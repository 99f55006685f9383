//! jitsudod's configuration: one TOML file (documented key by key in docs/configuration.md),
//! every key overridable by a `JITSUDOD_<SECTION>_<KEY>` environment variable, the main
//! ones by flags. Unknown keys are an error that names the key. Secrets come from files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration in {origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("{0}")]
    Rule(String),
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub node: NodeConfig,
    pub cluster: ClusterSection,
    pub auth: AuthSection,
    pub authz: AuthzConfig,
    pub audit: AuditSection,
    pub limits: LimitsConfig,
    pub providers: Vec<ProviderConfig>,
    pub sinks: Vec<SinkSection>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the one listener serving gRPC, REST, health and metrics.
    pub listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// CA bundle for client certificates.
    pub client_ca: Option<PathBuf>,
    /// `off`, `optional` or `require`.
    pub client_auth: String,
    /// Serve without TLS (refused unless set; warned about at every start).
    pub insecure_plaintext: bool,
    /// How long in-flight calls may finish after SIGTERM.
    pub shutdown_grace_seconds: u64,
    /// HMAC key for page tokens (a file); generated per process when unset.
    pub page_token_key_file: Option<PathBuf>,
    /// Client certificates that authenticate bots (mutual TLS): a call that carries no
    /// bearer token but a client certificate valid for `san` is made as `subject`.
    pub client_principals: Vec<ClientPrincipal>,
}

/// One bot identity proved by a client certificate.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientPrincipal {
    /// A DNS name the certificate must be valid for (its subjectAltName).
    pub san: String,
    /// The principal's subject, e.g. `bot:deployer`.
    pub subject: String,
    /// The bot's groups (admin and auditor groups count as for people).
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            client_auth: "off".into(),
            insecure_plaintext: false,
            shutdown_grace_seconds: 10,
            page_token_key_file: None,
            client_principals: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://…` or `sqlite://PATH`.
    pub url: String,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://jitsudo.db".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub name: String,
    pub shards: u32,
    pub lease_ttl_seconds: u64,
    /// How often the grant reconciler compares each provider's managed grants with the
    /// store (one node of the cluster does, holding the `reconcile` lease).
    pub reconcile_interval_seconds: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: "jitsudod".into(),
            shards: 64,
            lease_ttl_seconds: 5,
            reconcile_interval_seconds: 60,
        }
    }
}

/// The mesh between the nodes of a cluster (routing). Unset `listen`: no mesh — a single
/// node, or a cluster whose nodes answer only for the shards they hold.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// The cluster port, e.g. `0.0.0.0:8444`.
    pub listen: Option<SocketAddr>,
    /// `host:port` the other nodes dial; the host must be in `tls_cert`. Default: `listen`
    /// (which then must not be a wildcard address).
    pub advertise: Option<String>,
    /// This node's certificate for the mesh: server and client use (`jitsudod certs`
    /// writes `node.pem`).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The CA that signed every node's certificate; peers without one are refused.
    pub ca: Option<PathBuf>,
    /// A file holding the shared cookie (the same on every node).
    pub cookie_file: Option<PathBuf>,
}

impl ClusterSection {
    /// The advertised address, checked.
    pub fn advertise(&self) -> Result<Option<String>, String> {
        let Some(listen) = self.listen else {
            return Ok(None);
        };
        match &self.advertise {
            Some(a)
                if a.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) =>
            {
                Ok(Some(a.clone()))
            }
            Some(a) => Err(format!("[cluster] advertise = {a:?} is not host:port")),
            None if listen.ip().is_unspecified() => Err(format!(
                "[cluster] listen = {listen} is a wildcard address: set [cluster] advertise to the host:port the other nodes dial"
            )),
            None => Ok(Some(listen.to_string())),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    pub issuer: String,
    pub audience: String,
    pub jwks_uri: Option<String>,
    pub algorithms: Vec<String>,
    pub leeway_seconds: u64,
    pub groups_claim: String,
    /// Accept ID tokens whose `aud` is this client id (identity providers with opaque
    /// access tokens only).
    pub id_token_client_id: Option<String>,
    /// PEM bundle to trust the issuer's TLS certificate.
    pub issuer_ca: Option<PathBuf>,
    /// Accept only tokens marked `typ: at+jwt` (RFC 9068); set it when your issuer marks
    /// its access tokens so, and an ID token can never pass as one.
    pub require_at_jwt: bool,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            issuer: String::new(),
            audience: "jitsudo".into(),
            jwks_uri: None,
            algorithms: Vec::new(),
            leeway_seconds: 30,
            groups_claim: "groups".into(),
            id_token_client_id: None,
            issuer_ca: None,
            require_at_jwt: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzConfig {
    pub admin_groups: Vec<String>,
    pub auditor_groups: Vec<String>,
    /// Subjects that are one person (an admin's break-glass login, an old and a new IdP
    /// subject), e.g. `[["alice", "alice-admin"]]`: the same-person rule treats them as one.
    pub same_person: Vec<Vec<String>>,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        AuthzConfig {
            admin_groups: vec!["jitsudo-admins".into()],
            auditor_groups: vec!["auditors".into()],
            same_person: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// Ed25519 PKCS#8 PEM file signing checkpoints (never stored in the database).
    pub signing_key: Option<PathBuf>,
    pub checkpoint_every: i64,
    pub checkpoint_interval_seconds: u64,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            signing_key: None,
            checkpoint_every: 1000,
            checkpoint_interval_seconds: 60,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest accepted gRPC message or REST body.
    pub max_message_bytes: usize,
    /// Largest page a list call returns.
    pub max_page_size: u32,
    /// After a break-glass request, the same person gets no other for this long.
    pub break_glass_cooldown_seconds: u64,
    /// Open (not yet final) requests one person may have at once; 0: no cap.
    pub max_live_requests_per_principal: i64,
    /// Mutating calls (create, decide, cancel, revoke, extend, credentials, policy and
    /// principal changes) per principal and minute; 0: no limit.
    pub mutations_per_minute: u32,
    /// Failed authentications per client address and minute before that address is
    /// refused for a while; 0: no limit.
    pub auth_failures_per_minute: u32,
    /// How long after approval a grant may keep being retried (a cloud that throttles or
    /// is down) before the request fails. Every grant's absolute end is approval + this +
    /// the duration, so it also bounds how long a revoked grant's tombstone is kept.
    pub grant_timeout_seconds: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 1 << 20,
            max_page_size: 500,
            break_glass_cooldown_seconds: 15 * 60,
            max_live_requests_per_principal: 25,
            mutations_per_minute: 120,
            auth_failures_per_minute: 60,
            grant_timeout_seconds: 300,
        }
    }
}

/// One `[[providers]]` table, tagged by `kind`, checked by the providers crate (each kind
/// has its own keys; see docs/providers.md).
pub type ProviderConfig = jitsudo_providers::config::ProviderSection;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSection {
    pub name: String,
    /// `log` or `webhook`.
    pub kind: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

impl Config {
    /// Reads the file (if any), applies `JITSUDOD_*` overrides from `env`, and checks it.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut value = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.into(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Invalid {
                        origin: p.display().to_string(),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        for (k, v) in env {
            let Some(rest) = k.strip_prefix("JITSUDOD_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let Some((section, key)) = rest.split_once('_') else {
                return Err(ConfigError::Invalid {
                    origin: k.clone(),
                    message: "expected JITSUDOD_<SECTION>_<KEY>".into(),
                });
            };
            if matches!(section, "providers" | "sinks") {
                return Err(ConfigError::Invalid {
                    origin: k,
                    message: "providers and sinks are lists: configure them in the file".into(),
                });
            }
            let parsed: toml::Value = format!("v = {v}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(v));
            let table = value
                .entry(section.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match table {
                toml::Value::Table(t) => {
                    t.insert(key.to_owned(), parsed);
                }
                _ => {
                    return Err(ConfigError::Invalid {
                        origin: k,
                        message: format!("[{section}] is not a section"),
                    });
                }
            }
        }
        let origin = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the environment".into());
        let config: Config =
            toml::Value::Table(value)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    origin,
                    message: e.to_string(),
                })?;
        Ok(config)
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.node.lease_ttl_seconds.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).into(), (*b).into()))
            .collect()
    }

    /// cluster-config/three-node: three valid files that agree on everything a cluster
    /// shares and differ in what must be unique.
    #[test]
    fn the_three_node_example_is_valid_and_consistent() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-config/three-node");
        let nodes: Vec<Config> = ["a", "b", "c"]
            .iter()
            .map(|n| {
                let path = dir.join(format!("node-{n}.toml"));
                Config::load(Some(&path), Vec::new())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            })
            .collect();
        let names: std::collections::BTreeSet<_> = nodes.iter().map(|c| &c.node.name).collect();
        let listens: std::collections::BTreeSet<_> =
            nodes.iter().map(|c| c.server.listen).collect();
        assert_eq!((names.len(), listens.len()), (3, 3));
        for c in &nodes {
            assert_eq!(c.node.shards, nodes[0].node.shards);
            assert_eq!(c.node.lease_ttl_seconds, nodes[0].node.lease_ttl_seconds);
            assert_eq!(c.database.url, nodes[0].database.url);
            assert_eq!(c.audit.signing_key, nodes[0].audit.signing_key);
            assert_eq!(
                c.server.page_token_key_file,
                nodes[0].server.page_token_key_file
            );
            assert_eq!(c.cluster.cookie_file, nodes[0].cluster.cookie_file);
            assert_eq!(c.cluster.ca, nodes[0].cluster.ca);
            assert!(
                c.cluster.advertise().unwrap().is_some(),
                "every node meshes"
            );
        }
        let meshes: std::collections::BTreeSet<_> =
            nodes.iter().map(|c| c.cluster.listen).collect();
        assert_eq!(meshes.len(), 3);
    }

    #[test]
    fn env_overrides_every_key_and_parses_types() {
        let c = Config::load(
            None,
            env(&[
                ("JITSUDOD_SERVER_LISTEN", "0.0.0.0:9443"),
                ("JITSUDOD_NODE_SHARDS", "16"),
                ("JITSUDOD_SERVER_INSECURE_PLAINTEXT", "true"),
                ("JITSUDOD_AUTHZ_ADMIN_GROUPS", r#"["ops", "sec"]"#),
                ("JITSUDOD_AUTH_ISSUER", "https://id.example.com"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 9443);
        assert_eq!(c.node.shards, 16);
        assert!(c.server.insecure_plaintext);
        assert_eq!(c.authz.admin_groups, ["ops", "sec"]);
        assert_eq!(c.auth.issuer, "https://id.example.com");
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[server]\nlisten = \"127.0.0.1:1\"\nlisen_typo = 1\n").unwrap();
        let e = Config::load(Some(&p), []).unwrap_err().to_string();
        assert!(e.contains("lisen_typo"), "{e}");
        let e = Config::load(None, env(&[("JITSUDOD_NODE_NAEM", "x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("naem"), "{e}");
        let e = Config::load(None, env(&[("JITSUDOD_NOPE_X", "1")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }
}
