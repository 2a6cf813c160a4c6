//! Prometheus counters of the reload stage.
//!
//! One process-wide set: [`register_metrics`] adds it to the registry the
//! operator serves on `/metrics`; the stage counts into it whether or not it
//! was registered (tests, `kvsync run` without a metrics port).
//!
//! - `kvsync_reload_rollouts_total{kind}`: rolling restarts triggered.
//! - `kvsync_reload_skipped_total{reason}`: restarts not done, by reason:
//!   `data_unchanged` (a metadata-only update or an identical rewrite of a
//!   resource some workload reacts to), `first_sight`, `digest_key_changed`,
//!   `membership_changed` (baselines), `rate_limited` (deferred by
//!   `--min-reload-interval` or a pause period).
//! - `kvsync_reload_errors_total{reason}`: `patch` (a workload update failed),
//!   `invalid_annotation` (an unusable annotation value), `watch`,
//!   `fast_path_read`, `event` (publishing an Event failed).

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Default)]
pub struct Metrics {
    rollouts: Family<KindLabel, Counter>,
    skipped: Family<ReasonLabel, Counter>,
    errors: Family<ReasonLabel, Counter>,
}

impl Metrics {
    pub fn rollout(&self, kind: &'static str) {
        self.rollouts.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn skipped(&self, reason: &'static str, count: u64) {
        if count > 0 {
            self.skipped
                .get_or_create(&ReasonLabel { reason })
                .inc_by(count);
        }
    }

    pub fn error(&self, reason: &'static str) {
        self.errors.get_or_create(&ReasonLabel { reason }).inc();
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The process-wide counters.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Adds the reload stage's counters to `registry`.
pub fn register_metrics(registry: &mut Registry) {
    registry.register(
        "kvsync_reload_rollouts",
        "Rolling restarts triggered by the reload stage",
        METRICS.rollouts.clone(),
    );
    registry.register(
        "kvsync_reload_skipped",
        "Restarts not done, by reason",
        METRICS.skipped.clone(),
    );
    registry.register(
        "kvsync_reload_errors",
        "Reload stage errors, by reason",
        METRICS.errors.clone(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_exposed_with_their_labels() {
        let mut registry = Registry::default();
        register_metrics(&mut registry);
        metrics().rollout("Deployment");
        metrics().skipped("rate_limited", 2);
        metrics().error("patch");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "kvsync_reload_rollouts_total{kind=\"Deployment\"}",
            "kvsync_reload_skipped_total{reason=\"rate_limited\"}",
            "kvsync_reload_errors_total{reason=\"patch\"}",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
