//! Shared server state, the authenticated caller, and signed page tokens.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use hmac::{Hmac, Mac};
use jitsudo_actors::Engine;
use jitsudo_actors::domain::Principal;
use sha2::Sha256;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::error::ApiError;

/// Who is calling, as established by authentication (and the store's trust tier).
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    pub admin: bool,
    pub auditor: bool,
    /// When the caller's token stops being accepted; `None` for a client certificate.
    pub valid_until: Option<chrono::DateTime<chrono::Utc>>,
}

impl Caller {
    pub fn subject(&self) -> &str {
        &self.principal.subject
    }

    pub fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.admin {
            return Ok(());
        }
        Err(ApiError::denied(format!(
            "{what} needs membership of an admin group"
        )))
    }

    pub fn require_admin_or_auditor(&self, what: &str) -> Result<(), ApiError> {
        if self.admin || self.auditor {
            return Ok(());
        }
        Err(ApiError::denied(format!(
            "{what} needs membership of an admin or auditor group"
        )))
    }
}

pub struct AppState {
    pub engine: Engine,
    pub config: Config,
    pub auth: Authenticator,
    pub dev: bool,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub page_key: [u8; 32],
    pub verifying_key: Option<ed25519_dalek::VerifyingKey>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    pub ready: AtomicBool,
    /// Set once shutdown begins: open watch streams end at once with UNAVAILABLE (the
    /// client resumes on another node) instead of holding the drain for its whole grace.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Reads by woken watchers at once: after a lost LISTEN connection every watcher
    /// reads, and they must not take every database connection from the commits.
    pub watch_reads: tokio::sync::Semaphore,
    /// Authorization refusals audited per actor in the current minute (flood control).
    pub denials: Mutex<HashMap<String, (i64, u32)>>,
    /// Verified emails already recorded per subject (the store is written only on change).
    pub identities: Mutex<HashMap<String, String>>,
    /// Mutating calls per principal.
    pub mutation_limit: crate::limits::RateLimiter,
    /// Failed authentications per client address.
    pub auth_failure_limit: crate::limits::RateLimiter,
}

type HmacSha256 = Hmac<Sha256>;

impl AppState {
    /// A keyset cursor `(time, id)` as a signed page token bound to `scope`.
    pub fn sign_cursor(
        &self,
        scope: &str,
        at: chrono::DateTime<chrono::Utc>,
        id: uuid::Uuid,
    ) -> String {
        sign_token(
            &self.page_key,
            scope,
            &format!("{}:{id}", at.timestamp_micros()),
        )
    }

    /// The cursor of a page token (none for an empty token); refused if it was not signed
    /// by this server for this scope.
    pub fn open_cursor(
        &self,
        scope: &str,
        token: &str,
    ) -> Result<Option<(chrono::DateTime<chrono::Utc>, uuid::Uuid)>, ApiError> {
        if token.is_empty() {
            return Ok(None);
        }
        let payload = open_token(&self.page_key, scope, token)?;
        let malformed = || ApiError::invalid("malformed page token");
        let (micros, id) = payload.split_once(':').ok_or_else(malformed)?;
        let at = micros
            .parse::<i64>()
            .ok()
            .and_then(chrono::DateTime::from_timestamp_micros)
            .ok_or_else(malformed)?;
        let id = uuid::Uuid::parse_str(id).map_err(|_| malformed())?;
        Ok(Some((at, id)))
    }
}

/// An opaque, tamper-evident cursor: `base64url(payload).hex(HMAC(key, scope ‖ payload))`,
/// where the scope binds it to the query and the caller that received it.
pub fn sign_token(key: &[u8; 32], scope: &str, payload: &str) -> String {
    use base64::Engine as _;
    let mut mac = HmacSha256::new_from_slice(key)
        .unwrap_or_else(|_| HmacSha256::new_from_slice(&[0; 32]).expect("key"));
    mac.update(scope.as_bytes());
    mac.update(b"\0");
    mac.update(payload.as_bytes());
    let tag = hex::encode(mac.finalize().into_bytes());
    format!(
        "{}.{tag}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload)
    )
}

pub fn open_token(key: &[u8; 32], scope: &str, token: &str) -> Result<String, ApiError> {
    use base64::Engine as _;
    let bad = || {
        ApiError::invalid(
            "the page token is malformed, was tampered with, or belongs to another query or caller; start again without it",
        )
    };
    if token.len() > 512 {
        return Err(bad());
    }
    let (b64, tag) = token.split_once('.').ok_or_else(bad)?;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| bad())?;
    let payload = String::from_utf8(payload).map_err(|_| bad())?;
    // One spelling per token: the tag is lowercase hex, as signed (hex would also take
    // uppercase, which would make tokens malleable).
    if !tag.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad());
    }
    let tag = hex::decode(tag).map_err(|_| bad())?;
    let mut mac = HmacSha256::new_from_slice(key).map_err(|_| bad())?;
    mac.update(scope.as_bytes());
    mac.update(b"\0");
    mac.update(payload.as_bytes());
    mac.verify_slice(&tag).map_err(|_| bad())?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_are_bound_to_scope_and_tamper_evident() {
        let key = [7u8; 32];
        let t = sign_token(&key, "alice|mine", "123:abc");
        assert_eq!(open_token(&key, "alice|mine", &t).unwrap(), "123:abc");
        assert!(open_token(&key, "bob|mine", &t).is_err(), "another caller");
        assert!(open_token(&key, "alice|all", &t).is_err(), "another filter");
        assert!(
            open_token(&[8u8; 32], "alice|mine", &t).is_err(),
            "another server key"
        );
        let mut forged = t.clone();
        forged.replace_range(0..1, if t.starts_with('A') { "B" } else { "A" });
        assert!(open_token(&key, "alice|mine", &forged).is_err());
        assert!(open_token(&key, "alice|mine", "garbage").is_err());
    }
}
