//! Request actors: a ShardActor per owned shard supervises one RequestActor per live
//! request. The database is the truth; these actors are caches with timers.

mod actor;
mod shard;

pub use actor::{RequestActor, RequestArgs, RequestMsg};
pub use shard::{ShardActor, ShardArgs, ShardHandle, ShardMsg};

use crate::context::NodeContext;
use crate::domain::{Principal, Request, State, outstanding_calls, timers};

/// The auto-approval a PENDING request's decision grants has not been applied yet.
fn auto_approval_pending(req: &Request) -> bool {
    req.state == State::Pending && req.decision.auto_approve && req.approvals.is_empty()
}

/// Something must happen for this request now: a provider call it is owed, its
/// auto-approval, or a deadline already due. Without any, a request with nothing in flight
/// sleeps as data in its shard (docs/engine.md, "Actors").
fn has_work_now(req: &Request, ctx: &NodeContext) -> bool {
    !outstanding_calls(req).is_empty()
        || auto_approval_pending(req)
        || timers(req).iter().any(|(_, at)| ctx.until(*at).is_zero())
}

/// A decision or request from a person, routed to the request's actor (across the mesh
/// as JSON inside a versioned prost envelope: `mesh::RoutedCall`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
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
