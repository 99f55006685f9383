//! The gRPC front end: thin adapters from the tonic services to the shared RPC functions.
//! The caller was authenticated by the server's middleware and travels in the extensions.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use jitsudo_proto::v1;
use jitsudo_proto::v1::admin_service_server::AdminService;
use jitsudo_proto::v1::audit_service_server::AuditService;
use jitsudo_proto::v1::policy_service_server::PolicyService;
use jitsudo_proto::v1::principal_service_server::PrincipalService;
use jitsudo_proto::v1::request_service_server::RequestService;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::rpc::Rpc;
use crate::state::{AppState, Caller};

#[derive(Clone)]
pub struct Api(pub Arc<AppState>);

fn caller<T>(r: &Request<T>) -> Result<Caller, Status> {
    r.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| ApiError::unauthenticated("the call was not authenticated").into())
}

/// Runs an RPC through the shared wrapper (metrics, rate limit, refusal audit) and maps
/// the error once. `$rpc` is the RPC's declaration ([`Rpc`]: reads or changes).
macro_rules! rpc {
    ($self:ident, $rpc:expr, $req:ident, |$state:ident, $c:ident, $m:ident| $body:expr) => {{
        let $c = caller(&$req)?;
        let $m = $req.into_inner();
        let $state = &$self.0;
        let res = $state.run($rpc, Some(&$c), None, async { $body }).await;
        res.map(Response::new).map_err(Status::from)
    }};
    ($self:ident, $rpc:expr, $req:ident, id = $id:expr, |$state:ident, $c:ident, $m:ident| $body:expr) => {{
        let $c = caller(&$req)?;
        let $m = $req.into_inner();
        let $state = &$self.0;
        let id: String = $id(&$m);
        let res = $state
            .run($rpc, Some(&$c), Some(&id), async { $body })
            .await;
        res.map(Response::new).map_err(Status::from)
    }};
}

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::RequestEvent, Status>> + Send>>;

#[tonic::async_trait]
impl RequestService for Api {
    type WatchRequestStream = WatchStream;

    async fn create_request(
        &self,
        req: Request<v1::CreateRequestRequest>,
    ) -> Result<Response<v1::Request>, Status> {
        rpc!(self, Rpc::CREATE_REQUEST, req, |state, c, m| state
            .create_request(&c, m)
            .await)
    }

    async fn get_request(
        &self,
        req: Request<v1::GetRequestRequest>,
    ) -> Result<Response<v1::Request>, Status> {
        rpc!(
            self,
            Rpc::GET_REQUEST,
            req,
            id = |m: &v1::GetRequestRequest| m.id.clone(),
            |state, c, m| state.get_request(&c, &m.id).await
        )
    }

    async fn list_requests(
        &self,
        req: Request<v1::ListRequestsRequest>,
    ) -> Result<Response<v1::ListRequestsResponse>, Status> {
        rpc!(self, Rpc::LIST_REQUESTS, req, |state, c, m| state
            .list_requests(&c, m)
            .await)
    }

