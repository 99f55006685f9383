//! Criterion micro-benchmarks of the engine's pure hot paths (docs/benchmarks.md):
//!
//! - `policy`: the dev example policy set (`dev_example_policies()`), compiled once, evaluated
//!   for typical inputs (`PolicySet::evaluate`, `PolicySet::approver_allowed`);
//! - `audit`: the audit chain's canonical encoding and hash over 10,000 in-memory
//!   `AuditRecord`s with realistic (~200 byte) details, and their verification with
//!   `ChainVerifier`;
//! - `domain`: `domain::create` and `domain::step` for the transitions every request takes
//!   (approve, grant succeeded, expiry, revoke confirmed).
//!
//! Run: `cargo bench -p jitsudo-actors --bench engine` (a filter such as `-- policy` runs one
//! group). After criterion's own report this prints a summary of the medians (criterion's
//! `estimates.json`) with the targets.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, TimeZone, Utc};
use criterion::{BatchSize, Criterion, SamplingMode, Throughput};
use jitsudo_actors::domain::{
    self, Decider, Event, NewRequest, Principal, Request, RequestId, RequestSpec, Rules, State,
    Transition,
};
use jitsudo_actors::policy::{
    self, ApprovalInput, Decision, PolicyInput, PolicySet, RequestInput, dev_example_policies,
};
use jitsudo_proto::audit::{
    AuditRecord, ChainLink, ChainVerifier, GENESIS, canonical_bytes, chain_hash,
};
use regorus::utils::limits::ExecutionTimerConfig;
use uuid::Uuid;

/// jitsudod's allocator, so that the numbers stand for the server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Events in the in-memory chain benchmark.
const CHAIN_EVENTS: usize = 10_000;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 9, 30, 0).unwrap()
}

fn person(subject: &str, groups: &[&str]) -> policy::Principal {
    policy::Principal {
        subject: subject.into(),
        email: Some(format!("{subject}@example.com")),
        email_verified: true,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        trust_tier: 0,
    }
}

fn alice() -> policy::Principal {
    person("alice", &["engineering"])
}

fn bob() -> policy::Principal {
    person("bob", &["approvers", "engineering"])
}

/// A request to the `demo` provider as a requester would send it.
fn request(role: &str, duration_seconds: i64) -> RequestInput {
    RequestInput {
        provider: "demo".into(),
        role: role.into(),
        scope: "acct-123456789012".into(),
        duration_seconds,
        reason: Some("investigating INC-4711: elevated 5xx on checkout".into()),
        ticket: None,
        break_glass: false,
        metadata: BTreeMap::from([
            ("team".to_string(), "payments".to_string()),
            ("source".to_string(), "cli".to_string()),
        ]),
    }
}

fn policy_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy");
    g.sample_size(20);
    g.bench_function("compile_examples", |b| {
        b.iter(|| PolicySet::compile(black_box(dev_example_policies())).unwrap())
    });
    g.sample_size(100);
    let set = PolicySet::compile(dev_example_policies()).expect("the example policies compile");

    // Auto-approved viewer (the cheapest path through the approval rules).
    let viewer = PolicyInput::new(alice(), request("viewer", 1800), now());
    // Typical: a role that needs one approval from `approvers`.
    let editor = PolicyInput::new(alice(), request("editor", 7200), now());
    // An admin role: reason, ticket pattern (a regex compiled per evaluation), two approvals.
    let mut admin_req = request("admin", 3600);
    admin_req.ticket = Some("OPS-1234".into());
    let admin = PolicyInput::new(alice(), admin_req, now());
    for (name, input) in [
        ("evaluate_viewer", &viewer),
        ("evaluate_editor", &editor),
        ("evaluate_admin", &admin),
    ] {
        let d = set.evaluate(input).unwrap();
        assert!(d.eligible, "{name}: {:?}", d.deny_reasons);
        g.bench_function(name, |b| b.iter(|| set.evaluate(black_box(input)).unwrap()));
    }

    // The approve path: may bob approve alice's editor request (one approval recorded)?
    let approving = editor
        .clone()
        .with_approver(bob())
        .with_approvals(vec![ApprovalInput {
            subject: "dave".into(),
            email: Some("dave@example.com".into()),
            at: now(),
        }]);
    assert!(set.approver_allowed(&approving).unwrap());
    g.bench_function("approver_allowed_editor", |b| {
        b.iter(|| set.approver_allowed(black_box(&approving)).unwrap())
    });
    // What one request costs in policy over its life: the create's evaluation plus one
    // approver check.
    g.bench_function("evaluate_plus_approver_allowed_editor", |b| {
        b.iter(|| {
            let d = set.evaluate(black_box(&editor)).unwrap();
            let ok = set.approver_allowed(black_box(&approving)).unwrap();
            (d, ok)
        })
    });
    g.finish();
    policy_breakdown(c, &editor);
}

