//! Calls to Key Vault through the official SDK: one `SecretClient` per
//! (vault, identity) so its challenge scope and credential token cache are
//! reused, and no retries of its own (see the module above). Each client's
//! credential asks only for the vault's cloud's Key Vault scope
//! ([`super::scoped`]), and the HTTP client follows no redirect: a vault or
//! Entra ID answering 3xx is an error, not a new destination. A claims
//! challenge (a revoked token) is reported as the 401 it is ([`super::revoked`]).
//! Clients and
//! credentials of (vault, identity) pairs nobody uses any more are dropped
//! ([`Sdk::retain`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::http::headers::HeaderName;
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_security_keyvault_secrets::models::{ContentType, SecretClientGetSecretOptions};
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use futures::TryStreamExt;

use super::errors::{SetupError, VaultUrlError};
use super::hosts::default_vault_hosts;
use super::identity::Credentials;
use super::revoked::RevokedToken;
use super::scoped::{ForeignScope, KeyVaultOnly};
use super::versions::VersionInfo;
use super::{
    AllowedHosts, Identity, RemoteSecret, RemoteSecretInfo, VaultConfig, VaultError, vault_key,
};

const DATE: HeaderName = HeaderName::from_static("date");

/// The official SDK clients, one per (vault, identity), and their credentials.
pub struct Sdk {
    credentials: Credentials,
    options: ClientOptions,
    allowed_hosts: AllowedHosts,
    clients: Mutex<HashMap<(String, String), Arc<SecretClient>>>,
}

