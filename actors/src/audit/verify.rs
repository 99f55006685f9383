//! `verify`: walks the whole chain and reports everything that is wrong with the log: the
//! first broken link, checkpoints that do not match the chain or their signature, a chain
//! that stops before its last checkpoint, gaps in request versions, events after the last
//! checkpoint, and how many events are still unchained and how old the oldest is. Against
//! anchors (points the caller already trusts) it says where the log no longer agrees, and
//! with `require_checkpoint` it refuses a log that no signed checkpoint covers.

use ed25519_dalek::VerifyingKey;
use jitsudo_proto::audit::{
    Anchor, BrokenLink, ChainLink, ChainVerifier, key_id, missing_checkpoint, verify_checkpoint,
};
use serde::Serialize;

use super::record;
use crate::store::{Store, StoreResult, VersionGap};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointProblem {
    pub seq: i64,
    pub problem: String,
}

/// The chain ends before a signed checkpoint: rows were removed from its end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Truncation {
    pub chain_length: i64,
    pub checkpoint_seq: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VerifyReport {
    pub chain_length: i64,
    /// Links verified from genesis before the first problem (or all of them).
    pub verified_through: i64,
    pub first_broken: Option<String>,
    pub first_broken_seq: Option<i64>,
    pub checkpoints: usize,
    pub last_checkpoint_seq: Option<i64>,
    pub checkpoint_problems: Vec<CheckpointProblem>,
    pub truncated: Option<Truncation>,
    /// Chained events not yet covered by a signed checkpoint.
    pub events_after_last_checkpoint: i64,
    pub version_gaps: Vec<(String, i64, Vec<i64>)>,
    pub unchained: i64,
    pub oldest_unchained_age_seconds: Option<f64>,
    /// One sentence per anchor the log no longer agrees with.
    pub anchor_problems: Vec<String>,
    /// Why no signed checkpoint covers the log, when one was required.
    pub missing_checkpoint: Option<String>,
}

/// What the caller already trusts and demands of the log.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    pub anchors: Vec<Anchor>,
    pub require_checkpoint: bool,
}

impl VerifyReport {
    /// True when nothing was found that breaks the log's integrity (events after the last
    /// checkpoint and a small unchained backlog are normal and only reported).
    pub fn is_intact(&self) -> bool {
        self.first_broken.is_none()
            && self.checkpoint_problems.is_empty()
            && self.truncated.is_none()
            && self.version_gaps.is_empty()
            && self.anchor_problems.is_empty()
            && self.missing_checkpoint.is_none()
    }
}

const PAGE: u32 = 5000;

/// Verifies the whole log. With `key`, checkpoint signatures are checked too.
pub async fn verify(
    store: &dyn Store,
    key: Option<&VerifyingKey>,
    options: &VerifyOptions,
) -> StoreResult<VerifyReport> {
    let checkpoints = store.checkpoints().await?;
    let mut v = ChainVerifier::default();
    let mut broken: Option<BrokenLink> = None;
    let mut chain_length = 0i64;
    let mut cp_hashes: Vec<(i64, [u8; 32])> = Vec::new();
    let mut after = 0i64;
    loop {
        let page = store.chain_page(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.0.seq;
        for (row, event) in &page {
            chain_length = chain_length.max(row.seq);
            if broken.is_some() {
                continue;
            }
            let link = ChainLink {
                seq: row.seq,
                prev_hash: row.prev_hash.clone(),
                hash: row.hash.clone(),
            };
            let rec = event.as_ref().map(record);
            if let Err(b) = v.check(&link, rec.as_ref()) {
                broken = Some(b);
                continue;
            }
            if checkpoints.iter().any(|c| c.seq == row.seq)
                || options.anchors.iter().any(|a| a.seq == row.seq)
            {
                cp_hashes.push((row.seq, v.last_hash()));
            }
        }
        if page.len() < PAGE as usize {
            break;
        }
    }
    let mut problems = Vec::new();
    let mut valid = 0usize;
    for cp in &checkpoints {
        let before = problems.len();
        let verified = cp_hashes.iter().find(|(s, _)| *s == cp.seq);
        match verified {
            Some((_, h)) if h.as_slice() != cp.hash.as_slice() => {
                problems.push(CheckpointProblem {
                    seq: cp.seq,
                    problem: "the checkpoint's hash differs from the chain's".into(),
                })
            }
            None if cp.seq <= v.last_seq() => problems.push(CheckpointProblem {
                seq: cp.seq,
                problem: "no chain entry at the checkpoint's sequence number".into(),
            }),
            _ => {}
        }
        if let Some(k) = key {
            let mut hash = [0u8; 32];
            if cp.hash.len() == 32 {
                hash.copy_from_slice(&cp.hash);
            }
            if cp.key_id != key_id(k) {
                problems.push(CheckpointProblem {
                    seq: cp.seq,
                    problem: format!("signed by another key ({})", cp.key_id),
                });
            } else if !verify_checkpoint(k, cp.seq, &hash, cp.at.timestamp_micros(), &cp.signature)
            {
                problems.push(CheckpointProblem {
                    seq: cp.seq,
                    problem: "the signature does not verify".into(),
                });
            }
        }
        if problems.len() == before && cp.seq <= v.last_seq() {
            valid += 1;
        }
    }
    let anchor_problems = options
        .anchors
        .iter()
        .flat_map(|a| {
            let there = cp_hashes.iter().find(|(s, _)| *s == a.seq).map(|(_, h)| h);
            let listed = checkpoints
                .iter()
                .any(|c| c.seq == a.seq && c.hash.as_slice() == a.hash.as_slice());
            [
                a.checkpoint_gone(listed),
                a.problem(chain_length, v.last_seq(), there),
            ]
        })
        .flatten()
        .collect();
    let missing = options
        .require_checkpoint
        .then(|| missing_checkpoint(key.is_some(), valid))
        .flatten();
    let last_cp = checkpoints.last().map(|c| c.seq);
    let truncated = match last_cp {
        Some(cp) if cp > chain_length => Some(Truncation {
            chain_length,
            checkpoint_seq: cp,
        }),
        _ => None,
    };
    let stats = store.audit_stats(None).await?;
    let gaps: Vec<VersionGap> = store.version_gaps(1000).await?;
    Ok(VerifyReport {
        chain_length,
        verified_through: v.last_seq(),
        first_broken_seq: broken.as_ref().map(BrokenLink::seq),
        first_broken: broken.map(|b| b.to_string()),
        checkpoints: checkpoints.len(),
        last_checkpoint_seq: last_cp,
        checkpoint_problems: problems,
        truncated,
        events_after_last_checkpoint: (chain_length - last_cp.unwrap_or(0)).max(0),
        version_gaps: gaps
            .into_iter()
            .map(|g| (g.request_id.to_string(), g.version, g.missing))
            .collect(),
        unchained: stats.unchained,
        oldest_unchained_age_seconds: stats
            .oldest_unchained_at
            .map(|t| ((stats.db_now - t).num_milliseconds() as f64 / 1000.0).max(0.0)),
        anchor_problems,
        missing_checkpoint: missing,
    })
}
