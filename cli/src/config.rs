//! Where the CLI keeps things: `config.toml` in the XDG config dir (server, TLS files, the
//! OpenID client), and the tokens in the XDG state dir (`tokens.json`, mode 0600, one entry
//! per server). Tokens are never printed.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CliError, CliResult};

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The current server: used when neither --server nor JITSUDO_SERVER is given
    /// (`jitsudo login --server URL` and `jitsudo context use URL` set it).
    pub server: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Default output format: table, json or yaml.
    pub output: Option<String>,
    #[serde(default)]
    pub oidc: OidcConfig,
    /// What to use for one server (its TLS files), remembered at login: a context.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub servers: BTreeMap<String, ServerConfig>,
}

/// One server's own settings, over the global ones.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
}

/// The OpenID provider `jitsudo login` uses (device authorization grant).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    /// Scopes asked for; default `openid profile email offline_access`.
    pub scopes: Option<Vec<String>>,
}

/// The directories the CLI uses; `JITSUDO_CONFIG_DIR` / `JITSUDO_STATE_DIR` override them.
#[derive(Clone, Debug)]
pub struct Paths {
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
}

impl Paths {
    pub fn discover() -> CliResult<Paths> {
        let dirs = directories::ProjectDirs::from("", "", "jitsudo");
        let config_dir = std::env::var_os("JITSUDO_CONFIG_DIR")
            .map(PathBuf::from)
            .or_else(|| dirs.as_ref().map(|d| d.config_dir().to_path_buf()));
        let state_dir = std::env::var_os("JITSUDO_STATE_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                dirs.as_ref().map(|d| {
                    d.state_dir()
                        .unwrap_or_else(|| d.config_dir())
                        .to_path_buf()
                })
            });
        match (config_dir, state_dir) {
            (Some(config_dir), Some(state_dir)) => Ok(Paths {
                config_dir,
                state_dir,
            }),
            _ => Err(CliError::failure(
                "cannot find a home directory for the configuration — set JITSUDO_CONFIG_DIR and JITSUDO_STATE_DIR",
            )),
        }
    }

    pub fn config_file(&self) -> PathBuf {
        self.config_dir.join("config.toml")
    }

    pub fn tokens_file(&self) -> PathBuf {
        self.state_dir.join("tokens.json")
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> CliResult<FileConfig> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                CliError::usage(format!(
                    "{} is not a valid jitsudo configuration: {} — fix or delete it",
                    path.display(),
                    e.message()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
            Err(e) => Err(CliError::failure(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    pub fn save(&self, path: &Path) -> CliResult<()> {
        let text = toml::to_string_pretty(self)
            .map_err(|e| CliError::failure(format!("cannot write the configuration: {e}")))?;
        write_private(path, text.as_bytes())
    }
}

/// What `jitsudo login` stored for one server.
#[derive(Clone, Deserialize, Serialize)]
pub struct StoredToken {
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Unix seconds; from the token response or the JWT's `exp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// The access token's lifetime in seconds when it was issued (sets the refresh margin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<i64>,
    /// How it was obtained: "dev" or "oidc".
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken")
            .field("access_token", &"[redacted]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("expires_at", &self.expires_at)
            .field("method", &self.method)
            .field("issuer", &self.issuer)
            .finish()
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct TokenStore {
    #[serde(default)]
    pub servers: BTreeMap<String, StoredToken>,
}

impl TokenStore {
    pub fn load(path: &Path) -> CliResult<TokenStore> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                CliError::failure(format!(
                    "{} is damaged ({e}) — delete it and run `jitsudo login`",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenStore::default()),
            Err(e) => Err(CliError::failure(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    pub fn save(&self, path: &Path) -> CliResult<()> {
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| CliError::failure(format!("cannot encode the token file: {e}")))?;
        write_private(path, &bytes)
    }
}

/// Writes `bytes` to `path` through a temporary file with mode 0600, then renames it into
/// place: a crash never leaves half a file, and the file is never readable by others.
pub fn write_private(path: &Path, bytes: &[u8]) -> CliResult<()> {
    let dir = path
        .parent()
        .ok_or_else(|| CliError::failure(format!("{} has no directory", path.display())))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::failure(format!("cannot create {}: {e}", dir.display())))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let result = options
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CliError::failure(format!("cannot write {}: {e}", path.display()))
    })
}
