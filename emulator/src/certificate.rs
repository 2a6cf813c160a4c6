//! A certificate with its private key, in the two forms Key Vault keeps and
//! serves a certificate-backed secret in:
//!
//! ```text
//!  import value ──parse──▶ CertificateWithKey { chain: [leaf DER, issuer DER, …], key: PKCS#8 DER }
//!   PEM text (key + certificates), or base64 of it│
//!   base64 PKCS#12 (password or none)             ├─▶ application/x-pem-file  key, then the chain (leaf first)
//!                                                 ├─▶ application/x-pkcs12    base64 PKCS#12, no password
//!                                                 └─▶ details: x5t, subject, validity, key type and size
//! ```
//!
//! The private key must belong to the leaf certificate (Key Vault refuses the
//! import otherwise). As in Key Vault, a PEM import needs the key as PKCS#8
//! (`BEGIN PRIVATE KEY`); RSA and EC keys are accepted. PKCS#12 parsing and
//! writing use the `p12-keystore` crate; certificates are read with `x509-parser`.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use p12_keystore::{
    Certificate, KeyStore, KeyStoreEntry, Pkcs12ImportPolicy, PrivateKey, PrivateKeyChain,
};
use rcgen::PublicKeyData;
use rustls::pki_types::pem::{PemObject, SectionKind};
use sha1::{Digest, Sha1};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

/// The two content types of certificate-backed secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFormat {
    Pkcs12,
    Pem,
}

impl SecretFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            SecretFormat::Pkcs12 => "application/x-pkcs12",
            SecretFormat::Pem => "application/x-pem-file",
        }
    }

    pub fn from_content_type(content_type: &str) -> Option<Self> {
        [SecretFormat::Pkcs12, SecretFormat::Pem]
            .into_iter()
            .find(|format| format.content_type().eq_ignore_ascii_case(content_type))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("The PEM contains no CERTIFICATE block.")]
    NoCertificate,
    #[error("The PEM contains no PKCS#8 private key (-----BEGIN PRIVATE KEY-----).")]
    NoPrivateKey,
    #[error("The PEM is not valid: {0}.")]
    Pem(String),
    #[error("The certificate value is neither PEM nor base64 (of PEM or PKCS#12 data).")]
    NotBase64,
    #[error("The PKCS#12 data cannot be read (wrong password or damaged data): {0}.")]
    Pkcs12(String),
    #[error("The PKCS#12 data holds no private key with its certificate.")]
    NoKeyChain,
    #[error("A certificate cannot be parsed: {0}.")]
    Certificate(String),
    #[error("The private key cannot be used: {0}.")]
    Key(String),
    #[error("The private key does not match the certificate's public key.")]
    KeyMismatch,
    #[error("Only RSA and EC keys are supported.")]
    UnsupportedKeyType,
}

/// A certificate chain (leaf first, DER) and the leaf's private key (PKCS#8 DER).
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateWithKey {
    chain: Vec<Vec<u8>>,
    key: Vec<u8>,
}

impl std::fmt::Debug for CertificateWithKey {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CertificateWithKey({} certificates)", self.chain.len())
    }
}

/// The key type of a certificate, as a certificate policy's `key_props` states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyType {
    Rsa { bits: usize },
    Ec { curve: &'static str, bits: usize },
}

/// What the certificates surface reports about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateDetails {
    /// Base64url SHA-1 of the leaf's DER (`x5t`).
    pub x5t: String,
    /// Base64 DER of the leaf (`cer`).
    pub cer: String,
    /// The leaf's subject, RFC 4514 style (`CN=…`).
    pub subject: String,
    pub not_before: i64,
    pub expires: i64,
    pub key_type: KeyType,
}

const PEM_ARMOUR: &str = "-----BEGIN";

fn decode_base64(value: &str) -> Result<Vec<u8>, CertificateError> {
    STANDARD
        .decode(value.trim())
        .map_err(|_| CertificateError::NotBase64)
}

fn pem_error(error: impl std::fmt::Display) -> CertificateError {
    CertificateError::Pem(error.to_string())
}

impl CertificateWithKey {
    /// Checks that `key` belongs to the first certificate of `chain`.
    pub fn new(chain: Vec<Vec<u8>>, key: Vec<u8>) -> Result<Self, CertificateError> {
        let leaf = chain.first().ok_or(CertificateError::NoCertificate)?;
        for der in &chain {
            X509Certificate::from_der(der)
                .map_err(|error| CertificateError::Certificate(error.to_string()))?;
        }
        let (_, parsed) = X509Certificate::from_der(leaf)
            .map_err(|error| CertificateError::Certificate(error.to_string()))?;
        let key_pair = rcgen::KeyPair::try_from(key.as_slice())
            .map_err(|error| CertificateError::Key(error.to_string()))?;
        if key_pair.der_bytes() != parsed.public_key().subject_public_key.data.as_ref() {
            return Err(CertificateError::KeyMismatch);
        }
        Ok(Self { chain, key })
    }

