//! What jitsudo keeps in an account about its grants, as IAM customer managed policies that
//! are never attached: one per live grant (`jitsudo-<grant_id>`) and one per revoked grant
//! (`jitsudo-revoked-<grant_id>`, the tombstone). IAM's listing (`ListPolicies`) returns a
//! policy's name and path but neither its tags nor its description, so everything the
//! reconciler needs travels in the path:
//! `/jitsudo/<role>/<request_id>/<not_after>/<principal>/<role as requested>/`, where `<role>`
//! is the IAM role's name in lower case (IAM compares role names without case, so every
//! spelling of one role shares its records and its deny), `<not_after>` is unix seconds and
//! nanoseconds (`1900000000.123456789`), and the principal and the requested role (a name or
//! an ARN, as the store keeps it) are percent-encoded.
//! Pure: names, paths and the harmless document such a record carries.

use chrono::{DateTime, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use uuid::Uuid;

/// Every record's path starts with this.
pub const ROOT: &str = "/jitsudo/";
const LIVE_PREFIX: &str = "jitsudo-";
const TOMBSTONE_PREFIX: &str = "jitsudo-revoked-";
/// IAM's limit on a path.
const MAX_PATH: usize = 512;

/// Kept as they are in a path segment: what IAM allows in a role name, less nothing that
/// could be read as a separator. Everything else, `%` included, is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'+')
    .remove(b'=')
    .remove(b',')
    .remove(b'.')
    .remove(b'@')
    .remove(b'_')
    .remove(b'-');

/// One record as its name and path say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub grant_id: Uuid,
    pub request_id: Uuid,
    /// The IAM role's name (never an ARN); kept in lower case in the path.
    pub role: String,
    /// The role as the request names it (a name in any case, or an ARN): what the store
    /// holds, and so what the reconciler compares.
    pub requested: String,
    pub principal: String,
    pub not_after: DateTime<Utc>,
    pub tombstone: bool,
}

impl Record {
    pub fn name(&self) -> String {
        if self.tombstone {
            tombstone_name(self.grant_id)
        } else {
            live_name(self.grant_id)
        }
    }

    /// The path, or why it cannot be one (too long for IAM).
    pub fn path(&self) -> Result<String, String> {
        let path = format!(
            "{}{}/{}/{}/{}/",
            role_prefix(&self.role),
            self.request_id,
            format_time(self.not_after),
            encode(&self.principal),
            encode(&self.requested)
        );
        fits(path, &self.principal, &self.role)
    }

    /// Reads a listed policy's name and path; `None` for anything jitsudo did not write.
    pub fn parse(name: &str, path: &str) -> Option<Record> {
        let (grant_id, tombstone) = grant_of(name)?;
        let rest = path.strip_prefix(ROOT)?.strip_suffix('/')?;
        let mut parts = rest.split('/');
        let role = parts.next()?.to_owned();
        let request_id = Uuid::parse_str(parts.next()?).ok()?;
        let not_after = parse_time(parts.next()?)?;
        let principal = decode(parts.next()?)?;
        let requested = decode(parts.next()?)?;
        if parts.next().is_some() || role.is_empty() {
            return None;
        }
        Some(Record {
            grant_id,
            request_id,
            role,
            principal,
            requested,
            not_after,
            tombstone,
        })
    }
}

/// What a record is to the store that keeps it in IAM: a name and a path, read back from
/// the listing.
pub trait Stored: Sized + Clone {
    fn parse(name: &str, path: &str) -> Option<Self>;
    fn name(&self) -> String;
    fn path(&self) -> Result<String, String>;
    fn grant_id(&self) -> Uuid;
    fn request_id(&self) -> Uuid;
    fn tombstone(&self) -> bool;
}

impl Stored for Record {
    fn parse(name: &str, path: &str) -> Option<Self> {
        Record::parse(name, path)
    }
    fn name(&self) -> String {
        Record::name(self)
    }
    fn path(&self) -> Result<String, String> {
        Record::path(self)
    }
    fn grant_id(&self) -> Uuid {
        self.grant_id
    }
    fn request_id(&self) -> Uuid {
        self.request_id
    }
    fn tombstone(&self) -> bool {
        self.tombstone
    }
}

/// Every record path of mode `identity_center` starts with this.
pub const IC_ROOT: &str = "/jitsudo-ic/";

/// A grant of mode `identity_center`: one account assignment of a permission set to an
/// Identity Center user. Its path,
/// `/jitsudo-ic/<account>/<permission set>/<request_id>/<user id>/<not_after>/<principal>/`,
/// keeps one request's records under one prefix and every record of an account and
/// permission set under another (what a revoke reads to learn whether another grant still
/// needs the assignment). `user_id` is `-` in a tombstone a revoke wrote when it found no
/// live record of the grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub grant_id: Uuid,
    pub request_id: Uuid,
    pub account: String,
    pub permission_set: String,
    pub user_id: String,
    /// The mapped user name (the Identity Center `UserName`).
    pub principal: String,
    pub not_after: DateTime<Utc>,
    pub tombstone: bool,
}

