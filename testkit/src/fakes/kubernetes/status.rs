//! `metav1.Status` answers in the shapes and wording of k8s.io/apimachinery's `api/errors`
//! constructors, plus the `field.Error` rendering that `Invalid` answers carry in their causes.
//!
//! Quirks kept on purpose: `details.kind` holds the *resource* ("rolebindings"), not the Kind,
//! for NotFound/AlreadyExists/Conflict/Forbidden (the constructors take a GroupResource), while
//! Invalid carries the Kind ("RoleBinding"); an error that is not an API status is answered
//! 500 with no `reason` at all, as `ErrorToAPIStatus` does.

use serde_json::{Map, Value, json};

pub(crate) const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// `schema.GroupResource`: rendered `resource.group`, or just `resource` for the core group.
#[derive(Clone, Debug)]
pub(crate) struct GroupResource {
    pub group: &'static str,
    pub resource: String,
}

impl GroupResource {
    pub fn new(group: &'static str, resource: impl Into<String>) -> Self {
        Self {
            group,
            resource: resource.into(),
        }
    }

    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

/// An API error that becomes a `metav1.Status` body with `code` as the HTTP status.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub code: u16,
    /// `None` for errors the real server did not classify (`StatusReasonUnknown` is "").
    pub reason: Option<&'static str>,
    pub message: String,
    pub details: Option<Value>,
    /// `Retry-After` header, sent together with `details.retryAfterSeconds`.
    pub retry_after: Option<u32>,
    /// `metadata.continue` of the Status, set on 410 for an inconsistent continuation.
    pub list_continue: Option<String>,
}

