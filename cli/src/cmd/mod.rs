//! The commands, one module per area.

pub mod audit;
pub mod context;
pub mod exec;
pub mod policy;
pub mod requests;
pub mod server;
pub mod session;
