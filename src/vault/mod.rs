//! Key Vault access: "fetch these secrets for this identity".
//!
//! ```text
//!  sync ──(vault URL, Identity, name, version)──▶ VaultAccess ──▶ SecretClient (one per vault × identity)
//!                                                    │                 └─ credential (one per identity, token cache)
//!                                                    └─ AllowedHosts: no token leaves for an unlisted host
//! ```
//!
//! The reconciler sees only this small interface (`get`, `list`,
//! `versions`, `subscribe`). Every read says how recent its answer must be
//! ([`Freshness`]: within the object's own refresh interval, or as of now),
//! whatever else shares the vault and identity ([`freshness`]). Behind it,
//! with `--change-detection=list` (the default), each (vault, identity) is
//! listed once per shortest subscribed interval and values are read only
//! when the listing says they changed (see [`view`]); with `get`, every
//! read is a GET, as ESO does (kept as the benchmark baseline). State of
//! vaults nobody reads any more is dropped.
//! Every call passes the vault's [`gate`]: a concurrency limit and one shared
//! backoff after a 429. The SDK's own retry policy is off: backoff is decided
//! here and by the reconciler, which knows whether a Secret already holds
//! good data, instead of multiplying retries per request.

mod certificate;
mod detect;
mod errors;
mod freshness;
mod gate;
mod hosts;
mod identity;
mod revoked;
mod scoped;
mod sdk;
mod versions;
mod view;

pub use errors::{SetupError, VaultError, VaultUrlError};
pub use freshness::Freshness;
pub use hosts::{AllowedHosts, CLOUDS, Cloud};
pub use identity::{Credentials, FEDERATION_AUDIENCE, Identity, OperatorIdentity};

pub use versions::{Choice, VersionInfo, choose, previous_of, valid};
pub use view::Interest;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use detect::{ReadStamp, Snapshot, as_of};
use freshness::{Attempt, Decision, Need, decide, next_listing, retry_window};
use gate::VaultGate;
use sdk::Sdk;
use view::{
    ListingState, ValueRead, VaultView, answered_by_listing, current_value, unix_now, value_key,
};

/// One secret version as read from the vault.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteSecret {
    pub name: String,
    pub version: String,
    pub value: String,
    pub content_type: Option<String>,
    /// The version's `updated` attribute (Unix seconds).
    pub updated: Option<i64>,
    /// The version's `nbf` (not before) attribute (Unix seconds), informational in Key Vault.
    pub not_before: Option<i64>,
    /// The version's `exp` (expires) attribute (Unix seconds), informational in Key Vault.
    pub expires: Option<i64>,
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

/// State of a (vault, identity) nobody subscribes to is dropped after this
/// long without a read; so are cached values nobody read for this long (or
/// three intervals of the slowest subscriber, if longer).
const UNUSED_FOR: Duration = Duration::from_secs(600);

/// How often unused state is looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The key of a vault in every map here: its URL, case and trailing slash aside.
fn vault_key(vault_url: &str) -> String {
    vault_url.trim_end_matches('/').to_ascii_lowercase()
}

impl VaultAccess {
    /// Must be called within a Tokio runtime (it starts the sweeper of unused state).
    pub fn new(kube: kube::Client, config: VaultConfig) -> Result<Self, SetupError> {
        let (changes, feed) = unbounded_channel();
        let inner = Arc::new(Inner {
            sdk: Sdk::new(kube, &config)?,
            config,
            gates: Mutex::default(),
            views: Mutex::default(),
            changes,
            change_feed: Mutex::new(Some(feed)),
        });
        tokio::spawn(sweep_unused(Arc::downgrade(&inner)));
        Ok(VaultAccess { inner })
    }

    /// Keys (`namespace/name`) of subscribers whose secrets changed in the vault.
    /// Can be taken once.
    pub fn take_change_feed(&self) -> Option<UnboundedReceiver<String>> {
        self.inner.change_feed.lock().unwrap().take()
    }

    /// Whether a vault URL may be used at all (checked before any request).
    pub fn check_vault_url(&self, vault_url: &str) -> Result<(), VaultUrlError> {
        self.inner.sdk.check_vault_url(vault_url)
    }

