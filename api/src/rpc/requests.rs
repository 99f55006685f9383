//! RequestService: create, read, list and watch requests, decide on them and their
//! extensions, close reviews, fetch credentials.

use std::pin::Pin;

use jitsudo_actors::domain::{State, Verdict, same_person};
use jitsudo_actors::engine::types::ListFilter;
use jitsudo_proto::v1;
use jitsudo_proto::v1::request_service_server::RequestService;
use tonic::{Request, Response, Status};

use super::{Api, MAX_KEY, Rpc, check_text, parse_id};
use crate::convert;
use crate::error::ApiError;
use crate::state::{AppState, Caller};

/// RequestService's calls, each reading or changing.
impl Rpc {
    pub const CREATE_REQUEST: Rpc = Rpc::changes("CreateRequest");
    pub const GET_REQUEST: Rpc = Rpc::reads("GetRequest");
    pub const LIST_REQUESTS: Rpc = Rpc::reads("ListRequests");
    pub const WATCH_REQUEST: Rpc = Rpc::reads("WatchRequest");
    pub const APPROVE_REQUEST: Rpc = Rpc::changes("ApproveRequest");
    pub const DENY_REQUEST: Rpc = Rpc::changes("DenyRequest");
    pub const CANCEL_REQUEST: Rpc = Rpc::changes("CancelRequest");
    pub const REVIEW_REQUEST: Rpc = Rpc::changes("ReviewRequest");
    pub const REVOKE_REQUEST: Rpc = Rpc::changes("RevokeRequest");
    pub const EXTEND_REQUEST: Rpc = Rpc::changes("ExtendRequest");
    pub const APPROVE_EXTENSION: Rpc = Rpc::changes("ApproveExtension");
    pub const DENY_EXTENSION: Rpc = Rpc::changes("DenyExtension");
    /// Hands out credentials: limited like a change.
    pub const GET_CREDENTIALS: Rpc = Rpc::changes("GetCredentials");
}

impl AppState {
    /// Requester, admin, auditor, or a person the request's approval groups name (or who
    /// already decided on it) may read a request.
    fn may_read(&self, c: &Caller, r: &jitsudo_actors::domain::Request) -> bool {
        c.admin
            || c.auditor
            || same_person(&c.principal.person(), &r.requester.person())
            || r.decision
                .approver_groups
                .iter()
                .any(|g| c.principal.groups.contains(g))
            || r.approvals
                .iter()
                .any(|a| same_person(&a.by, &c.principal.person()))
    }

    async fn load_readable(
        &self,
        c: &Caller,
        id: &str,
    ) -> Result<jitsudo_actors::domain::Request, ApiError> {
        let id = parse_id(id)?;
        let r = self.engine.get(id).await?;
        if !self.may_read(c, &r) {
            return Err(ApiError::denied(
                "you may read only your own requests and those you can approve (admins and auditors read all)",
            ));
        }
        Ok(r)
    }

    pub async fn create_request(
        &self,
        c: &Caller,
        r: v1::CreateRequestRequest,
    ) -> Result<v1::Request, ApiError> {
        if r.idempotency_key.len() > MAX_KEY {
            return Err(ApiError::invalid(format!(
                "idempotency_key is longer than {MAX_KEY} bytes"
            )));
        }
        let (spec, key) = convert::requests::create(r);
        let (req, _) = self
            .engine
            .create_idempotent(c.principal.clone(), spec, key.as_deref())
            .await?;
        Ok(convert::request(&req))
    }

    pub async fn get_request(&self, c: &Caller, id: &str) -> Result<v1::Request, ApiError> {
        Ok(convert::request(&self.load_readable(c, id).await?))
    }

