//! AuditService: pages of the audit log or of its hash chain, and verification of the
//! whole log.

use jitsudo_actors::engine::types::AuditQuery;
use jitsudo_proto::v1;
use jitsudo_proto::v1::audit_service_server::AuditService;
use tonic::{Request, Response, Status};

use super::{Api, Rpc, parse_id};
use crate::convert;
use crate::error::ApiError;
use crate::state::{AppState, Caller};

/// AuditService's calls, each reading or changing.
impl Rpc {
    pub const QUERY_AUDIT: Rpc = Rpc::reads("QueryAudit");
    pub const VERIFY_AUDIT: Rpc = Rpc::reads("VerifyAudit");
}

impl AppState {
    pub async fn query_audit(
        &self,
        c: &Caller,
        r: v1::QueryAuditRequest,
    ) -> Result<v1::QueryAuditResponse, ApiError> {
        c.require_admin_or_auditor("reading the audit log")?;
        let limit = match r.page_size {
            0 => 100,
            n if n > 1000 => return Err(ApiError::invalid("page_size is at most 1000")),
            n => n,
        };
        let key = self.verifying_key.as_ref();
        let checkpoints = self.engine.checkpoints().await?;
        if r.chain_mode {
            if r.chain_after_seq < 0 {
                return Err(ApiError::invalid("chain_after_seq must not be negative"));
            }
            let page = self.engine.chain_page(r.chain_after_seq, limit).await?;
            let next = match page.last() {
                Some((l, _)) if page.len() as u32 == limit => l.seq.to_string(),
                _ => String::new(),
            };
            let events = convert::audit::chain_events(&page);
            return Ok(convert::audit::page(events, checkpoints, next, key));
        }
        let scope = format!(
            "{}|{}|{}|{}|{}|{:?}|{:?}|{}|{limit}",
            c.subject(),
            r.request_id,
            r.actor,
            r.kind,
            r.provider,
            r.since,
            r.until,
            r.oldest_first
        );
        let after = self.open_cursor(&scope, &r.page_token)?;
        let q = AuditQuery {
            request_id: if r.request_id.is_empty() {
                None
            } else {
                Some(parse_id(&r.request_id)?.0)
            },
            actor: (!r.actor.is_empty()).then(|| r.actor.clone()),
            kind: (!r.kind.is_empty()).then(|| r.kind.clone()),
            provider: (!r.provider.is_empty()).then(|| r.provider.clone()),
            since: r.since.as_ref().and_then(convert::from_ts),
            until: r.until.as_ref().and_then(convert::from_ts),
            oldest_first: r.oldest_first,
            after,
            limit,
        };
        let rows = self.engine.audit_page(&q).await?;
        let next_page_token = match rows.last() {
            Some((e, _)) if rows.len() as u32 == limit => self.sign_cursor(&scope, e.at, e.id),
            _ => String::new(),
        };
        let events = convert::audit::log_events(&rows);
        Ok(convert::audit::page(
            events,
            checkpoints,
            next_page_token,
            key,
        ))
    }

    pub async fn verify_audit(
        &self,
        c: &Caller,
        m: v1::VerifyAuditRequest,
    ) -> Result<v1::VerifyAuditResponse, ApiError> {
        c.require_admin_or_auditor("verifying the audit log")?;
        const MAX_ANCHORS: usize = 100;
        if m.anchors.len() > MAX_ANCHORS {
            return Err(ApiError::invalid(format!(
                "at most {MAX_ANCHORS} anchors, not {}",
                m.anchors.len()
            )));
        }
        let anchors = m
            .anchors
            .iter()
            .map(jitsudo_proto::audit::Anchor::from_v1)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::invalid)?;
        let options = jitsudo_actors::audit::VerifyOptions {
            anchors,
            require_checkpoint: m.require_checkpoint,
        };
        let report = self
            .engine
            .verify_audit(self.verifying_key.as_ref(), &options)
            .await?;
        Ok(convert::audit::verify_report(&report))
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
        rpc!(self, Rpc::VERIFY_AUDIT, req, |state, c, m| state
            .verify_audit(&c, m)
            .await)
    }
}
