//! What both backends share about rows: a request's encoding into its stored row and back,
//! and one decoder per stored record, written against [`Columns`]: the column access whose
//! SQL types differ (times are `timestamptz` in PostgreSQL and integer microseconds in
//! SQLite, ids `uuid` and text, a request body `jsonb` and JSON text).
//!
//! Times live only in their own columns (written by the database clock); the `body` holds
//! the rest of the record, so a stale time can never be read back from it.

use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    AuditEvent, AuditStats, ChainRow, ChainTip, Checkpoint, Lease, Member, OutboxEntry, OutboxRow,
    PrincipalRecord, ReconcilePass, ShardRecord, SinkStats, StoreError, StoreResult, VersionGap,
    missing_versions,
};
use crate::domain::{GrantPurpose, Request, Timestamp};
use crate::policy::PolicySource;

/// The columns [`request`] reads.
pub(super) const REQUEST_COLUMNS: &str = "version, body, created_at, approval_deadline, grant_deadline, granted_at, expires_at, ended_at";

/// The columns [`audit_event`] reads, of `audit_events e`.
pub(super) const EVENT_COLUMNS: &str =
    "e.id, e.at, e.kind, e.actor, e.request_id, e.request_version, e.node, e.details";

/// The columns [`outbox_entry`] reads.
pub(super) const OUTBOX_COLUMNS: &str = "id, event_id, request_id, sink, kind, payload, state, attempts, created_at, next_attempt_at, last_error";

const TIME_KEYS: [&str; 6] = [
    "created_at",
    "approval_deadline",
    "grant_deadline",
    "granted_at",
    "expires_at",
    "ended_at",
];

/// A value both drivers read from the same column type: text, integers, floats, booleans,
/// bytes. Ids and times are not among them: they go through their own [`Columns`] methods.
pub(super) trait Plain:
    for<'r> sqlx::Decode<'r, sqlx::Postgres>
    + sqlx::Type<sqlx::Postgres>
    + for<'r> sqlx::Decode<'r, sqlx::Sqlite>
    + sqlx::Type<sqlx::Sqlite>
{
}

impl Plain for String {}
impl Plain for i64 {}
impl Plain for i32 {}
impl Plain for f64 {}
impl Plain for bool {}
impl Plain for Vec<u8> {}
impl<T: Plain> Plain for Option<T> {}

