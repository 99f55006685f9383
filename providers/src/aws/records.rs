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
            format_args!(
                "{}.{:09}",
                self.not_after.timestamp(),
                // A leap second's nanoseconds run past 999,999,999.
                self.not_after.timestamp_subsec_nanos().min(999_999_999)
            ),
            utf8_percent_encode(&self.principal, SEGMENT),
            utf8_percent_encode(&self.requested, SEGMENT)
        );
        if path.len() > MAX_PATH {
            return Err(format!(
                "the record path of principal {:?} on role {} is {} characters; IAM allows {MAX_PATH} (use a shorter principal)",
                self.principal,
                self.role,
                path.len()
            ));
        }
        Ok(path)
    }

    /// Reads a listed policy's name and path; `None` for anything jitsudo did not write.
    pub fn parse(name: &str, path: &str) -> Option<Record> {
        let (grant, tombstone) = match name.strip_prefix(TOMBSTONE_PREFIX) {
            Some(id) => (id, true),
            None => (name.strip_prefix(LIVE_PREFIX)?, false),
        };
        let grant_id = Uuid::parse_str(grant).ok()?;
        let rest = path.strip_prefix(ROOT)?.strip_suffix('/')?;
        let mut parts = rest.split('/');
        let role = parts.next()?.to_owned();
        let request_id = Uuid::parse_str(parts.next()?).ok()?;
        let (secs, nanos) = parts.next()?.split_once('.')?;
        if nanos.len() != 9 {
            return None;
        }
        let not_after = DateTime::from_timestamp(secs.parse().ok()?, nanos.parse().ok()?)?;
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|d| d.into_owned())
        };
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
    fn a_principal_too_long_for_a_path_is_refused_with_the_numbers() {
        let e = record(&"a".repeat(500), false).path().unwrap_err();
        assert!(e.contains("512") && e.contains("readonly"), "{e}");
    }
}