/// A regorus engine prepared the way `PolicySet::compile` prepares it (prints gathered, the
/// 1 s execution timer checked every `check_interval` work units).
fn prepared_engine(check_interval: u32) -> regorus::Engine {
    let mut engine = regorus::Engine::new();
    engine.set_gather_prints(true);
    engine.set_execution_timer_config(ExecutionTimerConfig {
        limit: Duration::from_secs(1),
        check_interval: NonZeroU32::new(check_interval).unwrap_or(NonZeroU32::MIN),
    });
    for p in dev_example_policies() {
        engine.add_policy(p.name, p.rego).unwrap();
    }
    engine.eval_query("true".into(), false).unwrap();
    engine
}

/// Where the time of one `PolicySet::evaluate` goes: the input conversion, the clone of the
/// prepared engine, one rule, the execution timer's clock reads, and the alternative of one
/// query for the whole `jitsudo` tree instead of one `eval_rule` per rule.
fn policy_breakdown(c: &mut Criterion, input: &PolicyInput) {
    let every_unit = prepared_engine(1);
    let every_1024 = prepared_engine(1024);
    let value = regorus::Value::from(serde_json::to_value(input).unwrap());
    let mut g = c.benchmark_group("policy_breakdown");
    g.bench_function("input_to_regorus_value", |b| {
        b.iter(|| regorus::Value::from(serde_json::to_value(black_box(input)).unwrap()))
    });
    g.bench_function("engine_clone", |b| {
        b.iter(|| black_box(&every_unit).clone())
    });
    for (name, prepared) in [
        ("one_rule_timer_every_unit", &every_unit),
        ("one_rule_timer_every_1024", &every_1024),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut e = prepared.clone();
                e.set_input(value.clone());
                e.eval_rule("data.jitsudo.approval.max_duration_seconds".into())
                    .unwrap()
            })
        });
    }
    for (name, prepared) in [
        ("whole_tree_query_timer_every_unit", &every_unit),
        ("whole_tree_query_timer_every_1024", &every_1024),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut e = prepared.clone();
                e.set_input(value.clone());
                e.eval_query("data.jitsudo".into(), false).unwrap()
            })
        });
    }
    rvm_breakdown(&mut g, &value);
    g.finish();
}

/// The rules `PolicySet::evaluate` reads for the example set (all but `approver_allowed`).
const EVALUATED_RULES: [&str; 12] = [
    "data.jitsudo.eligibility.allow",
    "data.jitsudo.eligibility.deny",
    "data.jitsudo.approval.auto_approve",
    "data.jitsudo.approval.approvals_required",
    "data.jitsudo.approval.approver_groups",
    "data.jitsudo.approval.max_duration_seconds",
    "data.jitsudo.approval.max_total_duration_seconds",
    "data.jitsudo.approval.approval_timeout_seconds",
    "data.jitsudo.approval.extend_requires_approval",
    "data.jitsudo.approval.break_glass_allowed",
    "data.jitsudo.approval.reason_required",
    "data.jitsudo.approval.ticket_pattern",
];

