//! The seed file: the vaults with their first secrets, the app registrations, and
//! where to find the signing keys of outside token issuers.
//!
//! ```yaml
//! vaults:
//! - name: shop
//!   tenantId: 72f988bf-…            # optional; defaults to the first app's tenant
//!   secrets:
//!   - {name: db-password, value: "s3cr3t", contentType: text/plain, tags: {env: prod}, enabled: true}
//! apps:
//! - tenantId: 72f988bf-…
//!   clientId: 11111111-…
//!   clientSecret: "…"               # optional
//!   certificate: "<PEM>"             # optional
//!   federatedCredentials: [{issuer: "https://127.0.0.1:6443", subject: "system:serviceaccount:ns:sa", audience: "api://AzureADTokenExchange"}]
//!   access: [{vault: shop, secrets: ["*"]}]
//! issuers:
//! - issuer: "https://127.0.0.1:6443"
//!   jwksFile: jwks.json              # or, without it, OIDC discovery at the issuer,
//!   caFile: ca.crt                   #   trusting this CA (default: system roots)
//!   bearerTokenFile: token           #   and sending this bearer token (read per fetch)
//! serviceLimits: {}                  # optional: Key Vault's throttling (see limits.rs)
//! eventGrid:                         # optional: a namespace with pull delivery (see eventgrid/)
//!   tenantId: 72f988bf-…             #   tokens must come from it (default: the first vault's tenant)
//!   subscriptionId: 0000…            #   the vaults' Azure subscription and resource group,
//!   resourceGroup: kvsync-emulator   #   in every event's `source`
//!   topics:
//!   - name: keyvault
//!     subscriptions:
//!     - {name: kvsync, vaults: [shop], lockDurationSeconds: 60, maxDeliveryCount: 10}
//!   queues:                          #   storage-queue destinations (Azurite in tests)
//!   - {url: "https://127.0.0.1:10001/devstoreaccount1/kv-events", vaults: [shop],
//!      schema: eventGrid, base64: true}   # schema: eventGrid (default) | cloudEvents
//! ```
//!
//! Relative paths are resolved against the seed file's directory. Everything is
//! checked up front so that a typo fails at start with a message naming the field,
//! not later as a puzzling 401.

use super::directory::{App, AppRegistration, RegistrationError, is_valid_tenant};
use super::eventgrid::EventGridConfig;
use super::eventgrid::broker::{
    DEFAULT_LOCK_DURATION, DEFAULT_MAX_DELIVERY_COUNT, SubscriptionConfig,
};
use super::eventgrid::queue::{EventSchema, QueueConfig};
use super::eventgrid::schema::ResourceGroup;
use super::limits::LimitsConfig;
use super::store::{NewSecret, StoreError, validate_new_secret};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

/// Real vault names: 3–24 letters, digits and single hyphens, starting with a letter.
static VAULT_NAME: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new("^[a-zA-Z](?:[a-zA-Z0-9]|-[a-zA-Z0-9]){2,23}$").expect("valid regex")
});

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read seed file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("seed file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_norway::Error,
    },
    #[error("the seed defines no vault")]
    NoVaults,
    #[error(
        "vault name {0:?} is invalid: 3-24 letters, digits and single hyphens, starting with a letter"
    )]
    InvalidVaultName(String),
    #[error("vault {0} is defined twice")]
    DuplicateVault(String),
    #[error("vault {0} has no tenantId and there is no app to take it from")]
    NoTenant(String),
    #[error("vault {vault}: tenantId {tenant:?} is invalid")]
    InvalidVaultTenant { vault: String, tenant: String },
    #[error("vault {vault}: secret {secret} is defined twice")]
    DuplicateSecret { vault: String, secret: String },
    #[error("vault {vault}: secret {secret}: {source}")]
    InvalidSecret {
        vault: String,
        secret: String,
        source: StoreError,
    },
    #[error(transparent)]
    App(#[from] AppError),
    #[error("issuer {0} is defined twice")]
    DuplicateIssuer(String),
    #[error("issuer {0}: caFile and bearerTokenFile apply to discovery only, not with jwksFile")]
    DiscoveryOptionsWithJwksFile(String),
    #[error("issuer {0} is not an https URL")]
    InvalidIssuerUrl(String),
    #[error("eventGrid: {0}")]
    EventGrid(String),
}

