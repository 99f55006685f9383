//! Encoding of a request into its stored row and back, shared by both backends.
//!
//! Times live only in their own columns (written by the database clock); the `body` holds
//! the rest of the record, so a stale time can never be read back from it.

use serde_json::{Value, json};

use super::{OutboxRow, StoreError, StoreResult};
use crate::domain::{GrantPurpose, Request, Timestamp};

const TIME_KEYS: [&str; 6] = [
    "created_at",
    "approval_deadline",
    "grant_deadline",
    "granted_at",
    "expires_at",
    "ended_at",
];

/// The body of a request row: the record without its version and times.
pub fn body(req: &Request) -> StoreResult<Value> {
    let mut v = serde_json::to_value(req).map_err(|e| StoreError::Corrupt {
        what: format!("encoding request {}: {e}", req.id),
    })?;
    if let Value::Object(m) = &mut v {
        m.remove("version");
        for k in TIME_KEYS {
            m.remove(k);
        }
    }
    Ok(v)
}

/// Stored times of a row, in `TIME_KEYS` order.
pub struct Times(pub [Option<Timestamp>; 6]);

/// Rebuilds a request from its body, version and time columns.
pub fn decode(body: Value, version: i64, times: Times) -> StoreResult<Request> {
    let mut body = body;
    if let Value::Object(m) = &mut body {
        m.insert("version".into(), json!(version));
        for (k, t) in TIME_KEYS.iter().zip(times.0) {
            m.insert((*k).into(), serde_json::to_value(t).unwrap_or(Value::Null));
        }
    }
    serde_json::from_value(body).map_err(|e| StoreError::Corrupt {
        what: format!("decoding a request row: {e}"),
    })
}

pub fn outbox_json(rows: &[OutboxRow]) -> String {
    serde_json::to_string(rows).unwrap_or_else(|_| "[]".into())
}

/// Approval rows of the request and its extensions (extension 0 is the request itself).
pub fn approvals_json(req: &Request) -> String {
    let mut out = Vec::new();
    for a in &req.approvals {
        out.push(json!({ "extension": 0, "approver": a.by.subject, "kind": a.kind, "comment": a.comment, "at": a.at }));
    }
    for e in &req.extensions {
        for a in &e.approvals {
            out.push(json!({ "extension": e.number, "approver": a.by.subject, "kind": a.kind, "comment": a.comment, "at": a.at }));
        }
    }
    Value::Array(out).to_string()
}

/// Grant rows; a primary grant's `not_after` is left null for the store to derive from the
/// stored grant deadline (both are written by the same statement).
pub fn grants_json(req: &Request) -> String {
    let rows: Vec<Value> = req
        .grants
        .iter()
        .map(|g| {
            let (purpose, not_after) = match g.purpose {
                GrantPurpose::Primary => ("primary".to_string(), None),
                GrantPurpose::Extension {
                    extension,
                    not_after,
                } => (format!("extension:{extension}"), Some(not_after)),
            };
            json!({
                "grant_id": g.grant_id,
                "purpose": purpose,
                "status": serde_json::to_value(g.status).unwrap_or(Value::Null),
                "provider_ref": g.provider_ref,
                "not_after": not_after,
            })
        })
        .collect();
    Value::Array(rows).to_string()
}

pub fn extensions_json(req: &Request) -> String {
    let rows: Vec<Value> = req
        .extensions
        .iter()
        .map(|e| {
            json!({
                "number": e.number,
                "by_seconds": e.by_seconds,
                "state": serde_json::to_value(e.state).unwrap_or(Value::Null),
                "grant_id": e.grant_id,
            })
        })
        .collect();
    Value::Array(rows).to_string()
}
