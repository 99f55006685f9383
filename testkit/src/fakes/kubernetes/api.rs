//! The REST semantics: routing, authorization, and the create/get/list/update/patch/delete
//! pipelines in the order the real handlers and generic registry run their checks (namespace
//! match → admission → escalation → validation → storage preconditions), each answering the
//! Status the real server answers. Every request runs under the store lock, so each verb is
//! atomic like an etcd transaction.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::discovery::{RBAC_V1, core_resources, rbac_group, rbac_resources, version};
use super::escalation::escalation_check;
use super::list::list;
use super::patch::{self, PatchError, PatchType};
use super::rbac::{self, DecodeError};
use super::status::{ApiError, FieldError, GroupResource, RBAC_GROUP, delete_success, go_quote};
use super::store::{Store, etcd_key, key};
use super::{Kind, Shared, User, new_uid, now_rfc3339};

/// One request as the handler sees it (already authenticated).
pub(crate) struct ApiRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub content_type: Option<&'a str>,
    pub accept: Option<&'a str>,
    pub body: &'a [u8],
    pub user: &'a User,
}

pub(crate) struct ApiResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl ApiResponse {
    pub fn json(status: u16, v: &Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: serde_json::to_vec(v).unwrap_or_default(),
        }
    }

    pub fn error(e: &ApiError) -> Self {
        let mut r = Self::json(e.code, &e.body());
        if let Some(s) = e.retry_after {
            r.headers.push(("Retry-After", s.to_string()));
        }
        r
    }

    fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn warn(mut self, warnings: &[String]) -> Self {
        for w in warnings {
            // RFC 7234 warning as the apiserver's warning recorder renders it.
            self.headers
                .push(("Warning", format!("299 - {}", go_quote(w))));
        }
        self
    }
}

type Result<T> = std::result::Result<T, ApiError>;

enum Route {
    Root,
    Version,
    Health,
    Api,
    ApiV1,
    Apis,
    RbacGroup,
    RbacV1,
    Namespaces,
    Namespace(String),
    /// `ns`: the path's namespace; `None` for cluster-scoped kinds and all-namespaces lists.
    Collection {
        kind: Kind,
        ns: Option<String>,
    },
    Item {
        kind: Kind,
        ns: Option<String>,
        name: String,
    },
    NotFound {
        in_api: bool,
    },
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let in_api = matches!(segs.first(), Some(&"api") | Some(&"apis"));
    match segs.as_slice() {
        [] => Route::Root,
        ["version"] => Route::Version,
        ["healthz" | "livez" | "readyz"] => Route::Health,
        ["api"] => Route::Api,
        ["api", "v1"] => Route::ApiV1,
        ["api", "v1", "namespaces"] => Route::Namespaces,
        ["api", "v1", "namespaces", ns] => Route::Namespace(ns.to_string()),
        ["apis"] => Route::Apis,
        ["apis", RBAC_GROUP] => Route::RbacGroup,
        ["apis", RBAC_GROUP, "v1"] => Route::RbacV1,
        ["apis", RBAC_GROUP, "v1", res] => match Kind::from_resource(res) {
            Some(kind) => Route::Collection { kind, ns: None },
            None => Route::NotFound { in_api },
        },
        ["apis", RBAC_GROUP, "v1", res, name] => match Kind::from_resource(res) {
            Some(kind) if !kind.namespaced() => Route::Item {
                kind,
                ns: None,
                name: name.to_string(),
            },
            _ => Route::NotFound { in_api },
        },
        ["apis", RBAC_GROUP, "v1", "namespaces", ns, res] => match Kind::from_resource(res) {
            Some(kind) if kind.namespaced() => Route::Collection {
                kind,
                ns: Some(ns.to_string()),
            },
            _ => Route::NotFound { in_api },
        },
        ["apis", RBAC_GROUP, "v1", "namespaces", ns, res, name] => match Kind::from_resource(res) {
            Some(kind) if kind.namespaced() => Route::Item {
                kind,
                ns: Some(ns.to_string()),
                name: name.to_string(),
            },
            _ => Route::NotFound { in_api },
        },
        _ => Route::NotFound { in_api },
    }
}