/// Why an app registration (seed or control API) cannot be accepted.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Registration(#[from] RegistrationError),
    #[error("app {0} is defined twice")]
    Duplicate(String),
    #[error("app {client_id}: access grant names vault {vault}, which does not exist")]
    UnknownVault { client_id: String, vault: String },
    #[error(
        "app {client_id}: federated credential issuer {issuer} has no entry under `issuers` (its signing keys would be unknown)"
    )]
    UnknownIssuer { client_id: String, issuer: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SeedFile {
    vaults: Vec<VaultSeed>,
    #[serde(default)]
    apps: Vec<AppRegistration>,
    #[serde(default)]
    issuers: Vec<IssuerSeed>,
    service_limits: Option<LimitsConfig>,
    event_grid: Option<EventGridSeed>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EventGridSeed {
    tenant_id: Option<String>,
    subscription_id: Option<String>,
    resource_group: Option<String>,
    #[serde(default)]
    topics: Vec<TopicSeed>,
    #[serde(default)]
    queues: Vec<QueueSeed>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TopicSeed {
    name: String,
    #[serde(default)]
    subscriptions: Vec<EventSubscriptionSeed>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EventSubscriptionSeed {
    name: String,
    vaults: Vec<String>,
    lock_duration_seconds: Option<u64>,
    max_delivery_count: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct QueueSeed {
    url: String,
    vaults: Vec<String>,
    #[serde(default)]
    schema: EventSchema,
    base64: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct VaultSeed {
    name: String,
    tenant_id: Option<String>,
    #[serde(default)]
    secrets: Vec<SecretSeed>,
}

/// A seed secret is a [`NewSecret`] with a name; serde cannot both flatten and
/// refuse unknown fields, so the fields are spelled out.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SecretSeed {
    name: String,
    value: String,
    content_type: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    enabled: Option<bool>,
    nbf: Option<i64>,
    exp: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct IssuerSeed {
    issuer: String,
    jwks_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    bearer_token_file: Option<PathBuf>,
}

/// A vault with its first secrets, in seed order.
#[derive(Debug)]
pub struct VaultConfig {
    pub name: String,
    pub tenant_id: String,
    pub secrets: Vec<(String, NewSecret)>,
}

/// Where the signing keys of one outside issuer come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySourceConfig {
    JwksFile(PathBuf),
    Discovery {
        ca_file: Option<PathBuf>,
        bearer_token_file: Option<PathBuf>,
    },
}

/// The validated seed.
#[derive(Debug)]
pub struct Config {
    pub vaults: Vec<VaultConfig>,
    pub apps: Vec<App>,
    pub issuers: BTreeMap<String, KeySourceConfig>,
    /// What app registrations (here and at runtime) may refer to.
    pub known_names: KnownNames,
    /// Key Vault's throttling, when the seed asks for it ([`crate::limits`]).
    pub service_limits: Option<LimitsConfig>,
    /// The Event Grid namespace, when the seed has one.
    pub event_grid: Option<EventGridConfig>,
}

/// Reads and validates a seed file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let seed: SeedFile = serde_norway::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    validate(seed, base_dir)
}

/// What an app registration may refer to: the seed's vaults and issuers.
#[derive(Debug, Clone)]
pub struct KnownNames {
    pub vaults: BTreeSet<String>,
    pub issuers: BTreeSet<String>,
}

/// Validates one app registration against the known vaults and issuers.
pub fn validate_app(registration: AppRegistration, known: &KnownNames) -> Result<App, AppError> {
    let client_id = registration.client_id.clone();
    if let Some(grant) = registration
        .access
        .iter()
        .find(|grant| !known.vaults.contains(&grant.vault))
    {
        return Err(AppError::UnknownVault {
            client_id,
            vault: grant.vault.clone(),
        });
    }
    if let Some(credential) = registration
        .federated_credentials
        .iter()
        .find(|credential| !known.issuers.contains(&credential.issuer))
    {
        return Err(AppError::UnknownIssuer {
            client_id,
            issuer: credential.issuer.clone(),
        });
    }
    Ok(App::try_from(registration)?)
}

fn validate(seed: SeedFile, base_dir: &Path) -> Result<Config, ConfigError> {
    if seed.vaults.is_empty() {
        return Err(ConfigError::NoVaults);
    }
    let issuers = validate_issuers(seed.issuers, base_dir)?;
    let known = KnownNames {
        vaults: seed.vaults.iter().map(|v| v.name.clone()).collect(),
        issuers: issuers.keys().cloned().collect(),
    };
    let mut apps = Vec::with_capacity(seed.apps.len());
    let mut client_ids = BTreeSet::new();
    for registration in seed.apps {
        if !client_ids.insert(registration.client_id.clone()) {
            return Err(AppError::Duplicate(registration.client_id).into());
        }
        apps.push(validate_app(registration, &known)?);
    }
    let default_tenant = apps.first().map(|app| app.tenant_id.clone());
    let mut vault_names = BTreeSet::new();
    let mut vaults = Vec::with_capacity(seed.vaults.len());
    for vault in seed.vaults {
        if !VAULT_NAME.is_match(&vault.name) {
            return Err(ConfigError::InvalidVaultName(vault.name));
        }
        if !vault_names.insert(vault.name.clone()) {
            return Err(ConfigError::DuplicateVault(vault.name));
        }
        let tenant_id = match vault.tenant_id.or_else(|| default_tenant.clone()) {
            None => return Err(ConfigError::NoTenant(vault.name)),
            Some(tenant) if !is_valid_tenant(&tenant) => {
                return Err(ConfigError::InvalidVaultTenant {
                    vault: vault.name,
                    tenant,
                });
            }
            Some(tenant) => tenant,
        };
        let secrets = validate_secrets(&vault.name, vault.secrets)?;
        vaults.push(VaultConfig {
            name: vault.name,
            tenant_id,
            secrets,
        });
    }
    let event_grid = seed
        .event_grid
        .map(|grid| validate_event_grid(grid, &vaults))
        .transpose()?;
    Ok(Config {
        vaults,
        apps,
        issuers,
        known_names: known,
        service_limits: seed.service_limits,
        event_grid,
    })
}

fn validate_event_grid(
    seed: EventGridSeed,
    vaults: &[VaultConfig],
) -> Result<EventGridConfig, ConfigError> {
    let fail = |message: String| Err(ConfigError::EventGrid(message));
    let known_vaults = |names: Vec<String>, owner: &str| -> Result<BTreeSet<String>, ConfigError> {
        match names
            .iter()
            .find(|name| !vaults.iter().any(|v| &v.name == *name))
        {
            Some(unknown) => Err(ConfigError::EventGrid(format!(
                "{owner} names vault {unknown}, which does not exist"
            ))),
            None => Ok(names.into_iter().collect()),
        }
    };
    let tenant_id = match seed.tenant_id {
        Some(tenant) if !is_valid_tenant(&tenant) => {
            return fail(format!("tenantId {tenant:?} is invalid"));
        }
        Some(tenant) => tenant,
        None => vaults[0].tenant_id.clone(),
    };
    let mut subscriptions = Vec::new();
    let mut seen = BTreeSet::new();
    for topic in seed.topics {
        for subscription in topic.subscriptions {
            let owner = format!("subscription {}/{}", topic.name, subscription.name);
            if !seen.insert((topic.name.clone(), subscription.name.clone())) {
                return fail(format!("{owner} is defined twice"));
            }
            let lock_duration = match subscription.lock_duration_seconds {
                Some(0) => return fail(format!("{owner}: lockDurationSeconds must be at least 1")),
                Some(seconds) => std::time::Duration::from_secs(seconds),
                None => DEFAULT_LOCK_DURATION,
            };
            subscriptions.push(SubscriptionConfig {
                vaults: known_vaults(subscription.vaults, &owner)?,
                topic: topic.name.clone(),
                name: subscription.name,
                lock_duration,
                max_delivery_count: subscription
                    .max_delivery_count
                    .unwrap_or(DEFAULT_MAX_DELIVERY_COUNT)
                    .max(1),
            });
        }
    }
    let mut queues = Vec::new();
    for queue in seed.queues {
        let url = match url::Url::parse(&queue.url) {
            Ok(url) if url.scheme() == "https" => url,
            _ => return fail(format!("queue {} is not an https URL", queue.url)),
        };
        queues.push(QueueConfig {
            vaults: known_vaults(queue.vaults, &format!("queue {url}"))?,
            url,
            schema: queue.schema,
            base64: queue.base64.unwrap_or(true),
        });
    }
    Ok(EventGridConfig {
        tenant_id,
        resource_group: ResourceGroup {
            subscription_id: seed
                .subscription_id
                .unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".to_owned()),
            name: seed
                .resource_group
                .unwrap_or_else(|| "kvsync-emulator".to_owned()),
        },
        subscriptions,
        queues,
    })
}

fn validate_secrets(
    vault: &str,
    seeds: Vec<SecretSeed>,
) -> Result<Vec<(String, NewSecret)>, ConfigError> {
    let mut names = BTreeSet::new();
    let mut secrets = Vec::with_capacity(seeds.len());
    for seed in seeds {
        if !names.insert(seed.name.clone()) {
            return Err(ConfigError::DuplicateSecret {
                vault: vault.to_owned(),
                secret: seed.name,
            });
        }
        let secret = NewSecret {
            value: seed.value,
            content_type: seed.content_type,
            tags: seed.tags,
            enabled: seed.enabled,
            nbf: seed.nbf,
            exp: seed.exp,
        };
        validate_new_secret(&seed.name, &secret).map_err(|source| ConfigError::InvalidSecret {
            vault: vault.to_owned(),
            secret: seed.name.clone(),
            source,
        })?;
        secrets.push((seed.name, secret));
    }
    Ok(secrets)
}

fn validate_issuers(
    seeds: Vec<IssuerSeed>,
    base_dir: &Path,
) -> Result<BTreeMap<String, KeySourceConfig>, ConfigError> {
    let mut issuers = BTreeMap::new();
    for seed in seeds {
        let is_https = url::Url::parse(&seed.issuer).is_ok_and(|url| url.scheme() == "https");
        if !is_https {
            return Err(ConfigError::InvalidIssuerUrl(seed.issuer));
        }
        let resolve = |path: PathBuf| base_dir.join(path);
        let source = match seed.jwks_file {
            Some(jwks_file) => {
                if seed.ca_file.is_some() || seed.bearer_token_file.is_some() {
                    return Err(ConfigError::DiscoveryOptionsWithJwksFile(seed.issuer));
                }
                KeySourceConfig::JwksFile(resolve(jwks_file))
            }
            None => KeySourceConfig::Discovery {
                ca_file: seed.ca_file.map(resolve),
                bearer_token_file: seed.bearer_token_file.map(resolve),
            },
        };
        if issuers.insert(seed.issuer.clone(), source).is_some() {
            return Err(ConfigError::DuplicateIssuer(seed.issuer));
        }
    }
    Ok(issuers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        let seed: SeedFile = serde_norway::from_str(yaml).map_err(|source| ConfigError::Parse {
            path: "seed.yaml".into(),
            source,
        })?;
        validate(seed, Path::new("/seeds"))
    }

    #[test]
    fn a_full_seed_is_accepted_with_defaults_filled_in() {
        let config = parse(&format!(
            r#"
vaults:
- name: shop
  secrets:
  - {{name: db-password, value: "s3cr3t", contentType: text/plain, tags: {{env: prod}}, enabled: true}}
- name: other-vault
  tenantId: contoso.onmicrosoft.com
apps:
- tenantId: {TENANT}
  clientId: 11111111-1111-1111-1111-111111111111
  clientSecret: "x"
  federatedCredentials:
  - {{issuer: "https://127.0.0.1:6443", subject: "system:serviceaccount:ns:sa", audience: "api://AzureADTokenExchange"}}
  access:
  - {{vault: shop, secrets: ["*"]}}
issuers:
- issuer: "https://127.0.0.1:6443"
  caFile: ca.crt
  bearerTokenFile: /abs/token
- issuer: "https://files.test"
  jwksFile: keys/jwks.json
"#
        ))
        .unwrap();
        assert_eq!(config.vaults[0].tenant_id, TENANT);
        assert_eq!(config.vaults[1].tenant_id, "contoso.onmicrosoft.com");
        assert_eq!(config.vaults[0].secrets[0].0, "db-password");
        assert_eq!(
            config.issuers["https://127.0.0.1:6443"],
            KeySourceConfig::Discovery {
                ca_file: Some("/seeds/ca.crt".into()),
                bearer_token_file: Some("/abs/token".into()),
            }
        );
        assert_eq!(
            config.issuers["https://files.test"],
            KeySourceConfig::JwksFile("/seeds/keys/jwks.json".into())
        );
    }

    fn error_of(yaml: &str) -> String {
        parse(yaml).unwrap_err().to_string()
    }

    #[test]
    fn mistakes_are_reported_with_what_is_wrong() {
        let cases = [
            ("vaults: []", "defines no vault"),
            ("vaults: [{name: shop}]", "no tenantId"),
            (
                "vaults: [{name: sh, tenantId: t}]",
                "vault name \"sh\" is invalid",
            ),
            (
                "vaults: [{name: shop, tenantId: t}, {name: shop, tenantId: t}]",
                "defined twice",
            ),
            (
                "vaults: [{name: shop, tenantId: t, secrets: [{name: a_b, value: v}]}]",
                "secret a_b: Secret name 'a_b' is invalid",
            ),
            (
                "vaults: [{name: shop, tenantId: t, secrets: [{name: a, value: v}, {name: a, value: w}]}]",
                "secret a is defined twice",
            ),
            (
                "vaults: [{name: shop, tenantId: t, secrets: [{name: a, valu: v}]}]",
                "unknown field `valu`",
            ),
            (
                "vaults: [{name: shop}]\napps: [{tenantId: t, clientId: c, access: [{vault: nope, secrets: ['*']}]}]",
                "access grant names vault nope",
            ),
            (
                "vaults: [{name: shop}]\napps: [{tenantId: t, clientId: c, federatedCredentials: [{issuer: 'https://i', subject: s, audience: a}]}]",
                "issuer https://i has no entry under `issuers`",
            ),
            (
                "vaults: [{name: shop}]\napps: [{tenantId: t, clientId: c}, {tenantId: t, clientId: c}]",
                "app c is defined twice",
            ),
            (
                "vaults: [{name: shop, tenantId: t}]\nissuers: [{issuer: 'https://i', jwksFile: j, caFile: c}]",
                "apply to discovery only",
            ),
            (
                "vaults: [{name: shop, tenantId: t}]\nissuers: [{issuer: 'http://i', jwksFile: j}]",
                "not an https URL",
            ),
            (
                "vaults: [{name: shop, tenantId: t}]\neventGrid: {topics: [{name: kv, subscriptions: [{name: s, vaults: [nope]}]}]}",
                "eventGrid: subscription kv/s names vault nope",
            ),
            (
                "vaults: [{name: shop, tenantId: t}]\neventGrid: {topics: [{name: kv, subscriptions: [{name: s, vaults: [shop]}, {name: s, vaults: [shop]}]}]}",
                "subscription kv/s is defined twice",
            ),
            (
                "vaults: [{name: shop, tenantId: t}]\neventGrid: {queues: [{url: 'http://q/a/b', vaults: [shop]}]}",
                "queue http://q/a/b is not an https URL",
            ),
        ];
        for (yaml, expected) in cases {
            let message = error_of(yaml);
            assert!(
                message.contains(expected),
                "{yaml}: {message:?} should contain {expected:?}"
            );
        }
    }
}
