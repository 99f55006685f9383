//! Mode `identity_center`: a grant is an IAM Identity Center account assignment of a
//! permission set (`role`) in an account (`scope`) to the requester's Identity Center user
//! (the mapped principal is its `UserName`, looked up in the identity store).
//!
//! - jitsudod runs in the management account or a delegated administrator account: every
//!   call goes to SSO Admin, Identity Store and IAM there. Records (`records::Assignment`)
//!   are unattached IAM policies in that account, as in mode `sts`; the name is the
//!   idempotency key and a tombstone refuses a late grant.
//! - A grant writes its record, then `CreateAccountAssignment`, polled until `SUCCEEDED`.
//!   One assignment serves every live grant of one user, permission set and account: a
//!   second grant finds it there. An assignment jitsudo did not make (a standing one) is
//!   never taken over: the grant is refused, and so it is never deleted either.
//! - A revoke writes the tombstone, deletes the live record and, when no other live grant
//!   needs the assignment, `DeleteAccountAssignment`, polled. Sessions already issued live
//!   on for up to the permission set's `SessionDuration`: the revoke then adds a deny for
//!   that user in that account, for sessions issued before the assignment went, to the
//!   permission set's inline policy (`ic_deny`) and provisions it. The deny stays until
//!   those sessions have expired; the reconciler's listing takes it out after that.
//! - jitsudo mints no keys here: a user signs in through the AWS access portal
//!   (`start_url`) or `aws sso login`; `credentials` says so and names account and
//!   permission set.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_ssoadmin::types::{PrincipalType, ProvisionTargetType, StatusValues, TargetType};
use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use super::config::AwsConfig;
use super::errors::{Call, code, map};
use super::ic_deny::{self, Denies, SessionDeny};
use super::records::{self, Assignment, Ended};
use super::store::{Listed, Store, find};
use crate::{
    Credentials, GrantRecord, GrantSpec, GrantState, ManagedGrant, ManagedPage, Provider,
    ProviderError, ProviderInfo,
};

/// Records per page of the reconciler's listing.
const PAGE_SIZE: i32 = 100;
/// How long a grant or revoke waits for an assignment's creation or deletion, or for a
/// permission set's provisioning, before it fails (outcome unknown: retried).
const POLL_FOR: Duration = Duration::from_secs(60);
const POLL_FIRST: Duration = Duration::from_millis(200);
const POLL_MOST: Duration = Duration::from_secs(4);
/// Rounds of rewriting a permission set's denies before giving up (retryable).
const DENY_ROUNDS: u32 = 8;
/// Sessions issued up to this long after jitsudod's clock saw the assignment go are denied
/// too (AWS's clock may run a little behind).
const ISSUE_MARGIN: TimeDelta = TimeDelta::seconds(5);
/// The user id of a tombstone of a grant that never had a record (so no assignment).
const NO_USER: &str = "-";

struct Instance {
    arn: String,
    identity_store: String,
}

#[derive(Clone)]
struct PermissionSet {
    arn: String,
    /// How long a session of it lasts (`SessionDuration`, one hour by default).
    session: TimeDelta,
}

/// Grants and revokes of one user, permission set and account take turns on a node.
type Key = (String, String, String);

pub struct IdentityCenterProvider {
    name: String,
    config: AwsConfig,
    iam: aws_sdk_iam::Client,
    sso: aws_sdk_ssoadmin::Client,
    ids: aws_sdk_identitystore::Client,
    instance: tokio::sync::OnceCell<Instance>,
    sets: Mutex<HashMap<String, PermissionSet>>,
    keys: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    policies: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl IdentityCenterProvider {
    /// Checks the table and loads jitsudod's AWS credentials (the SDK's default chain, or
    /// `profile`). No AWS call is made yet.
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
        if config.mode != super::AwsMode::IdentityCenter {
            return Err("this provider is mode = \"identity_center\"".into());
        }
        let conf = super::sdk_config(config, credentials).await;
        Ok(IdentityCenterProvider {
            name: name.to_owned(),
            config: config.clone(),
            iam: aws_sdk_iam::Client::new(&conf),
            sso: aws_sdk_ssoadmin::Client::new(&conf),
            ids: aws_sdk_identitystore::Client::new(&conf),
            instance: tokio::sync::OnceCell::new(),
            sets: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            policies: Mutex::new(HashMap::new()),
        })
    }

