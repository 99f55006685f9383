//! PolicyService: read, apply, delete and try out the Rego policies.

use jitsudo_actors::policy::{PolicyInput, PolicySource};
use jitsudo_proto::v1;
use jitsudo_proto::v1::policy_service_server::PolicyService;
use tonic::{Request, Response, Status};

use super::{Api, Rpc, check_code, check_text, required};
use crate::convert;
use crate::error::ApiError;
use crate::state::{AppState, Caller};

/// PolicyService's calls, each reading or changing.
impl Rpc {
    pub const LIST_POLICIES: Rpc = Rpc::reads("ListPolicies");
    pub const GET_POLICY: Rpc = Rpc::reads("GetPolicy");
    pub const APPLY_POLICY: Rpc = Rpc::changes("ApplyPolicy");
    pub const DELETE_POLICY: Rpc = Rpc::changes("DeletePolicy");
    pub const EVAL_POLICY: Rpc = Rpc::reads("EvalPolicy");
}

impl AppState {
    pub async fn list_policies(&self, c: &Caller) -> Result<v1::ListPoliciesResponse, ApiError> {
        c.require_admin_or_auditor("reading policies")?;
        let ps = self.engine.stored_policies().await?;
        let policy_version = self.engine.policy().current().fingerprint().to_owned();
        Ok(convert::policies::list(&ps, policy_version))
    }

    pub async fn get_policy(&self, c: &Caller, name: &str) -> Result<v1::Policy, ApiError> {
        c.require_admin_or_auditor("reading policies")?;
        required("name", name)?;
        check_text("name", name, 128)?;
        let name = &jitsudo_actors::domain::nfc(name);
        match self.engine.stored_policy(name).await? {
            Some((p, at)) => Ok(convert::policies::policy(&p, at)),
            None => Err(ApiError::no_policy(name)),
        }
    }

    pub async fn apply_policy(
        &self,
        c: &Caller,
        r: v1::ApplyPolicyRequest,
    ) -> Result<v1::Policy, ApiError> {
        c.require_admin("changing policies")?;
        let r = v1::ApplyPolicyRequest {
            name: jitsudo_actors::domain::nfc(&r.name),
            ..r
        };
        if r.name.is_empty() {
            return Err(ApiError::invalid("name is required"));
        }
        check_text("name", &r.name, 128)?;
        check_code("rego", &r.rego, 256 * 1024)?;
        let version = self
            .engine
            .policy()
            .apply(&r.name, &r.rego, c.subject())
            .await
            .map_err(ApiError::policy_not_applied)?;
        let applied = PolicySource {
            name: r.name,
            version,
            author: c.subject().to_owned(),
            rego: r.rego,
        };
        Ok(convert::policies::policy(&applied, chrono::Utc::now()))
    }

    pub async fn delete_policy(
        &self,
        c: &Caller,
        name: &str,
    ) -> Result<v1::DeletePolicyResponse, ApiError> {
        c.require_admin("changing policies")?;
        required("name", name)?;
        check_text("name", name, 128)?;
        let name = &jitsudo_actors::domain::nfc(name);
        let deleted = self.engine.policy().delete(name, c.subject()).await?;
        if !deleted {
            return Err(ApiError::no_policy(name));
        }
        Ok(convert::policies::deleted(deleted))
    }

    pub async fn eval_policy(
        &self,
        c: &Caller,
        r: v1::EvalPolicyRequest,
    ) -> Result<v1::EvalPolicyResponse, ApiError> {
        c.require_admin_or_auditor("evaluating policies")?;
        check_code("input_json", &r.input_json, 64 * 1024)?;
        let input: PolicyInput = serde_json::from_str(&r.input_json).map_err(|e| {
            ApiError::invalid(format!(
                "input_json is not a policy input document (docs/policy.md): {e}"
            ))
        })?;
        let set = self.engine.policy().current();
        let decision = set.evaluate(&input).map_err(ApiError::evaluation_failed)?;
        let approver_allowed = if input.approver.is_some() {
            set.approver_allowed(&input)
                .map_err(ApiError::evaluation_failed)?
        } else {
            false
        };
        Ok(convert::policies::evaluation(decision, approver_allowed))
    }
}

#[tonic::async_trait]
impl PolicyService for Api {
    async fn list_policies(
        &self,
        req: Request<v1::ListPoliciesRequest>,
    ) -> Result<Response<v1::ListPoliciesResponse>, Status> {
        rpc!(self, Rpc::LIST_POLICIES, req, |state, c, _m| state
            .list_policies(&c)
            .await)
    }

    async fn get_policy(
        &self,
        req: Request<v1::GetPolicyRequest>,
    ) -> Result<Response<v1::Policy>, Status> {
        rpc!(self, Rpc::GET_POLICY, req, |state, c, m| state
            .get_policy(&c, &m.name)
            .await)
    }

    async fn apply_policy(
        &self,
        req: Request<v1::ApplyPolicyRequest>,
    ) -> Result<Response<v1::Policy>, Status> {
        rpc!(self, Rpc::APPLY_POLICY, req, |state, c, m| state
            .apply_policy(&c, m)
            .await)
    }

    async fn delete_policy(
        &self,
        req: Request<v1::DeletePolicyRequest>,
    ) -> Result<Response<v1::DeletePolicyResponse>, Status> {
        rpc!(self, Rpc::DELETE_POLICY, req, |state, c, m| state
            .delete_policy(&c, &m.name)
            .await)
    }

    async fn eval_policy(
        &self,
        req: Request<v1::EvalPolicyRequest>,
    ) -> Result<Response<v1::EvalPolicyResponse>, Status> {
        rpc!(self, Rpc::EVAL_POLICY, req, |state, c, m| state
            .eval_policy(&c, m)
            .await)
    }
}
