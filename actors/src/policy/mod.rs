//! Policy: compiles the admins' Rego modules (packages `jitsudo.eligibility` and
//! `jitsudo.approval`) once and evaluates them, purely and concurrently, into a [`Decision`]
//! that names the exact policy set it came from. No policy means every request is denied.
//! Pure: no I/O, no actors (the actor that holds the live set is [`crate::policy_actor`]).

mod decision;
mod examples;
mod input;
mod set;

pub use decision::{
    DEFAULT_APPROVAL_TIMEOUT_SECONDS, DEFAULT_APPROVALS_REQUIRED, DEFAULT_MAX_DURATION_SECONDS,
    Decision, NO_POLICY_REASON, PolicyRefusal, PolicyStamp,
};
pub use examples::{DEV_EXAMPLE_AUTHOR, dev_example_policies};
pub use input::{ApprovalInput, PolicyInput, Principal, RequestInput};
pub use set::{PolicyError, PolicySet, PolicySource};

#[cfg(test)]
mod tests;
