//! Key Vault access: "fetch these secrets for this identity".
//!
//! ```text
//!  sync ──(vault URL, Identity, name, version)──▶ VaultAccess ──▶ SecretClient (one per vault × identity)
//!                                                    │                 └─ credential (one per identity, token cache)
//!                                                    └─ AllowedHosts: no token leaves for an unlisted host
//! ```
//!
//! The reconciler sees only this small interface (`get`, `list`,
//! `subscribe`). Behind it, with `--change-detection=list` (the default),
//! each (vault, identity) is listed once per refresh window and values are
//! read only when the listing says they changed (see [`view`]); with `get`,
//! every read is a GET, as ESO does (kept as the benchmark baseline).
//! Every call passes the vault's [`gate`]: a concurrency limit and one shared
//! backoff after a 429. The SDK's own retry policy is off: backoff is decided
//! here and by the reconciler, which knows whether a Secret already holds
//! good data, instead of multiplying retries per request.

mod certificate;
mod detect;
mod errors;
mod gate;
mod hosts;
mod identity;
mod sdk;
mod view;

pub use errors::VaultError;
pub use hosts::{AllowedHosts, DEFAULT_VAULT_HOSTS};
pub use identity::{FEDERATION_AUDIENCE, Identity, OperatorIdentity};

pub use view::Interest;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use gate::VaultGate;
use sdk::Sdk;
use view::{Listed, VaultView, answered_by_listing, unix_now, value_key};

/// One secret version as read from the vault.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteSecret {
    pub name: String,
    pub version: String,
    pub value: String,
    pub content_type: Option<String>,
    /// The version's `updated` attribute (Unix seconds).
    pub updated: Option<i64>,
}

impl std::fmt::Debug for RemoteSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RemoteSecret({}/{}, {} bytes)",
            self.name,
            self.version,
            self.value.len()
        )
    }
}

/// What a listing says about one secret (no value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteSecretInfo {
    pub name: String,
    pub enabled: bool,
    pub tags: BTreeMap<String, String>,
    pub updated: Option<i64>,
}

/// How the operator reaches Azure.
#[derive(Clone, Debug)]
pub struct VaultConfig {
    pub authority_host: String,
    pub allowed_hosts: AllowedHosts,
    pub operator: OperatorIdentity,
    /// Extra CA certificates (PEM) to trust, e.g. the emulator's.
    pub extra_ca_pem: Option<Vec<u8>>,
    pub request_timeout: Duration,
    pub change_detection: ChangeDetection,
    /// Concurrent requests per vault.
    pub vault_concurrency: usize,
    /// Cap of the shared per-vault backoff after a 429.
    pub max_backoff: Duration,
}

/// How kvsync notices that a vault secret changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ChangeDetection {
    /// One paged listing per (vault, identity) per refresh window; values read only when changed.
    List,
    /// A GET per referenced secret per refresh (what ESO does; the benchmark baseline).
    Get,
}

/// How recent a read must be.
#[derive(Clone, Copy, Debug)]
pub enum Freshness {
    /// A listing started no longer ago than this.
    Within(Duration),
    /// Read the vault as of now (`kvsync.io/force-sync`).
    Now,
}

/// Reads Key Vault on behalf of identities.
pub struct VaultAccess {
    inner: Arc<Inner>,
}

struct Inner {
    sdk: Sdk,
    config: VaultConfig,
    gates: Mutex<HashMap<String, Arc<VaultGate>>>,
    views: Mutex<HashMap<(String, String), Arc<VaultView>>>,
    changes: UnboundedSender<String>,
    change_feed: Mutex<Option<UnboundedReceiver<String>>>,
}

/// How long a refused listing makes kvsync read by GET for that identity.
const LISTING_REFUSED_FOR: Duration = Duration::from_secs(600);

impl VaultAccess {
    pub fn new(kube: kube::Client, config: VaultConfig) -> Result<Self, String> {
        let (changes, feed) = unbounded_channel();
        Ok(VaultAccess {
            inner: Arc::new(Inner {
                sdk: Sdk::new(kube, &config)?,
                config,
                gates: Mutex::default(),
                views: Mutex::default(),
                changes,
                change_feed: Mutex::new(Some(feed)),
            }),
        })
    }

