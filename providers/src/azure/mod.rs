//! The Azure RBAC provider. Mode `pim` (the default): a grant is a Privileged Identity
//! Management role assignment schedule request (`AdminAssign`) whose expiration is
//! `not_after`, so Azure itself ends the access even while jitsudod is down. Mode
//! `assignments`: a plain role assignment, taken away by jitsudo's expiry and the reconciler.
//!
//! ARM allows one assignment per principal, role and scope and offers no labels and no
//! compare-and-set, so each grant keeps a record (and, after a revoke, a tombstone) of its
//! own in role assignments that grant nothing (see [`records`]); the access itself is shared
//! by the live grants of the same principal, role and scope and goes with the last of them
//! (in PIM, its end moves to the latest one's `not_after`). No credentials are minted: users
//! keep their own Entra identity.

mod arm;
mod certificate;
mod config;
mod records;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::{Secret, TokenCredential};
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

pub use config::{AzureConfig, Mode, scope_ok};
pub use records::{Note, record_name, tombstone_name};

use crate::{
    Credentials, GrantRecord, GrantSpec, GrantState, ManagedGrant, ManagedPage, Provider,
    ProviderError, ProviderInfo,
};
use arm::{ASSIGNMENTS_API, Answer, Arm, Call, DEFINITIONS_API, PIM_API};

const AUTH: &str = "/providers/Microsoft.Authorization";

/// A role definition as ARM names it at a scope.
#[derive(Clone, Debug)]
struct RoleDef {
    /// The full id to write (`/subscriptions/…/providers/Microsoft.Authorization/roleDefinitions/GUID`).
    id: String,
    guid: String,
}

/// What one scope holds of this provider's, from one listing.
#[derive(Default)]
struct Held {
    /// Live records: the note and the role definition GUID the record was written with.
    records: Vec<(Note, String)>,
    tombstones: Vec<Note>,
    /// The requesters' role assignments jitsudo made: (name, principal, role GUID).
    access: Vec<(String, String, String)>,
}

/// Whose role where, and why (a PIM request's justification).
#[derive(Clone, Copy)]
struct Target<'a> {
    scope: &'a str,
    def: &'a RoleDef,
    principal: &'a str,
    justification: &'a str,
}

/// A PIM schedule of a principal's role at a scope.
struct Sched {
    end: Option<DateTime<Utc>>,
    request: Option<String>,
}

pub struct AzureProvider {
    name: String,
    config: AzureConfig,
    arm: Arm,
    replication_wait: Duration,
    roles: Mutex<HashMap<(String, String), RoleDef>>,
    /// One change at a time per principal, role and scope from this process.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Debug for AzureProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureProvider")
            .field("name", &self.name)
            .field("mode", &self.config.mode)
            .field("scopes", &self.config.scopes)
            .finish_non_exhaustive()
    }
}

/// The live records (not tombstoned, not past their end) for a principal's role, but one.
fn live(held: &Held, principal: &str, role_guid: &str, but: Option<Uuid>) -> Vec<Note> {
    let now = Utc::now();
    held.records
        .iter()
        .filter(|(n, role)| {
            Some(n.grant) != but
                && n.principal.eq_ignore_ascii_case(principal)
                && role == role_guid
                && n.until > now
                && !held.tombstones.iter().any(|t| t.grant == n.grant)
        })
        .map(|(n, _)| n.clone())
        .collect()
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn guid_of(id: &str) -> String {
    id.rsplit('/').next().unwrap_or(id).to_ascii_lowercase()
}

/// Whether an ARM item (assignment or schedule) is this principal's role at exactly `scope`.
fn is_of(item: &Value, scope: &str, principal: &str, role_guid: &str) -> bool {
    prop(item, "scope").eq_ignore_ascii_case(scope)
        && prop(item, "principalId").eq_ignore_ascii_case(principal)
        && guid_of(prop(item, "roleDefinitionId")) == role_guid
}

fn prop<'a>(item: &'a Value, key: &str) -> &'a str {
    item["properties"][key].as_str().unwrap_or("")
}

