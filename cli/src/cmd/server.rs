//! `jitsudo server status|cluster|providers|version|actors|reload-policies`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Subcommand;
use jitsudo_proto::v1;
use serde::Serialize;

use crate::app::App;
use crate::error::CliResult;
use crate::output::{details, format_duration, local_time, table, ts_utc};

#[derive(Subcommand, Debug)]
pub enum ServerCommand {
    /// This node: shards, live requests, clock offset to the database, policy set.
    Status,
    /// The cluster: members (heartbeat age, clock offset, shards), shard owners and
    /// epochs, and the node that sequences the audit chain.
    Cluster,
    /// The providers: what each accepts, who ends access (the cloud or the reconciler),
    /// this node's last call and the reconciler's last pass.
    Providers,
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
        ServerCommand::Cluster => {
            let s = admin
                .get_cluster_status(v1::GetClusterStatusRequest {})
                .await
                .map_err(|s| api.err(s))?
                .into_inner();
            app.out.emit(&s, |_| cluster_view(&s))?;
        }
        ServerCommand::Providers => {
            let r = admin
                .list_providers(v1::ListProvidersRequest {})
                .await
                .map_err(|s| api.err(s))?
                .into_inner();
            app.out
                .emit(&r, |_| providers_view(&r, chrono::Utc::now()))?;
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

/// A member's clock offset, marked when it is beyond the token leeway (at least a second, as
/// readiness counts it): such a node refuses fresh or nearly expired tokens, and reports
/// itself not ready unless every node is off alike.
fn clock_offset(ms: f64, leeway_seconds: f64) -> String {
    let leeway_seconds = leeway_seconds.max(1.0);
    if ms.abs() > leeway_seconds * 1000.0 {
        format!(
            "{:.1} s {} (beyond the {leeway_seconds:.0} s token leeway: fix its NTP)",
            ms.abs() / 1000.0,
            if ms > 0.0 { "behind" } else { "ahead" }
        )
    } else {
        format!("{ms:.1} ms")
    }
}

/// Members, then shard ownership summarised per owner (every shard with `-o json`).
pub fn cluster_view(s: &v1::ClusterStatus) -> String {
    let members = table(
        &[
            "NODE",
            "ALIVE",
            "HEARTBEAT",
            "CLOCK OFFSET",
            "SHARDS",
            "STARTED",
        ],
        s.members
            .iter()
            .map(|m| {
                vec![
                    m.node.clone(),
                    if m.alive { "yes" } else { "no" }.into(),
                    format!("{:.1} s ago", m.heartbeat_age_ms / 1000.0),
                    clock_offset(m.clock_offset_ms, s.token_leeway_seconds),
                    m.shards_owned.to_string(),
                    local_time(&m.started_at),
                ]
            })
            .collect(),
    );
    let mut owners: BTreeMap<(&str, bool), Vec<u32>> = BTreeMap::new();
    for shard in &s.shards {
        owners
            .entry((shard.owner.as_str(), shard.leased))
            .or_default()
            .push(shard.shard);
    }
    let shards = table(
        &["OWNER", "LEASE", "SHARDS"],
        owners
            .into_iter()
            .map(|((owner, leased), shards)| {
                vec![
                    owner.to_owned(),
                    if leased { "held" } else { "lapsed" }.into(),
                    number_ranges(shards.into_iter().map(u64::from).collect()),
                ]
            })
            .collect(),
    );
    let sequencer = match &s.audit_sequencer {
        Some(a) if a.leased => format!("{} (epoch {})", a.owner, a.epoch),
        Some(a) => format!("none (last: {}, lease lapsed)", a.owner),
        None => "none yet".into(),
    };
    format!(
        "{members}\n\n{shards}\n\n{}",
        details(&[
            ("Audit sequencer", sequencer),
            (
                "Epoch changes",
                format!("{} (takeovers and restarts)", s.epoch_changes)
            ),
            ("Lease TTL", format!("{} s", s.lease_ttl_seconds)),
        ])
    )
}

/// One line per provider; times are ages by this machine's clock (`-o json` has them as
/// timestamps).
pub fn providers_view(r: &v1::ListProvidersResponse, now: chrono::DateTime<chrono::Utc>) -> String {
    let ago = |t: &Option<pbjson_types::Timestamp>| match ts_utc(t) {
        // A clock behind the server's shows a fresh event as just now, not in the future.
        Some(t) => format!("{} ago", format_duration((now - t).num_seconds().max(0))),
        None => "at an unknown time".into(),
    };
    table(
        &[
            "NAME",
            "KIND",
            "ROLES",
            "SCOPES",
            "EXPIRY",
            "LAST CALL",
            "LAST PASS",
        ],
        r.providers
            .iter()
            .map(|p| {
                let call = match &p.last_call {
                    None => "none yet".into(),
                    Some(c) if c.error.is_empty() => {
                        format!("{} {} {}", c.op, c.outcome, ago(&c.at))
                    }
                    Some(c) => format!("{} {} {}: {}", c.op, c.outcome, ago(&c.at), c.error),
                };
                let pass = match &p.last_pass {
                    None => "none yet".into(),
                    Some(l) if !l.error.is_empty() => {
                        format!("failed {}: {}", ago(&l.at), l.error)
                    }
                    Some(l) => {
                        let mut s = format!(
                            "{}, {} listed, {} reaped, {} drift",
                            ago(&l.at),
                            l.listed,
                            plural(l.orphans, "orphan"),
                            l.drift
                        );
                        if l.tombstones > 0 {
                            s.push_str(&format!(
                                ", {} forgotten",
                                plural(l.tombstones, "tombstone")
                            ));
                        }
                        s
                    }
                };
                vec![
                    p.name.clone(),
                    p.kind.clone(),
                    p.roles.join(", "),
                    p.scopes.join(", "),
                    if p.native_expiry {
                        "native"
                    } else {
                        "reconciler"
                    }
                    .into(),
                    call,
                    pass,
                ]
            })
            .collect(),
    )
}

/// `1 orphan`, `2 orphans`.
fn plural(n: u32, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The order kinds are shown in: the node's supervision tree, top down.
const KIND_ORDER: [&str; 8] = [
    "node",
    "membership",
    "policy",
    "provider",
    "audit_sequencer",
    "notifier",
    "shard",
    "request",
];

/// Groups this large or larger of quiet actors (same state, empty mailbox, no restarts)
/// are folded into one line.
const FOLD_AT: usize = 4;

/// The node, then its actors by kind, as a tree. Quiet look-alikes (64 idle shards) fold
/// into one line; JSON output always has every actor.
pub fn actor_tree(r: &v1::ListActorsResponse) -> String {
    let mut by_kind: BTreeMap<(usize, &str), Vec<&v1::ActorSnapshot>> = BTreeMap::new();
    for a in &r.actors {
        let rank = KIND_ORDER
            .iter()
            .position(|k| *k == a.kind)
            .unwrap_or(KIND_ORDER.len());
        by_kind.entry((rank, a.kind.as_str())).or_default().push(a);
    }
    let id_width = r.actors.iter().map(|a| a.id.len()).max().unwrap_or(0);
    let state_width = r.actors.iter().map(|a| a.state.len()).max().unwrap_or(0);
    let mut lines = vec![format!("node {} ({} actors)", r.node, r.actors.len())];
    let kinds = by_kind.len();
    for (i, ((_, kind), mut actors)) in by_kind.into_iter().enumerate() {
        let last_kind = i + 1 == kinds;
        lines.push(format!(
            "{} {kind} ({})",
            if last_kind { "└─" } else { "├─" },
            actors.len()
        ));
        let stem = if last_kind { "   " } else { "│  " };
        actors.sort_by(|a, b| natural(&a.id).cmp(&natural(&b.id)));
        // Fold quiet look-alikes; keep everything else one line per actor.
        let mut quiet: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for a in &actors {
            if a.mailbox == 0 && a.restarts == 0 {
                quiet
                    .entry(a.state.as_str())
                    .or_default()
                    .push(a.id.as_str());
            }
        }
        let mut rows: Vec<String> = Vec::new();
        let mut folded: Vec<&str> = Vec::new();
        for a in &actors {
            let group = quiet.get(a.state.as_str()).filter(|g| g.len() >= FOLD_AT);
            match group {
                Some(ids) if a.mailbox == 0 && a.restarts == 0 => {
                    if !folded.contains(&a.state.as_str()) {
                        folded.push(a.state.as_str());
                        rows.push(format!(
                            "{:<id_width$} {:<state_width$} mailbox 0    restarts 0",
                            format!("{} × ({})", ids.len(), id_ranges(ids)),
                            a.state
                        ));
                    }
                }
                _ => rows.push(format!(
                    "{:<id_width$} {:<state_width$} mailbox {:<4} restarts {}",
                    a.id, a.state, a.mailbox, a.restarts
                )),
            }
        }
        let n = rows.len();
        for (j, row) in rows.into_iter().enumerate() {
            lines.push(format!(
                "{stem}{} {}",
                if j + 1 == n { "└─" } else { "├─" },
                row.trim_end()
            ));
        }
    }
    lines.join("\n")
}

/// Sorts "2" before "10".
fn natural(id: &str) -> (u8, u64, &str) {
    match id.parse::<u64>() {
        Ok(n) => (0, n, id),
        Err(_) => (1, 0, id),
    }
}

/// `0-61, 63` for numeric ids, else the first three and a count.
fn id_ranges(ids: &[&str]) -> String {
    let nums: Option<Vec<u64>> = ids.iter().map(|i| i.parse().ok()).collect();
    let Some(nums) = nums else {
        let shown = ids.iter().take(3).copied().collect::<Vec<_>>().join(", ");
        return if ids.len() > 3 {
            format!("{shown}, …")
        } else {
            shown
        };
    };
    number_ranges(nums)
}

/// `0-61, 63`.
fn number_ranges(mut nums: Vec<u64>) -> String {
    nums.sort_unstable();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < nums.len() {
        let start = nums[i];
        let mut end = start;
        while i + 1 < nums.len() && nums[i + 1] == end + 1 {
            i += 1;
            end = nums[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(kind: &str, id: &str, state: &str, mailbox: u64) -> v1::ActorSnapshot {
        v1::ActorSnapshot {
            kind: kind.into(),
            id: id.into(),
            state: state.into(),
            mailbox,
            ..Default::default()
        }
    }

    #[test]
    fn a_member_whose_clock_is_beyond_the_token_leeway_is_marked_in_the_cluster_view() {
        let member = |node: &str, clock_offset_ms: f64| v1::ClusterMember {
            node: node.into(),
            alive: true,
            clock_offset_ms,
            ..Default::default()
        };
        let s = v1::ClusterStatus {
            members: vec![member("node-0", 1.5), member("node-1", 120_000.0)],
            token_leeway_seconds: 30.0,
            ..Default::default()
        };
        let view = cluster_view(&s);
        let line = |node: &str| {
            view.lines()
                .find(|l| l.starts_with(node))
                .unwrap_or_else(|| panic!("{node} in\n{view}"))
                .to_owned()
        };
        assert!(line("node-0").contains("1.5 ms"), "{view}");
        assert!(!line("node-0").contains("leeway"), "{view}");
        assert!(
            line("node-1").contains("120.0 s behind (beyond the 30 s token leeway: fix its NTP)"),
            "{view}"
        );
    }

    #[test]
    fn providers_show_their_last_call_and_pass_as_ages() {
        let now = chrono::DateTime::from_timestamp(1_000_000, 0).expect("a time");
        let at = |secs_ago: i64| {
            Some(pbjson_types::Timestamp {
                seconds: 1_000_000 - secs_ago,
                nanos: 0,
            })
        };
        let cloud = v1::ProviderStatus {
            name: "cloud".into(),
            kind: "http".into(),
            roles: vec!["viewer".into(), "operator".into()],
            scopes: vec!["staging".into()],
            native_expiry: true,
            last_call: Some(v1::ProviderCall {
                op: "grant".into(),
                outcome: "ok".into(),
                at: at(12),
                error: String::new(),
            }),
            last_pass: Some(v1::ReconcilePass {
                at: at(4),
                listed: 12,
                orphans: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let k8s = v1::ProviderStatus {
            name: "k8s".into(),
            kind: "kubernetes".into(),
            native_expiry: false,
            last_call: Some(v1::ProviderCall {
                op: "revoke".into(),
                outcome: "retryable".into(),
                at: at(3),
                error: "the API server answered 503".into(),
            }),
            last_pass: Some(v1::ReconcilePass {
                at: at(90),
                error: "listing: connection refused".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let fresh = v1::ProviderStatus {
            name: "new".into(),
            kind: "demo".into(),
            // A server clock ahead of this machine's is not "in the future".
            last_call: Some(v1::ProviderCall {
                op: "validate".into(),
                outcome: "ok".into(),
                at: at(-5),
                error: String::new(),
            }),
            ..Default::default()
        };
        let view = providers_view(
            &v1::ListProvidersResponse {
                providers: vec![cloud, k8s, fresh],
            },
            now,
        );
        let lines: Vec<&str> = view.lines().collect();
        assert!(
            lines[0].starts_with("NAME") && lines[0].ends_with("LAST PASS"),
            "{view}"
        );
        assert!(lines[1].contains("viewer, operator"), "{view}");
        assert!(lines[1].contains(" native "), "{view}");
        assert!(lines[1].contains("grant ok 12s ago"), "{view}");
        assert!(
            lines[1].ends_with("4s ago, 12 listed, 1 orphan reaped, 0 drift"),
            "{view}"
        );
        assert!(lines[2].contains(" reconciler "), "{view}");
        assert!(
            lines[2].contains("revoke retryable 3s ago: the API server answered 503"),
            "{view}"
        );
        assert!(
            lines[2].ends_with("failed 1m30s ago: listing: connection refused"),
            "{view}"
        );
        assert!(lines[3].contains("validate ok 0s ago"), "{view}");
        assert!(lines[3].ends_with("none yet"), "{view}");
    }

    #[test]
    fn quiet_look_alikes_fold_and_busy_actors_stay_visible() {
        let mut actors: Vec<_> = (0..6)
            .map(|i| actor("shard", &i.to_string(), "idle", 0))
            .collect();
        actors.push(actor("shard", "6", "idle", 3));
        actors.push(actor("node", "n1", "7 leases", 0));
        let tree = actor_tree(&v1::ListActorsResponse {
            node: "n1".into(),
            actors,
        });
        let lines: Vec<&str> = tree.lines().collect();
        assert_eq!(lines[0], "node n1 (8 actors)");
        assert!(lines[1].starts_with("├─ node (1)"), "{tree}");
        assert!(lines[3].starts_with("└─ shard (7)"), "{tree}");
        assert!(lines[4].contains("6 × (0-5)"), "{tree}");
        assert!(lines[5].contains("mailbox 3"), "{tree}");
        assert_eq!(lines.len(), 6, "{tree}");
        assert_eq!(id_ranges(&["0", "1", "2", "5", "7", "8"]), "0-2, 5, 7-8");
    }
}
