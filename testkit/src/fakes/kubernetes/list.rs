//! Lists as etcd3's GetList serves them: one consistent read at a revision, paged by key with
//! an opaque continue token that carries the revision, selectors applied while paging.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Map, Value, json};

use super::Kind;
use super::api::{as_item, meta_str};
use super::discovery::RBAC_V1;
use super::rbac;
use super::selector::{FieldSelector, LabelSelector};
use super::status::{ApiError, FieldError, go_quote};
use super::store::Store;

type Result<T> = std::result::Result<T, ApiError>;

struct ListOpts {
    label: LabelSelector,
    field: FieldSelector,
    limit: usize,
    cont: Option<String>,
    rv: Option<String>,
    rv_match: Option<String>,
}

fn list_opts(q: &BTreeMap<String, String>) -> Result<ListOpts> {
    let label = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let field = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let limit = match q.get("limit").map(String::as_str) {
        None | Some("") => 0,
        Some(s) => {
            let n: i64 = s.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "strconv.ParseInt: parsing {}: invalid syntax",
                    go_quote(s)
                ))
            })?;
            usize::try_from(n).unwrap_or(0)
        }
    };
    let non_empty = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
    let opts = ListOpts {
        label,
        field,
        limit,
        cont: non_empty("continue"),
        rv: non_empty("resourceVersion"),
        rv_match: non_empty("resourceVersionMatch"),
    };
    if let Some(m) = &opts.rv_match {
        let mut errs = Vec::new();
        if opts.rv.is_none() {
            errs.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        } else if m != "Exact" && m != "NotOlderThan" {
            errs.push(FieldError::not_supported(
                "resourceVersionMatch",
                m,
                &["Exact", "NotOlderThan", ""],
            ));
        }
        if !errs.is_empty() {
            return Err(ApiError::invalid("meta.k8s.io", "ListOptions", "", &errs));
        }
    }
    Ok(opts)
}

fn encode_continue(start: &str, rv: i64) -> String {
    // Field order of Go's continueToken struct, so tokens look like the real server's.
    let token = format!(
        r#"{{"v":"meta.k8s.io/v1","rv":{rv},"start":{}}}"#,
        Value::String(start.to_string())
    );
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
}

/// `storage.DecodeContinue`: the start key relative to the list's prefix, and the revision.
fn decode_continue(token: &str) -> std::result::Result<(String, i64), String> {
    let invalid = "continue key is not valid";
    let data = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|e| format!("{invalid}: {e}"))?;
    let v: Value = serde_json::from_slice(&data).map_err(|e| format!("{invalid}: {e}"))?;
    let version = v["v"].as_str().unwrap_or("");
    if version != "meta.k8s.io/v1" {
        return Err(format!(
            "{invalid}: server does not recognize this encoded version {version}"
        ));
    }
    let rv = v["rv"].as_i64().unwrap_or(0);
    if rv == 0 {
        return Err(format!(
            "{invalid}: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
        ));
    }
    let start = v["start"].as_str().unwrap_or("");
    if start.is_empty() {
        return Err(format!(
            "{invalid}: encoded start key empty (version meta.k8s.io/v1)"
        ));
    }
    // Guards against path traversal out of the list's prefix, like path.Clean in the server.
    let rooted = if start.starts_with('/') {
        start.to_string()
    } else {
        format!("/{start}")
    };
    if clean_path(&rooted) != rooted {
        return Err(format!("{invalid}: {start}"));
    }
    Ok((rooted[1..].to_string(), rv))
}

/// Go's `path.Clean` for rooted paths.
fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

const TOO_OLD_LIST: &str = "The resourceVersion for the provided list is too old.";
const INCONSISTENT_CONTINUE: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

fn too_large(want: u64, current: u64) -> ApiError {
    ApiError::timeout(
        &format!("Too large resource version: {want}, current: {current}"),
        1,
        Some(("ResourceVersionTooLarge", "Too large resource version")),
    )
}

