//! `jitsudo exec ID -- CMD…` and `jitsudo shell ID`: fetch the credentials and hand the
//! process over to the command (Unix `exec`), so stdin/stdout/stderr, signals and the exit
//! code are the command's own. The credentials live only in that process's environment.

use std::collections::HashMap;
use std::process::{Command, ExitCode};

use jitsudo_proto::v1::{self, RequestState};

use crate::app::App;
use crate::client::Api;
use crate::cmd::requests::{get, situation};
use crate::error::{CliError, CliResult, Exit};

/// The environment to add: the provider's variables plus who we are.
async fn credentials(api: &Api, id: &str) -> CliResult<(v1::Request, HashMap<String, String>)> {
    let r = get(api, id).await?;
    if RequestState::try_from(r.state) != Ok(RequestState::Active) {
        return Err(CliError::new(Exit::Failure, situation(&r)));
    }
    let creds = api
        .requests
        .clone()
        .get_credentials(v1::GetCredentialsRequest { id: r.id.clone() })
        .await
        .map_err(|s| api.err(s))?
        .into_inner();
    let mut env: HashMap<String, String> = creds.env.into_iter().collect();
    env.insert("JITSUDO_REQUEST_ID".into(), r.id.clone());
    env.insert("JITSUDO_ELEVATED".into(), "1".into());
    Ok((r, env))
}

pub async fn exec(app: &App, id: &str, argv: Vec<String>) -> CliResult<ExitCode> {
    let api = app.api().await?;
    let (_, env) = credentials(&api, id).await?;
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| CliError::usage("give the command to run after `--`"))?;
    let mut cmd = Command::new(program);
    cmd.args(args).envs(&env);
    run(cmd, program)
}

pub async fn shell(app: &App, id: &str) -> CliResult<ExitCode> {
    let api = app.api().await?;
    let (r, env) = credentials(&api, id).await?;
    let shell = std::env::var("SHELL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/bin/sh".into());
    let marker = format!("(jitsudo {}/{}@{}) ", r.provider, r.role, r.scope);
    let name = std::path::Path::new(&shell)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cmd = Command::new(&shell);
    cmd.envs(&env);
    match name.as_str() {
        // bash reads ~/.bashrc, which sets PS1: an rc file that reads it first and then
        // prefixes the prompt. It holds no secret (the credentials are in the environment).
        "bash" => {
            let rc = app.paths.state_dir.join("shell-bashrc");
            let text = "[ -f ~/.bashrc ] && . ~/.bashrc\nPS1=\"${JITSUDO_PROMPT}${PS1:-\\$ }\"\n";
            crate::config::write_private(&rc, text.as_bytes())?;
            cmd.arg("--rcfile").arg(rc).arg("-i");
            cmd.env("JITSUDO_PROMPT", &marker);
        }
        // zsh: PROMPT is reset by ~/.zshrc; RPROMPT rarely is.
        "zsh" => {
            cmd.env("JITSUDO_PROMPT", &marker)
                .env("RPROMPT", marker.trim());
        }
        // sh, dash, ksh and most others take PS1 from the environment.
        _ => {
            cmd.env("JITSUDO_PROMPT", &marker)
                .env("PS1", format!("{marker}$ "));
        }
    }
    app.out.note(format!(
        "Starting {shell} with the credentials of {} (until {}); exit to leave.",
        r.id,
        crate::output::local_time(&r.expires_at)
    ));
    run(cmd, &shell)
}

#[cfg(unix)]
fn run(mut cmd: Command, program: &str) -> CliResult<ExitCode> {
    use std::os::unix::process::CommandExt as _;
    // Only returns on failure.
    let e = cmd.exec();
    Err(spawn_error(program, &e))
}

#[cfg(not(unix))]
fn run(mut cmd: Command, program: &str) -> CliResult<ExitCode> {
    let status = cmd.status().map_err(|e| spawn_error(program, &e))?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}

fn spawn_error(program: &str, e: &std::io::Error) -> CliError {
    match e.kind() {
        std::io::ErrorKind::NotFound => CliError::new(
            Exit::CommandNotFound,
            format!("{program}: command not found"),
        ),
        _ => CliError::new(Exit::CannotRun, format!("cannot run {program}: {e}")),
    }
}
