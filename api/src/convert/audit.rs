//! AuditService's messages: audit events with their chain links, checkpoints, the
//! verifying key, and the verification report.

use ed25519_dalek::VerifyingKey;
use jitsudo_actors::engine::types::{AuditEvent, ChainRow, Checkpoint, VerifyReport};
use jitsudo_proto::v1;

use super::ts;

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

fn chain_entry(l: &ChainRow) -> v1::ChainEntry {
    v1::ChainEntry {
        seq: l.seq,
        prev_hash: l.prev_hash.clone(),
        hash: l.hash.clone(),
    }
}

/// A page of the log: each event with its chain link, if it is chained yet.
pub fn log_events(rows: &[(AuditEvent, Option<ChainRow>)]) -> Vec<v1::AuditEvent> {
    rows.iter()
        .map(|(e, link)| audit_event(e, link.as_ref().map(chain_entry)))
        .collect()
}

/// A page of the chain: each link with its event.
pub fn chain_events(page: &[(ChainRow, Option<AuditEvent>)]) -> Vec<v1::AuditEvent> {
    page.iter()
        .map(|(link, ev)| match ev {
            Some(e) => audit_event(e, Some(chain_entry(link))),
            // The chain names an event that is gone: show the hole.
            None => v1::AuditEvent {
                id: link.event_id.to_string(),
                chain: Some(chain_entry(link)),
                ..Default::default()
            },
        })
        .collect()
}

fn checkpoint(cp: Checkpoint) -> v1::Checkpoint {
    v1::Checkpoint {
        seq: cp.seq,
        hash: cp.hash,
        at: Some(ts(cp.at)),
        key_id: cp.key_id,
        signature: cp.signature,
        at_micros: cp.at.timestamp_micros(),
    }
}

/// The key checkpoints are signed with, as PEM (empty when the server signs none).
fn public_key_pem(key: Option<&VerifyingKey>) -> String {
    key.and_then(|k| {
        use ed25519_dalek::pkcs8::EncodePublicKey;
        k.to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .ok()
    })
    .unwrap_or_default()
}

/// One answer of QueryAudit: the events, every checkpoint and the key to check them with.
pub fn page(
    events: Vec<v1::AuditEvent>,
    checkpoints: Vec<Checkpoint>,
    next_page_token: String,
    key: Option<&VerifyingKey>,
) -> v1::QueryAuditResponse {
    v1::QueryAuditResponse {
        events,
        checkpoints: checkpoints.into_iter().map(checkpoint).collect(),
        next_page_token,
        public_key_pem: public_key_pem(key),
    }
}

pub fn verify_report(r: &VerifyReport) -> v1::VerifyAuditResponse {
    v1::VerifyAuditResponse {
        intact: r.is_intact(),
        chain_length: r.chain_length,
        verified_through: r.verified_through,
        first_broken: r.first_broken.clone().unwrap_or_default(),
        first_broken_seq: r.first_broken_seq.unwrap_or(0),
        checkpoints: r.checkpoints as u32,
        last_checkpoint_seq: r.last_checkpoint_seq.unwrap_or(0),
        checkpoint_problems: r
            .checkpoint_problems
            .iter()
            .map(|p| format!("checkpoint {}: {}", p.seq, p.problem))
            .collect(),
        truncated_at: r.truncated.as_ref().map(|t| t.chain_length).unwrap_or(0),
        events_after_last_checkpoint: r.events_after_last_checkpoint,
        version_gaps: r
            .version_gaps
            .iter()
            .map(|(id, v, missing)| v1::VersionGap {
                request_id: id.clone(),
                version: *v,
                missing: missing.clone(),
            })
            .collect(),
        unchained: r.unchained,
        oldest_unchained_age_seconds: r.oldest_unchained_age_seconds.unwrap_or(0.0),
        anchor_problems: r.anchor_problems.clone(),
        missing_checkpoint: r.missing_checkpoint.clone().unwrap_or_default(),
    }
}