/// The alternative of regorus' compiled VM (the `rvm` feature the workspace enables): the
/// same twelve rules as entry points of one program, evaluated for one input.
fn rvm_breakdown(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    value: &regorus::Value,
) {
    use regorus::languages::rego::compiler::Compiler;
    use regorus::rvm::vm::RegoVM;
    let mut engine = prepared_engine(1024);
    let entry: regorus::Rc<str> = regorus::Rc::from(EVALUATED_RULES[0]);
    let compiled = match engine.compile_with_entrypoint(&entry) {
        Ok(c) => c,
        Err(e) => {
            println!("rvm: the example set does not compile for the VM: {e}");
            return;
        }
    };
    let program = match Compiler::compile_from_policy(&compiled, &EVALUATED_RULES) {
        Ok(p) => p,
        Err(e) => {
            println!("rvm: the example set does not compile for the VM: {e}");
            return;
        }
    };
    let run = |vm: &mut RegoVM| -> Vec<regorus::Value> {
        vm.set_input(value.clone());
        EVALUATED_RULES
            .iter()
            .map(|r| {
                vm.execute_entry_point_by_name(r)
                    .unwrap_or(regorus::Value::Undefined)
            })
            .collect()
    };
    let mut vm = RegoVM::new_with_policy(compiled.clone());
    vm.load_program(program.clone());
    if vm.set_data(regorus::Value::new_object()).is_err() {
        return;
    }
    // The VM must agree with the interpreter before its time means anything.
    let mut interp = engine.clone();
    interp.set_input(value.clone());
    let expected: Vec<regorus::Value> = EVALUATED_RULES
        .iter()
        .map(|r| {
            interp
                .eval_rule(r.to_string())
                .unwrap_or(regorus::Value::Undefined)
        })
        .collect();
    let got = run(&mut vm);
    if got != expected {
        println!(
            "rvm: results differ from the interpreter; not benchmarked:\n  vm {got:?}\n  interpreter {expected:?}"
        );
        return;
    }
    g.bench_function("rvm_12_rules_reused_vm", |b| b.iter(|| run(&mut vm)));
    g.bench_function("rvm_12_rules_fresh_vm", |b| {
        b.iter(|| {
            let mut vm = RegoVM::new_with_policy(compiled.clone());
            vm.load_program(program.clone());
            let _ = vm.set_data(regorus::Value::new_object());
            run(&mut vm)
        })
    });
}

/// Details as the engine writes them (~200 bytes of JSON text), varied per event.
fn details(i: usize, request: Uuid, grant: Uuid) -> (String, String) {
    let (kind, body) = match i % 5 {
        0 => (
            "request.created",
            format!(
                r#"{{"from":null,"to":"PENDING","provider":"aws-prod","role":"editor","scope":"acct-{:012}","duration_seconds":7200,"reason":"investigating INC-{i}","ticket":null,"break_glass":false}}"#,
                i % 1000
            ),
        ),
        1 => (
            "request.approved",
            format!(
                r#"{{"from":"PENDING","to":"APPROVED","comment":"looks fine, go ahead (#{i})","approvals":1,"approvals_required":1,"request_id":"{request}","approver":"bob"}}"#
            ),
        ),
        2 => (
            "request.active",
            format!(
                r#"{{"from":"APPROVED","to":"ACTIVE","grant_id":"{grant}","provider_ref":"arn:aws:sts::123456789012:assumed-role/editor/{i}","duration_seconds":7200}}"#
            ),
        ),
        3 => (
            "request.ending",
            format!(
                r#"{{"from":"ACTIVE","to":"ENDING","expires_at":"2026-03-02T11:30:00.123456Z","grant_id":"{grant}","cause":"expired","request_id":"{request}"}}"#
            ),
        ),
        _ => (
            "request.ended",
            format!(
                r#"{{"from":"ENDING","to":"EXPIRED","grant_id":"{grant}","evidence":"revoke","request_id":"{request}","ended_by":"system","note":"{i}"}}"#
            ),
        ),
    };
    (kind.to_string(), body)
}

fn audit_records(n: usize) -> Vec<AuditRecord> {
    let base = now().timestamp_micros();
    let mut request = Uuid::now_v7();
    let mut grant = Uuid::now_v7();
    (0..n)
        .map(|i| {
            if i % 5 == 0 {
                request = Uuid::now_v7();
                grant = Uuid::now_v7();
            }
            let (kind, details) = details(i, request, grant);
            AuditRecord {
                id: Uuid::now_v7(),
                at_micros: base + i as i64 * 1_000,
                kind,
                actor: if i % 5 == 1 {
                    "bob".into()
                } else {
                    "system".into()
                },
                request_id: Some(request),
                request_version: Some((i % 5) as i64 + 1),
                node: "jitsudod-1".into(),
                details,
            }
        })
        .collect()
}

fn chain(records: &[AuditRecord]) -> Vec<ChainLink> {
    let mut prev = GENESIS;
    records
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let h = chain_hash(&prev, e);
            let link = ChainLink {
                seq: i as i64 + 1,
                prev_hash: prev.to_vec(),
                hash: h.to_vec(),
            };
            prev = h;
            link
        })
        .collect()
}