    /// Reads one secret (the latest version when `version` is `None`). With
    /// `as_pem`, Key Vault converts a PKCS#12 certificate-backed secret to PEM.
    /// The answer is what the vault said at most `freshness` ago.
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
        let view = inner.view(vault_url, identity);
        if inner.config.change_detection == ChangeDetection::Get {
            return inner
                .gate(vault_url)
                .run(inner.sdk.get(vault_url, identity, name, version, as_pem))
                .await
                .map(|(secret, _)| secret);
        }
        let asked = Instant::now();
        let need = freshness.need(asked);
        let key = value_key(name, version, as_pem);
        let snapshot = if key.1.is_some() || view.listing_refused() {
            None
        } else {
            match inner.listing(&view, vault_url, identity, need).await {
                Ok(snapshot) => Some(snapshot),
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
        let slot = view.slot(&key);
        let mut read = slot.read.lock().await;
        if let Some(previous) = read.as_ref() {
            // A listing judges latest values; without one (a pinned version,
            // or a refused listing) the read's own age does.
            match snapshot.as_deref() {
                Some(listing) => {
                    if let Some(found) = current_value(previous, listing) {
                        return Ok(found);
                    }
                }
                None => {
                    let need = freshness.for_own_age().need(asked);
                    if let Decision::Answer(outcome) =
                        decide(Some(&previous.attempt), need, Instant::now())
                    {
                        return outcome;
                    }
                }
            }
        }
        let gate = inner.gate(vault_url);
        gate.admit()?;
        let started = Instant::now();
        let result = gate
            .run(inner.sdk.get(vault_url, identity, name, version, as_pem))
            .await;
        let stamp = result.as_ref().ok().map(|(secret, date)| ReadStamp {
            updated: secret.updated,
            as_of: as_of(*date, unix_now()),
        });
        let outcome = result.map(|(secret, _)| secret);
        let ended = Instant::now();
        let retry_from = outcome
            .as_ref()
            .err()
            .map(|error| ended + retry_window(1, error.retry_after(), inner.config.max_backoff));
        *read = Some(ValueRead {
            attempt: Attempt {
                started,
                ended,
                outcome: outcome.clone(),
                retry_from,
            },
            stamp,
        });
        outcome
    }

    /// Every secret in the vault (names, tags, enabled; no values), as the
    /// vault listed them at most `freshness` ago.
    pub async fn list(
        &self,
        vault_url: &str,
        identity: &Identity,
        freshness: Freshness,
    ) -> Result<Vec<RemoteSecretInfo>, VaultError> {
        let inner = &self.inner;
        let view = inner.view(vault_url, identity);
        if inner.config.change_detection == ChangeDetection::Get {
            return inner
                .gate(vault_url)
                .run(inner.sdk.list(vault_url, identity))
                .await;
        }
        let need = freshness.need(Instant::now());
        let snapshot = inner.listing(&view, vault_url, identity, need).await?;
        Ok(snapshot.values().cloned().collect())
    }

    /// Every version of the secret `read` is a version of (ids and
    /// attributes, no values), to choose among them ([`choose`]). `read` is
    /// what the caller just read (the latest, or a pinned version): a cached
    /// listing that does not show it as read (a new version came, or its
    /// attributes changed since) is listed again, as is one older than a
    /// `Now` read; otherwise the cached listing answers however old it is,
    /// so a secret's versions are listed once per new version (one listing
    /// for all concurrent readers, through the vault's gate).
    pub async fn versions(
        &self,
        vault_url: &str,
        identity: &Identity,
        read: &RemoteSecret,
        freshness: Freshness,
    ) -> Result<Arc<[VersionInfo]>, VaultError> {
        let inner = &self.inner;
        let name = read.name.as_str();
        let view = inner.view(vault_url, identity);
        let asked = Instant::now();
        let slot = view.versions_slot(name);
        let mut cached = slot.read.lock().await;
        if let Some(previous) = cached.as_ref() {
            let predates_read = previous.outcome.as_ref().is_ok_and(|versions| {
                !versions
                    .iter()
                    .any(|v| v.version == read.version && v.updated == read.updated)
            });
            let need = match freshness {
                Freshness::Now => Freshness::Now,
                _ => Freshness::Any,
            }
            .need(asked);
            if !predates_read
                && let Decision::Answer(outcome) = decide(Some(previous), need, Instant::now())
            {
                return outcome;
            }
        }
        let gate = inner.gate(vault_url);
        gate.admit()?;
        let started = Instant::now();
        let outcome = gate
            .run(inner.sdk.list_versions(vault_url, identity, name))
            .await
            .map(Arc::from);
        let ended = Instant::now();
        let retry_from = outcome
            .as_ref()
            .err()
            .map(|error| ended + retry_window(1, error.retry_after(), inner.config.max_backoff));
        *cached = Some(Attempt {
            started,
            ended,
            outcome: outcome.clone(),
            retry_from,
        });
        outcome
    }

    /// Forgets `subscriber` in every view at once: its object was deleted,
    /// left the scope, or cannot use its identity any more. A view nobody
    /// else subscribes to stops polling at its next turn (within one
    /// interval), and with it every use of that identity's credential.
    pub fn unsubscribe(&self, subscriber: &str) {
        self.retain_subscribers(|key| key != subscriber);
    }

    /// Forgets, in every view, the subscribers `keep` refuses.
    pub fn retain_subscribers(&self, keep: impl Fn(&str) -> bool) {
        let views: Vec<Arc<VaultView>> =
            self.inner.views.lock().unwrap().values().cloned().collect();
        for view in views {
            view.retain_subscribers(&keep);
        }
    }

    /// Registers `subscriber` (`namespace/name`) as depending on `interest`
    /// in this vault, so that a change found by the poller syncs it at once,
    /// and so that the vault is listed at least every `interval`.
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

    /// A Key Vault event's hint ([`crate::vault_events`]): `name` (`None`:
    /// anything) may have changed in the vaults whose key (URL, lower case,
    /// no trailing slash) `vault` accepts. In every view of such a vault
    /// (one per identity reading it) the name's cached latest values are
    /// forgotten ([`VaultView::hinted`]) and its subscribers are told to
    /// sync now, so they read it as of now through the usual gate, backoff
    /// and single-flight. The view lists again at once when the last good
    /// listing lacks the name (a new secret, which a `dataFrom.find` may
    /// match) or lists it disabled (the new version may be enabled), for a
    /// whole-vault hint, and when several subscribers read the name: one
    /// read serves them all only if the listing agrees with it and it was
    /// made in a later second than the version it reads (`updated` has
    /// one-second resolution, see `detect.rs`), so then the hint waits a
    /// second first. Returns the subscribers told: none when
    /// nobody reads such a vault, and then nothing at all is asked of a vault.
    pub async fn hint(&self, vault: impl Fn(&str) -> bool, name: Option<&str>) -> Vec<String> {
        const SHARED_READ_DELAY: Duration = Duration::from_secs(1);
        let views: Vec<Arc<VaultView>> = (self.inner.views.lock().unwrap().iter())
            .filter(|((key, _), _)| vault(key))
            .map(|(_, view)| view.clone())
            .collect();
        let shared = views.iter().any(|view| view.hinted(name).len() > 1);
        if shared {
            tokio::time::sleep(SHARED_READ_DELAY).await;
        }
        let mut told = Vec::new();
        for view in views {
            let relist = {
                let mut listing = view.listing.lock().await;
                let unlisted = name.is_none_or(|name| {
                    (listing.last_good.as_ref())
                        .is_some_and(|good| good.get(name).is_none_or(|info| !info.enabled))
                });
                let listed = (listing.newest.as_ref()).is_some_and(|newest| newest.outcome.is_ok());
                let relist = unlisted || shared;
                if relist && (listed || name.is_none()) {
                    listing.newest = None;
                }
                relist
            };
            if name.is_none() {
                view.refuse_listing_until(Instant::now());
            }
            for subscriber in view.hinted(name) {
                let _ = self.inner.changes.send(subscriber.clone());
                told.push(subscriber);
            }
            if relist {
                view.wake.notify_one();
            }
        }
        told
    }
}

impl Inner {
    fn gate(&self, vault_url: &str) -> Arc<VaultGate> {
        let mut gates = self.gates.lock().unwrap();
        gates
            .entry(vault_key(vault_url))
            .or_insert_with(|| {
                Arc::new(VaultGate::new(
                    self.config.vault_concurrency,
                    self.config.max_backoff,
                ))
            })
            .clone()
    }

