//! Resource Manager's answers → [`ProviderError`]: one mapping, by the `google.rpc.Code`
//! of the error body (never by message text), with Google's message kept, cut short.

use std::time::Duration;

use google_cloud_gax::error::Error;
use google_cloud_gax::error::rpc::{Code, StatusDetails};

use crate::ProviderError;

/// Whether the failed call could have changed something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Call {
    Read,
    Write,
}

const MAX_MESSAGE: usize = 300;

/// A stale etag: another writer changed the policy between our read and our write.
pub(super) fn is_conflict(e: &Error) -> bool {
    e.status().is_some_and(|s| s.code == Code::Aborted) || e.http_status_code() == Some(412)
}

/// A write whose outcome cannot be known from the answer: re-reading the policy tells.
pub(super) fn outcome_unknown(e: &Error) -> bool {
    if e.is_timeout() || e.is_io() {
        return true;
    }
    match e.status().map(|s| s.code) {
        Some(Code::Internal | Code::Unknown | Code::DeadlineExceeded | Code::Unavailable) => true,
        Some(_) => false,
        None => e.http_status_code().is_some_and(|c| c >= 500),
    }
}

fn clean(message: &str) -> String {
    message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE)
        .collect()
}

fn retry_after(e: &Error) -> Option<Duration> {
    let from_info = e.status().and_then(|s| {
        s.details.iter().find_map(|d| match d {
            StatusDetails::RetryInfo(r) => r.retry_delay.and_then(|d| Duration::try_from(d).ok()),
            _ => None,
        })
    });
    from_info.or_else(|| {
        e.http_headers()?
            .get("retry-after")?
            .to_str()
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
    })
}

fn permission_of(e: &Error) -> Option<String> {
    e.status()?.details.iter().find_map(|d| match d {
        StatusDetails::ErrorInfo(i) => i.metadata.get("permission").cloned(),
        _ => None,
    })
}

pub(super) fn map(provider: &str, what: &str, scope: &str, call: Call, e: Error) -> ProviderError {
    let provider = provider.to_owned();
    let Some(status) = e.status() else {
        if e.is_connect() {
            return ProviderError::Unavailable {
                provider,
                reason: format!("{what}: cannot connect to Resource Manager"),
            };
        }
        if e.is_authentication() {
            let transient = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<google_cloud_gax::error::CredentialsError>())
                .is_some_and(|c| c.is_transient());
            if transient {
                return ProviderError::Unavailable {
                    provider,
                    reason: format!(
                        "{what}: jitsudod's Google credentials could not make a token for now (the metadata server or token source did not answer)"
                    ),
                };
            }
            return ProviderError::Forbidden {
                provider,
                reason: format!(
                    "{what}: jitsudod's Google credentials could not make a token (check credentials_file or the Application Default Credentials)"
                ),
            };
        }
        let reason = match e.http_status_code() {
            Some(code) => format!("{what}: HTTP {code} without a Google error body"),
            None if e.is_timeout() => format!("{what}: timed out"),
            None => format!("{what}: {}", clean(&e.to_string())),
        };
        return match (call, outcome_unknown(&e)) {
            (Call::Write, true) => ProviderError::Unknown { provider, reason },
            _ if e.http_status_code() == Some(429) => ProviderError::Throttled {
                provider,
                retry_after: retry_after(&e),
            },
            _ => ProviderError::Unavailable { provider, reason },
        };
    };
    let reason = format!(
        "{what}: {} ({})",
        clean(&status.message),
        status.code.name()
    );
    match status.code {
        Code::PermissionDenied => ProviderError::Forbidden {
            provider,
            reason: match permission_of(&e) {
                Some(p) => format!(
                    "{what}: jitsudod lacks the permission {p} on {scope} (or {scope} does not exist): grant its service account {} there, or a custom role with {p}",
                    admin_role(scope)
                ),
                None => reason,
            },
        },
        Code::Unauthenticated => ProviderError::Forbidden {
            provider,
            reason: format!(
                "{what}: Google rejected jitsudod's credentials (UNAUTHENTICATED): check the service account key or the workload identity binding"
            ),
        },
        Code::ResourceExhausted => ProviderError::Throttled {
            provider,
            retry_after: retry_after(&e),
        },
        Code::InvalidArgument | Code::FailedPrecondition | Code::NotFound | Code::OutOfRange => {
            ProviderError::Invalid {
                provider,
                field: "request",
                reason,
            }
        }
        Code::Aborted => ProviderError::Unavailable { provider, reason },
        _ if call == Call::Write && outcome_unknown(&e) => {
            ProviderError::Unknown { provider, reason }
        }
        _ => ProviderError::Unavailable { provider, reason },
    }
}

/// The predefined role that carries get/setIamPolicy on a scope's kind.
fn admin_role(scope: &str) -> &'static str {
    match super::config::scope_kind(scope) {
        Some("folders") => "roles/resourcemanager.folderIamAdmin",
        Some("organizations") => "roles/iam.securityAdmin",
        _ => "roles/resourcemanager.projectIamAdmin",
    }
}
