//! The checkpoint signing key: an Ed25519 key in a PKCS#8 PEM file, readable only by its
//! owner. It is loaded at start and never written to the database or the logs.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::RngCore;

#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    #[error("cannot read the audit signing key {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not an Ed25519 key in PKCS#8 PEM form (generate one with `jitsudod keys generate`)"
    )]
    Format { path: PathBuf },
    #[error("cannot write the audit signing key {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub fn load_signing_key(path: &Path) -> Result<SigningKey, AuditKeyError> {
    let pem = std::fs::read_to_string(path).map_err(|source| AuditKeyError::Read {
        path: path.into(),
        source,
    })?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|_| AuditKeyError::Format { path: path.into() })
}

pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, AuditKeyError> {
    let pem = std::fs::read_to_string(path).map_err(|source| AuditKeyError::Read {
        path: path.into(),
        source,
    })?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|_| AuditKeyError::Format { path: path.into() })
}

pub fn public_key_pem(key: &SigningKey) -> String {
    key.verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap_or_default()
}

/// Creates a new key file (mode 0600); refuses to overwrite an existing one.
pub fn generate_signing_key(path: &Path) -> Result<SigningKey, AuditKeyError> {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| AuditKeyError::Format { path: path.into() })?;
    let werr = |source| AuditKeyError::Write {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(werr)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(werr)?;
    f.write_all(pem.as_bytes()).map_err(werr)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_round_trips_and_is_private_to_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.pem");
        let key = generate_signing_key(&path).unwrap();
        assert_eq!(load_signing_key(&path).unwrap().to_bytes(), key.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert!(
            generate_signing_key(&path).is_err(),
            "never overwrites a key"
        );
        let pub_path = dir.path().join("audit.pub");
        std::fs::write(&pub_path, public_key_pem(&key)).unwrap();
        assert_eq!(load_verifying_key(&pub_path).unwrap(), key.verifying_key());
        std::fs::write(&pub_path, "garbage").unwrap();
        assert!(matches!(
            load_verifying_key(&pub_path),
            Err(AuditKeyError::Format { .. })
        ));
    }
}
