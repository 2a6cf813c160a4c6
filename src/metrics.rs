//! Prometheus metrics: one registry, every name under the `kvsync_` prefix,
//! one set per stage ([`SyncMetrics`] here, [`ReloadMetrics`] beside the
//! reload stage), made by [`Metrics::register`] and injected into each stage
//! by [`crate::run`] — never global. Labels are bounded sets: outcome reasons
//! and error kinds, never object names.
//!
//! ```text
//!  Registry ── "kvsync" prefix ──┬─ SyncMetrics   ──▶ sync::Context
//!     │                          └─ ReloadMetrics ──▶ reload::run
//!     └──▶ /metrics
//! ```

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use crate::reload::metrics::ReloadMetrics;

/// Prefix of every metric name.
const PREFIX: &str = "kvsync";

/// The metrics of both stages, registered into one registry.
pub struct Metrics {
    pub sync: SyncMetrics,
    pub reload: ReloadMetrics,
}

impl Metrics {
    /// Registers every metric of the operator in `registry`, under [`PREFIX`].
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix(PREFIX);
        Metrics {
            sync: SyncMetrics::register(registry),
            reload: ReloadMetrics::register(registry),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VaultCallLabels {
    operation: &'static str,
    result: &'static str,
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
    errors: Family<ErrorLabels, Counter>,
    in_flight: Gauge,
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
    fn register(registry: &mut Registry) -> Self {
        let metrics = SyncMetrics {
            syncs: Family::default(),
            sync_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            vault_calls: Family::default(),
            errors: Family::default(),
            in_flight: Gauge::default(),
        };
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
            "Key Vault calls by operation and result",
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

    pub fn observe_vault_call(&self, operation: &'static str, result: &'static str) {
        self.vault_calls
            .get_or_create(&VaultCallLabels { operation, result })
            .inc();
    }

    pub fn observe_error(&self, error: &'static str) {
        self.errors.get_or_create(&ErrorLabels { error }).inc();
    }
}
