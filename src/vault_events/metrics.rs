//! Prometheus metrics of the vault-events stage, registered by
//! [`crate::run`] beside the others and handed to the stage (never global).
//! Labels are bounded: the source kind (`eventgrid`, `queue`) and the
//! [`Ignored`] reasons.
//!
//! ```text
//!  VaultEventMetrics
//!   ├─ kvsync_vault_events_received_total{source}
//!   ├─ kvsync_vault_events_matched_total                told at least one KeyVaultSecret to sync
//!   ├─ kvsync_vault_events_ignored_total{reason}        see parse::Ignored
//!   ├─ kvsync_vault_event_source_errors_total{source}   failed receive/settle calls
//!   └─ kvsync_vault_event_to_secret_seconds             event arrival ─▶ the Secret it asked for written
//! ```
//!
//! `received = matched + Σ ignored` once the events in flight are handled.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

use super::SourceKind;
use super::parse::Ignored;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone)]
pub struct VaultEventMetrics {
    received: Family<SourceLabels, Counter>,
    matched: Counter,
    ignored: Family<ReasonLabels, Counter>,
    source_errors: Family<SourceLabels, Counter>,
    latency: Histogram,
}

impl VaultEventMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = VaultEventMetrics {
            received: Family::default(),
            matched: Counter::default(),
            ignored: Family::default(),
            source_errors: Family::default(),
            // 10 ms … ~80 s.
            latency: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
        };
        registry.register(
            "vault_events_received",
            "Key Vault events received, by source kind",
            metrics.received.clone(),
        );
        registry.register(
            "vault_events_matched",
            "Key Vault events that told at least one KeyVaultSecret to read its vault now",
            metrics.matched.clone(),
        );
        registry.register(
            "vault_events_ignored",
            "Key Vault events that led to no read, by reason",
            metrics.ignored.clone(),
        );
        registry.register(
            "vault_event_source_errors",
            "Failed calls to an event source (receive, settle), by source kind",
            metrics.source_errors.clone(),
        );
        registry.register(
            "vault_event_to_secret_seconds",
            "From a Key Vault event's arrival to the Secret it made kvsync read being written",
            metrics.latency.clone(),
        );
        metrics
    }

    pub fn received(&self, source: SourceKind) {
        let source = source.label();
        self.received.get_or_create(&SourceLabels { source }).inc();
    }

    pub fn matched(&self) {
        self.matched.inc();
    }

    pub fn ignored(&self, why: Ignored) {
        let reason = why.reason();
        self.ignored.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn source_error(&self, source: SourceKind) {
        let source = source.label();
        self.source_errors
            .get_or_create(&SourceLabels { source })
            .inc();
    }

    pub fn event_to_secret(&self, took: Duration) {
        self.latency.observe(took.as_secs_f64());
    }
}