fn details(name: &str, gr: &GroupResource) -> Value {
    let mut d = Map::new();
    if !name.is_empty() {
        d.insert("name".into(), json!(name));
    }
    if !gr.group.is_empty() {
        d.insert("group".into(), json!(gr.group));
    }
    d.insert("kind".into(), json!(gr.resource));
    Value::Object(d)
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String) -> Self {
        Self {
            code,
            reason: Some(reason),
            message,
            details: None,
            retry_after: None,
            list_continue: None,
        }
    }

    pub fn not_found(gr: &GroupResource, name: &str) -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            format!("{} {} not found", gr.qualified(), go_quote(name)),
        );
        e.details = Some(details(name, gr));
        e
    }

    /// The catch-all 404 of the real server's not-found handler (unknown paths).
    pub fn path_not_found(in_api: bool) -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        );
        // go-restful's service error handler (paths under /api and /apis) adds empty details;
        // the final not-found handler does not.
        if in_api {
            e.details = Some(json!({}));
        }
        e
    }

    pub fn method_not_allowed() -> Self {
        let mut e = Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".into(),
        );
        e.details = Some(json!({}));
        e
    }

    pub fn already_exists(gr: &GroupResource, name: &str, being_deleted: bool) -> Self {
        let mut msg = format!("{} {} already exists", gr.qualified(), go_quote(name));
        if being_deleted {
            msg = format!("object is being deleted: {msg}");
        }
        let mut e = Self::new(409, "AlreadyExists", msg);
        e.details = Some(details(name, gr));
        e
    }

    pub fn conflict(gr: &GroupResource, name: &str, cause: &str) -> Self {
        let mut e = Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {}: {cause}",
                gr.qualified(),
                go_quote(name)
            ),
        );
        e.details = Some(details(name, gr));
        e
    }

    /// The optimistic-lock conflict of a write carrying a stale `metadata.resourceVersion`.
    pub fn stale(gr: &GroupResource, name: &str) -> Self {
        Self::conflict(
            gr,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// A failed UID/resourceVersion precondition: etcd3's `StorageError` text ends up verbatim
    /// in the Conflict message.
    pub fn precondition_failed(gr: &GroupResource, name: &str, key: &str, what: &str) -> Self {
        Self::conflict(
            gr,
            name,
            &format!(
                "StorageError: invalid object, Code: 4, Key: {key}, ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: {what}"
            ),
        )
    }

    pub fn forbidden(gr: &GroupResource, name: &str, why: &str) -> Self {
        let msg = if name.is_empty() {
            format!("{} is forbidden: {why}", gr.qualified())
        } else {
            format!("{} {} is forbidden: {why}", gr.qualified(), go_quote(name))
        };
        let mut e = Self::new(403, "Forbidden", msg);
        e.details = Some(details(name, gr));
        e
    }

    /// 422 Invalid; `kind` is the Kind (or, for the resourceVersion check of the generic store,
    /// the resource), qualified by `group`.
    pub fn invalid(group: &str, kind: &str, name: &str, errs: &[FieldError]) -> Self {
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let message = match errs {
            [] => format!("{qualified} {} is invalid", go_quote(name)),
            [one] => format!("{qualified} {} is invalid: {}", go_quote(name), one.error()),
            many => format!(
                "{qualified} {} is invalid: [{}]",
                go_quote(name),
                many.iter()
                    .map(FieldError::error)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let causes: Vec<Value> = errs
            .iter()
            .map(|e| json!({"reason": e.kind.cause(), "message": e.body(), "field": e.field}))
            .collect();
        let mut d = Map::new();
        if !name.is_empty() {
            d.insert("name".into(), json!(name));
        }
        if !group.is_empty() {
            d.insert("group".into(), json!(group));
        }
        d.insert("kind".into(), json!(kind));
        d.insert("causes".into(), Value::Array(causes));
        let mut e = Self::new(422, "Invalid", message);
        e.details = Some(Value::Object(d));
        e
    }

    /// A JSON patch that does not apply: the real server answers a generic 422; the patch
    /// library's reason is kept in a cause here to help whoever reads the test failure.
    pub fn patch_failed(cause: &str) -> Self {
        let mut e = Self::new(
            422,
            "Invalid",
            "the server rejected our request due to an error in our request".into(),
        );
        e.details =
            Some(json!({"causes": [{"reason": "UnexpectedServerResponse", "message": cause}]}));
        e
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into())
    }

    pub fn internal(message: &str) -> Self {
        let mut e = Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        );
        e.details = Some(json!({"causes": [{"message": message}]}));
        e
    }

    /// What `ErrorToAPIStatus` makes of an error that is not an API status: 500, no reason.
    pub fn unclassified(message: impl Into<String>) -> Self {
        Self {
            code: 500,
            reason: None,
            message: message.into(),
            details: None,
            retry_after: None,
            list_continue: None,
        }
    }

    pub fn too_many_requests(message: impl Into<String>, retry_after: u32) -> Self {
        let mut e = Self::new(429, "TooManyRequests", message.into());
        e.details = Some(json!({"retryAfterSeconds": retry_after}));
        e.retry_after = Some(retry_after);
        e
    }

    pub fn expired(message: &str, list_continue: Option<String>) -> Self {
        let mut e = Self::new(410, "Expired", message.into());
        e.list_continue = list_continue;
        e
    }

    pub fn timeout(message: &str, retry_after: u32, cause: Option<(&str, &str)>) -> Self {
        let mut e = Self::new(504, "Timeout", format!("Timeout: {message}"));
        let mut d = json!({"retryAfterSeconds": retry_after});
        if let Some((reason, msg)) = cause {
            d["causes"] = json!([{"reason": reason, "message": msg}]);
        }
        e.details = Some(d);
        e
    }

    pub fn unsupported_media_type(accepted: &[&str]) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    pub fn not_acceptable(accepted: &[&str]) -> Self {
        Self::new(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: {}",
                accepted.join(", ")
            ),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized".into())
    }

    /// The `metav1.Status` body.
    pub fn body(&self) -> Value {
        let mut metadata = Map::new();
        if let Some(c) = &self.list_continue {
            metadata.insert("continue".into(), json!(c));
        }
        let mut s = Map::new();
        s.insert("kind".into(), json!("Status"));
        s.insert("apiVersion".into(), json!("v1"));
        s.insert("metadata".into(), Value::Object(metadata));
        s.insert("status".into(), json!("Failure"));
        s.insert("message".into(), json!(self.message));
        if let Some(r) = self.reason {
            s.insert("reason".into(), json!(r));
        }
        if let Some(d) = &self.details {
            s.insert("details".into(), d.clone());
        }
        s.insert("code".into(), json!(self.code));
        Value::Object(s)
    }
}

/// The `Success` Status of a delete: the generic registry puts the *resource* into
/// `details.kind` ("Yes we set Kind field to resource", store.go).
pub(crate) fn delete_success(gr: &GroupResource, name: &str, uid: &str) -> Value {
    let mut d = details(name, gr);
    d["uid"] = json!(uid);
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum FieldErrorKind {
    Required,
    Invalid,
    NotSupported(Vec<String>),
    Forbidden,
}

impl FieldErrorKind {
    fn cause(&self) -> &'static str {
        match self {
            Self::Required => "FieldValueRequired",
            Self::Invalid => "FieldValueInvalid",
            Self::NotSupported(_) => "FieldValueNotSupported",
            Self::Forbidden => "FieldValueForbidden",
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Self::Required => "Required value",
            Self::Invalid => "Invalid value",
            Self::NotSupported(_) => "Unsupported value",
            Self::Forbidden => "Forbidden",
        }
    }
}

/// `field.Error`. `value` is already rendered the way Go's `%q`/`%#v` would print it.
#[derive(Clone, Debug)]
pub(crate) struct FieldError {
    pub kind: FieldErrorKind,
    pub field: String,
    pub value: String,
    pub detail: String,
}

impl FieldError {
    pub fn required(field: &str, detail: &str) -> Self {
        Self {
            kind: FieldErrorKind::Required,
            field: field.into(),
            value: String::new(),
            detail: detail.into(),
        }
    }

    pub fn invalid(field: &str, value: String, detail: &str) -> Self {
        Self {
            kind: FieldErrorKind::Invalid,
            field: field.into(),
            value,
            detail: detail.into(),
        }
    }

    pub fn invalid_str(field: &str, value: &str, detail: &str) -> Self {
        Self::invalid(field, go_quote(value), detail)
    }

    pub fn not_supported(field: &str, value: &str, supported: &[&str]) -> Self {
        Self {
            kind: FieldErrorKind::NotSupported(supported.iter().map(|s| s.to_string()).collect()),
            field: field.into(),
            value: go_quote(value),
            detail: String::new(),
        }
    }

    pub fn forbidden(field: &str, detail: &str) -> Self {
        Self {
            kind: FieldErrorKind::Forbidden,
            field: field.into(),
            value: String::new(),
            detail: detail.into(),
        }
    }

    /// `ErrorBody()`: what goes into a cause's message.
    pub fn body(&self) -> String {
        let mut s = self.kind.label().to_string();
        match &self.kind {
            FieldErrorKind::Invalid => s = format!("{s}: {}", self.value),
            FieldErrorKind::NotSupported(values) => {
                s = format!("{s}: {}", self.value);
                let quoted: Vec<String> = values.iter().map(|v| go_quote(v)).collect();
                return format!("{s}: supported values: {}", quoted.join(", "));
            }
            FieldErrorKind::Required | FieldErrorKind::Forbidden => {}
        }
        if !self.detail.is_empty() {
            s = format!("{s}: {}", self.detail);
        }
        s
    }

    /// `Error()`: `field: body`, as aggregated into the Status message.
    pub fn error(&self) -> String {
        format!("{}: {}", self.field, self.body())
    }
}

/// Go's `%q` for a string (close enough: printable characters as-is, the usual escapes).
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%q` for a `[]string`: `["a" "b"]`.
pub(crate) fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}
