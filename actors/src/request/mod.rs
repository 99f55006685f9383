//! Request actors: a ShardActor per owned shard supervises one RequestActor per live
//! request. The database is the truth; these actors are caches with timers.

mod actor;
mod shard;

pub use actor::{RequestActor, RequestArgs, RequestMsg};
pub use shard::{ShardActor, ShardArgs, ShardHandle, ShardMsg};

use crate::domain::Principal;

/// A decision or request from a person, routed to the request's actor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Approve {
        by: Principal,
        comment: String,
    },
    Deny {
        by: Principal,
        reason: String,
    },
    Cancel {
        by: Principal,
    },
    Revoke {
        by: Principal,
        reason: String,
    },
    Extend {
        by: Principal,
        by_seconds: i64,
        reason: String,
    },
    ApproveExtension {
        by: Principal,
        number: u32,
        comment: String,
    },
    DenyExtension {
        by: Principal,
        number: u32,
        reason: String,
    },
}