    fn view(&self, vault_url: &str, identity: &Identity) -> Arc<VaultView> {
        let key = (vault_key(vault_url), identity.cache_key());
        let view = self.views.lock().unwrap().entry(key).or_default().clone();
        view.touch();
        view
    }

    /// The listing as recent as `need` asks (see [`freshness`]): the newest
    /// attempt's outcome if it qualifies, else a new listing. Callers
    /// arriving while a listing is in flight wait for it, and it answers them
    /// if it is recent enough for them.
    async fn listing(
        &self,
        view: &VaultView,
        vault_url: &str,
        identity: &Identity,
        need: Need,
    ) -> Result<Arc<Snapshot>, VaultError> {
        let mut state = view.listing.lock().await;
        if let Decision::Answer(outcome) = decide(state.newest.as_ref(), need, Instant::now()) {
            return outcome;
        }
        let gate = self.gate(vault_url);
        gate.admit()?;
        let started = Instant::now();
        let result = gate.run(self.sdk.list(vault_url, identity)).await;
        let ended = Instant::now();
        let outcome = match result {
            Ok(items) => {
                let snapshot: Arc<Snapshot> =
                    Arc::new(items.into_iter().map(|i| (i.name.clone(), i)).collect());
                self.listed(view, &mut state, &snapshot);
                Ok(snapshot)
            }
            Err(error) => {
                state.failures += 1;
                if matches!(error, VaultError::Forbidden(_)) {
                    view.refuse_listing_until(ended + LISTING_REFUSED_FOR);
                }
                Err(error)
            }
        };
        let retry_from = outcome.as_ref().err().map(|error| {
            ended + retry_window(state.failures, error.retry_after(), self.config.max_backoff)
        });
        state.newest = Some(Attempt {
            started,
            ended,
            outcome: outcome.clone(),
            retry_from,
        });
        // Whoever listed, the poller plans its next listing from this one.
        view.wake.notify_one();
        outcome
    }

