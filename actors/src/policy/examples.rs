//! The example policies `jitsudod --dev` installs into its own marked database. They are
//! examples for trying jitsudo out, not a baseline for production.

use super::set::PolicySource;

/// Author recorded for the example policies.
pub const DEV_EXAMPLE_AUTHOR: &str = "jitsudo dev mode (example)";

/// The dev-mode example policies, embedded at build time from `cluster-config/dev/policies/`.
pub fn dev_example_policies() -> Vec<PolicySource> {
    [
        (
            "dev-example-eligibility",
            include_str!("../../../cluster-config/dev/policies/eligibility.rego"),
        ),
        (
            "dev-example-approval",
            include_str!("../../../cluster-config/dev/policies/approval.rego"),
        ),
    ]
    .into_iter()
    .map(|(name, rego)| PolicySource {
        name: name.to_string(),
        version: 1,
        author: DEV_EXAMPLE_AUTHOR.to_string(),
        rego: rego.to_string(),
    })
    .collect()
}