    pub async fn list_requests(
        &self,
        c: &Caller,
        r: v1::ListRequestsRequest,
    ) -> Result<v1::ListRequestsResponse, ApiError> {
        let max = self.config.limits.max_page_size.max(1);
        let limit = match r.page_size {
            0 => 50.min(max),
            n if n > max => return Err(ApiError::invalid(format!("page_size is at most {max}"))),
            n => n,
        };
        let mut states = Vec::new();
        for s in &r.states {
            states.push(state_from_number(*s)?);
        }
        let everyone = c.admin || c.auditor;
        let requester = match (r.requester.is_empty(), r.mine) {
            (_, true) => Some(c.subject().to_owned()),
            (false, false) if r.requester == c.subject() || everyone => Some(r.requester.clone()),
            (false, false) => {
                return Err(ApiError::denied(
                    "listing another person's requests needs an admin or auditor group",
                ));
            }
            (true, false) if r.awaiting_my_approval || everyone => None,
            (true, false) => Some(c.subject().to_owned()),
        };
        check_text("provider", &r.provider, 64)?;
        if r.needs_review {
            c.require_admin_or_auditor("listing requests that need a review")?;
        }
        let scope = format!(
            "{}|{}|{}|{}|{:?}|{}|{:?}",
            c.subject(),
            r.needs_review,
            r.awaiting_my_approval,
            requester.as_deref().unwrap_or("*"),
            r.states,
            r.provider,
            limit
        );
        let before = self.open_cursor(&scope, &r.page_token)?;
        let filter = ListFilter {
            requester,
            awaiting_groups: r.awaiting_my_approval.then(|| c.principal.groups.clone()),
            caller: Some(c.principal.person()),
            states,
            provider: (!r.provider.is_empty()).then(|| r.provider.clone()),
            needs_review: r.needs_review,
            before,
            limit,
        };
        let found = self.engine.list(&filter).await?;
        let next_page_token = match found.last() {
            Some(last) if found.len() as u32 == limit => {
                self.sign_cursor(&scope, last.created_at, last.id.0)
            }
            _ => String::new(),
        };
        Ok(convert::requests::page(&found, next_page_token))
    }

    /// The stored versions after `after`, and whether the request has reached a terminal state.
    pub async fn request_events(
        &self,
        c: &Caller,
        id: &str,
        after: i64,
    ) -> Result<(Vec<v1::RequestEvent>, bool), ApiError> {
        if after < 0 {
            return Err(ApiError::invalid("after_version must not be negative"));
        }
        let req = self.load_readable(c, id).await?;
        let events = self.engine.request_events(req.id, after).await?;
        // The versions up to the one read: one committed between the two reads comes with
        // the next batch, so the request the last event carries is never older than it.
        let upto = events
            .iter()
            .filter(|e| e.request_version.is_some_and(|v| v <= req.version));
        let out = convert::requests::events(upto, &req);
        let done = req.state.is_terminal() && out.last().is_none_or(|e| e.version == req.version);
        Ok((out, done))
    }

    /// Approve, deny, cancel and revoke are idempotent per caller: repeating what this
    /// caller already did answers with the current request instead of an error (the
    /// engine decides, `Engine::decide`). Another identity of someone who already approved
    /// is told so (ALREADY_EXISTS) instead of being answered as if its approval had counted.
    async fn decide(
        &self,
        c: &Caller,
        id: &str,
        verdict: Verdict,
        text: &str,
    ) -> Result<v1::Request, ApiError> {
        let rid = parse_id(id)?;
        let r = self
            .engine
            .decide(rid, c.principal.clone(), verdict, text)
            .await?;
        Ok(convert::request(&r))
    }

    pub async fn approve(
        &self,
        c: &Caller,
        id: &str,
        comment: String,
    ) -> Result<v1::Request, ApiError> {
        check_text("comment", &comment, 1024)?;
        self.decide(c, id, Verdict::Approve, &comment).await
    }

    pub async fn deny(
        &self,
        c: &Caller,
        id: &str,
        reason: String,
    ) -> Result<v1::Request, ApiError> {
        check_text("reason", &reason, 1024)?;
        self.decide(c, id, Verdict::Deny, &reason).await
    }

    pub async fn cancel(&self, c: &Caller, id: &str) -> Result<v1::Request, ApiError> {
        self.decide(c, id, Verdict::Cancel, "").await
    }

    pub async fn revoke(
        &self,
        c: &Caller,
        id: &str,
        reason: String,
    ) -> Result<v1::Request, ApiError> {
        check_text("reason", &reason, 1024)?;
        self.decide(c, id, Verdict::Revoke, &reason).await
    }

    pub async fn extend(
        &self,
        c: &Caller,
        id: &str,
        by_seconds: i64,
        reason: String,
    ) -> Result<v1::Request, ApiError> {
        let rid = parse_id(id)?;
        Ok(convert::request(
            &self
                .engine
                .extend(rid, c.principal.clone(), by_seconds, &reason)
                .await?,
        ))
    }

