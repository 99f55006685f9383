//! `jitsudo server status|version|actors|reload-policies`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Subcommand;
use jitsudo_proto::v1;
use serde::Serialize;

use crate::app::App;
use crate::error::CliResult;
use crate::output::{details, local_time};

#[derive(Subcommand, Debug)]
pub enum ServerCommand {
    /// This node: shards, live requests, clock offset to the database, policy set.
    Status,
    /// The server's and this CLI's versions.
    Version,
    /// The live actor tree of the node (kind, id, state, mailbox, restarts).
    Actors,
    /// Reload the policies from the database (admins).
    ReloadPolicies,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Versions {
    client: String,
    server: v1::Version,
}

pub async fn server(app: &App, c: ServerCommand) -> CliResult<ExitCode> {
    let api = app.api().await?;
    let mut admin = api.admin.clone();
    match c {
        ServerCommand::Status => {
            let s = admin
                .get_node_status(v1::GetNodeStatusRequest {})
                .await
                .map_err(|s| api.err(s))?
                .into_inner();
            app.out.emit(&s, |_| {
                details(&[
                    ("Node", s.node.clone()),
                    ("Store", s.store.clone()),
                    (
                        "Shards",
                        format!("{} of {}", s.shards_owned, s.shards_total),
                    ),
                    ("Live requests", s.live_requests.to_string()),
                    ("Clock offset", format!("{:.1} ms", s.clock_offset_ms)),
                    ("Policy set", s.policy_version.clone()),
                    ("Started", local_time(&s.started_at)),
                    (
                        "Dev mode",
                        if s.dev_mode {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                    ),
                ])
            })?;
        }
        ServerCommand::Version => {
            let v = admin
                .get_version(v1::GetVersionRequest {})
                .await
                .map_err(|s| api.err(s))?
                .into_inner();
            let both = Versions {
                client: env!("CARGO_PKG_VERSION").into(),
                server: v,
            };
            app.out.emit(&both, |_| {
                details(&[
                    ("Client", both.client.clone()),
                    ("Server", both.server.version.clone()),
                    ("API", both.server.api.clone()),
                    ("Git", both.server.git.clone()),
                ])
            })?;
        }
        ServerCommand::Actors => {
            let r = admin
                .list_actors(v1::ListActorsRequest {})
                .await
                .map_err(|s| api.err(s))?
                .into_inner();
            app.out.emit(&r, |_| actor_tree(&r))?;
        }
        ServerCommand::ReloadPolicies => {
            let r = admin
                .reload_policies(v1::ReloadPoliciesRequest {})
                .await
                .map_err(|s| api.err(s))?
                .into_inner();
            app.out.note(format!(
                "Reloaded the policies; live set {}",
                r.policy_version
            ));
            app.out
                .emit(&r, |_| format!("policy set {}", r.policy_version))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The node, then its actors grouped by kind, as a tree.
pub fn actor_tree(r: &v1::ListActorsResponse) -> String {
    let mut by_kind: BTreeMap<&str, Vec<&v1::ActorSnapshot>> = BTreeMap::new();
    for a in &r.actors {
        by_kind.entry(a.kind.as_str()).or_default().push(a);
    }
    let mut lines = vec![format!("node {} ({} actors)", r.node, r.actors.len())];
    let kinds = by_kind.len();
    for (i, (kind, actors)) in by_kind.into_iter().enumerate() {
        let last_kind = i + 1 == kinds;
        lines.push(format!(
            "{} {kind} ({})",
            if last_kind { "└─" } else { "├─" },
            actors.len()
        ));
        let stem = if last_kind { "   " } else { "│  " };
        let n = actors.len();
        for (j, a) in actors.into_iter().enumerate() {
            lines.push(format!(
                "{stem}{} {:<38} {:<10} mailbox {:<4} restarts {}",
                if j + 1 == n { "└─" } else { "├─" },
                a.id,
                a.state,
                a.mailbox,
                a.restarts
            ));
        }
    }
    lines.join("\n")
}