    fn store(&self) -> Store<'_> {
        Store {
            provider: &self.name,
            iam: &self.iam,
        }
    }

    fn invalid(&self, field: &'static str, reason: String) -> ProviderError {
        ProviderError::Invalid {
            provider: self.name.clone(),
            field,
            reason,
        }
    }

    fn unavailable(&self, reason: String) -> ProviderError {
        ProviderError::Unavailable {
            provider: self.name.clone(),
            reason,
        }
    }

    fn lock_of<K: std::hash::Hash + Eq + Clone>(
        map: &Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
        key: &K,
    ) -> Arc<tokio::sync::Mutex<()>> {
        map.lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// The instance and its identity store: configured, or the one `ListInstances` shows.
    async fn instance(&self) -> Result<&Instance, ProviderError> {
        self.instance
            .get_or_try_init(|| async {
                if let (Some(arn), Some(store)) =
                    (&self.config.instance_arn, &self.config.identity_store_id)
                {
                    return Ok(Instance {
                        arn: arn.clone(),
                        identity_store: store.clone(),
                    });
                }
                let out = self.sso.list_instances().send().await.map_err(|e| {
                    map(
                        &self.name,
                        "finding the Identity Center instance (ListInstances)",
                        Call::Read,
                        e,
                    )
                })?;
                let found: Vec<_> = out
                    .instances()
                    .iter()
                    .filter(|i| {
                        self.config
                            .instance_arn
                            .as_deref()
                            .is_none_or(|a| i.instance_arn() == Some(a))
                    })
                    .collect();
                let [one] = found.as_slice() else {
                    return Err(self.unavailable(format!(
                        "ListInstances shows {} Identity Center instances{}; set instance_arn and identity_store_id",
                        found.len(),
                        match &self.config.instance_arn {
                            Some(a) => format!(" named {a}"),
                            None => String::new(),
                        }
                    )));
                };
                Ok(Instance {
                    arn: one.instance_arn().unwrap_or_default().to_owned(),
                    identity_store: self
                        .config
                        .identity_store_id
                        .clone()
                        .or_else(|| one.identity_store_id().map(str::to_owned))
                        .unwrap_or_default(),
                })
            })
            .await
    }

    /// A permission set by name; `None` when the instance has none of that name. Names are
    /// cached with their ARN and session length, read again on a miss.
    async fn permission_set(&self, name: &str) -> Result<Option<PermissionSet>, ProviderError> {
        if let Some(s) = self.lock_sets().get(name) {
            return Ok(Some(s.clone()));
        }
        let instance = self.instance().await?;
        let what = "reading the permission sets (ListPermissionSets, DescribePermissionSet)";
        let mut found = HashMap::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .sso
                .list_permission_sets()
                .instance_arn(&instance.arn)
                .max_results(100)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| map(&self.name, what, Call::Read, e))?;
            for arn in page.permission_sets() {
                let out = self
                    .sso
                    .describe_permission_set()
                    .instance_arn(&instance.arn)
                    .permission_set_arn(arn)
                    .send()
                    .await
                    .map_err(|e| map(&self.name, what, Call::Read, e))?;
                let Some(set) = out.permission_set() else {
                    continue;
                };
                let session = set
                    .session_duration()
                    .and_then(parse_iso_duration)
                    // Unreadable: the longest AWS allows, so no deny leaves early.
                    .unwrap_or(TimeDelta::hours(12));
                if let Some(n) = set.name() {
                    found.insert(
                        n.to_owned(),
                        PermissionSet {
                            arn: arn.clone(),
                            session,
                        },
                    );
                }
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => break,
            }
        }
        let mut sets = self.lock_sets();
        *sets = found;
        Ok(sets.get(name).cloned())
    }

    fn lock_sets(&self) -> std::sync::MutexGuard<'_, HashMap<String, PermissionSet>> {
        self.sets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Identity Center user id of a user name; `None` when the store has no such user.
    async fn user_id(&self, user_name: &str) -> Result<Option<String>, ProviderError> {
        use aws_sdk_identitystore::types::{AlternateIdentifier, UniqueAttribute};
        let instance = self.instance().await?;
        let attribute = UniqueAttribute::builder()
            .attribute_path("userName")
            .attribute_value(aws_smithy_types::Document::String(user_name.to_owned()))
            .build()
            .map_err(|e| self.invalid("subject", format!("user name {user_name:?}: {e}")))?;
        match self
            .ids
            .get_user_id()
            .identity_store_id(&instance.identity_store)
            .alternate_identifier(AlternateIdentifier::UniqueAttribute(attribute))
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.user_id().to_owned())),
            Err(e) if code(&e) == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(map(
                &self.name,
                &format!("looking up user {user_name:?} (identitystore GetUserId)"),
                Call::Read,
                e,
            )),
        }
    }

    /// Allow-lists and the principal: for validate, grant and credentials.
    fn check(&self, set: &str, account: &str, principal: &str) -> Result<(), ProviderError> {
        self.resolve(set, account)?;
        if !self.config.roles.iter().any(|p| matches(p, set)) {
            return Err(self.invalid(
                "role",
                format!(
                    "permission set {set:?} is not grantable by this provider (roles: {}); ask for one of those",
                    self.config.roles.join(", ")
                ),
            ));
        }
        if principal.is_empty() || principal.len() > 128 {
            return Err(self.invalid(
                "subject",
                format!(
                    "the principal {principal:?} cannot be an Identity Center user name (1 to 128 characters); set this provider's `subject` template or identity map"
                ),
            ));
        }
        Ok(())
    }

    /// The account (one of this provider's) and a permission set name: for calls about a
    /// grant that may exist (revoke, inspect, forget), also of a set since taken off `roles`.
    fn resolve(&self, set: &str, account: &str) -> Result<(), ProviderError> {
        if !self.config.accounts.iter().any(|a| a == account) {
            return Err(self.invalid(
                "scope",
                format!(
                    "account {account:?} is not one of this provider's accounts ({}); ask for one of those or add it to `accounts`",
                    self.config.accounts.join(", ")
                ),
            ));
        }
        if set.is_empty() || set.len() > 32 || !set.chars().all(super::config::is_role_name_char) {
            return Err(self.invalid(
                "role",
                format!(
                    "{set:?} is not a permission set name (1 to 32 of letters, digits and +=,.@_-)"
                ),
            ));
        }
        Ok(())
    }

    async fn records_of(
        &self,
        account: &str,
        set: &str,
        request_id: Uuid,
    ) -> Result<Vec<Listed<Assignment>>, ProviderError> {
        self.store()
            .list(&records::request_prefix(account, set, request_id))
            .await
    }

    /// Every record of one user on one account and permission set.
    async fn records_of_user(
        &self,
        account: &str,
        set: &str,
        user_id: &str,
    ) -> Result<Vec<Assignment>, ProviderError> {
        Ok(self
            .store()
            .list::<Assignment>(&records::set_prefix(account, set))
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .filter(|r| r.user_id == user_id)
            .collect())
    }

    /// The users a permission set is assigned to in an account.
    async fn assignees(
        &self,
        account: &str,
        set: &PermissionSet,
    ) -> Result<BTreeSet<String>, ProviderError> {
        let instance = self.instance().await?;
        let mut out = BTreeSet::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .sso
                .list_account_assignments()
                .instance_arn(&instance.arn)
                .account_id(account)
                .permission_set_arn(&set.arn)
                .max_results(100)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| {
                    map(
                        &self.name,
                        &format!(
                            "listing the assignments in account {account} (ListAccountAssignments)"
                        ),
                        Call::Read,
                        e,
                    )
                })?;
            out.extend(
                page.account_assignments()
                    .iter()
                    .filter(|a| a.principal_type() == Some(&PrincipalType::User))
                    .filter_map(|a| a.principal_id().map(str::to_owned)),
            );
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    async fn assigned(
        &self,
        account: &str,
        set: &PermissionSet,
        user_id: &str,
    ) -> Result<bool, ProviderError> {
        Ok(self.assignees(account, set).await?.contains(user_id))
    }

    /// Creates the assignment and waits for it.
    async fn create_assignment(
        &self,
        account: &str,
        set_name: &str,
        set: &PermissionSet,
        user_id: &str,
    ) -> Result<(), ProviderError> {
        let instance = self.instance().await?;
        let what = format!(
            "assigning permission set {set_name} in account {account} (CreateAccountAssignment)"
        );
        let out = self
            .sso
            .create_account_assignment()
            .instance_arn(&instance.arn)
            .target_id(account)
            .target_type(TargetType::AwsAccount)
            .permission_set_arn(&set.arn)
            .principal_type(PrincipalType::User)
            .principal_id(user_id)
            .send()
            .await
            .map_err(|e| map(&self.name, &what, Call::Write, e))?;
        let first = OpStatus::of_assignment(out.account_assignment_creation_status());
        let what = what.as_str();
        self.settle(what, first, |request| async move {
            let out = self
                .sso
                .describe_account_assignment_creation_status()
                .instance_arn(&instance.arn)
                .account_assignment_creation_request_id(request)
                .send()
                .await
                .map_err(|e| map(&self.name, what, Call::Read, e))?;
            Ok(OpStatus::of_assignment(
                out.account_assignment_creation_status(),
            ))
        })
        .await
    }

    /// Deletes the assignment and waits until it is gone (also when it was not there).
    async fn delete_assignment(
        &self,
        account: &str,
        set_name: &str,
        set: &PermissionSet,
        user_id: &str,
    ) -> Result<(), ProviderError> {
        let instance = self.instance().await?;
        let what = format!(
            "removing permission set {set_name} in account {account} (DeleteAccountAssignment)"
        );
        // Until the listing no longer shows it: a deletion reported done is checked.
        for _ in 0..3 {
            if !self.assigned(account, set, user_id).await? {
                return Ok(());
            }
            let out = match self
                .sso
                .delete_account_assignment()
                .instance_arn(&instance.arn)
                .target_id(account)
                .target_type(TargetType::AwsAccount)
                .permission_set_arn(&set.arn)
                .principal_type(PrincipalType::User)
                .principal_id(user_id)
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) if code(&e) == Some("ResourceNotFoundException") => continue,
                Err(e) => return Err(map(&self.name, &what, Call::Write, e)),
            };
            let first = OpStatus::of_assignment(out.account_assignment_deletion_status());
            let what = &what;
            self.settle(what, first, |request| async move {
                let out = self
                    .sso
                    .describe_account_assignment_deletion_status()
                    .instance_arn(&instance.arn)
                    .account_assignment_deletion_request_id(request)
                    .send()
                    .await
                    .map_err(|e| map(&self.name, what, Call::Read, e))?;
                Ok(OpStatus::of_assignment(
                    out.account_assignment_deletion_status(),
                ))
            })
            .await?;
        }
        if self.assigned(account, set, user_id).await? {
            return Err(self.unknown(format!("{what}: still listed after three deletions")));
        }
        Ok(())
    }

    fn unknown(&self, reason: String) -> ProviderError {
        ProviderError::Unknown {
            provider: self.name.clone(),
            reason,
        }
    }

    /// Makes the permission set's denies hold `add`, every listed "ended" record of the
    /// set whose sessions may still live, and what it holds already, less the entries whose
    /// sessions have all expired. Written, provisioned, then read back until what Identity
    /// Center holds is what was wanted.
    async fn sync_denies(
        &self,
        set_name: &str,
        set: &PermissionSet,
        add: Option<(SessionDeny, DateTime<Utc>)>,
    ) -> Result<(), ProviderError> {
        let lock = Self::lock_of(&self.policies, &set.arn);
        let _turn = lock.lock().await;
        let instance = self.instance().await?;
        let mut provisioned = false;
        for _ in 0..DENY_ROUNDS {
            let now = Utc::now();
            let live = |t: &DateTime<Utc>| *t + set.session > now;
            let current_doc = self.read_policy(set_name, set).await?;
            let current = ic_deny::session_denies(&current_doc);
            let mut wanted: Denies = current.clone();
            let ended = self.ended_of(set_name).await?;
            for e in ended {
                put(
                    &mut wanted,
                    SessionDeny {
                        user_id: e.user_id,
                        account: e.account,
                    },
                    e.issued_before,
                );
            }
            if let Some((d, t)) = &add {
                put(&mut wanted, d.clone(), *t);
            }
            wanted.retain(|_, t| live(t));
            if wanted == current {
                // The stored policy is not what the accounts have until it is provisioned:
                // a revoke provisions even when an earlier attempt wrote its entry.
                if add.is_some() && !provisioned {
                    self.provision(set_name, set).await?;
                }
                return Ok(());
            }
            let doc = ic_deny::merged(&current_doc, &wanted).map_err(|e| {
                self.unavailable(format!(
                    "permission set {set_name}: {e}; entries leave as their sessions expire, and the revoke is retried until then"
                ))
            })?;
            let what = format!("writing the session denies of permission set {set_name}");
            match doc {
                Some(doc) => self
                    .sso
                    .put_inline_policy_to_permission_set()
                    .instance_arn(&instance.arn)
                    .permission_set_arn(&set.arn)
                    .inline_policy(doc)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        map(
                            &self.name,
                            &format!("{what} (PutInlinePolicyToPermissionSet)"),
                            Call::Write,
                            e,
                        )
                    })?,
                None => self
                    .sso
                    .delete_inline_policy_from_permission_set()
                    .instance_arn(&instance.arn)
                    .permission_set_arn(&set.arn)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        map(
                            &self.name,
                            &format!("{what} (DeleteInlinePolicyFromPermissionSet)"),
                            Call::Write,
                            e,
                        )
                    })?,
            }
            self.provision(set_name, set).await?;
            provisioned = true;
        }
        Err(self.unavailable(format!(
            "the session denies of permission set {set_name} kept changing under concurrent writers for {DENY_ROUNDS} rounds; retried"
        )))
    }

    async fn read_policy(
        &self,
        set_name: &str,
        set: &PermissionSet,
    ) -> Result<String, ProviderError> {
        let instance = self.instance().await?;
        let out = self
            .sso
            .get_inline_policy_for_permission_set()
            .instance_arn(&instance.arn)
            .permission_set_arn(&set.arn)
            .send()
            .await
            .map_err(|e| {
                map(
                    &self.name,
                    &format!(
                        "reading the inline policy of permission set {set_name} (GetInlinePolicyForPermissionSet)"
                    ),
                    Call::Read,
                    e,
                )
            })?;
        Ok(out.inline_policy().unwrap_or_default().to_owned())
    }

    /// Pushes the permission set's policy to every account it is provisioned to, and waits.
    async fn provision(&self, set_name: &str, set: &PermissionSet) -> Result<(), ProviderError> {
        let instance = self.instance().await?;
        let what = format!("provisioning permission set {set_name} (ProvisionPermissionSet)");
        let out = self
            .sso
            .provision_permission_set()
            .instance_arn(&instance.arn)
            .permission_set_arn(&set.arn)
            .target_type(ProvisionTargetType::AllProvisionedAccounts)
            .send()
            .await
            .map_err(|e| map(&self.name, &what, Call::Write, e))?;
        let first = OpStatus::of_provisioning(out.permission_set_provisioning_status());
        let what = what.as_str();
        self.settle(what, first, |request| async move {
            let out = self
                .sso
                .describe_permission_set_provisioning_status()
                .instance_arn(&instance.arn)
                .provision_permission_set_request_id(request)
                .send()
                .await
                .map_err(|e| map(&self.name, what, Call::Read, e))?;
            Ok(OpStatus::of_provisioning(
                out.permission_set_provisioning_status(),
            ))
        })
        .await
    }

    /// Waits for an asynchronous operation: asks again while it is IN_PROGRESS, with growing
    /// pauses, for up to a minute. Only SUCCEEDED is done; anything else leaves the outcome
    /// unknown (retried).
    async fn settle<F, Fut>(
        &self,
        what: &str,
        mut status: OpStatus,
        mut describe: F,
    ) -> Result<(), ProviderError>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Result<OpStatus, ProviderError>>,
    {
        let mut wait = Poll::new();
        while status.state == Some(StatusValues::InProgress) {
            let Some(request) = status.request.clone() else {
                break;
            };
            wait.next(what).map_err(|r| self.unknown(r))?.await;
            let next = describe(request.clone()).await?;
            status = OpStatus {
                request: next.request.or(Some(request)),
                ..next
            };
        }
        match status.state {
            Some(StatusValues::Succeeded) => Ok(()),
            Some(StatusValues::Failed) => Err(self.unknown(format!(
                "{what}: FAILED: {}",
                status.failure.unwrap_or_else(|| "no reason given".into())
            ))),
            other => Err(self.unknown(format!("{what}: status {other:?}"))),
        }
    }

    /// The "ended" records of one permission set (all accounts).
    async fn ended_of(&self, set_name: &str) -> Result<Vec<Ended>, ProviderError> {
        Ok(self
            .store()
            .list::<Ended>(records::ENDED_ROOT)
            .await?
            .into_iter()
            .map(|(e, _)| e)
            .filter(|e| e.permission_set == set_name)
            .collect())
    }

    /// A grant's assignment is no longer needed by `grant_id`: unless another live grant of
    /// the same user, permission set and account needs it, it goes, and the user's sessions
    /// issued before are denied.
    async fn release(&self, a: &Assignment) -> Result<(), ProviderError> {
        if a.user_id == NO_USER {
            return Ok(());
        }
        let key = (
            a.account.clone(),
            a.permission_set.clone(),
            a.user_id.clone(),
        );
        let lock = Self::lock_of(&self.keys, &key);
        let _turn = lock.lock().await;
        let Some(set) = self.permission_set(&a.permission_set).await? else {
            // The permission set is gone, and with it every assignment and session role.
            return Ok(());
        };
        let others = |rs: &[Assignment]| live_among(rs, Some(a.grant_id));
        if others(
            &self
                .records_of_user(&a.account, &a.permission_set, &a.user_id)
                .await?,
        ) {
            return Ok(());
        }
        self.delete_assignment(&a.account, &a.permission_set, &set, &a.user_id)
            .await?;
        // A grant on another node may have written its record after the listing above and
        // found the assignment still there: it is given back.
        if others(
            &self
                .records_of_user(&a.account, &a.permission_set, &a.user_id)
                .await?,
        ) {
            return self
                .create_assignment(&a.account, &a.permission_set, &set, &a.user_id)
                .await;
        }
        let issued_before = ceil_second(Utc::now() + ISSUE_MARGIN);
        let ended = Ended {
            grant_id: a.grant_id,
            request_id: a.request_id,
            account: a.account.clone(),
            permission_set: a.permission_set.clone(),
            user_id: a.user_id.clone(),
            issued_before,
        };
        self.store().write(&ended).await?;
        // An earlier release of this grant (a revoke that overtook the assignment's
        // creation) left an older time: sessions since would not be matched by it, so the
        // record is written again with this deletion's time.
        let listed = self.store().list::<Ended>(records::ENDED_ROOT).await?;
        if let Some((old, arn)) = listed
            .iter()
            .find(|(e, _)| e.grant_id == a.grant_id && e.issued_before < issued_before)
        {
            self.store().delete(arn, old.grant_id).await?;
            self.store().write(&ended).await?;
        }
        let recorded = issued_before;
        self.sync_denies(
            &a.permission_set,
            &set,
            Some((
                SessionDeny {
                    user_id: a.user_id.clone(),
                    account: a.account.clone(),
                },
                recorded,
            )),
        )
        .await
    }

    /// Releases the assignment of `grant_id` as its live record or tombstone among `found`
    /// names it (nothing when neither names a user).
    async fn release_of(
        &self,
        found: &[Listed<Assignment>],
        grant_id: Uuid,
    ) -> Result<(), ProviderError> {
        let named = find(found, grant_id, false)
            .or_else(|| find(found, grant_id, true))
            .filter(|(r, _)| r.user_id != NO_USER);
        match named {
            Some((r, _)) => self.release(&r).await,
            None => Ok(()),
        }
    }

    /// Waits until no deny of this user's sessions in this account names a time still to
    /// come (a revoke a moment ago adds a few seconds for AWS's clock).
    async fn await_denies_of(&self, a: &Assignment) -> Result<(), ProviderError> {
        let latest = self
            .ended_of(&a.permission_set)
            .await?
            .into_iter()
            .filter(|e| e.user_id == a.user_id && e.account == a.account)
            .map(|e| e.issued_before)
            .max();
        if let Some(t) = latest
            && let Ok(wait) = (t - Utc::now()).to_std()
        {
            let most = (ISSUE_MARGIN + TimeDelta::seconds(2))
                .to_std()
                .unwrap_or(Duration::from_secs(7));
            tokio::time::sleep(wait.min(most)).await;
        }
        Ok(())
    }

    /// The reconciler's upkeep, at the start of each listing: denies whose sessions have all
    /// expired leave their permission sets, then their "ended" records go; live records
    /// past their end that hold no assignment (a grant that never got one) go too.
    async fn tidy(&self) -> Result<(), ProviderError> {
        // Session lengths read afresh: one raised since would otherwise end denies early.
        self.lock_sets().clear();
        let now = Utc::now();
        let ended = self.store().list::<Ended>(records::ENDED_ROOT).await?;
        let names: BTreeSet<&str> = ended
            .iter()
            .map(|(e, _)| e.permission_set.as_str())
            .collect();
        for name in names {
            let Some(set) = self.permission_set(name).await? else {
                for (e, arn) in ended.iter().filter(|(e, _)| e.permission_set == name) {
                    self.store().delete(arn, e.grant_id).await?;
                }
                continue;
            };
            self.sync_denies(name, &set, None).await?;
            for (e, arn) in ended.iter().filter(|(e, _)| e.permission_set == name) {
                if e.issued_before + set.session <= now {
                    self.store().delete(arn, e.grant_id).await?;
                }
            }
        }
        Ok(())
    }

    fn to_record(&self, r: &Assignment, arn: &str) -> GrantRecord {
        GrantRecord {
            grant_id: r.grant_id,
            request_id: r.request_id,
            subject: r.principal.clone(),
            role: r.permission_set.clone(),
            scope: r.account.clone(),
            not_after: r.not_after,
            provider_ref: arn.to_owned(),
        }
    }

    /// The live record of a grant with its assignment in place, if it has one and no
    /// tombstone, and its end is ahead.
    async fn live(&self, grant: &GrantRecord) -> Result<Option<Assignment>, ProviderError> {
        self.resolve(&grant.role, &grant.scope)?;
        let found = self
            .records_of(&grant.scope, &grant.role, grant.request_id)
            .await?;
        if find(&found, grant.grant_id, true).is_some() {
            return Ok(None);
        }
        let Some((r, _)) =
            find(&found, grant.grant_id, false).filter(|(r, _)| r.not_after > Utc::now())
        else {
            return Ok(None);
        };
        let Some(set) = self.permission_set(&r.permission_set).await? else {
            return Ok(None);
        };
        Ok(self
            .assigned(&r.account, &set, &r.user_id)
            .await?
            .then_some(r))
    }
}

