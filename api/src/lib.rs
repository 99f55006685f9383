//! jitsudod: the only door into the control plane. gRPC (`jitsudo.v1`) and REST/JSON on one
//! TLS listener, OIDC bearer authentication, the authorization matrix of docs/security.md,
//! health, readiness and metrics.

pub mod auth;
pub mod certs;
pub mod config;
pub mod convert;
pub mod dev;
pub mod error;
pub mod limits;
pub mod rest;
pub mod rpc;
pub mod server;
pub mod state;
pub mod tls;
