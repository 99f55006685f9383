//! Test fixtures shared by jitsudo's test suites.
//!
//! [`postgres()`] hands every test its own fresh database: in the server named by
//! `DATABASE_URL` when set, else in a private cluster that testkit starts once per test
//! process from the installed `initdb`/`pg_ctl` (temp dir, free port) and stops at exit.
//! [`fakes`] holds faithful fakes of the cloud APIs (Kubernetes RBAC first);
//! [`python::venv`] provides pinned Python tools for cross-checking them with real clients.

pub mod fakes;
pub mod moto;
mod postgres;
pub mod python;

pub use postgres::{PrivatePostgres, TestDatabase, postgres};

/// Installs the rustls crypto provider; call first in every test harness that may use TLS.
/// Both ring and aws-lc-rs are in the tree: without an explicit choice rustls panics.
pub fn init_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A free TCP port on 127.0.0.1 (bind port 0, read it, release it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 must work on a test machine")
}
