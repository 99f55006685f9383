//! The audit chain's canonical encoding (version 1).
//!
//! `canonical_bytes(event)` covers **every** field of an audit event, each length-prefixed,
//! with `details` as the exact stored bytes. The chain links events:
//! `hash = SHA-256(prev_hash ‖ canonical_bytes(event))`, the genesis `prev_hash` being 32
//! zero bytes. Checkpoints sign `(seq, hash, time)` with Ed25519.
//!
//! ```text
//! canonical_bytes = "JTSDAUD1"
//!                   field(id: 16 bytes, UUID)
//!                   i64be(at: microseconds since the Unix epoch)
//!                   field(kind) field(actor)
//!                   opt(request_id: 16 bytes) opt(i64be(request_version))
//!                   field(node) field(details)
//! field(b) = u32be(len(b)) ‖ b        opt(None) = 0x00    opt(Some(b)) = 0x01 ‖ field(b)
//! checkpoint_message = "JTSDCKP1" ‖ i64be(seq) ‖ hash(32) ‖ i64be(at microseconds)
//! ```

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const GENESIS: [u8; 32] = [0; 32];
const EVENT_MAGIC: &[u8; 8] = b"JTSDAUD1";
const CHECKPOINT_MAGIC: &[u8; 8] = b"JTSDCKP1";

/// An audit event exactly as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: Uuid,
    /// Microseconds since the Unix epoch (the database clock of the committing statement).
    pub at_micros: i64,
    pub kind: String,
    pub actor: String,
    pub request_id: Option<Uuid>,
    pub request_version: Option<i64>,
    pub node: String,
    /// The stored text, byte for byte.
    pub details: String,
}

fn field(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn opt(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            field(out, b);
        }
    }
}

pub fn canonical_bytes(e: &AuditRecord) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(96 + e.kind.len() + e.actor.len() + e.node.len() + e.details.len());
    out.extend_from_slice(EVENT_MAGIC);
    field(&mut out, e.id.as_bytes());
    out.extend_from_slice(&e.at_micros.to_be_bytes());
    field(&mut out, e.kind.as_bytes());
    field(&mut out, e.actor.as_bytes());
    opt(
        &mut out,
        e.request_id.as_ref().map(|u| u.as_bytes().as_slice()),
    );
    let version = e.request_version.map(i64::to_be_bytes);
    opt(&mut out, version.as_ref().map(|v| v.as_slice()));
    field(&mut out, e.node.as_bytes());
    field(&mut out, e.details.as_bytes());
    out
}

/// `SHA-256(prev_hash ‖ canonical_bytes(event))`.
pub fn chain_hash(prev_hash: &[u8; 32], e: &AuditRecord) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(canonical_bytes(e));
    h.finalize().into()
}

/// One link of the chain as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainLink {
    pub seq: i64,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

/// The first thing wrong with a chain, if any.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BrokenLink {
    #[error(
        "chain entry {seq}: expected sequence number {expected} (entries missing or reordered)"
    )]
    SequenceGap { seq: i64, expected: i64 },
    #[error("chain entry {seq}: prev_hash does not match the hash of entry {}", seq - 1)]
    PrevHashMismatch { seq: i64 },
    #[error("chain entry {seq}: its event is missing")]
    EventMissing { seq: i64 },
    #[error("chain entry {seq}: the hash does not match its event (event or chain edited)")]
    HashMismatch { seq: i64 },
}

impl BrokenLink {
    pub fn seq(&self) -> i64 {
        match self {
            BrokenLink::SequenceGap { seq, .. }
            | BrokenLink::PrevHashMismatch { seq }
            | BrokenLink::EventMissing { seq }
            | BrokenLink::HashMismatch { seq } => *seq,
        }
    }
}

/// Incremental verifier: feed links in `seq` order starting at 1.
#[derive(Clone, Debug)]
pub struct ChainVerifier {
    expected_seq: i64,
    prev: [u8; 32],
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            expected_seq: 1,
            prev: GENESIS,
        }
    }
}

impl ChainVerifier {
    /// Continues a verification from a trusted point (e.g. a verified checkpoint).
    pub fn resume(after_seq: i64, hash: [u8; 32]) -> Self {
        ChainVerifier {
            expected_seq: after_seq + 1,
            prev: hash,
        }
    }

