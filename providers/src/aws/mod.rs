//! The AWS provider, mode `sts` (the default): a grant is the right to role sessions in one
//! account, minted on demand by `AssumeRole` with the real AWS SDK for Rust; a revoke ends
//! exactly that grant's live sessions through a deny on the role that matches their session
//! tag, and leaves every other session of the role alone. See [`sts`] for the guarantees
//! and docs/providers.md for the IAM policy jitsudod needs and the target roles' trust
//! policy. Mode `identity_center` is refused by the configuration check until it lands.

mod config;
mod deny;
mod errors;
mod records;
mod sts;

pub use config::{AwsConfig, AwsMode};
pub use deny::{GRANT_TAG, POLICY_NAME as DENY_POLICY, REQUEST_TAG, denied};
pub use records::{Record, live_name, tombstone_name};
pub use sts::{AwsProvider, session_name};