    /// Records a successful listing: drops values of names gone from the
    /// vault and tells subscribers what changed (everyone after an outage).
    fn listed(&self, view: &VaultView, state: &mut ListingState, snapshot: &Arc<Snapshot>) {
        view.forget_unlisted(snapshot);
        let recovered = std::mem::take(&mut state.failures) > 0;
        if let Some(previous) = state.last_good.replace(snapshot.clone()) {
            view.notify_changes(&previous, snapshot, &self.changes);
        }
        if recovered {
            view.notify_all(&self.changes);
        }
    }

    /// Drops the state of (vault, identity) pairs nobody subscribes to or
    /// read lately (views, gates, SDK clients, credentials), and cached
    /// values nobody read lately.
    fn sweep_unused(&self, now: Instant) {
        let live: HashSet<(String, String)> = {
            let mut views = self.views.lock().unwrap();
            views.retain(|_, view| {
                let keep_values_for = UNUSED_FOR.max(view.longest_interval() * 3);
                let idle = view.prune(keep_values_for, now);
                !idle || Arc::strong_count(view) > 1
            });
            views.keys().cloned().collect()
        };
        let live_vaults: HashSet<&str> = live.iter().map(|(vault, _)| vault.as_str()).collect();
        self.gates.lock().unwrap().retain(|vault, gate| {
            live_vaults.contains(vault.as_str())
                || gate.remaining_backoff().is_some()
                || Arc::strong_count(gate) > 1
        });
        self.sdk
            .retain(|vault, identity| live.contains(&(vault.to_owned(), identity.to_owned())));
    }
}

/// Sweeps unused state every [`SWEEP_EVERY`] until the vault access is dropped.
async fn sweep_unused(inner: Weak<Inner>) {
    let mut ticks = tokio::time::interval(SWEEP_EVERY);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.sweep_unused(Instant::now());
    }
}

