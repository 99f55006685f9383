//! AdminService: version, node and cluster status, providers, the actor tree, policy
//! reloads and the notification outbox's dead letters.

use jitsudo_proto::v1;

use super::Rpc;
use crate::convert;
use crate::error::ApiError;
use crate::state::{AppState, Caller};

/// AdminService's calls, each reading or changing.
impl Rpc {
    pub const GET_VERSION: Rpc = Rpc::reads("GetVersion");
    pub const GET_NODE_STATUS: Rpc = Rpc::reads("GetNodeStatus");
    pub const GET_CLUSTER_STATUS: Rpc = Rpc::reads("GetClusterStatus");
    pub const LIST_ACTORS: Rpc = Rpc::reads("ListActors");
    pub const RELOAD_POLICIES: Rpc = Rpc::changes("ReloadPolicies");
    pub const LIST_DEAD_LETTERS: Rpc = Rpc::reads("ListDeadLetters");
    pub const REDRIVE_DEAD_LETTER: Rpc = Rpc::changes("RedriveDeadLetter");
    pub const LIST_PROVIDERS: Rpc = Rpc::reads("ListProviders");
}

impl AppState {
    pub fn version(&self) -> v1::Version {
        convert::admin::version()
    }

    pub async fn node_status(&self, c: &Caller) -> Result<v1::NodeStatus, ApiError> {
        c.require_admin_or_auditor("reading node status")?;
        Ok(convert::admin::node_status(
            &self.engine,
            self.started_at,
            self.dev,
        ))
    }

    pub async fn cluster_status(&self, c: &Caller) -> Result<v1::ClusterStatus, ApiError> {
        c.require_admin_or_auditor("reading the cluster status")?;
        let s = self.engine.cluster_status().await?;
        Ok(convert::admin::cluster_status(&s))
    }

    pub async fn list_providers(&self, c: &Caller) -> Result<v1::ListProvidersResponse, ApiError> {
        c.require_admin_or_auditor("listing providers")?;
        let providers = self.engine.providers().await?;
        Ok(convert::admin::providers(&providers))
    }

    pub fn list_actors(&self, c: &Caller) -> Result<v1::ListActorsResponse, ApiError> {
        c.require_admin_or_auditor("listing actors")?;
        Ok(convert::admin::actors(
            self.engine.context().node(),
            self.engine.actors(),
        ))
    }

    pub async fn reload_policies(
        &self,
        c: &Caller,
    ) -> Result<v1::ReloadPoliciesResponse, ApiError> {
        c.require_admin("reloading policies")?;
        let policy_version = self.engine.policy().reload().await?;
        Ok(convert::admin::reloaded(policy_version))
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
        Ok(convert::admin::dead_letters(rows))
    }

    pub async fn redrive(
        &self,
        c: &Caller,
        id: i64,
    ) -> Result<v1::RedriveDeadLetterResponse, ApiError> {
        c.require_admin("re-driving dead letters")?;
        let redriven = self.engine.redrive(id, c.subject()).await?;
        if !redriven {
            return Err(ApiError::not_a_dead_letter(id));
        }
        Ok(convert::admin::redriven())
    }
}
