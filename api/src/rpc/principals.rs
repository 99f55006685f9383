//! PrincipalService: who the caller is, and the trust tiers policies see.

use jitsudo_proto::v1;
use jitsudo_proto::v1::principal_service_server::PrincipalService;
use tonic::{Request, Response, Status};

use super::{Api, Rpc, check_text, required};
use crate::convert;
use crate::error::ApiError;
use crate::state::{AppState, Caller};

/// PrincipalService's calls, each reading or changing.
impl Rpc {
    pub const WHO_AM_I: Rpc = Rpc::reads("WhoAmI");
    pub const GET_PRINCIPAL: Rpc = Rpc::reads("GetPrincipal");
    pub const SET_TRUST_TIER: Rpc = Rpc::changes("SetTrustTier");
}

impl AppState {
    pub fn who_am_i(&self, c: &Caller) -> v1::Principal {
        convert::principals::caller(c)
    }

    pub async fn get_principal(
        &self,
        c: &Caller,
        subject: &str,
    ) -> Result<v1::PrincipalRecord, ApiError> {
        if subject != c.subject() {
            c.require_admin_or_auditor("reading another principal")?;
        }
        required("subject", subject)?;
        check_text("subject", subject, 256)?;
        let rec = self.engine.principal(subject).await?;
        Ok(convert::principals::record_or_default(subject, rec))
    }

    pub async fn set_trust_tier(
        &self,
        c: &Caller,
        r: v1::SetTrustTierRequest,
    ) -> Result<v1::PrincipalRecord, ApiError> {
        c.require_admin("changing trust tiers")?;
        if r.subject.is_empty() {
            return Err(ApiError::invalid("subject is required"));
        }
        check_text("subject", &r.subject, 256)?;
        check_text("reason", &r.reason, 1024)?;
        let p = self
            .engine
            .set_trust_tier(&c.principal, &r.subject, r.trust_tier, &r.reason)
            .await?;
        Ok(convert::principals::record(p))
    }
}

#[tonic::async_trait]
impl PrincipalService for Api {
    async fn who_am_i(
        &self,
        req: Request<v1::WhoAmIRequest>,
    ) -> Result<Response<v1::Principal>, Status> {
        rpc!(self, Rpc::WHO_AM_I, req, |state, c, _m| Ok(
            state.who_am_i(&c)
        ))
    }

    async fn get_principal(
        &self,
        req: Request<v1::GetPrincipalRequest>,
    ) -> Result<Response<v1::PrincipalRecord>, Status> {
        rpc!(self, Rpc::GET_PRINCIPAL, req, |state, c, m| state
            .get_principal(&c, &m.subject)
            .await)
    }

    async fn set_trust_tier(
        &self,
        req: Request<v1::SetTrustTierRequest>,
    ) -> Result<Response<v1::PrincipalRecord>, Status> {
        rpc!(self, Rpc::SET_TRUST_TIER, req, |state, c, m| state
            .set_trust_tier(&c, m)
            .await)
    }
}
