//! Reload stage: rolls Deployments, StatefulSets and DaemonSets when the data
//! of a Secret or ConfigMap they react to changes — Stakater Reloader's
//! annotation contract, made level-triggered.
//!
//! ```text
//!  watch Secrets/ConfigMaps ──┐  reduce to          ┌────────── Index ───────────┐
//!  fast path (SecretWritten) ─┼─ digest + flags ───▶│ namespace → resources:     │
//!  watch Deployments/         │  reduce to policy,  │   (kind,name) → digest     │
//!   StatefulSets/DaemonSets ──┘  uses, record ─────▶│ namespace → workloads:     │
//!                                                   │   policy, uses, record, …  │
//!                                                   └─────────────┬──────────────┘
//!                        affected workloads, marked due after the debounce
//!                                                                 ▼
//!            Schedule ──due──▶ desired members ──▶ decide(record, desired, last restart)
//!                                                                 │
//!      UpToDate │ Baseline: patch record │ Restart: patch record + pod template │ Wait
//! ```
//!
//! Why level-triggered: the workload itself records (in a metadata annotation)
//! the digest of every resource it reacts to as of its last restart, and the
//! decision compares that record with the present. So the outcome depends
//! only on the cluster's state, never on which events the process happened to
//! see: restarting the operator restarts nothing, a change made while it was
//! down is applied once when it returns, and a burst of changes within the
//! debounce — or within the minimum interval after a restart — becomes one
//! rollout. A workload seen for the first time is baselined, not restarted.
//! Deleting a resource restarts nothing (the record keeps what the pods have);
//! a resource appearing restarts only pods that could run without it (see
//! `decide`).
//!
//! Module map: [`annotations`] (Reloader's rules; the names themselves are in
//! [`crate::api::contract`]), `uses` (what a pod spec references), `digest`
//! (keyed digests), [`record`] (what kvsync writes on workloads), `decide`
//! (the pure decision), `pace` (when to look again, rollout spacing), `index`
//! (the memory), `observe`/`watch` (objects → index entries), `stage` (the
//! event loop), `patch` (the patch model, pure), `write` (the writes),
//! `events`, [`metrics`] (its counters, injected), `key_secret` (where the
//! digest key lives).

pub mod annotations;
pub mod board;
pub mod decide;
pub mod digest;
pub mod dynamic;
mod events;
pub mod index;
pub mod job;
pub mod key_secret;
pub mod kinds;
pub mod metrics;
pub mod observe;
mod pace;
mod patch;
pub mod readiness;
pub mod record;
pub mod rollout;
mod stage;
pub mod uses;
mod watch;
mod waves;
mod write;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

pub use key_secret::KEY_SECRET_NAME;

use crate::scope::{LabelSelector, ScopeArgs, parse_selector};

/// The default of `--reload-debounce` (see [`ReloadArgs::reload_debounce`]).
pub const DEFAULT_RELOAD_DEBOUNCE: &str = "5s";

/// Flags of the reload stage.
#[derive(clap::Args, Debug, Clone)]
pub struct ReloadArgs {
    /// Changes to one workload within this window after the first are folded
    /// into one rollout. The default spans one Argo CD sync wave (Argo CD
    /// waits 2 s between waves, `ARGOCD_SYNC_WAVE_DELAY`, then applies the
    /// next) with room for the apply itself, and a large `helm upgrade`
    /// (one pass over every object): Secrets in one wave and the Deployment
    /// in the next are one rollout, not two.
    #[arg(long, env = "KVSYNC_RELOAD_DEBOUNCE", default_value = DEFAULT_RELOAD_DEBOUNCE, value_parser = humantime::parse_duration)]
    pub reload_debounce: Duration,

    /// At most one restart per workload within this interval; later changes
    /// fold into one restart when it has passed (a global floor; a
    /// workload's pause-period annotation, e.g.
    /// `deployment.reloader.stakater.com/pause-period`, folds the changes of
    /// its period into one rollout at its end). The default leaves time for a
    /// rollout to start while keeping a flapping Secret from causing a
    /// restart storm.
    #[arg(long, env = "KVSYNC_MIN_RELOAD_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub min_reload_interval: Duration,

    /// At most this many rollouts per second across all workloads (0: no
    /// limit): a Secret used by thousands of workloads restarts them over
    /// seconds instead of all at once. Every one still restarts exactly
    /// once; `kvsync_reload_rollouts_queued` shows how many wait. Restarts
    /// are issued concurrently (up to 64 writes in flight), so the API
    /// server's latency does not lower the rate.
    #[arg(long, env = "KVSYNC_MAX_ROLLOUTS_PER_SECOND", default_value_t = 20)]
    pub max_rollouts_per_second: u32,

