//! The pure domain of jitsudo: requests, principals and the lifecycle state machine.
//!
//! Nothing here performs I/O or reads a clock: `step` and `create` are functions of their
//! inputs, so the lifecycle (docs/engine.md) can be tested exhaustively without a database.

mod idempotency;
mod ids;
mod principal;
mod request;
mod step;
mod text;

#[cfg(test)]
mod tests;

pub use idempotency::{Idempotency, content_hash};
pub use ids::{RequestId, grant_id_for, shard_of};
pub use principal::{PersonRef, Principal, same_person};
pub use request::{
    Approval, EndedBy, EndingCause, Extension, ExtensionState, GrantEntry, GrantPurpose,
    GrantStatus, Limits, NewRequest, Request, RequestSpec, Stamp, State, TimePatch, Verdict,
};
pub use step::{
    AuditEntry, Decider, Effect, Event, Guard, Notice, NoticeKind, Refusal, RequesterLoad, Rules,
    TimerKind, Transition, check_text, create, outstanding_calls, probe_spec, repeats_own_decision,
    step, timers,
};
pub use text::{hidden_char, hidden_reason, nfc};

/// Wall-clock instants. Deadlines are computed by the database clock (see [`Stamp`]).
pub type Timestamp = chrono::DateTime<chrono::Utc>;
