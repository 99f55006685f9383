//! What `jitsudo audit verify` remembers of a log it found intact, as transparency-log
//! clients do: the newest signed checkpoint it verified and the last chain entry it saw,
//! per server, in the state dir (0600) or in a file an auditor keeps (`--pin FILE`). The
//! next verification fails when the log no longer contains them with the same hashes —
//! which is how a rewrite that recomputes the chain and deletes checkpoints is caught.
//!
//! Also the checkpoint a sink delivered (`audit.checkpoint`), read for `--checkpoint FILE`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use jitsudo_proto::audit::{Anchor, AnchorKind, key_id, verify_checkpoint};
use serde::{Deserialize, Serialize};

use crate::config::write_private;
use crate::error::{CliError, CliResult};

/// A signed checkpoint, in the form the sinks deliver it (hashes and signature in hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint {
    pub seq: i64,
    pub hash: String,
    /// The signed time; `at_micros` is exactly what the signature covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_micros: Option<i64>,
    pub key_id: String,
    pub signature: String,
}

impl SignedCheckpoint {
    fn at_micros(&self) -> Option<i64> {
        self.at_micros.or(self.at.map(|t| t.timestamp_micros()))
    }

    fn hash(&self, what: &str) -> CliResult<[u8; 32]> {
        hex::decode(&self.hash)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| CliError::usage(format!("{what}: `hash` is not 32 bytes of hex")))
    }

    /// Checks the signature with `key`; the anchor it gives when it holds.
    pub fn anchor(&self, key: &VerifyingKey, kind: AnchorKind, what: &str) -> CliResult<Anchor> {
        let hash = self.hash(what)?;
        let at = self.at_micros().ok_or_else(|| {
            CliError::usage(format!(
                "{what}: the checkpoint has neither `at` nor `at_micros`"
            ))
        })?;
        let signature = hex::decode(&self.signature).unwrap_or_default();
        if self.key_id != key_id(key) {
            return Err(CliError::new(
                crate::error::Exit::Failure,
                format!(
                    "{what}: checkpoint {} is signed by key {}, not by the key used here ({}) — pass the --public-key it was signed with",
                    self.seq,
                    self.key_id,
                    key_id(key)
                ),
            ));
        }
        if !verify_checkpoint(key, self.seq, &hash, at, &signature) {
            return Err(CliError::new(
                crate::error::Exit::Failure,
                format!(
                    "{what}: the signature of checkpoint {} does not verify: it was altered or is not the server's",
                    self.seq
                ),
            ));
        }
        Ok(Anchor {
            kind,
            seq: self.seq,
            hash,
        })
    }

    /// Reads a checkpoint a sink delivered: the `audit.checkpoint` payload itself, or a
    /// webhook body carrying it under `payload`.
    pub fn read(path: &Path) -> CliResult<SignedCheckpoint> {
        let what = format!("--checkpoint {}", path.display());
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("cannot read {what}: {e}")))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| CliError::usage(format!("{what} is not JSON: {e}")))?;
        let inner = match value.get("payload") {
            Some(serde_json::Value::String(s)) => serde_json::from_str(s)
                .map_err(|e| CliError::usage(format!("{what}: `payload` is not JSON: {e}")))?,
            Some(p) => p.clone(),
            None => value,
        };
        serde_json::from_value(inner).map_err(|e| {
            CliError::usage(format!(
                "{what} is not an audit.checkpoint notice ({e}): it needs seq, hash, at or at_micros, key_id and signature"
            ))
        })
    }
}

/// The last chain entry a verification saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenEntry {
    pub seq: i64,
    pub hash: String,
}

/// What one server's log was, the last time it verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<SignedCheckpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<SeenEntry>,
    pub verified_at: DateTime<Utc>,
}

