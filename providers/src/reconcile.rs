//! The reconciler's judgement, without I/O: given what a provider lists and what the store
//! expects, which grants are orphans, which have drifted, and which tombstones are done.
//!
//! The engine's reconciler (a cluster singleton) and the conformance suite both use
//! [`compare`], so what the suite checks against each provider is what runs in production.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::{ManagedGrant, Provider, ProviderError};

/// The store's view of one grant, as far as the reconciler needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// The store expects this access to exist now: its request is ACTIVE and the provider
    /// confirmed the grant.
    Live(ExpectedGrant),
    /// The engine is working on it right now (intent committed, grant in flight; or the
    /// request is ENDING and its revokes are being retried): not the reconciler's business.
    InFlight,
    /// The store says it must not exist: the request is final, or this grant was revoked
    /// or abandoned.
    Ended,
}

/// What the store recorded for a live grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExpectedGrant {
    pub grant_id: Uuid,
    pub request_id: Uuid,
    pub subject: String,
    pub role: String,
    pub scope: String,
    pub not_after: DateTime<Utc>,
}

/// Why an object at the provider has no business existing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrphanCause {
    /// No grant with this id is known to the store.
    UnknownToStore,
    /// Its request is final, or this grant was revoked or abandoned.
    RequestEnded,
    /// Its `not_after` has passed.
    PastNotAfter,
}

impl OrphanCause {
    pub fn as_str(self) -> &'static str {
        match self {
            OrphanCause::UnknownToStore => "unknown to the store",
            OrphanCause::RequestEnded => "its request has ended",
            OrphanCause::PastNotAfter => "past its not_after",
        }
    }
}

/// How a live grant differs from what the store expects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Drift {
    /// The store expects it; the provider does not have it (deleted out of band).
    Missing,
    /// The provider has it, but not as granted (subjects or role edited out of band).
    Changed {
        field: &'static str,
        expected: String,
        found: String,
    },
}

/// One thing a reconcile pass found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "finding")]
pub enum Finding {
    /// To be revoked (leaving a tombstone until `not_after`).
    Orphan {
        grant: ManagedGrant,
        cause: OrphanCause,
    },
    /// To be reported (and, where configured, the request ended).
    Drift {
        expected: ExpectedGrant,
        drift: Drift,
    },
    /// A tombstone whose `not_after` has passed: nothing can be late for it any more.
    ExpiredTombstone { grant: ManagedGrant },
}

/// Compares one full listing of a provider with the store.
///
/// `expected` holds the store's view of every grant id the listing names (ids missing from
/// it are unknown to the store); `live` is every grant the store expects to exist at this
/// provider now. A live grant past `not_after` is an orphan even while its request is still
/// ACTIVE in the store: the engine's own expiry is late, and access must not outlive it.
pub fn compare(
    listed: &[ManagedGrant],
    expected: &BTreeMap<Uuid, Expected>,
    live: &[ExpectedGrant],
    now: DateTime<Utc>,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut seen = BTreeSet::new();
    for grant in listed {
        let past = grant.not_after.is_some_and(|t| t <= now);
        if grant.tombstone {
            if past {
                findings.push(Finding::ExpiredTombstone {
                    grant: grant.clone(),
                });
            }
            continue;
        }
        seen.insert(grant.grant_id);
        let orphan = |cause| Finding::Orphan {
            grant: grant.clone(),
            cause,
        };
        match expected.get(&grant.grant_id) {
            _ if past => findings.push(orphan(OrphanCause::PastNotAfter)),
            None => findings.push(orphan(OrphanCause::UnknownToStore)),
            Some(Expected::Ended) => findings.push(orphan(OrphanCause::RequestEnded)),
            Some(Expected::InFlight) => {}
            Some(Expected::Live(want)) => {
                if let Some(drift) = changed(want, grant) {
                    findings.push(Finding::Drift {
                        expected: want.clone(),
                        drift,
                    });
                }
            }
        }
    }
    for want in live {
        if !seen.contains(&want.grant_id) && want.not_after > now {
            findings.push(Finding::Drift {
                expected: want.clone(),
                drift: Drift::Missing,
            });
        }
    }
    findings
}

fn changed(want: &ExpectedGrant, got: &ManagedGrant) -> Option<Drift> {
    let differs = |field, expected: &str, found: &str| {
        (expected != found).then(|| Drift::Changed {
            field,
            expected: expected.to_owned(),
            found: found.to_owned(),
        })
    };
    differs("subject", &want.subject, &got.subject)
        .or_else(|| differs("role", &want.role, &got.role))
        .or_else(|| differs("scope", &want.scope, &got.scope))
}

