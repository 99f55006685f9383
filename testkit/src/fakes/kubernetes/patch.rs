//! The three patch types the API server accepts for built-in kinds, applied to the stored JSON.
//!
//! Strategic merge patch is JSON merge patch plus the patch strategies of the Go types; for
//! RBAC kinds no list field has one (rules and subjects are replaced whole), so only
//! `metadata.finalizers` (merged as a set) and `metadata.ownerReferences` (merged by uid) and
//! the `$patch`/`$deleteFromPrimitiveList`/`$setElementOrder`/`$retainKeys` directives differ.

use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchType {
    Json,
    Merge,
    Strategic,
}

/// Why a patch could not be applied: `Decode` is a 400, `Apply` a 422 in the real server.
#[derive(Debug)]
pub(crate) enum PatchError {
    Decode(String),
    Apply(String),
}

pub(crate) fn apply(kind: PatchType, target: &Value, patch: &[u8]) -> Result<Value, PatchError> {
    let p: Value = serde_json::from_slice(patch).map_err(|e| PatchError::Decode(e.to_string()))?;
    match kind {
        PatchType::Merge => {
            if !p.is_object() {
                return Err(PatchError::Decode(
                    "json: cannot unmarshal array into Go value of type map[string]interface {}"
                        .into(),
                ));
            }
            Ok(merge(target, &p))
        }
        PatchType::Strategic => {
            if !p.is_object() {
                return Err(PatchError::Decode(
                    "json: cannot unmarshal array into Go value of type map[string]interface {}"
                        .into(),
                ));
            }
            Ok(strategic(target, &p, ""))
        }
        PatchType::Json => json_patch(target, &p),
    }
}

/// RFC 7386.
fn merge(target: &Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if v.is_null() {
            out.remove(k);
        } else {
            let merged = merge(out.get(k).unwrap_or(&Value::Null), v);
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

fn strategic(target: &Value, patch: &Value, path: &str) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Value::Null,
        Some("replace") => {
            let mut m = p.clone();
            m.remove("$patch");
            return Value::Object(m);
        }
        _ => {}
    }
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    if let Some(keep) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in p {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(have)), Some(drop)) = (out.get_mut(field), v.as_array()) {
                have.retain(|x| !drop.contains(x));
            }
            continue;
        }
        let here = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        if v.is_null() {
            out.remove(k);
            continue;
        }
        let merged = match (here.as_str(), out.get(k), v) {
            ("metadata.finalizers", Some(Value::Array(have)), Value::Array(add)) => {
                let mut all = have.clone();
                for a in add {
                    if !all.contains(a) {
                        all.push(a.clone());
                    }
                }
                Value::Array(all)
            }
            ("metadata.ownerReferences", Some(Value::Array(have)), Value::Array(add)) => {
                merge_by_uid(have, add)
            }
            (_, existing, v) if v.is_object() => {
                let merged = strategic(existing.unwrap_or(&Value::Null), v, &here);
                if merged.is_null() {
                    out.remove(k);
                    continue;
                }
                merged
            }
            _ => v.clone(),
        };
        out.insert(k.clone(), merged);
    }
    Value::Object(out)
}

fn merge_by_uid(have: &[Value], add: &[Value]) -> Value {
    let mut all: Vec<Value> = have.to_vec();
    for a in add {
        let uid = a.get("uid");
        let pos = all.iter().position(|x| x.get("uid") == uid);
        let delete = a.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                all.remove(i);
            }
            (Some(i), false) => all[i] = merge(&all[i], a),
            (None, false) => all.push(a.clone()),
            (None, true) => {}
        }
    }
    Value::Array(all)
}