#[async_trait]
impl Provider for IdentityCenterProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn validate(&self, spec: &GrantSpec) -> Result<(), ProviderError> {
        self.check(&spec.role, &spec.scope, &spec.subject)?;
        if self.permission_set(&spec.role).await?.is_none() {
            return Err(self.invalid(
                "role",
                format!(
                    "permission set {:?} does not exist in the Identity Center instance; create it or ask for another",
                    spec.role
                ),
            ));
        }
        if self.user_id(&spec.subject).await?.is_none() {
            return Err(self.invalid(
                "subject",
                format!(
                    "the identity store has no user named {:?}; map the requester to their Identity Center user name (`subject` or the identity map)",
                    spec.subject
                ),
            ));
        }
        Ok(())
    }

    async fn grant(&self, spec: &GrantSpec) -> Result<GrantRecord, ProviderError> {
        self.check(&spec.role, &spec.scope, &spec.subject)?;
        let tombstoned = || ProviderError::Tombstoned {
            provider: self.name.clone(),
            grant_id: spec.grant_id,
        };
        let mine = |found: &[Listed<Assignment>], t: bool| find(found, spec.grant_id, t);
        let found = self
            .records_of(&spec.scope, &spec.role, spec.request_id)
            .await?;
        if mine(&found, true).is_some() {
            // An earlier attempt may have made the assignment after the revoke looked.
            self.release_of(&found, spec.grant_id).await?;
            return Err(tombstoned());
        }
        let Some(set) = self.permission_set(&spec.role).await? else {
            return Err(self.invalid(
                "role",
                format!(
                    "permission set {:?} does not exist in the Identity Center instance",
                    spec.role
                ),
            ));
        };
        let user_id = match mine(&found, false) {
            Some((r, _)) => r.user_id,
            None => self.user_id(&spec.subject).await?.ok_or_else(|| {
                self.invalid(
                    "subject",
                    format!("the identity store has no user named {:?}", spec.subject),
                )
            })?,
        };
        let key = (spec.scope.clone(), spec.role.clone(), user_id.clone());
        let lock = Self::lock_of(&self.keys, &key);
        let turn = lock.lock().await;
        if mine(&found, false).is_none() {
            // An assignment with no record of jitsudo's beside it is someone else's: it is
            // left alone, now and at the end.
            let known = self
                .records_of_user(&spec.scope, &spec.role, &user_id)
                .await?;
            if !live_among(&known, None) && self.assigned(&spec.scope, &set, &user_id).await? {
                // No live grant of jitsudo's holds it. With a tombstone of the user's beside
                // it, a revoke may still be removing it: retried. Without, it is standing.
                if known.iter().any(|r| r.tombstone) {
                    return Err(self.unavailable(format!(
                        "user {} holds permission set {} in account {} with no live grant of jitsudo's: a revoke may still be removing it, or it is an assignment jitsudo did not make (then it is never taken over); retried",
                        spec.subject, spec.role, spec.scope
                    )));
                }
                return Err(self.invalid(
                    "role",
                    format!(
                        "user {} already holds permission set {} in account {} through an assignment jitsudo did not make; jitsudo neither takes it over nor removes it",
                        spec.subject, spec.role, spec.scope
                    ),
                ));
            }
            let record = Assignment {
                grant_id: spec.grant_id,
                request_id: spec.request_id,
                account: spec.scope.clone(),
                permission_set: spec.role.clone(),
                user_id: user_id.clone(),
                principal: spec.subject.clone(),
                not_after: spec.not_after,
                tombstone: false,
            };
            self.store().write(&record).await?;
        }
        // From here the record may exist: any failure leaves the outcome unknown.
        let unknown = |e: ProviderError| match e {
            e @ ProviderError::Unknown { .. } => e,
            e => self.unknown(format!(
                "after writing the record of grant {}: {e}",
                spec.grant_id
            )),
        };
        let found = self
            .records_of(&spec.scope, &spec.role, spec.request_id)
            .await
            .map_err(unknown)?;
        let Some((live, arn)) = mine(&found, false) else {
            return Err(self.unknown(format!(
                "the record of grant {} was written but is not listed yet; retried",
                spec.grant_id
            )));
        };
        if mine(&found, true).is_some() {
            drop(turn);
            self.release_of(&found, spec.grant_id)
                .await
                .map_err(unknown)?;
            self.store()
                .delete(&arn, spec.grant_id)
                .await
                .map_err(unknown)?;
            return Err(tombstoned());
        }
        if !self
            .assigned(&spec.scope, &set, &user_id)
            .await
            .map_err(unknown)?
        {
            self.create_assignment(&spec.scope, &spec.role, &set, &user_id)
                .await
                .map_err(unknown)?;
        }
        drop(turn);
        // Sessions issued before an earlier revoke's deny time would be refused: the grant
        // is only done once that time has passed (seconds at most).
        self.await_denies_of(&live).await.map_err(unknown)?;
        // A revoke that overtook the assignment's creation: the assignment it could not
        // see goes now.
        let found = self
            .records_of(&spec.scope, &spec.role, spec.request_id)
            .await
            .map_err(unknown)?;
        if mine(&found, true).is_some() {
            self.release(&live).await.map_err(unknown)?;
            return Err(tombstoned());
        }
        Ok(self.to_record(&live, &arn))
    }

    async fn revoke(&self, grant: &GrantRecord) -> Result<(), ProviderError> {
        self.resolve(&grant.role, &grant.scope)?;
        let mine = |found: &[Listed<Assignment>], t: bool| find(found, grant.grant_id, t);
        let found = self
            .records_of(&grant.scope, &grant.role, grant.request_id)
            .await?;
        let tombstone = match (mine(&found, true), mine(&found, false)) {
            (Some((t, _)), _) => t,
            (None, live) => {
                // Without a live record the tombstone names no user: a grant writing its
                // record meanwhile is seen by the listing below (and releases itself when it
                // finds the tombstone).
                let mut t = match live {
                    Some((r, _)) => r,
                    None => Assignment {
                        grant_id: grant.grant_id,
                        request_id: grant.request_id,
                        account: grant.scope.clone(),
                        permission_set: grant.role.clone(),
                        user_id: NO_USER.to_owned(),
                        principal: grant.subject.clone(),
                        not_after: grant.not_after,
                        tombstone: false,
                    },
                };
                t.tombstone = true;
                self.store().write(&t).await?;
                t
            }
        };
        let found = self
            .records_of(&grant.scope, &grant.role, grant.request_id)
            .await?;
        if mine(&found, true).is_none() {
            return Err(self.unknown(format!(
                "the tombstone of grant {} was written but is not listed yet; retried",
                grant.grant_id
            )));
        }
        // The live record, if one is still listed (a grant that wrote it after this revoke
        // first looked), names the user; it goes only once the assignment is released, so
        // a retry after a failure here still knows whose assignment it was.
        match mine(&found, false) {
            Some((live, arn)) => {
                self.release(&live).await?;
                self.store().delete(&arn, grant.grant_id).await?;
                Ok(())
            }
            None => self.release(&tombstone).await,
        }
    }

    async fn inspect(&self, grant: &GrantRecord) -> Result<GrantState, ProviderError> {
        Ok(match self.live(grant).await? {
            Some(_) => GrantState::Active,
            None => GrantState::Gone,
        })
    }

    async fn credentials(&self, grant: &GrantRecord) -> Result<Credentials, ProviderError> {
        self.check(&grant.role, &grant.scope, &grant.subject)?;
        let Some(record) = self.live(grant).await? else {
            return Err(ProviderError::NotActive {
                provider: self.name.clone(),
                grant_id: grant.grant_id,
            });
        };
        let mut env = std::collections::BTreeMap::from([
            ("AWS_REGION".to_owned(), self.config.region.clone()),
            ("JITSUDO_AWS_ACCOUNT".to_owned(), record.account.clone()),
            (
                "JITSUDO_AWS_PERMISSION_SET".to_owned(),
                record.permission_set.clone(),
            ),
        ]);
        // The notice names the variables, not their values (the values stay in `env`).
        let portal = match &self.config.start_url {
            Some(url) => {
                env.insert("AWS_SSO_START_URL".to_owned(), url.clone());
                "sign in at $AWS_SSO_START_URL"
            }
            None => "sign in through your AWS access portal",
        };
        Ok(Credentials {
            env,
            expires_at: record.not_after,
            notice: Some(format!(
                "no keys are minted for IAM Identity Center: {portal} (or use `aws sso login`) and choose account $JITSUDO_AWS_ACCOUNT with permission set $JITSUDO_AWS_PERMISSION_SET; the assignment lasts until the grant ends"
            )),
        })
    }

    async fn list_managed(&self, page: Option<&str>) -> Result<ManagedPage, ProviderError> {
        if page.is_none()
            && let Err(e) = self.tidy().await
        {
            // Upkeep failing must not hide what is granted: the next pass tries again.
            tracing::warn!(provider = %self.name, error = %e, "removing expired session denies failed");
        }
        let (records, next) = self
            .store()
            .page::<Assignment>(records::IC_ROOT, PAGE_SIZE, page.map(str::to_owned))
            .await?;
        let now = Utc::now();
        // A live record counts as granted only while its assignment is there.
        let mut assignees: HashMap<(String, String), Option<BTreeSet<String>>> = HashMap::new();
        let mut grants = Vec::new();
        for (r, arn) in records {
            if !r.tombstone {
                let key = (r.account.clone(), r.permission_set.clone());
                if !assignees.contains_key(&key) {
                    let users = match self.permission_set(&r.permission_set).await? {
                        Some(set) => Some(self.assignees(&r.account, &set).await?),
                        None => None,
                    };
                    assignees.insert(key.clone(), users);
                }
                let assigned = assignees[&key]
                    .as_ref()
                    .is_some_and(|u| u.contains(&r.user_id));
                if !assigned {
                    if r.not_after <= now {
                        // Never got its assignment, and its end has come: nothing to revoke.
                        self.store().delete(&arn, r.grant_id).await?;
                    }
                    continue;
                }
            }
            grants.push(ManagedGrant {
                grant_id: r.grant_id,
                request_id: Some(r.request_id),
                subject: r.principal,
                role: r.permission_set,
                scope: r.account,
                not_after: Some(r.not_after),
                provider_ref: arn,
                tombstone: r.tombstone,
            });
        }
        Ok(ManagedPage { grants, next })
    }

    async fn forget(&self, tombstone: &ManagedGrant) -> Result<(), ProviderError> {
        if !tombstone.tombstone {
            return Ok(());
        }
        self.resolve(&tombstone.role, &tombstone.scope)?;
        let found = self
            .records_of(
                &tombstone.scope,
                &tombstone.role,
                tombstone.request_id.unwrap_or_default(),
            )
            .await?;
        let Some((record, arn)) = find(&found, tombstone.grant_id, true) else {
            return Ok(());
        };
        if record.not_after > Utc::now() {
            return Ok(());
        }
        // The session denies are the "ended" records' business: the tombstone only refuses
        // a late grant, and past its end none would be made.
        self.store().delete(&arn, record.grant_id).await
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

/// Whether a live grant (no tombstone, end ahead) other than `except` is among `records`.
fn live_among(records: &[Assignment], except: Option<Uuid>) -> bool {
    let now = Utc::now();
    records.iter().any(|r| {
        Some(r.grant_id) != except
            && !r.tombstone
            && r.not_after > now
            && !records
                .iter()
                .any(|t| t.tombstone && t.grant_id == r.grant_id)
    })
}

fn put(denies: &mut Denies, d: SessionDeny, t: DateTime<Utc>) {
    let e = denies.entry(d).or_insert(t);
    *e = (*e).max(t);
}

/// The next whole second (IAM compares times at second precision).
fn ceil_second(t: DateTime<Utc>) -> DateTime<Utc> {
    let whole = DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t);
    if whole == t {
        t
    } else {
        whole + TimeDelta::seconds(1)
    }
}

