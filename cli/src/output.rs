//! Output: tables for people, JSON (proto3 JSON, the same as the REST API: the stable format
//! for scripts) and YAML (the same document). Times print in local time with the zone in
//! tables and as RFC 3339 in JSON/YAML.

use std::io::{IsTerminal as _, Write as _};

use chrono::{DateTime, Local, TimeZone as _, Utc};
use clap::ValueEnum;
use comfy_table::presets::NOTHING;
use comfy_table::{Cell, CellAlignment, ContentArrangement, Table};
use serde::Serialize;
use serde_json::Value;

use crate::error::{CliError, CliResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// How to print: format, color, quiet.
#[derive(Clone, Copy, Debug)]
pub struct Out {
    pub format: Format,
    pub color: bool,
    pub quiet: bool,
    /// stderr is a terminal: live progress may redraw a line.
    pub interactive: bool,
}

impl Out {
    pub fn new(format: Format, no_color: bool, quiet: bool) -> Out {
        let no_color_env = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Out {
            format,
            color: !no_color && !no_color_env && std::io::stdout().is_terminal(),
            quiet,
            interactive: std::io::stderr().is_terminal(),
        }
    }

    /// Prints `value` as JSON/YAML, or calls `table` for the table format.
    pub fn emit<T: Serialize>(
        &self,
        value: &T,
        table: impl FnOnce(&Out) -> String,
    ) -> CliResult<()> {
        let text = match self.format {
            Format::Table => table(self),
            Format::Json => to_json(value)?,
            Format::Yaml => to_yaml(&to_value(value)?),
        };
        print_stdout(&text)
    }

    /// A progress or confirmation line for people, on stderr (never with `-q`).
    pub fn note(&self, line: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", line.as_ref());
        }
    }

    /// Colors a request state for the table format.
    pub fn state(&self, state: &str) -> String {
        if !self.color {
            return state.to_owned();
        }
        let code = match state {
            "ACTIVE" => "32",
            "PENDING" | "APPROVED" | "ENDING" => "33",
            "REJECTED" | "FAILED" | "TIMED_OUT" => "31",
            _ => "2",
        };
        format!("\x1b[{code}m{state}\x1b[0m")
    }
}

pub fn print_stdout(text: &str) -> CliResult<()> {
    let mut stdout = std::io::stdout().lock();
    let r = if text.ends_with('\n') || text.is_empty() {
        stdout.write_all(text.as_bytes())
    } else {
        writeln!(stdout, "{text}")
    };
    match r.and_then(|()| stdout.flush()) {
        // `jitsudo status | head` closes the pipe early; that is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(CliError::from),
    }
}

fn to_value<T: Serialize>(value: &T) -> CliResult<Value> {
    serde_json::to_value(value).map_err(|e| CliError::failure(format!("cannot encode: {e}")))
}

pub fn to_json<T: Serialize>(value: &T) -> CliResult<String> {
    serde_json::to_string_pretty(value)
        .map_err(|e| CliError::failure(format!("cannot encode: {e}")))
}

/// YAML 1.2 of a JSON document: block style, keys sorted, strings quoted (JSON escapes, which YAML's
/// double-quoted scalars share) whenever a plain scalar could be read as something else.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => yaml_map(m, 0, &mut out),
        Value::Array(a) if !a.is_empty() => yaml_seq(a, 0, &mut out),
        other => {
            out.push_str(&yaml_scalar(other));
            out.push('\n');
        }
    }
    out
}

fn yaml_map(m: &serde_json::Map<String, Value>, indent: usize, out: &mut String) {
    for (k, v) in m {
        out.push_str(&" ".repeat(indent));
        out.push_str(&yaml_string(k));
        out.push(':');
        yaml_child(v, indent, out);
    }
}

fn yaml_seq(a: &[Value], indent: usize, out: &mut String) {
    for v in a {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match v {
            Value::Object(m) if !m.is_empty() => {
                // The first key on the dash's line, the rest aligned under it.
                let mut inner = String::new();
                yaml_map(m, indent + 2, &mut inner);
                out.push(' ');
                out.push_str(inner.trim_start());
            }
            _ => yaml_child(v, indent, out),
        }
    }
}

fn yaml_child(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            yaml_map(m, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            yaml_seq(a, indent + 2, out);
        }
        other => {
            out.push(' ');
            out.push_str(&yaml_scalar(other));
            out.push('\n');
        }
    }
}

