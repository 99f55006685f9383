//! AdminService's messages: version, node and cluster status, providers, actors, policy
//! reloads and dead letters.

use jitsudo_actors::engine::types::{OutboxEntry, ShardRecord};
use jitsudo_actors::stats::ActorSnapshot;
use jitsudo_actors::{ClusterStatus, Engine, ProviderStatus};
use jitsudo_proto::v1;

use super::ts;

pub fn version() -> v1::Version {
    v1::Version {
        version: env!("CARGO_PKG_VERSION").into(),
        api: "jitsudo.v1".into(),
        git: option_env!("JITSUDO_GIT").unwrap_or("").into(),
    }
}

/// This node as it is now: what it holds, how far its clock is off the database's, which
/// policy set it evaluates.
pub fn node_status(
    engine: &Engine,
    started_at: chrono::DateTime<chrono::Utc>,
    dev_mode: bool,
) -> v1::NodeStatus {
    let ctx = engine.context();
    v1::NodeStatus {
        node: ctx.node().to_owned(),
        store: engine.store_backend().into(),
        shards_owned: engine.shards_owned().len() as u32,
        shards_total: ctx.config.shards,
        clock_offset_ms: ctx.clock_offset().num_microseconds().unwrap_or(0) as f64 / 1000.0,
        live_requests: engine.live_request_count() as u64,
        policy_version: ctx.policy.current().fingerprint().to_owned(),
        started_at: Some(ts(started_at)),
        dev_mode,
    }
}

/// `leeway` is the answering node's token leeway.
pub fn cluster_status(s: &ClusterStatus, leeway: std::time::Duration) -> v1::ClusterStatus {
    let ms = |d: chrono::Duration| d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0;
    let shard = |r: &ShardRecord| v1::ClusterShard {
        shard: r.shard,
        owner: r.owner.clone(),
        epoch: r.epoch,
        acquired_at: Some(ts(r.acquired_at)),
        lease_expires_at: r.lease_expires_at.map(ts),
        leased: r.lease_expires_at.is_some_and(|t| t > s.db_now),
    };
    v1::ClusterStatus {
        db_now: Some(ts(s.db_now)),
        lease_ttl_seconds: s.lease_ttl.as_secs_f64(),
        members: s
            .members
            .iter()
            .map(|m| v1::ClusterMember {
                node: m.member.node.clone(),
                incarnation: m.member.incarnation.to_string(),
                cluster_addr: m.member.cluster_addr.clone(),
                api_addr: m.member.api_addr.clone(),
                started_at: Some(ts(m.member.started_at)),
                heartbeat_at: Some(ts(m.member.heartbeat_at)),
                heartbeat_age_ms: ms(m.heartbeat_age),
                alive: m.alive,
                clock_offset_ms: m.member.clock_offset_us as f64 / 1000.0,
                shards_owned: m.shards_owned as u32,
            })
            .collect(),
        shards: s.shards.iter().map(shard).collect(),
        audit_sequencer: s.audit_sequencer.as_ref().map(shard),
        epoch_changes: s.epoch_changes(),
        token_leeway_seconds: leeway.as_secs_f64(),
    }
}

pub fn providers(ps: &[ProviderStatus]) -> v1::ListProvidersResponse {
    v1::ListProvidersResponse {
        providers: ps.iter().map(provider_status).collect(),
    }
}

/// A provider as `ListProviders` shows it: counts saturate rather than wrap.
fn provider_status(p: &ProviderStatus) -> v1::ProviderStatus {
    let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    v1::ProviderStatus {
        name: p.name.clone(),
        kind: p.info.kind.clone(),
        roles: p.info.roles.clone(),
        scopes: p.info.scopes.clone(),
        native_expiry: p.info.native_expiry,
        subject_template: p.subject_template.clone(),
        on_drift: p.on_drift.into(),
        last_call: p.last_call.as_ref().map(|l| v1::ProviderCall {
            op: l.op.into(),
            outcome: l.outcome.into(),
            at: Some(ts(l.at)),
            error: l.error.clone().unwrap_or_default(),
        }),
        last_pass: p.last_pass.as_ref().map(|r| v1::ReconcilePass {
            node: r.node.clone(),
            at: Some(ts(r.at)),
            duration_ms: count(r.duration_ms),
            listed: count(r.listed),
            orphans: count(r.orphans),
            drift: count(r.drift),
            tombstones: count(r.tombstones),
            error: r.error.clone().unwrap_or_default(),
        }),
    }
}

/// The live actor tree of `node`.
pub fn actors(node: &str, actors: Vec<ActorSnapshot>) -> v1::ListActorsResponse {
    v1::ListActorsResponse {
        node: node.to_owned(),
        actors: actors
            .into_iter()
            .map(|a| v1::ActorSnapshot {
                kind: a.kind,
                id: a.id,
                state: a.state,
                mailbox: a.mailbox as u64,
                restarts: a.restarts,
                last_event_at: Some(ts(a.last_event_at)),
            })
            .collect(),
    }
}

pub fn reloaded(policy_version: String) -> v1::ReloadPoliciesResponse {
    v1::ReloadPoliciesResponse { policy_version }
}

pub fn dead_letters(rows: Vec<OutboxEntry>) -> v1::ListDeadLettersResponse {
    v1::ListDeadLettersResponse {
        dead_letters: rows
            .into_iter()
            .map(|o| v1::DeadLetter {
                id: o.id,
                event_id: o.event_id.to_string(),
                request_id: o.request_id.map(|u| u.to_string()).unwrap_or_default(),
                sink: o.sink,
                kind: o.kind,
                attempts: o.attempts,
                last_error: o.last_error.unwrap_or_default(),
                created_at: Some(ts(o.created_at)),
            })
            .collect(),
    }
}

pub fn redriven() -> v1::RedriveDeadLetterResponse {
    v1::RedriveDeadLetterResponse { redriven: true }
}
