//! AuditService: pages of the audit log or of its hash chain, and verification of the
//! whole log.

use jitsudo_actors::engine::types::AuditQuery;
use jitsudo_proto::v1;

use super::parse_id;
use crate::convert;
use crate::error::ApiError;
use crate::state::{AppState, Caller};

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
        let public_key_pem = self
            .verifying_key
            .as_ref()
            .and_then(|k| {
                use ed25519_dalek::pkcs8::EncodePublicKey;
                k.to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
                    .ok()
            })
            .unwrap_or_default();
        let checkpoints: Vec<v1::Checkpoint> = self
            .engine
            .checkpoints()
            .await?
            .into_iter()
            .map(|cp| v1::Checkpoint {
                seq: cp.seq,
                hash: cp.hash,
                at: Some(convert::ts(cp.at)),
                key_id: cp.key_id,
                signature: cp.signature,
                at_micros: cp.at.timestamp_micros(),
            })
            .collect();
        if r.chain_mode {
            if r.chain_after_seq < 0 {
                return Err(ApiError::invalid("chain_after_seq must not be negative"));
            }
            let page = self.engine.chain_page(r.chain_after_seq, limit).await?;
            let next = match page.last() {
                Some((l, _)) if page.len() as u32 == limit => l.seq.to_string(),
                _ => String::new(),
            };
            let events = page
                .into_iter()
                .map(|(link, ev)| {
                    let chain = v1::ChainEntry {
                        seq: link.seq,
                        prev_hash: link.prev_hash,
                        hash: link.hash,
                    };
                    match ev {
                        Some(e) => convert::audit_event(&e, Some(chain)),
                        // The chain names an event that is gone: show the hole.
                        None => v1::AuditEvent {
                            id: link.event_id.to_string(),
                            chain: Some(chain),
                            ..Default::default()
                        },
                    }
                })
                .collect();
            return Ok(v1::QueryAuditResponse {
                events,
                checkpoints,
                next_page_token: next,
                public_key_pem,
            });
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
        let events = rows
            .iter()
            .map(|(e, link)| {
                convert::audit_event(
                    e,
                    link.as_ref().map(|l| v1::ChainEntry {
                        seq: l.seq,
                        prev_hash: l.prev_hash.clone(),
                        hash: l.hash.clone(),
                    }),
                )
            })
            .collect();
        Ok(v1::QueryAuditResponse {
            events,
            checkpoints,
            next_page_token,
            public_key_pem,
        })
    }

    pub async fn verify_audit(&self, c: &Caller) -> Result<v1::VerifyAuditResponse, ApiError> {
        c.require_admin_or_auditor("verifying the audit log")?;
        let r = self
            .engine
            .verify_audit(self.verifying_key.as_ref())
            .await?;
        Ok(v1::VerifyAuditResponse {
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
        })
    }
}