    pub fn check(
        &mut self,
        link: &ChainLink,
        event: Option<&AuditRecord>,
    ) -> Result<(), BrokenLink> {
        let seq = link.seq;
        if seq != self.expected_seq {
            return Err(BrokenLink::SequenceGap {
                seq,
                expected: self.expected_seq,
            });
        }
        if link.prev_hash.as_slice() != self.prev.as_slice() {
            return Err(BrokenLink::PrevHashMismatch { seq });
        }
        let event = event.ok_or(BrokenLink::EventMissing { seq })?;
        let h = chain_hash(&self.prev, event);
        if link.hash.as_slice() != h.as_slice() {
            return Err(BrokenLink::HashMismatch { seq });
        }
        self.prev = h;
        self.expected_seq += 1;
        Ok(())
    }

    pub fn last_seq(&self) -> i64 {
        self.expected_seq - 1
    }

    pub fn last_hash(&self) -> [u8; 32] {
        self.prev
    }
}

pub fn checkpoint_message(seq: i64, hash: &[u8; 32], at_micros: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(56);
    m.extend_from_slice(CHECKPOINT_MAGIC);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m.extend_from_slice(&at_micros.to_be_bytes());
    m
}

pub fn sign_checkpoint(key: &SigningKey, seq: i64, hash: &[u8; 32], at_micros: i64) -> [u8; 64] {
    key.sign(&checkpoint_message(seq, hash, at_micros))
        .to_bytes()
}

pub fn verify_checkpoint(
    key: &VerifyingKey,
    seq: i64,
    hash: &[u8; 32],
    at_micros: i64,
    signature: &[u8],
) -> bool {
    let Ok(sig) = Signature::from_slice(signature) else {
        return false;
    };
    key.verify(&checkpoint_message(seq, hash, at_micros), &sig)
        .is_ok()
}

/// A point of the log a verifier already trusts: the log must still contain it, with the
/// same hash. This is how a rewrite that recomputes the (public, unkeyed) chain and deletes
/// the checkpoints that no longer match is caught, as transparency-log clients catch a
/// forked log: by remembering what they saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub kind: AnchorKind,
    pub seq: i64,
    pub hash: [u8; 32],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnchorKind {
    /// The newest checkpoint an earlier verification found intact.
    PinnedCheckpoint,
    /// A checkpoint held from elsewhere (a sink's `audit.checkpoint` notice).
    GivenCheckpoint,
    /// The last chain entry an earlier verification saw.
    SeenEntry,
}

impl std::fmt::Display for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            AnchorKind::PinnedCheckpoint => write!(f, "pinned checkpoint {}", self.seq),
            AnchorKind::GivenCheckpoint => write!(f, "the given checkpoint {}", self.seq),
            AnchorKind::SeenEntry => {
                write!(
                    f,
                    "chain entry {} seen by an earlier verification",
                    self.seq
                )
            }
        }
    }
}

impl Anchor {
    /// What is wrong with a log against this anchor, if anything. `chain_length` is the
    /// log's last sequence number, `verified_through` how far the chain verified from
    /// genesis, and `hash_there` the hash the verifier computed at the anchor's `seq`.
    pub fn problem(
        &self,
        chain_length: i64,
        verified_through: i64,
        hash_there: Option<&[u8; 32]>,
    ) -> Option<String> {
        match hash_there {
            Some(h) if h == &self.hash => None,
            Some(_) => Some(format!(
                "the log disagrees with {self}: the chain's hash there is different, so entries up to {} were rewritten or replaced",
                self.seq
            )),
            None if chain_length < self.seq => Some(format!(
                "the log ends at entry {chain_length}, before {self}: entries were removed from its end"
            )),
            None if verified_through < self.seq => Some(format!(
                "{self} could not be checked: the chain breaks before it (at entry {})",
                verified_through + 1
            )),
            None => Some(format!(
                "{self}: no hash was computed at entry {}",
                self.seq
            )),
        }
    }

    /// A pinned or given checkpoint must still be among the log's signed checkpoints:
    /// they are append-only, so one that is gone was deleted. `listed` says whether the
    /// log lists a checkpoint with this sequence number and hash.
    pub fn checkpoint_gone(&self, listed: bool) -> Option<String> {
        let checkpoint = matches!(
            self.kind,
            AnchorKind::PinnedCheckpoint | AnchorKind::GivenCheckpoint
        );
        (checkpoint && !listed).then(|| {
            format!(
                "{self} is no longer among the log's signed checkpoints: they are append-only, so it was deleted or replaced"
            )
        })
    }

