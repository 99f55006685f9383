//! AdminService: version, node and cluster status, providers, the actor tree, policy
//! reloads and the notification outbox's dead letters.

use jitsudo_proto::v1;
use jitsudo_proto::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use super::{Api, Rpc};
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
        Ok(convert::admin::cluster_status(
            &s,
            std::time::Duration::from_secs(self.config.auth.leeway_seconds),
        ))
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

#[tonic::async_trait]
impl AdminService for Api {
    async fn get_version(
        &self,
        req: Request<v1::GetVersionRequest>,
    ) -> Result<Response<v1::Version>, Status> {
        rpc!(self, Rpc::GET_VERSION, req, |state, _c, _m| Ok(
            state.version()
        ))
    }

    async fn get_node_status(
        &self,
        req: Request<v1::GetNodeStatusRequest>,
    ) -> Result<Response<v1::NodeStatus>, Status> {
        rpc!(self, Rpc::GET_NODE_STATUS, req, |state, c, _m| state
            .node_status(&c)
            .await)
    }

    async fn get_cluster_status(
        &self,
        req: Request<v1::GetClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatus>, Status> {
        rpc!(self, Rpc::GET_CLUSTER_STATUS, req, |state, c, _m| state
            .cluster_status(&c)
            .await)
    }

    async fn list_actors(
        &self,
        req: Request<v1::ListActorsRequest>,
    ) -> Result<Response<v1::ListActorsResponse>, Status> {
        rpc!(self, Rpc::LIST_ACTORS, req, |state, c, _m| state
            .list_actors(&c))
    }

    async fn reload_policies(
        &self,
        req: Request<v1::ReloadPoliciesRequest>,
    ) -> Result<Response<v1::ReloadPoliciesResponse>, Status> {
        rpc!(self, Rpc::RELOAD_POLICIES, req, |state, c, _m| state
            .reload_policies(&c)
            .await)
    }

    async fn list_dead_letters(
        &self,
        req: Request<v1::ListDeadLettersRequest>,
    ) -> Result<Response<v1::ListDeadLettersResponse>, Status> {
        rpc!(self, Rpc::LIST_DEAD_LETTERS, req, |state, c, m| state
            .dead_letters(&c, m)
            .await)
    }

    async fn redrive_dead_letter(
        &self,
        req: Request<v1::RedriveDeadLetterRequest>,
    ) -> Result<Response<v1::RedriveDeadLetterResponse>, Status> {
        rpc!(self, Rpc::REDRIVE_DEAD_LETTER, req, |state, c, m| state
            .redrive(&c, m.id)
            .await)
    }
    async fn list_providers(
        &self,
        req: Request<v1::ListProvidersRequest>,
    ) -> Result<Response<v1::ListProvidersResponse>, Status> {
        rpc!(self, Rpc::LIST_PROVIDERS, req, |state, c, _m| state
            .list_providers(&c)
            .await)
    }
}