/// `url.ParseQuery`: `+` is a space, `%XX` escapes; later duplicates lose to the first.
pub(crate) fn parse_query(q: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(unescape(k)).or_insert_with(|| unescape(v));
    }
    out
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 3 <= b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (_, Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (c, None) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn handle(shared: &Shared, req: &ApiRequest) -> ApiResponse {
    match dispatch(shared, req) {
        Ok(r) => r,
        Err(e) => ApiResponse::error(&e),
    }
}

fn dispatch(shared: &Shared, req: &ApiRequest) -> Result<ApiResponse> {
    let q = parse_query(req.query);
    let get = req.method == "GET" || req.method == "HEAD";
    let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    match route(req.path) {
        Route::Root if get => Ok(ApiResponse::json(
            200,
            &json!({"paths": [
                "/api", "/api/v1", "/apis", "/apis/", "/apis/rbac.authorization.k8s.io",
                "/apis/rbac.authorization.k8s.io/v1", "/healthz", "/livez", "/readyz", "/version"
            ]}),
        )),
        Route::Version if get => Ok(ApiResponse::json(200, &version())),
        Route::Health if get => Ok(ApiResponse::text(200, "ok")),
        Route::Api if get => Ok(ApiResponse::json(
            200,
            &json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()}]
            }),
        )),
        Route::ApiV1 if get => Ok(ApiResponse::json(200, &core_resources())),
        Route::Apis if get => Ok(ApiResponse::json(
            200,
            &json!({
                "kind": "APIGroupList", "apiVersion": "v1", "groups": [rbac_group()]
            }),
        )),
        Route::RbacGroup if get => {
            let mut g = rbac_group();
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            Ok(ApiResponse::json(200, &g))
        }
        Route::RbacV1 if get => Ok(ApiResponse::json(200, &rbac_resources())),
        Route::Namespaces | Route::Namespace(_) if watch => Err(watch_unsupported()),
        Route::Namespaces => namespaces(shared, req, None),
        Route::Namespace(name) => namespaces(shared, req, Some(&name)),
        Route::Collection { .. } | Route::Item { .. } if watch && get => Err(watch_unsupported()),
        Route::Collection { kind, ns } => collection(shared, req, &q, kind, ns.as_deref()),
        Route::Item { kind, ns, name } => item(shared, req, &q, kind, ns.as_deref(), &name),
        Route::NotFound { in_api } => Err(ApiError::path_not_found(in_api)),
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn watch_unsupported() -> ApiError {
    let mut e = ApiError::method_not_allowed();
    e.message = "watch is not implemented by the testkit Kubernetes fake".into();
    e
}

/// Kubernetes verb of a resource request.
fn verb(method: &str, collection: bool) -> &'static str {
    match (method, collection) {
        ("GET" | "HEAD", true) => "list",
        ("GET" | "HEAD", false) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "deletecollection",
        ("DELETE", false) => "delete",
        _ => "",
    }
}

/// The request authorizer, RBAC-style: non-admins may read and (unless read-only) write RBAC
/// objects and read namespaces; nothing else. The text is `forbiddenMessage`'s.
fn authorize(
    user: &User,
    verb: &str,
    gr: &GroupResource,
    ns: Option<&str>,
    name: &str,
) -> Result<()> {
    if user.admin {
        return Ok(());
    }
    let read = matches!(verb, "get" | "list" | "watch");
    let allowed = if gr.group == RBAC_GROUP {
        read || !user.rights.read_only
    } else {
        read
    };
    if allowed {
        return Ok(());
    }
    let scope = match ns {
        Some(ns) => format!("in the namespace {}", go_quote(ns)),
        None => "at the cluster scope".to_string(),
    };
    Err(ApiError::forbidden(
        gr,
        name,
        &format!(
            "User {} cannot {verb} resource {} in API group {} {scope}",
            go_quote(&user.name),
            go_quote(&gr.resource),
            go_quote(gr.group)
        ),
    ))
}

fn negotiate_json(accept: Option<&str>) -> Result<()> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(());
    };
    let ok = accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let mt = parts.next().unwrap_or("");
        let params: Vec<&str> = parts.collect();
        // `as=Table`/`as=PartialObjectMetadata` need a conversion this fake does not do; a
        // client that lists plain JSON after them (kubectl does) gets plain JSON.
        let plain = !params.iter().any(|p| p.starts_with("as="));
        matches!(mt, "*/*" | "application/*" | "application/json") && plain
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::not_acceptable(&["application/json"]))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

