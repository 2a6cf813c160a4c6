//! Prometheus metrics of the sync stage (no I/O: counters, and a summary
//! computed at scrape time), registered by [`crate::run`] beside
//! the reload stage's and handed to [`super::Context`] (never global: each
//! stage and each test counts into the set it was given). Labels are
//! bounded sets: outcome reasons ([`super::SyncError::reason`]), error kinds,
//! vault hosts (capped) and namespaces, never object names. Per-object
//! freshness is kept in [`Staleness`] and summarised per namespace and per
//! failure reason at scrape time.
//!
//! ```text
//!  SyncMetrics
//!   ├─ kvsync_syncs_total{outcome}, kvsync_sync_duration_seconds{outcome}
//!   │      outcome: written | unchanged | the failure's reason
//!   ├─ kvsync_keyvault_requests_total{vault, operation, result}
//!   ├─ kvsync_reconcile_errors_total{error}, kvsync_syncs_in_flight
//!   └─ Staleness ──scrape (StalenessCollector)──▶ kvsync_sync_oldest_age_seconds{namespace}
//!                                                 kvsync_sync_age_interval_ratio{namespace}
//!                                                 kvsync_sync_failing_seconds{reason}
//!   └─ expiries ──scrape (ExpiryCollector)──▶ kvsync_secret_expiry_earliest_timestamp_seconds{namespace}
//!                                              kvsync_secrets_expiring{namespace}
//! ```
//!
//! Expiry is per namespace too, never per object: the earliest `exp` of the
//! namespace's KeyVaultSecrets and how many are inside their expiry window
//! or past `exp` (see [`super::expiry::summary`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::expiry::{self, Expiries};
use super::key::ObjectKey;
use super::staleness::Staleness;

/// Distinct `vault` label values: whoever may create a KeyVaultSecret names
/// its vault host, so the label set is capped; later hosts count as
/// [`OTHER_VAULTS`].
const MAX_VAULT_LABELS: usize = 64;
const OTHER_VAULTS: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VaultCallLabels {
    /// The vault's host (vaults are few: one per team or environment), or
    /// [`OTHER_VAULTS`] past [`MAX_VAULT_LABELS`].
    vault: String,
    operation: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabels {
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

/// Sync-stage metrics.
#[derive(Clone)]
pub struct SyncMetrics {
    syncs: Family<OutcomeLabels, Counter>,
    sync_duration: Family<OutcomeLabels, Histogram>,
    vault_calls: Family<VaultCallLabels, Counter>,
    /// The hosts that have a `vault` label of their own.
    vault_labels: Arc<Mutex<std::collections::HashSet<String>>>,
    errors: Family<ErrorLabels, Counter>,
    in_flight: Gauge,
    staleness: Arc<Mutex<Staleness>>,
    expiries: Arc<Mutex<Expiries>>,
}

/// A gauge holding a float (seconds, ratios).
type SecondsGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Turns the per-object [`Staleness`] into per-namespace and per-reason
/// gauges at each scrape.
#[derive(Debug)]
struct StalenessCollector(Arc<Mutex<Staleness>>);

impl Collector for StalenessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let summary = self.0.lock().unwrap().summary(Instant::now());
        let oldest = Family::<NamespaceLabels, SecondsGauge>::default();
        let ratio = Family::<NamespaceLabels, SecondsGauge>::default();
        for (namespace, age) in summary.namespaces {
            let labels = NamespaceLabels { namespace };
            oldest.get_or_create(&labels).set(age.oldest_seconds);
            ratio.get_or_create(&labels).set(age.max_interval_ratio);
        }
        let failing = Family::<ReasonLabels, SecondsGauge>::default();
        for (reason, seconds) in summary.failing_seconds {
            failing.get_or_create(&ReasonLabels { reason }).set(seconds);
        }
        for (name, help, family) in [
            (
                "sync_oldest_age_seconds",
                "Per namespace: seconds since its least recently synced KeyVaultSecret (with a refreshInterval) was last confirmed current",
                &oldest as &dyn EncodeMetric,
            ),
            (
                "sync_age_interval_ratio",
                "Per namespace: the largest age of a KeyVaultSecret divided by its refreshInterval (above 2: it missed two refreshes)",
                &ratio,
            ),
        ] {
            family.encode(encoder.encode_descriptor(name, help, None, family.metric_type())?)?;
        }
        failing.encode(encoder.encode_descriptor(
            "sync_failing_seconds",
            "Per failure reason: seconds since the longest ongoing run of failed syncs of one KeyVaultSecret began",
            None,
            failing.metric_type(),
        )?)
    }
}

