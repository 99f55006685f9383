//! Mode `sts`: a grant is the right to a role session, minted on demand by `AssumeRole`.
//!
//! - A grant writes its record (`records`): an unattached managed policy named after the
//!   grant, whose path carries the request, the end and the principal. The name is the
//!   idempotency key: a repeated grant finds the record a lost answer created.
//! - `credentials` mints a session with `RoleSessionName = jitsudo-<grant_id>`,
//!   `SourceIdentity` = the mapped principal, the session tags `jitsudo-grant` and
//!   `jitsudo-request`, and a `DurationSeconds` that never runs past `not_after` (AWS's
//!   shortest session is 15 minutes, so none is minted in a grant's last 15 minutes).
//! - A revoke writes the tombstone record first, then deletes the live one, then makes sure
//!   the role's inline policy `jitsudo-revoked-sessions` denies the sessions tagged with the
//!   grant (`deny`): only this grant's sessions end, every other session of the role goes
//!   on. The deny is rebuilt from the tombstones of the role each time, never edited in
//!   place, and re-read until what is written matches what is listed, so two replicas
//!   revoking on one role at once cannot lose each other's entries for longer than one
//!   round. An entry stays until its grant's `not_after` (no session outlives it); the
//!   reconciler forgets the tombstone after that, which drops the entry.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_credential_types::provider::SharedCredentialsProvider;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::config::{AwsConfig, MIN_SESSION_SECONDS, is_role_name_char};
use super::deny;
use super::errors::{Call, code, map};
use super::records::{self, Record};
use super::store::{Store, find};
use crate::{
    Credentials, GrantRecord, GrantSpec, GrantState, ManagedGrant, ManagedPage, Provider,
    ProviderError, ProviderInfo,
};

/// Policies per page of the reconciler's listing (IAM allows up to 1,000).
const PAGE_SIZE: i32 = 100;
/// Rounds of rebuilding a role's deny before giving up (retryable).
const DENY_ROUNDS: u32 = 8;
/// How much earlier than the grant's end a session ends (clock skew, the call's latency).
const SESSION_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// AWS caps a session made from another role session (role chaining) at one hour.
const CHAINED_SESSION_SECONDS: u32 = 3600;

/// IAM and STS of one account, with jitsudod's credentials there.
struct Account {
    iam: aws_sdk_iam::Client,
    sts: aws_sdk_sts::Client,
}

/// The ids one role's deny held when this node last read it back as written: a revoke whose
/// id is among them is covered. Behind a lock, so that revokes of one role on one node
/// take turns and share rebuilds.
type DenyState = Arc<tokio::sync::Mutex<BTreeSet<Uuid>>>;

pub struct AwsProvider {
    name: String,
    config: AwsConfig,
    base: aws_config::SdkConfig,
    accounts: Mutex<HashMap<String, Arc<Account>>>,
    denies: Mutex<HashMap<(String, String), DenyState>>,
}

impl AwsProvider {
    /// Checks the table and loads jitsudod's AWS credentials (environment, profile, web
    /// identity, instance role: the SDK's default chain). No AWS call is made yet.
    pub async fn from_config(name: &str, config: &AwsConfig) -> Result<Self, String> {
        Self::load(name, config, None).await
    }

    /// The same with credentials given instead of found (embedding, tests).
    pub async fn with_credentials(
        name: &str,
        config: &AwsConfig,
        credentials: SharedCredentialsProvider,
    ) -> Result<Self, String> {
        Self::load(name, config, Some(credentials)).await
    }

    async fn load(
        name: &str,
        config: &AwsConfig,
        credentials: Option<SharedCredentialsProvider>,
    ) -> Result<Self, String> {
        config.check()?;
        Ok(AwsProvider {
            name: name.to_owned(),
            config: config.clone(),
            base: super::sdk_config(config, credentials).await,
            accounts: Mutex::new(HashMap::new()),
            denies: Mutex::new(HashMap::new()),
        })
    }

