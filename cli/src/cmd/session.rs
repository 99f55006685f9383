//! `jitsudo login`, `logout`, `whoami`.

use std::process::ExitCode;

use clap::Args;
use jitsudo_proto::v1;

use crate::app::App;
use crate::error::{CliError, CliResult};
use crate::login;
use crate::output::details;

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Log in as a demo user (alice, bob, carol, dave, erin) of a dev-mode jitsudod.
    #[arg(long, value_name = "USER")]
    pub dev: Option<String>,
    /// The OpenID issuer URL (default: config.toml `[oidc] issuer`).
    #[arg(long, env = "JITSUDO_OIDC_ISSUER")]
    pub issuer: Option<String>,
    /// The OpenID client id registered for the CLI (default: config.toml `[oidc] client_id`).
    #[arg(long, env = "JITSUDO_OIDC_CLIENT_ID")]
    pub client_id: Option<String>,
    /// Scopes to ask for (default: openid profile email offline_access).
    #[arg(long, value_delimiter = ',')]
    pub scopes: Vec<String>,
}

pub async fn login(app: &App, args: LoginArgs) -> CliResult<ExitCode> {
    let target = app.target()?;
    let url = target.parse_url()?;
    let token = match &args.dev {
        Some(user) => login::dev_login(&url, user).await?,
        None => {
            let issuer = args
                .issuer
                .clone()
                .or_else(|| app.config.oidc.issuer.clone())
                .ok_or_else(|| {
                    CliError::usage(
                        "no OpenID issuer — pass --issuer URL --client-id ID (or set [oidc] issuer and client_id in config.toml); on a dev server use --dev USER",
                    )
                })?;
            let client_id = args
                .client_id
                .clone()
                .or_else(|| app.config.oidc.client_id.clone())
                .ok_or_else(|| {
                    CliError::usage("no OpenID client id — pass --client-id (or set [oidc] client_id in config.toml)")
                })?;
            let scopes = if args.scopes.is_empty() {
                app.config.oidc.scopes.clone().unwrap_or_default()
            } else {
                args.scopes.clone()
            };
            login::device_login(&issuer, &client_id, &scopes, |p| {
                // The prompt goes to stderr even with -q: without it nobody can log in.
                eprintln!(
                    "To log in, open {} and enter the code {}",
                    p.verification_uri, p.user_code
                );
                if let Some(full) = &p.verification_uri_complete {
                    eprintln!("(or open {full})");
                }
                eprintln!(
                    "Waiting for you to approve (the code expires in {} minutes)…",
                    p.expires_in.as_secs().div_ceil(60)
                );
            })
            .await?
        }
    };
    app.save_token(&target.server, token)?;
    // The server logged in to becomes the current one, with its TLS files (a context),
    // and the issuer is remembered, so the next commands need no flags.
    let mut config = app.config.clone();
    let mut changed = false;
    let became_current = config.server.as_deref() != Some(target.server.as_str());
    if became_current {
        config.server = Some(target.server.clone());
        changed = true;
    }
    let own = crate::config::ServerConfig {
        ca_cert: app.ca_cert.clone(),
        client_cert: app.client_cert.clone(),
        client_key: app.client_key.clone(),
    };
    if own != crate::config::ServerConfig::default()
        && config.servers.get(&target.server) != Some(&own)
    {
        config.servers.insert(target.server.clone(), own);
        changed = true;
    }
    if args.dev.is_none() {
        if args.issuer.is_some() && config.oidc.issuer != args.issuer {
            config.oidc.issuer = args.issuer.clone();
            changed = true;
        }
        if args.client_id.is_some() && config.oidc.client_id != args.client_id {
            config.oidc.client_id = args.client_id.clone();
            changed = true;
        }
    }
    if changed {
        config.save(&app.paths.config_file())?;
    }
    let me = who_am_i(app).await?;
    app.out.note(format!(
        "Logged in to {} as {}{}",
        target.server,
        me.subject,
        if became_current {
            " (now the current server: `jitsudo context list` shows the others)"
        } else {
            ""
        }
    ));
    Ok(ExitCode::SUCCESS)
}

async fn who_am_i(app: &App) -> CliResult<v1::Principal> {
    let api = app.api().await?;
    api.principals
        .clone()
        .who_am_i(v1::WhoAmIRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| api.err(s))
}

pub fn logout(app: &App) -> CliResult<ExitCode> {
    let target = app.target()?;
    if app.forget_token(&target.server)? {
        app.out.note(format!("Logged out of {}", target.server));
    } else {
        app.out
            .note(format!("Not logged in to {}; nothing to do", target.server));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn whoami(app: &App) -> CliResult<ExitCode> {
    let me = who_am_i(app).await?;
    app.out.emit(&me, |_| {
        let mut roles = Vec::new();
        if me.admin {
            roles.push("admin");
        }
        if me.auditor {
            roles.push("auditor");
        }
        details(&[
            ("Subject", me.subject.clone()),
            (
                "Email",
                if me.email.is_empty() {
                    String::new()
                } else if me.email_verified {
                    format!("{} (verified)", me.email)
                } else {
                    format!("{} (not verified)", me.email)
                },
            ),
            ("Groups", me.groups.join(", ")),
            ("Trust tier", me.trust_tier.to_string()),
            ("Roles", roles.join(", ")),
        ])
    })?;
    Ok(ExitCode::SUCCESS)
}
