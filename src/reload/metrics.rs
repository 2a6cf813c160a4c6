//! Prometheus counters of the reload stage, registered by [`crate::run`]
//! beside the sync stage's and handed to the stage (never global: each stage
//! and each test counts into the set it was given).
//!
//! - `kvsync_reload_rollouts_total{kind}`: rolling restarts triggered.
//! - `kvsync_reload_skipped_total{reason}`: restarts not done, by [`Skip`]:
//!   `data_unchanged` (a metadata-only update or an identical rewrite of a
//!   resource, once per write and per workload reacting to it),
//!   `first_sight`, `digest_key_changed`, `record_updated`,
//!   `template_changed` (the pod template changed after the data),
//!   `suspended` (a suspended CronJob) — all baselines —, `paused` (a pause
//!   period started), `rate_limited` (deferred by `--min-reload-interval` or
//!   a running pause period), `on_delete` (a StatefulSet or DaemonSet with
//!   `updateStrategy: OnDelete`: its pod template was updated, but its pods
//!   take it only when they are deleted — not a rollout).
//! - `kvsync_reload_errors_total{reason}`, by [`Failure`]: `patch` (a
//!   workload update failed), `job` (a CronJob's Job could not be made),
//!   `refused` (the API server refused either with a 4xx: RBAC, an admission
//!   webhook, a 422), `invalid_annotation` (an unusable annotation value),
//!   `watch`, `watch_forbidden` (a kind the operator may not list; not
//!   waited for), `event` (publishing an Event failed), `panic` (a defect of
//!   kvsync's while evaluating one workload; the others go on).
//! - `kvsync_reload_rollouts_queued`: workloads due for a rollout, waiting
//!   for a slot under `--max-rollouts-per-second`.
//! - `kvsync_reload_writes_in_flight`: workload patches (and CronJob Jobs)
//!   sent and not answered yet; they run concurrently.
//! - `kvsync_reload_rollouts_held{reason}`: workloads whose restart the wave
//!   gate holds back: `wave` (an earlier wave is not done yet), `halted` (an
//!   earlier wave's rollout failed; see `super::waves`).
//! - `kvsync_reload_watches_unlisted`: watches that have not listed yet
//!   (`/readyz` names them; see [`Readiness`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::decide::Baseline;
use super::readiness::Readiness;

/// Why a restart was not done: the `reason` of `kvsync_reload_skipped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// A resource was written without a change of its data.
    DataUnchanged,
    /// The record was written without a restart.
    Baseline(Baseline),
    /// A pause period started.
    Paused,
    /// Deferred by the minimum interval or a running pause period.
    RateLimited,
    /// The pod template of an `OnDelete` workload was updated: its pods
    /// take it only when deleted.
    OnDelete,
}

impl Skip {
    pub fn label(self) -> &'static str {
        match self {
            Skip::DataUnchanged => "data_unchanged",
            Skip::Baseline(why) => why.as_str(),
            Skip::Paused => "paused",
            Skip::RateLimited => "rate_limited",
            Skip::OnDelete => "on_delete",
        }
    }
}

