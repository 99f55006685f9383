//! `jitsudod --dev`: everything a first run needs and nothing to install — SQLite in a
//! marked data dir, the demo provider, the example policies, a generated audit signing key,
//! and a built-in OpenID issuer for the demo users. Plaintext, on loopback only.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use jitsudo_actors::audit::generate_signing_key;
use jitsudo_actors::policy::dev_example_policies;

use crate::auth::DevIssuer;
use crate::config::{Config, ProviderConfig};
use crate::server::DevExtras;

pub const DEV_AUDIENCE: &str = "jitsudo";

/// Turns a configuration into the dev one, creating the data dir's keys on first run.
pub fn prepare(mut config: Config, data_dir: &Path) -> anyhow::Result<(Config, DevExtras)> {
    let listen: SocketAddr = config.server.listen;
    anyhow::ensure!(
        listen.ip().is_loopback(),
        "dev mode serves without TLS and with demo users: it listens on a loopback address only, not {listen}"
    );
    std::fs::create_dir_all(data_dir)?;
    let key = data_dir.join("audit-signing-key.pem");
    if !key.exists() {
        generate_signing_key(&key)?;
    }
    config.audit.signing_key = Some(key);
    config.database.url = format!("sqlite://{}", data_dir.join("jitsudo.db").display());
    config.server.insecure_plaintext = true;
    config.server.tls_cert = None;
    config.server.tls_key = None;
    if config.providers.is_empty() {
        config.providers.push(ProviderConfig::demo("demo"));
    }
    if config.node.name == "jitsudod" {
        config.node.name = "dev".into();
    }
    let issuer_url = format!("http://{listen}/dev/oidc");
    let issuer = Arc::new(DevIssuer::load_or_create(
        data_dir,
        &issuer_url,
        DEV_AUDIENCE,
    )?);
    config.auth.issuer = issuer_url;
    config.auth.audience = DEV_AUDIENCE.into();
    Ok((config, DevExtras { issuer }))
}

/// Installs the example policies into a fresh dev database (never outside dev mode).
pub async fn install_example_policies(engine: &jitsudo_actors::Engine) -> anyhow::Result<bool> {
    if !engine.policy().current().is_empty() || !engine.stored_policies().await?.is_empty() {
        return Ok(false);
    }
    for p in dev_example_policies() {
        engine.policy().apply(&p.name, &p.rego, &p.author).await?;
    }
    Ok(true)
}

pub fn banner(addr: SocketAddr) -> String {
    format!(
        "\njitsudod is running in DEV MODE on http://{addr} (plaintext, demo provider, example policies).\n\
         Demo users: alice (requester), bob and dave (approvers), carol (admin), erin (auditor).\n\
         \n\
         Try it:\n\
         \x20 TOKEN=$(curl -s -d username=alice http://{addr}/dev/oidc/token | sed 's/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/')\n\
         \x20 curl -s -H \"Authorization: Bearer $TOKEN\" -d '{{\"provider\":\"demo\",\"role\":\"viewer\",\"scope\":\"demo-account\",\"durationSeconds\":\"60\",\"reason\":\"trying jitsudo\"}}' http://{addr}/api/v1/requests\n\
         \x20 grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" {addr} jitsudo.v1.RequestService/ListRequests\n\
         \n\
         The jitsudo CLI: jitsudo login --dev alice --server http://{addr}\n"
    )
}
