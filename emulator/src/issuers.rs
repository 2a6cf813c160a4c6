//! Signing keys of outside token issuers, for verifying federated assertions.
//!
//! Each issuer named in the seed has one source: a JWKS file, or OIDC discovery
//! (`<issuer>/.well-known/openid-configuration`, then its `jwks_uri`) over HTTPS that
//! trusts an optional CA file and sends an optional bearer token (a kube-apiserver
//! serves discovery only to authenticated callers). Key sets are cached per issuer
//! and fetched again when an assertion names a key id the cache does not have, which
//! is how issuers roll their keys over.

use super::config::KeySourceConfig;
use super::state::lock;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{AlgorithmFamily, DecodingKey};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum IssuerSetupError {
    #[error("issuer {issuer}: cannot read CA file {path}: {source}")]
    ReadCa {
        issuer: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("issuer {issuer}: CA file {path} holds no usable PEM certificate: {source}")]
    ParseCa {
        issuer: String,
        path: PathBuf,
        source: reqwest::Error,
    },
    #[error("issuer {issuer}: cannot build an HTTP client: {source}")]
    Client {
        issuer: String,
        source: reqwest::Error,
    },
}

/// Why no key could be found for an assertion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyLookupError {
    #[error("issuer {0} is not configured")]
    UnknownIssuer(String),
    #[error("cannot fetch the signing keys of issuer {issuer}: {reason}")]
    Fetch { issuer: String, reason: String },
    #[error("issuer {issuer} publishes no usable key with id {kid:?}")]
    KeyNotFound { issuer: String, kid: Option<String> },
}

enum KeySource {
    JwksFile(PathBuf),
    Discovery {
        http: reqwest::Client,
        bearer_token_file: Option<PathBuf>,
    },
}

/// Keys of one issuer that parsed, by key id (keys without a `kid` under "").
type KeySet = Arc<Vec<(Option<String>, Arc<DecodingKey>)>>;

pub struct IssuerKeys {
    sources: BTreeMap<String, KeySource>,
    cache: Mutex<HashMap<String, KeySet>>,
}

#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWKS, skipping keys that cannot verify signatures (e.g. of unknown
/// types) rather than failing the whole set. Shared-secret (`oct`) keys are
/// skipped too: a published secret proves nothing.
fn parse_jwks(bytes: &[u8]) -> Result<KeySet, String> {
    let raw: RawJwks = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS: {e}"))?;
    let keys = raw
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
        .filter_map(|jwk| {
            let key = DecodingKey::from_jwk(&jwk).ok()?;
            (key.family() != AlgorithmFamily::Hmac).then(|| (jwk.common.key_id, Arc::new(key)))
        })
        .collect();
    Ok(Arc::new(keys))
}

/// The key an assertion names; without a `kid`, only an issuer with a single key
/// can answer unambiguously.
fn select(keys: &KeySet, kid: Option<&str>) -> Option<Arc<DecodingKey>> {
    match kid {
        Some(kid) => keys
            .iter()
            .find(|(id, _)| id.as_deref() == Some(kid))
            .map(|(_, key)| key.clone()),
        None => match keys.as_slice() {
            [(_, only)] => Some(only.clone()),
            _ => None,
        },
    }
}

fn build_client(issuer: &str, ca_file: Option<&Path>) -> Result<reqwest::Client, IssuerSetupError> {
    let mut builder = reqwest::Client::builder().timeout(FETCH_TIMEOUT);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| IssuerSetupError::ReadCa {
            issuer: issuer.to_owned(),
            path: path.to_owned(),
            source,
        })?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
            IssuerSetupError::ParseCa {
                issuer: issuer.to_owned(),
                path: path.to_owned(),
                source,
            }
        })?;
        builder = builder.tls_certs_only(certificates);
    }
    builder.build().map_err(|source| IssuerSetupError::Client {
        issuer: issuer.to_owned(),
        source,
    })
}

