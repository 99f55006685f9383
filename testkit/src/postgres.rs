//! A PostgreSQL database per test. PostgreSQL tests never skip: when no server can be had,
//! they fail with a message that says how to provide one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::OnceCell;

/// One fresh, empty database. Dropping it drops the database (best effort).
pub struct TestDatabase {
    pub url: String,
    pub name: String,
    admin_url: String,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs outside async context guarantees: use a private runtime on a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(mut c) = PgConnection::connect(&admin).await {
                        let _ = c
                            .execute(sqlx::AssertSqlSafe(format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            )))
                            .await;
                    }
                });
            }
        })
        .join();
    }
}

/// Creates a fresh database for one test.
pub async fn postgres() -> TestDatabase {
    match try_postgres().await {
        Ok(db) => db,
        Err(e) => panic!(
            "PostgreSQL is required for this test and none could be had: {e:#}.\n\
             Set DATABASE_URL=postgres://USER@HOST:PORT/postgres to use a running server, \
             or install the PostgreSQL server binaries (initdb, pg_ctl) so testkit can start \
             a private one."
        ),
    }
}

async fn try_postgres() -> Result<TestDatabase> {
    database_on(admin_url().await?).await
}

async fn database_on(admin_url: String) -> Result<TestDatabase> {
    let name = format!("jt_{}", uuid::Uuid::now_v7().simple());
    let mut conn = PgConnection::connect(&admin_url)
        .await
        .with_context(|| format!("connecting to {}", redact(&admin_url)))?;
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .await
        .context("creating the test database")?;
    let url = with_database(&admin_url, &name);
    Ok(TestDatabase {
        url,
        name,
        admin_url,
    })
}

static ADMIN_URL: OnceCell<String> = OnceCell::const_new();
static PRIVATE: OnceLock<PrivatePostgres> = OnceLock::new();

async fn admin_url() -> Result<String> {
    ADMIN_URL
        .get_or_try_init(|| async {
            if let Ok(url) = std::env::var("DATABASE_URL") {
                return Ok(url);
            }
            let cluster = tokio::task::spawn_blocking(PrivatePostgres::start)
                .await
                .map_err(|e| anyhow!("starting the private PostgreSQL panicked: {e}"))??;
            let url = cluster.url.clone();
            let _ = PRIVATE.set(cluster);
            Ok(url)
        })
        .await
        .cloned()
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // postgres://user@host:port[/db]
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

fn redact(url: &str) -> String {
    // postgres://user:password@host → hide the password.
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if url[s + 3..at].contains(':') => {
            let colon = s + 3 + url[s + 3..at].find(':').unwrap_or(0);
            format!("{}:***{}", &url[..colon], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// A PostgreSQL server of its own in a temp dir (the installed `initdb` and `pg_ctl`, a free
/// port on 127.0.0.1, trust auth, fsync off): the shared one when `DATABASE_URL` is unset,
/// and for tests that stop and start the server itself. Stopped when dropped, and by a
/// watchdog when the test process ends whatever way.
pub struct PrivatePostgres {
    /// The `postgres` database of the server (an admin URL).
    pub url: String,
    bin: PathBuf,
    data: PathBuf,
    opts: String,
    log: PathBuf,
    as_root: bool,
    _dir: tempfile::TempDir,
}

impl PrivatePostgres {
    /// initdb + start (blocking: a second or two).
    pub fn start() -> Result<Self> {
        let bin = pg_bin_dir().context("finding initdb and pg_ctl")?;
        let dir = tempfile::Builder::new().prefix("jitsudo-pg-").tempdir()?;
        let data = dir.path().join("data");
        let port = crate::free_port();
        let as_root = is_root();
        if as_root {
            // initdb refuses to run as root: the cluster belongs to the postgres user.
            chown_postgres(dir.path())?;
        }
        run(
            wrap(as_root, &bin.join("initdb"))
                .args(["-D"])
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"]),
            "initdb",
        )?;
        let opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
            dir.path().display()
        );
        let server = PrivatePostgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            log: dir.path().join("log"),
            bin,
            data,
            opts,
            as_root,
            _dir: dir,
        };
        server.resume()?;
        // Watchdog: stop the server when this process is gone, whatever way it ends.
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}",
            pid = std::process::id(),
            stop = shell_stop(as_root, &server.pg_ctl(), &server.data),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("spawning the PostgreSQL watchdog")?;
        Ok(server)
    }

    fn pg_ctl(&self) -> PathBuf {
        self.bin.join("pg_ctl")
    }

    /// Stops the server the hard way (`pg_ctl -m immediate`: every backend killed at once,
    /// crash recovery on the next start). Blocking.
    pub fn stop(&self) -> Result<()> {
        run(
            wrap(self.as_root, &self.pg_ctl())
                .args(["-D"])
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"]),
            "pg_ctl stop",
        )
    }

    /// Starts the (stopped) server again on the same port and data; returns once it accepts
    /// connections. Blocking.
    pub fn resume(&self) -> Result<()> {
        run(
            wrap(self.as_root, &self.pg_ctl())
                .args(["-D"])
                .arg(&self.data)
                .args(["-o", &self.opts, "-l"])
                .arg(&self.log)
                .args(["-w", "-t", "60", "start"]),
            "pg_ctl start",
        )
    }

    /// A fresh database on this server.
    pub async fn database(&self) -> Result<TestDatabase> {
        database_on(self.url.clone()).await
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn shell_stop(as_root: bool, pg_ctl: &Path, data: &Path) -> String {
    let cmd = format!(
        "{} -D {} -m immediate stop",
        pg_ctl.display(),
        data.display()
    );
    if as_root {
        format!("runuser -u postgres -- {cmd}")
    } else {
        cmd
    }
}

fn wrap(as_root: bool, program: &Path) -> Command {
    if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn chown_postgres(path: &Path) -> Result<()> {
    run(
        Command::new("chown").args(["-R", "postgres:"]).arg(path),
        "chown",
    )
}

/// `PG_BIN` if set, else the newest `/usr/lib/postgresql/*/bin`, else whatever `PATH` has.
fn pg_bin_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let out = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if path.is_empty() {
        bail!("no initdb on PATH and no /usr/lib/postgresql/*/bin");
    }
    Ok(PathBuf::from(path)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_replaces_the_path_of_the_admin_url() {
        assert_eq!(
            with_database("postgres://p@h:5/postgres", "x"),
            "postgres://p@h:5/x"
        );
        assert_eq!(with_database("postgres://p@h:5", "x"), "postgres://p@h:5/x");
        assert_eq!(
            with_database("postgres://p@h:5/db?sslmode=disable", "x"),
            "postgres://p@h:5/x?sslmode=disable"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
