//! AWS's answers → [`ProviderError`]: one mapping, by the error code AWS returns (never by
//! message text), with the code kept in the message and a sentence of what to fix.

use aws_sdk_iam::config::http::HttpResponse;
use aws_sdk_iam::error::{ProvideErrorMetadata, SdkError};

use crate::ProviderError;

/// Whether the failed call could have changed something (a write) or not (a read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Call {
    Read,
    Write,
}

/// AWS messages carry no secrets, but are cut to this length.
const MAX_MESSAGE: usize = 300;

/// The code of a service error, if the call got an answer at all.
pub(super) fn code<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> Option<&str> {
    match e {
        SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    }
}

pub(super) fn map<E>(
    provider: &str,
    what: &str,
    call: Call,
    e: SdkError<E, HttpResponse>,
) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let provider = provider.to_owned();
    match &e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s.err().code().unwrap_or("Unknown").to_owned();
            let message: String = s
                .err()
                .message()
                .unwrap_or("")
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(MAX_MESSAGE)
                .collect();
            let reason = format!("{what}: {message} ({code}, HTTP {status})");
            match code.as_str() {
                "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" => {
                    ProviderError::Forbidden {
                        provider,
                        reason: format!(
                            "{reason}: give jitsudod's IAM principal this permission (docs/providers.md lists the policy it needs)"
                        ),
                    }
                }
                "InvalidClientTokenId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "ExpiredTokenException"
                | "UnrecognizedClientException" => ProviderError::Forbidden {
                    provider,
                    reason: format!(
                        "{what}: AWS rejected jitsudod's credentials ({code}, HTTP {status}): check the credentials in jitsudod's environment or instance role"
                    ),
                },
                "Throttling"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "TooManyRequestsException"
                | "SlowDown" => ProviderError::Throttled {
                    provider,
                    retry_after: None,
                },
                // ConflictException: Identity Center is busy with the same assignment or
                // permission set (another provisioning or edit); nothing was applied.
                "ConcurrentModification"
                | "ConcurrentModificationException"
                | "EntityTemporarilyUnmodifiable"
                | "ConflictException" => ProviderError::Unavailable { provider, reason },
                // A quota (managed policies per account, inline policy size per role): retried
                // until something leaves, or the quota is raised.
                "LimitExceeded" | "ServiceQuotaExceededException" => ProviderError::Unavailable {
                    provider,
                    reason: format!(
                        "{reason}: a quota is reached (IAM: customer managed policies per account, inline policy size per role; Identity Center: assignments, permission sets); raise it or wait for grants to end"
                    ),
                },
                _ if status >= 500 && call == Call::Write => {
                    ProviderError::Unknown { provider, reason }
                }
                _ if status >= 500 || code == "ServiceFailure" || code == "ServiceUnavailable" => {
                    ProviderError::Unavailable { provider, reason }
                }
                _ => ProviderError::Invalid {
                    provider,
                    field: "request",
                    reason,
                },
            }
        }
        // Refused before sending (bad input the SDK caught): nothing reached AWS.
        SdkError::ConstructionFailure(_) => ProviderError::Invalid {
            provider,
            field: "request",
            reason: format!("{what}: {}", chain(&e)),
        },
        // A refused connection sent nothing; any later break may have reached AWS.
        SdkError::DispatchFailure(_) if call == Call::Read || refused(&e) => {
            ProviderError::Unavailable {
                provider,
                reason: format!("{what}: AWS did not answer: {}", chain(&e)),
            }
        }
        // The request went out and no (readable) answer came back.
        _ if call == Call::Write => ProviderError::Unknown {
            provider,
            reason: format!(
                "{what}: no answer from AWS, the call may have taken effect: {}",
                chain(&e)
            ),
        },
        _ => ProviderError::Unavailable {
            provider,
            reason: format!("{what}: no answer from AWS: {}", chain(&e)),
        },
    }
}

fn refused(e: &dyn std::error::Error) -> bool {
    let mut cause = e.source();
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            )
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The error and its causes in one line, cut short.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text.chars().take(MAX_MESSAGE).collect()
}