/// A row's columns as the decoders below need them, each backend reading its own SQL types.
/// `op` names the read in the error of a column that cannot be read.
pub(super) trait Columns {
    fn read<T: Plain>(&self, col: &str, op: &'static str) -> StoreResult<T>;
    fn time(&self, col: &str, op: &'static str) -> StoreResult<Timestamp>;
    fn opt_time(&self, col: &str, op: &'static str) -> StoreResult<Option<Timestamp>>;
    fn uuid(&self, col: &str, op: &'static str) -> StoreResult<Uuid>;
    fn opt_uuid(&self, col: &str, op: &'static str) -> StoreResult<Option<Uuid>>;
    /// A shard number.
    fn shard(&self, col: &str, op: &'static str) -> StoreResult<u32>;
    /// The `body` of a request row.
    fn body(&self) -> StoreResult<Value>;
}

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

/// Rebuilds a request from its row ([`REQUEST_COLUMNS`]): body, version and time columns.
pub(super) fn request(r: &impl Columns) -> StoreResult<Request> {
    let mut times = [None; 6];
    for (t, col) in times.iter_mut().zip(TIME_KEYS) {
        *t = r.opt_time(col, "reading a request time")?;
    }
    let mut body = r.body()?;
    let version: i64 = r.read("version", "reading a request version")?;
    if let Value::Object(m) = &mut body {
        m.insert("version".into(), json!(version));
        for (k, t) in TIME_KEYS.iter().zip(times) {
            m.insert((*k).into(), serde_json::to_value(t).unwrap_or(Value::Null));
        }
    }
    serde_json::from_value(body).map_err(|e| StoreError::Corrupt {
        what: format!("decoding a request row: {e}"),
    })
}

/// An audit event ([`EVENT_COLUMNS`]).
pub(super) fn audit_event(r: &impl Columns) -> StoreResult<AuditEvent> {
    let op = "reading an audit event";
    Ok(AuditEvent {
        id: r.uuid("id", op)?,
        at: r.time("at", op)?,
        kind: r.read("kind", op)?,
        actor: r.read("actor", op)?,
        request_id: r.opt_uuid("request_id", op)?,
        request_version: r.read("request_version", op)?,
        node: r.read("node", op)?,
        details: r.read("details", op)?,
    })
}

/// An audit event with its chain link (`seq`, `prev_hash`, `hash`; null while unchained).
pub(super) fn audit_with_link(r: &impl Columns) -> StoreResult<(AuditEvent, Option<ChainRow>)> {
    let event = audit_event(r)?;
    let op = "reading an audit chain link";
    let seq: Option<i64> = r.read("seq", op)?;
    let link = match seq {
        None => None,
        Some(seq) => Some(ChainRow {
            seq,
            event_id: event.id,
            prev_hash: r.read("prev_hash", op)?,
            hash: r.read("hash", op)?,
        }),
    };
    Ok((event, link))
}

/// A chain link (its event id as `link_event`) with its event, if `present`.
pub(super) fn chain_entry(r: &impl Columns) -> StoreResult<(ChainRow, Option<AuditEvent>)> {
    let op = "reading the audit chain";
    let link = ChainRow {
        seq: r.read("seq", op)?,
        event_id: r.uuid("link_event", op)?,
        prev_hash: r.read("prev_hash", op)?,
        hash: r.read("hash", op)?,
    };
    let present: bool = r.read("present", op)?;
    let event = if present { Some(audit_event(r)?) } else { None };
    Ok((link, event))
}

pub(super) fn chain_tip(r: &impl Columns) -> StoreResult<ChainTip> {
    let op = "reading the chain tip";
    Ok(ChainTip {
        seq: r.read("seq", op)?,
        hash: r.read("hash", op)?,
        event_at: r.time("at", op)?,
        event_id: r.uuid("id", op)?,
    })
}

pub(super) fn checkpoint(r: &impl Columns) -> StoreResult<Checkpoint> {
    let op = "reading a checkpoint";
    Ok(Checkpoint {
        seq: r.read("seq", op)?,
        hash: r.read("hash", op)?,
        at: r.time("at", op)?,
        key_id: r.read("key_id", op)?,
        signature: r.read("signature", op)?,
    })
}

/// Audit statistics; `db_now` is read by the caller (SQLite has no clock column).
pub(super) fn audit_stats(r: &impl Columns, db_now: Timestamp) -> StoreResult<AuditStats> {
    let op = "reading audit statistics";
    Ok(AuditStats {
        chain_length: r.read("chained", op)?,
        unchained: r.read("unchained", op)?,
        oldest_unchained_at: r.opt_time("oldest", op)?,
        db_now,
    })
}

/// A request whose audit versions are checked; `present` is the versions its events carry,
/// which each backend aggregates its own way (an array, a list in text).
pub(super) fn version_gap(r: &impl Columns, mut present: Vec<i64>) -> StoreResult<VersionGap> {
    let op = "checking audit versions";
    let version: i64 = r.read("version", op)?;
    present.sort_unstable();
    Ok(VersionGap {
        request_id: r.uuid("id", op)?,
        version,
        missing: missing_versions(version, &present),
    })
}

/// An outbox row ([`OUTBOX_COLUMNS`]).
pub(super) fn outbox_entry(r: &impl Columns) -> StoreResult<OutboxEntry> {
    let op = "reading an outbox row";
    Ok(OutboxEntry {
        id: r.read("id", op)?,
        event_id: r.uuid("event_id", op)?,
        request_id: r.opt_uuid("request_id", op)?,
        sink: r.read("sink", op)?,
        kind: r.read("kind", op)?,
        payload: r.read("payload", op)?,
        state: r.read("state", op)?,
        attempts: r.read("attempts", op)?,
        created_at: r.time("created_at", op)?,
        next_attempt_at: r.time("next_attempt_at", op)?,
        last_error: r.read("last_error", op)?,
    })
}

/// One sink's outbox counts; the age of its oldest pending row is worked out by the caller
/// (PostgreSQL in SQL, SQLite from the stored microseconds).
pub(super) fn sink_stats(
    r: &impl Columns,
    oldest_pending_age_seconds: f64,
) -> StoreResult<SinkStats> {
    let op = "reading outbox counts";
    Ok(SinkStats {
        sink: r.read("sink", op)?,
        pending: r.read("pending", op)?,
        oldest_pending_age_seconds,
        dead: r.read("dead", op)?,
        delivered: r.read("delivered", op)?,
    })
}

pub(super) fn principal(r: &impl Columns) -> StoreResult<PrincipalRecord> {
    let op = "reading a principal";
    Ok(PrincipalRecord {
        subject: r.read("subject", op)?,
        trust_tier: r.read("trust_tier", op)?,
        updated_by: r.read("updated_by", op)?,
        updated_at: r.time("updated_at", op)?,
    })
}

fn policy(r: &impl Columns) -> StoreResult<PolicySource> {
    let op = "reading a policy";
    Ok(PolicySource {
        name: r.read("name", op)?,
        version: r.read("version", op)?,
        author: r.read("author", op)?,
        rego: r.read("rego", op)?,
    })
}

/// A policy version with the time it was stored (`created_at`).
pub(super) fn policy_at(r: &impl Columns) -> StoreResult<(PolicySource, Timestamp)> {
    Ok((policy(r)?, r.time("created_at", "reading a policy")?))
}

/// The policies of rows that hold each name's latest version, less the deleted ones.
pub(super) fn live_policies<R: Columns>(rows: &[R]) -> StoreResult<Vec<PolicySource>> {
    let mut out = Vec::new();
    for r in rows {
        if r.read::<bool>("deleted", "reading a policy")? {
            continue;
        }
        out.push(policy(r)?);
    }
    Ok(out)
}

/// A lease of `owner` from a row of `shard`, `epoch` and `expires_at`.
pub(super) fn lease(r: &impl Columns, owner: &str) -> StoreResult<Lease> {
    let op = "reading a lease";
    Ok(Lease {
        fence: super::Fence {
            shard: r.shard("shard", op)?,
            owner: owner.to_owned(),
            epoch: r.read("epoch", op)?,
        },
        expires_at: r.time("expires_at", op)?,
    })
}

pub(super) fn shard_record(r: &impl Columns) -> StoreResult<ShardRecord> {
    let op = "reading the shard table";
    Ok(ShardRecord {
        shard: r.shard("shard", op)?,
        owner: r.read("owner", op)?,
        incarnation: r.uuid("incarnation", op)?,
        epoch: r.read("epoch", op)?,
        acquired_at: r.time("acquired_at", op)?,
        lease_expires_at: r.opt_time("expires_at", op)?,
    })
}

pub(super) fn member(r: &impl Columns) -> StoreResult<Member> {
    let op = "reading a member";
    Ok(Member {
        node: r.read("node_id", op)?,
        incarnation: r.uuid("incarnation", op)?,
        cluster_addr: r.read("cluster_addr", op)?,
        api_addr: r.read("api_addr", op)?,
        started_at: r.time("started_at", op)?,
        heartbeat_at: r.time("heartbeat_at", op)?,
        clock_offset_us: r.read("clock_offset_us", op)?,
    })
}

pub(super) fn reconcile_pass(r: &impl Columns) -> StoreResult<ReconcilePass> {
    let op = "reading reconcile passes";
    Ok(ReconcilePass {
        provider: r.read("provider", op)?,
        node: r.read("node", op)?,
        at: r.time("at", op)?,
        duration_ms: r.read("duration_ms", op)?,
        listed: r.read("listed", op)?,
        orphans: r.read("orphans", op)?,
        drift: r.read("drift", op)?,
        tombstones: r.read("tombstones", op)?,
        error: r.read("error", op)?,
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
