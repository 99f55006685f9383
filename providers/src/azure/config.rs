//! `kind = "azure"`: the keys of its `[[providers]]` table.

use std::path::PathBuf;

use serde::Deserialize;

/// How a grant is made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Privileged Identity Management: a role assignment schedule request whose expiration
    /// is `not_after`; Azure ends the access itself (needs Entra ID P2 or Governance).
    #[default]
    Pim,
    /// A plain role assignment; jitsudo's expiry and the reconciler take it away.
    Assignments,
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "pim" => Ok(Mode::Pim),
            "assignments" => Ok(Mode::Assignments),
            other => Err(serde::de::Error::custom(format!(
                "mode = {other:?}: one of \"pim\" (PIM schedule requests; Azure ends the access) or \"assignments\" (plain role assignments; jitsudo ends them)"
            ))),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureConfig {
    #[serde(default)]
    pub mode: Mode,
    /// The directory (tenant) id of jitsudod's application.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// jitsudod's application (client) id: with a secret, a federated token, or the client
    /// id of a user-assigned managed identity.
    #[serde(default)]
    pub client_id: Option<String>,
    /// A file holding a client secret of the application.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// A PEM file with a certificate registered on the application and its RSA private key.
    #[serde(default)]
    pub client_certificate_file: Option<PathBuf>,
    /// Workload identity federation: a file holding a token of another issuer that Entra
    /// trusts for the application (AKS projects one at `AZURE_FEDERATED_TOKEN_FILE`).
    #[serde(default)]
    pub federated_token_file: Option<PathBuf>,
    /// Use the managed identity of the VM, scale set, App Service or container (IMDS).
    #[serde(default)]
    pub managed_identity: bool,
    /// Roles that may be granted: role definition names (`Reader`) or GUIDs. Required.
    pub roles: Vec<String>,
    /// ARM scopes that may be requested, exactly: `/subscriptions/ID`,
    /// `/subscriptions/ID/resourceGroups/NAME`, a resource id below them, or
    /// `/providers/Microsoft.Management/managementGroups/NAME`. Required.
    pub scopes: Vec<String>,
    /// Microsoft Entra's authority; `https://login.microsoftonline.com` by default
    /// (`https://login.microsoftonline.us` and `https://login.chinacloudapi.cn` for the
    /// sovereign clouds).
    #[serde(default)]
    pub authority_host: Option<String>,
    /// Azure Resource Manager; `https://management.azure.com` by default.
    #[serde(default)]
    pub arm_endpoint: Option<String>,
    /// A PEM file of extra CA certificates to trust for both (a TLS-inspecting proxy, tests).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Per API call; 10 s by default.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// How long a grant keeps retrying `PrincipalNotFound` (Entra replicates a new principal
    /// to ARM with a delay); 60 s by default.
    #[serde(default)]
    pub replication_wait_seconds: Option<u64>,
}

impl AzureConfig {
    /// Checks the table before anything starts.
    pub fn check(&self) -> Result<(), String> {
        let ways = [
            self.client_secret_file.is_some(),
            self.client_certificate_file.is_some(),
            self.federated_token_file.is_some(),
            self.managed_identity,
        ];
        match ways.iter().filter(|w| **w).count() {
            0 => return Err("no credentials: set client_secret_file or client_certificate_file (with tenant_id and client_id), federated_token_file (workload identity federation, with tenant_id and client_id) or managed_identity = true".into()),
            1 => {}
            _ => return Err("set only one of client_secret_file, client_certificate_file, federated_token_file and managed_identity".into()),
        }
        if !self.managed_identity {
            for (key, v) in [
                ("tenant_id", &self.tenant_id),
                ("client_id", &self.client_id),
            ] {
                match v.as_deref() {
                    None | Some("") => {
                        return Err(format!(
                            "{key} is required with client_secret_file, client_certificate_file or federated_token_file (the application's {}: Entra admin center, App registrations, Overview)",
                            if key == "tenant_id" {
                                "Directory (tenant) ID"
                            } else {
                                "Application (client) ID"
                            }
                        ));
                    }
                    Some(s)
                        if !s
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') =>
                    {
                        return Err(format!("{key} {s:?} is not a GUID or a domain name"));
                    }
                    Some(_) => {}
                }
            }
        }
        if self.roles.is_empty() {
            return Err("roles is empty: list the role definitions that may be granted, by name or GUID (e.g. roles = [\"Reader\"])".into());
        }
        if self
            .roles
            .iter()
            .any(|r| r.trim().is_empty() || r.contains('\''))
        {
            return Err("roles: a role definition name is empty or holds a quote".into());
        }
        if self.scopes.is_empty() {
            return Err("scopes is empty: list the ARM scopes that may be requested (e.g. scopes = [\"/subscriptions/00000000-0000-0000-0000-000000000000\"])".into());
        }
        for (i, s) in self.scopes.iter().enumerate() {
            if !scope_ok(s) {
                return Err(format!(
                    "scopes: {s:?} is not an ARM scope: /subscriptions/ID, /subscriptions/ID/resourceGroups/NAME, a resource id, or /providers/Microsoft.Management/managementGroups/NAME"
                ));
            }
            if self.scopes[..i].iter().any(|o| o.eq_ignore_ascii_case(s)) {
                return Err(format!("scopes: {s:?} is listed twice"));
            }
        }
        if self.timeout_seconds == Some(0) {
            return Err("timeout_seconds must be at least 1".into());
        }
        for (key, v) in [
            ("authority_host", &self.authority_host),
            ("arm_endpoint", &self.arm_endpoint),
        ] {
            if let Some(u) = v
                && !u.starts_with("https://")
            {
                return Err(format!(
                    "{key} {u:?} must start with https:// (Entra and ARM take tokens over HTTPS only)"
                ));
            }
        }
        Ok(())
    }

