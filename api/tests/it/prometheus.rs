//! The operator's view, checked with the real thing: Debian's Prometheus scrapes a running
//! jitsudod with cluster-config/prometheus's rules loaded, and its HTTP API must show the
//! series docs/metrics.md documents, the rules evaluating without error, and every metric the
//! Grafana dashboard queries. promtool checks the rules and runs their unit tests.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use jitsudo_testkit::prometheus::{Prometheus, Target, promtool};

use crate::harness::*;

fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cluster-config/prometheus")
}

/// Every metric name in docs/metrics.md's tables.
fn documented() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md"),
    )
    .expect("docs/metrics.md");
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(name, _)| name.to_owned())
        .filter(|name| name.starts_with("jitsudo_"))
        .collect()
}

/// The metric (or recording rule) names a PromQL expression reads, histogram suffixes kept.
fn names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("jitsudo") {
        let tail = &rest[at..];
        if !(tail.starts_with("jitsudo_") || tail.starts_with("jitsudo:")) {
            // A label value (`job="jitsudo"`), not a metric.
            rest = &tail["jitsudo".len()..];
            continue;
        }
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_rules_pass_promtool_and_their_unit_tests() {
    let dir = config_dir();
    let checked =
        promtool(&["check", "rules", "jitsudo.rules.yml"], &dir).expect("promtool check rules");
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested =
        promtool(&["test", "rules", "jitsudo.rules.test.yml"], &dir).expect("promtool test rules");
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_sees_every_documented_series_evaluates_the_rules_and_backs_the_dashboard()
 {
    let j = Jitsudo::start().await;
    // Something to measure: a grant that expires (provider calls, expiry lags, outbox rows).
    let r = j.active_viewer("alice", "cloud", 1).await;
    j.wait_state(&r.id, St::Expired).await;

    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, j.ca_pem()).expect("CA file");
    let rules = config_dir().join("jitsudo.rules.yml");
    let target = Target {
        address: format!("localhost:{}", j.addr.port()),
        https_ca: Some(ca),
    };
    let prom = tokio::task::spawn_blocking(move || Prometheus::start(&[target], &[rules]))
        .await
        .expect("task")
        .expect("prometheus starts");

    // Scraped, and the rules evaluated at least once after the scrape had data.
    let query = |expr: &str| prom.query(expr).unwrap_or_else(|e| panic!("{expr}: {e:#}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = query(r#"up{job="jitsudo"} == 1"#);
        let recorded = query("jitsudo:shard_leases_owned:sum");
        if !up.is_empty() && !recorded.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no successful scrape within 60 s: targets {:?}\n{}",
            prom.api("/api/v1/targets").ok(),
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let names = || -> BTreeSet<String> {
        prom.api("/api/v1/label/__name__/values").expect("names")["data"]
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let present_in = |names: &BTreeSet<String>, name: &str| {
        names.contains(name)
            || ["_bucket", "_count", "_sum"]
                .iter()
                .any(|s| names.contains(&format!("{name}{s}")))
    };
    let scraped = names();
    let present = |name: &str| present_in(&scraped, name);

    // Every documented series, from the first scrape.
    let missing: Vec<String> = documented().into_iter().filter(|n| !present(n)).collect();
    assert!(
        missing.is_empty(),
        "documented but not scraped: {missing:?}"
    );

    // Actor health for every kind, with the kinds' own label values.
    let kinds: BTreeSet<String> = query("jitsudo_actors_live")
        .iter()
        .filter_map(|s| s["metric"]["kind"].as_str().map(str::to_owned))
        .collect();
    let expected: BTreeSet<String> = jitsudo_actors::stats::KINDS
        .iter()
        .map(|k| (*k).to_owned())
        .collect();
    assert_eq!(kinds, expected, "jitsudo_actors_live kinds");
    let live = |kind: &str| -> f64 {
        query(&format!(r#"sum(jitsudo_actors_live{{kind="{kind}"}})"#))
            .first()
            .and_then(|s| s["value"][1].as_str()?.parse().ok())
            .unwrap_or(0.0)
    };
    for kind in [
        "node",
        "membership",
        "policy",
        "notifier",
        "audit_sequencer",
        "shard",
    ] {
        assert!(live(kind) >= 1.0, "no live {kind} actor scraped");
    }

    // Expiry lags as histograms with buckets (the SLO rules count under le="1"), the
    // provider's calls by op and outcome, the outbox by sink.
    let value = |expr: &str| -> f64 {
        query(expr)
            .first()
            .and_then(|s| s["value"][1].as_str()?.parse().ok())
            .unwrap_or_else(|| panic!("{expr}: no sample"))
    };
    assert!(value("sum(jitsudo_expiry_issue_lag_seconds_count)") >= 1.0);
    assert!(value("sum(jitsudo_expiry_lag_seconds_count)") >= 1.0);
    assert!(
        !query(r#"jitsudo_expiry_issue_lag_seconds_bucket{le=~"1|1\\.0"}"#).is_empty(),
        "the 1 s bucket the SLO rules count under"
    );
    assert!(
        value(r#"sum(jitsudo_provider_calls_total{provider="cloud",op="grant",outcome="ok"})"#)
            >= 1.0
    );
    assert!(
        value(r#"sum(jitsudo_provider_calls_total{provider="cloud",op="revoke",outcome="ok"})"#)
            >= 1.0
    );
    assert_eq!(
        query(r#"jitsudo_provider_calls_total{provider="demo",op="grant",outcome="permanent"}"#)
            .len(),
        1,
        "an error outcome's series exists before any error"
    );
    assert!(
        !query("jitsudo_outbox_depth").is_empty(),
        "outbox depth by sink"
    );
    assert!(
        !query("jitsudo_outbox_dead_letters").is_empty(),
        "dead letters by sink"
    );

    // Every rule evaluates without error against the real series. (Whether an alert fires
    // is the unit tests' business: this process runs other tests' servers too.)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let groups = prom.api("/api/v1/rules").expect("rules")["data"]["groups"].clone();
        let rules: Vec<serde_json::Value> = groups
            .as_array()
            .expect("groups")
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        assert!(rules.len() >= 20, "{} rules loaded", rules.len());
        for r in &rules {
            assert_ne!(
                r["health"], "err",
                "rule {} failed: {}",
                r["name"], r["lastError"]
            );
        }
        // Every group has been evaluated once all say ok (before: "unknown").
        if rules.iter().all(|r| r["health"] == "ok") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rules never all evaluated: {rules:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every metric the dashboard queries is scraped (or recorded by the rules).
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(config_dir().join("jitsudo-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            queried.extend(names_in(t["expr"].as_str().expect("expr")));
        }
    }
    assert!(queried.len() >= 40, "{} metrics queried", queried.len());
    // Rate-based recording rules have a series once two scrapes are in their window.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = names();
        let unknown: Vec<&String> = queried.iter().filter(|n| !present_in(&now, n)).collect();
        if unknown.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard queries metrics nothing exports or records: {unknown:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(prom);
    j.stop().await.expect("stops");
}