    /// Waves of at most this many workloads per change (0: one wave per
    /// `kvsync.io/rollout-wave` value). A wave starts when the earlier
    /// waves' rollouts are complete; a failed one halts the change (see
    /// docs/reload.md, "Waves").
    #[arg(long, env = "KVSYNC_ROLLOUT_WAVE_SIZE", default_value_t = 0)]
    pub rollout_wave_size: usize,

    /// A StatefulSet or DaemonSet rollout not complete this long after
    /// kvsync restarted it counts as failed (Deployments and Argo Rollouts
    /// have a progress deadline of their own).
    #[arg(long, env = "KVSYNC_PROGRESS_DEADLINE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub progress_deadline: Duration,

    /// Only Secrets and ConfigMaps whose labels match this equality selector
    /// (e.g. `reload=true`) count; the reload stage does not see the others
    /// (filtered by the API server, so they cost no memory either).
    #[arg(long, env = "KVSYNC_RESOURCE_LABEL_SELECTOR", value_parser = parse_selector)]
    pub resource_label_selector: Option<LabelSelector>,
}

/// Why the reload stage could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(
        "the operator namespace `{0}` does not exist (it holds the reload digest key); create it or set --operator-namespace"
    )]
    OperatorNamespaceMissing(String),
    #[error(
        "could not read or create the reload digest key Secret {namespace}/{KEY_SECRET_NAME}: {source}"
    )]
    DigestKeyAccess {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "the reload digest key Secret {namespace}/{KEY_SECRET_NAME} is unusable ({source}); delete it to have a new one made (workloads are then re-baselined, not restarted)"
    )]
    DigestKeyMalformed {
        namespace: String,
        #[source]
        source: digest::WrongKeyLength,
    },
}

/// A Secret the sync stage just wrote, as the API server answered the write
/// (the in-process fast path: no read back).
#[derive(Debug, Clone)]
pub struct SecretWritten(pub Box<k8s_openapi::api::core::v1::Secret>);

/// Sending side of the fast path, held by the sync stage.
#[derive(Clone)]
pub struct ReloadNotifier(mpsc::Sender<SecretWritten>);

impl ReloadNotifier {
    /// Hands the reload stage a Secret as written. Never blocks the sync
    /// stage: if the queue is full the watch event covers the change anyway.
    pub fn secret_written(&self, written: &k8s_openapi::api::core::v1::Secret) {
        let _ = self.0.try_send(SecretWritten(Box::new(written.clone())));
    }
}

/// Receiving side of the fast path.
pub struct ReloadInbox(pub mpsc::Receiver<SecretWritten>);

/// The fast-path channel between the stages.
pub fn channel() -> (ReloadNotifier, ReloadInbox) {
    let (tx, rx) = mpsc::channel(1024);
    (ReloadNotifier(tx), ReloadInbox(rx))
}

/// Runs the reload stage until the process stops. Fails only at start-up
/// (the digest key); watch and API errors later are retried and counted.
pub async fn run(
    client: kube::Client,
    args: ReloadArgs,
    scope: ScopeArgs,
    operator_namespace: String,
    inbox: ReloadInbox,
    metrics: metrics::ReloadMetrics,
    board: board::RolloutBoard,
) -> Result<(), ReloadError> {
    let key = key_secret::load_or_create(&client, &operator_namespace).await?;
    let key_id = key.id();
    let resources_selected = args.resource_label_selector.is_some();
    let namespace_selector = scope.namespace_selector.is_some();
    let mut served = Vec::new();
    let mut apis = HashMap::new();
    for kind in dynamic::KINDS {
        let api = dynamic::discover(&client, kind).await.unwrap_or_else(|error| {
            tracing::warn!(kind = kind.as_str(), %error, "discovery failed; looking again later");
            None
        });
        tracing::info!(kind = kind.as_str(), api = ?api.as_ref().map(|a| &a.api_version), "discovered");
        if let Some(api) = dynamic::api_resource(kind, api.as_ref()) {
            apis.insert(kind, api);
        }
        served.push((kind, api));
    }
    let plan = watch::WatchPlan {
        client: client.clone(),
        key: Arc::new(key),
        scope,
        resource_selector: args.resource_label_selector,
        dynamic: served,
    };
    let (sources, inputs) = plan.streams(inbox.0);
    let timing = stage::Timing {
        debounce: args.reload_debounce,
        min_reload_interval: args.min_reload_interval,
        max_rollouts_per_second: args.max_rollouts_per_second,
        wave_size: args.rollout_wave_size,
        progress_deadline: args.progress_deadline,
        resources_selected,
    };
    tracing::info!(key_id, ?timing, "reload stage starting");
    stage::Stage::new(
        client,
        key_id,
        timing,
        sources,
        apis,
        namespace_selector,
        stage::Reports { metrics, board },
    )
    .run(inputs)
    .await;
    Ok(())
}
