//! `kind = "aws"`: the keys of its `[[providers]]` table.

use serde::Deserialize;

/// How a grant is given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AwsMode {
    /// Role sessions minted on demand by `AssumeRole` (the default).
    #[default]
    Sts,
    /// IAM Identity Center account assignments (not in this build yet).
    IdentityCenter,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// `sts` (default) or `identity_center`.
    #[serde(default)]
    pub mode: AwsMode,
    /// The region of the STS endpoint and of the credentials handed out (`AWS_REGION`).
    pub region: String,
    /// Accounts that may be requested (`scope`), twelve digits each. Required.
    pub accounts: Vec<String>,
    /// Role names that may be requested (`role`, a name or the role's ARN in the requested
    /// account); a trailing `*` matches a prefix (`ReadOnly*`). Required.
    pub roles: Vec<String>,
    /// A role name jitsudod assumes in each account before calling IAM and STS there
    /// (cross-account). Unset: jitsudod's own credentials are used in every account.
    #[serde(default)]
    pub hub_role: Option<String>,
    /// The longest session minted at once; capped by the role's `MaxSessionDuration` and by
    /// the grant's end. Default 3600 (AWS allows 900 to 43200).
    #[serde(default)]
    pub session_seconds: Option<u32>,
    /// A profile of the AWS shared files to take jitsudod's credentials from (static keys,
    /// `credential_process`, `role_arn` + `source_profile`). Unset: the SDK's default chain
    /// (environment, default profile, web identity, ECS, instance role).
    #[serde(default)]
    pub profile: Option<String>,
    /// A shared credentials file to read that profile from, instead of `~/.aws/credentials`.
    #[serde(default)]
    pub credentials_file: Option<std::path::PathBuf>,
    /// Another endpoint for every AWS call (a VPC endpoint, a local emulator in tests).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Per AWS call (connect, send, answer), default 10.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

/// AWS's bounds on `DurationSeconds` of `AssumeRole`.
pub const MIN_SESSION_SECONDS: u32 = 900;
pub const MAX_SESSION_SECONDS: u32 = 43_200;
pub const DEFAULT_SESSION_SECONDS: u32 = 3600;

impl AwsConfig {
    /// Every check that needs no AWS call: an error sentence naming the key.
    pub fn check(&self) -> Result<(), String> {
        if self.mode == AwsMode::IdentityCenter {
            return Err(
                "mode = \"identity_center\" is not available in this build yet; use mode = \"sts\""
                    .into(),
            );
        }
        if self.region.trim().is_empty() {
            return Err("region must name an AWS region (us-east-1)".into());
        }
        if self.accounts.is_empty() {
            return Err("accounts must list at least one twelve-digit account id".into());
        }
        for (i, a) in self.accounts.iter().enumerate() {
            if self.accounts[..i].contains(a) {
                return Err(format!("accounts: {a:?} is listed twice"));
            }
            if !is_account_id(a) {
                return Err(format!(
                    "accounts: {a:?} is not an account id (twelve digits)"
                ));
            }
        }
        if self.roles.is_empty() {
            return Err("roles must list at least one role name (a trailing * matches a prefix); nothing is grantable by default".into());
        }
        for r in &self.roles {
            let name = r.strip_suffix('*').unwrap_or(r);
            if (name.is_empty() && r != "*") || !name.chars().all(is_role_name_char) {
                return Err(format!(
                    "roles: {r:?} is not a role name (letters, digits and +=,.@_- ; a trailing * matches a prefix)"
                ));
            }
        }
        if let Some(h) = &self.hub_role
            && (h.is_empty() || !h.chars().all(is_role_name_char))
        {
            return Err(format!("hub_role: {h:?} is not a role name"));
        }
        if self.credentials_file.is_some() && self.profile.is_none() {
            return Err(
                "credentials_file needs profile: the name of the profile in it to use".into(),
            );
        }
        if self.timeout_seconds == Some(0) {
            return Err("timeout_seconds must be at least 1".into());
        }
        if let Some(s) = self.session_seconds
            && !(MIN_SESSION_SECONDS..=MAX_SESSION_SECONDS).contains(&s)
        {
            return Err(format!(
                "session_seconds is {s}; AWS allows {MIN_SESSION_SECONDS} to {MAX_SESSION_SECONDS}"
            ));
        }
        Ok(())
    }

    pub fn session_seconds(&self) -> u32 {
        self.session_seconds.unwrap_or(DEFAULT_SESSION_SECONDS)
    }
}

pub fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Characters IAM allows in a role name.
pub fn is_role_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+=,.@_-".contains(c)
}
