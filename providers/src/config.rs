//! `[[providers]]`: one table per provider, tagged by `kind`, each kind with its own keys.
//!
//! Every table is checked whole before anything starts: an unknown key, a missing one or a
//! bad value is an error naming the provider, the key and what is allowed. Secrets come
//! only from files or the platform's ambient credentials, never from the table itself.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::identity::{DEFAULT_TEMPLATE, IdentityMapping};
use crate::registry::{DriftAction, Entry};
use crate::{Provider, demo, http};

/// The kinds a `[[providers]]` table may name, whether or not this build has them.
pub const KINDS: [&str; 6] = ["kubernetes", "aws", "gcp", "azure", "http", "demo"];

/// The kinds this build can run.
const BUILT: &[&str] = &[
    #[cfg(feature = "kubernetes")]
    "kubernetes",
    #[cfg(feature = "aws")]
    "aws",
    #[cfg(feature = "gcp")]
    "gcp",
    #[cfg(feature = "azure")]
    "azure",
    "http",
    "demo",
];

/// Keys every kind shares.
const COMMON_KEYS: [&str; 5] = ["name", "kind", "subject", "identity_map_file", "on_drift"];

#[derive(Debug, thiserror::Error)]
#[error("provider {provider:?}{}: {message}", kind.as_deref().map(|k| format!(" (kind {k})")).unwrap_or_default())]
pub struct ConfigError {
    pub provider: String,
    pub kind: Option<String>,
    pub message: String,
}

/// The keys every kind shares.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    name: String,
    kind: String,
    /// How a requester's cloud principal is derived (see [`crate::identity`]).
    #[serde(default)]
    subject: Option<String>,
    /// Exceptions to the template: `[subjects]` and `[emails]` tables.
    #[serde(default)]
    identity_map_file: Option<PathBuf>,
    /// What the reconciler does about drift: `report` (default) or `end`.
    #[serde(default)]
    on_drift: Option<String>,
}

/// One checked `[[providers]]` table.
#[derive(Clone, Debug)]
pub struct ProviderSection {
    pub name: String,
    pub subject: String,
    pub identity_map_file: Option<PathBuf>,
    pub on_drift: DriftAction,
    pub kind: KindConfig,
}

/// The keys of each kind.
#[derive(Clone, Debug)]
pub enum KindConfig {
    Demo(demo::DemoConfig),
    Http(http::HttpConfig),
    #[cfg(feature = "kubernetes")]
    Kubernetes(crate::kubernetes::KubernetesConfig),
    /// Boxed: the largest table by far, and a configuration is built once.
    #[cfg(feature = "aws")]
    Aws(Box<crate::aws::AwsConfig>),
    #[cfg(feature = "gcp")]
    Gcp(crate::gcp::GcpConfig),
    #[cfg(feature = "azure")]
    Azure(crate::azure::AzureConfig),
}

impl KindConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            KindConfig::Demo(_) => "demo",
            KindConfig::Http(_) => "http",
            #[cfg(feature = "kubernetes")]
            KindConfig::Kubernetes(_) => "kubernetes",
            #[cfg(feature = "aws")]
            KindConfig::Aws(_) => "aws",
            #[cfg(feature = "gcp")]
            KindConfig::Gcp(_) => "gcp",
            #[cfg(feature = "azure")]
            KindConfig::Azure(_) => "azure",
        }
    }
}

impl<'de> Deserialize<'de> for ProviderSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = toml::Table::deserialize(d)?;
        ProviderSection::from_table(table).map_err(serde::de::Error::custom)
    }
}

impl ProviderSection {
    /// A demo provider (dev mode, tests).
    pub fn demo(name: &str) -> Self {
        ProviderSection {
            name: name.to_owned(),
            subject: DEFAULT_TEMPLATE.into(),
            identity_map_file: None,
            on_drift: DriftAction::Report,
            kind: KindConfig::Demo(demo::DemoConfig {}),
        }
    }

    /// An http provider reading its secret from `secret_file`.
    pub fn http(
        name: &str,
        base_url: impl Into<String>,
        secret_file: PathBuf,
        timeout_seconds: Option<u64>,
    ) -> Self {
        ProviderSection {
            kind: KindConfig::Http(http::HttpConfig {
                base_url: base_url.into(),
                secret_file,
                timeout_seconds,
            }),
            ..ProviderSection::demo(name)
        }
    }

