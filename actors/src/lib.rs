//! The jitsudo control plane engine: the pure request state machine (`domain`), the store
//! (`store`), policy evaluation (`policy`), and the actor tree that carries transitions out
//! (`node` → `request` shards and request actors, `policy`, `provider`), started by
//! [`Engine::start`].

pub mod audit;
pub mod context;
pub mod domain;
pub mod engine;
pub mod error;
pub mod membership;
pub mod mesh;
pub mod node;
pub mod notify;
pub mod ownership;
pub mod policy;
pub mod provider;
pub mod reconcile;
pub mod request;
pub mod singleton;
pub mod stats;
pub mod store;

pub use context::EngineConfig;
pub use engine::{ClusterStatus, Engine, MemberStatus, ProviderStatus};
pub use error::EngineError;
