//! The statements a revoke of mode `identity_center` adds to a permission set's inline
//! policy: a Deny of everything for the sessions of one Identity Center user in one account
//! issued before the assignment went (`identitystore:userId`, `aws:PrincipalAccount`,
//! `aws:TokenIssueTime`). Deleting an assignment stops new sessions only; a session of the
//! permission set lives on for up to the permission set's session length, and these
//! statements end it. Other users of the permission set, the same user in other accounts
//! and the user's sessions issued later (a new grant) are not matched.
//!
//! The permission set's own statements are kept as they are; jitsudo's are told apart by
//! their `Sid` prefix and rewritten whole from the set of entries. Pure: the document from
//! the entries and back.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

const SID_PREFIX: &str = "JitsudoEndSessions";
/// IAM Identity Center writes the inline policy onto a role in every account, where IAM
/// counts it without white space against 10,240 characters per role.
pub const INLINE_LIMIT: usize = 10_240;

/// One user's sessions in one account that must end.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionDeny {
    pub user_id: String,
    pub account: String,
}

/// Each user and account's deny and the time before which its sessions were issued.
pub type Denies = BTreeMap<SessionDeny, DateTime<Utc>>;

/// jitsudo's entries in a permission set's inline policy (empty for none, or a document
/// that is not JSON).
pub fn session_denies(document: &str) -> Denies {
    let mut out = Denies::new();
    let Ok(doc) = serde_json::from_str::<Value>(document) else {
        return out;
    };
    for st in statements(&doc).iter().filter(|s| is_ours(s)) {
        let cond = &st["Condition"];
        let Some(account) = cond["StringEquals"]["aws:PrincipalAccount"].as_str() else {
            continue;
        };
        let Some(before) = cond["DateLessThan"]["aws:TokenIssueTime"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        else {
            continue;
        };
        let users = match &cond["StringEquals"]["identitystore:userId"] {
            Value::String(u) => vec![u.clone()],
            Value::Array(us) => us
                .iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect(),
            _ => continue,
        };
        for user_id in users {
            let key = SessionDeny {
                user_id,
                account: account.to_owned(),
            };
            let t = before.with_timezone(&Utc);
            let e = out.entry(key).or_insert(t);
            *e = (*e).max(t);
        }
    }
    out
}

/// The permission set's inline policy with jitsudo's statements made `denies`: its other
/// statements as they were. `Ok(None)` when nothing is left (the inline policy goes);
/// `Err` when the result does not fit IAM's limit, or the current document cannot be read
/// (it is left alone rather than overwritten).
pub fn merged(current: &str, denies: &Denies) -> Result<Option<String>, String> {
    let mut doc = if current.trim().is_empty() {
        json!({"Version": "2012-10-17", "Statement": []})
    } else {
        serde_json::from_str::<Value>(current).map_err(|e| {
            format!("the permission set's inline policy is not JSON ({e}); fix it by hand")
        })?
    };
    let mut kept: Vec<Value> = statements(&doc)
        .into_iter()
        .filter(|s| !is_ours(s))
        .collect();
    // One statement per account and time: a burst of revokes (the end of many grants at
    // once) shares one.
    let mut grouped: BTreeMap<(&str, DateTime<Utc>), Vec<&str>> = BTreeMap::new();
    for (d, t) in denies {
        grouped
            .entry((d.account.as_str(), *t))
            .or_default()
            .push(d.user_id.as_str());
    }
    for (i, ((account, before), users)) in grouped.into_iter().enumerate() {
        kept.push(json!({
            "Sid": format!("{SID_PREFIX}{i}"),
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {
                "StringEquals": {
                    "identitystore:userId": users,
                    "aws:PrincipalAccount": account,
                },
                "DateLessThan": {
                    "aws:TokenIssueTime": before.to_rfc3339_opts(SecondsFormat::Secs, true),
                }
            }
        }));
    }
    if kept.is_empty() {
        return Ok(None);
    }
    let obj = doc
        .as_object_mut()
        .ok_or("the permission set's inline policy is not a JSON object; fix it by hand")?;
    obj.entry("Version").or_insert(json!("2012-10-17"));
    obj.insert("Statement".into(), Value::Array(kept));
    let text = doc.to_string();
    let size = text.chars().filter(|c| !c.is_whitespace()).count();
    if size > INLINE_LIMIT {
        return Err(format!(
            "the permission set's inline policy would be {size} characters with {} session denies; IAM allows {INLINE_LIMIT} per role",
            denies.len()
        ));
    }
    Ok(Some(text))
}

/// A document's statements (IAM allows one statement object instead of a list).
fn statements(doc: &Value) -> Vec<Value> {
    match &doc["Statement"] {
        Value::Array(a) => a.clone(),
        Value::Object(_) => vec![doc["Statement"].clone()],
        _ => Vec::new(),
    }
}

fn is_ours(statement: &Value) -> bool {
    statement["Sid"]
        .as_str()
        .is_some_and(|s| s.starts_with(SID_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_900_000_000 + secs, 0).unwrap()
    }

    fn deny(user: &str, account: &str) -> SessionDeny {
        SessionDeny {
            user_id: user.into(),
            account: account.into(),
        }
    }

    const OWN: &str = r#"{"Version":"2012-10-17","Statement":[{"Sid":"ReadS3","Effect":"Allow","Action":"s3:Get*","Resource":"*"}]}"#;

    #[test]
    fn entries_read_back_and_the_permission_sets_own_statements_stay() {
        let denies = Denies::from([
            (deny("u-1", "111111111111"), at(0)),
            (deny("u-2", "111111111111"), at(0)),
            (deny("u-1", "222222222222"), at(5)),
        ]);
        let doc = merged(OWN, &denies).unwrap().unwrap();
        assert_eq!(session_denies(&doc), denies);
        let v: Value = serde_json::from_str(&doc).unwrap();
        let sts = v["Statement"].as_array().unwrap();
        assert_eq!(sts[0]["Sid"], "ReadS3", "the own statement is kept first");
        assert_eq!(
            sts.len(),
            3,
            "two users at one time in one account share a statement"
        );
        assert_eq!(
            sts[1]["Condition"]["StringEquals"]["identitystore:userId"],
            json!(["u-1", "u-2"])
        );
        assert_eq!(
            sts[1]["Condition"]["DateLessThan"]["aws:TokenIssueTime"],
            "2030-03-17T17:46:40Z"
        );
    }

    #[test]
    fn no_entries_leaves_the_own_statements_or_nothing() {
        let doc = merged(OWN, &Denies::from([(deny("u", "111111111111"), at(0))]))
            .unwrap()
            .unwrap();
        let back = merged(&doc, &Denies::new()).unwrap().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&back).unwrap(),
            serde_json::from_str::<Value>(OWN).unwrap()
        );
        assert_eq!(merged("", &Denies::new()).unwrap(), None);
        assert!(session_denies("").is_empty());
    }

    #[test]
    fn an_unreadable_policy_is_not_overwritten() {
        let e = merged("{not json", &Denies::new()).unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
    }

    #[test]
    fn a_policy_too_large_is_refused_with_the_numbers() {
        let denies: Denies = (0..400)
            .map(|i| {
                (
                    deny(&format!("user-{i:04}-{}", "x".repeat(20)), "111111111111"),
                    at(i),
                )
            })
            .collect();
        let e = merged(OWN, &denies).unwrap_err();
        assert!(e.contains("10240") && e.contains("400"), "{e}");
    }
}
