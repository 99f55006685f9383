//! The jitsudo control plane engine. Its modules form one straight line of layers: each
//! imports only from the layers before it (`tests/it/layering.rs` fails if that changes;
//! docs/architecture.md draws it).
//!
//! 1. Pure: [`policy`] (the Rego policy set and its decisions), [`domain`] (the request state
//!    machine: every lifecycle rule), [`lease`] (lease timing and the self-fence clock).
//! 2. [`stats`] (actor registry and metric names), [`store`] (PostgreSQL and SQLite behind
//!    one trait), [`error`], [`config`] (every configuration type).
//! 3. Actors: [`singleton`] (cluster-wide single-holder leases), [`provider`] (the bounded
//!    handle on each cloud provider), [`policy_actor`], [`audit`] (the chain sequencer),
//!    [`notify`] (the outbox's deliverer), [`context`] (what a node's actors share),
//!    [`request`] (shard actors and one actor per live request).
//! 4. [`cluster`]: membership, shard ownership, the node supervisor, the routing mesh; then
//!    [`reconcile`] (the grant reconciler, a cluster singleton that routes through the mesh).
//! 5. [`engine`]: [`Engine::start`] builds the tree; its methods are the API's only door.

pub mod domain;
pub mod lease;
pub mod policy;

pub mod config;
pub mod error;
pub mod stats;
pub mod store;

pub mod audit;
pub mod context;
pub mod notify;
pub mod policy_actor;
pub mod provider;
pub mod request;
pub mod singleton;

pub mod cluster;
pub mod reconcile;

pub mod engine;

pub use config::EngineConfig;
pub use engine::{ClusterStatus, Engine, MemberStatus, ProviderStatus};
pub use error::EngineError;
