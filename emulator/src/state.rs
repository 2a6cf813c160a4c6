//! The state shared by every listener of one running emulator.

use super::clock::VaultClock;
use super::config::{Config, KnownNames};
use super::directory::{App, Directory};
use super::eventgrid::EventGrid;
use super::eventgrid::schema::{EventType, KeyVaultEvent};
use super::faults::FaultPlan;
use super::issuers::IssuerKeys;
use super::limits::ServiceLimits;
use super::observed::{Counters, IssuedCredentials};
use super::store::{SecretVersion, VaultStore, VersionId};
use super::tokens::{KEY_VAULT_RESOURCE, Resource, TokenAuthority};
use base64::Engine;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use url::Url;

/// A vault's public address and the tenant its tokens must come from.
#[derive(Debug, Clone)]
pub struct VaultSite {
    /// `https://localhost:<port>/`: the vault's stand-in for `https://<name>.vault.azure.net/`.
    pub url: Url,
    pub tenant_id: String,
}

pub struct Emulator {
    /// `https://localhost:<port>/`: the stand-in for `https://login.microsoftonline.com/`.
    pub authority_host: Url,
    pub vaults: BTreeMap<String, VaultSite>,
    /// What app registrations may refer to (fixed at start).
    pub known_names: KnownNames,
    /// Replaced by a key rollover (control API), which invalidates every token issued.
    pub tokens: Mutex<TokenAuthority>,
    pub issuers: IssuerKeys,
    pub store: Mutex<VaultStore>,
    pub directory: Mutex<Directory>,
    pub faults: Mutex<FaultPlan>,
    pub counters: Mutex<Counters>,
    pub limits: Mutex<ServiceLimits>,
    pub issued: Mutex<IssuedCredentials>,
    /// The vaults' clock (skewable through the control API).
    pub vault_clock: VaultClock,
    /// The Event Grid namespace the vaults' system topics forward to, if seeded.
    pub event_grid: Option<EventGrid>,
}

/// Locks a mutex; a panic elsewhere cannot leave this state half-changed (every
/// change is a single assignment or collection operation), so poisoning is ignored.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Unix seconds now.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Emulator {
    /// Builds the state from the seed; `vault_urls` has one entry per seeded vault.
    pub fn new(
        config: Config,
        authority_host: Url,
        vault_urls: &BTreeMap<String, Url>,
        tokens: TokenAuthority,
        issuers: IssuerKeys,
    ) -> Self {
        let mut store = VaultStore::default();
        let mut vaults = BTreeMap::new();
        let created = now();
        for vault in config.vaults {
            store.add_vault(&vault.name);
            for (name, secret) in vault.secrets {
                store
                    .set_secret(&vault.name, &name, secret, VersionId::random(), created)
                    .expect("seed secrets were validated when the seed was loaded");
            }
            let url = vault_urls[&vault.name].clone();
            vaults.insert(
                vault.name,
                VaultSite {
                    url,
                    tenant_id: vault.tenant_id,
                },
            );
        }
        let mut directory = Directory::default();
        for app in config.apps {
            directory.upsert(app);
        }
        Self {
            authority_host,
            vaults,
            known_names: config.known_names,
            tokens: Mutex::new(tokens),
            issuers,
            store: Mutex::new(store),
            directory: Mutex::new(directory),
            faults: Mutex::new(FaultPlan::default()),
            counters: Mutex::new(Counters::default()),
            limits: Mutex::new(ServiceLimits::new(config.service_limits)),
            issued: Mutex::new(IssuedCredentials::default()),
            vault_clock: VaultClock::default(),
            event_grid: config.event_grid.map(EventGrid::new),
        }
    }

    /// What the vault's system topic publishes for a new version of a secret
    /// (or of the certificate behind it).
    pub fn version_created(&self, vault: &str, secret: &SecretVersion, event_type: EventType) {
        let (Some(grid), Some(site)) = (&self.event_grid, self.vaults.get(vault)) else {
            return;
        };
        grid.publish(KeyVaultEvent::now(
            event_type,
            vault,
            site.url.as_str(),
            &secret.name,
            Some(secret.version.as_str()),
            secret.nbf,
            secret.exp,
        ));
    }

    /// What the vaults' system topics publish when an app's grants on them
    /// changed: one event per vault (`vaults` may repeat one).
    pub fn access_changed(&self, vaults: impl IntoIterator<Item = String>) {
        let Some(grid) = &self.event_grid else {
            return;
        };
        let vaults: std::collections::BTreeSet<String> = vaults.into_iter().collect();
        for vault in vaults {
            let Some(site) = self.vaults.get(&vault) else {
                continue;
            };
            grid.publish(KeyVaultEvent::now(
                EventType::VaultAccessPolicyChanged,
                &vault,
                site.url.as_str(),
                &vault,
                None,
                None,
                None,
            ));
        }
    }

    /// The token endpoint URL of a tenant: the `aud` of certificate assertions.
    pub fn token_endpoint(&self, tenant: &str) -> String {
        format!("{}{tenant}/oauth2/v2.0/token", self.authority_host)
    }

    /// The `WWW-Authenticate` value a vault of `tenant` answers unauthenticated calls with.
    pub fn challenge(&self, tenant: &str) -> String {
        self.challenge_for(tenant, KEY_VAULT_RESOURCE)
    }

    /// The claims challenge Key Vault answers a revoked token with (continuous
    /// access evaluation): the token must be newer than `since` (Unix seconds).
    /// Shaped as Key Vault sends it: no resource, the `common` authorize URL,
    /// `error="insufficient_claims"` and the claims request in base64.
    pub fn claims_challenge(&self, since: i64) -> String {
        let claims =
            format!(r#"{{"access_token":{{"nbf":{{"essential":true,"value":"{since}"}}}}}}"#);
        format!(
            r#"Bearer realm="", authorization_uri="{}common/oauth2/authorize", error="insufficient_claims", claims="{}""#,
            self.authority_host,
            base64::engine::general_purpose::STANDARD.encode(claims)
        )
    }

    /// A challenge naming any `resource` (for the injected foreign challenge).
    pub fn challenge_for(&self, tenant: &str, resource: &str) -> String {
        format!(
            r#"Bearer authorization="{}{tenant}", resource="{resource}""#,
            self.authority_host
        )
    }

    /// Signs an access token for `app` and `resource`, and records it (control
    /// API `GET /issued`).
    pub fn issue_access_token(
        &self,
        app: &App,
        resource: Resource,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let token = lock(&self.tokens).issue(
            resource,
            &app.tenant_id,
            &app.client_id,
            &app.object_id,
            now(),
        )?;
        lock(&self.issued).access_tokens.push(token.clone());
        Ok(token)
    }

    /// Tenants exist when an app or a vault lives in them.
    pub fn knows_tenant(&self, tenant: &str) -> bool {
        self.vaults.values().any(|site| site.tenant_id == tenant)
            || lock(&self.directory).has_tenant(tenant)
    }
}
