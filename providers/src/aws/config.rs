//! `kind = "aws"`: the keys of its `[[providers]]` table.

use serde::Deserialize;

/// How a grant is given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AwsMode {
    /// Role sessions minted on demand by `AssumeRole` (the default).
    #[default]
    Sts,
    /// IAM Identity Center account assignments of permission sets.
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
    /// What may be requested (`role`): in mode `sts` role names (a name or the role's ARN in
    /// the requested account), in mode `identity_center` permission set names; a trailing
    /// `*` matches a prefix (`ReadOnly*`). Required.
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
    /// Mode `identity_center`: the instance (`arn:aws:sso:::instance/ssoins-…`). Unset: the
    /// one instance `ListInstances` shows.
    #[serde(default)]
    pub instance_arn: Option<String>,
    /// Mode `identity_center`: the identity store of the users. Unset: the instance's.
    #[serde(default)]
    pub identity_store_id: Option<String>,
    /// Mode `identity_center`: the AWS access portal's URL, shown to the requester with a
    /// grant (where to sign in) and handed to `jitsudo exec` as `AWS_SSO_START_URL`.
    #[serde(default)]
    pub start_url: Option<String>,
}

/// AWS's bounds on `DurationSeconds` of `AssumeRole`.
pub const MIN_SESSION_SECONDS: u32 = 900;
pub const MAX_SESSION_SECONDS: u32 = 43_200;
pub const DEFAULT_SESSION_SECONDS: u32 = 3600;

impl AwsConfig {
    /// Every check that needs no AWS call: an error sentence naming the key.
    pub fn check(&self) -> Result<(), String> {
        self.check_mode()?;
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
        let what = match self.mode {
            AwsMode::Sts => "role name",
            AwsMode::IdentityCenter => "permission set name",
        };
        for r in &self.roles {
            let name = r.strip_suffix('*').unwrap_or(r);
            if (name.is_empty() && r != "*") || !name.chars().all(is_role_name_char) {
                return Err(format!(
                    "roles: {r:?} is not a {what} (letters, digits and +=,.@_- ; a trailing * matches a prefix)"
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

    /// The keys of one mode that the other refuses.
    fn check_mode(&self) -> Result<(), String> {
        let set = |present: bool, key: &'static str| present.then_some(key);
        let (refused, why) = match self.mode {
            AwsMode::Sts => (
                [
                    set(self.instance_arn.is_some(), "instance_arn"),
                    set(self.identity_store_id.is_some(), "identity_store_id"),
                    set(self.start_url.is_some(), "start_url"),
                ],
                "is a key of mode = \"identity_center\"",
            ),
            AwsMode::IdentityCenter => (
                [
                    set(self.hub_role.is_some(), "hub_role"),
                    set(self.session_seconds.is_some(), "session_seconds"),
                    None,
                ],
                "is not a key of mode = \"identity_center\" (jitsudod calls Identity Center in the account its credentials are for, the management or delegated administrator account, and a session lasts as long as the permission set's SessionDuration)",
            ),
        };
        if let Some(key) = refused.into_iter().flatten().next() {
            return Err(format!("{key} {why}"));
        }
        if let Some(arn) = &self.instance_arn
            && !(arn.starts_with("arn:") && arn.contains(":sso:::instance/"))
        {
            return Err(format!(
                "instance_arn: {arn:?} is not an Identity Center instance ARN (arn:aws:sso:::instance/ssoins-…)"
            ));
        }
        if let Some(id) = &self.identity_store_id
            && (id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(format!(
                "identity_store_id: {id:?} is not an identity store id (d-1234567890)"
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