    pub fn from_v1(a: &crate::v1::Anchor) -> Result<Anchor, String> {
        use crate::v1::anchor::Kind;
        let kind = match Kind::try_from(a.kind) {
            Ok(Kind::PinnedCheckpoint) => AnchorKind::PinnedCheckpoint,
            Ok(Kind::GivenCheckpoint) => AnchorKind::GivenCheckpoint,
            Ok(Kind::SeenEntry) => AnchorKind::SeenEntry,
            _ => return Err(format!("anchor {}: kind is not set", a.seq)),
        };
        if a.seq < 1 {
            return Err(format!("anchor {}: seq starts at 1", a.seq));
        }
        let hash: [u8; 32] = a.hash.as_slice().try_into().map_err(|_| {
            format!(
                "anchor {}: the hash is {} bytes, not 32",
                a.seq,
                a.hash.len()
            )
        })?;
        Ok(Anchor {
            kind,
            seq: a.seq,
            hash,
        })
    }

    pub fn to_v1(&self) -> crate::v1::Anchor {
        use crate::v1::anchor::Kind;
        crate::v1::Anchor {
            kind: match self.kind {
                AnchorKind::PinnedCheckpoint => Kind::PinnedCheckpoint,
                AnchorKind::GivenCheckpoint => Kind::GivenCheckpoint,
                AnchorKind::SeenEntry => Kind::SeenEntry,
            } as i32,
            seq: self.seq,
            hash: self.hash.to_vec(),
        }
    }
}

/// Why a log that must be covered by a signed checkpoint is not, if it is not.
/// `verifying` says whether a key to check signatures with is at hand.
pub fn missing_checkpoint(verifying: bool, valid_checkpoints: usize) -> Option<String> {
    if !verifying {
        return Some(
            "no key to check checkpoints with: the server signs none (it has no audit.signing_key) — verify with the public key, or without requiring a checkpoint to accept the chain alone".into(),
        );
    }
    (valid_checkpoints == 0).then(|| {
        "no signed checkpoint covers the log: the first is signed within checkpoint_interval_seconds of the first event — wait for it, or verify without requiring a checkpoint to accept the chain alone".into()
    })
}

