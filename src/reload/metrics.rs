//! Prometheus counters of the reload stage, registered by
//! [`crate::metrics::Metrics::register`] beside the sync stage's and handed
//! to the stage by [`crate::run`] (never global: each stage and each test
//! counts into the set it was given).
//!
//! - `kvsync_reload_rollouts_total{kind}`: rolling restarts triggered.
//! - `kvsync_reload_skipped_total{reason}`: restarts not done, by reason:
//!   `data_unchanged` (a metadata-only update or an identical rewrite of a
//!   resource, once per write and per workload reacting to it),
//!   `first_sight`, `digest_key_changed`, `record_updated`,
//!   `template_changed` (the pod template changed after the data),
//!   `suspended` (a suspended CronJob) — all baselines —, `paused` (a pause
//!   period started), `rate_limited` (deferred by `--min-reload-interval` or
//!   a running pause period).
//! - `kvsync_reload_errors_total{reason}`: `patch` (a workload update failed),
//!   `invalid_annotation` (an unusable annotation value), `watch`,
//!   `watch_forbidden` (a kind the operator may not list; not waited for),
//!   `job` (a CronJob's Job could not be made), `event`
//!   (publishing an Event failed), `panic` (evaluating a workload panicked:
//!   a defect of kvsync's, contained to that workload and retried).
//! - `kvsync_reload_rollouts_queued`: workloads due for a rollout, waiting
//!   for a slot under `--max-rollouts-per-second`.
//! - `kvsync_reload_writes_in_flight`: workload patches (and CronJob Jobs)
//!   sent and not answered yet; they run concurrently.
//! - `kvsync_reload_watches_unlisted`: watches that have not listed yet
//!   (`/readyz` names them; see [`Readiness`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::readiness::Readiness;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Reload-stage counters (cheap to clone: the families are shared).
#[derive(Clone, Default)]
pub struct ReloadMetrics {
    rollouts: Family<KindLabel, Counter>,
    skipped: Family<ReasonLabel, Counter>,
    errors: Family<ReasonLabel, Counter>,
    queued: Gauge,
    in_flight: Gauge,
    unlisted: Gauge,
    readiness: Readiness,
}

impl ReloadMetrics {
    /// Adds the counters to `registry` (names relative to its prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = ReloadMetrics::default();
        registry.register(
            "reload_rollouts",
            "Rolling restarts triggered by the reload stage",
            metrics.rollouts.clone(),
        );
        registry.register(
            "reload_skipped",
            "Restarts not done, by reason",
            metrics.skipped.clone(),
        );
        registry.register(
            "reload_errors",
            "Reload stage errors, by reason",
            metrics.errors.clone(),
        );
        registry.register(
            "reload_watches_unlisted",
            "Reload stage watches that have not listed yet",
            metrics.unlisted.clone(),
        );
        registry.register(
            "reload_rollouts_queued",
            "Workloads waiting for a slot under --max-rollouts-per-second",
            metrics.queued.clone(),
        );
        registry.register(
            "reload_writes_in_flight",
            "Workload writes sent and not answered yet",
            metrics.in_flight.clone(),
        );
        metrics
    }

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

    /// The watches still to list (named on `/readyz`).
    pub fn set_unlisted(&self, watches: Vec<String>) {
        self.unlisted
            .set(i64::try_from(watches.len()).unwrap_or(i64::MAX));
        self.readiness.set_waiting_for(watches);
    }

    /// What `/readyz` reports about the reload stage.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    pub fn set_queued(&self, workloads: usize) {
        self.queued
            .set(i64::try_from(workloads).unwrap_or(i64::MAX));
    }

    pub fn set_writes_in_flight(&self, writes: usize) {
        self.in_flight
            .set(i64::try_from(writes).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn counters_are_exposed_with_their_labels() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry).reload;
        metrics.rollout("Deployment");
        metrics.skipped("rate_limited", 2);
        metrics.error("patch");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "kvsync_reload_rollouts_total{kind=\"Deployment\"}",
            "kvsync_reload_skipped_total{reason=\"rate_limited\"}",
            "kvsync_reload_errors_total{reason=\"patch\"}",
            "kvsync_reload_rollouts_queued 0",
            "kvsync_reload_writes_in_flight 0",
            "kvsync_reload_watches_unlisted 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
