//! The jitsudo control plane engine: the pure request state machine (`domain`), the store
//! (`store`), policy evaluation (`policy`), and the actor tree that carries transitions out.

pub mod domain;
pub mod policy;
pub mod store;