impl Pin {
    /// The anchors this pin demands of the log. The pinned checkpoint's signature is
    /// checked again when the key it names is at hand (a damaged pin is refused rather
    /// than trusted); signed by another key, its hash alone pins the log.
    pub fn anchors(&self, key: Option<&VerifyingKey>, what: &str) -> CliResult<Vec<Anchor>> {
        let mut out = Vec::new();
        if let Some(cp) = &self.checkpoint {
            let anchor = match key {
                Some(k) if cp.key_id == key_id(k) => {
                    cp.anchor(k, AnchorKind::PinnedCheckpoint, what)?
                }
                // Signed by another key than the one used now: the hash still pins the log.
                _ => Anchor {
                    kind: AnchorKind::PinnedCheckpoint,
                    seq: cp.seq,
                    hash: cp.hash(what)?,
                },
            };
            out.push(anchor);
        }
        if let Some(seen) = &self.seen {
            let hash = hex::decode(&seen.hash)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    CliError::usage(format!(
                        "{what}: the seen entry's hash is not 32 bytes of hex"
                    ))
                })?;
            out.push(Anchor {
                kind: AnchorKind::SeenEntry,
                seq: seen.seq,
                hash,
            });
        }
        Ok(out)
    }

    /// This pin moved forward to what an intact verification found: a pin never goes
    /// back (a newer checkpoint deleted since is no reason to forget it was seen).
    pub fn advanced(
        old: Option<&Pin>,
        server: &str,
        checkpoint: Option<SignedCheckpoint>,
        seen: SeenEntry,
    ) -> Pin {
        let old_cp = old.and_then(|p| p.checkpoint.clone());
        let checkpoint = match (old_cp, checkpoint) {
            (Some(o), Some(n)) if o.seq >= n.seq => Some(o),
            (o, None) => o,
            (_, n) => n,
        };
        let seen = match old.and_then(|p| p.seen.clone()) {
            Some(o) if o.seq > seen.seq => o,
            _ => seen,
        };
        Pin {
            server: server.to_owned(),
            checkpoint,
            seen: Some(seen),
            verified_at: Utc::now(),
        }
    }
}

/// The server a pin is for, spelled one way: scheme, lower-case host and port (the
/// default one written out), so `https://H/` and `https://h:443` share a pin.
pub fn log_key(server: &str) -> String {
    match reqwest::Url::parse(server) {
        Ok(u) => match (u.host_str(), u.port_or_known_default()) {
            (Some(h), Some(p)) => format!("{}://{}:{p}", u.scheme(), h.to_ascii_lowercase()),
            _ => server.to_owned(),
        },
        Err(_) => server.to_owned(),
    }
}

/// Where pins are kept: one file per auditor (`--pin`), or the CLI's state, per server.
pub enum PinFile {
    Own(PathBuf),
    State(PathBuf),
}

#[derive(Default, Serialize, Deserialize)]
struct PinStore {
    #[serde(default)]
    servers: BTreeMap<String, Pin>,
}

impl PinFile {
    pub fn path(&self) -> &Path {
        match self {
            PinFile::Own(p) | PinFile::State(p) => p,
        }
    }

