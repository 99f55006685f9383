//! Request ids (UUIDv7, time-ordered), deterministic grant ids and the shard function.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub Uuid);

impl RequestId {
    pub fn new() -> Self {
        RequestId(Uuid::now_v7())
    }

    pub fn shard(&self, shards: u32) -> u32 {
        shard_of(&self.0, shards)
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for RequestId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(RequestId)
    }
}

/// `shard = hash(id) mod N` with FNV-1a over the 16 bytes: stable across versions and
/// platforms, because the shard of a stored request must never change.
pub fn shard_of(id: &Uuid, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(shards.max(1))) as u32
}

/// The `n`-th grant of a request has a fixed id, so a grant intent re-issued after a crash
/// carries the same idempotency key even if only the request id survived.
pub fn grant_id_for(request: RequestId, n: usize) -> Uuid {
    let mut d = Sha256::new();
    d.update(b"jitsudo-grant-v1");
    d.update(request.0.as_bytes());
    d.update((n as u64).to_be_bytes());
    let bytes: [u8; 16] = d.finalize()[..16].try_into().unwrap_or([0; 16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_is_stable_and_in_range() {
        let id = Uuid::parse_str("0190d1a0-0000-7000-8000-000000000001").unwrap();
        assert_eq!(shard_of(&id, 64), shard_of(&id, 64));
        for _ in 0..1000 {
            assert!(RequestId::new().shard(64) < 64);
        }
    }

    #[test]
    fn grant_ids_are_deterministic_and_distinct() {
        let r = RequestId::new();
        assert_eq!(grant_id_for(r, 0), grant_id_for(r, 0));
        assert_ne!(grant_id_for(r, 0), grant_id_for(r, 1));
        assert_ne!(grant_id_for(r, 0), grant_id_for(RequestId::new(), 0));
    }
}
