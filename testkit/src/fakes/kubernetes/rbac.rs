//! What the API server does to an RBAC object between the wire and etcd: decode into the typed
//! struct (unknown fields dropped, wrong JSON types refused), default, re-encode the way Go does
//! (`omitempty`, `rules: null`), validate (pkg/apis/rbac/validation), and the escalation rules of
//! the RBAC docs (`bind`/`escalate`, "permissions not currently held").

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::Kind;
use super::status::{FieldError, RBAC_GROUP, go_quote, go_quote_list};

/// How Go's encoder treats a zero value of the field.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Omit {
    /// `omitempty`: "", 0, false, empty list/map and null are dropped.
    Empty,
    /// A pointer: dropped only when nil.
    Nil,
    /// No `omitempty`: always encoded, as the zero value when absent.
    Never,
}

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    Time,
    StrList,
    StrMap,
    Obj(&'static Struct),
    List(&'static Struct),
    /// Kept verbatim (but see `managedFields`, dropped on write).
    Any,
}

struct Struct {
    go: &'static str,
    fields: &'static [(&'static str, Ty, Omit)],
}

static OWNER_REF: Struct = Struct {
    go: "v1.OwnerReference",
    fields: &[
        ("apiVersion", Ty::Str, Omit::Never),
        ("kind", Ty::Str, Omit::Never),
        ("name", Ty::Str, Omit::Never),
        ("uid", Ty::Str, Omit::Never),
        ("controller", Ty::Bool, Omit::Nil),
        ("blockOwnerDeletion", Ty::Bool, Omit::Nil),
    ],
};

static OBJECT_META: Struct = Struct {
    go: "v1.ObjectMeta",
    fields: &[
        ("name", Ty::Str, Omit::Empty),
        ("generateName", Ty::Str, Omit::Empty),
        ("namespace", Ty::Str, Omit::Empty),
        ("selfLink", Ty::Str, Omit::Empty),
        ("uid", Ty::Str, Omit::Empty),
        ("resourceVersion", Ty::Str, Omit::Empty),
        ("generation", Ty::Int, Omit::Empty),
        ("creationTimestamp", Ty::Time, Omit::Empty),
        ("deletionTimestamp", Ty::Time, Omit::Nil),
        ("deletionGracePeriodSeconds", Ty::Int, Omit::Nil),
        ("labels", Ty::StrMap, Omit::Empty),
        ("annotations", Ty::StrMap, Omit::Empty),
        ("ownerReferences", Ty::List(&OWNER_REF), Omit::Empty),
        ("finalizers", Ty::StrList, Omit::Empty),
        ("managedFields", Ty::Any, Omit::Empty),
    ],
};

static POLICY_RULE: Struct = Struct {
    go: "v1.PolicyRule",
    fields: &[
        ("verbs", Ty::StrList, Omit::Never),
        ("apiGroups", Ty::StrList, Omit::Empty),
        ("resources", Ty::StrList, Omit::Empty),
        ("resourceNames", Ty::StrList, Omit::Empty),
        ("nonResourceURLs", Ty::StrList, Omit::Empty),
    ],
};

static SELECTOR_REQ: Struct = Struct {
    go: "v1.LabelSelectorRequirement",
    fields: &[
        ("key", Ty::Str, Omit::Never),
        ("operator", Ty::Str, Omit::Never),
        ("values", Ty::StrList, Omit::Empty),
    ],
};

static LABEL_SELECTOR: Struct = Struct {
    go: "v1.LabelSelector",
    fields: &[
        ("matchLabels", Ty::StrMap, Omit::Empty),
        ("matchExpressions", Ty::List(&SELECTOR_REQ), Omit::Empty),
    ],
};

static AGGREGATION_RULE: Struct = Struct {
    go: "v1.AggregationRule",
    fields: &[(
        "clusterRoleSelectors",
        Ty::List(&LABEL_SELECTOR),
        Omit::Empty,
    )],
};

