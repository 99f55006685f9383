//! `jitsudo context`: the servers this CLI knows (logged in to, or configured), which one
//! is current, and switching between them. Each server keeps its own token and TLS files.

use std::collections::BTreeSet;
use std::process::ExitCode;

use clap::Subcommand;
use serde::Serialize;

use crate::app::App;
use crate::config::TokenStore;
use crate::error::{CliError, CliResult};
use crate::output::{local_time, table};

#[derive(Subcommand, Debug)]
pub enum ContextCommand {
    /// The servers known here: logged in to, or named in config.toml.
    List,
    /// The current server (what commands use without --server or JITSUDO_SERVER).
    Current,
    /// Make SERVER the current one (it must be known: log in to it first).
    Use {
        /// The server's URL, as `jitsudo context list` shows it.
        server: String,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Context {
    server: String,
    current: bool,
    /// How the stored login was obtained (`dev`, `oidc`), if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    login: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

fn contexts(app: &App) -> CliResult<Vec<Context>> {
    let tokens = TokenStore::load(&app.paths.tokens_file())?;
    let current = app.config.server.clone();
    let mut servers: BTreeSet<String> = tokens.servers.keys().cloned().collect();
    servers.extend(app.config.servers.keys().cloned());
    servers.extend(current.clone());
    Ok(servers
        .into_iter()
        .map(|s| {
            let t = tokens.servers.get(&s);
            Context {
                current: current.as_deref() == Some(s.as_str()),
                login: t.map(|t| t.method.clone()),
                expires_at: t
                    .and_then(|t| t.expires_at)
                    .and_then(|e| chrono::DateTime::from_timestamp(e, 0))
                    .map(|e| e.to_rfc3339()),
                server: s,
            }
        })
        .collect())
}

pub fn context(app: &App, c: ContextCommand) -> CliResult<ExitCode> {
    match c {
        ContextCommand::List => {
            let all = contexts(app)?;
            app.out.emit(&all, |_| {
                if all.is_empty() {
                    return "No servers yet: `jitsudo login --server URL`.".into();
                }
                let rows = all
                    .iter()
                    .map(|c| {
                        vec![
                            if c.current { "*".into() } else { String::new() },
                            c.server.clone(),
                            c.login.clone().unwrap_or_else(|| "-".into()),
                            c.expires_at
                                .as_deref()
                                .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
                                .map(|e| {
                                    local_time(&Some(pbjson_types::Timestamp {
                                        seconds: e.timestamp(),
                                        nanos: 0,
                                    }))
                                })
                                .unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(&["CURRENT", "SERVER", "LOGIN", "TOKEN EXPIRES"], rows)
            })?;
        }
        ContextCommand::Current => {
            let server = app.config.server.clone().ok_or_else(|| {
                CliError::usage("no current server — `jitsudo login --server URL` sets one")
            })?;
            app.out
                .emit(&serde_json::json!({ "server": server }), |_| server.clone())?;
        }
        ContextCommand::Use { server } => {
            let server = server.trim_end_matches('/').to_owned();
            let known = contexts(app)?;
            if !known.iter().any(|c| c.server == server) {
                let names: Vec<&str> = known.iter().map(|c| c.server.as_str()).collect();
                return Err(CliError::usage(format!(
                    "{server} is not a server known here ({}) — log in to it first: `jitsudo login --server {server}`",
                    if names.is_empty() {
                        "none yet".to_owned()
                    } else {
                        names.join(", ")
                    }
                )));
            }
            let mut config = app.config.clone();
            config.server = Some(server.clone());
            config.save(&app.paths.config_file())?;
            app.out.note(format!("The current server is now {server}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
