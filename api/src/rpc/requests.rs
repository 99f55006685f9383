//! RequestService: create, read, list and watch requests, decide on them and their
//! extensions, close reviews, fetch credentials.

use jitsudo_actors::domain::{State, Verdict, same_person};
use jitsudo_actors::engine::types::ListFilter;
use jitsudo_proto::v1;

use super::{MAX_KEY, Rpc, check_text, parse_id};
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