static SUBJECT: Struct = Struct {
    go: "v1.Subject",
    fields: &[
        ("kind", Ty::Str, Omit::Never),
        ("apiGroup", Ty::Str, Omit::Empty),
        ("name", Ty::Str, Omit::Never),
        ("namespace", Ty::Str, Omit::Empty),
    ],
};

static ROLE_REF: Struct = Struct {
    go: "v1.RoleRef",
    fields: &[
        ("apiGroup", Ty::Str, Omit::Never),
        ("kind", Ty::Str, Omit::Never),
        ("name", Ty::Str, Omit::Never),
    ],
};

static CLUSTER_ROLE: Struct = Struct {
    go: "ClusterRole",
    fields: &[
        ("kind", Ty::Str, Omit::Empty),
        ("apiVersion", Ty::Str, Omit::Empty),
        ("metadata", Ty::Obj(&OBJECT_META), Omit::Never),
        ("rules", Ty::List(&POLICY_RULE), Omit::Never),
        ("aggregationRule", Ty::Obj(&AGGREGATION_RULE), Omit::Nil),
    ],
};

static ROLE: Struct = Struct {
    go: "Role",
    fields: &[
        ("kind", Ty::Str, Omit::Empty),
        ("apiVersion", Ty::Str, Omit::Empty),
        ("metadata", Ty::Obj(&OBJECT_META), Omit::Never),
        ("rules", Ty::List(&POLICY_RULE), Omit::Never),
    ],
};

static CLUSTER_ROLE_BINDING: Struct = Struct {
    go: "ClusterRoleBinding",
    fields: &[
        ("kind", Ty::Str, Omit::Empty),
        ("apiVersion", Ty::Str, Omit::Empty),
        ("metadata", Ty::Obj(&OBJECT_META), Omit::Never),
        ("subjects", Ty::List(&SUBJECT), Omit::Empty),
        ("roleRef", Ty::Obj(&ROLE_REF), Omit::Never),
    ],
};

static ROLE_BINDING: Struct = Struct {
    go: "RoleBinding",
    fields: &[
        ("kind", Ty::Str, Omit::Empty),
        ("apiVersion", Ty::Str, Omit::Empty),
        ("metadata", Ty::Obj(&OBJECT_META), Omit::Never),
        ("subjects", Ty::List(&SUBJECT), Omit::Empty),
        ("roleRef", Ty::Obj(&ROLE_REF), Omit::Never),
    ],
};

fn schema(kind: Kind) -> &'static Struct {
    match kind {
        Kind::ClusterRole => &CLUSTER_ROLE,
        Kind::ClusterRoleBinding => &CLUSTER_ROLE_BINDING,
        Kind::Role => &ROLE,
        Kind::RoleBinding => &ROLE_BINDING,
    }
}

/// Why a body could not be decoded into the typed object.
pub(crate) enum DecodeError {
    /// A JSON value of the wrong type (Go's `json: cannot unmarshal ...`).
    Type(String),
}