    /// The clients of `account`: jitsudod's own credentials, or the hub role's there.
    async fn account(&self, account: &str) -> Arc<Account> {
        if let Some(a) = self.lock_accounts().get(account) {
            return a.clone();
        }
        let conf = match &self.config.hub_role {
            None => self.base.clone(),
            Some(hub) => {
                let creds = aws_config::sts::AssumeRoleProvider::builder(format!(
                    "arn:aws:iam::{account}:role/{hub}"
                ))
                .session_name("jitsudod")
                .configure(&self.base)
                .build()
                .await;
                self.base
                    .to_builder()
                    .credentials_provider(SharedCredentialsProvider::new(creds))
                    .build()
            }
        };
        let made = Arc::new(Account {
            iam: aws_sdk_iam::Client::new(&conf),
            sts: aws_sdk_sts::Client::new(&conf),
        });
        self.lock_accounts()
            .entry(account.to_owned())
            .or_insert(made)
            .clone()
    }

    fn lock_accounts(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Account>>> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn store<'a>(&'a self, acct: &'a Account) -> Store<'a> {
        Store {
            provider: &self.name,
            iam: &acct.iam,
        }
    }

    fn deny_state(&self, account: &str, role: &str) -> DenyState {
        self.denies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((account.to_owned(), role.to_ascii_lowercase()))
            .or_default()
            .clone()
    }

    fn invalid(&self, field: &'static str, reason: String) -> ProviderError {
        ProviderError::Invalid {
            provider: self.name.clone(),
            field,
            reason,
        }
    }

    /// The checks that need no AWS call: the account, the role (name or ARN), that this
    /// provider may grant it, and the principal. Answers the role's name.
    fn check(&self, role: &str, account: &str, principal: &str) -> Result<String, ProviderError> {
        let name = self.resolve(role, account)?;
        if !self.config.roles.iter().any(|p| matches(p, &name)) {
            return Err(self.invalid(
                "role",
                format!(
                    "role {name:?} is not grantable by this provider (roles: {}); ask for one of those",
                    self.config.roles.join(", ")
                ),
            ));
        }
        if !is_source_identity(principal) {
            return Err(self.invalid(
                "subject",
                format!(
                    "the principal {principal:?} cannot be an AWS SourceIdentity (2 to 64 of letters, digits and +=,.@_-); set this provider's `subject` template or identity map to a name AWS accepts"
                ),
            ));
        }
        Ok(name)
    }

    /// The account (one of this provider's) and the role's name, for calls about a grant
    /// that may exist: revoke, inspect and forget act on grants of a role since taken off
    /// `roles` too.
    fn resolve(&self, role: &str, account: &str) -> Result<String, ProviderError> {
        if !self.config.accounts.iter().any(|a| a == account) {
            return Err(self.invalid(
                "scope",
                format!(
                    "account {account:?} is not one of this provider's accounts ({}); ask for one of those or add it to `accounts`",
                    self.config.accounts.join(", ")
                ),
            ));
        }
        let name = match role.strip_prefix("arn:") {
            None => role,
            Some(_) => {
                let Some((arn_account, name)) = parse_role_arn(role) else {
                    return Err(self.invalid(
                        "role",
                        format!("{role:?} is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)"),
                    ));
                };
                if arn_account != account {
                    return Err(self.invalid(
                        "role",
                        format!(
                            "role {role} is in account {arn_account}, but the request is for account {account}"
                        ),
                    ));
                }
                name
            }
        };
        if name.is_empty() || name.len() > 64 || !name.chars().all(is_role_name_char) {
            return Err(self.invalid(
                "role",
                format!("{role:?} is not a role name (1 to 64 of letters, digits and +=,.@_-)"),
            ));
        }
        Ok(name.to_owned())
    }

    /// Every record of one request in `account` (live and tombstones of all its grants).
    async fn records_of(
        &self,
        acct: &Account,
        role: &str,
        request_id: Uuid,
    ) -> Result<Vec<(Record, String)>, ProviderError> {
        let prefix = format!("{}{request_id}/", records::role_prefix(role));
        self.store(acct).list(&prefix).await
    }

    async fn get_role(
        &self,
        acct: &Account,
        role: &str,
        account: &str,
    ) -> Result<aws_sdk_iam::types::Role, ProviderError> {
        match acct.iam.get_role().role_name(role).send().await {
            Ok(out) => out.role.ok_or_else(|| ProviderError::Unavailable {
                provider: self.name.clone(),
                reason: format!("GetRole of {role} answered without the role"),
            }),
            Err(e) if code(&e) == Some("NoSuchEntity") => Err(self.invalid(
                "role",
                format!("role {role:?} does not exist in account {account} (NoSuchEntity, HTTP 404); create it or ask for another role"),
            )),
            Err(e) => Err(map(&self.name, &format!("reading role {role} (GetRole)"), Call::Read, e)),
        }
    }

    /// Makes the role's deny hold `add` (a grant just revoked), every listed tombstone of
    /// the role whose end has not come, and whatever it holds already, less `remove` (a
    /// tombstone being forgotten) and less the listed tombstones whose end has passed. It
    /// only ever grows but for those: a listing that lags (IAM is eventually consistent) or
    /// another replica's write in between cannot take an entry out. Written, then read back,
    /// until what IAM holds is what was wanted.
    async fn sync_deny(
        &self,
        acct: &Account,
        account: &str,
        role: &str,
        add: Option<Uuid>,
        remove: Option<Uuid>,
    ) -> Result<(), ProviderError> {
        let state = self.deny_state(account, role);
        let mut confirmed = state.lock().await;
        if let Some(id) = add
            && remove.is_none()
            && confirmed.contains(&id)
        {
            // Another revoke's rebuild on this node wrote it and read it back meanwhile.
            return Ok(());
        }
        for _ in 0..DENY_ROUNDS {
            let now = Utc::now();
            let (live, ended): (Vec<Record>, Vec<Record>) = self
                .store(acct)
                .list::<Record>(&records::role_prefix(role))
                .await?
                .into_iter()
                .map(|(r, _)| r)
                .filter(|r| r.tombstone)
                .partition(|r| r.not_after > now);
            let placed = self.read_deny(acct, role).await?;
            let current = placed.all();
            let mut wanted: BTreeSet<Uuid> = current.clone();
            wanted.extend(live.iter().map(|r| r.grant_id));
            wanted.extend(add);
            for r in &ended {
                wanted.remove(&r.grant_id);
            }
            if let Some(id) = remove {
                wanted.remove(&id);
            }
            if wanted == current {
                *confirmed = current;
                return Ok(());
            }
            let Some(next) = placed.place(&wanted) else {
                return Err(ProviderError::Unavailable {
                    provider: self.name.clone(),
                    reason: format!(
                        "role {role} in account {account} has {} revoked grants whose sessions may still be live; its deny holds {} ({} inline, {} in each of {} managed policies). Entries leave as those grants reach their end; the revoke is retried until then",
                        wanted.len(),
                        deny::CAPACITY,
                        deny::MAX_IDS,
                        deny::PER_MANAGED,
                        deny::MAX_MANAGED
                    ),
                });
            };
            if !self.write_deny(acct, account, role, &placed, &next).await? {
                return Ok(());
            }
        }
        Err(ProviderError::Unavailable {
            provider: self.name.clone(),
            reason: format!(
                "the deny of role {role} in account {account} kept changing under concurrent revokes for {DENY_ROUNDS} rounds; retried"
            ),
        })
    }

    /// Where the role's deny holds which ids: its inline policy and the managed deny
    /// policies attached to it.
    async fn read_deny(
        &self,
        acct: &Account,
        role: &str,
    ) -> Result<deny::Placement, ProviderError> {
        let mut placed = deny::Placement {
            inline: self.read_inline_deny(acct, role).await?,
            managed: Vec::new(),
        };
        let what = format!("reading the managed denies of role {role}");
        let attached = match acct
            .iam
            .list_attached_role_policies()
            .role_name(role)
            .path_prefix(deny::MANAGED_PATH)
            .send()
            .await
        {
            Ok(out) => out.attached_policies().to_vec(),
            Err(e) if code(&e) == Some("NoSuchEntity") => return Ok(placed),
            Err(e) => {
                return Err(map(
                    &self.name,
                    &format!("{what} (ListAttachedRolePolicies)"),
                    Call::Read,
                    e,
                ));
            }
        };
        for k in 1..=deny::MAX_MANAGED {
            let name = deny::managed_name(role, k);
            let Some(arn) = attached
                .iter()
                .find(|p| p.policy_name() == Some(name.as_str()))
                .and_then(|p| p.policy_arn())
            else {
                placed.managed.push(BTreeSet::new());
                continue;
            };
            placed
                .managed
                .push(self.read_managed(acct, arn, &what).await?);
        }
        while placed.managed.last().is_some_and(|m| m.is_empty()) {
            placed.managed.pop();
        }
        Ok(placed)
    }

    async fn read_inline_deny(
        &self,
        acct: &Account,
        role: &str,
    ) -> Result<BTreeSet<Uuid>, ProviderError> {
        let res = acct
            .iam
            .get_role_policy()
            .role_name(role)
            .policy_name(deny::POLICY_NAME)
            .send()
            .await;
        match res {
            // IAM answers the document URL-encoded.
            Ok(out) => Ok(deny::denied(
                &percent_encoding::percent_decode_str(out.policy_document()).decode_utf8_lossy(),
            )),
            Err(e) if code(&e) == Some("NoSuchEntity") => Ok(BTreeSet::new()),
            Err(e) => Err(map(
                &self.name,
                &format!("reading the deny of role {role} (GetRolePolicy)"),
                Call::Read,
                e,
            )),
        }
    }

    /// The ids of a managed deny policy's default version.
    async fn read_managed(
        &self,
        acct: &Account,
        arn: &str,
        what: &str,
    ) -> Result<BTreeSet<Uuid>, ProviderError> {
        let policy = match acct.iam.get_policy().policy_arn(arn).send().await {
            Ok(out) => out.policy,
            Err(e) if code(&e) == Some("NoSuchEntity") => None,
            Err(e) => {
                return Err(map(
                    &self.name,
                    &format!("{what} (GetPolicy)"),
                    Call::Read,
                    e,
                ));
            }
        };
        let Some(version) = policy.and_then(|p| p.default_version_id) else {
            return Ok(BTreeSet::new());
        };
        match acct
            .iam
            .get_policy_version()
            .policy_arn(arn)
            .version_id(version)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .policy_version()
                .and_then(|v| v.document())
                .map(|d| deny::denied(&percent_encoding::percent_decode_str(d).decode_utf8_lossy()))
                .unwrap_or_default()),
            Err(e) if code(&e) == Some("NoSuchEntity") => Ok(BTreeSet::new()),
            Err(e) => Err(map(
                &self.name,
                &format!("{what} (GetPolicyVersion)"),
                Call::Read,
                e,
            )),
        }
    }

    /// Writes the policies whose ids change from `from` to `to`; `false` when the role
    /// itself is gone (none of its sessions can live on, so there is nothing left to deny).
    /// No id moves between policies, so the order of the writes leaves no gap.
    async fn write_deny(
        &self,
        acct: &Account,
        account: &str,
        role: &str,
        from: &deny::Placement,
        to: &deny::Placement,
    ) -> Result<bool, ProviderError> {
        if from.inline != to.inline && !self.write_inline_deny(acct, role, &to.inline).await? {
            return Ok(false);
        }
        let empty = BTreeSet::new();
        for k in 1..=deny::MAX_MANAGED {
            let before = from.managed.get(k - 1).unwrap_or(&empty);
            let after = to.managed.get(k - 1).unwrap_or(&empty);
            if before != after && !self.write_managed(acct, account, role, k, after).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One managed deny policy: created or given a new default version, and attached; with
    /// no ids, detached and deleted.
    async fn write_managed(
        &self,
        acct: &Account,
        account: &str,
        role: &str,
        k: usize,
        ids: &BTreeSet<Uuid>,
    ) -> Result<bool, ProviderError> {
        let name = deny::managed_name(role, k);
        let arn = format!(
            "arn:{}:iam::{account}:policy{}{name}",
            partition(&self.config.region),
            deny::MANAGED_PATH
        );
        let what = format!("writing the managed deny {name} of role {role}");
        let Some(doc) = deny::document(ids) else {
            match acct
                .iam
                .detach_role_policy()
                .role_name(role)
                .policy_arn(&arn)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if code(&e) == Some("NoSuchEntity") => {}
                Err(e) => {
                    return Err(map(
                        &self.name,
                        &format!("{what} (DetachRolePolicy)"),
                        Call::Write,
                        e,
                    ));
                }
            }
            self.delete_old_versions(acct, &arn, &what).await?;
            return match acct.iam.delete_policy().policy_arn(&arn).send().await {
                Ok(_) => Ok(true),
                Err(e) if code(&e) == Some("NoSuchEntity") => Ok(true),
                Err(e) => Err(map(
                    &self.name,
                    &format!("{what} (DeletePolicy)"),
                    Call::Write,
                    e,
                )),
            };
        };
        match acct
            .iam
            .create_policy()
            .policy_name(&name)
            .path(deny::MANAGED_PATH)
            .policy_document(&doc)
            .description(format!(
                "jitsudo: ends the sessions of revoked grants of role {role}"
            ))
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if code(&e) == Some("EntityAlreadyExists") => {
                // IAM keeps five versions: the old ones go first.
                self.delete_old_versions(acct, &arn, &what).await?;
                acct.iam
                    .create_policy_version()
                    .policy_arn(&arn)
                    .policy_document(&doc)
                    .set_as_default(true)
                    .send()
                    .await
                    .map_err(|e| {
                        map(
                            &self.name,
                            &format!("{what} (CreatePolicyVersion)"),
                            Call::Write,
                            e,
                        )
                    })?;
            }
            Err(e) => {
                return Err(map(
                    &self.name,
                    &format!("{what} (CreatePolicy)"),
                    Call::Write,
                    e,
                ));
            }
        }
        match acct
            .iam
            .attach_role_policy()
            .role_name(role)
            .policy_arn(&arn)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            // The role is gone: so is any use of the policy.
            Err(e) if code(&e) == Some("NoSuchEntity") => Ok(false),
            Err(e) => Err(map(
                &self.name,
                &format!("{what} (AttachRolePolicy)"),
                Call::Write,
                e,
            )),
        }
    }

    /// Deletes a managed policy's versions but the default one.
    async fn delete_old_versions(
        &self,
        acct: &Account,
        arn: &str,
        what: &str,
    ) -> Result<(), ProviderError> {
        let versions = match acct.iam.list_policy_versions().policy_arn(arn).send().await {
            Ok(out) => out.versions().to_vec(),
            Err(e) if code(&e) == Some("NoSuchEntity") => return Ok(()),
            Err(e) => {
                return Err(map(
                    &self.name,
                    &format!("{what} (ListPolicyVersions)"),
                    Call::Read,
                    e,
                ));
            }
        };
        for v in versions.iter().filter(|v| !v.is_default_version()) {
            let Some(id) = v.version_id() else { continue };
            match acct
                .iam
                .delete_policy_version()
                .policy_arn(arn)
                .version_id(id)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if code(&e) == Some("NoSuchEntity") => {}
                Err(e) => {
                    return Err(map(
                        &self.name,
                        &format!("{what} (DeletePolicyVersion)"),
                        Call::Write,
                        e,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Writes the inline deny; `false` when the role itself is gone.
    async fn write_inline_deny(
        &self,
        acct: &Account,
        role: &str,
        ids: &BTreeSet<Uuid>,
    ) -> Result<bool, ProviderError> {
        let what = format!("writing the deny of role {role}");
        let Some(doc) = deny::document(ids) else {
            return match acct
                .iam
                .delete_role_policy()
                .role_name(role)
                .policy_name(deny::POLICY_NAME)
                .send()
                .await
            {
                Ok(_) => Ok(true),
                Err(e) if code(&e) == Some("NoSuchEntity") => Ok(true),
                Err(e) => Err(map(
                    &self.name,
                    &format!("{what} (DeleteRolePolicy)"),
                    Call::Write,
                    e,
                )),
            };
        };
        match acct
            .iam
            .put_role_policy()
            .role_name(role)
            .policy_name(deny::POLICY_NAME)
            .policy_document(doc)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if code(&e) == Some("NoSuchEntity") => Ok(false),
            Err(e) => Err(map(
                &self.name,
                &format!("{what} (PutRolePolicy)"),
                Call::Write,
                e,
            )),
        }
    }

    fn to_record(&self, spec_role: &str, record: &Record, arn: &str, scope: &str) -> GrantRecord {
        GrantRecord {
            grant_id: record.grant_id,
            request_id: record.request_id,
            subject: record.principal.clone(),
            role: spec_role.to_owned(),
            scope: scope.to_owned(),
            not_after: record.not_after,
            provider_ref: arn.to_owned(),
        }
    }

    /// The live record of a grant, if it has one and no tombstone, and its end is ahead.
    async fn live(
        &self,
        grant: &GrantRecord,
    ) -> Result<Option<(String, Record, String)>, ProviderError> {
        let role = self.resolve(&grant.role, &grant.scope)?;
        let acct = self.account(&grant.scope).await;
        let found = self.records_of(&acct, &role, grant.request_id).await?;
        if find(&found, grant.grant_id, true).is_some() {
            return Ok(None);
        }
        Ok(find(&found, grant.grant_id, false)
            .filter(|(r, _)| r.not_after > Utc::now())
            .map(|(r, arn)| (role, r, arn)))
    }
}

#[async_trait]
impl Provider for AwsProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn validate(&self, spec: &GrantSpec) -> Result<(), ProviderError> {
        let role = self.check(&spec.role, &spec.scope, &spec.subject)?;
        record_of(spec, &role, false)
            .path()
            .map_err(|e| self.invalid("subject", e))?;
        let acct = self.account(&spec.scope).await;
        let found = self.get_role(&acct, &role, &spec.scope).await?;
        let max = found.max_session_duration.unwrap_or(3600).max(0) as i64;
        let length = (spec.not_after - Utc::now()).num_seconds();
        if length > max {
            return Err(self.invalid(
                "duration",
                format!(
                    "the grant would last {length} s (the requested duration plus the time allowed to grant it), but role {role} allows sessions of at most {max} s (its MaxSessionDuration): ask for less, or raise the role's MaxSessionDuration"
                ),
            ));
        }
        Ok(())
    }

    async fn grant(&self, spec: &GrantSpec) -> Result<GrantRecord, ProviderError> {
        let role = self.check(&spec.role, &spec.scope, &spec.subject)?;
        let acct = self.account(&spec.scope).await;
        let tombstoned = || ProviderError::Tombstoned {
            provider: self.name.clone(),
            grant_id: spec.grant_id,
        };
        let found = self.records_of(&acct, &role, spec.request_id).await?;
        let mine = |found: &[(Record, String)], t: bool| find(found, spec.grant_id, t);
        if mine(&found, true).is_some() {
            return Err(tombstoned());
        }
        if let Some((r, arn)) = mine(&found, false) {
            return Ok(self.to_record(&spec.role, &r, &arn, &spec.scope));
        }
        let record = record_of(spec, &role, false);
        self.store(&acct).write(&record).await?;
        // From here the record may exist: any failure leaves the outcome unknown.
        let unknown = |e: ProviderError| match e {
            e @ ProviderError::Unknown { .. } => e,
            e => ProviderError::Unknown {
                provider: self.name.clone(),
                reason: format!("after writing the record of grant {}: {e}", spec.grant_id),
            },
        };
        // A revoke may have overtaken this grant between the listing and the write: its
        // tombstone wins, and the record just written goes.
        let found = self
            .records_of(&acct, &role, spec.request_id)
            .await
            .map_err(unknown)?;
        let live = mine(&found, false);
        if mine(&found, true).is_some() {
            if let Some((_, arn)) = &live {
                self.store(&acct)
                    .delete(arn, spec.grant_id)
                    .await
                    .map_err(unknown)?;
            }
            return Err(tombstoned());
        }
        match live {
            Some((r, arn)) => Ok(self.to_record(&spec.role, &r, &arn, &spec.scope)),
            None => Err(ProviderError::Unknown {
                provider: self.name.clone(),
                reason: format!(
                    "the record of grant {} was written but is not listed yet; retried",
                    spec.grant_id
                ),
            }),
        }
    }

    async fn revoke(&self, grant: &GrantRecord) -> Result<(), ProviderError> {
        let role = self.resolve(&grant.role, &grant.scope)?;
        let acct = self.account(&grant.scope).await;
        let found = self.records_of(&acct, &role, grant.request_id).await?;
        let mine = |found: &[(Record, String)], t: bool| find(found, grant.grant_id, t);
        // The tombstone takes the live record's end and principal where there is one.
        let tombstone = match (mine(&found, true), mine(&found, false)) {
            (Some((t, _)), _) => t,
            (None, live) => {
                let mut t = live.map(|(r, _)| r).unwrap_or_else(|| Record {
                    grant_id: grant.grant_id,
                    request_id: grant.request_id,
                    role: role.to_ascii_lowercase(),
                    requested: grant.role.clone(),
                    principal: grant.subject.clone(),
                    not_after: grant.not_after,
                    tombstone: false,
                });
                t.tombstone = true;
                self.store(&acct).write(&t).await?;
                t
            }
        };
        // Listed again after the tombstone: a grant racing this revoke either wrote its
        // record before (deleted here) or sees the tombstone after its write.
        let found = self.records_of(&acct, &role, grant.request_id).await?;
        if mine(&found, true).is_none() {
            return Err(ProviderError::Unknown {
                provider: self.name.clone(),
                reason: format!(
                    "the tombstone of grant {} was written but is not listed yet; retried",
                    grant.grant_id
                ),
            });
        }
        if let Some((_, arn)) = mine(&found, false) {
            self.store(&acct).delete(&arn, grant.grant_id).await?;
        }
        if tombstone.not_after > Utc::now() {
            self.sync_deny(&acct, &grant.scope, &role, Some(grant.grant_id), None)
                .await?;
        }
        Ok(())
    }

    async fn inspect(&self, grant: &GrantRecord) -> Result<GrantState, ProviderError> {
        Ok(match self.live(grant).await? {
            Some(_) => GrantState::Active,
            None => GrantState::Gone,
        })
    }

    async fn credentials(&self, grant: &GrantRecord) -> Result<Credentials, ProviderError> {
        // A role taken off `roles` mints no more sessions.
        self.check(&grant.role, &grant.scope, &grant.subject)?;
        let Some((role, record, _)) = self.live(grant).await? else {
            return Err(ProviderError::NotActive {
                provider: self.name.clone(),
                grant_id: grant.grant_id,
            });
        };
        let acct = self.account(&grant.scope).await;
        let found = self.get_role(&acct, &role, &grant.scope).await?;
        let role_max = found.max_session_duration.unwrap_or(3600).max(0) as u32;
        let mut longest = self.config.session_seconds().min(role_max);
        if self.config.hub_role.is_some() {
            longest = longest.min(CHAINED_SESSION_SECONDS);
        }
        // AWS counts a session from its own clock, a little after ours: a margin keeps the
        // session's end before the grant's.
        let remaining = (record.not_after - Utc::now() - SESSION_MARGIN)
            .num_seconds()
            .max(0) as u32;
        let seconds = longest.min(remaining);
        if seconds < MIN_SESSION_SECONDS {
            return Err(self.invalid(
                "not_after",
                format!(
                    "{remaining} s of grant {} remain, and AWS's shortest session is {MIN_SESSION_SECONDS} s: no session can end by the grant's end. Credentials minted before keep working until it; extend the request for more",
                    grant.grant_id
                ),
            ));
        }
        let tag = |k: &str, v: String| {
            aws_sdk_sts::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(|e| self.invalid("request", format!("session tag {k}: {e}")))
        };
        let out = acct
            .sts
            .assume_role()
            .role_arn(found.arn())
            .role_session_name(session_name(grant.grant_id))
            .duration_seconds(seconds as i32)
            .source_identity(&record.principal)
            .tags(tag(deny::GRANT_TAG, grant.grant_id.to_string())?)
            .tags(tag(deny::REQUEST_TAG, grant.request_id.to_string())?)
            .send()
            .await
            .map_err(|e| {
                map(
                    &self.name,
                    &format!(
                        "assuming role {role} for grant {} (AssumeRole)",
                        grant.grant_id
                    ),
                    Call::Read,
                    e,
                )
            })?;
        let Some(c) = out.credentials() else {
            return Err(ProviderError::Unavailable {
                provider: self.name.clone(),
                reason: "AssumeRole answered without credentials".into(),
            });
        };
        let session_end =
            DateTime::from_timestamp(c.expiration().secs(), 0).unwrap_or(record.not_after);
        let region = self.config.region.clone();
        Ok(Credentials {
            env: [
                ("AWS_ACCESS_KEY_ID", c.access_key_id().to_owned()),
                ("AWS_SECRET_ACCESS_KEY", c.secret_access_key().to_owned()),
                ("AWS_SESSION_TOKEN", c.session_token().to_owned()),
                ("AWS_REGION", region.clone()),
                ("AWS_DEFAULT_REGION", region),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            expires_at: session_end.min(record.not_after),
            notice: None,
        })
    }

    async fn list_managed(&self, page: Option<&str>) -> Result<ManagedPage, ProviderError> {
        let (index, marker) = match page {
            None => (0, None),
            Some(token) => {
                let bad = || {
                    self.invalid(
                        "page",
                        format!("{token:?} is not a page token of this provider"),
                    )
                };
                let (i, m) = token.split_once(':').ok_or_else(bad)?;
                let i: usize = i.parse().map_err(|_| bad())?;
                (i, (!m.is_empty()).then(|| m.to_owned()))
            }
        };
        let Some(account) = self.config.accounts.get(index) else {
            return Ok(ManagedPage::default());
        };
        let acct = self.account(account).await;
        let (records, more) = self
            .store(&acct)
            .page::<Record>(records::ROOT, PAGE_SIZE, marker)
            .await?;
        let grants = records
            .into_iter()
            .map(|(r, arn)| ManagedGrant {
                grant_id: r.grant_id,
                request_id: Some(r.request_id),
                subject: r.principal,
                role: r.requested,
                scope: account.clone(),
                not_after: Some(r.not_after),
                provider_ref: arn,
                tombstone: r.tombstone,
            })
            .collect();
        let next = match more {
            Some(m) => Some(format!("{index}:{m}")),
            None if index + 1 < self.config.accounts.len() => Some(format!("{}:", index + 1)),
            None => None,
        };
        Ok(ManagedPage { grants, next })
    }

    async fn forget(&self, tombstone: &ManagedGrant) -> Result<(), ProviderError> {
        if !tombstone.tombstone {
            return Ok(());
        }
        let role = self.resolve(&tombstone.role, &tombstone.scope)?;
        let acct = self.account(&tombstone.scope).await;
        let found = self
            .records_of(&acct, &role, tombstone.request_id.unwrap_or_default())
            .await?;
        let Some((record, arn)) = find(&found, tombstone.grant_id, true) else {
            return Ok(());
        };
        if record.not_after > Utc::now() {
            // Sessions of the grant may still be live: the tombstone is their deny.
            return Ok(());
        }
        // The deny first: should this fail, the tombstone is still there to be forgotten
        // again at the next pass.
        if self
            .read_deny(&acct, &role)
            .await?
            .all()
            .contains(&record.grant_id)
        {
            self.sync_deny(&acct, &tombstone.scope, &role, None, Some(record.grant_id))
                .await?;
        }
        self.store(&acct).delete(&arn, record.grant_id).await?;
        Ok(())
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            kind: "aws".into(),
            roles: self.config.roles.clone(),
            scopes: self.config.accounts.clone(),
            native_expiry: false,
        }
    }
}

/// The role session name of every session of a grant.
pub fn session_name(grant_id: Uuid) -> String {
    format!("jitsudo-{grant_id}")
}

fn record_of(spec: &GrantSpec, role: &str, tombstone: bool) -> Record {
    Record {
        grant_id: spec.grant_id,
        request_id: spec.request_id,
        role: role.to_ascii_lowercase(),
        requested: spec.role.clone(),
        principal: spec.subject.clone(),
        not_after: spec.not_after,
        tombstone,
    }
}

/// `arn:aws:iam::ACCOUNT:role/[PATH/]NAME` → (account, name).
fn parse_role_arn(arn: &str) -> Option<(&str, &str)> {
    let rest = arn.strip_prefix("arn:")?;
    let mut parts = rest.splitn(5, ':');
    let (_partition, service, _region, account, resource) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if service != "iam" {
        return None;
    }
    let path = resource.strip_prefix("role/")?;
    Some((account, path.rsplit('/').next()?))
}

/// The ARN partition of a region.
fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// A role pattern: a name, or a prefix ending in `*`.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// What AWS accepts as a SourceIdentity.
fn is_source_identity(s: &str) -> bool {
    (2..=64).contains(&s.len()) && s.chars().all(is_role_name_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_arns_give_their_account_and_name() {
        assert_eq!(
            parse_role_arn("arn:aws:iam::123456789012:role/ReadOnly"),
            Some(("123456789012", "ReadOnly"))
        );
        assert_eq!(
            parse_role_arn("arn:aws:iam::123456789012:role/team/a/Admin"),
            Some(("123456789012", "Admin"))
        );
        assert_eq!(parse_role_arn("arn:aws:s3:::bucket"), None);
        assert_eq!(parse_role_arn("arn:aws:iam::123456789012:user/bob"), None);
    }

    #[test]
    fn role_patterns_match_names_or_prefixes() {
        assert!(matches("ReadOnly", "ReadOnly"));
        assert!(!matches("ReadOnly", "ReadOnlyX"));
        assert!(matches("Admin*", "AdminProd"));
        assert!(matches("*", "Anything"));
        assert!(!matches("Admin*", "ReadOnly"));
    }

    #[test]
    fn source_identities_are_what_aws_accepts() {
        assert!(is_source_identity("alice@example.com"));
        assert!(!is_source_identity("a"));
        assert!(!is_source_identity("alice smith"));
        assert!(!is_source_identity(&"a".repeat(65)));
    }
}
