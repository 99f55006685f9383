//! The IAM calls that keep records ([`super::records`]): list (all pages, or one), create
//! (a repeat is success: the name is the idempotency key) and delete (a missing one is
//! success). Shared by both modes.

use aws_sdk_iam::types::PolicyScopeType;
use uuid::Uuid;

use super::errors::{Call, code, map};
use super::records::{self, Stored};
use crate::ProviderError;

/// One record as listed, with its policy's ARN (what a delete names).
pub(super) type Listed<R> = (R, String);

pub(super) struct Store<'a> {
    pub provider: &'a str,
    pub iam: &'a aws_sdk_iam::Client,
}

impl Store<'_> {
    /// Every record under `prefix`, all pages.
    pub async fn list<R: Stored>(&self, prefix: &str) -> Result<Vec<Listed<R>>, ProviderError> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let (records, next) = self.page(prefix, 1000, marker.take()).await?;
            out.extend(records);
            match next {
                Some(m) => marker = Some(m),
                None => return Ok(out),
            }
        }
    }

    /// One page of the records under `prefix` (and the marker of the next, if any).
    pub async fn page<R: Stored>(
        &self,
        prefix: &str,
        max: i32,
        marker: Option<String>,
    ) -> Result<(Vec<Listed<R>>, Option<String>), ProviderError> {
        let page = self
            .iam
            .list_policies()
            .scope(PolicyScopeType::Local)
            .path_prefix(prefix)
            .max_items(max)
            .set_marker(marker)
            .send()
            .await
            .map_err(|e| {
                map(
                    self.provider,
                    "listing jitsudo's records (ListPolicies)",
                    Call::Read,
                    e,
                )
            })?;
        let records = page
            .policies()
            .iter()
            .filter_map(|p| Some((R::parse(p.policy_name()?, p.path()?)?, p.arn()?.to_owned())))
            .collect();
        let next = match (page.is_truncated(), page.marker()) {
            (true, Some(m)) => Some(m.to_owned()),
            _ => None,
        };
        Ok((records, next))
    }

    /// Creates one record; an existing one of that name is success (a repeat or a race).
    pub async fn write<R: Stored>(&self, record: &R) -> Result<(), ProviderError> {
        let path = record.path().map_err(|reason| ProviderError::Invalid {
            provider: self.provider.to_owned(),
            field: "subject",
            reason,
        })?;
        let kind = if record.tombstone() {
            "tombstone"
        } else {
            "grant"
        };
        let res = self
            .iam
            .create_policy()
            .policy_name(record.name())
            .path(path)
            .policy_document(records::document(kind))
            .description(format!(
                "jitsudo {kind} record of request {} (never attached; grants nothing)",
                record.request_id()
            ))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some("EntityAlreadyExists") => Ok(()),
            Err(e) => Err(map(
                self.provider,
                &format!(
                    "writing the {kind} record of grant {} (CreatePolicy)",
                    record.grant_id()
                ),
                Call::Write,
                e,
            )),
        }
    }

    pub async fn delete(&self, arn: &str, grant_id: Uuid) -> Result<(), ProviderError> {
        match self.iam.delete_policy().policy_arn(arn).send().await {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some("NoSuchEntity") => Ok(()),
            Err(e) => Err(map(
                self.provider,
                &format!("deleting the record of grant {grant_id} (DeletePolicy)"),
                Call::Write,
                e,
            )),
        }
    }
}

/// The live record (`tombstone = false`) or the tombstone of a grant among `found`.
pub(super) fn find<R: Stored>(
    found: &[Listed<R>],
    grant_id: Uuid,
    tombstone: bool,
) -> Option<Listed<R>> {
    found
        .iter()
        .find(|(r, _)| r.grant_id() == grant_id && r.tombstone() == tombstone)
        .cloned()
}
