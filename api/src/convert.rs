//! Mapping between the engine's domain types and the public jitsudo.v1 messages, at the edge.

use jitsudo_actors::ProviderStatus;
use jitsudo_actors::domain::{self, GrantPurpose, GrantStatus, State};
use jitsudo_actors::engine::types::AuditEvent;
use jitsudo_proto::v1;

pub fn ts(t: chrono::DateTime<chrono::Utc>) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn opt_ts(t: Option<chrono::DateTime<chrono::Utc>>) -> Option<pbjson_types::Timestamp> {
    t.map(ts)
}

pub fn from_ts(t: &pbjson_types::Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
}

pub fn state(s: State) -> v1::RequestState {
    use v1::RequestState as P;
    match s {
        State::Pending => P::Pending,
        State::Approved => P::Approved,
        State::Active => P::Active,
        State::Ending => P::Ending,
        State::Expired => P::Expired,
        State::Revoked => P::Revoked,
        State::Rejected => P::Rejected,
        State::Cancelled => P::Cancelled,
        State::TimedOut => P::TimedOut,
        State::Failed => P::Failed,
    }
}

/// `None` for UNSPECIFIED or a number this server does not know.
pub fn state_from(n: i32) -> Option<State> {
    use v1::RequestState as P;
    Some(match P::try_from(n).ok()? {
        P::Unspecified => return None,
        P::Pending => State::Pending,
        P::Approved => State::Approved,
        P::Active => State::Active,
        P::Ending => State::Ending,
        P::Expired => State::Expired,
        P::Revoked => State::Revoked,
        P::Rejected => State::Rejected,
        P::Cancelled => State::Cancelled,
        P::TimedOut => State::TimedOut,
        P::Failed => State::Failed,
    })
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

pub fn audit_event(e: &AuditEvent, chain: Option<v1::ChainEntry>) -> v1::AuditEvent {
    v1::AuditEvent {
        id: e.id.to_string(),
        at: Some(ts(e.at)),
        kind: e.kind.clone(),
        actor: e.actor.clone(),
        request_id: e.request_id.map(|u| u.to_string()).unwrap_or_default(),
        request_version: e.request_version.unwrap_or(0),
        node: e.node.clone(),
        details: e.details.clone(),
        chain,
        at_micros: e.at.timestamp_micros(),
    }
}

/// The state a request reached at a stored version, from that version's audit event.
pub fn event_state(e: &AuditEvent) -> v1::RequestState {
    serde_json::from_str::<serde_json::Value>(&e.details)
        .ok()
        .and_then(|d| d.get("to").and_then(|t| t.as_str()).and_then(State::parse))
        .map(state)
        .unwrap_or(v1::RequestState::Unspecified)
}

/// A provider as `ListProviders` shows it: counts saturate rather than wrap.
pub fn provider_status(p: &ProviderStatus) -> v1::ProviderStatus {
    let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    v1::ProviderStatus {
        name: p.name.clone(),
        kind: p.info.kind.clone(),
        roles: p.info.roles.clone(),
        scopes: p.info.scopes.clone(),
        native_expiry: p.info.native_expiry,
        subject_template: p.subject_template.clone(),
        on_drift: p.on_drift.into(),
        last_call: p.last_call.as_ref().map(|l| v1::ProviderCall {
            op: l.op.into(),
            outcome: l.outcome.into(),
            at: Some(ts(l.at)),
            error: l.error.clone().unwrap_or_default(),
        }),
        last_pass: p.last_pass.as_ref().map(|r| v1::ReconcilePass {
            node: r.node.clone(),
            at: Some(ts(r.at)),
            duration_ms: count(r.duration_ms),
            listed: count(r.listed),
            orphans: count(r.orphans),
            drift: count(r.drift),
            tombstones: count(r.tombstones),
            error: r.error.clone().unwrap_or_default(),
        }),
    }
}
