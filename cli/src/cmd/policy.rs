//! `jitsudo policy list|get|apply|delete|eval|test`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use jitsudo_proto::v1;

use crate::app::App;
use crate::error::{CliError, CliResult};
use crate::output::{details, local_time, table};

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// The stored policies and the fingerprint of the live set.
    List,
    /// One policy with its Rego source.
    Get { name: String },
    /// Add or replace a policy from a .rego file (compiled by the server first: a broken
    /// file is refused and the live set is unchanged).
    Apply {
        #[arg(short, long)]
        file: PathBuf,
        /// The policy's name (default: the file name without .rego).
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove a policy.
    Delete { name: String },
    /// Dry run: the full decision of the live set for an input document (JSON file, or -
    /// for stdin). `now`, `approvals`, `approver` and optional fields may be left out.
    Eval {
        #[arg(long)]
        input: PathBuf,
    },
    /// Run the Rego unit tests under DIR offline, as `opa test` does: every `.rego` file
    /// is loaded, every rule named `test_…` must evaluate to true. Exit 1 when one fails.
    Test {
        dir: PathBuf,
        /// Only the tests whose `data.package.rule` path contains this text.
        #[arg(long)]
        run: Option<String>,
    },
}

pub async fn policy(app: &App, c: PolicyCommand) -> CliResult<ExitCode> {
    if let PolicyCommand::Test { dir, run } = &c {
        let report = crate::rego_tests::run(dir, run.as_deref())?;
        app.out
            .emit(&report, |_| crate::rego_tests::report_table(&report))?;
        return Ok(if report.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(crate::error::Exit::Failure)
        });
    }
    let api = app.api().await?;
    let mut client = api.policies.clone();
    match c {
        PolicyCommand::List => {
            let r = client
                .list_policies(v1::ListPoliciesRequest {})
                .await
                .map_err(|s| api.err(s))?
                .into_inner();
            app.out.emit(&r, |_| {
                let mut text = table(
                    &["NAME", "VERSION", "AUTHOR", "CREATED"],
                    r.policies
                        .iter()
                        .map(|p| {
                            vec![
                                p.name.clone(),
                                p.version.to_string(),
                                p.author.clone(),
                                local_time(&p.created_at),
                            ]
                        })
                        .collect(),
                );
                if r.policies.is_empty() {
                    text = "No policies: every request is refused until one is applied.".into();
                }
                format!("{text}\n\nLive set: {}", r.policy_version)
            })?;
        }
        PolicyCommand::Get { name } => {
            let p = client
                .get_policy(v1::GetPolicyRequest { name })
                .await
                .map_err(|s| api.err(s))?
                .into_inner();
            app.out.emit(&p, |_| {
                format!(
                    "# {} version {} by {} ({})\n{}",
                    p.name,
                    p.version,
                    p.author,
                    local_time(&p.created_at),
                    p.rego
                )
            })?;
        }
        PolicyCommand::Apply { file, name } => {
            let rego = std::fs::read_to_string(&file)
                .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
            let name = match name {
                Some(n) => n,
                None => file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| CliError::usage("give the policy a --name"))?,
            };
            let p = client
                .apply_policy(v1::ApplyPolicyRequest {
                    name: name.clone(),
                    rego,
                })
                .await
                .map_err(|s| api.err(s))?
                .into_inner();
            app.out.note(format!(
                "Applied policy {} (version {}) from {}",
                p.name,
                p.version,
                file.display()
            ));
            app.out.emit(&p, |_| {
                details(&[
                    ("Name", p.name.clone()),
                    ("Version", p.version.to_string()),
                    ("Author", p.author.clone()),
                    ("Created", local_time(&p.created_at)),
                ])
            })?;
        }
        PolicyCommand::Delete { name } => {
            let r = client
                .delete_policy(v1::DeletePolicyRequest { name: name.clone() })
                .await
                .map_err(|s| api.err(s))?
                .into_inner();
            if !r.deleted {
                return Err(CliError::new(
                    crate::error::Exit::NotFound,
                    format!("there is no policy {name:?} — `jitsudo policy list` shows them"),
                ));
            }
            app.out.note(format!("Deleted policy {name}"));
            app.out.emit(&r, |_| format!("deleted {name}"))?;
        }
        // Offline: answered above, before connecting.
        PolicyCommand::Test { .. } => {}
        PolicyCommand::Eval { input } => {
            let text = if input.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&input)
                    .map_err(|e| CliError::usage(format!("cannot read {}: {e}", input.display())))?
            };
            let doc = serde_json::from_str::<serde_json::Value>(&text).map_err(|e| {
                CliError::usage(format!(
                    "{} is not JSON: {e} (docs/policy.md shows the input document)",
                    input.display()
                ))
            })?;
            let doc = with_defaults(doc).ok_or_else(|| {
                CliError::usage(format!(
                    "{} must be a JSON object with `requester` and `request` (docs/policy.md shows the input document)",
                    input.display()
                ))
            })?;
            let r = client
                .eval_policy(v1::EvalPolicyRequest {
                    input_json: doc.to_string(),
                })
                .await
                .map_err(|s| api.err(s))?
                .into_inner();
            app.out.emit(&r, |_| {
                let decision = serde_json::from_str::<serde_json::Value>(&r.decision_json)
                    .ok()
                    .and_then(|v| serde_json::to_string_pretty(&v).ok())
                    .unwrap_or_else(|| r.decision_json.clone());
                let mut text = details(&[
                    (
                        "Eligible",
                        if r.eligible {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                    ),
                    ("Deny reasons", r.deny_reasons.join("; ")),
                    (
                        "Approver allowed",
                        if r.approver_allowed {
                            "yes".into()
                        } else {
                            String::new()
                        },
                    ),
                    ("Policy set", r.policy_version.clone()),
                    (
                        "Policies",
                        r.policies
                            .iter()
                            .map(|p| format!("{}@{} by {}", p.name, p.version, p.author))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                ]);
                text.push_str("\nDecision:\n");
                text.push_str(&decision);
                text
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Fills in what an input file may leave out: the time (now), no approvals, no approver,
/// and the optional fields of the requester and the request.
fn with_defaults(mut doc: serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::{Value, json};
    let now = chrono::Utc::now();
    let obj = doc.as_object_mut()?;
    let defaults = [
        (
            "now",
            json!(now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        ),
        ("now_unix", json!(now.timestamp())),
        ("approvals", json!([])),
        ("approver", Value::Null),
    ];
    for (k, v) in defaults {
        obj.entry(k).or_insert(v);
    }
    for who in ["requester", "approver"] {
        if let Some(p) = obj.get_mut(who).and_then(Value::as_object_mut) {
            p.entry("email").or_insert(Value::Null);
            p.entry("email_verified").or_insert(json!(false));
            p.entry("groups").or_insert(json!([]));
            p.entry("trust_tier").or_insert(json!(0));
        }
    }
    if let Some(r) = obj.get_mut("request").and_then(Value::as_object_mut) {
        r.entry("reason").or_insert(Value::Null);
        r.entry("ticket").or_insert(Value::Null);
        r.entry("break_glass").or_insert(json!(false));
        r.entry("metadata").or_insert(json!({}));
    }
    Some(doc)
}