fn yaml_scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => yaml_string(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

fn yaml_string(s: &str) -> String {
    let plain_safe = !s.is_empty()
        && s.trim() == s
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./@+ ".contains(c))
        && !s.starts_with(['-', '.', '@', '+'])
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n" | "~"
        )
        && s.parse::<f64>().is_err()
        && !s.chars().all(|c| c.is_ascii_digit() || c == '_');
    if plain_safe {
        s.to_owned()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

/// A borderless, left-aligned table with upper-case headers.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_style(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().map(Cell::new));
    for row in rows {
        t.add_row(
            row.into_iter()
                .map(|c| Cell::new(c).set_alignment(CellAlignment::Left)),
        );
    }
    let text = t.to_string();
    // comfy-table pads each line with a leading space and trailing spaces; trim them.
    text.lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `key: value` lines, keys aligned.
pub fn details(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k:<width$}  {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn ts_utc(t: &Option<pbjson_types::Timestamp>) -> Option<DateTime<Utc>> {
    let t = t.as_ref()?;
    Utc.timestamp_opt(t.seconds, t.nanos.max(0) as u32).single()
}

/// Local time with the zone offset, e.g. `2026-11-29 14:03:07 +01:00`; empty when unset.
pub fn local_time(t: &Option<pbjson_types::Timestamp>) -> String {
    ts_utc(t)
        .map(|t| {
            t.with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S %:z")
                .to_string()
        })
        .unwrap_or_default()
}

/// `HH:MM` local time, for "active until 14:30".
pub fn local_hm(t: &Option<pbjson_types::Timestamp>) -> String {
    ts_utc(t)
        .map(|t| t.with_timezone(&Local).format("%H:%M %:z").to_string())
        .unwrap_or_default()
}

/// `1h30m`, `15m`, `90s` → seconds. Units: s, m, h, d; combined largest first.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not a duration — write it like 90s, 15m, 1h or 1h30m");
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: i64 = 0;
    let mut digits = String::new();
    let mut last_unit = u8::MAX;
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let (rank, secs) = match c {
            'd' => (3, 86_400),
            'h' => (2, 3_600),
            'm' => (1, 60),
            's' => (0, 1),
            _ => return Err(bad()),
        };
        if digits.is_empty() || rank >= last_unit {
            return Err(bad());
        }
        last_unit = rank;
        let n: i64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(secs)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!(
            "{s:?} needs a unit — write it like 90s, 15m, 1h or 1h30m"
        ));
    }
    if total <= 0 {
        return Err(format!("{s:?} must be longer than zero"));
    }
    Ok(total)
}

/// Seconds → `1h30m`, `15m`, `90s` → `1m30s`.
pub fn format_duration(secs: i64) -> String {
    if secs <= 0 {
        return "0s".into();
    }
    let (d, rest) = (secs / 86_400, secs % 86_400);
    let (h, rest) = (rest / 3_600, rest % 3_600);
    let (m, s) = (rest / 60, rest % 60);
    let mut out = String::new();
    for (n, unit) in [(d, 'd'), (h, 'h'), (m, 'm'), (s, 's')] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_the_documented_forms() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("1d2h3m4s"), Ok(93_784));
        for bad in ["", "90", "m", "1x", "30m1h", "1h1h", "0s", "-5m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(parse_duration("90").unwrap_err().contains("needs a unit"));
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_is_refused_without_panicking(s in ".{0,40}") {
            if let Ok(secs) = parse_duration(&s) {
                proptest::prop_assert!(secs > 0);
            }
        }

        #[test]
        fn every_positive_duration_formats_and_parses_back(secs in 1i64..10_000_000_000) {
            proptest::prop_assert_eq!(parse_duration(&format_duration(secs)), Ok(secs));
        }
    }

    #[test]
    fn durations_format_back() {
        for s in [90, 900, 5400, 93_784, 3600] {
            assert_eq!(parse_duration(&format_duration(s)), Ok(s));
        }
        assert_eq!(format_duration(5400), "1h30m");
    }

    #[test]
    fn yaml_quotes_what_could_be_misread() {
        let v = serde_json::json!({
            "state": "ACTIVE",
            "durationSeconds": "3600",
            "yes": "no",
            "reason": "fix: the thing # now",
            "empty": "",
            "list": ["a", {"k": 1, "j": true}],
            "none": [],
            "nested": {"x": null}
        });
        let y = to_yaml(&v);
        // Keys come sorted (serde_json's map), the same order on every run.
        assert_eq!(
            y,
            "durationSeconds: \"3600\"\nempty: \"\"\nlist:\n  - a\n  - j: true\n    k: 1\nnested:\n  x: null\nnone: []\nreason: \"fix: the thing # now\"\nstate: ACTIVE\n\"yes\": \"no\"\n"
        );
    }
}
