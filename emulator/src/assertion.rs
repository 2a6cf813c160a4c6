//! Client assertions: the signed JWTs an app presents instead of a client secret.
//!
//! Two kinds reach the token endpoint, told apart by their issuer:
//!
//! * **certificate**: `iss` = `sub` = the client id, `aud` = the token endpoint,
//!   signed with the key of the app's registered certificate (named by the `x5t`
//!   header, the certificate's SHA-1 thumbprint);
//! * **federated**: a token of an outside issuer (a Kubernetes service-account
//!   token, for workload identity) whose `iss`/`sub`/`aud` must match a federated
//!   credential of the app and whose signature must verify against that issuer's
//!   published keys.
//!
//! This module checks signatures, lifetimes and the certificate rules given the key;
//! finding the key (network, files) and matching federated credentials happen
//! elsewhere.

use super::directory::RegisteredCertificate;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::Deserialize;

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 60;

/// Asymmetric algorithms only: a shared-secret (HS*) assertion proves nothing.
const ACCEPTED_ALGORITHMS: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    #[error("the assertion is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("the assertion is signed with {0:?}, which is not accepted")]
    UnsupportedAlgorithm(Algorithm),
    #[error("the assertion's signature does not verify")]
    BadSignature,
    #[error("the assertion is expired or not yet valid")]
    OutsideValidity,
    #[error("the assertion's x5t does not name the registered certificate")]
    UnknownCertificate,
    #[error("the assertion's audience is not the token endpoint")]
    WrongAudience,
    #[error("the assertion's subject is not the client id")]
    WrongSubject,
}

/// `aud` may be one string or an array of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct RawClaims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<OneOrMany>,
}

/// The claims that decide whose assertion this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionClaims {
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
}

impl TryFrom<RawClaims> for AssertionClaims {
    type Error = AssertionError;

    fn try_from(raw: RawClaims) -> Result<Self, Self::Error> {
        let missing = |claim: &str| AssertionError::Malformed(format!("no {claim} claim"));
        Ok(Self {
            issuer: raw.iss.ok_or_else(|| missing("iss"))?,
            subject: raw.sub.ok_or_else(|| missing("sub"))?,
            audiences: match raw.aud.ok_or_else(|| missing("aud"))? {
                OneOrMany::One(audience) => vec![audience],
                OneOrMany::Many(audiences) => audiences,
            },
        })
    }
}

/// An assertion read without checking anything, to decide how to check it.
#[derive(Debug, Clone)]
pub struct UnverifiedAssertion {
    pub header: Header,
    pub claims: AssertionClaims,
}

fn malformed(error: jsonwebtoken::errors::Error) -> AssertionError {
    AssertionError::Malformed(error.to_string())
}

/// Reads header and claims without trusting them.
pub fn peek(token: &str) -> Result<UnverifiedAssertion, AssertionError> {
    let data = jsonwebtoken::dangerous::insecure_decode::<RawClaims>(token).map_err(malformed)?;
    Ok(UnverifiedAssertion {
        header: data.header,
        claims: data.claims.try_into()?,
    })
}

/// Checks the signature with `key` and the lifetime (`exp` required, `nbf` if present).
pub fn verify(token: &str, key: &DecodingKey) -> Result<AssertionClaims, AssertionError> {
    let algorithm = jsonwebtoken::decode_header(token).map_err(malformed)?.alg;
    if !ACCEPTED_ALGORITHMS.contains(&algorithm) {
        return Err(AssertionError::UnsupportedAlgorithm(algorithm));
    }
    let mut validation = Validation::new(algorithm);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<RawClaims>(token, key, &validation)
        .map_err(|error| match error.kind() {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEcdsaKey => AssertionError::BadSignature,
            ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => {
                AssertionError::OutsideValidity
            }
            _ => malformed(error),
        })?
        .claims;
    claims.try_into()
}

