//! `kvsync run` and `kvsync crd`: wiring the stages together.
//!
//! `run` is a sequence of named steps:
//!
//! ```text
//!  connect ─▶ vault_access, VaultEvents::new ─▶ Metrics::register ─▶ serve_probes_and_metrics
//!     ─▶ ensure_namespace_exists ─▶ become_leader (a standby waits here)
//!     ─▶ start_stages (sync ∥ reload ∥ vault events, if configured) ─▶ supervise
//!        (until a signal, a lost Lease or a stage ending) ─▶ shut_down
//! ```
//!
//! SIGTERM/SIGINT stop the controllers gracefully (in-flight syncs finish)
//! before the process exits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::Reporter;
use kube::runtime::wait::{await_condition, conditions};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle};

use crate::api::contract::{FIELD_MANAGER, SYNC_EVENT_REPORTER};
use crate::api::{KeyVaultSecret, crd_yaml};
use crate::cli::{CrdArgs, RunArgs};
use crate::cluster::ApiRequests;
use crate::leader::{LeaderError, Leadership};
use crate::reload::ReloadError;
use crate::reload::metrics::ReloadMetrics;
use crate::reload::readiness::Readiness;
use crate::sync::SyncMetrics;
use crate::vault::{
    AllowedHosts, OperatorIdentity, SetupError, VaultAccess, VaultConfig, read_ca_file,
};
use crate::vault_events::{EventsError, VaultEventMetrics, VaultEvents};

/// Why `kvsync run` stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The vault settings cannot work (CA file, hosts, identity).
    #[error(transparent)]
    Vault(#[from] SetupError),
    /// The event sources cannot work (identity, change detection, URLs).
    #[error(transparent)]
    Events(#[from] EventsError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the operator namespace {0} does not exist: create it, or set --operator-namespace (POD_NAMESPACE)"
    )]
    OperatorNamespaceMissing(String),
    #[error("checking the operator namespace {namespace}: {source}")]
    OperatorNamespaceCheck {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Leader(#[from] LeaderError),
    #[error("lost the leader lease; stopping so that only the new leader acts")]
    LeaseLost,
    #[error("reload stage: {0}")]
    Reload(#[source] ReloadError),
    #[error("reload stage: {0}")]
    ReloadPanicked(#[source] JoinError),
    #[error("sync stage stopped unexpectedly")]
    SyncStopped,
    #[error("sync stage: {0}")]
    SyncPanicked(#[source] JoinError),
    #[error("vault-events stage stopped unexpectedly")]
    EventsStopped,
    #[error("vault-events stage: {0}")]
    EventsPanicked(#[source] JoinError),
}

/// Why `kvsync crd --apply` failed.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("applying CRD {name}: {source}")]
    Apply {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("CRD {0} not established after 30s")]
    NotEstablished(String),
    #[error("waiting for CRD {name}: {source}")]
    Wait {
        name: String,
        #[source]
        source: kube::runtime::wait::Error,
    },
}

/// Tells the server and the controllers to stop gracefully.
#[derive(Clone)]
struct Shutdown(watch::Sender<bool>);

impl Shutdown {
    /// Begins when SIGTERM or SIGINT arrives. The SIGTERM handler is
    /// installed here, first thing in `run`: a signal during start-up (while
    /// connecting, or waiting as a standby) is remembered, never lost between
    /// two listeners, and never kills the process without its shutdown.
    fn on_termination_signal() -> Self {
        let shutdown = Shutdown(watch::channel(false).0);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on unix");
        let begin = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            begin.begin();
        });
        shutdown
    }

    /// A future that resolves once [`Shutdown::begin`] was called.
    fn signal(&self) -> impl Future<Output = ()> + Send + Sync + use<> {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    /// Whether the shutdown has begun.
    fn begun(&self) -> bool {
        *self.0.borrow()
    }

    /// Stores the request even when nobody listens yet, so that a later
    /// [`Shutdown::signal`] resolves at once.
    fn begin(&self) {
        self.0.send_replace(true);
    }
}

/// The metrics of both stages and of the API client, registered into one
/// registry (see [`crate::metrics`]).
struct Metrics {
    sync: SyncMetrics,
    reload: ReloadMetrics,
    /// Counted by the operator's kube client ([`crate::cluster::counted_client`]).
    api_requests: ApiRequests,
    events: VaultEventMetrics,
}

impl Metrics {
    fn register(registry: &mut Registry) -> Self {
        let registry = crate::metrics::prefixed(registry);
        Metrics {
            sync: SyncMetrics::register(registry),
            reload: ReloadMetrics::register(registry),
            api_requests: ApiRequests::register(registry),
            events: VaultEventMetrics::register(registry),
        }
    }
}

/// The running stages.
struct Stages {
    sync: JoinHandle<()>,
    reload: JoinHandle<Result<(), ReloadError>>,
    /// The vault-events stage's tasks, if it runs (aborted when dropped).
    events: Option<tokio::task::JoinSet<()>>,
}

pub async fn run(mut args: RunArgs) -> Result<(), RunError> {
    let shutdown = Shutdown::on_termination_signal();
    args.scope.operator_namespace = Some(args.operator_namespace.clone());
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let client = crate::cluster::counted_client(metrics.api_requests.clone())
        .await
        .map_err(RunError::Client)?;
    let config = vault_config(&args)?;
    let events = VaultEvents::new(&args.events, &client, &config, metrics.events.clone())?;
    let vault = VaultAccess::new(client.clone(), config).map_err(RunError::Vault)?;
    let readiness = metrics.reload.readiness();
    let server =
        serve_probes_and_metrics(args.metrics_addr, registry, readiness, &shutdown).await?;

    ensure_namespace_exists(&client, &args.operator_namespace).await?;
    let Some(mut leadership) = become_leader(&client, &args, &shutdown).await? else {
        // Terminated while waiting as a standby.
        shutdown.begin();
        let _ = server.await;
        return Ok(());
    };
    let mut stages = start_stages(client, vault, events, metrics, &args, &shutdown);
    let outcome = supervise(&mut stages, leadership.as_mut(), &shutdown).await;
    shut_down(stages, leadership, server, &shutdown).await;
    outcome
}

/// How the operator reaches Azure, as the flags configure it (Key Vault
/// access and the event sources share it).
fn vault_config(args: &RunArgs) -> Result<VaultConfig, RunError> {
    Ok(VaultConfig {
        authority_host: args.authority_host.clone(),
        allowed_hosts: AllowedHosts::new(&args.allow_vault_hosts, &args.authority_host),
        operator: OperatorIdentity {
            client_id: args.azure_client_id.clone(),
            tenant_id: args.azure_tenant_id.clone(),
            token_file: args.azure_federated_token_file.clone(),
        },
        extra_ca_pem: read_ca_file(args.extra_ca_file.as_deref())?,
        request_timeout: args.request_timeout,
        change_detection: args.change_detection,
        vault_concurrency: args.vault_concurrency,
        max_backoff: args.max_backoff,
    })
}

/// Serves `/healthz`, `/readyz` (503 naming the reload watches that have not
/// listed yet) and `/metrics` on `addr` until `shutdown`.
async fn serve_probes_and_metrics(
    addr: SocketAddr,
    registry: Registry,
    readiness: Readiness,
    shutdown: &Shutdown,
) -> Result<JoinHandle<std::io::Result<()>>, RunError> {
    let bind_error = |source| RunError::Bind { addr, source };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    tracing::info!(addr = %local, "serving /healthz, /readyz, /metrics");
    let registry = Arc::new(registry);
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let waiting = readiness.waiting_for();
                async move {
                    match waiting {
                        None => (StatusCode::OK, "ok".to_owned()),
                        Some(watches) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("waiting for the first list of: {}", watches.join(", ")),
                        ),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    let _ = prometheus_client::encoding::text::encode(&mut body, &registry);
                    body
                }
            }),
        );
    let stop = shutdown.signal();
    Ok(tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
    }))
}

