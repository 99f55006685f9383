//! Integration tests of the engine: the store contract on both backends and the actor tree
//! against the http provider's reference server. One binary for the crate (link time).

mod audit;
mod cluster;
mod engine;
mod engine_api;
mod fixtures;
mod layering;
mod outbox;
mod reconcile;
mod store_contract;