/// A permission set pattern: a name, or a prefix ending in `*`.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// An ISO 8601 duration of days, hours, minutes and seconds (`PT1H`, `PT12H`, `PT1H30M`).
fn parse_iso_duration(s: &str) -> Option<TimeDelta> {
    let rest = s.strip_prefix('P')?;
    let (days, time) = match rest.split_once('T') {
        Some((d, t)) => (d, t),
        None => (rest, ""),
    };
    let mut total = TimeDelta::zero();
    if !days.is_empty() {
        total += TimeDelta::days(days.strip_suffix('D')?.parse().ok()?);
    }
    let mut number = String::new();
    for c in time.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: i64 = number.parse().ok()?;
        number.clear();
        total += match c {
            'H' => TimeDelta::hours(n),
            'M' => TimeDelta::minutes(n),
            'S' => TimeDelta::seconds(n),
            _ => return None,
        };
    }
    (number.is_empty() && (total > TimeDelta::zero())).then_some(total)
}

/// What an asynchronous Identity Center operation reports.
struct OpStatus {
    state: Option<StatusValues>,
    failure: Option<String>,
    /// The id to ask about it again with.
    request: Option<String>,
}

impl OpStatus {
    fn of_assignment(
        s: Option<&aws_sdk_ssoadmin::types::AccountAssignmentOperationStatus>,
    ) -> Self {
        OpStatus {
            state: s.and_then(|s| s.status()).cloned(),
            failure: s.and_then(|s| s.failure_reason()).map(str::to_owned),
            request: s.and_then(|s| s.request_id()).map(str::to_owned),
        }
    }

