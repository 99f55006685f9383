//! `kind = "gcp"`: the keys of its `[[providers]]` table.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpConfig {
    /// Roles that may be granted: `roles/NAME` (predefined), `projects/P/roles/NAME` or
    /// `organizations/O/roles/NAME` (custom); a trailing `*` matches a prefix
    /// (`roles/compute.*`). Required: nothing is grantable by default. Basic roles
    /// (owner, editor, viewer) are refused: IAM puts no condition on them.
    pub roles: Vec<String>,
    /// Resources that may be requested, exactly: `projects/ID`, `folders/NUMBER` or
    /// `organizations/NUMBER`. The reconciler reads each one's policy.
    pub scopes: Vec<String>,
    /// A service-account key file (JSON). Without it, Application Default Credentials:
    /// `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's ADC file, or the metadata server
    /// (workload identity on GKE, the attached service account on GCE/Cloud Run).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// The Resource Manager endpoint (tests, private service connect); Google's own by default.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Per API call (connect, send, answer); 10 s by default.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

/// The roles IAM takes no condition on.
pub const BASIC_ROLES: [&str; 3] = ["roles/owner", "roles/editor", "roles/viewer"];

impl GcpConfig {
    /// Checks the table before anything starts.
    pub fn check(&self) -> Result<(), String> {
        if self.roles.is_empty() {
            return Err("roles is empty: list the roles that may be granted (e.g. roles = [\"roles/compute.viewer\"])".into());
        }
        for r in &self.roles {
            let bare = r.strip_suffix('*').unwrap_or(r);
            if !role_shape_ok(bare, r.ends_with('*')) {
                return Err(format!(
                    "roles: {r:?} is not a role name: use roles/NAME, projects/P/roles/NAME or organizations/O/roles/NAME (a trailing * matches a prefix)"
                ));
            }
            if BASIC_ROLES.contains(&r.as_str()) {
                return Err(format!(
                    "roles: {r:?} is a basic role, which IAM grants without conditions only: jitsudo cannot make it time-bound; use a predefined or custom role"
                ));
            }
        }
        if self.scopes.is_empty() {
            return Err("scopes is empty: list the resources that may be requested (e.g. scopes = [\"projects/my-project\"])".into());
        }
        for (i, s) in self.scopes.iter().enumerate() {
            if scope_kind(s).is_none() {
                return Err(format!(
                    "scopes: {s:?} is not projects/ID, folders/NUMBER or organizations/NUMBER"
                ));
            }
            if self.scopes[..i].contains(s) {
                return Err(format!("scopes: {s:?} is listed twice"));
            }
        }
        if self.timeout_seconds == Some(0) {
            return Err("timeout_seconds must be at least 1".into());
        }
        if let Some(e) = &self.endpoint
            && !(e.starts_with("https://") || e.starts_with("http://"))
        {
            return Err(format!(
                "endpoint {e:?} must start with https:// (or http:// for a local test server)"
            ));
        }
        Ok(())
    }

    /// Whether a role may be granted (exactly or by a prefix entry).
    pub fn role_allowed(&self, role: &str) -> bool {
        self.roles.iter().any(|r| match r.strip_suffix('*') {
            Some(prefix) => role.starts_with(prefix) && role.len() > prefix.len(),
            None => r == role,
        })
    }
}

fn role_shape_ok(role: &str, prefix: bool) -> bool {
    let name_ok = |n: &str| (prefix || !n.is_empty()) && !n.contains('/');
    if let Some(rest) = role.strip_prefix("roles/") {
        return name_ok(rest);
    }
    let parts: Vec<&str> = role.splitn(4, '/').collect();
    matches!(parts.as_slice(), [p, id, "roles", n] if (*p == "projects" || *p == "organizations") && !id.is_empty() && name_ok(n))
}

/// The kind of a scope: `projects`, `folders` or `organizations`, when well formed.
pub fn scope_kind(scope: &str) -> Option<&'static str> {
    let (kind, id) = scope.split_once('/')?;
    if id.is_empty() || id.contains('/') {
        return None;
    }
    match kind {
        "projects" => Some("projects"),
        "folders" if id.bytes().all(|b| b.is_ascii_digit()) => Some("folders"),
        "organizations" if id.bytes().all(|b| b.is_ascii_digit()) => Some("organizations"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(roles: &[&str], scopes: &[&str]) -> GcpConfig {
        GcpConfig {
            roles: roles.iter().map(|s| s.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            credentials_file: None,
            endpoint: None,
            timeout_seconds: None,
        }
    }

    #[test]
    fn tables_are_checked_with_what_to_do() {
        assert!(
            config(
                &["roles/compute.*", "projects/p/roles/custom"],
                &["projects/p", "folders/12", "organizations/34"]
            )
            .check()
            .is_ok()
        );
        let e = config(&["roles/editor"], &["projects/p"])
            .check()
            .unwrap_err();
        assert!(e.contains("basic role") && e.contains("conditions"), "{e}");
        let e = config(&["compute.viewer"], &["projects/p"])
            .check()
            .unwrap_err();
        assert!(e.contains("roles/NAME"), "{e}");
        let e = config(&["roles/x"], &["folders/abc"]).check().unwrap_err();
        assert!(e.contains("folders/NUMBER"), "{e}");
        let e = config(&["roles/x"], &["projects/p", "projects/p"])
            .check()
            .unwrap_err();
        assert!(e.contains("twice"), "{e}");
        assert!(config(&[], &["projects/p"]).check().is_err());
    }

    #[test]
    fn roles_match_exactly_or_by_prefix() {
        let c = config(&["roles/compute.*", "roles/browser"], &["projects/p"]);
        assert!(c.role_allowed("roles/compute.viewer"));
        assert!(c.role_allowed("roles/browser"));
        assert!(!c.role_allowed("roles/compute."));
        assert!(!c.role_allowed("roles/browser2"));
        assert!(!c.role_allowed("roles/storage.admin"));
    }
}