/// Does the `x5t` (SHA-1) or `x5t#S256` header name this certificate? Either may be
/// standard or URL-safe base64 (the Rust SDK sends standard, MSAL URL-safe).
fn names_certificate(header: &Header, certificate: &RegisteredCertificate) -> bool {
    let decode = |text: &str| {
        STANDARD
            .decode(text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
            .ok()
    };
    match (&header.x5t, &header.x5t_s256) {
        (Some(sha1), _) => decode(sha1).is_some_and(|t| t == certificate.sha1_thumbprint),
        (None, Some(sha256)) => decode(sha256).is_some_and(|t| t == certificate.sha256_thumbprint),
        // Entra needs the thumbprint to pick among an app's certificates; with one
        // certificate per app the emulator can do without.
        (None, None) => true,
    }
}

/// Checks a certificate assertion of `client_id` for the token endpoint `audience`.
pub fn verify_certificate_assertion(
    token: &str,
    header: &Header,
    certificate: &RegisteredCertificate,
    client_id: &str,
    audience: &str,
) -> Result<(), AssertionError> {
    if !names_certificate(header, certificate) {
        return Err(AssertionError::UnknownCertificate);
    }
    let claims = verify(token, &certificate.key)?;
    if !claims.audiences.iter().any(|aud| aud == audience) {
        return Err(AssertionError::WrongAudience);
    }
    if claims.subject != client_id || claims.issuer != client_id {
        return Err(AssertionError::WrongSubject);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{App, AppRegistration};
    use jsonwebtoken::EncodingKey;
    use serde_json::json;
    use sha1::{Digest, Sha1};

    const CLIENT: &str = "11111111-1111-1111-1111-111111111111";
    const ENDPOINT: &str = "https://localhost:1/tenant/oauth2/v2.0/token";

    struct Signer {
        key: EncodingKey,
        cert_der: Vec<u8>,
        cert_pem: String,
    }

    fn rsa_signer() -> Signer {
        let key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap();
        let cert = rcgen::CertificateParams::new(vec!["app".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Signer {
            key: EncodingKey::from_rsa_pem(key.serialize_pem().as_bytes()).unwrap(),
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
        }
    }

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    fn registered(signer: &Signer) -> RegisteredCertificate {
        let registration: AppRegistration = serde_json::from_value(json!({
            "tenantId": "tenant", "clientId": CLIENT, "certificate": signer.cert_pem,
        }))
        .unwrap();
        App::try_from(registration).unwrap().certificate.unwrap()
    }

    /// The header the Rust SDK's ClientCertificateCredential writes.
    fn sdk_header(signer: &Signer) -> Header {
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("JWT".into());
        header.x5t = Some(STANDARD.encode(Sha1::digest(&signer.cert_der)));
        header
    }

    fn sign(header: &Header, claims: serde_json::Value, key: &EncodingKey) -> String {
        jsonwebtoken::encode(header, &claims, key).unwrap()
    }

    fn sdk_claims() -> serde_json::Value {
        let now = now();
        json!({"aud": ENDPOINT, "exp": now + 300, "iss": CLIENT, "jti": "j", "nbf": now, "sub": CLIENT})
    }

    fn check(token: &str, certificate: &RegisteredCertificate) -> Result<(), AssertionError> {
        let header = peek(token)?.header;
        verify_certificate_assertion(token, &header, certificate, CLIENT, ENDPOINT)
    }

    #[test]
    fn certificate_assertions_are_verified_like_entra_does() {
        let signer = rsa_signer();
        let certificate = registered(&signer);
        let header = sdk_header(&signer);
        assert_eq!(
            check(&sign(&header, sdk_claims(), &signer.key), &certificate),
            Ok(())
        );

        let other = rsa_signer();
        let forged = sign(&header, sdk_claims(), &other.key);
        assert_eq!(
            check(&forged, &certificate),
            Err(AssertionError::BadSignature)
        );

        let foreign_cert = sign(&sdk_header(&other), sdk_claims(), &other.key);
        assert_eq!(
            check(&foreign_cert, &certificate),
            Err(AssertionError::UnknownCertificate)
        );

        let mut expired = sdk_claims();
        expired["exp"] = json!(now() - 600);
        expired["nbf"] = json!(now() - 900);
        assert_eq!(
            check(&sign(&header, expired, &signer.key), &certificate),
            Err(AssertionError::OutsideValidity)
        );

        let mut early = sdk_claims();
        early["nbf"] = json!(now() + 600);
        assert_eq!(
            check(&sign(&header, early, &signer.key), &certificate),
            Err(AssertionError::OutsideValidity)
        );

        let mut elsewhere = sdk_claims();
        elsewhere["aud"] = json!("https://login.microsoftonline.com/tenant/oauth2/v2.0/token");
        assert_eq!(
            check(&sign(&header, elsewhere, &signer.key), &certificate),
            Err(AssertionError::WrongAudience)
        );

        let mut someone_else = sdk_claims();
        someone_else["sub"] = json!("22222222-2222-2222-2222-222222222222");
        assert_eq!(
            check(&sign(&header, someone_else, &signer.key), &certificate),
            Err(AssertionError::WrongSubject)
        );
    }

    #[test]
    fn url_safe_and_sha256_thumbprints_are_understood() {
        let signer = rsa_signer();
        let certificate = registered(&signer);
        let mut header = Header::new(Algorithm::PS256);
        header.x5t_s256 = Some(URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&signer.cert_der)));
        assert_eq!(
            check(&sign(&header, sdk_claims(), &signer.key), &certificate),
            Ok(())
        );
        let mut claims = sdk_claims();
        claims["aud"] = json!(["other", ENDPOINT]);
        assert_eq!(
            check(&sign(&header, claims, &signer.key), &certificate),
            Ok(())
        );
    }

    #[test]
    fn shared_secret_signatures_and_garbage_are_refused() {
        let signer = rsa_signer();
        let certificate = registered(&signer);
        let hmac = sign(
            &Header::new(Algorithm::HS256),
            sdk_claims(),
            &EncodingKey::from_secret(b"k"),
        );
        assert_eq!(
            check(&hmac, &certificate),
            Err(AssertionError::UnsupportedAlgorithm(Algorithm::HS256))
        );
        for garbage in ["", "abc", "a.b.c", "eyJhbGciOiJub25lIn0.e30."] {
            assert!(
                matches!(peek(garbage), Err(AssertionError::Malformed(_))),
                "{garbage}"
            );
        }
        let mut no_subject = sdk_claims();
        no_subject.as_object_mut().unwrap().remove("sub");
        let token = sign(&sdk_header(&signer), no_subject, &signer.key);
        assert_eq!(
            peek(&token).unwrap_err(),
            AssertionError::Malformed("no sub claim".into())
        );
    }
}