    /// Checks one `[[providers]]` table.
    pub fn from_table(mut table: toml::Table) -> Result<Self, ConfigError> {
        let name = table
            .get("name")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .unwrap_or_default();
        let err = |kind: Option<&str>, message: String| ConfigError {
            provider: if name.is_empty() {
                "<unnamed>".into()
            } else {
                name.clone()
            },
            kind: kind.map(str::to_owned),
            message,
        };
        let mut common_table = toml::Table::new();
        for key in COMMON_KEYS {
            if let Some(v) = table.remove(key) {
                common_table.insert(key.to_owned(), v);
            }
        }
        let common: Common = toml::Value::Table(common_table)
            .try_into()
            .map_err(|e: toml::de::Error| err(None, e.message().to_owned()))?;
        if common.name.trim().is_empty() || common.name.len() > 64 {
            return Err(err(None, "name must be 1 to 64 characters".into()));
        }
        let kind = common.kind.as_str();
        let rest = toml::Value::Table(table);
        let keys_of = |e: toml::de::Error| {
            err(
                Some(kind),
                format!(
                    "{} (besides the keys every kind has: {})",
                    e.message(),
                    COMMON_KEYS.join(", ")
                ),
            )
        };
        let kind_config = match kind {
            "demo" => KindConfig::Demo(parse(rest).map_err(keys_of)?),
            "http" => KindConfig::Http(parse(rest).map_err(keys_of)?),
            #[cfg(feature = "kubernetes")]
            "kubernetes" => KindConfig::Kubernetes(parse(rest).map_err(keys_of)?),
            #[cfg(feature = "aws")]
            "aws" => {
                let c: crate::aws::AwsConfig = parse(rest).map_err(keys_of)?;
                c.check().map_err(|m| err(Some(kind), m))?;
                KindConfig::Aws(Box::new(c))
            }
            #[cfg(feature = "gcp")]
            "gcp" => {
                let c: crate::gcp::GcpConfig = parse(rest).map_err(keys_of)?;
                c.check().map_err(|m| err(Some(kind), m))?;
                KindConfig::Gcp(c)
            }
            #[cfg(feature = "azure")]
            "azure" => {
                let c: crate::azure::AzureConfig = parse(rest).map_err(keys_of)?;
                c.check().map_err(|m| err(Some(kind), m))?;
                KindConfig::Azure(c)
            }
            k if KINDS.contains(&k) => {
                return Err(err(
                    Some(k),
                    format!(
                        "the {k} provider is not implemented in this version of jitsudod yet; kinds available in this build: {}",
                        BUILT.join(", ")
                    ),
                ));
            }
            k => {
                return Err(err(
                    None,
                    format!("unknown kind {k:?}; one of: {}", KINDS.join(", ")),
                ));
            }
        };
        let on_drift = match common.on_drift.as_deref() {
            None | Some("report") => DriftAction::Report,
            Some("end") => DriftAction::End,
            Some(other) => {
                return Err(err(
                    Some(kind),
                    format!("on_drift = {other:?}: one of \"report\" or \"end\""),
                ));
            }
        };
        let section = ProviderSection {
            subject: common.subject.unwrap_or_else(|| DEFAULT_TEMPLATE.into()),
            name: common.name,
            identity_map_file: common.identity_map_file,
            on_drift,
            kind: kind_config,
        };
        // The template is checked now, so a typo fails the start, not the first request.
        IdentityMapping::new(&section.name, &section.subject)
            .map_err(|e| err(Some(kind), e.to_string()))?;
        Ok(section)
    }

    /// A call's whole budget, from the kind's own per-request timeout: the http provider
    /// makes one request per call; the Kubernetes provider up to three (two retries after
    /// a throttle) plus the read-modify-write rounds of a revoke.
    fn call_timeout(&self) -> Option<std::time::Duration> {
        use std::time::Duration;
        match &self.kind {
            KindConfig::Demo(_) => None,
            KindConfig::Http(c) => c
                .timeout_seconds
                .map(|t| Duration::from_secs(t) + Duration::from_secs(1)),
            #[cfg(feature = "kubernetes")]
            KindConfig::Kubernetes(c) => {
                let each = Duration::from_secs(c.timeout_seconds.unwrap_or(10));
                Some(each * 3 + Duration::from_secs(2))
            }
            // The SDK tries each call up to three times; a grant or a revoke makes up to
            // four calls, a revoke's deny a few rounds more.
            #[cfg(feature = "aws")]
            KindConfig::Aws(c) => {
                let each = Duration::from_secs(c.timeout_seconds.unwrap_or(10));
                Some(each * 12 + Duration::from_secs(5))
            }
            // A change is a read and a write per round; rounds repeat only on a concurrent
            // change, and a slow one is retried idempotently by the engine.
            #[cfg(feature = "gcp")]
            KindConfig::Gcp(c) => {
                let each = Duration::from_secs(c.timeout_seconds.unwrap_or(10));
                Some(each * 6 + Duration::from_secs(20))
            }
            // A grant is up to eight calls (role, tombstone, record, assign, their checks),
            // a revoke a listing and a few writes; PrincipalNotFound is waited out inside.
            #[cfg(feature = "azure")]
            KindConfig::Azure(c) => {
                let each = Duration::from_secs(c.timeout_seconds.unwrap_or(10));
                Some(
                    each * 10
                        + Duration::from_secs(c.replication_wait_seconds.unwrap_or(60))
                        + Duration::from_secs(20),
                )
            }
        }
    }

    fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            provider: self.name.clone(),
            kind: Some(self.kind.kind().to_owned()),
            message: message.into(),
        }
    }

    /// Builds the provider (reading its secret files and the map file) ready to register.
    pub async fn build(&self) -> Result<Entry, ConfigError> {
        let mut identity = IdentityMapping::new(&self.name, &self.subject)
            .map_err(|e| self.error(e.to_string()))?;
        if let Some(path) = &self.identity_map_file {
            identity = identity
                .with_map_file(path)
                .map_err(|e| self.error(e.to_string()))?;
        }
        let provider: Arc<dyn Provider> = match &self.kind {
            KindConfig::Demo(_) => Arc::new(demo::DemoProvider::with_name(&self.name)),
            KindConfig::Http(c) => {
                Arc::new(c.build(&self.name).map_err(|m| self.error(m.to_string()))?)
            }
            #[cfg(feature = "kubernetes")]
            KindConfig::Kubernetes(c) => Arc::new(
                crate::kubernetes::KubernetesProvider::from_config(&self.name, c)
                    .await
                    .map_err(|m| self.error(m))?,
            ),
            #[cfg(feature = "aws")]
            KindConfig::Aws(c) => crate::aws::build(&self.name, c)
                .await
                .map_err(|m| self.error(m))?,
            #[cfg(feature = "gcp")]
            KindConfig::Gcp(c) => Arc::new(
                crate::gcp::GcpProvider::from_config(&self.name, c)
                    .await
                    .map_err(|m| self.error(m))?,
            ),
            #[cfg(feature = "azure")]
            KindConfig::Azure(c) => Arc::new(
                crate::azure::AzureProvider::from_config(&self.name, c)
                    .await
                    .map_err(|m| self.error(m))?,
            ),
        };
        Ok(Entry {
            provider,
            identity: Arc::new(identity),
            on_drift: self.on_drift,
            call_timeout: self.call_timeout(),
        })
    }
}

fn parse<T: DeserializeOwned>(rest: toml::Value) -> Result<T, toml::de::Error> {
    rest.try_into()
}

/// Reads a secret file: its content without the trailing newline; never echoed in errors.
pub fn read_secret(path: &std::path::Path, what: &str) -> Result<Vec<u8>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    let trimmed = bytes.trim_ascii_end();
    if trimmed.is_empty() {
        return Err(format!("{what} {} is empty", path.display()));
    }
    Ok(trimmed.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> Result<ProviderSection, String> {
        ProviderSection::from_table(text.parse::<toml::Table>().unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn each_kind_takes_its_own_keys_and_errors_name_provider_key_and_choices() {
        let demo = section("name = \"d\"\nkind = \"demo\"\n").unwrap();
        assert_eq!(demo.kind.kind(), "demo");
        assert_eq!(demo.subject, "{sub}");
        let e = section("name = \"d\"\nkind = \"demo\"\nbase_url = \"x\"\n").unwrap_err();
        assert!(
            e.contains("\"d\"") && e.contains("demo") && e.contains("base_url"),
            "{e}"
        );
        let e = section("name = \"h\"\nkind = \"http\"\nsecret_file = \"/s\"\n").unwrap_err();
        assert!(e.contains("\"h\"") && e.contains("base_url"), "{e}");
        let e = section("name = \"x\"\nkind = \"ldap\"\n").unwrap_err();
        assert!(e.contains("ldap") && e.contains("kubernetes, aws"), "{e}");
        let e = section("name = \"x\"\nkind = \"demo\"\non_drift = \"panic\"\n").unwrap_err();
        assert!(e.contains("report") && e.contains("end"), "{e}");
        let e = section("name = \"x\"\nkind = \"demo\"\nsubject = \"{mail}\"\n").unwrap_err();
        assert!(e.contains("{mail}") && e.contains("\"x\""), "{e}");
        let e = section("kind = \"demo\"\n").unwrap_err();
        assert!(e.contains("name"), "{e}");
    }

    #[test]
    fn secrets_are_never_inline() {
        let e = section(
            "name = \"h\"\nkind = \"http\"\nbase_url = \"https://x\"\nsecret = \"hunter2\"\n",
        )
        .unwrap_err();
        assert!(e.contains("secret_file") && !e.contains("hunter2"), "{e}");
    }
}
