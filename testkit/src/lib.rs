//! Test fixtures shared by jitsudo's test suites.
//!
//! [`postgres()`] hands every test its own fresh database: in the server named by
//! `DATABASE_URL` when set, else in a private cluster that testkit starts once per test
//! process from the installed `initdb`/`pg_ctl` (temp dir, free port) and stops at exit.
//! [`fakes`] holds faithful fakes of the cloud APIs (Kubernetes RBAC first);
//! [`python::venv`] provides pinned Python tools for cross-checking them with real clients.

pub mod aws_proxy;
pub mod debian;
pub mod fakes;
pub mod moto;
mod postgres;
pub mod prometheus;
pub mod python;

pub use postgres::{PrivatePostgres, TestDatabase, postgres};

/// Installs the rustls crypto provider; call first in every test harness that may use TLS.
/// Both ring and aws-lc-rs are in the tree: without an explicit choice rustls panics.
pub fn init_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A free TCP port on 127.0.0.1 for a server a test starts (often in another process).
///
/// Chosen below the kernel's ephemeral range (`ip_local_port_range`): a port from inside it
/// (what binding port 0 hands out) can be taken as the *source* port of any outgoing
/// connection on the machine between this call and the server's bind, which made a
/// jitsudod of the chaos tests fail with "Address already in use". Each port is handed out
/// once per process, and only after a bind shows it free.
pub fn free_port() -> u16 {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    static HANDED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const LOW: u16 = 10_000;
    if first_ephemeral > LOW + 1_000 {
        let span = u128::from(first_ephemeral - LOW);
        let mut handed = HANDED.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..1_000 {
            let port = LOW + (uuid::Uuid::new_v4().as_u128() % span) as u16;
            if !handed.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                handed.insert(port);
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 must work on a test machine")
}