    /// The configured scope a requested one names (case-insensitive, as ARM's ids are).
    pub fn scope(&self, scope: &str) -> Option<&str> {
        self.scopes
            .iter()
            .find(|s| s.eq_ignore_ascii_case(scope))
            .map(String::as_str)
    }

    pub fn role_allowed(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r.eq_ignore_ascii_case(role))
    }
}

/// An ARM scope jitsudo may grant at.
pub fn scope_ok(scope: &str) -> bool {
    let parts: Vec<&str> = scope.split('/').collect();
    if parts.first() != Some(&"") || parts.iter().skip(1).any(|p| p.is_empty()) {
        return false;
    }
    match parts.as_slice() {
        ["", s, id, rest @ ..] if s.eq_ignore_ascii_case("subscriptions") => {
            uuid::Uuid::parse_str(id).is_ok() && rest.len() % 2 == 0
        }
        ["", p, m, g, name] => {
            p.eq_ignore_ascii_case("providers")
                && m.eq_ignore_ascii_case("Microsoft.Management")
                && g.eq_ignore_ascii_case("managementGroups")
                && !name.is_empty()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AzureConfig {
        AzureConfig {
            mode: Mode::Pim,
            tenant_id: Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into()),
            client_id: Some("04b07795-8ddb-461a-bbee-02f9e1bf7b46".into()),
            client_secret_file: Some("/etc/secret".into()),
            client_certificate_file: None,
            federated_token_file: None,
            managed_identity: false,
            roles: vec!["Reader".into()],
            scopes: vec!["/subscriptions/00000000-0000-0000-0000-000000000001".into()],
            authority_host: None,
            arm_endpoint: None,
            ca_file: None,
            timeout_seconds: None,
            replication_wait_seconds: None,
        }
    }

    #[test]
    fn tables_are_checked_with_what_to_do() {
        assert!(config().check().is_ok());
        let e = AzureConfig {
            client_secret_file: None,
            ..config()
        }
        .check()
        .unwrap_err();
        assert!(e.contains("no credentials"), "{e}");
        let e = AzureConfig {
            managed_identity: true,
            ..config()
        }
        .check()
        .unwrap_err();
        assert!(e.contains("only one"), "{e}");
        let e = AzureConfig {
            tenant_id: None,
            ..config()
        }
        .check()
        .unwrap_err();
        assert!(e.contains("Directory (tenant) ID"), "{e}");
        let e = AzureConfig {
            scopes: vec!["subscriptions/x".into()],
            ..config()
        }
        .check()
        .unwrap_err();
        assert!(e.contains("not an ARM scope"), "{e}");
        let e = AzureConfig {
            arm_endpoint: Some("http://127.0.0.1:1".into()),
            ..config()
        }
        .check()
        .unwrap_err();
        assert!(e.contains("https://"), "{e}");
        assert!(
            AzureConfig {
                roles: vec![],
                ..config()
            }
            .check()
            .is_err()
        );
    }

    #[test]
    fn scopes_are_arm_scopes() {
        assert!(scope_ok(
            "/subscriptions/00000000-0000-0000-0000-000000000001"
        ));
        assert!(scope_ok(
            "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg"
        ));
        assert!(scope_ok(
            "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sa"
        ));
        assert!(scope_ok(
            "/providers/Microsoft.Management/managementGroups/root"
        ));
        assert!(!scope_ok("/subscriptions/not-a-guid"));
        assert!(!scope_ok(
            "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups"
        ));
        assert!(!scope_ok("/"));
        assert!(!scope_ok(""));
    }
}