    /// PEM text with a PKCS#8 private key and certificates (leaf first), in any order.
    pub fn from_pem(text: &str) -> Result<Self, CertificateError> {
        let mut chain = Vec::new();
        let mut key = None;
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes()) {
            match section.map_err(pem_error)? {
                (SectionKind::Certificate, der) => chain.push(der),
                (SectionKind::PrivateKey, der) => key = key.or(Some(der)),
                _ => {}
            }
        }
        if chain.is_empty() {
            return Err(CertificateError::NoCertificate);
        }
        Self::new(chain, key.ok_or(CertificateError::NoPrivateKey)?)
    }

    /// A PKCS#12 archive; `password` is empty when it has none.
    pub fn from_pkcs12(der: &[u8], password: &str) -> Result<Self, CertificateError> {
        let store = KeyStore::from_pkcs12(der, password, Pkcs12ImportPolicy::Strict)
            .map_err(|error| CertificateError::Pkcs12(error.to_string()))?;
        let (_, chain) = store
            .private_key_chain()
            .ok_or(CertificateError::NoKeyChain)?;
        Self::new(
            chain
                .certs()
                .iter()
                .map(|cert| cert.as_der().to_vec())
                .collect(),
            chain.key().as_der().to_vec(),
        )
    }

    /// A certificate-backed secret's value in `format`.
    pub fn from_secret(value: &str, format: SecretFormat) -> Result<Self, CertificateError> {
        match format {
            SecretFormat::Pem => Self::from_pem(value),
            SecretFormat::Pkcs12 => Self::from_pkcs12(&decode_base64(value)?, ""),
        }
    }

    /// An import's `value`: PEM text, base64 of PEM text (what the SDKs send for
    /// a PEM import), or base64 PKCS#12 (opened with `password`, if any).
    pub fn from_import(value: &str, password: Option<&str>) -> Result<Self, CertificateError> {
        if value.trim_start().starts_with(PEM_ARMOUR) {
            return Self::from_pem(value);
        }
        let der = decode_base64(value)?;
        match std::str::from_utf8(&der) {
            Ok(text) if text.trim_start().starts_with(PEM_ARMOUR) => Self::from_pem(text),
            _ => Self::from_pkcs12(&der, password.unwrap_or("")),
        }
    }

    /// PEM: the private key, then the chain, leaf first (Key Vault's layout).
    pub fn to_pem(&self) -> String {
        let mut pem = pem_block("PRIVATE KEY", &self.key);
        for der in &self.chain {
            pem.push_str(&pem_block("CERTIFICATE", der));
        }
        pem
    }

    /// Base64 of a PKCS#12 archive without password, as Key Vault serves it.
    pub fn to_pkcs12_base64(&self) -> Result<String, CertificateError> {
        let pkcs12 =
            |error: p12_keystore::error::Error| CertificateError::Pkcs12(error.to_string());
        let key = PrivateKey::from_der(&self.key).map_err(pkcs12)?;
        let certs = self
            .chain
            .iter()
            .map(|der| Certificate::from_der(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(pkcs12)?;
        let local_key_id = Sha1::digest(&self.chain[0]).to_vec();
        let mut store = KeyStore::new();
        store.add_entry(
            "certificate",
            KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, key, certs)),
        );
        let der = store.writer("").write().map_err(pkcs12)?;
        Ok(STANDARD.encode(der))
    }

    /// The secret value in `format`.
    pub fn secret_value(&self, format: SecretFormat) -> Result<String, CertificateError> {
        match format {
            SecretFormat::Pem => Ok(self.to_pem()),
            SecretFormat::Pkcs12 => self.to_pkcs12_base64(),
        }
    }

    pub fn details(&self) -> Result<CertificateDetails, CertificateError> {
        let leaf = &self.chain[0];
        let (_, parsed) = X509Certificate::from_der(leaf)
            .map_err(|error| CertificateError::Certificate(error.to_string()))?;
        let public_key = parsed
            .public_key()
            .parsed()
            .map_err(|error| CertificateError::Certificate(error.to_string()))?;
        let key_type = match public_key {
            PublicKey::RSA(rsa) => KeyType::Rsa {
                bits: rsa.key_size(),
            },
            PublicKey::EC(point) => {
                let bits = point.key_size();
                let curve = match bits {
                    256 => "P-256",
                    384 => "P-384",
                    521 | 528 => "P-521",
                    _ => return Err(CertificateError::UnsupportedKeyType),
                };
                KeyType::Ec { curve, bits }
            }
            _ => return Err(CertificateError::UnsupportedKeyType),
        };
        Ok(CertificateDetails {
            x5t: URL_SAFE_NO_PAD.encode(Sha1::digest(leaf)),
            cer: STANDARD.encode(leaf),
            subject: parsed.subject().to_string(),
            not_before: parsed.validity().not_before.timestamp(),
            expires: parsed.validity().not_after.timestamp(),
            key_type,
        })
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
    };

    /// A leaf signed by an intermediate signed by a root: (leaf key PKCS#8, [leaf, intermediate, root]).
    fn chain(leaf_key: &KeyPair) -> Vec<Vec<u8>> {
        let ca = |name: &str| {
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
        };
        let root_key = KeyPair::generate().unwrap();
        let root = ca("root").self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(ca("root"), root_key);
        let intermediate_key = KeyPair::generate().unwrap();
        let intermediate = ca("intermediate")
            .signed_by(&intermediate_key, &root_issuer)
            .unwrap();
        let intermediate_issuer = Issuer::new(ca("intermediate"), intermediate_key);
        let mut leaf_params = CertificateParams::new(vec!["app.test".to_owned()]).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "app.test");
        let leaf = leaf_params
            .signed_by(leaf_key, &intermediate_issuer)
            .unwrap();
        vec![
            leaf.der().to_vec(),
            intermediate.der().to_vec(),
            root.der().to_vec(),
        ]
    }

    #[test]
    fn pem_and_pkcs12_round_trip_with_the_chain_in_order() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let original = CertificateWithKey::new(chain(&key), key.serialize_der()).unwrap();
        let pem = original.to_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 3);
        assert_eq!(CertificateWithKey::from_pem(&pem).unwrap(), original);
        let pkcs12 = original.to_pkcs12_base64().unwrap();
        let back = CertificateWithKey::from_secret(&pkcs12, SecretFormat::Pkcs12).unwrap();
        assert_eq!(back, original);
        let base64_pem = STANDARD.encode(&pem);
        for import in [pem.as_str(), &base64_pem, &pkcs12] {
            assert_eq!(
                CertificateWithKey::from_import(import, None).unwrap(),
                original
            );
        }
        let details = original.details().unwrap();
        assert_eq!(
            details.key_type,
            KeyType::Ec {
                curve: "P-256",
                bits: 256
            }
        );
        assert_eq!(details.subject, "CN=app.test");
        assert!(details.expires > details.not_before);
    }

    #[test]
    fn a_password_protected_pkcs12_opens_only_with_its_password() {
        let key = KeyPair::generate().unwrap();
        let original = CertificateWithKey::new(chain(&key), key.serialize_der()).unwrap();
        let mut store = KeyStore::new();
        store.add_entry(
            "x",
            KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(
                b"id".to_vec(),
                PrivateKey::from_der(&original.key).unwrap(),
                original
                    .chain
                    .iter()
                    .map(|der| Certificate::from_der(der).unwrap()),
            )),
        );
        let protected = STANDARD.encode(store.writer("s3cret").write().unwrap());
        let opened = CertificateWithKey::from_import(&protected, Some("s3cret"));
        assert_eq!(opened.unwrap(), original);
        assert!(matches!(
            CertificateWithKey::from_import(&protected, Some("wrong")),
            Err(CertificateError::Pkcs12(_))
        ));
    }

    #[test]
    fn a_key_of_another_certificate_or_a_missing_key_is_refused() {
        let key = KeyPair::generate().unwrap();
        let other = KeyPair::generate().unwrap();
        assert!(matches!(
            CertificateWithKey::new(chain(&key), other.serialize_der()),
            Err(CertificateError::KeyMismatch)
        ));
        let only_certificate = pem_block("CERTIFICATE", &chain(&key)[0]);
        assert!(matches!(
            CertificateWithKey::from_pem(&only_certificate),
            Err(CertificateError::NoPrivateKey)
        ));
        assert!(matches!(
            CertificateWithKey::from_import("not base64!", None),
            Err(CertificateError::NotBase64)
        ));
    }

    #[test]
    fn content_types_name_the_formats() {
        assert_eq!(
            SecretFormat::from_content_type("application/x-pem-file"),
            Some(SecretFormat::Pem)
        );
        assert_eq!(
            SecretFormat::from_content_type("application/x-pkcs12"),
            Some(SecretFormat::Pkcs12)
        );
        assert_eq!(SecretFormat::from_content_type("text/plain"), None);
    }
}