impl IssuerKeys {
    pub fn new(config: &BTreeMap<String, KeySourceConfig>) -> Result<Self, IssuerSetupError> {
        let sources = config
            .iter()
            .map(|(issuer, source)| {
                let source = match source {
                    KeySourceConfig::JwksFile(path) => KeySource::JwksFile(path.clone()),
                    KeySourceConfig::Discovery {
                        ca_file,
                        bearer_token_file,
                    } => KeySource::Discovery {
                        http: build_client(issuer, ca_file.as_deref())?,
                        bearer_token_file: bearer_token_file.clone(),
                    },
                };
                Ok((issuer.clone(), source))
            })
            .collect::<Result<_, IssuerSetupError>>()?;
        Ok(Self {
            sources,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The issuer's key named `kid`, from the cache or, failing that, fetched afresh.
    pub async fn key(
        &self,
        issuer: &str,
        kid: Option<&str>,
    ) -> Result<Arc<DecodingKey>, KeyLookupError> {
        let cached = lock(&self.cache).get(issuer).cloned();
        if let Some(key) = cached.as_ref().and_then(|keys| select(keys, kid)) {
            return Ok(key);
        }
        let keys = self.fetch(issuer).await?;
        lock(&self.cache).insert(issuer.to_owned(), keys.clone());
        select(&keys, kid).ok_or_else(|| KeyLookupError::KeyNotFound {
            issuer: issuer.to_owned(),
            kid: kid.map(str::to_owned),
        })
    }

    async fn fetch(&self, issuer: &str) -> Result<KeySet, KeyLookupError> {
        let source = self
            .sources
            .get(issuer)
            .ok_or_else(|| KeyLookupError::UnknownIssuer(issuer.to_owned()))?;
        let fetched = match source {
            KeySource::JwksFile(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|bytes| parse_jwks(&bytes)),
            KeySource::Discovery {
                http,
                bearer_token_file,
            } => discover(http, issuer, bearer_token_file.as_deref()).await,
        };
        fetched.map_err(|reason| KeyLookupError::Fetch {
            issuer: issuer.to_owned(),
            reason,
        })
    }
}

async fn get(
    http: &reqwest::Client,
    url: &str,
    bearer_token: Option<&str>,
) -> Result<Vec<u8>, String> {
    let mut request = http.get(url);
    if let Some(token) = bearer_token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("GET {url}: HTTP {status}"));
    }
    response
        .bytes()
        .await
        .map(|body| body.to_vec())
        .map_err(|e| format!("GET {url}: {e}"))
}

async fn discover(
    http: &reqwest::Client,
    issuer: &str,
    bearer_token_file: Option<&Path>,
) -> Result<KeySet, String> {
    // Read per fetch: projected service-account tokens are rotated on disk.
    let bearer_token = match bearer_token_file {
        None => None,
        Some(path) => Some(
            tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("cannot read bearer token file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
        ),
    };
    let discovery_url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let document: DiscoveryDocument =
        serde_json::from_slice(&get(http, &discovery_url, bearer_token.as_deref()).await?)
            .map_err(|e| format!("{discovery_url} is not an OpenID configuration: {e}"))?;
    if document.issuer != issuer {
        return Err(format!(
            "{discovery_url} names issuer {:?}, not {issuer:?}",
            document.issuer
        ));
    }
    parse_jwks(&get(http, &document.jwks_uri, bearer_token.as_deref()).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rsa_jwk(kid: Option<&str>) -> serde_json::Value {
        let key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap();
        let encoding =
            jsonwebtoken::EncodingKey::from_rsa_pem(key.serialize_pem().as_bytes()).unwrap();
        let mut jwk = serde_json::to_value(
            Jwk::from_encoding_key(&encoding, jsonwebtoken::Algorithm::RS256).unwrap(),
        )
        .unwrap();
        if let Some(kid) = kid {
            jwk["kid"] = json!(kid);
        }
        jwk
    }

    fn keys_of(jwks: serde_json::Value) -> KeySet {
        parse_jwks(jwks.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn keys_are_selected_by_kid_and_a_lone_key_needs_none() {
        let two = keys_of(json!({"keys": [rsa_jwk(Some("a")), rsa_jwk(Some("b"))]}));
        assert!(select(&two, Some("b")).is_some());
        assert!(select(&two, Some("c")).is_none());
        assert!(select(&two, None).is_none());
        let one = keys_of(json!({"keys": [rsa_jwk(Some("a"))]}));
        assert!(select(&one, None).is_some());
    }

    #[test]
    fn unusable_keys_are_skipped_not_fatal() {
        let keys = keys_of(json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "shared"},
            {"kty": "weird"},
            rsa_jwk(Some("good")),
        ]}));
        assert_eq!(keys.len(), 1);
        assert!(parse_jwks(b"{}").is_err());
    }

    #[tokio::test]
    async fn a_jwks_file_is_read_again_when_a_new_kid_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, json!({"keys": [rsa_jwk(Some("old"))]}).to_string()).unwrap();
        let issuer = "https://issuer.test";
        let keys = IssuerKeys::new(&BTreeMap::from([(
            issuer.to_owned(),
            KeySourceConfig::JwksFile(path.clone()),
        )]))
        .unwrap();
        assert!(keys.key(issuer, Some("old")).await.is_ok());
        assert!(matches!(
            keys.key(issuer, Some("new")).await,
            Err(KeyLookupError::KeyNotFound { .. })
        ));
        std::fs::write(&path, json!({"keys": [rsa_jwk(Some("new"))]}).to_string()).unwrap();
        assert!(keys.key(issuer, Some("new")).await.is_ok());
        assert!(matches!(
            keys.key("https://unknown.test", None).await,
            Err(KeyLookupError::UnknownIssuer(_))
        ));
    }
}
