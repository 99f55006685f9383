//! jitsudod: the only door into the control plane. gRPC (`jitsudo.v1`) and REST/JSON on one
//! TLS listener, OIDC bearer authentication, the authorization matrix of docs/security.md,
//! health, readiness and metrics.

pub mod auth;
