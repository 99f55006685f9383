//! A certificate credential without OpenSSL: the client assertion Entra takes from an
//! application with a registered certificate (an RS256 JWT for the token endpoint, its
//! header naming the certificate by its SHA-256 thumbprint), signed here with the PEM
//! file's private key and handed to azure_identity's `ClientAssertionCredential`.

use std::fmt;

use azure_core::http::ClientMethodOptions;
use base64::Engine as _;
use sha2::Digest as _;

pub struct CertificateAssertion {
    client_id: String,
    /// The token endpoint: the assertion's audience.
    audience: String,
    thumbprint: String,
    key: jsonwebtoken::EncodingKey,
}

impl fmt::Debug for CertificateAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAssertion")
            .field("client_id", &self.client_id)
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl CertificateAssertion {
    /// From a PEM file holding the certificate and its (RSA) private key, as
    /// `az ad sp create-for-rbac --create-cert` writes it.
    pub fn from_pem(pem: &[u8], client_id: &str, audience: String) -> Result<Self, String> {
        let cert = rustls_pemfile::certs(&mut &pem[..])
            .next()
            .and_then(Result::ok)
            .ok_or("holds no CERTIFICATE block")?;
        let text = std::str::from_utf8(pem).map_err(|_| "is not PEM text")?;
        let key = ["PRIVATE KEY", "RSA PRIVATE KEY"]
            .iter()
            .find_map(|label| {
                let begin = format!("-----BEGIN {label}-----");
                let end = format!("-----END {label}-----");
                let from = text.find(&begin)?;
                let to = text[from..].find(&end)? + from + end.len();
                Some(&text[from..to])
            })
            .ok_or("holds no PRIVATE KEY block")?;
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(key.as_bytes())
            .map_err(|_| "its private key is not an RSA key (Entra signs assertions with RS256)")?;
        let thumbprint =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&cert));
        Ok(CertificateAssertion {
            client_id: client_id.to_owned(),
            audience,
            thumbprint,
            key,
        })
    }
}

#[async_trait::async_trait]
impl azure_identity::ClientAssertion for CertificateAssertion {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = serde_json::json!({
            "aud": self.audience,
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": now,
            "iat": now,
            "exp": now + 600,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.x5t_s256 = Some(self.thumbprint.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                format!("signing the client assertion: {e}"),
            )
        })
    }
}
