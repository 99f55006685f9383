//! The engine is the API's only door into the control plane: `api/src` reads and records
//! through named `Engine` methods and never holds the store. This test reads the sources
//! and fails if a path to the store comes back.

use std::path::{Path, PathBuf};

/// What must not appear in `api/src`, and what to use instead.
const FORBIDDEN: &[(&str, &str)] = &[
    (
        "jitsudo_actors::store",
        "name the types through `jitsudo_actors::engine::types` and call an `Engine` method",
    ),
    (
        ".store()",
        "call a named `Engine` method (add one to the API's block at the end of actors/src/engine.rs)",
    ),
    (
        ".store.",
        "ask the engine (`Engine::store_backend`, `Engine::db_now`, …) instead of the node context's store",
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read api/src") {
        let p = entry.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Every `(line number, pattern, instead)` of `text` outside comment lines.
fn findings(text: &str) -> Vec<(usize, &'static str, &'static str)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        for (pattern, instead) in FORBIDDEN {
            if line.contains(pattern) {
                out.push((i + 1, *pattern, *instead));
            }
        }
    }
    out
}

#[test]
fn the_api_reaches_the_store_only_through_the_engine() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(!files.is_empty(), "no sources under {}", src.display());
    let mut violations = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        for (line, pattern, instead) in findings(&text) {
            violations.push(format!(
                "{}:{line}: `{pattern}` reaches past the engine into the store; {instead}",
                file.display()
            ));
        }
    }
    assert!(
        violations.is_empty(),
        "the API must go through the engine:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_door_check_sees_code_and_ignores_comments() {
    let text = "use jitsudo_actors::store::ListFilter;\n\
                // engine.store() in a comment\n\
                /// ctx.store.backend() in a doc comment\n\
                let s = state.engine.store().db_now();\n\
                let b = ctx.store.backend();\n\
                state.ready.store(true, Ordering::Relaxed);";
    let lines: Vec<(usize, &str)> = findings(text).iter().map(|f| (f.0, f.1)).collect();
    assert_eq!(
        lines,
        [
            (1, "jitsudo_actors::store"),
            (4, ".store()"),
            (5, ".store.")
        ]
    );
}
