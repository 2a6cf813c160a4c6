//! Prometheus metrics, the house rules: one registry, every name under the
//! `kvsync_` prefix ([`prefixed`]), one set per stage kept in the stage's own
//! folder (`sync::metrics::SyncMetrics`, `reload::metrics::ReloadMetrics`,
//! and the API client's `cluster::ApiRequests`), each registered and injected
//! by [`crate::run`] — never global, so that each test counts into the set
//! it was given. Labels are bounded sets whose values come from the enums
//! that define them (outcome reasons, error kinds), vault hosts (capped) and
//! namespaces, never object names.
//!
//! ```text
//!  Registry ── prefixed ("kvsync") ──┬─ SyncMetrics   ──▶ sync::Context
//!     │                              ├─ ReloadMetrics ──▶ reload::run
//!     │                              └─ ApiRequests   ──▶ the kube client (cluster::counted_client)
//!     └──▶ /metrics
//! ```

use prometheus_client::registry::Registry;

/// Prefix of every metric name.
const PREFIX: &str = "kvsync";

/// The part of `registry` every metric of kvsync is registered in: names
/// under it get the [`PREFIX`].
pub fn prefixed(registry: &mut Registry) -> &mut Registry {
    registry.sub_registry_with_prefix(PREFIX)
}
