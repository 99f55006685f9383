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

/// An ACTIVE request and the credentials minted for it now.
async fn fetch(api: &Api, id: &str) -> CliResult<(v1::Request, v1::Credentials)> {
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
    Ok((r, creds))
}

/// The environment to add: the provider's variables plus who we are.
async fn credentials(api: &Api, id: &str) -> CliResult<(v1::Request, HashMap<String, String>)> {
    let (r, creds) = fetch(api, id).await?;
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

/// Which request's AWS credentials `jitsudo credential-process` prints.
#[derive(Debug, clap::Args)]
pub struct CredentialProcessArgs {
    /// The request (its id).
    #[arg(long, conflicts_with_all = ["provider", "role", "scope"])]
    pub request: Option<String>,
    /// Or: the caller's ACTIVE request of this provider (with --role and --scope to narrow).
    #[arg(long)]
    pub provider: Option<String>,
    #[arg(long, requires = "provider")]
    pub role: Option<String>,
    #[arg(long, requires = "provider")]
    pub scope: Option<String>,
}

/// `jitsudo credential-process`: the AWS `credential_process` answer (Version 1) for an
/// ACTIVE request of an AWS provider, so every AWS SDK and CLI can use a profile such as
///
/// ```ini
/// [profile prod-readonly]
/// credential_process = jitsudo credential-process --provider aws-prod --role ReadOnly --scope 123456789012
/// ```
///
/// Only the JSON goes to stdout; every problem goes to stderr with a non-zero exit, which
/// the AWS CLI shows as is.
pub async fn credential_process(app: &App, a: CredentialProcessArgs) -> CliResult<ExitCode> {
    let api = app.api().await?;
    let id = match (a.request, a.provider) {
        (Some(id), _) => id,
        (None, Some(provider)) => {
            pick_active(&api, &provider, a.role.as_deref(), a.scope.as_deref()).await?
        }
        (None, None) => {
            return Err(CliError::usage(
                "give --request ID, or --provider NAME (with --role and --scope to pick among several)",
            ));
        }
    };
    let (r, creds) = fetch(&api, &id).await?;
    let answer = aws_process_json(&r, &creds)?;
    crate::output::print_stdout(&answer)?;
    Ok(ExitCode::SUCCESS)
}

/// The caller's ACTIVE request of `provider` (and `role`, `scope` when given) that ends
/// last.
async fn pick_active(
    api: &Api,
    provider: &str,
    role: Option<&str>,
    scope: Option<&str>,
) -> CliResult<String> {
    let mut token = String::new();
    let mut best: Option<v1::Request> = None;
    loop {
        let page = api
            .requests
            .clone()
            .list_requests(v1::ListRequestsRequest {
                mine: true,
                states: vec![RequestState::Active as i32],
                provider: provider.to_owned(),
                page_size: 500,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .map_err(|s| api.err(s))?
            .into_inner();
        for r in page.requests {
            if role.is_some_and(|x| x != r.role) || scope.is_some_and(|x| x != r.scope) {
                continue;
            }
            let ends = |r: &v1::Request| r.expires_at.as_ref().map(|t| (t.seconds, t.nanos));
            if best.as_ref().is_none_or(|b| ends(&r) > ends(b)) {
                best = Some(r);
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    best.map(|r| r.id).ok_or_else(|| {
        let mut what = format!("provider {provider}");
        if let Some(r) = role {
            what.push_str(&format!(", role {r}"));
        }
        if let Some(s) = scope {
            what.push_str(&format!(", scope {s}"));
        }
        CliError::new(
            Exit::Failure,
            format!("you have no ACTIVE request of {what}; ask for one with `jitsudo request`"),
        )
    })
}

/// The `credential_process` JSON: Version 1, the keys, and the expiry in RFC 3339 (UTC).
fn aws_process_json(r: &v1::Request, c: &v1::Credentials) -> CliResult<String> {
    let key = |k: &str| {
        c.env.get(k).cloned().ok_or_else(|| {
            CliError::new(
                Exit::Failure,
                match Some(c.notice.as_str()).filter(|n| !n.is_empty()) {
                    // The provider says why and what to do instead (Identity Center).
                    Some(notice) => format!(
                        "request {} (provider {}) carries no {k}: {notice}",
                        r.id, r.provider
                    ),
                    None => format!(
                        "request {} (provider {}) carries no {k}: credential-process is for AWS providers that mint keys; use `jitsudo exec` for others",
                        r.id, r.provider
                    ),
                },
            )
        })
    };
    let mut answer = serde_json::json!({
        "Version": 1,
        "AccessKeyId": key("AWS_ACCESS_KEY_ID")?,
        "SecretAccessKey": key("AWS_SECRET_ACCESS_KEY")?,
    });
    if let Some(t) = c.env.get("AWS_SESSION_TOKEN") {
        answer["SessionToken"] = t.clone().into();
    }
    // Without an Expiration the SDKs would take the keys as permanent and never ask again.
    let at = crate::output::ts_utc(&c.expires_at).ok_or_else(|| {
        CliError::new(
            Exit::Failure,
            format!("the credentials of request {} carry no expiry", r.id),
        )
    })?;
    answer["Expiration"] = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true).into();
    Ok(answer.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_version_1_with_an_rfc3339_expiry() {
        let r = v1::Request {
            id: "r1".into(),
            provider: "aws".into(),
            ..Default::default()
        };
        let c = v1::Credentials {
            env: [
                ("AWS_ACCESS_KEY_ID", "ASIA1"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
                ("AWS_SESSION_TOKEN", "t"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            expires_at: Some(pbjson_types::Timestamp {
                seconds: 1_900_000_000,
                nanos: 5,
            }),
            notice: String::new(),
        };
        let v: serde_json::Value =
            serde_json::from_str(&aws_process_json(&r, &c).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"Version": 1, "AccessKeyId": "ASIA1", "SecretAccessKey": "s",
                "SessionToken": "t", "Expiration": "2030-03-17T17:46:40Z"})
        );
        let k8s = v1::Credentials {
            env: Default::default(),
            ..c
        };
        let e = aws_process_json(&r, &k8s).unwrap_err();
        assert!(
            e.message.contains("AWS_ACCESS_KEY_ID") && e.message.contains("jitsudo exec"),
            "{}",
            e.message
        );
        // A provider that says why it mints no keys (Identity Center): its words are shown.
        let sso = v1::Credentials {
            notice: "no keys are minted for IAM Identity Center: sign in at $AWS_SSO_START_URL"
                .into(),
            ..k8s
        };
        let e = aws_process_json(&r, &sso).unwrap_err();
        assert!(e.message.contains("sign in at"), "{}", e.message);
    }
}