    async fn watch_request(
        &self,
        req: Request<v1::WatchRequestRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let c = caller(&req)?;
        let m = req.into_inner();
        let state = self.0.clone();
        // Subscribe before the first read: a commit between the read and the wait is then
        // still seen.
        let mut commits = state.engine.context().commits.subscribe();
        // Check access and read the first batch before answering, so refusals are codes.
        let (first, done) = state
            .run(
                Rpc::WATCH_REQUEST,
                Some(&c),
                Some(&m.id),
                state.request_events(&c, &m.id, m.after_version),
            )
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let rid = crate::rpc::parse_id(&m.id)?;
        tokio::spawn(async move {
            let mut after = m.after_version;
            let mut batch = first;
            let mut done = done;
            loop {
                for ev in batch.drain(..) {
                    after = after.max(ev.version);
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
                if done {
                    return;
                }
                // Woken by this node's commits of this request; the periodic poll covers
                // commits made by other nodes of a cluster.
                let poll = tokio::time::sleep(Duration::from_millis(500));
                tokio::pin!(poll);
                loop {
                    tokio::select! {
                        _ = &mut poll => break,
                        _ = tx.closed() => return,
                        c = commits.recv() => match c {
                            Ok((id, v)) if id == rid && v > after => break,
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        },
                    }
                }
                match state.request_events(&c, &m.id, after).await {
                    Ok((b, d)) => {
                        batch = b;
                        done = d;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn approve_request(
        &self,
        req: Request<v1::DecideRequest>,
    ) -> Result<Response<v1::Request>, Status> {
        rpc!(
            self,
            Rpc::APPROVE_REQUEST,
            req,
            id = |m: &v1::DecideRequest| m.id.clone(),
            |state, c, m| state.approve(&c, &m.id, m.comment).await
        )
    }

    async fn deny_request(
        &self,
        req: Request<v1::DenyRequestRequest>,
    ) -> Result<Response<v1::Request>, Status> {
        rpc!(
            self,
            Rpc::DENY_REQUEST,
            req,
            id = |m: &v1::DenyRequestRequest| m.id.clone(),
            |state, c, m| state.deny(&c, &m.id, m.reason).await
        )
    }

    async fn cancel_request(
        &self,
        req: Request<v1::CancelRequestRequest>,
    ) -> Result<Response<v1::Request>, Status> {
        rpc!(
            self,
            Rpc::CANCEL_REQUEST,
            req,
            id = |m: &v1::CancelRequestRequest| m.id.clone(),
            |state, c, m| state.cancel(&c, &m.id).await
        )
    }

    async fn review_request(
        &self,
        req: Request<v1::ReviewRequestRequest>,
    ) -> Result<Response<v1::Review>, Status> {
        rpc!(
            self,
            Rpc::REVIEW_REQUEST,
            req,
            id = |m: &v1::ReviewRequestRequest| m.id.clone(),
            |state, c, m| state.review(&c, &m.id, &m.verdict).await
        )
    }

    async fn revoke_request(
        &self,
        req: Request<v1::RevokeRequestRequest>,
    ) -> Result<Response<v1::Request>, Status> {
        rpc!(
            self,
            Rpc::REVOKE_REQUEST,
            req,
            id = |m: &v1::RevokeRequestRequest| m.id.clone(),
            |state, c, m| state.revoke(&c, &m.id, m.reason).await
        )
    }

    async fn extend_request(
        &self,
        req: Request<v1::ExtendRequestRequest>,
    ) -> Result<Response<v1::Request>, Status> {
        rpc!(
            self,
            Rpc::EXTEND_REQUEST,
            req,
            id = |m: &v1::ExtendRequestRequest| m.id.clone(),
            |state, c, m| state.extend(&c, &m.id, m.by_seconds, m.reason).await
        )
    }

    async fn approve_extension(
        &self,
        req: Request<v1::DecideExtensionRequest>,
    ) -> Result<Response<v1::Request>, Status> {
        rpc!(
            self,
            Rpc::APPROVE_EXTENSION,
            req,
            id = |m: &v1::DecideExtensionRequest| m.id.clone(),
            |state, c, m| state.decide_extension(&c, m, true).await
        )
    }

    async fn deny_extension(
        &self,
        req: Request<v1::DecideExtensionRequest>,
    ) -> Result<Response<v1::Request>, Status> {
        rpc!(
            self,
            Rpc::DENY_EXTENSION,
            req,
            id = |m: &v1::DecideExtensionRequest| m.id.clone(),
            |state, c, m| state.decide_extension(&c, m, false).await
        )
    }

    async fn get_credentials(
        &self,
        req: Request<v1::GetCredentialsRequest>,
    ) -> Result<Response<v1::Credentials>, Status> {
        rpc!(
            self,
            Rpc::GET_CREDENTIALS,
            req,
            id = |m: &v1::GetCredentialsRequest| m.id.clone(),
            |state, c, m| state.credentials(&c, &m.id).await
        )
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

#[tonic::async_trait]
impl AuditService for Api {
    async fn query_audit(
        &self,
        req: Request<v1::QueryAuditRequest>,
    ) -> Result<Response<v1::QueryAuditResponse>, Status> {
        rpc!(self, Rpc::QUERY_AUDIT, req, |state, c, m| state
            .query_audit(&c, m)
            .await)
    }

    async fn verify_audit(
        &self,
        req: Request<v1::VerifyAuditRequest>,
    ) -> Result<Response<v1::VerifyAuditResponse>, Status> {
        rpc!(self, Rpc::VERIFY_AUDIT, req, |state, c, _m| state
            .verify_audit(&c)
            .await)
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