/// A key id: the first 8 bytes of SHA-256 of the public key, hex.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector_event() -> AuditRecord {
        AuditRecord {
            id: Uuid::parse_str("01900000-0000-7000-8000-000000000001").unwrap(),
            at_micros: 1_767_225_600_000_000, // 2026-01-01T00:00:00Z
            kind: "request.created".into(),
            actor: "alice".into(),
            request_id: Some(Uuid::parse_str("01900000-0000-7000-8000-0000000000aa").unwrap()),
            request_version: Some(1),
            node: "node-a".into(),
            details: r#"{"from":null,"to":"PENDING"}"#.into(),
        }
    }

    #[test]
    fn an_anchor_names_what_the_log_no_longer_agrees_with() {
        let a = Anchor {
            kind: AnchorKind::PinnedCheckpoint,
            seq: 12,
            hash: [1; 32],
        };
        assert_eq!(a.problem(20, 20, Some(&[1; 32])), None);
        let rewritten = a.problem(20, 20, Some(&[2; 32])).unwrap();
        assert!(
            rewritten.starts_with("the log disagrees with pinned checkpoint 12"),
            "{rewritten}"
        );
        let short = a.problem(9, 9, None).unwrap();
        assert!(
            short.starts_with("the log ends at entry 9, before pinned checkpoint 12"),
            "{short}"
        );
        let broken = a.problem(20, 4, None).unwrap();
        assert!(broken.contains("breaks before it (at entry 5)"), "{broken}");
        let seen = Anchor {
            kind: AnchorKind::SeenEntry,
            ..a.clone()
        };
        assert!(
            seen.problem(3, 3, None)
                .unwrap()
                .contains("chain entry 12 seen by an earlier verification")
        );
        assert_eq!(Anchor::from_v1(&a.to_v1()), Ok(a.clone()));
        let bad = crate::v1::Anchor {
            hash: vec![0; 31],
            ..a.to_v1()
        };
        assert_eq!(
            Anchor::from_v1(&bad).unwrap_err(),
            "anchor 12: the hash is 31 bytes, not 32"
        );
        assert!(missing_checkpoint(true, 1).is_none());
        assert!(
            missing_checkpoint(true, 0)
                .unwrap()
                .contains("no signed checkpoint covers the log")
        );
        assert!(
            missing_checkpoint(false, 3)
                .unwrap()
                .contains("the public key")
        );
        assert!(a.checkpoint_gone(true).is_none());
        assert!(
            a.checkpoint_gone(false)
                .unwrap()
                .starts_with("pinned checkpoint 12 is no longer among")
        );
        assert!(
            seen.checkpoint_gone(false).is_none(),
            "an entry is no checkpoint"
        );
    }

    /// The fixed test vector: changing the encoding breaks every stored chain.
    #[test]
    fn canonical_encoding_matches_the_published_test_vector() {
        let e = vector_event();
        assert_eq!(
            hex::encode(canonical_bytes(&e)),
            concat!(
                "4a54534441554431",
                "00000010",
                "01900000000070008000000000000001",
                "0006474846204000",
                "0000000f",
                "726571756573742e63726561746564",
                "00000005",
                "616c696365",
                "01",
                "00000010",
                "019000000000700080000000000000aa",
                "01",
                "00000008",
                "0000000000000001",
                "00000006",
                "6e6f64652d61",
                "0000001c",
                "7b2266726f6d223a6e756c6c2c22746f223a2250454e44494e47227d",
            )
        );
        assert_eq!(hex::encode(chain_hash(&GENESIS, &e)), VECTOR_HASH);
    }

    /// Computed independently (Python hashlib over the encoding above).
    const VECTOR_HASH: &str = "e1dfb758532e231132df378acc289312b492ca1973e3f742ac21307177dfd48f";

    #[test]
    fn every_field_changes_the_hash() {
        let base = vector_event();
        let h = chain_hash(&GENESIS, &base);
        let mut variants = Vec::new();
        let mut e = base.clone();
        e.id = Uuid::nil();
        variants.push(e);
        let mut e = base.clone();
        e.at_micros += 1;
        variants.push(e);
        let mut e = base.clone();
        e.kind.push('x');
        variants.push(e);
        let mut e = base.clone();
        e.actor = "bob".into();
        variants.push(e);
        let mut e = base.clone();
        e.request_id = None;
        variants.push(e);
        let mut e = base.clone();
        e.request_version = Some(2);
        variants.push(e);
        let mut e = base.clone();
        e.node = "node-b".into();
        variants.push(e);
        let mut e = base.clone();
        // Same JSON meaning, different bytes: the chain hashes bytes.
        e.details = r#"{"to":"PENDING","from":null}"#.into();
        variants.push(e);
        for v in variants {
            assert_ne!(chain_hash(&GENESIS, &v), h, "{v:?}");
        }
        // Field boundaries are unambiguous: moving a byte between kind and actor differs.
        let mut a = base.clone();
        a.kind = "ab".into();
        a.actor = "c".into();
        let mut b = base;
        b.kind = "a".into();
        b.actor = "bc".into();
        assert_ne!(canonical_bytes(&a), canonical_bytes(&b));
    }

    #[test]
    fn verifier_names_the_first_broken_link() {
        let mut events = Vec::new();
        let mut links = Vec::new();
        let mut prev = GENESIS;
        for i in 1..=5 {
            let mut e = vector_event();
            e.request_version = Some(i);
            let h = chain_hash(&prev, &e);
            links.push(ChainLink {
                seq: i,
                prev_hash: prev.to_vec(),
                hash: h.to_vec(),
            });
            events.push(e);
            prev = h;
        }
        let run = |links: &[ChainLink], events: &[AuditRecord]| {
            let mut v = ChainVerifier::default();
            for (l, e) in links.iter().zip(events) {
                v.check(l, Some(e))?;
            }
            Ok::<_, BrokenLink>(v.last_seq())
        };
        assert_eq!(run(&links, &events), Ok(5));
        let mut edited = events.clone();
        edited[2].details = "{}".into();
        assert_eq!(
            run(&links, &edited),
            Err(BrokenLink::HashMismatch { seq: 3 })
        );
        let mut reordered = events.clone();
        reordered.swap(1, 3);
        assert_eq!(
            run(&links, &reordered),
            Err(BrokenLink::HashMismatch { seq: 2 })
        );
        let gap: Vec<ChainLink> = links.iter().filter(|l| l.seq != 2).cloned().collect();
        let gap_events: Vec<AuditRecord> = events
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, e)| e.clone())
            .collect();
        assert_eq!(
            run(&gap, &gap_events),
            Err(BrokenLink::SequenceGap {
                seq: 3,
                expected: 2
            })
        );
    }

    #[test]
    fn checkpoints_verify_only_with_the_right_key_and_content() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let h = chain_hash(&GENESIS, &vector_event());
        let sig = sign_checkpoint(&key, 1, &h, 42);
        let pk = key.verifying_key();
        assert!(verify_checkpoint(&pk, 1, &h, 42, &sig));
        assert!(!verify_checkpoint(&pk, 2, &h, 42, &sig));
        assert!(!verify_checkpoint(&pk, 1, &h, 43, &sig));
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        assert!(!verify_checkpoint(&other, 1, &h, 42, &sig));
        assert_eq!(key_id(&pk).len(), 16);
    }
}
