//! Idempotency keys of creates: a client that retries a create with the same key gets the
//! request it already made, never a second one. The content hash tells a retry apart from a
//! different request that reuses the key.

use sha2::{Digest, Sha256};

use super::{Limits, Refusal, RequestSpec, check_text};

/// A create's idempotency key with the hash of the content it was first used for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    /// Lower-case hex SHA-256 of the canonical request content ([`content_hash`]).
    pub content_hash: String,
}

impl Idempotency {
    /// Checks the key (1–128 bytes, not blank, no control characters) and hashes the content.
    pub fn new(key: &str, spec: &RequestSpec) -> Result<Self, Refusal> {
        check_text("idempotency_key", key, Limits::IDEMPOTENCY_KEY, true)?;
        Ok(Idempotency {
            key: key.to_owned(),
            content_hash: content_hash(spec),
        })
    }
}

/// SHA-256 over what the requester asked for: provider, role, scope, duration, reason,
/// ticket, break-glass and metadata. Every field is length-prefixed (and the ticket's
/// presence marked), so no two different requests share an encoding; the hash is stored,
/// so the encoding must never change without a new domain prefix.
pub fn content_hash(spec: &RequestSpec) -> String {
    fn field(d: &mut Sha256, v: &[u8]) {
        d.update((v.len() as u64).to_be_bytes());
        d.update(v);
    }
    let mut d = Sha256::new();
    d.update(b"jitsudo-request-content-v1");
    field(&mut d, spec.provider.as_bytes());
    field(&mut d, spec.role.as_bytes());
    field(&mut d, spec.scope.as_bytes());
    d.update(spec.duration_seconds.to_be_bytes());
    field(&mut d, spec.reason.as_bytes());
    match &spec.ticket {
        None => d.update([0]),
        Some(t) => {
            d.update([1]);
            field(&mut d, t.as_bytes());
        }
    }
    d.update([u8::from(spec.break_glass)]);
    d.update((spec.metadata.len() as u64).to_be_bytes());
    for (k, v) in &spec.metadata {
        field(&mut d, k.as_bytes());
        field(&mut d, v.as_bytes());
    }
    hex::encode(d.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RequestSpec {
        RequestSpec {
            provider: "cloud".into(),
            role: "viewer".into(),
            scope: "acct".into(),
            duration_seconds: 600,
            reason: "incident".into(),
            ticket: None,
            break_glass: false,
            metadata: Default::default(),
        }
    }

    #[test]
    fn every_field_of_the_content_changes_the_hash() {
        let base = content_hash(&spec());
        assert_eq!(base, content_hash(&spec()));
        let variants: [fn(&mut RequestSpec); 9] = [
            |s| s.provider = "other".into(),
            |s| s.role = "admin".into(),
            |s| s.scope = "acct2".into(),
            |s| s.duration_seconds = 601,
            |s| s.reason = "incidents".into(),
            |s| s.ticket = Some(String::new()),
            |s| s.break_glass = true,
            |s| {
                s.metadata.insert("k".into(), "v".into());
            },
            // Field boundaries are part of the encoding.
            |s| {
                s.role = "viewerac".into();
                s.scope = "ct".into();
            },
        ];
        for change in variants {
            let mut s = spec();
            change(&mut s);
            assert_ne!(content_hash(&s), base, "{s:?}");
        }
    }

    #[test]
    fn keys_are_checked() {
        assert!(Idempotency::new("retry-1", &spec()).is_ok());
        assert!(Idempotency::new(&"k".repeat(128), &spec()).is_ok());
        for bad in ["", " ", "a\nb", &"k".repeat(129)] {
            let err = Idempotency::new(bad, &spec()).unwrap_err();
            assert!(
                matches!(
                    err,
                    Refusal::Invalid {
                        field: "idempotency_key",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }
}
