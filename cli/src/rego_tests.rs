//! `jitsudo policy test DIR`: Rego unit tests, run offline as `opa test` runs them. Every
//! `.rego` file under DIR is loaded into one engine (regorus, the build and built-ins
//! jitsudod evaluates policies with: the workspace's one regorus dependency); every rule
//! whose name starts with `test_` is a test, and it passes when it evaluates to `true`
//! (undefined or anything else fails). `print` output is kept with each result.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use regorus::{Engine, Value};
use serde::Serialize;

use crate::error::{CliError, CliResult};

/// jitsudod stops an evaluation after a second; so does a test here.
const EVAL_TIME_LIMIT: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    Error,
}

#[derive(Clone, Debug, Serialize)]
pub struct TestResult {
    /// `data.<package>.<rule>`.
    pub test: String,
    pub file: String,
    pub outcome: Outcome,
    /// What the rule evaluated to when it failed, or the error.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prints: Vec<String>,
    pub duration_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub results: Vec<TestResult>,
    pub passed: usize,
    pub failed: usize,
}

fn rego_files(dir: &Path, out: &mut Vec<PathBuf>) -> CliResult<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", dir.display())))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| CliError::usage(format!("cannot read {}: {e}", dir.display())))?;
        let p = entry.path();
        // Symbolic links to directories are not followed (a loop would never end).
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir {
            rego_files(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "rego") {
            out.push(p);
        }
    }
    Ok(())
}

/// Rule names at the start of a line that look like tests (`test_…`), once each, with how
/// many rule heads each has; the engine then says which of them are rules.
fn test_candidates(rego: &str) -> Vec<(String, usize)> {
    let mut names: Vec<(String, usize)> = Vec::new();
    for l in rego.lines().filter(|l| l.starts_with("test_")) {
        let name: String = l
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        match names.iter_mut().find(|(n, _)| *n == name) {
            Some((_, heads)) => *heads += 1,
            None => names.push((name, 1)),
        }
    }
    names
}

/// Whether a test's value passes: `true`, or (a table-driven test, `test_x[name] if …`) an
/// object whose every value is `true`, as `opa test` judges them.
fn passes(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Object(o) => !o.is_empty() && o.values().all(|v| *v == Value::Bool(true)),
        _ => false,
    }
}

/// Loads every `.rego` file under `dir` and runs the tests whose name contains `filter`.
pub fn run(dir: &Path, filter: Option<&str>) -> CliResult<Report> {
    let mut files = Vec::new();
    rego_files(dir, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(CliError::usage(format!(
            "no .rego files under {}",
            dir.display()
        )));
    }
    let mut engine = Engine::new();
    engine.set_gather_prints(true);
    engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
        limit: EVAL_TIME_LIMIT,
        check_interval: std::num::NonZeroU32::new(256).unwrap_or(std::num::NonZeroU32::MIN),
    });
    let mut sources = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", f.display())))?;
        // Named relative to DIR in results, prints and errors.
        let name = f.strip_prefix(dir).unwrap_or(f).display().to_string();
        engine
            .add_policy(name.clone(), text.clone())
            .map_err(|e| CliError::usage(format!("{name} does not compile: {e}")))?;
        sources.push((name, text));
    }
    // Analysis (unsafe variables, unknown functions, recursion) happens when the engine is
    // first prepared: do it now, as jitsudod does at apply time, so such a file is refused
    // as not compiling rather than failing every test.
    engine
        .eval_query("true".into(), false)
        .map_err(|e| CliError::usage(format!("the policies do not compile: {e}")))?;
    let _ = engine.take_prints();
    let packages = engine
        .get_policy_package_components()
        .map_err(|e| CliError::usage(format!("the policies do not load together: {e}")))?;
    let mut tests = Vec::new();
    for ((file, text), package) in sources.iter().zip(&packages) {
        let package = package.components.join(".");
        for (name, heads) in test_candidates(text) {
            if heads > 1 {
                // Rego ORs the bodies of rules with one name: one failing would hide.
                return Err(CliError::usage(format!(
                    "{file}: {heads} tests are named {name}: give each test a name of its own"
                )));
            }
            let declared = engine
                .has_declared_rule_rooted_at(file, &name)
                .map_err(|e| CliError::usage(format!("{file}: {e}")))?;
            let path = format!("data.{package}.{name}");
            if declared
                && filter.is_none_or(|f| path.contains(f))
                && !tests.iter().any(|(p, _): &(String, String)| *p == path)
            {
                tests.push((path, file.clone()));
            }
        }
    }
    let mut results = Vec::new();
    for (test, file) in tests {
        let started = Instant::now();
        let value = engine.eval_rule(test.clone());
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let prints = engine.take_prints().unwrap_or_default();
        let (outcome, detail) = match value {
            Ok(v) if passes(&v) => (Outcome::Pass, String::new()),
            Ok(Value::Undefined) => (Outcome::Fail, "undefined".to_owned()),
            Ok(v) => (
                Outcome::Fail,
                v.to_json_str().unwrap_or_else(|_| format!("{v:?}")),
            ),
            Err(e) => (Outcome::Error, e.to_string()),
        };
        results.push(TestResult {
            test,
            file,
            outcome,
            detail,
            prints,
            duration_ms,
        });
    }
    let passed = results
        .iter()
        .filter(|r| r.outcome == Outcome::Pass)
        .count();
    Ok(Report {
        failed: results.len() - passed,
        passed,
        results,
    })
}

/// One line per test, failures with what they evaluated to and their prints, then a
/// summary (as `opa test` prints it).
pub fn report_table(r: &Report) -> String {
    let mut out = String::new();
    for t in &r.results {
        let word = match t.outcome {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Error => "ERROR",
        };
        out.push_str(&format!("{word}  {}  ({:.1} ms)\n", t.test, t.duration_ms));
        if t.outcome != Outcome::Pass {
            out.push_str(&format!("      {}: {}\n", t.file, t.detail));
            for p in &t.prints {
                out.push_str(&format!("      print: {p}\n"));
            }
        }
    }
    if r.results.is_empty() {
        out.push_str("No tests (rules named test_…) found.\n");
    }
    out.push_str(&format!(
        "{}\nPASS: {}/{}",
        "-".repeat(40),
        r.passed,
        r.results.len()
    ));
    if r.failed > 0 {
        out.push_str(&format!("\nFAIL: {}/{}", r.failed, r.results.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{passes, test_candidates};
    use regorus::Value;

    #[test]
    fn test_rules_are_found_at_the_start_of_a_line_only() {
        let rego = "package p\n\ntest_allows if {\n  allow\n}\n  test_indented := true\n# test_comment\ntest_value := 1\nhelper := test_allows\ntest_allows if { true }\n";
        assert_eq!(
            test_candidates(rego),
            vec![("test_allows".to_owned(), 2), ("test_value".to_owned(), 1)]
        );
    }

    #[test]
    fn true_and_tables_of_true_pass() {
        assert!(passes(&Value::Bool(true)));
        assert!(!passes(&Value::Bool(false)));
        assert!(!passes(&Value::Undefined));
        assert!(!passes(&Value::from(1)));
        let table = Value::from_json_str(r#"{"alice": true, "bob": true}"#).expect("json");
        assert!(passes(&table));
        let one_false = Value::from_json_str(r#"{"alice": true, "bob": false}"#).expect("json");
        assert!(!passes(&one_false));
    }
}
