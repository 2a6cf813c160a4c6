//! Identities that read Key Vault, and their long-lived credentials.
//!
//! A credential is built once per identity and kept, so its token cache is
//! shared by every KeyVaultSecret using that identity: tokens are fetched
//! about once an hour per identity, not per reconcile (ESO's per-reconcile
//! token fetch is a large part of its Entra and Key Vault load).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientMethodOptions, ClientOptions};
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

/// Audience Entra expects on a federated service-account token.
pub const FEDERATION_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Who reads the vault. Built by the reconciler from the KeyVaultSecret's
/// `auth` (it resolves annotations and credential Secrets); the vault layer
/// only turns it into a credential.
#[derive(Clone, PartialEq, Eq)]
pub enum Identity {
    /// The operator's own federated identity (env injected by the AKS webhook).
    Operator,
    /// A service account's federated identity, via TokenRequest.
    ServiceAccount {
        namespace: String,
        name: String,
        tenant_id: String,
        client_id: String,
    },
    /// An app registration's client secret.
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: String,
    },
    /// An app registration's certificate (PEM private key + certificate).
    ClientCertificate {
        tenant_id: String,
        client_id: String,
        pem: String,
    },
    /// The node's managed identity through IMDS: system-assigned, or the
    /// user-assigned one with this client id.
    ManagedIdentity { client_id: Option<String> },
}

impl std::fmt::Debug for Identity {
    /// Never prints credential material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Operator => write!(f, "operator"),
            Identity::ServiceAccount {
                namespace,
                name,
                client_id,
                ..
            } => {
                write!(f, "serviceaccount {namespace}/{name} (client {client_id})")
            }
            Identity::ClientSecret { client_id, .. } => {
                write!(f, "client secret (client {client_id})")
            }
            Identity::ClientCertificate { client_id, .. } => {
                write!(f, "client certificate (client {client_id})")
            }
            Identity::ManagedIdentity { client_id } => match client_id {
                Some(client_id) => write!(f, "managed identity (client {client_id})"),
                None => write!(f, "system-assigned managed identity"),
            },
        }
    }
}

impl Identity {
    /// A key that identifies the credential without holding its material:
    /// a changed client secret hashes differently and so gets a new credential.
    pub fn cache_key(&self) -> String {
        match self {
            Identity::Operator => "operator".into(),
            Identity::ServiceAccount {
                namespace,
                name,
                tenant_id,
                client_id,
            } => {
                format!("sa/{namespace}/{name}/{tenant_id}/{client_id}")
            }
            Identity::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => {
                format!("secret/{tenant_id}/{client_id}/{}", short_hash(secret))
            }
            Identity::ClientCertificate {
                tenant_id,
                client_id,
                pem,
            } => {
                format!("cert/{tenant_id}/{client_id}/{}", short_hash(pem))
            }
            Identity::ManagedIdentity { client_id } => format!(
                "managed/{}/imds",
                client_id.as_deref().unwrap_or("system-assigned")
            ),
        }
    }
}

fn short_hash(material: &str) -> String {
    hex::encode(&Sha256::digest(material.as_bytes())[..12])
}

/// The operator's own identity, as the AKS Workload Identity webhook injects it.
#[derive(Clone, Debug, Default)]
pub struct OperatorIdentity {
    pub client_id: Option<String>,
    pub tenant_id: Option<String>,
    pub token_file: Option<PathBuf>,
}

/// Builds and keeps credentials.
pub struct Credentials {
    kube: kube::Client,
    options: ClientOptions,
    operator: OperatorIdentity,
    authority_host: String,
    cache: Mutex<HashMap<String, Arc<dyn TokenCredential>>>,
}

impl Credentials {
    pub fn new(
        kube: kube::Client,
        options: ClientOptions,
        operator: OperatorIdentity,
        authority_host: String,
    ) -> Self {
        Credentials {
            kube,
            options,
            operator,
            authority_host,
            cache: Mutex::default(),
        }
    }

    /// The credential for `identity`, built on first use.
    pub fn get(&self, identity: &Identity) -> azure_core::Result<Arc<dyn TokenCredential>> {
        let key = identity.cache_key();
        if let Some(found) = self.cache.lock().unwrap().get(&key) {
            return Ok(found.clone());
        }
        let credential = self.build(identity)?;
        let mut cache = self.cache.lock().unwrap();
        // A rotated client secret leaves its old credential behind: drop
        // credentials of the same app that no longer match.
        if let Some(prefix) = key.rsplit_once('/').map(|(p, _)| p.to_owned()) {
            cache.retain(|k, _| !k.starts_with(&prefix) || k == &key);
        }
        Ok(cache.entry(key).or_insert(credential).clone())
    }

