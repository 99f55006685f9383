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

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

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
    let mut child = Command::new(bin.join("moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
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
    // Ready when the server says it runs (Werkzeug's " * Running on http://…" on stderr);
    // the reader then keeps draining stderr so that moto never blocks on a full pipe.
    let stderr = child.stderr.take().context("moto_server's stderr")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<String>();
    std::thread::Builder::new()
        .name("moto-stderr".into())
        .spawn(move || {
            let mut tail = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if line.contains("Running on") {
                    let _ = ready_tx.send(String::new());
                }
                tail.push(line);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
            // Exited before saying so: what it printed last.
            let _ = ready_tx.send(tail.join("\n"));
        })
        .context("spawning moto's stderr reader")?;
    match ready_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(tail) if tail.is_empty() => {}
        Ok(tail) => bail!("moto_server exited while starting:\n{tail}"),
        Err(_) => bail!("moto_server on port {port} did not start within 60 s"),
    }
    Ok(Moto {
        url: format!("http://127.0.0.1:{port}"),
        bin,
        _child: child,
    })
}

/// A twelve-digit account id no other test uses.
pub fn fresh_account() -> String {
    let n = uuid::Uuid::new_v4().as_u128() % 900_000_000_000 + 100_000_000_000;
    format!("{n}")
}