/// With leader election, waits (as a standby, serving `/healthz`) until this
/// replica holds the Lease: `Some(Some(lease))`, or `None` when terminated
/// meanwhile. Without it, `Some(None)` at once.
async fn become_leader(
    client: &kube::Client,
    args: &RunArgs,
    shutdown: &Shutdown,
) -> Result<Option<Option<Leadership>>, RunError> {
    if !args.leader.leader_election {
        return Ok(Some(None));
    }
    tokio::select! {
        held = crate::leader::acquire(client.clone(), &args.leader, &args.operator_namespace) => Ok(Some(Some(held?))),
        () = shutdown.signal() => Ok(None),
    }
}

/// Spawns the sync and reload stages side by side, joined by the fast path,
/// and the vault-events stage if sources are configured (on the fast path,
/// to see the Secrets its hints made kvsync write).
fn start_stages(
    client: kube::Client,
    vault: VaultAccess,
    vault_events: Option<VaultEvents>,
    metrics: Metrics,
    args: &RunArgs,
    shutdown: &Shutdown,
) -> Stages {
    let (notifier, from_sync) = crate::reload::channel();
    let (board, rollout_feed) = crate::reload::board::RolloutBoard::new();
    let events = crate::sync::ObjectEvents::new(
        client.clone(),
        Reporter {
            controller: SYNC_EVENT_REPORTER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let ctx = Arc::new(crate::sync::Context::new(
        client.clone(),
        vault,
        events,
        notifier,
        (board.clone(), rollout_feed),
        metrics.sync,
        args.scope.clone(),
        args.operator_identity_namespaces.clone(),
        args.require_service_account_opt_in,
        args.azure_tenant_id.clone(),
        args.max_backoff,
        args.max_concurrent_syncs,
        args.min_refresh_interval,
        args.expiry_window,
    ));
    let (inbox, vault_events) = match vault_events {
        None => (from_sync, None),
        Some(stage) => {
            let (to_reload, inbox) = crate::reload::channel();
            (inbox, Some(stage.start(ctx.clone(), from_sync, to_reload)))
        }
    };
    let stop = shutdown.clone();
    let sync = tokio::spawn(crate::sync::run(ctx, move || stop.signal()));
    let reload = tokio::spawn(crate::reload::run(
        client,
        args.reload.clone(),
        args.scope.clone(),
        args.operator_namespace.clone(),
        inbox,
        metrics.reload,
        board,
    ));
    tracing::info!("kvsync started");
    Stages {
        sync,
        reload,
        events: vault_events,
    }
}

/// Waits for the first reason to stop: a signal (a clean stop), the Lease
/// lost, or a stage ending (the vault-events stage's tasks included). The reload stage only returns when it cannot
/// start (its digest key): that stops the operator with the reason rather
/// than running half of it. The sync stage returns only on shutdown; if it
/// ends before (a panic in a reconcile), the process exits so that it is
/// restarted, instead of staying up and healthy while nothing syncs.
async fn supervise(
    stages: &mut Stages,
    leadership: Option<&mut Leadership>,
    shutdown: &Shutdown,
) -> Result<(), RunError> {
    let leadership_lost = async {
        match leadership {
            Some(held) => held.lost().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        // First: once a signal began the shutdown, the stages ending is its
        // doing, not a failure.
        biased;
        () = shutdown.signal() => Ok(()),
        () = leadership_lost => Err(RunError::LeaseLost),
        stopped = &mut stages.reload => match stopped {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(RunError::Reload(error)),
            Err(panic) => Err(RunError::ReloadPanicked(panic)),
        },
        // A stage that ended because the shutdown began is no failure, even
        // when its end is seen before the signal.
        stopped = &mut stages.sync => Err(match stopped {
            Ok(()) if shutdown.begun() => return Ok(()),
            Ok(()) => RunError::SyncStopped,
            Err(panic) => RunError::SyncPanicked(panic),
        }),
        // Its tasks run as long as the process; one ending before the
        // shutdown began is a fault.
        Some(stopped) = next_ended(stages.events.as_mut()) => Err(match stopped {
            Ok(()) if shutdown.begun() => return Ok(()),
            Ok(()) => RunError::EventsStopped,
            Err(panic) => RunError::EventsPanicked(panic),
        }),
    }
}

/// The next task of `tasks` to end; never, without tasks.
async fn next_ended(tasks: Option<&mut tokio::task::JoinSet<()>>) -> Option<Result<(), JoinError>> {
    match tasks {
        Some(tasks) if !tasks.is_empty() => tasks.join_next().await,
        _ => std::future::pending().await,
    }
}

/// Lets in-flight syncs finish (up to 20 s), stops the reload stage, gives
/// the Lease to a standby and stops the server.
async fn shut_down(
    stages: Stages,
    leadership: Option<Leadership>,
    server: JoinHandle<std::io::Result<()>>,
    shutdown: &Shutdown,
) {
    tracing::info!("shutting down");
    shutdown.begin();
    if !stages.sync.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(20), stages.sync).await;
    }
    stages.reload.abort();
    if let Some(held) = leadership {
        held.release().await;
    }
    let _ = server.await;
}

/// The operator's own namespace holds its Lease and digest key; a typo there
/// should stop it with a clear message. Without RBAC to read Namespaces the
/// check is skipped and the first namespaced call reports it instead.
async fn ensure_namespace_exists(client: &kube::Client, namespace: &str) -> Result<(), RunError> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    match api.get_opt(namespace).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(RunError::OperatorNamespaceMissing(namespace.to_owned())),
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(()),
        Err(source) => Err(RunError::OperatorNamespaceCheck {
            namespace: namespace.to_owned(),
            source,
        }),
    }
}

/// Prints the CRD, or applies it and optionally waits until it is established.
pub async fn crd(args: CrdArgs) -> Result<(), CrdError> {
    if !args.apply {
        print!("{}", crd_yaml());
        return Ok(());
    }
    let client = crate::cluster::client().await.map_err(CrdError::Client)?;
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let crd = KeyVaultSecret::crd();
    let name = crd.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .map_err(|source| CrdError::Apply {
        name: name.clone(),
        source,
    })?;
    if args.wait {
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api, &name, conditions::is_crd_established()),
        )
        .await
        .map_err(|_| CrdError::NotEstablished(name.clone()))?
        .map_err(|source| CrdError::Wait {
            name: name.clone(),
            source,
        })?;
    }
    Ok(())
}