    fn read(path: &Path) -> CliResult<Option<Vec<u8>>> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CliError::failure(format!(
                "cannot read the pin file {}: {e}",
                path.display()
            ))),
        }
    }

    fn damaged(path: &Path, e: serde_json::Error) -> CliError {
        CliError::failure(format!(
            "the pin file {} is damaged ({e}): restore it from a copy — deleting it forgets what this log was",
            path.display()
        ))
    }

    /// The pin for `server`, if one was made. A pin file of another server is refused.
    pub fn load(&self, server: &str) -> CliResult<Option<Pin>> {
        let server = &log_key(server);
        let Some(bytes) = Self::read(self.path())? else {
            return Ok(None);
        };
        match self {
            PinFile::Own(path) => {
                let pin: Pin =
                    serde_json::from_slice(&bytes).map_err(|e| Self::damaged(path, e))?;
                if log_key(&pin.server) != *server {
                    return Err(CliError::usage(format!(
                        "the pin file {} is for {}, not {server}",
                        path.display(),
                        pin.server
                    )));
                }
                Ok(Some(pin))
            }
            PinFile::State(path) => {
                let store: PinStore =
                    serde_json::from_slice(&bytes).map_err(|e| Self::damaged(path, e))?;
                Ok(store.servers.get(server).cloned())
            }
        }
    }

    /// Moves the pin for `server` forward to what an intact verification found, under a
    /// lock and from the pin as it is on disk now, so that two verifications at once never
    /// move it back; answers the pin as saved.
    pub fn advance(
        &self,
        server: &str,
        checkpoint: Option<SignedCheckpoint>,
        seen: SeenEntry,
    ) -> CliResult<Pin> {
        let path = self.path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| CliError::failure(format!("cannot create {}: {e}", dir.display())))?;
        }
        let lock_path = path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| CliError::failure(format!("cannot open {}: {e}", lock_path.display())))?;
        lock.lock()
            .map_err(|e| CliError::failure(format!("cannot lock {}: {e}", lock_path.display())))?;
        let current = self.load(server)?;
        let next = Pin::advanced(current.as_ref(), &log_key(server), checkpoint, seen);
        self.save(&next)?;
        drop(lock);
        Ok(next)
    }

    fn save(&self, pin: &Pin) -> CliResult<()> {
        let encode = |r: serde_json::Result<Vec<u8>>| {
            r.map_err(|e| CliError::failure(format!("cannot encode the pin: {e}")))
        };
        let bytes = match self {
            PinFile::Own(_) => encode(serde_json::to_vec_pretty(pin))?,
            PinFile::State(path) => {
                let mut store: PinStore = match Self::read(path)? {
                    Some(b) => serde_json::from_slice(&b).map_err(|e| Self::damaged(path, e))?,
                    None => PinStore::default(),
                };
                store.servers.insert(pin.server.clone(), pin.clone());
                encode(serde_json::to_vec_pretty(&store))?
            }
        };
        write_private(self.path(), &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(seq: i64) -> SignedCheckpoint {
        SignedCheckpoint {
            seq,
            hash: hex::encode([seq as u8; 32]),
            at: None,
            at_micros: Some(1),
            key_id: "k".into(),
            signature: String::new(),
        }
    }

    fn seen(seq: i64) -> SeenEntry {
        SeenEntry {
            seq,
            hash: hex::encode([seq as u8; 32]),
        }
    }

    #[test]
    fn a_pin_only_moves_forward() {
        let first = Pin::advanced(None, "s", Some(cp(10)), seen(12));
        assert_eq!(first.checkpoint.as_ref().map(|c| c.seq), Some(10));
        let later = Pin::advanced(Some(&first), "s", Some(cp(20)), seen(25));
        assert_eq!(
            (
                later.checkpoint.as_ref().map(|c| c.seq),
                later.seen.as_ref().map(|s| s.seq)
            ),
            (Some(20), Some(25))
        );
        // Newer checkpoints gone (the pinned one still in the log): the pin stays.
        let kept = Pin::advanced(Some(&later), "s", Some(cp(10)), seen(25));
        assert_eq!(kept.checkpoint.as_ref().map(|c| c.seq), Some(20));
        let none = Pin::advanced(Some(&later), "s", None, seen(30));
        assert_eq!(none.checkpoint.as_ref().map(|c| c.seq), Some(20));
        assert_eq!(none.seen.map(|s| s.seq), Some(30));
    }

    #[test]
    fn state_pins_are_per_server_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let file = PinFile::State(dir.path().join("audit-pins.json"));
        assert_eq!(file.load("a").unwrap(), None);
        let a = Pin::advanced(None, "a", Some(cp(3)), seen(4));
        let b = Pin::advanced(None, "b", None, seen(9));
        file.save(&a).unwrap();
        file.save(&b).unwrap();
        // Spelled another way, the same server.
        let c = Pin::advanced(None, &log_key("HTTPS://Jitsudo.example/"), None, seen(1));
        assert_eq!(c.server, "https://jitsudo.example:443");
        assert_eq!(log_key("https://jitsudo.example:443"), c.server);
        assert_eq!(file.load("a").unwrap(), Some(a.clone()));
        assert_eq!(file.load("b").unwrap(), Some(b));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let own = PinFile::Own(dir.path().join("mine.json"));
        own.save(&a).unwrap();
        let err = own.load("b").unwrap_err().to_string();
        assert!(err.contains("is for a, not b"), "{err}");
        // Advancing starts from the pin on disk, not from an older copy.
        let state = PinFile::State(dir.path().join("state/audit-pins.json"));
        let url = "https://h:8443";
        state.advance(url, Some(cp(20)), seen(25)).unwrap();
        let behind = state.advance(url, Some(cp(10)), seen(12)).unwrap();
        assert_eq!(
            (behind.checkpoint.map(|c| c.seq), behind.seen.map(|s| s.seq)),
            (Some(20), Some(25))
        );
    }
}