impl Assignment {
    pub fn name(&self) -> String {
        if self.tombstone {
            tombstone_name(self.grant_id)
        } else {
            live_name(self.grant_id)
        }
    }

    pub fn path(&self) -> Result<String, String> {
        let path = format!(
            "{}{}/{}/{}/",
            request_prefix(&self.account, &self.permission_set, self.request_id),
            encode(&self.user_id),
            format_time(self.not_after),
            encode(&self.principal),
        );
        fits(path, &self.principal, &self.permission_set)
    }

    pub fn parse(name: &str, path: &str) -> Option<Assignment> {
        let (grant_id, tombstone) = grant_of(name)?;
        let rest = path.strip_prefix(IC_ROOT)?.strip_suffix('/')?;
        let mut parts = rest.split('/');
        let account = parts.next()?.to_owned();
        let permission_set = decode(parts.next()?)?;
        let request_id = Uuid::parse_str(parts.next()?).ok()?;
        let user_id = decode(parts.next()?)?;
        let not_after = parse_time(parts.next()?)?;
        let principal = decode(parts.next()?)?;
        if parts.next().is_some() || account.is_empty() || permission_set.is_empty() {
            return None;
        }
        Some(Assignment {
            grant_id,
            request_id,
            account,
            permission_set,
            user_id,
            principal,
            not_after,
            tombstone,
        })
    }
}

impl Stored for Assignment {
    fn parse(name: &str, path: &str) -> Option<Self> {
        Assignment::parse(name, path)
    }
    fn name(&self) -> String {
        Assignment::name(self)
    }
    fn path(&self) -> Result<String, String> {
        Assignment::path(self)
    }
    fn grant_id(&self) -> Uuid {
        self.grant_id
    }
    fn request_id(&self) -> Uuid {
        self.request_id
    }
    fn tombstone(&self) -> bool {
        self.tombstone
    }
}

/// Every "ended" record's path starts with this.
pub const ENDED_ROOT: &str = "/jitsudo-ic-ended/";
const ENDED_PREFIX: &str = "jitsudo-ended-";

/// Mode `identity_center`: written once a revoke has deleted an assignment, and kept until
/// the permission set's sessions issued before `issued_before` have all expired. The
/// deny statements in the permission set are made from these (and what is there), so
/// an entry that a concurrent writer dropped is written again. Path:
/// `/jitsudo-ic-ended/<account>/<permission set>/<user id>/<request_id>/<issued_before>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    pub grant_id: Uuid,
    pub request_id: Uuid,
    pub account: String,
    pub permission_set: String,
    pub user_id: String,
    pub issued_before: DateTime<Utc>,
}