impl AzureProvider {
    /// Builds the credential and the HTTP client from the table (files read now; no call).
    pub async fn from_config(name: &str, c: &AzureConfig) -> Result<Self, String> {
        c.check()?;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(c.timeout_seconds.unwrap_or(10)))
            .user_agent(concat!("jitsudo/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &c.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("ca_file {} holds no PEM certificate: {e}", path.display()))?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let refused = Arc::new(Mutex::new(None));
        let cloud = c.authority_host.as_ref().map(|host| {
            let mut custom = azure_core::cloud::CustomConfiguration::default();
            custom.authority_host = host.trim_end_matches('/').to_owned();
            Arc::new(custom.into())
        });
        let options = azure_core::http::ClientOptions {
            transport: Some(azure_core::http::Transport::new(Arc::new(
                arm::EntraTransport {
                    inner: http.clone(),
                    refused: refused.clone(),
                },
            ))),
            cloud,
            ..Default::default()
        };
        let tenant = c.tenant_id.clone().unwrap_or_default();
        let client = c.client_id.clone().unwrap_or_default();
        let who;
        let credential: Arc<dyn TokenCredential> = if let Some(path) = &c.client_secret_file {
            let secret = crate::config::read_secret(path, "client_secret_file")?;
            let secret = String::from_utf8(secret.trim_ascii().to_vec())
                .map_err(|_| format!("client_secret_file {} is not text", path.display()))?;
            who = format!("client {client} of tenant {tenant}");
            let o = azure_identity::ClientSecretCredentialOptions {
                client_options: options,
            };
            azure_identity::ClientSecretCredential::new(
                &tenant,
                client.clone(),
                Secret::new(secret),
                Some(o),
            )
            .map_err(|e| format!("client_secret_file: {e}"))?
        } else if let Some(path) = &c.client_certificate_file {
            let pem = crate::config::read_secret(path, "client_certificate_file")?;
            let authority = c
                .authority_host
                .as_deref()
                .unwrap_or("https://login.microsoftonline.com")
                .trim_end_matches('/');
            let assertion = certificate::CertificateAssertion::from_pem(
                &pem,
                &client,
                format!("{authority}/{tenant}/oauth2/v2.0/token"),
            )
            .map_err(|e| format!("client_certificate_file {}: {e}", path.display()))?;
            who = format!("client {client} of tenant {tenant} (certificate)");
            let o = azure_identity::ClientAssertionCredentialOptions {
                client_options: options,
            };
            azure_identity::ClientAssertionCredential::new(
                tenant.clone(),
                client.clone(),
                assertion,
                Some(o),
            )
            .map_err(|e| format!("client_certificate_file: {e}"))?
        } else if let Some(path) = &c.federated_token_file {
            who = format!("client {client} of tenant {tenant} (workload identity federation)");
            let mut o = azure_identity::WorkloadIdentityCredentialOptions::default();
            o.credential_options.client_options = options;
            o.client_id = Some(client.clone());
            o.tenant_id = Some(tenant.clone());
            o.token_file_path = Some(path.clone());
            azure_identity::WorkloadIdentityCredential::new(Some(o))
                .map_err(|e| format!("federated_token_file: {e}"))?
        } else {
            who = match &c.client_id {
                Some(id) => format!("the managed identity with client id {id}"),
                None => "the system-assigned managed identity".to_owned(),
            };
            let o = azure_identity::ManagedIdentityCredentialOptions {
                client_options: options,
                user_assigned_id: c
                    .client_id
                    .clone()
                    .map(azure_identity::UserAssignedId::ClientId),
            };
            azure_identity::ManagedIdentityCredential::new(Some(o))
                .map_err(|e| format!("managed_identity: {e}"))?
        };
        let base = c
            .arm_endpoint
            .as_deref()
            .unwrap_or("https://management.azure.com")
            .trim_end_matches('/')
            .to_owned();
        // Public ARM's audience is management.azure.com whatever the host's spelling.
        let token_scope = if base == "https://management.azure.com" {
            "https://management.azure.com/.default".to_owned()
        } else {
            format!("{base}/.default")
        };
        Ok(AzureProvider {
            name: name.to_owned(),
            config: c.clone(),
            arm: Arm {
                provider: name.to_owned(),
                http,
                base,
                token_scope,
                credential,
                refused,
                who,
                timeout: Duration::from_secs(c.timeout_seconds.unwrap_or(10)),
            },
            replication_wait: Duration::from_secs(c.replication_wait_seconds.unwrap_or(60)),
            roles: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
        })
    }

    fn invalid(&self, field: &'static str, reason: String) -> ProviderError {
        ProviderError::Invalid {
            provider: self.name.clone(),
            field,
            reason,
        }
    }

    /// The configured scope the spec names, after the allow-lists and the principal's shape.
    fn check_spec(&self, role: &str, scope: &str, subject: &str) -> Result<String, ProviderError> {
        if !self.config.role_allowed(role) {
            return Err(self.invalid(
                "role",
                format!(
                    "{role:?} is not in this provider's roles: {}",
                    self.config.roles.join(", ")
                ),
            ));
        }
        let Some(scope) = self.config.scope(scope) else {
            return Err(self.invalid(
                "scope",
                format!(
                    "{scope:?} is not in this provider's scopes: {}",
                    self.config.scopes.join(", ")
                ),
            ));
        };
        // The hyphenated form ARM answers with (no braces, no urn:), so listings match it.
        if subject.len() != 36 || Uuid::parse_str(subject).is_err() {
            return Err(self.invalid(
                "subject",
                format!(
                    "the principal {subject:?} is not an Entra object id (a GUID): give the provider the subject template \"{{claim:oid}}\" when Entra is the OpenID issuer, or map the requester in its identity_map_file"
                ),
            ));
        }
        Ok(scope.to_owned())
    }

    fn lock_of(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(key).or_default().clone()
    }

    /// ARM's refusal as one sentence, with what to do where jitsudo knows.
    fn refused(&self, what: &str, scope: &str, a: &Answer) -> ProviderError {
        let said = format!(
            "{what}: ARM answered {} {}: {}",
            a.status,
            a.code(),
            a.message()
        );
        match (a.status, a.code()) {
            (403, _) => ProviderError::Forbidden {
                provider: self.name.clone(),
                reason: format!(
                    "{said} — jitsudod's identity ({}) needs Microsoft.Authorization/roleAssignments/read, write and delete{} on {scope}: assign it the role \"Role Based Access Control Administrator\" (or \"User Access Administrator\") there",
                    self.arm.who,
                    if self.config.mode == Mode::Pim {
                        ", roleAssignmentSchedules/read and roleAssignmentScheduleRequests/read and write"
                    } else {
                        ""
                    }
                ),
            },
            (401, _) => ProviderError::Forbidden {
                provider: self.name.clone(),
                reason: format!(
                    "{said} (the token Entra gave is not one ARM takes: check that arm_endpoint and authority_host belong to the same cloud)"
                ),
            },
            (_, "RoleDefinitionDoesNotExist") => self.invalid("role", said),
            (_, "InvalidPrincipalId" | "PrincipalNotFound") => self.invalid("subject", said),
            (
                _,
                "SubscriptionNotFound" | "InvalidSubscriptionId" | "ResourceGroupNotFound"
                | "ResourceNotFound" | "InvalidScope" | "MissingSubscription",
            ) => self.invalid("scope", said),
            (_, "RoleAssignmentRequestPolicyValidationFailed")
                if a.message().contains("ExpirationRule") =>
            {
                self.invalid(
                    "not_after",
                    format!(
                        "{said} (PIM's role settings refuse the end: it is beyond the role's maximum active assignment duration; raise it in PIM's settings for the role, or ask for less time)"
                    ),
                )
            }
            (_, "RoleAssignmentRequestPolicyValidationFailed") => self.invalid(
                "grant",
                format!(
                    "{said} (PIM's role settings for this role ask for something jitsudo does not give on an assignment — MFA, a ticket, approval; relax the assignment rules in PIM's settings for the role)"
                ),
            ),
            // PIM keeps an assignment at least five minutes before it may be removed.
            (_, "ActiveDurationTooShort") => ProviderError::Unavailable {
                provider: self.name.clone(),
                reason: format!(
                    "{said} — PIM removes an assignment only after its first five minutes; retried until it does"
                ),
            },
            (409, _) => ProviderError::Unavailable {
                provider: self.name.clone(),
                reason: said,
            },
            _ => self.invalid("grant", said),
        }
    }

    /// The role definition a role (name or GUID) is at a scope; cached.
    async fn role_def(&self, scope: &str, role: &str) -> Result<RoleDef, ProviderError> {
        let key = (scope.to_ascii_lowercase(), role.to_ascii_lowercase());
        if let Some(d) = self
            .roles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(d.clone());
        }
        let what = format!("looking up the role definition {role:?} at {scope}");
        let def = if Uuid::parse_str(role).is_ok() {
            let url = self.arm.url(
                &format!("{scope}{AUTH}/roleDefinitions/{role}"),
                &[("api-version", DEFINITIONS_API)],
            );
            let a = self.arm.send(Method::GET, &url, None, Call::Read).await?;
            if !a.ok() {
                return Err(
                    if a.status == 404 || a.code() == "RoleDefinitionDoesNotExist" {
                        self.invalid(
                            "role",
                            format!("no role definition has the id {role} at {scope}"),
                        )
                    } else {
                        self.refused(&what, scope, &a)
                    },
                );
            }
            RoleDef {
                id: a.body["id"].as_str().unwrap_or_default().to_owned(),
                guid: role.to_ascii_lowercase(),
            }
        } else {
            let filter = format!("roleName eq '{role}'");
            let url = self.arm.url(
                &format!("{scope}{AUTH}/roleDefinitions"),
                &[("$filter", &filter), ("api-version", DEFINITIONS_API)],
            );
            let found = match self.arm.page(&url).await? {
                Ok((items, _)) => items,
                Err(a) => return Err(self.refused(&what, scope, &a)),
            };
            match found.as_slice() {
                [] => {
                    return Err(self.invalid(
                        "role",
                        format!(
                            "no role definition named {role:?} can be assigned at {scope} (names are exact, e.g. \"Reader\"; a custom role must list the scope among its assignable scopes)"
                        ),
                    ));
                }
                [d] => RoleDef {
                    id: d["id"].as_str().unwrap_or_default().to_owned(),
                    guid: d["name"].as_str().unwrap_or_default().to_ascii_lowercase(),
                },
                many => {
                    let ids: Vec<&str> = many.iter().filter_map(|d| d["name"].as_str()).collect();
                    return Err(self.invalid(
                        "role",
                        format!(
                            "{role:?} names {} role definitions at {scope} ({}): list the one meant by its GUID in the provider's roles",
                            ids.len(),
                            ids.join(", ")
                        ),
                    ));
                }
            }
        };
        if def.id.is_empty() || def.guid.is_empty() {
            return Err(ProviderError::Unavailable {
                provider: self.name.clone(),
                reason: format!("{what}: ARM's answer has no id"),
            });
        }
        self.roles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, def.clone());
        Ok(def)
    }

    fn assignment_url(&self, scope: &str, name: &str) -> String {
        self.arm.url(
            &format!("{scope}{AUTH}/roleAssignments/{name}"),
            &[("api-version", ASSIGNMENTS_API)],
        )
    }

    async fn exists(&self, scope: &str, name: &str, what: &str) -> Result<bool, ProviderError> {
        let url = self.assignment_url(scope, name);
        let a = self.arm.send(Method::GET, &url, None, Call::Read).await?;
        match a.status {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.refused(what, scope, &a)),
        }
    }

    /// Writes a record or a tombstone (a role assignment to a principal that cannot exist;
    /// `principalType` keeps ARM from looking it up).
    async fn write_note(
        &self,
        scope: &str,
        kind: &str,
        grant_id: Uuid,
        def: &RoleDef,
        note: &Note,
    ) -> Result<(), ProviderError> {
        let (name, nobody) = if kind == records::RECORD {
            (record_name(grant_id), records::nobody("record", grant_id))
        } else {
            (
                tombstone_name(grant_id),
                records::nobody("tombstone", grant_id),
            )
        };
        let body = json!({"properties": {
            "roleDefinitionId": def.id,
            "principalId": nobody,
            "principalType": "ServicePrincipal",
            "description": note.describe(kind),
        }});
        let url = self.assignment_url(scope, &name);
        let a = self
            .arm
            .send(Method::PUT, &url, Some(&body), Call::Write)
            .await?;
        if a.ok() {
            return Ok(());
        }
        let what = format!(
            "writing the {} of grant {grant_id} at {scope}",
            kind.trim().trim_start_matches("jitsudo-")
        );
        Err(self.refused(&what, scope, &a))
    }

    async fn delete(&self, scope: &str, name: &str, what: &str) -> Result<(), ProviderError> {
        let url = self.assignment_url(scope, name);
        let a = self
            .arm
            .send(Method::DELETE, &url, None, Call::Write)
            .await?;
        if a.ok() || a.status == 404 {
            return Ok(());
        }
        Err(self.refused(what, scope, &a))
    }

    /// Visits every item of an ARM list, page by page, until `visit` says stop.
    async fn each(
        &self,
        mut url: String,
        what: &str,
        scope: &str,
        mut visit: impl FnMut(&Value) -> bool,
    ) -> Result<(), ProviderError> {
        loop {
            let (items, next) = match self.arm.page(&url).await? {
                Ok(p) => p,
                Err(a) => return Err(self.refused(what, scope, &a)),
            };
            if items.iter().any(&mut visit) {
                return Ok(());
            }
            match next {
                Some(n) => url = n,
                None => return Ok(()),
            }
        }
    }

    /// Everything of this provider's at a scope (every page of `atScope()`).
    async fn held(&self, scope: &str) -> Result<Held, ProviderError> {
        let what = format!("listing the role assignments at {scope}");
        let url = self.arm.url(
            &format!("{scope}{AUTH}/roleAssignments"),
            &[("$filter", "atScope()"), ("api-version", ASSIGNMENTS_API)],
        );
        let mut held = Held::default();
        self.each(url, &what, scope, |item| {
            self.sort(scope, item, &mut held);
            false
        })
        .await?;
        Ok(held)
    }

    fn sort(&self, scope: &str, item: &Value, held: &mut Held) {
        if !prop(item, "scope").eq_ignore_ascii_case(scope) {
            return;
        }
        let description = prop(item, "description");
        let role = guid_of(prop(item, "roleDefinitionId"));
        if let Some((tombstone, note)) = records::parse(description) {
            if note.provider != self.name {
                return;
            }
            if tombstone {
                held.tombstones.push(note);
            } else {
                held.records.push((note, role));
            }
        } else if records::is_access_of(description, &self.name) {
            held.access.push((
                item["name"].as_str().unwrap_or_default().to_owned(),
                prop(item, "principalId").to_ascii_lowercase(),
                role,
            ));
        }
    }

    /// The principal's role assignments at exactly this scope with this role.
    async fn assigned(
        &self,
        scope: &str,
        principal: &str,
        role_guid: &str,
    ) -> Result<Vec<Value>, ProviderError> {
        let what = format!("listing the role assignments of {principal} at {scope}");
        let filter = format!("assignedTo('{principal}')");
        let url = self.arm.url(
            &format!("{scope}{AUTH}/roleAssignments"),
            &[("$filter", &filter), ("api-version", ASSIGNMENTS_API)],
        );
        let mut out = Vec::new();
        self.each(url, &what, scope, |i| {
            if is_of(i, scope, principal, role_guid) {
                out.push(i.clone());
            }
            false
        })
        .await?;
        Ok(out)
    }

    /// The PIM schedule of the principal's role at exactly this scope, if any (every page;
    /// direct assignments only: one through a group is not the principal's own).
    async fn schedule(
        &self,
        scope: &str,
        principal: &str,
        role_guid: &str,
    ) -> Result<Option<Sched>, ProviderError> {
        let what = format!("listing the PIM schedules of {principal} at {scope}");
        let filter = format!("principalId eq '{principal}'");
        let url = self.arm.url(
            &format!("{scope}{AUTH}/roleAssignmentSchedules"),
            &[("$filter", &filter), ("api-version", PIM_API)],
        );
        let mut found = None;
        self.each(url, &what, scope, |i| {
            let hit = is_of(i, scope, principal, role_guid)
                && matches!(prop(i, "memberType"), "" | "Direct");
            if hit {
                found = Some(Sched {
                    end: DateTime::parse_from_rfc3339(prop(i, "endDateTime"))
                        .ok()
                        .map(|t| t.to_utc()),
                    request: i["properties"]["roleAssignmentScheduleRequestId"]
                        .as_str()
                        .map(str::to_owned),
                });
            }
            hit
        })
        .await?;
        Ok(found)
    }

    /// Whether jitsudo (this provider) made the request behind a PIM schedule: `None` when
    /// the request is gone (PIM keeps requests 45 days) and the caller must decide by its
    /// records.
    async fn ours(&self, scope: &str, s: &Sched) -> Result<Option<bool>, ProviderError> {
        let Some(request) = &s.request else {
            // Made outside PIM (a standing assignment): never jitsudo's.
            return Ok(Some(false));
        };
        let url = self.arm.url(request, &[("api-version", PIM_API)]);
        let a = self.arm.send(Method::GET, &url, None, Call::Read).await?;
        match a.status {
            // An admin request with jitsudo's justification (a user's own activation is a
            // Self* request, whatever it says).
            200 => Ok(Some(
                prop(&a.body, "requestType").starts_with("Admin")
                    && records::is_request_of(prop(&a.body, "justification"), &self.name),
            )),
            404 => Ok(None),
            _ => Err(self.refused("reading a PIM request", scope, &a)),
        }
    }

    /// A PIM schedule request; its raw answer.
    async fn pim(
        &self,
        t: &Target<'_>,
        name: &str,
        kind: &str,
        end: Option<DateTime<Utc>>,
    ) -> Result<Answer, ProviderError> {
        let Target {
            scope,
            def,
            principal,
            justification,
        } = *t;
        let mut props = json!({
            "principalId": principal,
            "roleDefinitionId": def.id,
            "requestType": kind,
            "justification": justification,
        });
        if let Some(end) = end {
            // No startDateTime: PIM starts the schedule now by its own clock.
            props["scheduleInfo"] = json!({
                "expiration": {"type": "AfterDateTime", "endDateTime": ts(end)},
            });
        }
        let url = self.arm.url(
            &format!("{scope}{AUTH}/roleAssignmentScheduleRequests/{name}"),
            &[("api-version", PIM_API)],
        );
        self.arm
            .send(
                Method::PUT,
                &url,
                Some(&json!({"properties": props})),
                Call::Write,
            )
            .await
    }

    fn standing(&self, spec: &GrantSpec, scope: &str) -> ProviderError {
        self.invalid(
            "grant",
            format!(
                "{} already holds {} at {scope} through a role assignment jitsudo did not make: nothing to grant for a limited time (remove the standing assignment, or it stays)",
                spec.subject, spec.role
            ),
        )
    }

    /// Retries `PrincipalNotFound` (Entra's replication to ARM) for the configured window.
    async fn replication_pause(
        &self,
        started: tokio::time::Instant,
        round: &mut u32,
        principal: &str,
        a: &Answer,
    ) -> Result<(), ProviderError> {
        if started.elapsed() >= self.replication_wait {
            return Err(self.invalid(
                "subject",
                format!(
                    "ARM does not know the principal {principal} after {} s ({}): the identity mapping must give the object id of a user, group or service principal of jitsudod's tenant; a principal created just now can take a few minutes to replicate",
                    self.replication_wait.as_secs(),
                    a.code()
                ),
            ));
        }
        *round += 1;
        let pause = Duration::from_millis(250 << (*round).min(4)).min(Duration::from_secs(5));
        tracing::debug!(provider = %self.name, principal, ?pause, "principal not yet replicated to ARM; waiting");
        tokio::time::sleep(pause).await;
        Ok(())
    }

    /// Mode `assignments`: the requester's role assignment, made or shared.
    async fn assign(
        &self,
        spec: &GrantSpec,
        scope: &str,
        def: &RoleDef,
        principal: &str,
    ) -> Result<(), ProviderError> {
        let what = format!("assigning {} to {principal} at {scope}", spec.role);
        let body = json!({"properties": {
            "roleDefinitionId": def.id,
            "principalId": principal,
            "description": records::access_description(&self.name),
        }});
        let url = self.assignment_url(scope, &records::access_name(spec.grant_id));
        let started = tokio::time::Instant::now();
        let mut round = 0;
        loop {
            let a = self
                .arm
                .send(Method::PUT, &url, Some(&body), Call::Write)
                .await?;
            if a.ok() {
                return Ok(());
            }
            match a.code() {
                "PrincipalNotFound" => {
                    self.replication_pause(started, &mut round, principal, &a)
                        .await?
                }
                // Another grant's (shared) or a standing assignment.
                "RoleAssignmentExists" => {
                    let found = self.assigned(scope, principal, &def.guid).await?;
                    return if found
                        .iter()
                        .any(|i| records::is_access_of(prop(i, "description"), &self.name))
                    {
                        Ok(())
                    } else if found.is_empty() {
                        Err(ProviderError::Unavailable {
                            provider: self.name.clone(),
                            reason: format!(
                                "{what}: ARM says the assignment exists but does not list it yet"
                            ),
                        })
                    } else {
                        Err(self.standing(spec, scope))
                    };
                }
                _ => return Err(self.refused(&what, scope, &a)),
            }
        }
    }

    /// Mode `pim`: an `AdminAssign` ending at `not_after`, or the shared schedule moved to
    /// end no earlier than it.
    async fn pim_assign(
        &self,
        spec: &GrantSpec,
        scope: &str,
        def: &RoleDef,
        principal: &str,
    ) -> Result<(), ProviderError> {
        let what = format!(
            "assigning {} to {principal} at {scope} through PIM",
            spec.role
        );
        let justification = records::justification(&self.name, spec.grant_id, spec.request_id);
        let target = Target {
            scope,
            def,
            principal,
            justification: &justification,
        };
        let mut name = records::assign_request_name(spec.grant_id);
        let started = tokio::time::Instant::now();
        let mut round = 0;
        let mut changed = 0;
        while changed < 4 {
            let a = self
                .pim(&target, &name, "AdminAssign", Some(spec.not_after))
                .await?;
            if a.ok() {
                return self.provisioned(scope, &name, &a, &what).await;
            }
            match a.code() {
                "PrincipalNotFound" | "SubjectNotFound" => {
                    self.replication_pause(started, &mut round, principal, &a)
                        .await?;
                    continue;
                }
                "RoleAssignmentExists" | "RoleAssignmentRequestExists" => changed += 1,
                _ => return Err(self.refused(&what, scope, &a)),
            }
            // Assigned already: by an earlier attempt, another grant, or outside jitsudo.
            let Some(s) = self.schedule(scope, principal, &def.guid).await? else {
                if a.code() == "RoleAssignmentRequestExists" {
                    // Our earlier request's assignment is gone (ended or removed): a new
                    // request, under a new name.
                    name = Uuid::new_v4().to_string();
                    continue;
                }
                // PIM lists a new assignment's schedule a moment after it answers.
                return Err(ProviderError::Unavailable {
                    provider: self.name.clone(),
                    reason: format!(
                        "{what}: PIM says the role is assigned but lists no schedule for it yet; retrying"
                    ),
                });
            };
            let ours = match self.ours(scope, &s).await? {
                Some(o) => o,
                // The request is gone: ours if another live grant of ours holds the access.
                None => self
                    .live_records(scope, principal, &def.guid, Some(spec.grant_id))
                    .await?
                    .next()
                    .is_some(),
            };
            if !ours {
                return Err(self.standing(spec, scope));
            }
            // PIM keeps ends to the second.
            if s.end
                .is_some_and(|end| end.timestamp() >= spec.not_after.timestamp())
            {
                return Ok(());
            }
            let update = Uuid::new_v4().to_string();
            let a = self
                .pim(&target, &update, "AdminUpdate", Some(spec.not_after))
                .await?;
            if a.ok() {
                return self.provisioned(scope, &update, &a, &what).await;
            }
            if a.code() != "RoleAssignmentDoesNotExist" {
                return Err(self.refused(&what, scope, &a));
            }
        }
        Err(ProviderError::Unavailable {
            provider: self.name.clone(),
            reason: format!("{what}: the assignment kept changing under jitsudo; retrying later"),
        })
    }

    /// A PIM request's answer is a success only once its status is `Provisioned`; one still
    /// on its way is read again for a while.
    async fn provisioned(
        &self,
        scope: &str,
        name: &str,
        first: &Answer,
        what: &str,
    ) -> Result<(), ProviderError> {
        let url = self.arm.url(
            &format!("{scope}{AUTH}/roleAssignmentScheduleRequests/{name}"),
            &[("api-version", PIM_API)],
        );
        let mut status = prop(&first.body, "status").to_owned();
        for _ in 0..20 {
            match status.as_str() {
                "Provisioned" => return Ok(()),
                "Failed"
                | "Denied"
                | "Canceled"
                | "Revoked"
                | "TimedOut"
                | "Invalid"
                | "ProvisioningFailed"
                | "ScheduleCreationFailed"
                | "AdminDenied" => {
                    return Err(self.invalid(
                        "grant",
                        format!("{what}: PIM ended the request {name} as {status}"),
                    ));
                }
                // Accepted, PendingProvisioning, Granted (scheduled), PendingScheduleCreation…
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let a = self.arm.send(Method::GET, &url, None, Call::Read).await?;
            if !a.ok() {
                return Err(self.refused(what, scope, &a));
            }
            status = prop(&a.body, "status").to_owned();
        }
        Err(ProviderError::Unknown {
            provider: self.name.clone(),
            reason: format!("{what}: PIM's request {name} is still {status}"),
        })
    }

    /// The live records of this provider for a principal's role at a scope, but one grant's.
    async fn live_records(
        &self,
        scope: &str,
        principal: &str,
        role_guid: &str,
        but: Option<Uuid>,
    ) -> Result<impl Iterator<Item = Note>, ProviderError> {
        let held = self.held(scope).await?;
        Ok(live(&held, principal, role_guid, but).into_iter())
    }

    /// Takes the principal's access to the role away (what jitsudo made of it).
    async fn take_access(
        &self,
        held: &Held,
        t: &Target<'_>,
        what: &str,
    ) -> Result<(), ProviderError> {
        let Target {
            scope,
            def,
            principal,
            ..
        } = *t;
        match self.config.mode {
            Mode::Assignments => {
                for (name, p, role) in &held.access {
                    if p.eq_ignore_ascii_case(principal) && *role == def.guid {
                        self.delete(scope, name, what).await?;
                    }
                }
                Ok(())
            }
            Mode::Pim => {
                let Some(s) = self.schedule(scope, principal, &def.guid).await? else {
                    return Ok(());
                };
                // A request PIM no longer keeps: the records say jitsudo held it.
                if self.ours(scope, &s).await? == Some(false) {
                    return Ok(());
                }
                let a = self
                    .pim(t, &Uuid::new_v4().to_string(), "AdminRemove", None)
                    .await?;
                if a.ok() || a.code() == "RoleAssignmentDoesNotExist" {
                    return Ok(());
                }
                Err(self.refused(what, scope, &a))
            }
        }
    }

    /// Takes a grant's part of the access away: the access goes when no other live grant
    /// needs it (in PIM, its end moves to the latest remaining grant's), then the record. A
    /// revoke racing another's on another replica ends in removal, never in access that no
    /// record holds: after its record is gone, it looks again.
    async fn release(
        &self,
        scope: &str,
        def: &RoleDef,
        principal: &str,
        grant_id: Uuid,
        justification: &str,
    ) -> Result<(), ProviderError> {
        let what = format!("revoking grant {grant_id} at {scope}");
        let t = Target {
            scope,
            def,
            principal,
            justification,
        };
        let held = self.held(scope).await?;
        let others = live(&held, principal, &def.guid, Some(grant_id));
        match others.iter().map(|n| n.until).max() {
            None => self.take_access(&held, &t, &what).await?,
            Some(keep) if self.config.mode == Mode::Pim => {
                if let Some(s) = self.schedule(scope, principal, &def.guid).await?
                    && self.ours(scope, &s).await? != Some(false)
                    && s.end.is_none_or(|e| e.timestamp() > keep.timestamp())
                {
                    let a = self
                        .pim(&t, &Uuid::new_v4().to_string(), "AdminUpdate", Some(keep))
                        .await?;
                    if !a.ok() && a.code() != "RoleAssignmentDoesNotExist" {
                        return Err(self.refused(&what, scope, &a));
                    }
                }
            }
            Some(_) => {}
        }
        if held.records.iter().any(|(n, _)| n.grant == grant_id) {
            self.delete(scope, &record_name(grant_id), &what).await?;
        }
        if !others.is_empty() {
            let again = self.held(scope).await?;
            if live(&again, principal, &def.guid, Some(grant_id)).is_empty() {
                tracing::debug!(provider = %self.name, scope, principal, "the grants sharing this access were revoked meanwhile; removing it");
                self.take_access(&again, &t, &what).await?;
            }
        }
        Ok(())
    }

    fn note(&self, g: &GrantRecord) -> Note {
        Note {
            provider: self.name.clone(),
            grant: g.grant_id,
            request: g.request_id,
            principal: g.subject.clone(),
            scope: g.scope.clone(),
            role: g.role.clone(),
            until: g.not_after,
        }
    }

    fn managed(&self, scope: &str, tombstone: bool, n: &Note) -> ManagedGrant {
        let name = if tombstone {
            tombstone_name(n.grant)
        } else {
            record_name(n.grant)
        };
        ManagedGrant {
            grant_id: n.grant,
            request_id: Some(n.request),
            subject: if tombstone {
                String::new()
            } else {
                n.principal.clone()
            },
            role: n.role.clone(),
            // As requested (ARM's ids are case-insensitive; the store keeps the request's).
            scope: if n.scope.eq_ignore_ascii_case(scope) {
                n.scope.clone()
            } else {
                scope.to_owned()
            },
            not_after: Some(n.until),
            provider_ref: format!("{scope}{AUTH}/roleAssignments/{name}"),
            tombstone,
        }
    }

    async fn inspect_in(&self, g: &GrantRecord) -> Result<GrantState, ProviderError> {
        let Some(scope) = self.config.scope(&g.scope).map(str::to_owned) else {
            return Ok(GrantState::Gone);
        };
        if !self.config.role_allowed(&g.role) || Utc::now() >= g.not_after {
            return Ok(GrantState::Gone);
        }
        let def = match self.role_def(&scope, &g.role).await {
            Ok(d) => d,
            Err(ProviderError::Invalid { .. }) => return Ok(GrantState::Gone),
            Err(e) => return Err(e),
        };
        let what = format!("inspecting grant {} at {scope}", g.grant_id);
        if self
            .exists(&scope, &tombstone_name(g.grant_id), &what)
            .await?
            || !self.exists(&scope, &record_name(g.grant_id), &what).await?
        {
            return Ok(GrantState::Gone);
        }
        let principal = g.subject.to_ascii_lowercase();
        let active = match self.config.mode {
            Mode::Assignments => self
                .assigned(&scope, &principal, &def.guid)
                .await?
                .iter()
                .any(|i| records::is_access_of(prop(i, "description"), &self.name)),
            Mode::Pim => self
                .schedule(&scope, &principal, &def.guid)
                .await?
                .is_some_and(|s| s.end.is_some_and(|e| e > Utc::now())),
        };
        Ok(if active {
            GrantState::Active
        } else {
            GrantState::Gone
        })
    }
}

