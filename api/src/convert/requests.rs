//! RequestService's messages: requests, their events, pages, reviews and credentials; and
//! the request spec a create carries in.

use jitsudo_actors::domain::{self, GrantPurpose, GrantStatus, RequestSpec, State};
use jitsudo_actors::engine::types::{AuditEvent, ReviewRecord};
use jitsudo_proto::v1;

use super::{opt_ts, state, ts};

/// The spec and the idempotency key (if any) of a create.
pub fn create(r: v1::CreateRequestRequest) -> (RequestSpec, Option<String>) {
    let spec = RequestSpec {
        // Names compare as NFC: "café" typed on two keyboards is one role.
        provider: domain::nfc(&r.provider),
        role: domain::nfc(&r.role),
        scope: domain::nfc(&r.scope),
        duration_seconds: r.duration_seconds,
        reason: r.reason,
        ticket: (!r.ticket.is_empty()).then_some(r.ticket),
        break_glass: r.break_glass,
        metadata: r.metadata.into_iter().collect(),
    };
    (
        spec,
        (!r.idempotency_key.is_empty()).then_some(r.idempotency_key),
    )
}

fn approval(a: &domain::Approval) -> v1::Approval {
    v1::Approval {
        approver: a.by.subject.clone(),
        kind: a.kind.clone(),
        comment: a.comment.clone(),
        at: Some(ts(a.at)),
    }
}

fn snake<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub fn request(r: &domain::Request) -> v1::Request {
    v1::Request {
        id: r.id.to_string(),
        version: r.version,
        state: state(r.state) as i32,
        requester: r.requester.subject.clone(),
        principal: r.cloud_principal().to_owned(),
        provider: r.spec.provider.clone(),
        role: r.spec.role.clone(),
        scope: r.spec.scope.clone(),
        duration_seconds: r.spec.duration_seconds,
        reason: r.spec.reason.clone(),
        ticket: r.spec.ticket.clone().unwrap_or_default(),
        break_glass: r.spec.break_glass,
        metadata: r.spec.metadata.clone().into_iter().collect(),
        approvals: r.approvals.iter().map(approval).collect(),
        approvals_required: r.decision.approvals_required,
        approver_groups: r.decision.approver_groups.clone(),
        created_at: Some(ts(r.created_at)),
        approval_deadline: opt_ts(r.approval_deadline),
        granted_at: opt_ts(r.granted_at),
        expires_at: opt_ts(r.expires_at),
        ended_at: opt_ts(r.ended_at),
        end_detail: r.end_detail.clone().unwrap_or_default(),
        extensions: r
            .extensions
            .iter()
            .map(|e| v1::Extension {
                number: e.number,
                by_seconds: e.by_seconds,
                reason: e.reason.clone(),
                state: snake(&e.state),
                approvals: e.approvals.iter().map(approval).collect(),
                requested_at: Some(ts(e.requested_at)),
            })
            .collect(),
        grants: r
            .grants
            .iter()
            .map(|g| v1::Grant {
                grant_id: g.grant_id.to_string(),
                purpose: match g.purpose {
                    GrantPurpose::Primary => "primary".into(),
                    GrantPurpose::Extension { extension, .. } => format!("extension:{extension}"),
                },
                status: snake::<GrantStatus>(&g.status),
                not_after: opt_ts(r.not_after(g)),
                attempts: g.attempts,
                last_error: g.last_error.clone().unwrap_or_default(),
            })
            .collect(),
        revocation_stuck: r.stuck,
        policy_version: r.decision.policy_version.clone(),
        auto_approved: r.approvals.iter().any(|a| a.kind == "policy"),
        review_reason: r.review_reason().unwrap_or_default().to_owned(),
    }
}

/// A page of requests; `next_page_token` is empty on the last page.
pub fn page(found: &[domain::Request], next_page_token: String) -> v1::ListRequestsResponse {
    v1::ListRequestsResponse {
        requests: found.iter().map(request).collect(),
        next_page_token,
    }
}

/// The events of a request's versions, the last one carrying the request as it is now
/// (`current`, read with them).
pub fn events<'a>(
    events: impl Iterator<Item = &'a AuditEvent>,
    current: &domain::Request,
) -> Vec<v1::RequestEvent> {
    let mut out: Vec<v1::RequestEvent> = events
        .map(|e| v1::RequestEvent {
            version: e.request_version.unwrap_or(0),
            state: event_state(e) as i32,
            kind: e.kind.clone(),
            actor: e.actor.clone(),
            at: Some(ts(e.at)),
            details: e.details.clone(),
            request: None,
        })
        .collect();
    if let Some(last) = out.last_mut() {
        last.request = Some(request(current));
    }
    out
}

/// The state a request reached at a stored version, from that version's audit event.
pub fn event_state(e: &AuditEvent) -> v1::RequestState {
    serde_json::from_str::<serde_json::Value>(&e.details)
        .ok()
        .and_then(|d| d.get("to").and_then(|t| t.as_str()).and_then(State::parse))
        .map(state)
        .unwrap_or(v1::RequestState::Unspecified)
}

pub fn review(r: ReviewRecord) -> v1::Review {
    v1::Review {
        request_id: r.request_id.to_string(),
        reason: r.reason,
        reviewer: r.reviewer,
        verdict: r.verdict,
        closed_at: Some(ts(r.closed_at)),
    }
}

pub fn credentials(creds: jitsudo_providers::Credentials) -> v1::Credentials {
    v1::Credentials {
        env: creds.env.into_iter().collect(),
        expires_at: Some(ts(creds.expires_at)),
        notice: creds.notice.unwrap_or_default(),
    }
}
