//! Sync stage: the `KeyVaultSecret` controller.
//!
//! ```text
//!  KeyVaultSecret (watch, filtered to spec/force-sync changes) ─┐
//!  Secret events (targets by kvsync.io/owner, credential refs) ─┼─▶ reconcile ──▶ vault ──▶ render ──▶ SSA Secret
//!  requeue (refreshInterval ± jitter, or backoff)  ─────────────┘                                   └─▶ reload fast path
//! ```
//!
//! Decisions are pure and live in [`render`], [`target`], [`status`] and
//! [`crate::schedule`]; [`reconciler`] does the I/O around them.

mod reconciler;
pub mod render;
pub mod status;
pub mod target;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, predicates, reflector, watcher};

use crate::api::{FORCE_SYNC_ANNOTATION, KeyVaultSecret};
use crate::metrics::SyncMetrics;
use crate::reload::ReloadNotifier;
use crate::scope::ScopeArgs;
use crate::vault::{Freshness, VaultAccess};

/// Shared state of the sync stage.
pub struct Context {
    pub client: kube::Client,
    pub vault: VaultAccess,
    pub recorder: Recorder,
    pub notifier: ReloadNotifier,
    pub metrics: SyncMetrics,
    pub scope: ScopeArgs,
    pub operator_identity_namespaces: Vec<String>,
    /// Tenant for service accounts that don't name one (the operator's `AZURE_TENANT_ID`).
    pub default_tenant_id: Option<String>,
    pub max_backoff: Duration,
    /// Consecutive failures per KeyVaultSecret (`ns/name`), for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// resourceVersion of each Secret as kvsync last wrote it, so the watch
    /// event caused by our own write does not trigger another sync.
    own_writes: Mutex<HashMap<(String, String), String>>,
    /// The `kvsync.io/force-sync` value each KeyVaultSecret was last synced
    /// with; a new value asks for a read of the vault as of now.
    forced: Mutex<HashMap<String, Option<String>>>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: kube::Client,
        vault: VaultAccess,
        recorder: Recorder,
        notifier: ReloadNotifier,
        metrics: SyncMetrics,
        scope: ScopeArgs,
        operator_identity_namespaces: Vec<String>,
        default_tenant_id: Option<String>,
        max_backoff: Duration,
    ) -> Self {
        Context {
            client,
            vault,
            recorder,
            notifier,
            metrics,
            scope,
            operator_identity_namespaces,
            default_tenant_id,
            max_backoff,
            failures: Mutex::default(),
            own_writes: Mutex::default(),
            forced: Mutex::default(),
        }
    }

    fn remember_own_write(&self, namespace: &str, name: &str, resource_version: Option<String>) {
        if let Some(rv) = resource_version {
            self.own_writes
                .lock()
                .unwrap()
                .insert((namespace.to_owned(), name.to_owned()), rv);
        }
    }

    /// `Now` when the force-sync annotation changed since the last sync of
    /// this object or it has no refresh interval, else what the vault said
    /// within its refresh interval.
    fn freshness_for(&self, kvs: &KeyVaultSecret) -> Freshness {
        let key = format!("{}/{}", kvs.namespace().unwrap_or_default(), kvs.name_any());
        let value = kvs.annotations().get(FORCE_SYNC_ANNOTATION).cloned();
        match self.forced.lock().unwrap().insert(key, value.clone()) {
            Some(previous) if previous != value => Freshness::Now,
            _ => match kvs.spec.refresh_interval() {
                Ok(Some(interval)) => Freshness::Within(interval),
                _ => Freshness::Now,
            },
        }
    }

    fn is_own_write(&self, secret: &Secret) -> bool {
        let key = (secret.namespace().unwrap_or_default(), secret.name_any());
        secret
            .resource_version()
            .is_some_and(|rv| self.own_writes.lock().unwrap().get(&key) == Some(&rv))
    }
}

/// What makes a KeyVaultSecret event worth a sync: a spec change (generation)
/// or a new `kvsync.io/force-sync` value. Status writes pass neither, so
/// kvsync's own status updates do not cause Key Vault reads.
fn sync_trigger(kvs: &KeyVaultSecret) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    predicates::generation(kvs).hash(&mut hasher);
    kvs.annotations()
        .get(FORCE_SYNC_ANNOTATION)
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// KeyVaultSecrets to sync after an event on this Secret: the one that
/// writes it (by annotation, covering every creation policy) and any that
/// use it as a credential.
fn affected_by_secret(
    secret: &Secret,
    store: &Store<KeyVaultSecret>,
) -> Vec<ObjectRef<KeyVaultSecret>> {
    let namespace = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let mut refs: Vec<_> = secret
        .annotations()
        .get(target::OWNER_ANNOTATION)
        .map(|owner| ObjectRef::new(owner).within(&namespace))
        .into_iter()
        .collect();
    refs.extend(
        store
            .state()
            .iter()
            .filter(|kvs| kvs.namespace().as_deref() == Some(&namespace))
            .filter(|kvs| {
                let auth = &kvs.spec.auth;
                [&auth.client_secret, &auth.client_certificate]
                    .into_iter()
                    .flatten()
                    .any(|c| c.secret_ref.name == name)
            })
            .map(|kvs| ObjectRef::from_obj(kvs.as_ref())),
    );
    refs
}

/// Runs the sync stage until `shutdown` resolves: one controller for the
/// whole cluster, or one per namespace listed in `--namespaces` (so that
/// namespaced RBAC suffices: a cluster-wide watch would be refused).
pub async fn run<F, Fut>(ctx: Arc<Context>, shutdown: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + Sync + 'static,
{
    let namespaces: Vec<Option<String>> = if ctx.scope.namespaces.is_empty() {
        vec![None]
    } else {
        ctx.scope.namespaces.iter().cloned().map(Some).collect()
    };
    let mut routes = HashMap::new();
    let mut controllers = Vec::new();
    for namespace in namespaces {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        controllers.push(run_controller(
            ctx.clone(),
            namespace.clone(),
            rx,
            shutdown(),
        ));
        routes.insert(namespace, tx);
    }
    // Vault changes found by the listing pollers sync the affected objects at once.
    if let Some(mut feed) = ctx.vault.take_change_feed() {
        tokio::spawn(async move {
            while let Some(key) = feed.recv().await {
                let Some((namespace, name)) = key.split_once('/') else {
                    continue;
                };
                let route = routes
                    .get(&Some(namespace.to_owned()))
                    .or_else(|| routes.get(&None));
                if let Some(route) = route {
                    let _ = route.send(ObjectRef::<KeyVaultSecret>::new(name).within(namespace));
                }
            }
        });
    }
    futures::future::join_all(controllers).await;
}

async fn run_controller(
    ctx: Arc<Context>,
    namespace: Option<String>,
    vault_changes: tokio::sync::mpsc::UnboundedReceiver<ObjectRef<KeyVaultSecret>>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (kvs_api, secret_api): (Api<KeyVaultSecret>, Api<Secret>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let (reader, writer) = reflector::store();
    let kvs_events = reflector(writer, watcher(kvs_api, watcher::Config::default()))
        .default_backoff()
        .applied_objects()
        .predicate_filter(sync_trigger, Default::default());
    let store = reader.clone();
    let mapper_ctx = ctx.clone();
    Controller::for_stream(kvs_events, reader)
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(
            vault_changes,
        ))
        .watches(
            secret_api,
            watcher::Config::default(),
            move |secret: Secret| {
                if mapper_ctx.is_own_write(&secret) {
                    Vec::new()
                } else {
                    affected_by_secret(&secret, &store)
                }
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconciler::reconcile, reconciler::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        })
        .await;
}
