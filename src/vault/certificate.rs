//! Client-certificate authentication as a client assertion.
//!
//! `azure_identity`'s own `ClientCertificateCredential` needs OpenSSL (and
//! PKCS#12 input); kvsync instead signs the standard Entra certificate
//! assertion itself with `jsonwebtoken` (RS256, `x5t#S256` thumbprint header)
//! from a PEM bundle and hands it to the official `ClientAssertionCredential`.
//! This is the one deliberately hand-written piece of the auth path.

use std::time::{SystemTime, UNIX_EPOCH};

use azure_core::error::ErrorKind;
use azure_core::http::ClientMethodOptions;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

/// Signs short-lived assertions for one app registration.
pub struct CertificateAssertion {
    key: EncodingKey,
    thumbprint: String,
    client_id: String,
    audience: String,
}

impl std::fmt::Debug for CertificateAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CertificateAssertion(client {}, x5t#S256 {})",
            self.client_id, self.thumbprint
        )
    }
}

impl CertificateAssertion {
    /// `pem` holds the certificate and its RSA private key; `audience` is the token endpoint.
    pub fn new(pem: &str, client_id: &str, audience: &str) -> azure_core::Result<Self> {
        let invalid = |what: &str| {
            azure_core::Error::with_message(
                ErrorKind::Credential,
                format!("client certificate: {what}"),
            )
        };
        let cert = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| invalid("no CERTIFICATE block in the PEM"))?;
        let key = EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|_| invalid("no usable RSA PRIVATE KEY block in the PEM"))?;
        Ok(CertificateAssertion {
            key,
            thumbprint: URL_SAFE_NO_PAD.encode(Sha256::digest(cert.as_ref())),
            client_id: client_id.to_owned(),
            audience: audience.to_owned(),
        })
    }

    fn sign(&self) -> azure_core::Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut header = Header::new(Algorithm::RS256);
        header.x5t_s256 = Some(self.thumbprint.clone());
        let claims = serde_json::json!({
            "aud": self.audience, "iss": self.client_id, "sub": self.client_id,
            "jti": hex::encode(rand::random::<[u8; 16]>()), "nbf": now, "iat": now, "exp": now + 600,
        });
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| {
            azure_core::Error::with_message(
                ErrorKind::Credential,
                format!("signing the assertion: {e}"),
            )
        })
    }
}

#[async_trait::async_trait]
impl azure_identity::ClientAssertion for CertificateAssertion {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        self.sign()
    }
}