    /// Keeps only the credentials whose identity key passes `keep`.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.cache.lock().unwrap().retain(|key, _| keep(key));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.cache.lock().unwrap().len()
    }

    /// Drops the credential of `identity` (and its token cache).
    pub fn forget(&self, identity: &Identity) {
        self.cache.lock().unwrap().remove(&identity.cache_key());
    }

    fn build(&self, identity: &Identity) -> azure_core::Result<Arc<dyn TokenCredential>> {
        let client_options = self.options.clone();
        Ok(match identity {
            Identity::Operator => {
                WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                    credential_options: ClientAssertionCredentialOptions { client_options },
                    client_id: self.operator.client_id.clone(),
                    tenant_id: self.operator.tenant_id.clone(),
                    token_file_path: self.operator.token_file.clone(),
                }))?
            }
            Identity::ServiceAccount {
                namespace,
                name,
                tenant_id,
                client_id,
            } => ClientAssertionCredential::new(
                tenant_id.clone(),
                client_id.clone(),
                ServiceAccountAssertion {
                    api: Api::namespaced(self.kube.clone(), namespace),
                    name: name.clone(),
                    cached: Mutex::default(),
                },
                Some(ClientAssertionCredentialOptions { client_options }),
            )?,
            Identity::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => ClientSecretCredential::new(
                tenant_id,
                client_id.clone(),
                secret.clone().into(),
                Some(ClientSecretCredentialOptions { client_options }),
            )?,
            Identity::ClientCertificate {
                tenant_id,
                client_id,
                pem,
            } => ClientAssertionCredential::new(
                tenant_id.clone(),
                client_id.clone(),
                super::certificate::CertificateAssertion::new(
                    pem,
                    client_id,
                    &format!(
                        "{}/{tenant_id}/oauth2/v2.0/token",
                        self.authority_host.trim_end_matches('/')
                    ),
                )?,
                Some(ClientAssertionCredentialOptions { client_options }),
            )?,
            Identity::ManagedIdentity { client_id } => {
                ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                    client_options,
                }))?
            }
        })
    }
}

/// A client assertion that is a TokenRequest token of a service account in the
/// KeyVaultSecret's own namespace, exactly what the AKS webhook would project.
struct ServiceAccountAssertion {
    api: Api<ServiceAccount>,
    name: String,
    cached: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for ServiceAccountAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServiceAccountAssertion({})", self.name)
    }
}

/// Lifetime requested for service-account tokens. The API server may issue
/// a shorter one (`--service-account-max-token-expiration`): a token is
/// reused only until 80 % of the lifetime its answer states has passed.
const SA_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// How long a token whose TokenRequest answer says it expires at `expires`
/// may be reused from `now` on: 80 % of what is left of it (the rest is the
/// margin for clock skew and the exchange itself); nothing if it is already
/// past.
fn reuse_for(now: k8s_openapi::jiff::Timestamp, expires: k8s_openapi::jiff::Timestamp) -> Duration {
    let left = expires
        .duration_since(now)
        .try_into()
        .unwrap_or(Duration::ZERO);
    left.min(SA_TOKEN_LIFETIME) * 4 / 5
}

#[async_trait::async_trait]
impl ClientAssertion for ServiceAccountAssertion {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        if let Some((token, fresh_until)) = self.cached.lock().unwrap().clone()
            && Instant::now() < fresh_until
        {
            return Ok(token);
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![FEDERATION_AUDIENCE.to_owned()],
                expiration_seconds: Some(SA_TOKEN_LIFETIME.as_secs() as i64),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        let response: TokenRequest = self
            .api
            .create_subresource("token", &self.name, &PostParams::default(), &request)
            .await
            .map_err(|e| {
                azure_core::Error::with_message(
                    azure_core::error::ErrorKind::Credential,
                    format!("TokenRequest for service account {} failed: {e}", self.name),
                )
            })?;
        let Some(status) = response.status else {
            return Ok(String::new());
        };
        let reuse = reuse_for(
            k8s_openapi::jiff::Timestamp::now(),
            status.expiration_timestamp.0,
        );
        *self.cached.lock().unwrap() = Some((status.token.clone(), Instant::now() + reuse));
        Ok(status.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_reused_by_the_lifetime_its_answer_states() {
        let now: k8s_openapi::jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |offset: &str| -> k8s_openapi::jiff::Timestamp {
            now + offset.parse::<k8s_openapi::jiff::Span>().unwrap()
        };
        assert_eq!(
            reuse_for(now, at("PT1H")),
            Duration::from_secs(48 * 60),
            "as asked"
        );
        assert_eq!(
            reuse_for(now, at("PT10M")),
            Duration::from_secs(8 * 60),
            "shortened by the API server: not an assumed hour"
        );
        assert_eq!(
            reuse_for(now, at("PT24H")),
            Duration::from_secs(48 * 60),
            "never longer than asked"
        );
        assert_eq!(reuse_for(now, at("-PT1M")), Duration::ZERO, "already past");
    }
}