/// Upper bound on pages of one listing: a provider whose paging never ends is a fault, not
/// a reason to loop forever.
pub const MAX_PAGES: usize = 10_000;

/// Every page of [`Provider::list_managed`].
pub async fn list_all(provider: &dyn Provider) -> Result<Vec<ManagedGrant>, ProviderError> {
    list_pages(provider.name(), |page| async move {
        provider.list_managed(page.as_deref()).await
    })
    .await
}

/// Follows a paged listing to its end through `fetch` (a provider, or a handle to one),
/// refusing a listing that repeats a page token or does not end within [`MAX_PAGES`].
pub async fn list_pages<F, Fut>(
    provider: &str,
    mut fetch: F,
) -> Result<Vec<ManagedGrant>, ProviderError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<crate::ManagedPage, ProviderError>>,
{
    let mut all = Vec::new();
    let mut page: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let got = fetch(page.clone()).await?;
        all.extend(got.grants);
        match got.next {
            Some(next) if Some(&next) != page.as_ref() => page = Some(next),
            Some(_) => {
                return Err(ProviderError::Unknown {
                    provider: provider.to_owned(),
                    reason: "the listing returned the same page token twice".into(),
                });
            }
            None => return Ok(all),
        }
    }
    Err(ProviderError::Unknown {
        provider: provider.to_owned(),
        reason: format!("the listing did not end within {MAX_PAGES} pages"),
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    fn managed(id: Uuid, subject: &str, not_after: DateTime<Utc>, tombstone: bool) -> ManagedGrant {
        ManagedGrant {
            grant_id: id,
            request_id: Some(Uuid::nil()),
            subject: subject.into(),
            role: "view".into(),
            scope: "team-a".into(),
            not_after: Some(not_after),
            provider_ref: String::new(),
            tombstone,
        }
    }

    fn want(id: Uuid, subject: &str, not_after: DateTime<Utc>) -> ExpectedGrant {
        ExpectedGrant {
            grant_id: id,
            request_id: Uuid::nil(),
            subject: subject.into(),
            role: "view".into(),
            scope: "team-a".into(),
            not_after,
        }
    }

    #[test]
    fn every_case_of_the_table_is_judged() {
        let now = Utc::now();
        let later = now + TimeDelta::hours(1);
        let earlier = now - TimeDelta::seconds(1);
        let ids: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
        let listed = vec![
            managed(ids[0], "alice", later, false), // live and as expected
            managed(ids[1], "alice", later, false), // unknown to the store
            managed(ids[2], "alice", later, false), // request ended
            managed(ids[3], "alice", later, false), // in flight
            managed(ids[4], "mallory", later, false), // subject changed
            managed(ids[5], "alice", earlier, false), // past not_after, still ACTIVE in store
            managed(ids[6], "", earlier, true),     // expired tombstone
            managed(ids[7], "", later, true),       // tombstone still needed
        ];
        let missing = Uuid::now_v7();
        let expected = BTreeMap::from([
            (ids[0], Expected::Live(want(ids[0], "alice", later))),
            (ids[2], Expected::Ended),
            (ids[3], Expected::InFlight),
            (ids[4], Expected::Live(want(ids[4], "alice", later))),
            (ids[5], Expected::Live(want(ids[5], "alice", earlier))),
        ]);
        let live = vec![
            want(ids[0], "alice", later),
            want(ids[4], "alice", later),
            want(ids[5], "alice", earlier),
            want(missing, "alice", later),
        ];
        let found = compare(&listed, &expected, &live, now);
        let orphans: Vec<(Uuid, OrphanCause)> = found
            .iter()
            .filter_map(|f| match f {
                Finding::Orphan { grant, cause } => Some((grant.grant_id, *cause)),
                _ => None,
            })
            .collect();
        assert_eq!(
            orphans,
            [
                (ids[1], OrphanCause::UnknownToStore),
                (ids[2], OrphanCause::RequestEnded),
                (ids[5], OrphanCause::PastNotAfter),
            ]
        );
        let drifts: Vec<(Uuid, &Drift)> = found
            .iter()
            .filter_map(|f| match f {
                Finding::Drift { expected, drift } => Some((expected.grant_id, drift)),
                _ => None,
            })
            .collect();
        assert_eq!(drifts.len(), 2, "{drifts:?}");
        assert!(
            matches!(drifts[0], (id, Drift::Changed { field: "subject", found, .. }) if id == ids[4] && found == "mallory")
        );
        assert_eq!(drifts[1], (missing, &Drift::Missing));
        let tombstones: Vec<Uuid> = found
            .iter()
            .filter_map(|f| match f {
                Finding::ExpiredTombstone { grant } => Some(grant.grant_id),
                _ => None,
            })
            .collect();
        assert_eq!(tombstones, [ids[6]]);
    }
}