/// Decodes `body` as the typed `kind` and re-encodes it as Go would. Unknown fields are dropped
/// and reported (the caller decides, per `fieldValidation`, whether that is an error).
pub(crate) fn decode(kind: Kind, body: &Value) -> Result<(Value, Vec<String>), DecodeError> {
    let mut unknown = Vec::new();
    let out = decode_struct(schema(kind), body, "", kind.name(), &mut unknown)?;
    // Go reports them in document order; serde_json's map has lost it, so sort.
    unknown.sort();
    Ok((out, unknown))
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn go_type(ty: Ty) -> String {
    match ty {
        Ty::Str => "string".into(),
        Ty::Int => "int64".into(),
        Ty::Bool => "bool".into(),
        Ty::Time => "v1.Time".into(),
        Ty::StrList => "[]string".into(),
        Ty::StrMap => "map[string]string".into(),
        Ty::Obj(s) => s.go.into(),
        Ty::List(s) => format!("[]{}", s.go),
        Ty::Any => "interface {}".into(),
    }
}

fn type_error(top: &str, dotted: &str, v: &Value, ty: Ty) -> DecodeError {
    DecodeError::Type(format!(
        "json: cannot unmarshal {} into Go struct field {top}.{dotted} of type {}",
        json_type(v),
        go_type(ty)
    ))
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn decode_struct(
    s: &'static Struct,
    v: &Value,
    path: &str,
    top: &str,
    unknown: &mut Vec<String>,
) -> Result<Value, DecodeError> {
    let empty = Map::new();
    let obj = match v {
        Value::Object(m) => m,
        Value::Null => &empty,
        other => return Err(type_error(top, path, other, Ty::Obj(s))),
    };
    for k in obj.keys() {
        if !s.fields.iter().any(|(name, _, _)| name == k) {
            unknown.push(join(path, k));
        }
    }
    let mut out = Map::new();
    for (name, ty, omit) in s.fields {
        let fpath = join(path, name);
        let val = match obj.get(*name) {
            None | Some(Value::Null) => None,
            Some(raw) => Some(decode_value(*ty, raw, &fpath, top, unknown)?),
        };
        let keep = match (omit, &val) {
            (Omit::Never, None) => Some(zero(*ty)),
            // etcd holds protobuf, where an empty list is nil: it reads back as null.
            (Omit::Never, Some(Value::Array(a))) if a.is_empty() => Some(Value::Null),
            (Omit::Never, Some(v)) => Some(v.clone()),
            (Omit::Nil, v) => v.clone(),
            (Omit::Empty, Some(v)) if !is_zero(v) => Some(v.clone()),
            (Omit::Empty, _) => None,
        };
        if let Some(v) = keep {
            out.insert((*name).to_string(), v);
        }
    }
    Ok(Value::Object(out))
}

fn decode_value(
    ty: Ty,
    v: &Value,
    path: &str,
    top: &str,
    unknown: &mut Vec<String>,
) -> Result<Value, DecodeError> {
    let dotted = strip_indices(path);
    match (ty, v) {
        (Ty::Str, Value::String(_)) | (Ty::Bool, Value::Bool(_)) | (Ty::Any, _) => Ok(v.clone()),
        (Ty::Int, Value::Number(n)) if n.is_i64() => Ok(v.clone()),
        (Ty::Time, Value::String(s)) => {
            if chrono::DateTime::parse_from_rfc3339(s).is_ok() {
                Ok(v.clone())
            } else {
                Err(DecodeError::Type(format!(
                    "parsing time {} as \"2006-01-02T15:04:05Z07:00\": cannot parse {} as \"2006\"",
                    go_quote(s),
                    go_quote(s)
                )))
            }
        }
        (Ty::StrList, Value::Array(items)) => {
            for it in items {
                if !it.is_string() {
                    return Err(type_error(top, &dotted, it, Ty::Str));
                }
            }
            Ok(v.clone())
        }
        (Ty::StrMap, Value::Object(m)) => {
            for it in m.values() {
                if !it.is_string() {
                    return Err(type_error(top, &dotted, it, Ty::Str));
                }
            }
            Ok(v.clone())
        }
        (Ty::Obj(s), Value::Object(_)) => decode_struct(s, v, path, top, unknown),
        (Ty::List(s), Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, it) in items.iter().enumerate() {
                out.push(decode_struct(s, it, &format!("{path}[{i}]"), top, unknown)?);
            }
            Ok(Value::Array(out))
        }
        (ty, other) => Err(type_error(top, &dotted, other, ty)),
    }
}

fn strip_indices(path: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

fn zero(ty: Ty) -> Value {
    match ty {
        Ty::Str => json!(""),
        Ty::Int => json!(0),
        Ty::Bool => json!(false),
        Ty::Obj(s) => {
            let mut m = Map::new();
            for (name, ty, omit) in s.fields {
                if *omit == Omit::Never {
                    m.insert((*name).to_string(), zero(*ty));
                }
            }
            Value::Object(m)
        }
        // A nil slice, map or time encodes as null.
        _ => Value::Null,
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
    }
}

/// `SetDefaults_*` of pkg/apis/rbac/v1: roleRef.apiGroup, and subjects' apiGroup by kind.
pub(crate) fn apply_defaults(kind: Kind, obj: &mut Value) {
    if !kind.is_binding() {
        return;
    }
    if obj["roleRef"]["apiGroup"].as_str().unwrap_or("").is_empty() {
        obj["roleRef"]["apiGroup"] = json!(RBAC_GROUP);
    }
    if let Some(subjects) = obj.get_mut("subjects").and_then(Value::as_array_mut) {
        for s in subjects {
            let group = s.get("apiGroup").and_then(Value::as_str).unwrap_or("");
            let kind = s.get("kind").and_then(Value::as_str).unwrap_or("");
            if group.is_empty() && (kind == "User" || kind == "Group") {
                s["apiGroup"] = json!(RBAC_GROUP);
            }
        }
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn strs(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `path.IsValidPathSegmentName`: the only rule RBAC applies to names (so "system:admin" and
/// "Upper_Case" are valid; "a/b" and ".." are not).
pub(crate) fn path_segment_errors(name: &str) -> Vec<String> {
    if name == "." || name == ".." {
        return vec![format!("may not be '{name}'")];
    }
    let mut errs = Vec::new();
    for bad in ["/", "%"] {
        if name.contains(bad) {
            errs.push(format!("may not contain '{bad}'"));
        }
    }
    errs
}

const QUALIFIED_NAME_FMT: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_FMT: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const DNS1123_SUBDOMAIN_FMT: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_FMT: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn alnum_edges(s: &str, inner: impl Fn(char) -> bool) -> bool {
    let first = s.chars().next();
    let last = s.chars().last();
    first.is_some_and(|c| c.is_ascii_alphanumeric())
        && last.is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || inner(c))
}

pub(crate) fn dns1123_subdomain_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    let ok = !s.is_empty()
        && s.split('.').all(|part| {
            !part.is_empty()
                && alnum_edges(part, |c| c == '-')
                && !part.chars().any(|c| c.is_ascii_uppercase())
        });
    if !ok {
        errs.push(DNS1123_SUBDOMAIN_FMT.to_string());
    }
    errs
}

pub(crate) fn dns1123_label_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !(!s.is_empty()
        && alnum_edges(s, |c| c == '-')
        && !s.chars().any(|c| c.is_ascii_uppercase()))
    {
        errs.push(DNS1123_LABEL_FMT.to_string());
    }
    errs
}

/// `IsQualifiedName` (label and annotation keys), joined with "; " as the selector parser does.
pub(crate) fn label_key_errors(key: &str) -> Option<String> {
    let errs = qualified_name_errors(key);
    (!errs.is_empty()).then(|| errs.join("; "))
}

fn qualified_name_errors(key: &str) -> Vec<String> {
    let parts: Vec<&str> = key.split('/').collect();
    let (prefix, name) = match parts.as_slice() {
        [name] => (None, *name),
        [prefix, name] => (Some(*prefix), *name),
        _ => {
            return vec![format!(
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )];
        }
    };
    let mut errs = Vec::new();
    if let Some(p) = prefix {
        if p.is_empty() {
            errs.push("prefix part must be non-empty".to_string());
        } else {
            for e in dns1123_subdomain_errors(p) {
                errs.push(format!("prefix part {e}"));
            }
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else {
        if name.len() > 63 {
            errs.push("name part must be no more than 63 characters".to_string());
        }
        if !alnum_edges(name, |c| matches!(c, '-' | '_' | '.')) {
            errs.push(QUALIFIED_NAME_FMT.to_string());
        }
    }
    errs
}

/// `IsValidLabelValue`, joined with "; ".
pub(crate) fn label_value_errors(v: &str) -> Option<String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !v.is_empty() && !alnum_edges(v, |c| matches!(c, '-' | '_' | '.')) {
        errs.push(LABEL_VALUE_FMT.to_string());
    }
    (!errs.is_empty()).then(|| errs.join("; "))
}

pub(crate) fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn validate_meta(obj: &Value, errs: &mut Vec<FieldError>) {
    let meta = &obj["metadata"];
    let name = str_of(meta, "name");
    let generate = str_of(meta, "generateName");
    if !generate.is_empty() {
        for e in path_segment_errors(generate) {
            errs.push(FieldError::invalid_str(
                "metadata.generateName",
                generate,
                &e,
            ));
        }
    }
    if name.is_empty() {
        if generate.is_empty() {
            errs.push(FieldError::required(
                "metadata.name",
                "name or generateName is required",
            ));
        }
    } else {
        for e in path_segment_errors(name) {
            errs.push(FieldError::invalid_str("metadata.name", name, &e));
        }
    }
    if let Some(labels) = meta["labels"].as_object() {
        for (k, v) in labels {
            for e in qualified_name_errors(k) {
                errs.push(FieldError::invalid_str("metadata.labels", k, &e));
            }
            let v = v.as_str().unwrap_or("");
            if let Some(e) = label_value_errors(v) {
                errs.push(FieldError::invalid_str("metadata.labels", v, &e));
            }
        }
    }
    if let Some(annotations) = meta["annotations"].as_object() {
        for k in annotations.keys() {
            for e in qualified_name_errors(&k.to_lowercase()) {
                errs.push(FieldError::invalid_str("metadata.annotations", k, &e));
            }
        }
    }
    for (i, f) in strs(meta, "finalizers").iter().enumerate() {
        for e in qualified_name_errors(f) {
            errs.push(FieldError::invalid_str(
                &format!("metadata.finalizers[{i}]"),
                f,
                &e,
            ));
        }
    }
}

fn go_string_slice(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

fn validate_rule(rule: &Value, namespaced: bool, path: &str, errs: &mut Vec<FieldError>) {
    let verbs = strs(rule, "verbs");
    let groups = strs(rule, "apiGroups");
    let resources = strs(rule, "resources");
    let names = strs(rule, "resourceNames");
    let urls = strs(rule, "nonResourceURLs");
    if verbs.is_empty() {
        errs.push(FieldError::required(
            &format!("{path}.verbs"),
            "verbs must contain at least one value",
        ));
    }
    if !urls.is_empty() {
        if namespaced {
            errs.push(FieldError::invalid(
                &format!("{path}.nonResourceURLs"),
                go_string_slice(&urls),
                "namespaced rules cannot apply to non-resource URLs",
            ));
        }
        if !groups.is_empty() || !resources.is_empty() || !names.is_empty() {
            errs.push(FieldError::invalid(
                &format!("{path}.nonResourceURLs"),
                go_string_slice(&urls),
                "rules cannot apply to both regular resources and non-resource URLs",
            ));
        }
        return;
    }
    if groups.is_empty() {
        errs.push(FieldError::required(
            &format!("{path}.apiGroups"),
            "resource rules must supply at least one api group",
        ));
    }
    if resources.is_empty() {
        errs.push(FieldError::required(
            &format!("{path}.resources"),
            "resource rules must supply at least one resource",
        ));
    }
    if !names.is_empty() && resources.len() > 1 {
        errs.push(FieldError::required(
            &format!("{path}.resourceNames"),
            "resource names cannot apply to multiple resources",
        ));
    }
}

fn validate_subject(s: &Value, namespaced: bool, path: &str, errs: &mut Vec<FieldError>) {
    let name = str_of(s, "name");
    let group = str_of(s, "apiGroup");
    if name.is_empty() {
        errs.push(FieldError::required(&format!("{path}.name"), ""));
    }
    match str_of(s, "kind") {
        "ServiceAccount" => {
            if !name.is_empty() {
                for e in dns1123_subdomain_errors(name) {
                    errs.push(FieldError::invalid_str(&format!("{path}.name"), name, &e));
                }
            }
            if !group.is_empty() {
                errs.push(FieldError::not_supported(
                    &format!("{path}.apiGroup"),
                    group,
                    &[""],
                ));
            }
            if !namespaced && str_of(s, "namespace").is_empty() {
                errs.push(FieldError::required(&format!("{path}.namespace"), ""));
            }
        }
        kind @ ("User" | "Group") => {
            if name.is_empty() {
                let what = if kind == "User" { "user" } else { "group" };
                errs.push(FieldError::invalid_str(
                    &format!("{path}.name"),
                    name,
                    &format!("{what} name cannot be empty"),
                ));
            }
            if group != RBAC_GROUP {
                errs.push(FieldError::not_supported(
                    &format!("{path}.apiGroup"),
                    group,
                    &[RBAC_GROUP],
                ));
            }
        }
        other => errs.push(FieldError::not_supported(
            &format!("{path}.kind"),
            other,
            &["ServiceAccount", "User", "Group"],
        )),
    }
}

/// The strategy's `Validate` for a new object (ValidateRole, ValidateClusterRoleBinding, ...).
pub(crate) fn validate(kind: Kind, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_meta(obj, &mut errs);
    let namespaced = kind.namespaced();
    if kind.is_binding() {
        let rr = &obj["roleRef"];
        let group = str_of(rr, "apiGroup");
        if group != RBAC_GROUP {
            errs.push(FieldError::not_supported(
                "roleRef.apiGroup",
                group,
                &[RBAC_GROUP],
            ));
        }
        let rk = str_of(rr, "kind");
        let allowed: &[&str] = if namespaced {
            &["Role", "ClusterRole"]
        } else {
            &["ClusterRole"]
        };
        if !allowed.contains(&rk) {
            errs.push(FieldError::not_supported("roleRef.kind", rk, allowed));
        }
        let rn = str_of(rr, "name");
        if rn.is_empty() {
            errs.push(FieldError::required("roleRef.name", ""));
        } else {
            for e in path_segment_errors(rn) {
                errs.push(FieldError::invalid_str("roleRef.name", rn, &e));
            }
        }
        if let Some(subjects) = obj["subjects"].as_array() {
            for (i, s) in subjects.iter().enumerate() {
                validate_subject(s, namespaced, &format!("subjects[{i}]"), &mut errs);
            }
        }
    } else if let Some(rules) = obj["rules"].as_array() {
        for (i, r) in rules.iter().enumerate() {
            validate_rule(r, namespaced, &format!("rules[{i}]"), &mut errs);
        }
    }
    errs
}

/// `ValidateXUpdate`: everything `validate` checks, the immutable metadata, and for bindings
/// the immutable roleRef (the reason the docs tell you to delete and recreate a binding).
pub(crate) fn validate_update(kind: Kind, new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = validate(kind, new);
    for (field, label) in [("uid", "metadata.uid"), ("name", "metadata.name")] {
        let (n, o) = (
            str_of(&new["metadata"], field),
            str_of(&old["metadata"], field),
        );
        if n != o {
            errs.push(FieldError::invalid_str(label, n, "field is immutable"));
        }
    }
    if new["metadata"]["deletionTimestamp"].is_string() {
        let old_f = strs(&old["metadata"], "finalizers");
        let added: Vec<String> = strs(&new["metadata"], "finalizers")
            .into_iter()
            .filter(|f| !old_f.contains(f))
            .collect();
        if !added.is_empty() {
            errs.push(FieldError::forbidden(
                "metadata.finalizers",
                &format!(
                    "no new finalizers can be added if the object is being deleted, found new finalizers {}",
                    go_string_slice(&added)
                ),
            ));
        }
    }
    if kind.is_binding() && new["roleRef"] != old["roleRef"] {
        let rr = &new["roleRef"];
        errs.push(FieldError::invalid(
            "roleRef",
            format!(
                "rbac.RoleRef{{APIGroup:{}, Kind:{}, Name:{}}}",
                go_quote(str_of(rr, "apiGroup")),
                go_quote(str_of(rr, "kind")),
                go_quote(str_of(rr, "name"))
            ),
            "cannot change roleRef",
        ));
    }
    errs
}

/// One RBAC rule, for coverage checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rule {
    pub verbs: Vec<String>,
    pub groups: Vec<String>,
    pub resources: Vec<String>,
    pub names: Vec<String>,
    pub urls: Vec<String>,
}

impl Rule {
    pub fn of(v: &Value) -> Self {
        Self {
            verbs: strs(v, "verbs"),
            groups: strs(v, "apiGroups"),
            resources: strs(v, "resources"),
            names: strs(v, "resourceNames"),
            urls: strs(v, "nonResourceURLs"),
        }
    }

    pub fn resource(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Self {
        let own = |a: &[&str]| a.iter().map(|s| s.to_string()).collect();
        Self {
            verbs: own(verbs),
            groups: own(groups),
            resources: own(resources),
            ..Self::default()
        }
    }

    pub fn urls(urls: &[&str], verbs: &[&str]) -> Self {
        let own = |a: &[&str]| a.iter().map(|s| s.to_string()).collect();
        Self {
            verbs: own(verbs),
            urls: own(urls),
            ..Self::default()
        }
    }

    /// `rbacv1helpers.CompactString`, as escalation errors print missing rules.
    fn compact_string(&self) -> String {
        let mut parts = Vec::new();
        for (label, items) in [
            ("APIGroups", &self.groups),
            ("Resources", &self.resources),
            ("NonResourceURLs", &self.urls),
            ("ResourceNames", &self.names),
            ("Verbs", &self.verbs),
        ] {
            if !items.is_empty() {
                parts.push(format!("{label}:{}", go_quote_list(items)));
            }
        }
        format!("{{{}}}", parts.join(", "))
    }
}

/// `BreakdownRule`: one rule per (group, resource, verb[, name]) and per (url, verb).
fn breakdown(r: &Rule) -> Vec<Rule> {
    let mut out = Vec::new();
    for g in &r.groups {
        for res in &r.resources {
            for v in &r.verbs {
                let base = Rule {
                    verbs: vec![v.clone()],
                    groups: vec![g.clone()],
                    resources: vec![res.clone()],
                    ..Rule::default()
                };
                if r.names.is_empty() {
                    out.push(base);
                } else {
                    for n in &r.names {
                        out.push(Rule {
                            names: vec![n.clone()],
                            ..base.clone()
                        });
                    }
                }
            }
        }
    }
    for u in &r.urls {
        for v in &r.verbs {
            out.push(Rule {
                verbs: vec![v.clone()],
                urls: vec![u.clone()],
                ..Rule::default()
            });
        }
    }
    out
}

fn has_all(set: &[String], want: &[String]) -> bool {
    want.iter().all(|w| set.contains(w))
}

fn resource_covers(owner: &[String], want: &[String]) -> bool {
    if owner.iter().any(|o| o == "*") {
        return true;
    }
    want.iter().all(|w| {
        owner.contains(w)
            || w.split_once('/').is_some_and(|(res, sub)| {
                owner.contains(&format!("{res}/*")) || owner.contains(&format!("*/{sub}"))
            })
    })
}

fn url_covers(owner: &[String], want: &[String]) -> bool {
    want.iter().all(|w| {
        owner
            .iter()
            .any(|o| o == w || o == "*" || o.strip_suffix('*').is_some_and(|p| w.starts_with(p)))
    })
}

fn rule_covers(owner: &Rule, sub: &Rule) -> bool {
    let verbs = owner.verbs.iter().any(|v| v == "*") || has_all(&owner.verbs, &sub.verbs);
    let groups = owner.groups.iter().any(|g| g == "*") || has_all(&owner.groups, &sub.groups);
    let names = if sub.names.is_empty() {
        owner.names.is_empty()
    } else {
        owner.names.is_empty() || has_all(&owner.names, &sub.names)
    };
    verbs
        && groups
        && resource_covers(&owner.resources, &sub.resources)
        && names
        && url_covers(&owner.urls, &sub.urls)
}

/// `ConfirmNoEscalation`: `None` when `held` covers `wanted`, else the error text naming the
/// missing rules (compacted per group/resource, sorted).
pub(crate) fn escalation(
    user: &str,
    groups: &[String],
    held: &[Rule],
    wanted: &[Rule],
) -> Option<String> {
    let missing: Vec<Rule> = wanted
        .iter()
        .flat_map(breakdown)
        .filter(|sub| !held.iter().any(|h| rule_covers(h, sub)))
        .collect();
    if missing.is_empty() {
        return None;
    }
    // CompactRules: simple resource rules with the same group and resource share one verb list.
    let mut compact: Vec<Rule> = Vec::new();
    for m in missing {
        let simple = m.names.is_empty() && m.urls.is_empty();
        match compact.iter_mut().find(|c| {
            simple
                && c.names.is_empty()
                && c.urls.is_empty()
                && c.groups == m.groups
                && c.resources == m.resources
        }) {
            Some(c) => {
                for v in m.verbs {
                    if !c.verbs.contains(&v) {
                        c.verbs.push(v);
                    }
                }
            }
            None => compact.push(m),
        }
    }
    let mut lines: Vec<String> = compact.iter().map(Rule::compact_string).collect();
    lines.sort();
    lines.dedup();
    Some(format!(
        "user {} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        go_quote(user),
        go_quote_list(groups),
        lines.join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_drops_unknown_fields_and_encodes_like_go() {
        let body = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "r", "labels": {}, "bogus": 1},
            "rules": [], "spec": {}
        });
        let (out, unknown) = decode(Kind::Role, &body).unwrap_or_else(|_| panic!("decodes"));
        assert_eq!(
            unknown,
            vec!["metadata.bogus".to_string(), "spec".to_string()]
        );
        assert_eq!(
            out["rules"],
            Value::Null,
            "an empty rule list is stored as nil"
        );
        assert!(out["metadata"].get("labels").is_none());
    }

    #[test]
    fn a_wrong_json_type_is_a_decode_error() {
        let body = json!({"metadata": {"name": "b"}, "subjects": "x", "roleRef": {}});
        match decode(Kind::RoleBinding, &body) {
            Err(DecodeError::Type(msg)) => assert_eq!(
                msg,
                "json: cannot unmarshal string into Go struct field RoleBinding.subjects of type []v1.Subject"
            ),
            _ => panic!("expected a type error"),
        }
    }

    #[test]
    fn a_holder_of_the_rules_needs_no_bind() {
        let held = vec![Rule::resource(&[""], &["configmaps"], &["get", "list"])];
        let wanted = vec![Rule::resource(&[""], &["configmaps"], &["get"])];
        assert!(escalation("u", &[], &held, &wanted).is_none());
        let wanted = vec![Rule::resource(&["", "apps"], &["pods"], &["get", "delete"])];
        let msg = escalation("u", &["system:authenticated".into()], &held, &wanted).unwrap();
        assert_eq!(
            msg,
            "user \"u\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n\
             {APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"get\" \"delete\"]}\n\
             {APIGroups:[\"apps\"], Resources:[\"pods\"], Verbs:[\"get\" \"delete\"]}"
        );
    }
}