/// Turns the per-object expiries into per-namespace gauges at each scrape.
#[derive(Debug)]
struct ExpiryCollector(Arc<Mutex<Expiries>>);

impl Collector for ExpiryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let summary = expiry::summary(&self.0.lock().unwrap(), now);
        let earliest = Family::<NamespaceLabels, Gauge>::default();
        let expiring = Family::<NamespaceLabels, Gauge>::default();
        for (namespace, namespace_summary) in summary {
            let labels = NamespaceLabels { namespace };
            earliest
                .get_or_create(&labels)
                .set(namespace_summary.earliest);
            expiring
                .get_or_create(&labels)
                .set(namespace_summary.expiring);
        }
        earliest.encode(encoder.encode_descriptor(
            "secret_expiry_earliest_timestamp_seconds",
            "Per namespace: the earliest exp (Unix seconds) of the Key Vault versions in its KeyVaultSecrets' Secrets",
            None,
            earliest.metric_type(),
        )?)?;
        expiring.encode(encoder.encode_descriptor(
            "secrets_expiring",
            "Per namespace: KeyVaultSecrets whose Secret holds a version inside the expiry window (--expiry-window) or expired",
            None,
            expiring.metric_type(),
        )?)
    }
}

/// Counts one sync as in flight until dropped (so early returns are covered).
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl SyncMetrics {
    /// Adds the sync metrics to `registry` (names relative to its prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = SyncMetrics {
            syncs: Family::default(),
            sync_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            vault_calls: Family::default(),
            vault_labels: Arc::default(),
            errors: Family::default(),
            in_flight: Gauge::default(),
            staleness: Arc::default(),
            expiries: Arc::default(),
        };
        registry.register_collector(Box::new(StalenessCollector(metrics.staleness.clone())));
        registry.register_collector(Box::new(ExpiryCollector(metrics.expiries.clone())));
        registry.register(
            "syncs",
            "Syncs by outcome (written, unchanged, or the failure reason)",
            metrics.syncs.clone(),
        );
        registry.register(
            "sync_duration_seconds",
            "Time of one sync by outcome",
            metrics.sync_duration.clone(),
        );
        registry.register(
            "keyvault_requests",
            "Key Vault calls by vault host, operation and result (Throttled: the vault answered 429)",
            metrics.vault_calls.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed on the Kubernetes side",
            metrics.errors.clone(),
        );
        registry.register(
            "syncs_in_flight",
            "Syncs running now (bounded by the controller's concurrency; a lasting high value means a backlog)",
            metrics.in_flight.clone(),
        );
        metrics
    }

    /// Marks a sync as started; the controller's backlog shows as this gauge
    /// staying high.
    pub fn sync_started(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    pub fn observe_sync(&self, outcome: &'static str, took: Duration) {
        self.syncs.get_or_create(&OutcomeLabels { outcome }).inc();
        self.sync_duration
            .get_or_create(&OutcomeLabels { outcome })
            .observe(took.as_secs_f64());
    }

    pub fn observe_vault_call(&self, vault: &str, operation: &'static str, result: &'static str) {
        self.vault_calls
            .get_or_create(&VaultCallLabels {
                vault: self.vault_label(vault),
                operation,
                result,
            })
            .inc();
    }

    /// `vault` itself while fewer than [`MAX_VAULT_LABELS`] hosts have one.
    fn vault_label(&self, vault: &str) -> String {
        let mut labels = self.vault_labels.lock().unwrap();
        if labels.contains(vault) || labels.len() < MAX_VAULT_LABELS {
            labels.insert(vault.to_owned());
            vault.to_owned()
        } else {
            OTHER_VAULTS.to_owned()
        }
    }

    /// The object's Secret was confirmed current now.
    pub fn object_current(&self, object: &ObjectKey, interval: Option<Duration>) {
        self.staleness
            .lock()
            .unwrap()
            .succeeded(object, interval, Instant::now());
    }

    /// A sync of the object failed now.
    pub fn object_failed(
        &self,
        object: &ObjectKey,
        interval: Option<Duration>,
        reason: &'static str,
    ) {
        self.staleness
            .lock()
            .unwrap()
            .failed(object, interval, reason, Instant::now());
    }

    /// The earliest `exp` of the versions now in the object's Secret (`None`: no
    /// version has one), and the window it is judged with.
    pub fn object_expiry(&self, object: &ObjectKey, expires: Option<i64>, window: Duration) {
        let mut expiries = self.expiries.lock().unwrap();
        match expires {
            Some(expires) => expiries.insert(object.clone(), (expires, window)),
            None => expiries.remove(object),
        };
    }

    /// Stops tracking objects for which `alive` is false.
    pub fn retain_objects(&self, alive: impl Fn(&ObjectKey) -> bool) {
        self.staleness.lock().unwrap().retain(&alive);
        self.expiries
            .lock()
            .unwrap()
            .retain(|object, _| alive(object));
    }

    /// Stops tracking a deleted object.
    pub fn forget_object(&self, object: &ObjectKey) {
        self.staleness.lock().unwrap().forget(object);
        self.expiries.lock().unwrap().remove(object);
    }

    pub fn observe_error(&self, error: &'static str) {
        self.errors.get_or_create(&ErrorLabels { error }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_is_exposed_per_namespace_and_reason() {
        let mut registry = Registry::default();
        let metrics = SyncMetrics::register(crate::metrics::prefixed(&mut registry));
        let minute = Some(Duration::from_secs(60));
        metrics.object_current(&ObjectKey::new("shop", "db"), minute);
        metrics.object_failed(&ObjectKey::new("shop", "api"), minute, "RemoteNotFound");
        metrics.observe_vault_call("shop-kv.vault.azure.net", "list", "Throttled");
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let window = expiry::DEFAULT_WINDOW;
        metrics.object_expiry(
            &ObjectKey::new("shop", "db"),
            Some(now + 10 * 86_400),
            window,
        );
        metrics.object_expiry(
            &ObjectKey::new("shop", "api"),
            Some(now + 90 * 86_400),
            window,
        );
        metrics.object_expiry(&ObjectKey::new("shop", "old"), Some(now + 5), window);
        metrics.object_expiry(&ObjectKey::new("shop", "old"), None, window);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "kvsync_sync_oldest_age_seconds{namespace=\"shop\"}",
            "kvsync_sync_age_interval_ratio{namespace=\"shop\"}",
            "kvsync_sync_failing_seconds{reason=\"RemoteNotFound\"}",
            "kvsync_keyvault_requests_total{vault=\"shop-kv.vault.azure.net\",operation=\"list\",result=\"Throttled\"} 1",
            &format!(
                "kvsync_secret_expiry_earliest_timestamp_seconds{{namespace=\"shop\"}} {}",
                now + 10 * 86_400
            ),
            "kvsync_secrets_expiring{namespace=\"shop\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        for n in 0..MAX_VAULT_LABELS + 5 {
            metrics.observe_vault_call(&format!("v{n}.vault.azure.net"), "get", "ok");
        }
        metrics.observe_vault_call("shop-kv.vault.azure.net", "get", "ok");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let vaults: std::collections::HashSet<&str> = text
            .lines()
            .filter_map(|l| l.split("vault=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(vaults.len(), MAX_VAULT_LABELS + 1, "capped, plus `other`");
        assert!(vaults.contains("other") && vaults.contains("shop-kv.vault.azure.net"));
        metrics.forget_object(&ObjectKey::new("shop", "api"));
        metrics.retain_objects(|_| false);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("namespace=\"shop\""), "{text}");
        assert!(!text.contains("RemoteNotFound"), "{text}");
    }
}