impl Stored for Ended {
    fn parse(name: &str, path: &str) -> Option<Self> {
        let grant_id = Uuid::parse_str(name.strip_prefix(ENDED_PREFIX)?).ok()?;
        let rest = path.strip_prefix(ENDED_ROOT)?.strip_suffix('/')?;
        let mut parts = rest.split('/');
        let account = parts.next()?.to_owned();
        let permission_set = decode(parts.next()?)?;
        let user_id = decode(parts.next()?)?;
        let request_id = Uuid::parse_str(parts.next()?).ok()?;
        let issued_before = parse_time(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(Ended {
            grant_id,
            request_id,
            account,
            permission_set,
            user_id,
            issued_before,
        })
    }
    fn name(&self) -> String {
        format!("{ENDED_PREFIX}{}", self.grant_id)
    }
    fn path(&self) -> Result<String, String> {
        let path = format!(
            "{ENDED_ROOT}{}/{}/{}/{}/{}/",
            self.account,
            encode(&self.permission_set),
            encode(&self.user_id),
            self.request_id,
            format_time(self.issued_before)
        );
        fits(path, &self.user_id, &self.permission_set)
    }
    fn grant_id(&self) -> Uuid {
        self.grant_id
    }
    fn request_id(&self) -> Uuid {
        self.request_id
    }
    fn tombstone(&self) -> bool {
        true
    }
}

/// The prefix of every record of one account and permission set.
pub fn set_prefix(account: &str, permission_set: &str) -> String {
    format!("{IC_ROOT}{account}/{}/", encode(permission_set))
}

/// The prefix of one request's records on one account and permission set.
pub fn request_prefix(account: &str, permission_set: &str, request_id: Uuid) -> String {
    format!("{}{request_id}/", set_prefix(account, permission_set))
}

fn fits(path: String, principal: &str, role: &str) -> Result<String, String> {
    if path.len() > MAX_PATH {
        return Err(format!(
            "the record path of principal {principal:?} on role {role} is {} characters; IAM allows {MAX_PATH} (use a shorter principal)",
            path.len()
        ));
    }
    Ok(path)
}

/// A grant id and whether the name is a tombstone's, from a record's name.
fn grant_of(name: &str) -> Option<(Uuid, bool)> {
    let (grant, tombstone) = match name.strip_prefix(TOMBSTONE_PREFIX) {
        Some(id) => (id, true),
        None => (name.strip_prefix(LIVE_PREFIX)?, false),
    };
    Some((Uuid::parse_str(grant).ok()?, tombstone))
}

fn encode(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

fn decode(s: &str) -> Option<String> {
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|d| d.into_owned())
}

/// Unix seconds and nanoseconds: `1900000000.123456789`.
fn format_time(t: DateTime<Utc>) -> String {
    // A leap second's nanoseconds run past 999,999,999.
    format!(
        "{}.{:09}",
        t.timestamp(),
        t.timestamp_subsec_nanos().min(999_999_999)
    )
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let (secs, nanos) = s.split_once('.')?;
    if nanos.len() != 9 {
        return None;
    }
    DateTime::from_timestamp(secs.parse().ok()?, nanos.parse().ok()?)
}

pub fn live_name(grant_id: Uuid) -> String {
    format!("{LIVE_PREFIX}{grant_id}")
}

pub fn tombstone_name(grant_id: Uuid) -> String {
    format!("{TOMBSTONE_PREFIX}{grant_id}")
}

/// The path prefix of every record about `role` (what one role's listing asks for).
pub fn role_prefix(role: &str) -> String {
    format!("{ROOT}{}/", role.to_ascii_lowercase())
}

/// The document every record carries: it is never attached, and even attached it would
/// only deny reading a role that cannot exist (role names cannot contain `/`).
pub fn document(kind: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "JitsudoRecordGrantsNothing",
            "Effect": "Deny",
            "Action": "iam:GetRole",
            "Resource": format!("arn:aws:iam::*:role/jitsudo/{kind}/never-attached"),
        }]
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(principal: &str, tombstone: bool) -> Record {
        Record {
            grant_id: Uuid::now_v7(),
            request_id: Uuid::now_v7(),
            role: "readonly".into(),
            requested: "arn:aws:iam::123456789012:role/team/ReadOnly".into(),
            principal: principal.into(),
            not_after: DateTime::from_timestamp(1_900_000_000, 123_456_789).unwrap(),
            tombstone,
        }
    }

    #[test]
    fn a_record_reads_back_from_its_name_and_path() {
        for p in ["alice@example.com", "bob/with slash%and ü", "x"] {
            for t in [false, true] {
                let r = record(p, t);
                let path = r.path().unwrap();
                assert!(path.starts_with("/jitsudo/readonly/"), "{path}");
                assert!(
                    path.bytes().all(|b| (0x21..=0x7e).contains(&b)),
                    "IAM allows only printable ASCII in a path: {path}"
                );
                assert_eq!(Record::parse(&r.name(), &path), Some(r));
            }
        }
    }

    #[test]
    fn every_spelling_of_a_role_shares_one_prefix() {
        assert_eq!(role_prefix("ReadOnly"), role_prefix("readonly"));
        let mut r = record("alice", false);
        r.role = "ReadOnly".into();
        assert!(r.path().unwrap().starts_with(&role_prefix("READONLY")));
    }

    #[test]
    fn foreign_policies_are_not_records() {
        let r = record("alice", false);
        let path = r.path().unwrap();
        assert_eq!(Record::parse("ReadOnlyAccess", &path), None);
        assert_eq!(Record::parse(&r.name(), "/"), None);
        assert_eq!(Record::parse(&r.name(), "/jitsudo/readonly/"), None);
        assert_eq!(Record::parse("jitsudo-not-a-uuid", &path), None);
        assert_eq!(
            Record::parse(&r.name(), &format!("{path}extra/")),
            None,
            "a path with more segments than jitsudo writes"
        );
    }

    #[test]
    fn an_assignment_record_reads_back_from_its_name_and_path() {
        for (p, user) in [("alice", "9067-abc"), ("bob/with slash%", "-")] {
            for t in [false, true] {
                let a = Assignment {
                    grant_id: Uuid::now_v7(),
                    request_id: Uuid::now_v7(),
                    account: "123456789012".into(),
                    permission_set: "ReadOnly".into(),
                    user_id: user.into(),
                    principal: p.into(),
                    not_after: DateTime::from_timestamp(1_900_000_000, 5).unwrap(),
                    tombstone: t,
                };
                let path = a.path().unwrap();
                assert!(
                    path.starts_with(&request_prefix("123456789012", "ReadOnly", a.request_id)),
                    "{path}"
                );
                assert_eq!(Assignment::parse(&a.name(), &path), Some(a.clone()));
                assert_eq!(Record::parse(&a.name(), &path), None, "not an sts record");
                let e = Ended {
                    grant_id: a.grant_id,
                    request_id: a.request_id,
                    account: a.account.clone(),
                    permission_set: a.permission_set.clone(),
                    user_id: a.user_id.clone(),
                    issued_before: a.not_after,
                };
                let (name, path) = (Stored::name(&e), Stored::path(&e).unwrap());
                assert_eq!(<Ended as Stored>::parse(&name, &path), Some(e));
                assert_eq!(Assignment::parse(&name, &path), None);
            }
        }
    }

    #[test]
    fn a_principal_too_long_for_a_path_is_refused_with_the_numbers() {
        let e = record(&"a".repeat(500), false).path().unwrap_err();
        assert!(e.contains("512") && e.contains("readonly"), "{e}");
    }
}
