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
/// When Debian no longer offers the pinned version (a point release replaced it), the one
/// it offers is used if it packages the same upstream release (`2.42.0` of
/// `2.42.0+ds-5+deb12u1`), and a line on stderr says so; otherwise this fails.
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

/// The upstream release a Debian version packages: `2.42.0` of `2.42.0+ds-5+deb12u1`.
fn upstream(version: &str) -> &str {
    let v = version.split_once(':').map_or(version, |(_, v)| v);
    let v = v.rsplit_once('-').map_or(v, |(u, _)| u);
    v.split_once("+ds").map_or(v, |(u, _)| u)
}

fn ensure(target: &Path, name: &str, version: &str) -> Result<PathBuf> {
    // Keyed by the pin: a new pin fetches again.
    let done = target.join(format!("{name}_{version}.root"));
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
    if let Err(first) = download(&work, &pinned) {
        let candidate = candidate(name)?;
        if upstream(&candidate) != upstream(version) {
            bail!(
                "{pinned} could not be fetched ({first:#}), and Debian offers {candidate}, another upstream release: update the pin in testkit/src/debian.rs"
            );
        }
        eprintln!(
            "testkit: {pinned} could not be fetched ({first:#}); using {candidate}, the same upstream release"
        );
        download(&work, &format!("{name}={candidate}"))?;
    }
    let deb = fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| {
            format!(
                "apt-get download {pinned} left no .deb in {}",
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

/// The version of `name` Debian's package lists offer (`apt-cache policy`).
fn candidate(name: &str) -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["policy", name])
        .output()
        .context("apt-cache policy: cannot run it (is this a Debian machine?)")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Candidate:")
                .map(|v| v.trim().to_owned())
        })
        .filter(|v| v != "(none)" && !v.is_empty())
        .with_context(|| format!("Debian's package lists offer no {name} (apt-get update?)"))
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_upstream_release_of_a_debian_version() {
        assert_eq!(super::upstream("2.42.0+ds-5+deb12u1"), "2.42.0");
        assert_eq!(super::upstream("0.9.10-2.1"), "0.9.10");
        assert_eq!(super::upstream("1:8.2302.0-1"), "8.2302.0");
    }
}