    /// Keys (`namespace/name`) of subscribers whose secrets changed in the vault.
    /// Can be taken once.
    pub fn take_change_feed(&self) -> Option<UnboundedReceiver<String>> {
        self.inner.change_feed.lock().unwrap().take()
    }

    /// Whether a vault URL may be used at all (checked before any request).
    pub fn check_vault_url(&self, vault_url: &str) -> Result<(), String> {
        self.inner.sdk.check_vault_url(vault_url)
    }

    /// Reads one secret (the latest version when `version` is `None`). With
    /// `as_pem`, Key Vault converts a PKCS#12 certificate-backed secret to PEM.
    pub async fn get(
        &self,
        vault_url: &str,
        identity: &Identity,
        name: &str,
        version: Option<&str>,
        as_pem: bool,
        freshness: Freshness,
    ) -> Result<RemoteSecret, VaultError> {
        let inner = &self.inner;
        if inner.config.change_detection == ChangeDetection::Get {
            return inner
                .gate(vault_url)
                .run(inner.sdk.get(vault_url, identity, name, version, as_pem))
                .await;
        }
        let view = inner.view(vault_url, identity);
        let key = value_key(name, version, as_pem);
        let snapshot = if key.1.is_some() || view.listing_refused() {
            None
        } else {
            match inner.listing(&view, vault_url, identity, freshness).await {
                Ok(listed) => Some(listed.snapshot),
                Err(VaultError::Forbidden(_)) => None,
                Err(other) => return Err(other),
            }
        };
        if let Some(error) = snapshot
            .as_deref()
            .and_then(|s| answered_by_listing(s, name))
        {
            return Err(error);
        }
        let lock = view.read_lock(&key);
        let _single_flight = lock.lock().await;
        if let Some(found) = view.cached(&key, snapshot.as_deref()) {
            return Ok(found);
        }
        let read_at = unix_now();
        let secret = inner
            .gate(vault_url)
            .run(inner.sdk.get(vault_url, identity, name, version, as_pem))
            .await?;
        view.remember(key, secret.clone(), read_at);
        Ok(secret)
    }

    /// Every secret in the vault (names, tags, enabled; no values).
    pub async fn list(
        &self,
        vault_url: &str,
        identity: &Identity,
        freshness: Freshness,
    ) -> Result<Vec<RemoteSecretInfo>, VaultError> {
        let inner = &self.inner;
        if inner.config.change_detection == ChangeDetection::Get {
            return inner
                .gate(vault_url)
                .run(inner.sdk.list(vault_url, identity))
                .await;
        }
        let view = inner.view(vault_url, identity);
        let listed = inner.listing(&view, vault_url, identity, freshness).await?;
        Ok(listed.snapshot.values().cloned().collect())
    }

    /// Registers `subscriber` (`namespace/name`) as depending on `interest`
    /// in this vault, so that a change found by the poller syncs it at once.
    /// Renewed on every sync; forgotten when no longer renewed.
    pub fn subscribe(
        &self,
        vault_url: &str,
        identity: &Identity,
        subscriber: &str,
        interest: Interest,
        interval: Duration,
    ) {
        if self.inner.config.change_detection == ChangeDetection::Get {
            return;
        }
        let view = self.inner.view(vault_url, identity);
        if view.subscribe(subscriber, interest, interval) {
            tokio::spawn(poll(
                self.inner.clone(),
                view,
                vault_url.to_owned(),
                identity.clone(),
            ));
        }
    }
}

impl Inner {
    fn gate(&self, vault_url: &str) -> Arc<VaultGate> {
        let mut gates = self.gates.lock().unwrap();
        gates
            .entry(vault_url.trim_end_matches('/').to_ascii_lowercase())
            .or_insert_with(|| {
                Arc::new(VaultGate::new(
                    self.config.vault_concurrency,
                    self.config.max_backoff,
                ))
            })
            .clone()
    }