#[async_trait]
impl Provider for AzureProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn validate(&self, spec: &GrantSpec) -> Result<(), ProviderError> {
        self.check_spec(&spec.role, &spec.scope, &spec.subject)
            .map(|_| ())
    }

    async fn grant(&self, spec: &GrantSpec) -> Result<GrantRecord, ProviderError> {
        let scope = self.check_spec(&spec.role, &spec.scope, &spec.subject)?;
        if spec.not_after <= Utc::now() {
            return Err(self.invalid(
                "not_after",
                format!("{} has passed: nothing to grant", spec.not_after),
            ));
        }
        let def = self.role_def(&scope, &spec.role).await?;
        let principal = spec.subject.to_ascii_lowercase();
        let lock = self.lock_of(format!(
            "{}|{principal}|{}",
            scope.to_ascii_lowercase(),
            def.guid
        ));
        let _held = lock.lock().await;
        let what = format!("granting {} at {scope}", spec.role);
        let tombstoned = || ProviderError::Tombstoned {
            provider: self.name.clone(),
            grant_id: spec.grant_id,
        };
        if self
            .exists(&scope, &tombstone_name(spec.grant_id), &what)
            .await?
        {
            return Err(tombstoned());
        }
        let record = GrantRecord {
            provider_ref: format!(
                "{scope}{AUTH}/roleAssignments/{}",
                record_name(spec.grant_id)
            ),
            ..GrantRecord::from_spec(spec)
        };
        let note = self.note(&record);
        // The record first: while it is there, no other grant's revoke takes the access.
        self.write_note(&scope, records::RECORD, spec.grant_id, &def, &note)
            .await?;
        let made = match self.config.mode {
            Mode::Assignments => self.assign(spec, &scope, &def, &principal).await,
            Mode::Pim => self.pim_assign(spec, &scope, &def, &principal).await,
        };
        if let Err(e) = made {
            if !e.is_retryable() {
                // Nothing was granted: leave no record behind.
                self.delete(&scope, &record_name(spec.grant_id), &what)
                    .await
                    .ok();
            }
            return Err(e);
        }
        // A revoke that overtook this grant: undo what it could not see.
        if self
            .exists(&scope, &tombstone_name(spec.grant_id), &what)
            .await?
        {
            let j = records::justification(&self.name, spec.grant_id, spec.request_id);
            if let Err(e) = self
                .release(&scope, &def, &principal, spec.grant_id, &j)
                .await
            {
                // Nobody retries a grant whose request has ended: a record keeps the access
                // in the reconciler's sight, which revokes it (an orphan) until it is gone.
                tracing::warn!(provider = %self.name, grant = %spec.grant_id, error = %e, "a grant overtaken by its revoke could not undo itself yet; the reconciler will");
                self.write_note(&scope, records::RECORD, spec.grant_id, &def, &note)
                    .await
                    .ok();
            }
            return Err(tombstoned());
        }
        Ok(record)
    }

    async fn revoke(&self, grant: &GrantRecord) -> Result<(), ProviderError> {
        if !scope_ok(&grant.scope) {
            return Err(self.invalid("scope", format!("{:?} is not an ARM scope", grant.scope)));
        }
        let scope = self
            .config
            .scope(&grant.scope)
            .unwrap_or(&grant.scope)
            .to_owned();
        let def = match self.role_def(&scope, &grant.role).await {
            Ok(d) => d,
            // A role that does not resolve was never granted by this provider (a custom
            // role cannot be deleted while assigned): nothing to take away or to guard.
            Err(ProviderError::Invalid { reason, .. }) => {
                tracing::warn!(provider = %self.name, grant = %grant.grant_id, %reason, "no tombstone written: the role does not resolve");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let principal = grant.subject.to_ascii_lowercase();
        let lock = self.lock_of(format!(
            "{}|{principal}|{}",
            scope.to_ascii_lowercase(),
            def.guid
        ));
        let _held = lock.lock().await;
        let note = self.note(grant);
        self.write_note(&scope, records::TOMBSTONE, grant.grant_id, &def, &note)
            .await?;
        let j = records::justification(&self.name, grant.grant_id, grant.request_id);
        self.release(&scope, &def, &principal, grant.grant_id, &j)
            .await
    }

    async fn inspect(&self, grant: &GrantRecord) -> Result<GrantState, ProviderError> {
        self.inspect_in(grant).await
    }

    async fn credentials(&self, grant: &GrantRecord) -> Result<Credentials, ProviderError> {
        if self.inspect(grant).await? != GrantState::Active {
            return Err(ProviderError::NotActive {
                provider: self.name.clone(),
                grant_id: grant.grant_id,
            });
        }
        let mut env = BTreeMap::new();
        let parts: Vec<&str> = grant.scope.split('/').collect();
        if let ["", s, sub, rest @ ..] = parts.as_slice()
            && s.eq_ignore_ascii_case("subscriptions")
        {
            // The SDKs' samples and azd read AZURE_SUBSCRIPTION_ID, Terraform ARM_SUBSCRIPTION_ID.
            env.insert("AZURE_SUBSCRIPTION_ID".to_owned(), (*sub).to_owned());
            env.insert("ARM_SUBSCRIPTION_ID".to_owned(), (*sub).to_owned());
            if let [g, rg, ..] = rest
                && g.eq_ignore_ascii_case("resourceGroups")
            {
                // az's default resource group (`az config` defaults.group).
                env.insert("AZURE_DEFAULTS_GROUP".to_owned(), (*rg).to_owned());
            }
        }
        if let Some(t) = &self.config.tenant_id {
            env.insert("AZURE_TENANT_ID".to_owned(), t.clone());
            env.insert("ARM_TENANT_ID".to_owned(), t.clone());
        }
        Ok(Credentials {
            env,
            expires_at: grant.not_after,
            notice: Some(format!(
                "{} is granted to your own Entra identity until {}: az and the SDKs act as you (az login, then az account set --subscription $AZURE_SUBSCRIPTION_ID); jitsudo mints no credentials. Azure can take a few minutes to apply a role change.",
                grant.role, grant.not_after
            )),
        })
    }

    /// The token is `INDEX` or `INDEX NEXTLINK`: a scope and a page of its listing.
    async fn list_managed(&self, page: Option<&str>) -> Result<ManagedPage, ProviderError> {
        let (i, link) = match page {
            None => (0, None),
            Some(p) => {
                let (i, link) = match p.split_once(' ') {
                    Some((i, l)) => (i, Some(l.to_owned())),
                    None => (p, None),
                };
                let i: usize = i.parse().map_err(|_| {
                    self.invalid(
                        "page",
                        format!("{p:?} is not a page token of this provider"),
                    )
                })?;
                (i, link)
            }
        };
        let Some(scope) = self.config.scopes.get(i) else {
            return Ok(ManagedPage::default());
        };
        if let Some(l) = &link
            && !l.starts_with(&format!("{}/", self.arm.base))
        {
            return Err(self.invalid("page", format!("{l:?} is not a link of {}", self.arm.base)));
        }
        let url = link.unwrap_or_else(|| {
            self.arm.url(
                &format!("{scope}{AUTH}/roleAssignments"),
                &[("$filter", "atScope()"), ("api-version", ASSIGNMENTS_API)],
            )
        });
        let what = format!("listing jitsudo's role assignments at {scope}");
        let (items, next) = match self.arm.page(&url).await? {
            Ok(p) => p,
            // One unreadable scope must not stop the reconciler's work on the others.
            Err(a) if matches!(a.status, 403 | 404) => {
                tracing::warn!(provider = %self.name, scope, error = %self.refused(&what, scope, &a), "skipping an unreadable scope in this pass");
                (Vec::new(), None)
            }
            Err(a) => return Err(self.refused(&what, scope, &a)),
        };
        let mut held = Held::default();
        for item in &items {
            self.sort(scope, item, &mut held);
        }
        let mut grants: Vec<ManagedGrant> = held
            .records
            .iter()
            .map(|(n, _)| self.managed(scope, false, n))
            .collect();
        grants.extend(held.tombstones.iter().map(|n| self.managed(scope, true, n)));
        let next = match next {
            Some(l) => Some(format!("{i} {l}")),
            None => (i + 1 < self.config.scopes.len()).then(|| (i + 1).to_string()),
        };
        Ok(ManagedPage { grants, next })
    }

    async fn forget(&self, tombstone: &ManagedGrant) -> Result<(), ProviderError> {
        if !tombstone.tombstone
            || !scope_ok(&tombstone.scope)
            || tombstone.not_after.is_none_or(|t| t > Utc::now())
        {
            return Ok(());
        }
        let what = format!(
            "removing the tombstone of grant {} at {}",
            tombstone.grant_id, tombstone.scope
        );
        self.delete(&tombstone.scope, &tombstone_name(tombstone.grant_id), &what)
            .await
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            kind: "azure".into(),
            roles: self.config.roles.clone(),
            scopes: self.config.scopes.clone(),
            native_expiry: self.config.mode == Mode::Pim,
        }
    }
}
