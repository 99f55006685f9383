//! The tamper-evident audit log: the AuditSequencer chains committed audit events (one per
//! cluster, holding the `audit` lease), signs checkpoints with a key that never enters the
//! database, and `verify` proves a log whole or names its first problem.

mod keys;
mod sequencer;
mod verify;

pub use keys::{
    AuditKeyError, generate_signing_key, load_signing_key, load_verifying_key, public_key_pem,
};
pub use sequencer::{AuditSequencer, SequencerArgs, SequencerHandle};
pub use verify::{CheckpointProblem, Truncation, VerifyOptions, VerifyReport, verify};

use crate::store::AuditEvent;

/// The canonical form of a stored event (the format `jitsudo-proto` publishes).
pub fn record(e: &AuditEvent) -> jitsudo_proto::audit::AuditRecord {
    jitsudo_proto::audit::AuditRecord {
        id: e.id,
        at_micros: e.at.timestamp_micros(),
        kind: e.kind.clone(),
        actor: e.actor.clone(),
        request_id: e.request_id,
        request_version: e.request_version,
        node: e.node.clone(),
        details: e.details.clone(),
    }
}
