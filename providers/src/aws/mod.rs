//! The AWS provider, with the real AWS SDK for Rust, in one of two modes:
//!
//! - [`sts`] (the default): a grant is the right to role sessions in one account, minted on
//!   demand by `AssumeRole`; a revoke ends exactly that grant's live sessions through a
//!   deny on the role that matches their session tag, and leaves every other session of
//!   the role alone.
//! - [`identity_center`]: a grant is an IAM Identity Center account assignment of a
//!   permission set to the requester's user; a revoke deletes it and ends that user's live
//!   sessions of the permission set in that account through a deny in the permission set,
//!   until the permission set's session length has passed.
//!
//! docs/providers.md has the IAM policy jitsudod needs in each mode and the target roles'
//! trust policy.

mod config;
mod deny;
mod errors;
mod ic_deny;
mod identity_center;
mod records;
mod store;
mod sts;

use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::SharedCredentialsProvider;

pub use config::{AwsConfig, AwsMode};
pub use deny::{GRANT_TAG, POLICY_NAME as DENY_POLICY, REQUEST_TAG, denied};
pub use ic_deny::{SessionDeny, session_denies};
pub use identity_center::IdentityCenterProvider;
pub use records::{Assignment, Record, live_name, tombstone_name};
pub use sts::{AwsProvider, session_name};

/// The provider of a checked table, in its mode.
pub async fn build(name: &str, config: &AwsConfig) -> Result<Arc<dyn crate::Provider>, String> {
    Ok(match config.mode {
        AwsMode::Sts => Arc::new(AwsProvider::from_config(name, config).await?),
        AwsMode::IdentityCenter => {
            Arc::new(IdentityCenterProvider::from_config(name, config).await?)
        }
    })
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The SDK's configuration: region, endpoint, per-call timeout, three tries per call, and
/// jitsudod's credentials (given, from a profile, or the SDK's default chain: environment,
/// default profile, web identity, ECS, instance role). No AWS call is made.
async fn sdk_config(
    config: &AwsConfig,
    credentials: Option<SharedCredentialsProvider>,
) -> aws_config::SdkConfig {
    let timeout = config
        .timeout_seconds
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new(config.region.clone()))
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(timeout)
                .operation_attempt_timeout(timeout)
                .build(),
        );
    if let Some(url) = &config.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(c) = credentials {
        loader = loader.credentials_provider(c);
    } else if let Some(profile) = &config.profile {
        use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
        let mut files = EnvConfigFiles::builder().include_default_config_file(true);
        files = match &config.credentials_file {
            Some(path) => files.with_file(EnvConfigFileKind::Credentials, path),
            None => files.include_default_credentials_file(true),
        };
        let provider = aws_config::profile::ProfileFileCredentialsProvider::builder()
            .profile_files(files.build())
            .profile_name(profile)
            .build();
        loader = loader.credentials_provider(provider);
    }
    loader.load().await
}