impl Sdk {
    pub fn new(kube: kube::Client, config: &VaultConfig) -> Result<Self, SetupError> {
        let mut http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &config.extra_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(SetupError::ExtraCa)?;
            http = http.tls_certs_merge(certs);
        }
        let http = http.build().map_err(SetupError::HttpClient)?;
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = config.authority_host.clone();
        let options = ClientOptions {
            transport: Some(Transport::new(Arc::new(http))),
            retry: RetryOptions::none(),
            cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
            per_try_policies: vec![Arc::new(RevokedToken)],
            ..Default::default()
        };
        Ok(Sdk {
            credentials: Credentials::new(
                kube,
                options.clone(),
                config.operator.clone(),
                config.authority_host.clone(),
            ),
            options,
            allowed_hosts: config.allowed_hosts.clone(),
            clients: Mutex::default(),
        })
    }

    /// Whether a vault URL may be used at all (checked before any request).
    pub fn check_vault_url(&self, vault_url: &str) -> Result<(), VaultUrlError> {
        let url = url::Url::parse(vault_url).map_err(|reason| VaultUrlError::NotAUrl {
            url: vault_url.to_owned(),
            reason,
        })?;
        if url.scheme() != "https" {
            return Err(VaultUrlError::NotHttps(vault_url.to_owned()));
        }
        let host = url.host_str().unwrap_or_default();
        if !self.allowed_hosts.allows(host) {
            return Err(VaultUrlError::HostNotAllowed {
                host: host.to_owned(),
                allowed: default_vault_hosts(),
            });
        }
        Ok(())
    }

    /// Drops the clients and credentials of (vault, identity) pairs for
    /// which `live(vault_key, identity_key)` is false.
    pub fn retain(&self, live: impl Fn(&str, &str) -> bool) {
        let mut clients = self.clients.lock().unwrap();
        clients.retain(|(vault, identity), _| live(vault, identity));
        let identities: std::collections::HashSet<&str> = clients
            .keys()
            .map(|(_, identity)| identity.as_str())
            .collect();
        self.credentials
            .retain(|identity| identities.contains(identity));
    }

    pub(super) fn client(
        &self,
        vault_url: &str,
        identity: &Identity,
    ) -> Result<Arc<SecretClient>, VaultError> {
        self.check_vault_url(vault_url)
            .map_err(|e| VaultError::Forbidden(e.to_string()))?;
        let key = (vault_key(vault_url), identity.cache_key());
        if let Some(client) = self.clients.lock().unwrap().get(&key) {
            return Ok(client.clone());
        }
        let inner = self
            .credentials
            .get(identity)
            .map_err(|e| VaultError::from_sdk(&e, ""))?;
        let host = url::Url::parse(vault_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let allowed = self
            .allowed_hosts
            .token_scope(&host)
            .ok_or_else(|| VaultError::Forbidden(format!("vault host {host:?} is not allowed")))?;
        let credential = Arc::new(KeyVaultOnly {
            inner,
            host: host.clone(),
            allowed,
        });
        let options = SecretClientOptions {
            client_options: self.options.clone(),
            verify_challenge_resource: Some(!self.allowed_hosts.is_extra(&host)),
            ..Default::default()
        };
        let client = SecretClient::new(vault_url, credential, Some(options))
            .map_err(|e| VaultError::Unavailable(format!("vault client: {e}")))?;
        let client = Arc::new(client);
        self.clients.lock().unwrap().insert(key, client.clone());
        Ok(client)
    }

    /// How many (vault, identity) clients and credentials are kept.
    #[cfg(test)]
    pub fn clients(&self) -> usize {
        let clients = self.clients.lock().unwrap().len();
        assert_eq!(
            clients,
            self.credentials.len(),
            "one credential per identity here"
        );
        clients
    }

    /// Classifies a failed call. A 401 from the vault means it refuses the
    /// token kvsync presented (a signing-key rollover, a revoked or otherwise
    /// invalid token): the SDK would keep presenting it from the credential's
    /// cache until it expires, so the identity's credential and clients are
    /// dropped and the next attempt asks Entra for a new token. A challenge
    /// for a foreign scope (refused) drops them too: the SDK client keeps the
    /// scope of the last challenge, which must not outlive the refusal.
    fn failed(&self, identity: &Identity, error: &azure_core::Error, name: &str) -> VaultError {
        let unauthorized = matches!(
            error.kind(),
            azure_core::error::ErrorKind::HttpResponse { status, .. }
                if *status == azure_core::http::StatusCode::Unauthorized
        );
        if unauthorized || error.downcast_ref::<ForeignScope>().is_some() {
            let key = identity.cache_key();
            tracing::debug!(identity = ?identity, "token refused by the vault; dropping the cached credential");
            self.credentials.forget(identity);
            self.clients.lock().unwrap().retain(|(_, k), _| *k != key);
        }
        VaultError::from_sdk(error, name)
    }

    /// Reads one secret (the latest version when `version` is `None`). With
    /// `as_pem`, Key Vault converts a PKCS#12 certificate-backed secret to PEM.
    /// Also returns the response's `Date` (Unix seconds of the vault's clock).
    pub async fn get(
        &self,
        vault_url: &str,
        identity: &Identity,
        name: &str,
        version: Option<&str>,
        as_pem: bool,
    ) -> Result<(RemoteSecret, Option<i64>), VaultError> {
        let client = self.client(vault_url, identity)?;
        let options = SecretClientGetSecretOptions {
            secret_version: version.filter(|v| !v.is_empty()).map(str::to_owned),
            out_content_type: as_pem.then_some(ContentType::Pem),
            ..Default::default()
        };
        let response = client
            .get_secret(name, Some(options))
            .await
            .map_err(|e| self.failed(identity, &e, name))?;
        let date = response
            .headers()
            .get_optional_str(&DATE)
            .and_then(|d| azure_core::time::parse_rfc7231(d).ok())
            .map(|d| d.unix_timestamp());
        let secret = response
            .into_model()
            .map_err(|e| self.failed(identity, &e, name))?;
        let version = secret
            .id
            .as_deref()
            .and_then(last_segment)
            .unwrap_or_default();
        let attributes = secret.attributes.unwrap_or_default();
        let secret = RemoteSecret {
            name: name.to_owned(),
            version,
            value: secret.value.unwrap_or_default(),
            content_type: secret.content_type,
            updated: attributes.updated.map(|t| t.unix_timestamp()),
            not_before: attributes.not_before.map(|t| t.unix_timestamp()),
            expires: attributes.expires.map(|t| t.unix_timestamp()),
        };
        Ok((secret, date))
    }

    /// Lists every secret in the vault (names, tags, enabled; no values).
    pub async fn list(
        &self,
        vault_url: &str,
        identity: &Identity,
    ) -> Result<Vec<RemoteSecretInfo>, VaultError> {
        let client = self.client(vault_url, identity)?;
        let pager = client
            .list_secret_properties(None)
            .map_err(|e| self.failed(identity, &e, "(list)"))?;
        let items: Vec<_> = pager
            .try_collect()
            .await
            .map_err(|e| self.failed(identity, &e, "(list)"))?;
        Ok(items
            .into_iter()
            .filter_map(|item| {
                let name = last_segment(item.id.as_deref()?)?;
                let attributes = item.attributes.unwrap_or_default();
                Some(RemoteSecretInfo {
                    name,
                    enabled: attributes.enabled.unwrap_or(true),
                    tags: item.tags.unwrap_or_default().into_iter().collect(),
                    updated: attributes.updated.map(|t| t.unix_timestamp()),
                })
            })
            .collect())
    }

    /// Lists every version of one secret (ids and attributes; no values).
    pub async fn list_versions(
        &self,
        vault_url: &str,
        identity: &Identity,
        name: &str,
    ) -> Result<Vec<VersionInfo>, VaultError> {
        let client = self.client(vault_url, identity)?;
        let pager = client
            .list_secret_properties_versions(name, None)
            .map_err(|e| self.failed(identity, &e, name))?;
        let items: Vec<_> = pager
            .try_collect()
            .await
            .map_err(|e| self.failed(identity, &e, name))?;
        Ok(items
            .into_iter()
            .filter_map(|item| {
                let version = last_segment(item.id.as_deref()?)?;
                let attributes = item.attributes.unwrap_or_default();
                Some(VersionInfo {
                    version,
                    enabled: attributes.enabled.unwrap_or(true),
                    created: attributes.created.map(|t| t.unix_timestamp()),
                    updated: attributes.updated.map(|t| t.unix_timestamp()),
                    not_before: attributes.not_before.map(|t| t.unix_timestamp()),
                })
            })
            .collect())
    }
}

/// The last path segment of a Key Vault id (`…/secrets/{name}[/{version}]`).
fn last_segment(id: &str) -> Option<String> {
    id.trim_end_matches('/')
        .rsplit('/')
        .next()
        .map(str::to_owned)
}