/// RFC 6902 over RFC 6901 pointers.
fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops = patch.as_array().ok_or_else(|| {
        PatchError::Decode(
            "json: cannot unmarshal object into Go value of type jsonpatch.Patch".into(),
        )
    })?;
    let mut doc = target.clone();
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| PatchError::Apply(format!("missing path in operation {op}")))?;
        match name {
            "add" => {
                let v = op
                    .get("value")
                    .ok_or_else(|| PatchError::Apply("missing value".into()))?;
                add(&mut doc, path, v.clone())?;
            }
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                let v = op
                    .get("value")
                    .ok_or_else(|| PatchError::Apply("missing value".into()))?;
                remove(&mut doc, path)?;
                add(&mut doc, path, v.clone())?;
            }
            "move" | "copy" => {
                let from = op
                    .get("from")
                    .and_then(Value::as_str)
                    .ok_or_else(|| PatchError::Apply("missing from".into()))?;
                let v = doc.pointer(from).cloned().ok_or_else(|| {
                    PatchError::Apply(format!("from path {from:?} does not exist"))
                })?;
                if name == "move" {
                    remove(&mut doc, from)?;
                }
                add(&mut doc, path, v)?;
            }
            "test" => {
                let want = op.get("value").unwrap_or(&Value::Null);
                if doc.pointer(path) != Some(want) {
                    return Err(PatchError::Apply(format!(
                        "testing value {path} failed: test failed"
                    )));
                }
            }
            other => {
                return Err(PatchError::Apply(format!("Unexpected kind: {other}")));
            }
        }
    }
    Ok(doc)
}

fn split(path: &str) -> Result<(&str, String), PatchError> {
    let i = path
        .rfind('/')
        .ok_or_else(|| PatchError::Apply(format!("invalid path {path:?}")))?;
    let last = path[i + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..i], last))
}

fn add(doc: &mut Value, path: &str, v: Value) -> Result<(), PatchError> {
    if path.is_empty() {
        *doc = v;
        return Ok(());
    }
    let (parent, last) = split(path)?;
    let missing = || {
        PatchError::Apply(format!(
            "add operation does not apply: doc is missing path: {path:?}"
        ))
    };
    match doc.pointer_mut(parent).ok_or_else(missing)? {
        Value::Object(m) => {
            m.insert(last, v);
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(v);
            } else {
                let i: usize = last.parse().map_err(|_| missing())?;
                if i > a.len() {
                    return Err(missing());
                }
                a.insert(i, v);
            }
        }
        _ => return Err(missing()),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<(), PatchError> {
    let (parent, last) = split(path)?;
    let missing = || {
        PatchError::Apply(format!(
            "remove operation does not apply: doc is missing path: {path:?}"
        ))
    };
    match doc.pointer_mut(parent).ok_or_else(missing)? {
        Value::Object(m) => m.remove(&last).map(|_| ()).ok_or_else(missing),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| missing())?;
            if i >= a.len() {
                return Err(missing());
            }
            a.remove(i);
            Ok(())
        }
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_replaces_rbac_lists_but_merges_finalizers() {
        let target = json!({"metadata": {"name": "b", "finalizers": ["a/x"], "labels": {"k": "v"}},
                            "subjects": [{"kind": "User", "name": "u1"}]});
        let patch = br#"{"metadata": {"finalizers": ["a/y"], "labels": {"k": null}},
                         "subjects": [{"kind": "User", "name": "u2"}]}"#;
        let out = apply(PatchType::Strategic, &target, patch).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a/x", "a/y"]));
        assert_eq!(out["metadata"]["labels"], json!({}));
        assert_eq!(out["subjects"], json!([{"kind": "User", "name": "u2"}]));
    }

    #[test]
    fn json_patch_applies_in_order_and_tests() {
        let target = json!({"subjects": [{"name": "a"}]});
        let patch = br#"[{"op": "test", "path": "/subjects/0/name", "value": "a"},
                         {"op": "add", "path": "/subjects/-", "value": {"name": "b"}},
                         {"op": "remove", "path": "/subjects/0"}]"#;
        let out = apply(PatchType::Json, &target, patch).unwrap();
        assert_eq!(out, json!({"subjects": [{"name": "b"}]}));
        let failing = br#"[{"op": "test", "path": "/subjects/0/name", "value": "z"}]"#;
        assert!(matches!(
            apply(PatchType::Json, &target, failing),
            Err(PatchError::Apply(_))
        ));
    }
}
