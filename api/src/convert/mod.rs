//! Mapping between the engine's domain types and the public jitsudo.v1 messages, at the
//! edge: every v1 message the server answers is built here, one file per service (the
//! shared pieces, times and request states, in this one). The RPC functions validate,
//! authorize and call the engine; what they answer comes from these functions.

use jitsudo_actors::domain::State;
use jitsudo_proto::v1;

pub mod admin;
pub mod audit;
pub mod policies;
pub mod principals;
pub mod requests;

/// The request as every call answers it (and the tests compare against).
pub use requests::request;

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