struct WriteOpts {
    dry_run: bool,
    validation: FieldValidation,
}

fn write_opts(q: &BTreeMap<String, String>, options_kind: &str) -> Result<WriteOpts> {
    let mut errs = Vec::new();
    let dry_run = match q.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            errs.push(FieldError::not_supported("dryRun", other, &["All"]));
            false
        }
    };
    let validation = match q.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Warn") => FieldValidation::Warn,
        Some("Ignore") => FieldValidation::Ignore,
        Some("Strict") => FieldValidation::Strict,
        Some(other) => {
            errs.push(FieldError::not_supported(
                "fieldValidation",
                other,
                &["", "Ignore", "Warn", "Strict"],
            ));
            FieldValidation::Warn
        }
    };
    if !errs.is_empty() {
        return Err(ApiError::invalid("meta.k8s.io", options_kind, "", &errs));
    }
    Ok(WriteOpts {
        dry_run,
        validation,
    })
}

fn media_type(ct: Option<&str>) -> String {
    ct.unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Decodes a create/update body into the typed object: JSON only (the real server also reads
/// YAML, protobuf and CBOR), unknown fields per `fieldValidation`, defaults applied.
fn decode_body(kind: Kind, req: &ApiRequest, opts: &WriteOpts) -> Result<(Value, Vec<String>)> {
    let mt = media_type(req.content_type);
    if !(mt.is_empty() || mt == "application/json") {
        return Err(ApiError::unsupported_media_type(&["application/json"]));
    }
    let raw: Value = serde_json::from_slice(req.body).map_err(|e| {
        let summary: String = String::from_utf8_lossy(req.body).chars().take(30).collect();
        ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): couldn't get version/kind; json parse error: {e} ({summary})",
            kind.name()
        ))
    })?;
    let handled = |gv_kind: &str, version: &str, msg: String| {
        ApiError::bad_request(format!(
            "{gv_kind} in version {} cannot be handled as a {}: {msg}",
            go_quote(version),
            kind.name()
        ))
    };
    if !raw.is_object() {
        return Err(ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): couldn't get version/kind; json parse error: json: cannot unmarshal {} into Go value of type struct {{ APIVersion string \"json:\\\"apiVersion,omitempty\\\"\"; Kind string \"json:\\\"kind,omitempty\\\"\" }}",
            kind.name(),
            if raw.is_array() { "array" } else { "value" }
        )));
    }
    let api_version = raw["apiVersion"].as_str().unwrap_or("");
    let body_kind = raw["kind"].as_str().unwrap_or("");
    let version = api_version.rsplit('/').next().unwrap_or("");
    if !api_version.is_empty() && api_version != RBAC_V1 {
        let k = if body_kind.is_empty() {
            kind.name()
        } else {
            body_kind
        };
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({RBAC_V1}) for {k}"
        )));
    }
    if !body_kind.is_empty() && body_kind != kind.name() {
        return Err(handled(
            body_kind,
            "v1",
            format!(
                "converting (v1.{body_kind}) to (rbac.{}): unknown conversion",
                kind.name()
            ),
        ));
    }
    let (mut obj, unknown) = rbac::decode(kind, &raw).map_err(|DecodeError::Type(msg)| {
        handled(
            kind.name(),
            if version.is_empty() { "v1" } else { version },
            msg,
        )
    })?;
    let warnings: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field {}", go_quote(f)))
        .collect();
    if opts.validation == FieldValidation::Strict && !warnings.is_empty() {
        return Err(handled(
            kind.name(),
            "v1",
            format!("strict decoding error: {}", warnings.join(", ")),
        ));
    }
    obj["kind"] = json!(kind.name());
    obj["apiVersion"] = json!(RBAC_V1);
    rbac::apply_defaults(kind, &mut obj);
    let warnings = if opts.validation == FieldValidation::Warn {
        warnings
    } else {
        Vec::new()
    };
    Ok((obj, warnings))
}

pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or("")
}

