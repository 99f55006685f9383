//! The crate's modules form one straight line of layers (see `src/lib.rs` and
//! docs/architecture.md): a module may name only modules before it. This test reads the
//! sources and fails on any `crate::…` path that points the other way, which is also what
//! keeps import circles out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bottom to top. Each top-level module of `src/` must appear exactly once.
const LAYERS: &[&str] = &[
    "policy",
    "domain",
    "lease",
    "stats",
    "store",
    "error",
    "config",
    "singleton",
    "provider",
    "policy_actor",
    "audit",
    "notify",
    "context",
    "request",
    "cluster",
    "reconcile",
    "engine",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let p = entry.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The source without comments (a doc link to a higher layer is not an import).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every module named by a `crate::NAME` path or a `crate::{NAME, …}` group.
fn named_modules(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let word = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let w = word(part.trim());
                if !w.is_empty() {
                    out.push(w);
                }
            }
        } else {
            let w = word(rest);
            if !w.is_empty() {
                out.push(w);
            }
        }
    }
    out
}

/// The top-level module a file belongs to (`src/request/actor.rs` → `request`), or `None`
/// for `lib.rs` and for test-only files (`tests.rs`, anything under a `tests/` folder).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
    if parts == ["lib.rs"] || parts.iter().any(|p| *p == "tests" || *p == "tests.rs") {
        return None;
    }
    Some(parts[0].trim_end_matches(".rs").to_owned())
}

#[test]
fn every_module_imports_only_from_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rank: BTreeMap<&str, usize> = LAYERS.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some(&mine) = rank.get(module.as_str()) else {
            violations.push(format!(
                "{}: module `{module}` is not in LAYERS; give it its place in the line",
                file.display()
            ));
            continue;
        };
        seen.insert(module.clone());
        let code = code_of(&std::fs::read_to_string(file).expect("read source"));
        for named in named_modules(&code) {
            if named == module {
                continue;
            }
            match rank.get(named.as_str()) {
                Some(&theirs) if theirs < mine => {}
                Some(_) => violations.push(format!(
                    "{}: `{module}` names `crate::{named}`, which is not below it",
                    file.display()
                )),
                None => violations.push(format!(
                    "{}: `{module}` names `crate::{named}`, which is no module in LAYERS",
                    file.display()
                )),
            }
        }
    }
    for m in LAYERS {
        assert!(
            seen.contains(*m),
            "LAYERS names `{m}`, which src/ does not have"
        );
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_groups_paths_and_ignores_comments() {
    let code =
        code_of("use crate::{store::X, domain};\n// crate::engine\nlet a = crate::audit::f();");
    assert_eq!(named_modules(&code), ["store", "domain", "audit"]);
}

/// The design file the project started from is not part of the repository: every reference
/// points to docs/ instead.
#[test]
fn no_source_or_doc_points_to_the_design_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let p = entry.expect("dir entry").path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with('.') || name == "target" {
                continue;
            }
            if p.is_dir() {
                walk(&p, out);
            } else if ["rs", "toml", "md", "proto", "sh", "yaml"]
                .iter()
                .any(|e| p.extension().is_some_and(|x| x == *e))
            {
                out.push(p);
            }
        }
    }
    walk(&root, &mut files);
    let needle = ["DESIGN", ".md"].concat();
    let hits: Vec<String> = files
        .iter()
        .filter(|f| {
            std::fs::read_to_string(f)
                .map(|t| t.contains(&needle))
                .unwrap_or(false)
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        hits.is_empty(),
        "these point to {needle}, which is not in the repository; point to docs/ instead: {hits:?}"
    );
}
