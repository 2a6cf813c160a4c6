//! `kvsync run` and `kvsync crd`: wiring the stages together.
//!
//! Start-up order: telemetry → Kubernetes client → vault access → health and
//! metrics server → sync and reload stages side by side. SIGTERM/SIGINT stop
//! the controllers gracefully (in-flight syncs finish) before the process exits.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::wait::{await_condition, conditions};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::api::{FIELD_MANAGER, KeyVaultSecret, crd_yaml};
use crate::cli::{CrdArgs, RunArgs};
use crate::metrics::SyncMetrics;
use crate::vault::{AllowedHosts, OperatorIdentity, VaultAccess, VaultConfig, read_ca_file};

/// Resolves when SIGTERM or SIGINT arrives.
async fn termination_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail on unix");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

pub async fn run(args: RunArgs) -> Result<(), String> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("Kubernetes client: {e}"))?;
    let vault = VaultAccess::new(
        client.clone(),
        VaultConfig {
            authority_host: args.authority_host.clone(),
            allowed_hosts: AllowedHosts::new(&args.allow_vault_hosts),
            operator: OperatorIdentity {
                client_id: args.azure_client_id.clone(),
                tenant_id: args.azure_tenant_id.clone(),
                token_file: args.azure_federated_token_file.clone(),
            },
            extra_ca_pem: read_ca_file(args.extra_ca_file.as_deref()).map_err(|e| e.to_string())?,
            request_timeout: args.request_timeout,
            change_detection: args.change_detection,
            vault_concurrency: args.vault_concurrency,
            max_backoff: args.max_backoff,
        },
    )
    .map_err(|e| e.to_string())?;

    let mut registry = Registry::default();
    let sync_metrics = SyncMetrics::register(&mut registry);
    crate::reload::register_metrics(&mut registry);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shutdown = move || {
        let mut rx = shutdown_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let (notifier, inbox) = crate::reload::channel();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kvsync".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let ctx = Arc::new(crate::sync::Context::new(
        client.clone(),
        vault,
        recorder,
        notifier,
        sync_metrics,
        args.scope.clone(),
        args.operator_identity_namespaces.clone(),
        args.azure_tenant_id.clone(),
        args.max_backoff,
    ));

    let registry = Arc::new(registry);
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|e| format!("binding {}: {e}", args.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr().map_err(|e| e.to_string())?, "serving /healthz, /readyz, /metrics");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
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
    let server = tokio::spawn({
        let stop = shutdown();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
    });

    ensure_namespace_exists(&client, &args.operator_namespace).await?;
    // A standby serves /healthz and waits here until it holds the Lease.
    let mut leadership = if args.leader.leader_election {
        tokio::select! {
            held = crate::leader::acquire(client.clone(), &args.leader, &args.operator_namespace) => Some(held?),
            () = termination_signal() => {
                let _ = shutdown_tx.send(true);
                let _ = server.await;
                return Ok(());
            }
        }
    } else {
        None
    };
    let leadership_lost = async {
        match leadership.as_mut() {
            Some(held) => held.lost().await,
            None => std::future::pending().await,
        }
    };

    let mut sync = tokio::spawn(crate::sync::run(ctx, shutdown.clone()));
    let mut reload = tokio::spawn(crate::reload::run(
        client,
        args.reload.clone(),
        args.scope.clone(),
        args.operator_namespace.clone(),
        inbox,
    ));
    tracing::info!("kvsync started");
    // The reload stage only returns when it cannot start (its digest key):
    // that stops the operator with the reason rather than running half of it.
    // The sync stage returns only on shutdown; if it ends before (a panic in
    // a reconcile), the process exits so that it is restarted, instead of
    // staying up and healthy while nothing syncs.
    let outcome = tokio::select! {
        () = termination_signal() => Ok(()),
        () = leadership_lost => Err("lost the leader lease; stopping so that only the new leader acts".to_owned()),
        stopped = &mut reload => match stopped {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!("reload stage: {error}")),
            Err(panic) => Err(format!("reload stage: {panic}")),
        },
        stopped = &mut sync => Err(match stopped {
            Ok(()) => "sync stage stopped unexpectedly".to_owned(),
            Err(panic) => format!("sync stage: {panic}"),
        }),
    };
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    if !sync.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(20), sync).await;
    }
    reload.abort();
    if let Some(held) = leadership {
        held.release().await;
    }
    let _ = server.await;
    outcome
}

/// The operator's own namespace holds its Lease and digest key; a typo there
/// should stop it with a clear message. Without RBAC to read Namespaces the
/// check is skipped and the first namespaced call reports it instead.
async fn ensure_namespace_exists(client: &kube::Client, namespace: &str) -> Result<(), String> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    match api.get_opt(namespace).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!(
            "the operator namespace {namespace} does not exist: create it, or set --operator-namespace (POD_NAMESPACE)"
        )),
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(()),
        Err(error) => Err(format!(
            "checking the operator namespace {namespace}: {error}"
        )),
    }
}

/// Prints the CRD, or applies it and optionally waits until it is established.
pub async fn crd(args: CrdArgs) -> Result<(), String> {
    if !args.apply {
        print!("{}", crd_yaml());
        return Ok(());
    }
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("Kubernetes client: {e}"))?;
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let crd = KeyVaultSecret::crd();
    let name = crd.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .map_err(|e| format!("applying CRD {name}: {e}"))?;
    if args.wait {
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api, &name, conditions::is_crd_established()),
        )
        .await
        .map_err(|_| format!("CRD {name} not established after 30s"))?
        .map_err(|e| format!("waiting for CRD {name}: {e}"))?;
    }
    Ok(())
}