pub(crate) fn set_meta(obj: &mut Value, field: &str, v: Value) {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if let Some(m) = obj["metadata"].as_object_mut() {
        if v.is_null() || v.as_str() == Some("") {
            m.remove(field);
        } else {
            m.insert(field.to_string(), v);
        }
    }
}

/// List items come without kind/apiVersion, as the real server encodes typed lists.
pub(crate) fn as_item(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    o
}

fn namespaces(shared: &Shared, req: &ApiRequest, name: Option<&str>) -> Result<ApiResponse> {
    let gr = GroupResource::new("", "namespaces");
    let v = verb(req.method, name.is_none());
    if v.is_empty() || (name.is_none() && v == "deletecollection") {
        return Err(ApiError::method_not_allowed());
    }
    authorize(req.user, v, &gr, None, name.unwrap_or(""))?;
    let mut store = shared.store();
    match (v, name) {
        ("get", Some(n)) => {
            negotiate_json(req.accept)?;
            store
                .namespace(n)
                .map(|ns| ApiResponse::json(200, ns))
                .ok_or_else(|| ApiError::not_found(&gr, n))
        }
        ("list", None) => {
            negotiate_json(req.accept)?;
            let items: Vec<Value> = store.namespaces().map(as_item).collect();
            Ok(ApiResponse::json(
                200,
                &json!({
                    "kind": "NamespaceList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": store.current_rv().to_string()}, "items": items
                }),
            ))
        }
        ("create", None) => {
            let raw: Value = serde_json::from_slice(req.body)
                .map_err(|e| ApiError::bad_request(format!("json parse error: {e}")))?;
            let n = raw["metadata"]["name"].as_str().unwrap_or("").to_string();
            let errs: Vec<FieldError> = if n.is_empty() {
                vec![FieldError::required(
                    "metadata.name",
                    "name or generateName is required",
                )]
            } else {
                rbac::dns1123_label_errors(&n)
                    .iter()
                    .map(|e| FieldError::invalid_str("metadata.name", &n, e))
                    .collect()
            };
            if !errs.is_empty() {
                return Err(ApiError::invalid("", "Namespace", &n, &errs));
            }
            if store.namespace(&n).is_some() {
                return Err(ApiError::already_exists(&gr, &n, false));
            }
            let ns = store.add_namespace(&n, new_uid(), now_rfc3339());
            Ok(ApiResponse::json(201, &ns))
        }
        // Namespace deletion (Terminating, content removal) is not modelled.
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn collection(
    shared: &Shared,
    req: &ApiRequest,
    q: &BTreeMap<String, String>,
    kind: Kind,
    ns: Option<&str>,
) -> Result<ApiResponse> {
    let gr = kind.group_resource();
    let all_namespaces = kind.namespaced() && ns.is_none();
    let v = verb(req.method, true);
    // The all-namespaces path of a namespaced kind only serves list (and watch).
    if v.is_empty() || v == "update" || v == "patch" || (all_namespaces && v != "list") {
        return Err(ApiError::method_not_allowed());
    }
    authorize(req.user, v, &gr, ns, "")?;
    match v {
        "list" => {
            negotiate_json(req.accept)?;
            let store = shared.store();
            let list = list(&store, kind, ns, q)?;
            Ok(ApiResponse::json(200, &list))
        }
        "create" => create(shared, req, q, kind, ns),
        "deletecollection" => {
            let opts = write_opts(q, "DeleteOptions")?;
            let mut store = shared.store();
            let listed = list(&store, kind, ns, &strip_paging(q))?;
            let mut deleted = Vec::new();
            for it in listed["items"].as_array().cloned().unwrap_or_default() {
                let k = key(
                    ns.or(it["metadata"]["namespace"].as_str())
                        .filter(|_| kind.namespaced()),
                    meta_str(&it, "name"),
                );
                if let Some(obj) = store.get(kind, &k).cloned() {
                    let out = delete_one(&mut store, kind, &k, obj, opts.dry_run);
                    deleted.push(as_item(out.as_ref().unwrap_or(&it)));
                }
            }
            Ok(ApiResponse::json(
                200,
                &json!({
                    "kind": kind.list_kind(), "apiVersion": RBAC_V1,
                    "metadata": {"resourceVersion": store.current_rv().to_string()}, "items": deleted
                }),
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn strip_paging(q: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut q = q.clone();
    q.remove("limit");
    q.remove("continue");
    q
}

fn item(
    shared: &Shared,
    req: &ApiRequest,
    q: &BTreeMap<String, String>,
    kind: Kind,
    ns: Option<&str>,
    name: &str,
) -> Result<ApiResponse> {
    let gr = kind.group_resource();
    let v = verb(req.method, false);
    if v.is_empty() || v == "create" {
        return Err(ApiError::method_not_allowed());
    }
    authorize(req.user, v, &gr, ns, name)?;
    let k = key(ns, name);
    match v {
        "get" => {
            negotiate_json(req.accept)?;
            shared
                .store()
                .get(kind, &k)
                .map(|o| ApiResponse::json(200, o))
                .ok_or_else(|| ApiError::not_found(&gr, name))
        }
        "update" => {
            let opts = write_opts(q, "UpdateOptions")?;
            let (mut obj, warnings) = decode_body(kind, req, &opts)?;
            let body_name = meta_str(&obj, "name");
            if body_name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
            place_namespace(&mut obj, kind, ns, true)?;
            let mut store = shared.store();
            let existing = store.get(kind, &k).cloned();
            let uid = meta_str(&obj, "uid").to_string();
            if !uid.is_empty() {
                let have = existing.as_ref().map(|e| meta_str(e, "uid")).unwrap_or("");
                if have != uid {
                    return Err(ApiError::precondition_failed(
                        &gr,
                        name,
                        &etcd_key(kind, &k),
                        &format!("UID in precondition: {uid}, UID in object meta: {have}"),
                    ));
                }
            }
            let (status, out) = match existing {
                // RBAC strategies allow create-on-update: PUT to a missing name creates it.
                None => {
                    admit_create(&store, kind, ns)?;
                    escalation_check(&store, req.user, kind, ns, name, &obj, None)?;
                    (
                        201,
                        finish_create(&mut store, kind, &k, obj, opts.dry_run, false)?,
                    )
                }
                Some(old) => (
                    200,
                    update(&mut store, req.user, kind, ns, &k, obj, &old, opts.dry_run)?,
                ),
            };
            Ok(ApiResponse::json(status, &out).warn(&warnings))
        }
        "patch" => {
            let pt = match media_type(req.content_type).as_str() {
                "application/json-patch+json" => PatchType::Json,
                "application/merge-patch+json" => PatchType::Merge,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                    let mut e = ApiError::unsupported_media_type(&[
                        "application/json-patch+json",
                        "application/merge-patch+json",
                        "application/strategic-merge-patch+json",
                    ]);
                    e.message = format!(
                        "server-side apply is not implemented by the testkit Kubernetes fake; {}",
                        e.message
                    );
                    return Err(e);
                }
                _ => {
                    return Err(ApiError::unsupported_media_type(&[
                        "application/json-patch+json",
                        "application/merge-patch+json",
                        "application/apply-patch+yaml",
                        "application/strategic-merge-patch+json",
                    ]));
                }
            };
            let opts = write_opts(q, "PatchOptions")?;
            let mut store = shared.store();
            let old = store
                .get(kind, &k)
                .cloned()
                .ok_or_else(|| ApiError::not_found(&gr, name))?;
            let patched = patch::apply(pt, &old, req.body).map_err(|e| match e {
                PatchError::Decode(m) => ApiError::bad_request(m),
                PatchError::Apply(m) => ApiError::patch_failed(&m),
            })?;
            let body = serde_json::to_vec(&patched).unwrap_or_default();
            let sub = ApiRequest {
                content_type: Some("application/json"),
                body: &body,
                ..*req
            };
            let (mut obj, warnings) = decode_body(kind, &sub, &opts)?;
            let body_name = meta_str(&obj, "name");
            if body_name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
            place_namespace(&mut obj, kind, ns, true)?;
            let out = update(&mut store, req.user, kind, ns, &k, obj, &old, opts.dry_run)?;
            Ok(ApiResponse::json(200, &out).warn(&warnings))
        }
        "delete" => {
            let opts = write_opts(q, "DeleteOptions")?;
            let body: Value = if req.body.iter().all(u8::is_ascii_whitespace) {
                json!({})
            } else {
                serde_json::from_slice(req.body)
                    .map_err(|e| ApiError::bad_request(format!("json parse error: {e}")))?
            };
            let dry_run = opts.dry_run
                || body["dryRun"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|v| v == "All"));
            let mut store = shared.store();
            let old = store
                .get(kind, &k)
                .cloned()
                .ok_or_else(|| ApiError::not_found(&gr, name))?;
            let pre = &body["preconditions"];
            for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
                if let Some(want) = pre[field].as_str() {
                    let have = meta_str(&old, field);
                    if want != have {
                        return Err(ApiError::precondition_failed(
                            &gr,
                            name,
                            &etcd_key(kind, &k),
                            &format!(
                                "{label} in precondition: {want}, {label} in object meta: {have}"
                            ),
                        ));
                    }
                }
            }
            let uid = meta_str(&old, "uid").to_string();
            match delete_one(&mut store, kind, &k, old, dry_run) {
                // Finalizers keep the object: it is marked and returned, as the registry does.
                Some(marked) => Ok(ApiResponse::json(200, &marked)),
                None => Ok(ApiResponse::json(200, &delete_success(&gr, name, &uid))),
            }
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// Deletes now, or (with finalizers) marks the object deleting and returns it.
fn delete_one(
    store: &mut Store,
    kind: Kind,
    k: &str,
    mut old: Value,
    dry_run: bool,
) -> Option<Value> {
    let finalizers = old["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if !finalizers {
        if !dry_run {
            store.delete(kind, k);
        }
        return None;
    }
    if old["metadata"]["deletionTimestamp"].is_string() {
        return Some(old);
    }
    set_meta(&mut old, "deletionTimestamp", json!(now_rfc3339()));
    set_meta(&mut old, "deletionGracePeriodSeconds", json!(0));
    if dry_run {
        return Some(old);
    }
    Some(store.put(kind, k, old))
}

/// `EnsureObjectNamespaceMatchesRequestNamespace` (create) and `checkName` (update).
fn place_namespace(obj: &mut Value, kind: Kind, ns: Option<&str>, update: bool) -> Result<()> {
    let body_ns = meta_str(obj, "namespace").to_string();
    match ns.filter(|_| kind.namespaced()) {
        Some(ns) => {
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(if update {
                    format!(
                        "the namespace of the object ({body_ns}) does not match the namespace on the request ({ns})"
                    )
                } else {
                    "the namespace of the provided object does not match the namespace sent on the request".to_string()
                }));
            }
            set_meta(obj, "namespace", json!(ns));
        }
        // Cluster-scoped: a namespace in the body is silently cleared.
        None => set_meta(obj, "namespace", Value::Null),
    }
    Ok(())
}

/// NamespaceLifecycle admission: no creation in a namespace that does not exist.
fn admit_create(store: &Store, kind: Kind, ns: Option<&str>) -> Result<()> {
    match ns.filter(|_| kind.namespaced()) {
        Some(ns) if store.namespace(ns).is_none() => Err(ApiError::not_found(
            &GroupResource::new("", "namespaces"),
            ns,
        )),
        _ => Ok(()),
    }
}

fn create(
    shared: &Shared,
    req: &ApiRequest,
    q: &BTreeMap<String, String>,
    kind: Kind,
    ns: Option<&str>,
) -> Result<ApiResponse> {
    let opts = write_opts(q, "CreateOptions")?;
    let (mut obj, warnings) = decode_body(kind, req, &opts)?;
    place_namespace(&mut obj, kind, ns, false)?;
    let mut store = shared.store();
    admit_create(&store, kind, ns)?;
    if meta_str(&obj, "name").is_empty() && !meta_str(&obj, "generateName").is_empty() {
        let name = format!("{}{}", meta_str(&obj, "generateName"), random_suffix());
        set_meta(&mut obj, "name", json!(name));
    }
    let name = meta_str(&obj, "name").to_string();
    escalation_check(&store, req.user, kind, ns, &name, &obj, None)?;
    let k = key(ns.filter(|_| kind.namespaced()), &name);
    let out = finish_create(&mut store, kind, &k, obj, opts.dry_run, true)?;
    Ok(ApiResponse::json(201, &out).warn(&warnings))
}

/// BeforeCreate → validation → storage create (system fields, resourceVersion, existence).
/// `post`: a POST, which etcd3's Create refuses with a resourceVersion; create-on-update goes
/// through GuaranteedUpdate, which just drops it.
fn finish_create(
    store: &mut Store,
    kind: Kind,
    k: &str,
    mut obj: Value,
    dry_run: bool,
    post: bool,
) -> Result<Value> {
    let rv = meta_str(&obj, "resourceVersion").to_string();
    for f in [
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    ] {
        set_meta(&mut obj, f, Value::Null);
    }
    set_meta(&mut obj, "uid", json!(new_uid()));
    set_meta(&mut obj, "creationTimestamp", json!(now_rfc3339()));
    let name = meta_str(&obj, "name").to_string();
    let errs = rbac::validate(kind, &obj);
    if !errs.is_empty() {
        return Err(ApiError::invalid(RBAC_GROUP, kind.name(), &name, &errs));
    }
    if post && !rv.is_empty() {
        // etcd3 store.Create refuses it with a plain error, which reaches the client as an
        // unclassified 500.
        return Err(ApiError::unclassified(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    if let Some(existing) = store.get(kind, k) {
        let deleting = existing["metadata"]["deletionTimestamp"].is_string();
        return Err(ApiError::already_exists(
            &kind.group_resource(),
            &name,
            deleting,
        ));
    }
    if dry_run {
        set_meta(&mut obj, "resourceVersion", Value::Null);
        return Ok(obj);
    }
    Ok(store.put(kind, k, obj))
}

/// The generic registry's update: escalation (for non-admins), optimistic lock, BeforeUpdate,
/// validation, delete-on-emptied-finalizers, no-op short-circuit, storage write.
#[allow(clippy::too_many_arguments)]
fn update(
    store: &mut Store,
    user: &User,
    kind: Kind,
    ns: Option<&str>,
    k: &str,
    mut obj: Value,
    old: &Value,
    dry_run: bool,
) -> Result<Value> {
    let gr = kind.group_resource();
    let name = meta_str(old, "name").to_string();
    escalation_check(store, user, kind, ns, &name, &obj, Some(old))?;
    let rv = meta_str(&obj, "resourceVersion").to_string();
    let old_rv = meta_str(old, "resourceVersion").to_string();
    if rv.is_empty() {
        set_meta(&mut obj, "resourceVersion", json!(old_rv));
    } else {
        let parsed: u64 = rv.parse().map_err(|_| {
            ApiError::unclassified(format!(
                "strconv.ParseUint: parsing {}: invalid syntax",
                go_quote(&rv)
            ))
        })?;
        if parsed.to_string() != old_rv {
            return Err(ApiError::stale(&gr, &name));
        }
    }
    // BeforeUpdate: system fields come from the stored object.
    if meta_str(&obj, "uid").is_empty() {
        set_meta(&mut obj, "uid", json!(meta_str(old, "uid")));
    }
    for f in [
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        set_meta(
            &mut obj,
            f,
            old["metadata"].get(f).cloned().unwrap_or(Value::Null),
        );
    }
    for f in ["managedFields", "selfLink"] {
        set_meta(&mut obj, f, Value::Null);
    }
    let errs = rbac::validate_update(kind, &obj, old);
    if !errs.is_empty() {
        return Err(ApiError::invalid(RBAC_GROUP, kind.name(), &name, &errs));
    }
    let no_finalizers = obj["metadata"]["finalizers"]
        .as_array()
        .is_none_or(|f| f.is_empty());
    if old["metadata"]["deletionTimestamp"].is_string() && no_finalizers {
        if !dry_run {
            store.delete(kind, k);
        }
        return Ok(obj);
    }
    if &obj == old || dry_run {
        // An update that changes nothing writes nothing: the resourceVersion stays.
        return Ok(obj);
    }
    Ok(store.put(kind, k, obj))
}

fn random_suffix() -> String {
    // names.SimpleNameGenerator: 5 characters without vowels or look-alikes.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode_like_go() {
        let q = parse_query("labelSelector=app%20in%20%28x%2Cy%29&limit=2&x=a+b&bad=%zz");
        assert_eq!(q["labelSelector"], "app in (x,y)");
        assert_eq!(q["x"], "a b");
        assert_eq!(q["bad"], "%zz");
    }
}
