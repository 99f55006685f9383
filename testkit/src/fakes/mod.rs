//! Faithful fakes of the external systems jitsudo drives, one module per system, each beside a
//! note of the documented behaviour it models and what it leaves out.

pub mod azure;
mod filter;
pub mod gcp;
pub mod kubernetes;
pub use filter::Filter;
mod serve;
mod tls;
