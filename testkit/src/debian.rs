//! Tools from Debian's packages for tests (Prometheus and promtool, libfaketime), without
//! installing them: the pinned `.deb` is fetched with `apt-get download` and unpacked with
//! `dpkg-deb -x` under the workspace's `target/debian/`, once per machine. A file lock
//! serialises fetching, so concurrent test binaries neither race nor fetch twice; the root
//! is written only after unpacking finished, so a half-unpacked package is fetched again.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Prometheus (and promtool) as Debian 12 packages it.
pub const PROMETHEUS: (&str, &str) = ("prometheus", "2.42.0+ds-5+deb12u1");
/// libfaketime, whose `LD_PRELOAD` library moves a process's wall clock.
pub const LIBFAKETIME: (&str, &str) = ("libfaketime", "0.9.10-2.1");

/// The directory `package` (name, version) is unpacked in (its `usr/...` below it).
///
/// When Debian no longer offers the pinned version (a point release replaced it), the
/// version it offers is used instead and a line on stderr says so.
pub fn package((name, version): (&str, &str)) -> Result<PathBuf> {
    let target = crate::python::target_dir().join("debian");
    fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    let lock_path = target.join(format!("{name}.lock"));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    let result = ensure(&target, name, version);
    let _ = lock.unlock();
    result
}

fn ensure(target: &Path, name: &str, version: &str) -> Result<PathBuf> {
    let done = target.join(format!("{name}.root"));
    if let Ok(root) = fs::read_to_string(&done) {
        let root = PathBuf::from(root.trim());
        if root.is_dir() {
            return Ok(root);
        }
    }
    let work = target.join(format!("{name}.download"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let pinned = format!("{name}={version}");
    let fetched = download(&work, &pinned).or_else(|first| {
        // The pin is gone from the archive, or the package lists are missing: the
        // version Debian offers now is the next best thing.
        eprintln!(
            "testkit: {pinned} could not be fetched ({first:#}); using the version Debian offers"
        );
        download(&work, name)
    })?;
    let deb = fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| {
            format!(
                "apt-get download {fetched} left no .deb in {}",
                work.display()
            )
        })?;
    let stem = deb
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_owned());
    let root = target.join(stem);
    let _ = fs::remove_dir_all(&root);
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        "dpkg-deb -x",
    )?;
    fs::write(&done, root.to_string_lossy().as_bytes())
        .with_context(|| format!("writing {}", done.display()))?;
    let _ = fs::remove_dir_all(&work);
    Ok(root)
}

/// `apt-get download spec` into `dir`; answers the spec fetched.
fn download(dir: &Path, spec: &str) -> Result<String> {
    run(
        Command::new("apt-get")
            .args(["download", "-q", spec])
            .current_dir(dir),
        &format!("apt-get download {spec}"),
    )?;
    Ok(spec.to_owned())
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run it (is this a Debian machine?)"))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        bail!(
            "{what} failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(())
}
