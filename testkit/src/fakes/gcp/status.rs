//! Google's error bodies (AIP-193): `{"error": {"code", "message", "status", "details"}}`,
//! the `status` being the `google.rpc.Code` name clients read the code from.

use serde_json::{Value, json};

#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub http: u16,
    pub status: &'static str,
    pub message: String,
    pub details: Vec<Value>,
}

const DOMAIN: &str = "cloudresourcemanager.googleapis.com";

impl ApiError {
    fn new(http: u16, status: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            http,
            status,
            message: message.into(),
            details: Vec::new(),
        }
    }

    fn info(mut self, reason: &str, domain: &str, metadata: Value) -> Self {
        self.details.push(json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": reason, "domain": domain, "metadata": metadata,
        }));
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "INVALID_ARGUMENT", message)
    }

    pub fn bad_member(resource: &str) -> Self {
        let mut e = Self::new(
            400,
            "INVALID_ARGUMENT",
            "Policy members must be of the form \"<type>:<value>\".",
        );
        e.details.push(json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": "policy.bindings.member",
                "description": "Policy members must be prefixed of the form '<type>:<value>', where <type> is 'domain', 'group', 'serviceAccount', or 'user'."}],
        }));
        e.details.push(json!({
            "@type": "type.googleapis.com/google.rpc.ResourceInfo", "resourceName": resource,
        }));
        e.info("PROJECT_SET_IAM_DISALLOWED_MEMBER_TYPE", DOMAIN, json!({}))
    }

    /// Missing permission and unknown resource answer alike: 403, "(or it may not exist)".
    pub fn permission_denied(permission: &str, resource: &str) -> Self {
        Self::new(
            403,
            "PERMISSION_DENIED",
            format!(
                "Permission '{permission}' denied on resource '//{DOMAIN}/{resource}' (or it may not exist)."
            ),
        )
        .info(
            "IAM_PERMISSION_DENIED",
            DOMAIN,
            json!({"permission": permission, "resource": resource}),
        )
    }

    pub fn scope_insufficient(method: &str) -> Self {
        Self::new(
            403,
            "PERMISSION_DENIED",
            "Request had insufficient authentication scopes.",
        )
        .info(
            "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
            "googleapis.com",
            json!({"method": method, "service": DOMAIN}),
        )
    }

    pub fn unauthenticated(missing: bool, method: &str) -> Self {
        let (message, reason) = if missing {
            (
                "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
                "CREDENTIALS_MISSING",
            )
        } else {
            (
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
                "ACCESS_TOKEN_TYPE_UNSUPPORTED",
            )
        };
        Self::new(401, "UNAUTHENTICATED", message).info(
            reason,
            "googleapis.com",
            json!({"method": method, "service": DOMAIN}),
        )
    }

    pub fn aborted(sent: &str, current: &str) -> Self {
        Self::new(
            409,
            "ABORTED",
            format!(
                "There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff. The request's ETag '{sent}' did not match the current policy's ETag '{current}'."
            ),
        )
    }

    /// A quota rejection with the AIP's `RetryInfo` (Google sends no `Retry-After` header).
    pub fn throttled(retry_secs: u32) -> Self {
        let mut e = Self::new(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Write requests' and limit 'Write requests per minute' of service 'cloudresourcemanager.googleapis.com' for consumer 'project_number:0'.",
        )
        .info(
            "RATE_LIMIT_EXCEEDED",
            "googleapis.com",
            json!({"service": DOMAIN, "quota_metric": "cloudresourcemanager.googleapis.com/write_requests"}),
        );
        e.details.push(json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": format!("{retry_secs}s"),
        }));
        e
    }

    pub fn unavailable() -> Self {
        Self::new(503, "UNAVAILABLE", "The service is currently unavailable.")
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            404,
            "NOT_FOUND",
            format!("The requested URL {path} was not found on this server."),
        )
    }

    pub fn body(&self) -> Value {
        let mut error = json!({"code": self.http, "message": self.message, "status": self.status});
        if !self.details.is_empty() {
            error["details"] = Value::Array(self.details.clone());
        }
        json!({ "error": error })
    }
}
