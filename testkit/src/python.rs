//! Pinned Python tools for tests (independent clients that cross-check our fakes): one venv
//! under the workspace's `target/pyenv`, created once and shared by every test process and
//! thread; a pin is installed only the first time it is asked for. A file lock serializes
//! creation and installs, so concurrent test binaries neither race nor install twice.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const STAMP: &str = "testkit-pins.txt";

/// The workspace target directory: `CARGO_TARGET_DIR` (relative to the workspace root) when
/// set, else `<workspace>/target`.
pub(crate) fn target_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    }
}

/// Ensures a venv with `packages` (pip requirement specifiers, e.g. `"kubernetes==37.0.2"`)
/// and returns its `bin` directory. Needs `python3` with the `venv` module and a reachable
/// package index; failures name the step and end with the tail of pip's output.
pub fn venv(packages: &[&str]) -> Result<PathBuf> {
    let target = target_dir();
    fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    let root = target.join("pyenv");
    // The lock lives beside the venv: `venv --clear` would delete it from inside.
    let lock_path = target.join("pyenv.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    let result = ensure(&root, packages);
    let _ = lock.unlock();
    result
}

fn ensure(root: &Path, packages: &[&str]) -> Result<PathBuf> {
    let bin = root.join("bin");
    let python = bin.join("python");
    let stamp = root.join(STAMP);
    // The stamp is written only after the venv works, so a half-made venv is rebuilt.
    if !python.exists() || !stamp.exists() {
        run(
            Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg("--clear")
                .arg(root),
            "python3 -m venv",
        )?;
        File::create(&stamp).with_context(|| format!("creating {}", stamp.display()))?;
    }
    let installed: BTreeSet<String> = fs::read_to_string(&stamp)
        .with_context(|| format!("reading {}", stamp.display()))?
        .lines()
        .map(str::to_string)
        .collect();
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !installed.contains(*p))
        .collect();
    if !missing.is_empty() {
        run(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                    "--quiet",
                ])
                .args(&missing)
                .env("PIP_NO_INPUT", "1"),
            &format!("pip install {}", missing.join(" ")),
        )?;
        let mut f = OpenOptions::new()
            .append(true)
            .open(&stamp)
            .with_context(|| format!("opening {}", stamp.display()))?;
        for p in &missing {
            writeln!(f, "{p}").with_context(|| format!("writing {}", stamp.display()))?;
        }
    }
    Ok(bin)
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: could not start it (is python3 installed?)"))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    bail!("{what} failed ({}):\n{tail}", out.status)
}