/// etcd3's GetList: a consistent read at one revision, paged by key, `continue` carrying that
/// revision and the next key, `remainingItemCount` only when nothing is filtered.
pub(crate) fn list(
    store: &Store,
    kind: Kind,
    ns: Option<&str>,
    q: &BTreeMap<String, String>,
) -> Result<Value> {
    let o = list_opts(q)?;
    let prefix = match ns {
        Some(ns) => format!("{ns}/"),
        None => String::new(),
    };
    let current = store.current_rv();
    let mut at = current;
    let mut start = String::new();
    if let Some(token) = &o.cont {
        let (rel, crv) = decode_continue(token)
            .map_err(|e| ApiError::bad_request(format!("invalid continue token: {e}")))?;
        if o.rv.as_deref().is_some_and(|rv| rv != "0") {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        if crv > 0 {
            let crv = crv as u64;
            if crv < store.compacted_rv() {
                return Err(ApiError::expired(
                    INCONSISTENT_CONTINUE,
                    Some(encode_continue(&rel, -1)),
                ));
            }
            at = crv.min(current);
        }
        start = format!("{prefix}{rel}");
    } else if let Some(rv) = &o.rv {
        let want: u64 = rv.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "invalid resource version: resourceVersion: Invalid value: {}: strconv.ParseUint: parsing {}: invalid syntax",
                go_quote(rv),
                go_quote(rv)
            ))
        })?;
        let exact = match o.rv_match.as_deref() {
            Some("Exact") => true,
            Some(_) => false,
            None => o.limit > 0 && want > 0,
        };
        if want > current {
            return Err(too_large(want, current));
        }
        if exact {
            if want < store.compacted_rv() {
                return Err(ApiError::expired(TOO_OLD_LIST, None));
            }
            at = want;
        }
    }
    let entries = store.scan(kind, &prefix, &start, at);
    let filtered = !o.label.is_empty() || !o.field.is_empty();
    let mut items = Vec::new();
    let mut last_key = "";
    let mut has_more = false;
    for (k, obj) in &entries {
        if o.limit > 0 && items.len() >= o.limit {
            has_more = true;
            break;
        }
        last_key = k;
        let name = meta_str(obj, "name");
        let obj_ns = meta_str(obj, "namespace");
        if o.label.matches(&rbac::labels_of(obj)) && o.field.matches(name, obj_ns) {
            items.push(as_item(obj));
        }
    }
    let mut metadata = Map::new();
    metadata.insert("resourceVersion".into(), json!(at.to_string()));
    if has_more {
        let rel = last_key.strip_prefix(prefix.as_str()).unwrap_or(last_key);
        metadata.insert(
            "continue".into(),
            json!(encode_continue(&format!("{rel}\u{0}"), at as i64)),
        );
        if !filtered {
            metadata.insert(
                "remainingItemCount".into(),
                json!(entries.len() as i64 - o.limit as i64),
            );
        }
    }
    Ok(json!({
        "kind": kind.list_kind(), "apiVersion": RBAC_V1,
        "metadata": Value::Object(metadata), "items": items
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::kubernetes::store::key;

    fn seeded(n: usize) -> Store {
        let mut s = Store::new();
        for i in 0..n {
            let name = format!("b{i}");
            let labels = if i % 2 == 0 {
                json!({"app": "x"})
            } else {
                json!({"app": "y"})
            };
            s.put(
                Kind::RoleBinding,
                &key(Some("ns"), &name),
                json!({"kind": "RoleBinding", "metadata": {"name": name, "namespace": "ns", "labels": labels}}),
            );
        }
        s
    }

    fn q(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn names(list: &Value) -> Vec<String> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn paging_continues_at_the_first_pages_revision() {
        let mut s = seeded(3);
        let p1 = list(&s, Kind::RoleBinding, Some("ns"), &q(&[("limit", "2")])).unwrap();
        assert_eq!(names(&p1), ["b0", "b1"]);
        assert_eq!(p1["metadata"]["remainingItemCount"], 1);
        assert!(
            p1["items"][0].get("kind").is_none(),
            "list items carry no kind"
        );
        // Changes after the first page are invisible to its continuation.
        s.delete(Kind::RoleBinding, "ns/b2");
        s.put(
            Kind::RoleBinding,
            "ns/b3",
            json!({"metadata": {"name": "b3", "namespace": "ns"}}),
        );
        let token = p1["metadata"]["continue"].as_str().unwrap();
        let p2 = list(
            &s,
            Kind::RoleBinding,
            Some("ns"),
            &q(&[("limit", "2"), ("continue", token)]),
        )
        .unwrap();
        assert_eq!(names(&p2), ["b2"]);
        assert_eq!(
            p2["metadata"]["resourceVersion"],
            p1["metadata"]["resourceVersion"]
        );
        assert!(p2["metadata"].get("continue").is_none());
    }

    #[test]
    fn selected_pages_omit_the_remaining_count() {
        let s = seeded(5);
        let p1 = list(
            &s,
            Kind::RoleBinding,
            None,
            &q(&[("limit", "2"), ("labelSelector", "app=x")]),
        )
        .unwrap();
        assert_eq!(names(&p1), ["b0", "b2"]);
        assert!(p1["metadata"].get("remainingItemCount").is_none());
        let token = p1["metadata"]["continue"].as_str().unwrap();
        let p2 = list(
            &s,
            Kind::RoleBinding,
            None,
            &q(&[
                ("limit", "2"),
                ("labelSelector", "app=x"),
                ("continue", token),
            ]),
        )
        .unwrap();
        assert_eq!(names(&p2), ["b4"]);
    }

    #[test]
    fn bad_and_compacted_continue_tokens_are_refused() {
        let mut s = seeded(3);
        let e = list(&s, Kind::RoleBinding, Some("ns"), &q(&[("continue", "!!")])).unwrap_err();
        assert_eq!((e.code, e.reason), (400, Some("BadRequest")));
        assert!(
            e.message
                .starts_with("invalid continue token: continue key is not valid")
        );
        let p1 = list(&s, Kind::RoleBinding, Some("ns"), &q(&[("limit", "1")])).unwrap();
        let token = p1["metadata"]["continue"].as_str().unwrap().to_string();
        s.put(
            Kind::RoleBinding,
            "ns/b9",
            json!({"metadata": {"name": "b9"}}),
        );
        s.compact();
        let e = list(
            &s,
            Kind::RoleBinding,
            Some("ns"),
            &q(&[("continue", &token)]),
        )
        .unwrap_err();
        assert_eq!((e.code, e.reason), (410, Some("Expired")));
        let fresh = e
            .list_continue
            .expect("an inconsistent continuation is offered");
        let rest = list(
            &s,
            Kind::RoleBinding,
            Some("ns"),
            &q(&[("continue", &fresh)]),
        )
        .unwrap();
        assert_eq!(names(&rest), ["b1", "b2", "b9"]);
    }
}