    fn of_provisioning(
        s: Option<&aws_sdk_ssoadmin::types::PermissionSetProvisioningStatus>,
    ) -> Self {
        OpStatus {
            state: s.and_then(|s| s.status()).cloned(),
            failure: s.and_then(|s| s.failure_reason()).map(str::to_owned),
            request: s.and_then(|s| s.request_id()).map(str::to_owned),
        }
    }
}

/// Waiting for an asynchronous Identity Center operation: growing pauses, bounded in all.
struct Poll {
    pause: Duration,
    started: std::time::Instant,
}

impl Poll {
    fn new() -> Self {
        Poll {
            pause: POLL_FIRST,
            started: std::time::Instant::now(),
        }
    }

    /// The next pause, or why there is none (waited too long: outcome unknown, retried).
    fn next(&mut self, what: &str) -> Result<tokio::time::Sleep, String> {
        if self.started.elapsed() > POLL_FOR {
            return Err(format!(
                "{what}: still IN_PROGRESS after {} s; retried",
                POLL_FOR.as_secs()
            ));
        }
        let pause = self.pause;
        self.pause = (self.pause * 2).min(POLL_MOST);
        Ok(tokio::time::sleep(pause))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_durations_read_as_aws_writes_them() {
        assert_eq!(parse_iso_duration("PT1H"), Some(TimeDelta::hours(1)));
        assert_eq!(parse_iso_duration("PT12H"), Some(TimeDelta::hours(12)));
        assert_eq!(parse_iso_duration("PT1H30M"), Some(TimeDelta::minutes(90)));
        assert_eq!(parse_iso_duration("PT2S"), Some(TimeDelta::seconds(2)));
        assert_eq!(parse_iso_duration("P1D"), Some(TimeDelta::days(1)));
        for bad in ["", "1H", "PT", "PTH", "PT1X", "PT1", "3600"] {
            assert_eq!(parse_iso_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn times_round_up_to_the_second() {
        let t = DateTime::from_timestamp(100, 1).unwrap();
        assert_eq!(ceil_second(t), DateTime::from_timestamp(101, 0).unwrap());
        let whole = DateTime::from_timestamp(100, 0).unwrap();
        assert_eq!(ceil_second(whole), whole);
    }
}
