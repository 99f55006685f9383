//! The fake's etcd: one global revision counter (every write takes the next one and it becomes
//! the object's `resourceVersion`, as etcd's mod revision does), keys ordered as etcd orders
//! `/registry/<resource>/<ns>/<name>` (bytewise), and a history of every revision so a paged
//! list can be continued at the revision of its first page until the history is compacted.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::Kind;

#[derive(Clone, Debug)]
struct Revision {
    rv: u64,
    /// `None`: deleted at `rv`.
    obj: Option<Value>,
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    rv: u64,
    compacted: u64,
    kinds: BTreeMap<Kind, BTreeMap<String, Vec<Revision>>>,
    namespaces: BTreeMap<String, Value>,
}

/// The key of an object inside its resource's range, bytewise ordered like etcd's.
pub(crate) fn key(ns: Option<&str>, name: &str) -> String {
    match ns {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// The etcd key the real server would use; it shows up verbatim in precondition conflicts.
pub(crate) fn etcd_key(kind: Kind, key: &str) -> String {
    format!("/registry/{}/{key}", kind.resource())
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    pub fn compacted_rv(&self) -> u64 {
        self.compacted
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    pub fn get(&self, kind: Kind, key: &str) -> Option<&Value> {
        self.kinds
            .get(&kind)?
            .get(key)?
            .last()
            .and_then(|r| r.obj.as_ref())
    }

    /// Stores `obj` as the newest revision of `key`, stamping its `resourceVersion`.
    pub fn put(&mut self, kind: Kind, key: &str, mut obj: Value) -> Value {
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.kinds
            .entry(kind)
            .or_default()
            .entry(key.to_string())
            .or_default()
            .push(Revision {
                rv,
                obj: Some(obj.clone()),
            });
        obj
    }

    /// Deletes `key` (a tombstone revision); returns the object as it was.
    pub fn delete(&mut self, kind: Kind, key: &str) -> Option<Value> {
        let old = self.get(kind, key)?.clone();
        let rv = self.next_rv();
        if let Some(h) = self.kinds.get_mut(&kind).and_then(|m| m.get_mut(key)) {
            h.push(Revision { rv, obj: None });
        }
        Some(old)
    }

    /// Objects alive at revision `at` whose key starts with `prefix` and is `>= start`, in key order.
    pub fn scan(&self, kind: Kind, prefix: &str, start: &str, at: u64) -> Vec<(&str, &Value)> {
        let Some(m) = self.kinds.get(&kind) else {
            return vec![];
        };
        let from = if start.is_empty() { prefix } else { start };
        m.range(from.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, h)| {
                h.iter()
                    .rev()
                    .find(|r| r.rv <= at)
                    .and_then(|r| r.obj.as_ref())
                    .map(|o| (k.as_str(), o))
            })
            .collect()
    }

    /// All live objects of `kind`, in key order.
    pub fn all(&self, kind: Kind) -> Vec<Value> {
        self.scan(kind, "", "", self.rv)
            .into_iter()
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Forgets history up to the current revision, like etcd's compaction: continuing a list
    /// started before this answers 410 Expired.
    pub fn compact(&mut self) {
        let at = self.rv;
        for m in self.kinds.values_mut() {
            m.retain(|_, h| {
                if let Some(i) = h.iter().rposition(|r| r.rv <= at) {
                    h.drain(..i);
                }
                !(h.len() == 1 && h[0].obj.is_none())
            });
        }
        self.compacted = at;
    }

    pub fn namespace(&self, name: &str) -> Option<&Value> {
        self.namespaces.get(name)
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &Value> {
        self.namespaces.values()
    }

    /// Adds a namespace (no-op when it exists); namespaces take revisions like any object.
    pub fn add_namespace(&mut self, name: &str, uid: String, created: String) -> Value {
        if let Some(ns) = self.namespaces.get(name) {
            return ns.clone();
        }
        let rv = self.next_rv();
        let ns = json!({
            "kind": "Namespace", "apiVersion": "v1",
            "metadata": {
                "name": name, "uid": uid, "resourceVersion": rv.to_string(),
                "creationTimestamp": created,
                "labels": {"kubernetes.io/metadata.name": name},
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        self.namespaces.insert(name.to_string(), ns.clone());
        ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str) -> Value {
        json!({"metadata": {"name": name}})
    }

    #[test]
    fn every_write_takes_the_next_global_revision() {
        let mut s = Store::new();
        let a = s.put(Kind::Role, "ns/a", obj("a"));
        let b = s.put(Kind::RoleBinding, "ns/b", obj("b"));
        assert_eq!(a["metadata"]["resourceVersion"], "1");
        assert_eq!(b["metadata"]["resourceVersion"], "2");
        s.delete(Kind::Role, "ns/a");
        assert_eq!(s.current_rv(), 3);
        assert!(s.get(Kind::Role, "ns/a").is_none());
    }

    #[test]
    fn a_scan_at_an_old_revision_sees_the_old_state_until_compaction() {
        let mut s = Store::new();
        s.put(Kind::RoleBinding, "ns/a", obj("a"));
        s.put(Kind::RoleBinding, "ns/b", obj("b"));
        let at = s.current_rv();
        s.delete(Kind::RoleBinding, "ns/a");
        s.put(Kind::RoleBinding, "ns/c", obj("c"));
        let old: Vec<&str> = s
            .scan(Kind::RoleBinding, "ns/", "", at)
            .iter()
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(old, ["ns/a", "ns/b"]);
        let now: Vec<&str> = s
            .scan(Kind::RoleBinding, "ns/", "", s.current_rv())
            .iter()
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(now, ["ns/b", "ns/c"]);
        s.compact();
        assert_eq!(s.compacted_rv(), s.current_rv());
        assert_eq!(s.scan(Kind::RoleBinding, "", "", s.current_rv()).len(), 2);
    }

    #[test]
    fn keys_order_bytewise_like_etcd() {
        let mut s = Store::new();
        s.put(Kind::RoleBinding, &key(Some("a"), "x"), obj("x"));
        s.put(Kind::RoleBinding, &key(Some("a-b"), "x"), obj("x"));
        let keys: Vec<&str> = s
            .scan(Kind::RoleBinding, "", "", s.current_rv())
            .iter()
            .map(|(k, _)| *k)
            .collect();
        // '-' sorts before '/', so namespace "a-b" lists before "a".
        assert_eq!(keys, ["a-b/x", "a/x"]);
    }
}