/// What failed: the `reason` of `kvsync_reload_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A workload patch failed (not refused).
    Patch,
    /// A CronJob's Job could not be made (not refused).
    Job,
    /// The API server refused a patch or a Job with a 4xx other than 429.
    Refused,
    /// An annotation value is unusable and skipped.
    InvalidAnnotation,
    /// A watch failed (it is retried).
    Watch,
    /// A kind the operator may not list.
    WatchForbidden,
    /// Publishing an Event failed.
    Event,
    /// Evaluating one workload panicked.
    Panic,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::Patch => "patch",
            Failure::Job => "job",
            Failure::Refused => "refused",
            Failure::InvalidAnnotation => "invalid_annotation",
            Failure::Watch => "watch",
            Failure::WatchForbidden => "watch_forbidden",
            Failure::Event => "event",
            Failure::Panic => "panic",
        }
    }
}

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
    held: Family<ReasonLabel, Gauge>,
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
            "reload_rollouts_held",
            "Workloads whose restart waits for an earlier wave (wave) or a halted rotation (halted)",
            metrics.held.clone(),
        );
        // Both series from the start, so the alert's query has a series to read.
        metrics.set_held(0, 0);
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

    pub fn skipped(&self, reason: Skip, count: u64) {
        if count > 0 {
            self.skipped
                .get_or_create(&ReasonLabel {
                    reason: reason.label(),
                })
                .inc_by(count);
        }
    }

    pub fn error(&self, reason: Failure) {
        self.errors
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
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

    /// Workloads held by the wave gate: waiting for an earlier wave, and
    /// stopped by a halted rotation.
    pub fn set_held(&self, waiting: usize, halted: usize) {
        for (reason, count) in [("wave", waiting), ("halted", halted)] {
            self.held
                .get_or_create(&ReasonLabel { reason })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    pub fn set_writes_in_flight(&self, writes: usize) {
        self.in_flight
            .set(i64::try_from(writes).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_exposed_with_their_labels() {
        let mut registry = Registry::default();
        let metrics = ReloadMetrics::register(crate::metrics::prefixed(&mut registry));
        metrics.rollout("Deployment");
        metrics.skipped(Skip::RateLimited, 2);
        metrics.error(Failure::Patch);
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

    const SKIPS: [Skip; 9] = [
        Skip::DataUnchanged,
        Skip::Baseline(Baseline::FirstSight),
        Skip::Baseline(Baseline::KeyChanged),
        Skip::Baseline(Baseline::RecordUpdated),
        Skip::Baseline(Baseline::TemplateChanged),
        Skip::Baseline(Baseline::Suspended),
        Skip::Paused,
        Skip::RateLimited,
        Skip::OnDelete,
    ];
    const FAILURES: [Failure; 8] = [
        Failure::Patch,
        Failure::Job,
        Failure::Refused,
        Failure::InvalidAnnotation,
        Failure::Watch,
        Failure::WatchForbidden,
        Failure::Event,
        Failure::Panic,
    ];

    /// The lists above are complete: a new variant fails to compile here
    /// until it is listed.
    #[test]
    fn the_label_lists_are_complete() {
        for skip in SKIPS {
            match skip {
                Skip::DataUnchanged
                | Skip::Baseline(
                    Baseline::FirstSight
                    | Baseline::KeyChanged
                    | Baseline::RecordUpdated
                    | Baseline::TemplateChanged
                    | Baseline::Suspended,
                )
                | Skip::Paused
                | Skip::RateLimited
                | Skip::OnDelete => {}
            }
        }
        for failure in FAILURES {
            match failure {
                Failure::Patch
                | Failure::Job
                | Failure::Refused
                | Failure::InvalidAnnotation
                | Failure::Watch
                | Failure::WatchForbidden
                | Failure::Event
                | Failure::Panic => {}
            }
        }
    }

    /// The module docs and the chart's dashboard name every label value the
    /// code can count (and the dashboard no other with an underscore).
    #[test]
    fn every_label_value_is_documented() {
        let docs: Vec<&str> = include_str!("metrics.rs")
            .lines()
            .take_while(|line| line.starts_with("//!"))
            .collect();
        let docs = docs.join(" ");
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../charts/kvsync/dashboards/kvsync.json"))
                .unwrap();
        let description = |title: &str| {
            let panels = dashboard["panels"].as_array().unwrap();
            let panel = panels.iter().find(|p| p["title"] == title).unwrap();
            panel["description"].as_str().unwrap().to_owned()
        };
        for (labels, title) in [
            (
                SKIPS.map(Skip::label).to_vec(),
                "Restarts skipped by reason",
            ),
            (
                FAILURES.map(Failure::label).to_vec(),
                "Reload errors by reason",
            ),
        ] {
            let panel = description(title);
            for label in &labels {
                assert!(
                    docs.contains(&format!("`{label}`")),
                    "{label} not in the module docs"
                );
                assert!(
                    panel.contains(label),
                    "{label} not in the dashboard panel {title}"
                );
            }
            let stale = panel
                .split(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .find(|word| word.contains('_') && !labels.contains(word));
            assert_eq!(stale, None, "the dashboard panel {title} names no label");
        }
    }
}
