//! AdminService: version, node and cluster status, providers, the actor tree, policy
//! reloads and the notification outbox's dead letters.

use jitsudo_actors::engine::types::ShardRecord;
use jitsudo_proto::v1;
use tonic::Code;

use crate::convert;
use crate::error::ApiError;
use crate::state::{AppState, Caller};

impl AppState {
    pub fn version(&self) -> v1::Version {
        v1::Version {
            version: env!("CARGO_PKG_VERSION").into(),
            api: "jitsudo.v1".into(),
            git: option_env!("JITSUDO_GIT").unwrap_or("").into(),
        }
    }

    pub async fn node_status(&self, c: &Caller) -> Result<v1::NodeStatus, ApiError> {
        c.require_admin_or_auditor("reading node status")?;
        let ctx = self.engine.context();
        Ok(v1::NodeStatus {
            node: ctx.node().to_owned(),
            store: self.engine.store_backend().into(),
            shards_owned: self.engine.shards_owned().len() as u32,
            shards_total: ctx.config.shards,
            clock_offset_ms: ctx.clock_offset().num_microseconds().unwrap_or(0) as f64 / 1000.0,
            live_requests: self.engine.live_request_count() as u64,
            policy_version: ctx.policy.current().fingerprint().to_owned(),
            started_at: Some(convert::ts(self.started_at)),
            dev_mode: self.dev,
        })
    }

    pub async fn cluster_status(&self, c: &Caller) -> Result<v1::ClusterStatus, ApiError> {
        c.require_admin_or_auditor("reading the cluster status")?;
        let s = self.engine.cluster_status().await?;
        let ms = |d: chrono::Duration| d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0;
        let shard = |r: &ShardRecord| v1::ClusterShard {
            shard: r.shard,
            owner: r.owner.clone(),
            epoch: r.epoch,
            acquired_at: Some(convert::ts(r.acquired_at)),
            lease_expires_at: r.lease_expires_at.map(convert::ts),
            leased: r.lease_expires_at.is_some_and(|t| t > s.db_now),
        };
        Ok(v1::ClusterStatus {
            db_now: Some(convert::ts(s.db_now)),
            lease_ttl_seconds: s.lease_ttl.as_secs_f64(),
            members: s
                .members
                .iter()
                .map(|m| v1::ClusterMember {
                    node: m.member.node.clone(),
                    incarnation: m.member.incarnation.to_string(),
                    cluster_addr: m.member.cluster_addr.clone(),
                    api_addr: m.member.api_addr.clone(),
                    started_at: Some(convert::ts(m.member.started_at)),
                    heartbeat_at: Some(convert::ts(m.member.heartbeat_at)),
                    heartbeat_age_ms: ms(m.heartbeat_age),
                    alive: m.alive,
                    clock_offset_ms: m.member.clock_offset_us as f64 / 1000.0,
                    shards_owned: m.shards_owned as u32,
                })
                .collect(),
            shards: s.shards.iter().map(shard).collect(),
            audit_sequencer: s.audit_sequencer.as_ref().map(shard),
            epoch_changes: s.epoch_changes(),
        })
    }

    pub async fn list_providers(&self, c: &Caller) -> Result<v1::ListProvidersResponse, ApiError> {
        c.require_admin_or_auditor("listing providers")?;
        Ok(v1::ListProvidersResponse {
            providers: self
                .engine
                .providers()
                .await?
                .iter()
                .map(convert::provider_status)
                .collect(),
        })
    }

    pub fn list_actors(&self, c: &Caller) -> Result<v1::ListActorsResponse, ApiError> {
        c.require_admin_or_auditor("listing actors")?;
        Ok(v1::ListActorsResponse {
            node: self.engine.context().node().to_owned(),
            actors: self
                .engine
                .actors()
                .into_iter()
                .map(|a| v1::ActorSnapshot {
                    kind: a.kind,
                    id: a.id,
                    state: a.state,
                    mailbox: a.mailbox as u64,
                    restarts: a.restarts,
                    last_event_at: Some(convert::ts(a.last_event_at)),
                })
                .collect(),
        })
    }

    pub async fn reload_policies(
        &self,
        c: &Caller,
    ) -> Result<v1::ReloadPoliciesResponse, ApiError> {
        c.require_admin("reloading policies")?;
        Ok(v1::ReloadPoliciesResponse {
            policy_version: self.engine.policy().reload().await?,
        })
    }

    pub async fn dead_letters(
        &self,
        c: &Caller,
        r: v1::ListDeadLettersRequest,
    ) -> Result<v1::ListDeadLettersResponse, ApiError> {
        c.require_admin_or_auditor("listing dead letters")?;
        let limit = r.limit.clamp(1, 1000);
        let rows = self
            .engine
            .dead_letters((!r.sink.is_empty()).then_some(r.sink.as_str()), limit)
            .await?;
        Ok(v1::ListDeadLettersResponse {
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
                    created_at: Some(convert::ts(o.created_at)),
                })
                .collect(),
        })
    }

    pub async fn redrive(
        &self,
        c: &Caller,
        id: i64,
    ) -> Result<v1::RedriveDeadLetterResponse, ApiError> {
        c.require_admin("re-driving dead letters")?;
        let ok = self.engine.redrive(id, c.subject()).await?;
        if !ok {
            return Err(ApiError::new(
                Code::FailedPrecondition,
                format!("outbox row {id} is not a dead letter"),
            ));
        }
        Ok(v1::RedriveDeadLetterResponse { redriven: true })
    }
}
