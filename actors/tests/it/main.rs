//! Integration tests of the engine: the store contract on both backends and the actor tree
//! against the http provider's reference server. One binary for the crate (link time).

mod engine;
mod fixtures;
mod store_contract;
