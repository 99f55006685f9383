//! Test support stays out of what ships: the http provider's reference server (the fake
//! cloud) and the conformance suite are behind features that are off by default, and
//! jitsudod's normal dependencies do not turn them on.

use std::path::Path;

fn manifest(rel: &str) -> toml::Table {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let text = std::fs::read_to_string(&path).expect("read a manifest");
    text.parse().expect("a manifest is TOML")
}

const TEST_ONLY: [&str; 2] = ["test-server", "conformance"];

#[test]
fn the_fake_cloud_and_the_conformance_suite_are_not_default_features() {
    let m = manifest("Cargo.toml");
    let features = m["features"].as_table().expect("[features]");
    let default: Vec<&str> = features["default"]
        .as_array()
        .expect("a default list")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for f in TEST_ONLY {
        assert!(features.contains_key(f), "feature {f} is gone");
        assert!(
            !default.contains(&f),
            "{f} is a default feature: jitsudod would ship it"
        );
    }
}

#[test]
fn jitsudod_does_not_turn_on_test_support() {
    let m = manifest("../api/Cargo.toml");
    let dep = &m["dependencies"]["jitsudo-providers"];
    let asked: Vec<&str> = dep
        .get("features")
        .and_then(|f| f.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    for f in TEST_ONLY {
        assert!(!asked.contains(&f), "jitsudo-api's dependency turns on {f}");
    }
    let features = m["features"].as_table().expect("api [features]");
    for (name, list) in features {
        for item in list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
        {
            for f in TEST_ONLY {
                assert_ne!(
                    item,
                    format!("jitsudo-providers/{f}"),
                    "jitsudo-api feature {name} turns on {f}"
                );
            }
        }
    }
}