    fn view(&self, vault_url: &str, identity: &Identity) -> Arc<VaultView> {
        let key = (
            vault_url.trim_end_matches('/').to_ascii_lowercase(),
            identity.cache_key(),
        );
        self.views.lock().unwrap().entry(key).or_default().clone()
    }

    /// The listing, re-read if it is older than `freshness` allows. Callers
    /// arriving while a listing is in flight wait for it instead of sending
    /// their own.
    async fn listing(
        &self,
        view: &VaultView,
        vault_url: &str,
        identity: &Identity,
        freshness: Freshness,
    ) -> Result<Listed, VaultError> {
        let asked = Instant::now();
        let mut guard = view.listing.lock().await;
        if let Some(listed) = guard.as_ref() {
            let fresh_enough = match freshness {
                Freshness::Within(_) => true,
                Freshness::Now => listed.started >= asked,
            };
            if fresh_enough {
                return match view.listing_failure.lock().unwrap().clone() {
                    Some(failure) => Err(failure),
                    None => Ok(listed.clone()),
                };
            }
        }
        let started = Instant::now();
        let result = self
            .gate(vault_url)
            .run(self.sdk.list(vault_url, identity))
            .await;
        let items = match result {
            Ok(items) => items,
            Err(VaultError::Forbidden(message)) => {
                *view.listing_refused_until.lock().unwrap() =
                    Some(Instant::now() + LISTING_REFUSED_FOR);
                return Err(VaultError::Forbidden(message));
            }
            Err(other) => {
                *view.listing_failure.lock().unwrap() = Some(other.clone());
                view.listing_failed.notify_waiters();
                return Err(other);
            }
        };
        *view.listing_failure.lock().unwrap() = None;
        let snapshot = Arc::new(items.into_iter().map(|i| (i.name.clone(), i)).collect());
        let listed = Listed { started, snapshot };
        let previous = guard.replace(listed.clone());
        if let Some(previous) = previous {
            view.notify_changes(&previous.snapshot, &listed.snapshot, &self.changes);
        }
        Ok(listed)
    }
}

/// Keeps one (vault, identity) listing fresh while anyone subscribes to it.
///
/// While listing fails, subscribers see the failure without sending requests
/// of their own, so the poller alone retries: with backoff (exponential from
/// 1 s, capped by `--max-backoff`, `Retry-After` as a floor) instead of every
/// period, so that an outage is neither hammered at short refresh intervals
/// nor noticed late at long ones (a listing that fails for someone else, a
/// force-sync say, starts the backoff too). When the listing works again
/// every subscriber is told to sync at once.
async fn poll(inner: Arc<Inner>, view: Arc<VaultView>, vault_url: String, identity: Identity) {
    let mut failures = 0;
    let mut retry_after = None;
    while let Some(period) = view.poll_period() {
        let delay = if failures == 0 {
            crate::schedule::refresh_delay(period, rand::random())
        } else {
            // Not before the vault's shared 429 backoff ends: waking into it
            // would fail without a request and back off a second time.
            crate::schedule::backoff_delay(
                failures,
                retry_after,
                inner.config.max_backoff,
                rand::random(),
            )
            .max(
                inner
                    .gate(&vault_url)
                    .remaining_backoff()
                    .unwrap_or_default(),
            )
        };
        if failures == 0 {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = view.listing_failed.notified() => {
                    failures = 1;
                    retry_after = view.listing_failure.lock().unwrap().as_ref().and_then(VaultError::retry_after);
                    continue;
                }
            }
        } else {
            tokio::time::sleep(delay).await;
        }
        match inner
            .listing(&view, &vault_url, &identity, Freshness::Now)
            .await
        {
            Ok(_) if failures > 0 => {
                failures = 0;
                view.notify_all(&inner.changes);
            }
            Ok(_) => {}
            Err(error) => {
                failures += 1;
                retry_after = error.retry_after();
                tracing::debug!(vault = %vault_url, %error, failures, "listing failed; retrying with backoff");
            }
        }
    }
}

/// Reads an optional PEM bundle file named by a flag.
pub fn read_ca_file(path: Option<&Path>) -> Result<Option<Vec<u8>>, String> {
    path.map(|p| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display())))
        .transpose()
}