/// Keeps one (vault, identity) listing fresh while anyone subscribes to it.
///
/// It lists one period (the shortest live subscriber's interval, jittered)
/// after the newest listing, whoever asked for that one, and plans again
/// whenever it is woken: a shorter subscriber came, or someone else listed.
/// While listing fails it retries with backoff (exponential from 1 s,
/// capped by `--max-backoff`, `Retry-After` as a floor, never into the
/// vault's shared 429 backoff) instead of every period, so that an outage is
/// neither hammered at short refresh intervals nor noticed late at long ones;
/// readers in between share the failure until its retry window closes. When
/// the listing works again every subscriber is told to sync at once.
async fn poll(inner: Arc<Inner>, view: Arc<VaultView>, vault_url: String, identity: Identity) {
    // One random draw per listing planned from, so re-planning keeps the jitter.
    let mut jitter: Option<(Instant, f64)> = None;
    while let Some(period) = view.poll_period() {
        let last = view.listing.lock().await.last();
        let unit_random = match (jitter, last) {
            (Some((from, drawn)), Some(last)) if from == last.started => drawn,
            _ => {
                let drawn = rand::random();
                jitter = last.map(|last| (last.started, drawn));
                drawn
            }
        };
        let now = Instant::now();
        let due = next_listing(last, period, inner.config.max_backoff, unit_random, now).max(
            now + inner
                .gate(&vault_url)
                .remaining_backoff()
                .unwrap_or_default(),
        );
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = view.wake.notified() => continue,
        }
        // Any listing newer than the one planned from will do.
        let need = Need {
            not_before: last.map(|last| last.started + Duration::from_nanos(1)),
            waits_out_failures: false,
        };
        if let Err(error) = inner.listing(&view, &vault_url, &identity, need).await {
            tracing::debug!(vault = %vault_url, %error, "listing failed; retrying with backoff");
        }
    }
}

/// Reads an optional PEM bundle file named by a flag.
pub fn read_ca_file(path: Option<&Path>) -> Result<Option<Vec<u8>>, SetupError> {
    path.map(|p| {
        std::fs::read(p).map_err(|source| SetupError::ReadCaFile {
            path: p.to_owned(),
            source,
        })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vault access whose clients are never used for a request.
    fn access() -> VaultAccess {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let kube =
            kube::Client::try_from(kube::Config::new("https://127.0.0.1:1".parse().unwrap()))
                .unwrap();
        let config = VaultConfig {
            authority_host: "https://localhost:1/".into(),
            allowed_hosts: AllowedHosts::new(&["localhost".into()], "https://localhost:1/"),
            operator: OperatorIdentity::default(),
            extra_ca_pem: None,
            request_timeout: Duration::from_secs(1),
            change_detection: ChangeDetection::List,
            vault_concurrency: 4,
            max_backoff: Duration::from_secs(4),
        };
        VaultAccess::new(kube, config).unwrap()
    }

    fn identity(client: &str) -> Identity {
        Identity::ClientSecret {
            tenant_id: "t".into(),
            client_id: client.into(),
            secret: "s".into(),
        }
    }

    #[tokio::test]
    async fn state_of_vaults_nobody_uses_is_dropped() {
        let access = access();
        let inner = &access.inner;
        let (used, unused) = ("https://localhost/used", "https://localhost/unused");
        access.subscribe(
            used,
            &identity("a"),
            "ns/kept",
            Interest::Everything,
            Duration::from_secs(3600),
        );
        for (vault, client) in [(used, "a"), (unused, "b")] {
            inner.view(vault, &identity(client));
            inner.gate(vault);
            inner.sdk.client(vault, &identity(client)).unwrap();
        }
        inner.sweep_unused(Instant::now());
        assert_eq!(inner.views.lock().unwrap().len(), 2, "recently used: kept");

        inner.sweep_unused(Instant::now() + UNUSED_FOR * 2);
        let views: Vec<_> = inner.views.lock().unwrap().keys().cloned().collect();
        assert_eq!(views, [(vault_key(used), identity("a").cache_key())]);
        let gates: Vec<_> = inner.gates.lock().unwrap().keys().cloned().collect();
        assert_eq!(gates, [vault_key(used)]);
        assert_eq!(
            inner.sdk.clients(),
            1,
            "the unused client and credential are dropped"
        );
    }
}
