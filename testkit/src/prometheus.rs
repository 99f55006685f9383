//! A real Prometheus (Debian's package, see [`crate::debian`]) scraping the servers a test
//! runs, every second, with the rule files it is given; its HTTP API answers the test's
//! queries. Stopped (and its data deleted) on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// A scrape target: `host:port` with its scheme (an `https` one is scraped trusting `ca`).
pub struct Target {
    pub address: String,
    pub https_ca: Option<PathBuf>,
}

pub struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

/// The directory holding `prometheus` and `promtool`.
pub fn bin_dir() -> Result<PathBuf> {
    Ok(crate::debian::package(crate::debian::PROMETHEUS)?.join("usr/bin"))
}

/// `promtool` with `args`; answers its output, or fails with it.
pub fn promtool(args: &[&str], cwd: &Path) -> Result<String> {
    let out = Command::new(bin_dir()?.join("promtool"))
        .args(args)
        .current_dir(cwd)
        .output()
        .context("running promtool")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("promtool {} failed:\n{text}", args.join(" "));
    }
    Ok(text)
}

impl Prometheus {
    /// Starts Prometheus on a free port, scraping `targets` (job `jitsudo`) every second and
    /// evaluating `rule_files` every second; waits until it is ready.
    pub fn start(targets: &[Target], rule_files: &[PathBuf]) -> Result<Prometheus> {
        let dir = tempfile::tempdir().context("temp dir")?;
        let mut scrape = String::new();
        for (i, t) in targets.iter().enumerate() {
            let tls = match &t.https_ca {
                Some(ca) => format!(
                    "    scheme: https\n    tls_config:\n      ca_file: {}\n      server_name: localhost\n",
                    ca.display()
                ),
                None => String::new(),
            };
            scrape.push_str(&format!(
                "  - job_name: jitsudo-{i}\n    metrics_path: /metrics\n{tls}    static_configs:\n      - targets: [\"{}\"]\n        labels:\n          job: jitsudo\n",
                t.address
            ));
        }
        let rules: String = rule_files
            .iter()
            .map(|p| format!("  - {}\n", p.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}scrape_configs:\n{scrape}",
            if rules.is_empty() {
                "  []\n".to_owned()
            } else {
                rules
            }
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).context("writing prometheus.yml")?;
        let port = crate::free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(bin_dir()?.join("prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let mut p = Prometheus {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = p.get("/-/ready") {
                return Ok(p);
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                bail!("prometheus exited ({status}): {}", p.log());
            }
            if Instant::now() > deadline {
                bail!("prometheus not ready within 60 s: {}", p.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The tail of Prometheus's own log.
    pub fn log(&self) -> String {
        let text =
            std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(20).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// An instant query's `data.result` (the API's `status` must be `success`).
    pub fn query(&self, expr: &str) -> Result<Vec<Value>> {
        let q: String =
            percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let v = self.api(&format!("/api/v1/query?query={q}"))?;
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// A GET of the HTTP API, as JSON whose `status` is `success`.
    pub fn api(&self, path: &str) -> Result<Value> {
        let (status, body) = self.get(path)?;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("GET {path} answered {status}: {body}"))?;
        if v["status"] != "success" {
            bail!("GET {path} answered {status}: {body}");
        }
        Ok(v)
    }

    fn get(&self, path: &str) -> Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.port
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((status, body.to_owned()))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
