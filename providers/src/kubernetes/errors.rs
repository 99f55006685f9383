//! The API server's answers → [`ProviderError`]: one mapping, by `metav1.Status.reason`
//! (never by message text), with the reason kept in the message.

use std::time::Duration;

use crate::ProviderError;

/// Whether the failed call could have changed something (a write) or not (a read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Call {
    Read,
    Write,
}

/// API server messages are short and carry no secrets, but are cut to this length.
const MAX_MESSAGE: usize = 300;

pub(super) fn map(provider: &str, what: &str, call: Call, e: kube::Error) -> ProviderError {
    let provider = provider.to_owned();
    match e {
        kube::Error::Api(status) => {
            let message: String = status
                .message
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(MAX_MESSAGE)
                .collect();
            let reason = format!(
                "{what}: {} ({}, HTTP {})",
                message, status.reason, status.code
            );
            match (status.reason.as_str(), status.code) {
                ("Unauthorized", _) | (_, 401) => ProviderError::Forbidden {
                    provider,
                    reason: format!(
                        "{what}: the API server rejected jitsudod's credentials (Unauthorized, HTTP 401): check the kubeconfig's token or certificate"
                    ),
                },
                ("Forbidden", _) | (_, 403) => ProviderError::Forbidden { provider, reason },
                ("TooManyRequests", _) | (_, 429) => ProviderError::Throttled {
                    provider,
                    retry_after: status
                        .details
                        .as_ref()
                        .map(|d| d.retry_after_seconds)
                        .filter(|s| *s > 0)
                        .map(|s| Duration::from_secs(u64::from(s))),
                },
                ("NotFound", _)
                | ("Invalid", _)
                | ("BadRequest", _)
                | ("AlreadyExists", _)
                | ("MethodNotAllowed", _)
                | ("UnsupportedMediaType", _) => ProviderError::Invalid {
                    provider,
                    field: "request",
                    reason,
                },
                ("Conflict", _) => ProviderError::Unavailable { provider, reason },
                // A write the server timed out on, or failed inside, may have been applied.
                ("Timeout" | "ServerTimeout" | "InternalError", _) | (_, 500 | 504)
                    if call == Call::Write =>
                {
                    ProviderError::Unknown { provider, reason }
                }
                (_, 500..=599)
                | ("ServiceUnavailable" | "Timeout" | "ServerTimeout" | "InternalError", _) => {
                    ProviderError::Unavailable { provider, reason }
                }
                _ => ProviderError::Invalid {
                    provider,
                    field: "request",
                    reason,
                },
            }
        }
        other => transport(provider, what, call, &other),
    }
}

/// No answer at all. A refused connection sent nothing; any later break may have reached
/// the server (the "applied, answer lost" case) when the call was a write.
fn transport(provider: String, what: &str, call: Call, e: &kube::Error) -> ProviderError {
    let mut cause: &dyn std::error::Error = e;
    let mut refused = false;
    while let Some(next) = cause.source() {
        if let Some(io) = next.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            )
        {
            refused = true;
        }
        cause = next;
    }
    let detail: String = cause.to_string().chars().take(MAX_MESSAGE).collect();
    let reason = format!("{what}: the API server did not answer: {detail}");
    if refused || call == Call::Read {
        ProviderError::Unavailable { provider, reason }
    } else {
        ProviderError::Unknown { provider, reason }
    }
}
