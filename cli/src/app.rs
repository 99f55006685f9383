//! Resolves the global options against config.toml and the token store, then runs a command.

use std::process::ExitCode;

use crate::client::{Api, Target};
use crate::cmd;
use crate::config::{FileConfig, Paths, StoredToken, TokenStore};
use crate::error::{CliError, CliResult};
use crate::login;
use crate::output::{Format, Out};
use crate::{Cli, Command};

/// Everything a command needs: where the server is, how to print, and the stored login.
pub struct App {
    pub paths: Paths,
    pub config: FileConfig,
    pub out: Out,
    pub server: Option<String>,
    pub explicit_token: Option<String>,
    pub ca_cert: Option<std::path::PathBuf>,
    pub client_cert: Option<std::path::PathBuf>,
    pub client_key: Option<std::path::PathBuf>,
}

impl App {
    pub fn from_cli(cli: &Cli) -> CliResult<App> {
        let paths = Paths::discover()?;
        let config = FileConfig::load(&paths.config_file())?;
        let g = &cli.global;
        let format = match (g.output, config.output.as_deref()) {
            (Some(f), _) => f,
            (None, Some("json")) => Format::Json,
            (None, Some("yaml")) => Format::Yaml,
            (None, Some("table") | None) => Format::Table,
            (None, Some(other)) => {
                return Err(CliError::usage(format!(
                    "config.toml: output = {other:?} — use table, json or yaml"
                )));
            }
        };
        let server = g
            .server
            .clone()
            .or_else(|| config.server.clone())
            .map(|s| s.trim_end_matches('/').to_owned());
        // TLS files: the flag (or its variable), then the server's own, then the global.
        let own = server
            .as_ref()
            .and_then(|s| config.servers.get(s))
            .cloned()
            .unwrap_or_default();
        Ok(App {
            out: Out::new(format, g.no_color, g.quiet),
            server,
            explicit_token: g.token.clone().filter(|t| !t.is_empty()),
            ca_cert: g
                .ca_cert
                .clone()
                .or(own.ca_cert)
                .or_else(|| config.ca_cert.clone()),
            client_cert: g
                .client_cert
                .clone()
                .or(own.client_cert)
                .or_else(|| config.client_cert.clone()),
            client_key: g
                .client_key
                .clone()
                .or(own.client_key)
                .or_else(|| config.client_key.clone()),
            paths,
            config,
        })
    }

    pub fn target(&self) -> CliResult<Target> {
        let server = self.server.clone().ok_or_else(|| {
            CliError::usage(
                "no server — pass --server URL, set JITSUDO_SERVER, or run `jitsudo login --server URL` once",
            )
        })?;
        Ok(Target {
            server,
            ca_cert: self.ca_cert.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        })
    }

    /// The access token: --token / JITSUDO_TOKEN, else the stored login for this server,
    /// refreshed first when it is about to expire.
    pub async fn token(&self, target: &Target) -> CliResult<String> {
        if let Some(t) = &self.explicit_token {
            return Ok(t.clone());
        }
        let file = self.paths.tokens_file();
        let mut store = TokenStore::load(&file)?;
        let Some(stored) = store.servers.get(&target.server).cloned() else {
            return Err(CliError::not_logged_in(&target.server));
        };
        if !login::needs_refresh(&stored) {
            return Ok(stored.access_token);
        }
        if stored.refresh_token.is_none() {
            let how = if stored.method == "dev" {
                "run `jitsudo login --dev USER` again"
            } else {
                "run `jitsudo login`"
            };
            return Err(CliError::new(
                crate::error::Exit::Denied,
                format!("your session on {} expired — {how}", target.server),
            ));
        }
        let fresh = login::refresh(&stored).await?;
        let token = fresh.access_token.clone();
        store.servers.insert(target.server.clone(), fresh);
        store.save(&file)?;
        Ok(token)
    }

    /// A fresh token after the server refused the one in use (a watch it ended at the
    /// token's expiry): refreshed whatever the local clock says, since the server's is the
    /// one that counts.
    pub async fn api_with_fresh_token(&self) -> CliResult<Api> {
        let target = self.target()?;
        if self.explicit_token.is_some() {
            return Err(CliError::new(
                crate::error::Exit::Denied,
                "the token given with --token or JITSUDO_TOKEN has expired — pass a fresh one",
            ));
        }
        let file = self.paths.tokens_file();
        let mut store = TokenStore::load(&file)?;
        let Some(stored) = store.servers.get(&target.server).cloned() else {
            return Err(CliError::not_logged_in(&target.server));
        };
        if stored.refresh_token.is_none() {
            // Nothing to refresh with: the usual path says what to do.
            return self.api().await;
        }
        let fresh = login::refresh(&stored).await?;
        let token = fresh.access_token.clone();
        store.servers.insert(target.server.clone(), fresh);
        store.save(&file)?;
        Api::connect(&target, &token).await
    }

    pub fn save_token(&self, server: &str, token: StoredToken) -> CliResult<()> {
        let file = self.paths.tokens_file();
        let mut store = TokenStore::load(&file)?;
        store.servers.insert(server.to_owned(), token);
        store.save(&file)
    }

    pub fn forget_token(&self, server: &str) -> CliResult<bool> {
        let file = self.paths.tokens_file();
        let mut store = TokenStore::load(&file)?;
        let had = store.servers.remove(server).is_some();
        if had {
            store.save(&file)?;
        }
        Ok(had)
    }

    /// Connects as the logged-in caller.
    pub async fn api(&self) -> CliResult<Api> {
        let target = self.target()?;
        target.parse_url()?;
        let token = self.token(&target).await?;
        Api::connect(&target, &token).await
    }
}

pub async fn run(cli: Cli) -> CliResult<ExitCode> {
    let app = App::from_cli(&cli)?;
    match cli.command {
        Command::Login(args) => cmd::session::login(&app, args).await,
        Command::Logout => cmd::session::logout(&app),
        Command::Whoami => cmd::session::whoami(&app).await,
        Command::Request(args) => cmd::requests::request(&app, args).await,
        Command::Status(args) => cmd::requests::status(&app, args).await,
        Command::Approve { id, comment } => {
            cmd::requests::approve(&app, &id, comment.unwrap_or_default()).await
        }
        Command::Deny { id, reason } => cmd::requests::deny(&app, &id, reason).await,
        Command::Cancel { id } => cmd::requests::cancel(&app, &id).await,
        Command::Revoke { id, reason } => {
            cmd::requests::revoke(&app, &id, reason.unwrap_or_default()).await
        }
        Command::Extend { id, by, reason } => {
            cmd::requests::extend(&app, &id, by, reason.unwrap_or_default()).await
        }
        Command::Review { id, verdict } => cmd::requests::review(&app, &id, verdict).await,
        Command::Exec { id, command } => cmd::exec::exec(&app, &id, command).await,
        Command::Shell { id } => cmd::exec::shell(&app, &id).await,
        Command::CredentialProcess(a) => cmd::exec::credential_process(&app, a).await,
        Command::Audit(args) => cmd::audit::audit(&app, args).await,
        Command::Policy(c) => cmd::policy::policy(&app, c).await,
        Command::Server(c) => cmd::server::server(&app, c).await,
        Command::Context(c) => cmd::context::context(&app, c),
        Command::Completion { .. } => Ok(ExitCode::SUCCESS),
    }
}
