//! A real AWS emulator for the AWS provider's tests: PyPI `moto[server]`, installed pinned
//! into the test venv ([`crate::python::venv`]) and started once per test process on
//! 127.0.0.1 (a free port), stopped by a watchdog when the process ends.
//!
//! Tests keep apart by account, not by server: moto keeps every account's IAM apart and
//! takes the account of a call from its credentials, so credentials of a role session
//! assumed in a fresh account ([`fresh_account`]) see only that account.
//!
//! What moto does not do (measured with 5.2.5): it checks no SigV4 signature, enforces no
//! IAM size limit (inline 10,240 characters per role, managed 6,144), ignores
//! `SourceIdentity` and session tags on `AssumeRole`, and evaluates no policy at all.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The pins of the AWS tests' Python tools: the emulator and the AWS CLI.
pub const PINS: [&str; 2] = ["moto[server]==5.2.5", "awscli==1.46.3"];

/// The account moto answers for credentials it does not know.
pub const DEFAULT_ACCOUNT: &str = "123456789012";

pub struct Moto {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The venv's `bin` (for `aws`).
    pub bin: PathBuf,
    _child: Child,
}

impl Moto {
    /// The AWS CLI of the venv.
    pub fn aws_cli(&self) -> PathBuf {
        self.bin.join("aws")
    }
}

static MOTO: OnceLock<std::result::Result<Moto, String>> = OnceLock::new();

/// The process's moto server, started on first use (a few seconds, more the first time
/// the venv is made). Fails with the step that failed.
pub fn moto() -> Result<&'static Moto> {
    MOTO.get_or_init(|| start().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("starting moto_server: {e}"))
}

fn start() -> Result<Moto> {
    let bin = crate::python::venv(&PINS)?;
    let port = crate::free_port();
    let child = Command::new(bin.join("moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning moto_server")?;
    // Watchdog: stop moto when this process is gone, whatever way it ends.
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; kill {moto} 2>/dev/null",
        pid = std::process::id(),
        moto = child.id(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning the moto watchdog")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if ready(port) {
            break;
        }
        if Instant::now() > deadline {
            bail!("moto_server on port {port} did not answer within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Moto {
        url: format!("http://127.0.0.1:{port}"),
        bin,
        _child: child,
    })
}

/// moto's own API answers once the server is up.
fn ready(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(
        b"GET /moto-api/data.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// A twelve-digit account id no other test uses.
pub fn fresh_account() -> String {
    let n = uuid::Uuid::new_v4().as_u128() % 900_000_000_000 + 100_000_000_000;
    format!("{n}")
}