    pub async fn decide_extension(
        &self,
        c: &Caller,
        r: v1::DecideExtensionRequest,
        approve: bool,
    ) -> Result<v1::Request, ApiError> {
        let rid = parse_id(&r.id)?;
        check_text("comment", &r.comment, 1024)?;
        let cmd = if approve {
            jitsudo_actors::request::Command::ApproveExtension {
                by: c.principal.clone(),
                number: r.number,
                comment: r.comment,
            }
        } else {
            jitsudo_actors::request::Command::DenyExtension {
                by: c.principal.clone(),
                number: r.number,
                reason: r.comment,
            }
        };
        Ok(convert::request(&self.engine.command(rid, cmd).await?))
    }

    pub async fn review(
        &self,
        c: &Caller,
        id: &str,
        verdict: &str,
    ) -> Result<v1::Review, ApiError> {
        c.require_admin_or_auditor("reviewing requests")?;
        if verdict.trim().is_empty() {
            return Err(ApiError::invalid(
                "verdict is required: say what the review concluded",
            ));
        }
        let rid = parse_id(id)?;
        let r = self.engine.close_review(&c.principal, rid, verdict).await?;
        Ok(convert::requests::review(r))
    }

    pub async fn credentials(&self, c: &Caller, id: &str) -> Result<v1::Credentials, ApiError> {
        let rid = parse_id(id)?;
        let creds = self.engine.credentials(rid, &c.principal).await?;
        Ok(convert::requests::credentials(creds))
    }
}

fn state_from_number(n: i32) -> Result<State, ApiError> {
    convert::state_from(n).ok_or_else(|| ApiError::invalid(format!("unknown request state {n}")))
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
        let c = super::caller(&req)?;
        let m = req.into_inner();
        let state = self.0.clone();
        // Subscribe before the first read: a commit between the read and the wait is then
        // still seen. This node's commits and the other nodes' (as the commit feed hears
        // them) wake the watcher; nothing polls.
        let mut commits = state.engine.context().commits.subscribe();
        let mut remote = state.engine.context().remote_commits.subscribe();
        let mut stopping = state.stopping.subscribe();
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
        let rid = parse_id(&m.id)?;
        // The stream ends when the token does: a watch is no way to outlive a session.
        let expiry = c.valid_until.map(|t| {
            let left = (t - chrono::Utc::now()).to_std().unwrap_or_default();
            tokio::time::Instant::now() + left
        });
        tokio::spawn(async move {
            use jitsudo_actors::cluster::commits::RemoteCommit;
            use tokio::sync::broadcast::error::RecvError;
            let expired = async {
                match expiry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(expired);
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
                loop {
                    tokio::select! {
                        _ = &mut expired => {
                            metrics::counter!("jitsudo_watch_ended_total", "reason" => "token_expired").increment(1);
                            // try_send: a client that reads nothing must not hold the task
                            // (and the server's state) open.
                            let _ = tx.try_send(Err(ApiError::unauthenticated(
                                "the access token expired during the watch: watch again with a fresh token",
                            )
                            .into()));
                            return;
                        }
                        _ = tx.closed() => return,
                        _ = stopping.wait_for(|s| *s) => {
                            metrics::counter!("jitsudo_watch_ended_total", "reason" => "shutdown").increment(1);
                            let _ = tx.try_send(Err(ApiError::unavailable(
                                "this node is shutting down: watch again after the last version seen (another node answers)",
                            )
                            .into()));
                            return;
                        }
                        got = commits.recv() => match got {
                            Ok((id, v)) if id == rid && v > after => break,
                            Ok(_) => {}
                            Err(RecvError::Lagged(_)) => break,
                            Err(RecvError::Closed) => return,
                        },
                        got = remote.recv() => match got {
                            Ok(RemoteCommit::Committed(id, v)) if id == rid && v > after => break,
                            Ok(RemoteCommit::Committed(..)) => {}
                            Ok(RemoteCommit::Missed) | Err(RecvError::Lagged(_)) => break,
                            Err(RecvError::Closed) => return,
                        },
                    }
                }
                metrics::counter!("jitsudo_watch_reads_total").increment(1);
                let read = {
                    let _turn = state.watch_reads.acquire().await;
                    state.request_events(&c, &m.id, after).await
                };
                match read {
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