fn audit_benches(c: &mut Criterion) {
    let records = audit_records(CHAIN_EVENTS);
    let links = chain(&records);
    let avg_details = records.iter().map(|r| r.details.len()).sum::<usize>() / records.len();
    let avg_canonical = records
        .iter()
        .map(|r| canonical_bytes(r).len())
        .sum::<usize>()
        / records.len();
    println!(
        "audit: {CHAIN_EVENTS} events, details {avg_details} bytes and canonical encoding {avg_canonical} bytes on average"
    );
    let mut g = c.benchmark_group("audit");
    g.throughput(Throughput::Elements(CHAIN_EVENTS as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(30);
    g.bench_function("canonical_bytes_10k", |b| {
        b.iter(|| {
            let mut total = 0usize;
            for r in &records {
                total += canonical_bytes(black_box(r)).len();
            }
            total
        })
    });
    g.bench_function("chain_hash_10k", |b| {
        b.iter(|| {
            let mut prev = GENESIS;
            for r in &records {
                prev = chain_hash(&prev, black_box(r));
            }
            prev
        })
    });
    g.bench_function("verify_10k", |b| {
        b.iter(|| {
            let mut v = ChainVerifier::default();
            for (l, e) in links.iter().zip(&records) {
                v.check(black_box(l), Some(e)).unwrap();
            }
            v.last_seq()
        })
    });
    g.finish();
}

fn bob_decider() -> Decider {
    Decider {
        principal: Principal::new("bob")
            .with_groups(["approvers", "engineering"])
            .with_verified_email("bob@example.com"),
        approver_allowed: true,
        is_admin: false,
    }
}

fn spec() -> RequestSpec {
    RequestSpec {
        provider: "demo".into(),
        role: "editor".into(),
        scope: "acct-123456789012".into(),
        duration_seconds: 7200,
        reason: "investigating INC-4711: elevated 5xx on checkout".into(),
        ticket: None,
        break_glass: false,
        metadata: BTreeMap::from([
            ("team".to_string(), "payments".to_string()),
            ("source".to_string(), "cli".to_string()),
        ]),
    }
}

/// Commits a transition as the actor does: the store bumps the version and resolves the
/// times against its clock.
fn committed(tr: Transition, version: i64, at: DateTime<Utc>) -> Request {
    let mut req = tr.next;
    req.version = version;
    req.apply_times(&tr.times, at);
    req
}

fn domain_benches(c: &mut Criterion) {
    let rules = Rules::default();
    let set = PolicySet::compile(dev_example_policies()).expect("the example policies compile");
    let requester = Principal::new("alice")
        .with_groups(["engineering"])
        .with_verified_email("alice@example.com");
    let decision: Decision = set
        .evaluate(&PolicyInput::new(
            requester.policy_input(),
            spec().policy_input(),
            now(),
        ))
        .unwrap();
    assert!(decision.eligible && !decision.auto_approve && decision.approvals_required == 1);
    let new = NewRequest {
        id: RequestId::new(),
        requester,
        spec: spec(),
    };

    // A request through its whole life, each state as the actor holds it after the commit.
    let t0 = now();
    let pending = committed(
        domain::create(
            new.clone(),
            decision.clone(),
            t0,
            &rules,
            &Default::default(),
        )
        .unwrap(),
        1,
        t0,
    );
    let approve = Event::Approve {
        by: bob_decider(),
        comment: "looks fine".into(),
    };
    let t1 = t0 + chrono::Duration::seconds(60);
    let approved = committed(
        domain::step(&pending, approve.clone(), t1, &rules).unwrap(),
        2,
        t1,
    );
    assert_eq!(approved.state, State::Approved);
    let grant_id = approved.grants[0].grant_id;
    let granted = Event::GrantSucceeded {
        grant_id,
        provider_ref: format!("demo:{grant_id}"),
    };
    let t2 = t1 + chrono::Duration::seconds(1);
    let active = committed(
        domain::step(&approved, granted.clone(), t2, &rules).unwrap(),
        3,
        t2,
    );
    assert_eq!(active.state, State::Active);
    let expires_at = active.expires_at.unwrap();
    let expiry = Event::Expiry { expires_at };
    let t3 = expires_at + chrono::Duration::milliseconds(3);
    let ending = committed(
        domain::step(&active, expiry.clone(), t3, &rules).unwrap(),
        4,
        t3,
    );
    assert_eq!(ending.state, State::Ending);
    let confirmed = Event::RevokeSucceeded { grant_id };
    let t4 = t3 + chrono::Duration::milliseconds(40);
    let ended = domain::step(&ending, confirmed.clone(), t4, &rules).unwrap();
    assert_eq!(ended.next.state, State::Expired);

    let mut g = c.benchmark_group("domain");
    g.bench_function("create", |b| {
        b.iter_batched(
            || (new.clone(), decision.clone()),
            |(n, d)| domain::create(n, d, t0, &rules, &Default::default()).unwrap(),
            BatchSize::SmallInput,
        )
    });
    for (name, req, ev, at) in [
        ("step_approve", &pending, &approve, t1),
        ("step_grant_succeeded", &approved, &granted, t2),
        ("step_expiry", &active, &expiry, t3),
        ("step_revoke_confirmed", &ending, &confirmed, t4),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || ev.clone(),
                |ev| domain::step(black_box(req), ev, at, &rules).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// Where criterion writes its results: `$CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`,
/// else the workspace's `target/criterion`.
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("criterion")
}

/// Criterion's median (ns) of one benchmark, if it ran in this process.
fn median_ns(home: &Path, id: &str, since: SystemTime) -> Option<f64> {
    let path = home.join(id).join("new/estimates.json");
    let fresh = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t >= since);
    if !fresh {
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn human_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn summary(home: &Path, since: SystemTime) {
    let per_event = |id: &str| median_ns(home, id, since).map(|ns| ns / CHAIN_EVENTS as f64);
    let mut rows: Vec<(String, String, String)> = Vec::new();
    for (id, target) in [
        ("policy/compile_examples", ""),
        ("policy/evaluate_viewer", "≤ 50 µs"),
        ("policy/evaluate_editor", "≤ 50 µs"),
        ("policy/evaluate_admin", "≤ 50 µs"),
        ("policy/approver_allowed_editor", "≤ 50 µs"),
        ("policy/evaluate_plus_approver_allowed_editor", "≤ 50 µs"),
        ("policy_breakdown/input_to_regorus_value", ""),
        ("policy_breakdown/engine_clone", ""),
        ("policy_breakdown/one_rule_timer_every_unit", ""),
        ("policy_breakdown/one_rule_timer_every_1024", ""),
        ("policy_breakdown/whole_tree_query_timer_every_unit", ""),
        ("policy_breakdown/whole_tree_query_timer_every_1024", ""),
        ("policy_breakdown/rvm_12_rules_reused_vm", ""),
        ("policy_breakdown/rvm_12_rules_fresh_vm", ""),
        ("domain/create", ""),
        ("domain/step_approve", ""),
        ("domain/step_grant_succeeded", ""),
        ("domain/step_expiry", ""),
        ("domain/step_revoke_confirmed", ""),
    ] {
        if let Some(ns) = median_ns(home, id, since) {
            rows.push((id.into(), human_ns(ns), target.into()));
        }
    }
    let hash = per_event("audit/chain_hash_10k");
    let verify = per_event("audit/verify_10k");
    for (id, per, target) in [
        (
            "audit/canonical_bytes_10k",
            per_event("audit/canonical_bytes_10k"),
            "",
        ),
        ("audit/chain_hash_10k", hash, ""),
        ("audit/verify_10k", verify, ""),
    ] {
        if let Some(ns) = per {
            rows.push((
                id.into(),
                format!("{} per event = {:.0} events/s", human_ns(ns), 1e9 / ns),
                target.into(),
            ));
        }
    }
    if let (Some(h), Some(v)) = (hash, verify) {
        rows.push((
            "audit: hash + verify (combined)".into(),
            format!(
                "{} per event = {:.0} events/s",
                human_ns(h + v),
                1e9 / (h + v)
            ),
            "≥ 500,000 events/s".into(),
        ));
    }
    if rows.is_empty() {
        return;
    }
    println!("\n## engine benchmarks: criterion medians\n");
    println!("| benchmark | median (p50) | target |");
    println!("|---|---|---|");
    for (id, value, target) in rows {
        println!("| `{id}` | {value} | {target} |");
    }
}

fn main() {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .ok();
    let started = SystemTime::now();
    let home = criterion_home();
    let mut c = Criterion::default()
        .output_directory(&home)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    policy_benches(&mut c);
    audit_benches(&mut c);
    domain_benches(&mut c);
    c.final_summary();
    summary(&home, started);
}
