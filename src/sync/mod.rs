//! Sync stage: the `KeyVaultSecret` controller.
//!
//! ```text
//!  KeyVaultSecret (watch, filtered to spec/force-sync/deletion changes) ─┐
//!  Secret metadata events (target by name or kvsync.io/owner, credentials)┼─▶ reconcile ──▶ vault ──▶ render ──▶ SSA Secret
//!  ServiceAccount metadata events (workload identity annotations) ───────┤
//!  ConfigMap metadata events (templateFrom sources) ──────────────────────┤                                   └─▶ reload fast path
//!  vault changes found by the listing pollers ───────────────────────────┤
//!  requeue (refreshInterval ± jitter, or backoff) ───────────────────────┘
//! ```
//!
//! Decisions are pure and live in [`render`], [`target`], [`status`],
//! [`memory`], [`observed`], [`references`], [`staleness`] and [`crate::schedule`];
//! [`reconciler`] runs the steps, with [`identity`], [`values`], [`fetch`],
//! [`write`] and [`events`] doing the I/O around them, and [`error`] saying what each failure means for the status
//! and the retry.

mod error;
mod events;
mod fetch;
mod identity;
pub mod keys;
pub mod memory;
pub mod metrics;
pub mod observed;
mod reconciler;
pub mod references;
pub mod render;
pub mod staleness;
pub mod status;
pub mod target;
pub mod template;
mod template_from;
mod values;
mod write;

pub use error::{Retry, SyncError};

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::ResourceExt;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, controller, predicates, reflector, watcher};

use crate::api::KeyVaultSecret;
use crate::api::contract::{FORCE_SYNC_ANNOTATION, OWNER_ANNOTATION};
use crate::reload::ReloadNotifier;
use crate::scope::ScopeArgs;
use crate::vault::VaultAccess;
pub use events::ObjectEvents;
use memory::Memory;
pub use metrics::SyncMetrics;
use observed::Observed;
use references::{Kind, References};

/// Shared state of the sync stage.
pub struct Context {
    pub client: kube::Client,
    pub vault: VaultAccess,
    /// Events on KeyVaultSecrets, one recorder per object (see [`events`]).
    pub events: ObjectEvents,
    pub notifier: ReloadNotifier,
    pub metrics: SyncMetrics,
    pub scope: ScopeArgs,
    pub operator_identity_namespaces: Vec<String>,
    /// Only ServiceAccounts annotated `kvsync.io/allow-token-exchange: "true"`
    /// may be used for workload identity (`--require-service-account-opt-in`).
    pub require_service_account_opt_in: bool,
    /// Tenant for service accounts that don't name one (the operator's `AZURE_TENANT_ID`).
    pub default_tenant_id: Option<String>,
    pub max_backoff: Duration,
    /// KeyVaultSecrets synced at once (`--max-concurrent-syncs`).
    pub max_concurrent_syncs: u16,
    /// Shortest refresh interval accepted (`--min-refresh-interval`).
    pub min_refresh_interval: Duration,
    /// What is remembered per object between syncs (see [`memory`]).
    memory: Mutex<Memory>,
    /// Which objects each Secret, ConfigMap and ServiceAccount concerns (see [`references`]).
    references: Mutex<References>,
    /// Versions of the Secrets the watches have seen, with the values of
    /// keys read at them (credentials, templates; see [`observed`], [`values`]).
    secrets: Mutex<Observed<values::Known>>,
    /// Versions of the ConfigMaps, with the values of template keys read at them.
    config_maps: Mutex<Observed<values::Known>>,
    /// Versions of the ServiceAccounts the watches have seen, with their annotations.
    service_accounts: Mutex<Observed<identity::WorkloadAnnotations>>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: kube::Client,
        vault: VaultAccess,
        events: ObjectEvents,
        notifier: ReloadNotifier,
        metrics: SyncMetrics,
        scope: ScopeArgs,
        operator_identity_namespaces: Vec<String>,
        require_service_account_opt_in: bool,
        default_tenant_id: Option<String>,
        max_backoff: Duration,
        max_concurrent_syncs: u16,
        min_refresh_interval: Duration,
    ) -> Self {
        Context {
            client,
            vault,
            events,
            notifier,
            metrics,
            scope,
            operator_identity_namespaces,
            require_service_account_opt_in,
            default_tenant_id,
            max_backoff,
            max_concurrent_syncs,
            min_refresh_interval,
            memory: Mutex::default(),
            references: Mutex::default(),
            secrets: Mutex::default(),
            config_maps: Mutex::default(),
            service_accounts: Mutex::default(),
        }
    }

    /// Whether kvsync wrote this version of the Secret, or read it as up to date.
    fn is_checked(&self, secret: &PartialObjectMeta<Secret>) -> bool {
        let namespace = secret.namespace().unwrap_or_default();
        secret.resource_version().is_some_and(|rv| {
            self.memory
                .lock()
                .unwrap()
                .is_checked(&namespace, &secret.name_any(), &rv)
        })
    }

    /// The objects an event on a Secret or ServiceAccount concerns: their
    /// next sync reads the vault as of now (a repair, or a fixed credential).
    fn read_now(&self, objects: Vec<ObjectRef<KeyVaultSecret>>) -> Vec<ObjectRef<KeyVaultSecret>> {
        let mut memory = self.memory.lock().unwrap();
        for object in &objects {
            let namespace = object.namespace.as_deref().unwrap_or_default();
            memory.request_read_now(&format!("{namespace}/{}", object.name));
        }
        objects
    }

    /// Follows the KeyVaultSecret watch of `namespace` (`None`: all): what
    /// an object refers to is indexed as it is seen; a deleted object's
    /// memory is dropped, and after a re-list everything of the watch's
    /// objects no longer there (other watches' objects are kept).
    fn follow(
        &self,
        namespace: &Option<String>,
        event: &watcher::Event<KeyVaultSecret>,
        store: &Store<KeyVaultSecret>,
    ) {
        match event {
            watcher::Event::Apply(kvs) | watcher::Event::InitApply(kvs) => {
                self.references.lock().unwrap().update(kvs);
            }
            watcher::Event::Delete(kvs) => {
                let object = reconciler::object_key(kvs);
                self.references.lock().unwrap().forget(&object);
                self.memory.lock().unwrap().forget(&object);
                self.metrics.forget_object(&object);
                self.events.forget(&object);
            }
            watcher::Event::InitDone => {
                let alive: std::collections::HashSet<String> = store
                    .state()
                    .iter()
                    .map(|kvs| reconciler::object_key(kvs))
                    .collect();
                let keep = |object: &str| alive.contains(object) || !watched(namespace, object);
                self.references.lock().unwrap().retain(keep);
                self.memory.lock().unwrap().retain(keep);
                self.metrics.retain_objects(keep);
                self.events.retain(keep);
            }
            watcher::Event::Init => {}
        }
    }

    /// The objects of `namespace` that refer to the `kind` object `name`,
    /// and (for a Secret) the one its `kvsync.io/owner` annotation names.
    fn referring_to(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        owner: Option<&String>,
    ) -> Vec<ObjectRef<KeyVaultSecret>> {
        let references = self.references.lock().unwrap();
        let mut names = references.referring_to(kind, namespace, name);
        if let Some(owner) = owner
            && !names.contains(owner)
            && references.contains(namespace, owner)
        {
            names.push(owner.clone());
        }
        names
            .into_iter()
            .map(|name| ObjectRef::new(&name).within(namespace))
            .collect()
    }
}

/// Drops what kvsync never reads of a KeyVaultSecret before the store keeps
/// it: its managed fields and kubectl's copy of the last applied manifest
/// (together often larger than the rest of the object, for every object).
fn drop_unread(kvs: &mut KeyVaultSecret) {
    kvs.managed_fields_mut().clear();
    kvs.annotations_mut()
        .remove(crate::api::contract::KUBECTL_LAST_APPLIED);
}

/// Gives back the slack of the lists the store keeps with every object: a
/// deserialized one-element list holds room for four (~500 bytes for one
/// condition, as much for one `data` entry; 10,000 objects in the store).
fn shrink_to_fit(kvs: &mut KeyVaultSecret) {
    kvs.spec.data.shrink_to_fit();
    kvs.spec.data_from.shrink_to_fit();
    if let Some(status) = &mut kvs.status {
        status.conditions.shrink_to_fit();
        status.synced_versions = std::mem::take(&mut status.synced_versions)
            .into_iter()
            .collect();
    }
}

/// Whether `object` ("ns/name") belongs to the watch of `namespace` (`None`: all).
fn watched(namespace: &Option<String>, object: &str) -> bool {
    namespace
        .as_deref()
        .is_none_or(|ns| object.split_once('/').map(|(n, _)| n) == Some(ns))
}

/// What makes a KeyVaultSecret event worth a sync: a spec change (generation),
/// a new `kvsync.io/force-sync` value, or the start of its deletion. Status
/// writes pass none, so kvsync's own status updates do not cause Key Vault reads.
fn sync_trigger(kvs: &KeyVaultSecret) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    predicates::generation(kvs).hash(&mut hasher);
    kvs.annotations()
        .get(FORCE_SYNC_ANNOTATION)
        .hash(&mut hasher);
    kvs.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    Some(hasher.finish())
}

/// KeyVaultSecrets to sync after an event on this Secret: the one that
/// writes it (by annotation, covering every creation policy), any whose
/// target it is by name (a Merge target that appeared, a conflicting
/// Secret that went away) and any that use it as a credential or template.
fn affected_by_secret(
    ctx: &Context,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<KeyVaultSecret>> {
    let owner = secret.annotations().get(OWNER_ANNOTATION);
    let namespace = secret.namespace().unwrap_or_default();
    ctx.referring_to(Kind::Secret, &namespace, &secret.name_any(), owner)
}

/// KeyVaultSecrets that read templates from this ConfigMap.
fn affected_by_config_map(
    ctx: &Context,
    config_map: &PartialObjectMeta<ConfigMap>,
) -> Vec<ObjectRef<KeyVaultSecret>> {
    let namespace = config_map.namespace().unwrap_or_default();
    ctx.referring_to(Kind::ConfigMap, &namespace, &config_map.name_any(), None)
}

/// KeyVaultSecrets whose workload identity is this ServiceAccount.
fn affected_by_service_account(
    ctx: &Context,
    sa: &PartialObjectMeta<ServiceAccount>,
) -> Vec<ObjectRef<KeyVaultSecret>> {
    let namespace = sa.namespace().unwrap_or_default();
    ctx.referring_to(Kind::ServiceAccount, &namespace, &sa.name_any(), None)
}

/// Runs the sync stage until `shutdown` resolves: one controller per
/// [`ScopeArgs::watched_namespaces`] entry — the whole cluster, or each
/// namespace listed in `--namespaces` and not ignored (so that namespaced
/// RBAC suffices: a cluster-wide watch would be refused).
pub async fn run<F, Fut>(ctx: Arc<Context>, shutdown: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + Sync + 'static,
{
    let namespaces = ctx.scope.watched_namespaces();
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

/// An API for one namespace, or for all.
fn scoped_api<K>(client: &kube::Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Keeps one index of the context (see [`observed`]) in step with the
/// events of a watch of `scope`; `known` says what an event itself tells.
fn observe<K: kube::Resource, T>(
    ctx: &Arc<Context>,
    scope: &Option<String>,
    index: fn(&Context) -> &Mutex<Observed<T>>,
    known: fn(&K) -> T,
) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) + use<K, T> {
    let (ctx, scope) = (ctx.clone(), scope.clone());
    move |event| {
        let mut index = index(&ctx).lock().unwrap();
        match event {
            Ok(event) => index.follow(&scope, event, known),
            Err(_) => index.lost(&scope),
        }
    }
}

async fn run_controller(
    ctx: Arc<Context>,
    namespace: Option<String>,
    vault_changes: tokio::sync::mpsc::UnboundedReceiver<ObjectRef<KeyVaultSecret>>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (reader, writer) = reflector::store();
    let follow_ctx = ctx.clone();
    let follow_store = reader.clone();
    let follow_namespace = namespace.clone();
    let kvs_events = crate::cluster::retried(reflector(
        writer,
        watcher(
            scoped_api(&ctx.client, &namespace),
            crate::cluster::watch_config(),
        )
        .modify(|kvs| {
            drop_unread(kvs);
            shrink_to_fit(kvs);
        }),
    ))
    .inspect(move |event| {
        if let Ok(event) = event {
            follow_ctx.follow(&follow_namespace, event, &follow_store);
        }
    })
    .applied_objects()
    .predicate_filter(sync_trigger, Default::default());
    let kvs_events = crate::cluster::errors_logged(kvs_events, "KeyVaultSecrets");
    // Metadata only: the mappers need names, annotations and resourceVersions,
    // not the data of every Secret in the cluster.
    // These three also keep the indexes refreshes read instead of the API
    // server (see [`observed`]).
    let secret_events = crate::cluster::retried(
        watcher(
            scoped_api::<PartialObjectMeta<Secret>>(&ctx.client, &namespace),
            crate::cluster::watch_config(),
        )
        .inspect(observe(
            &ctx,
            &namespace,
            |c| &c.secrets,
            |_| Default::default(),
        )),
    )
    .touched_objects();
    let secret_events = crate::cluster::errors_logged(secret_events, "Secrets");
    let sa_events = crate::cluster::retried(
        watcher(
            scoped_api::<PartialObjectMeta<ServiceAccount>>(&ctx.client, &namespace),
            crate::cluster::watch_config(),
        )
        .inspect(observe(
            &ctx,
            &namespace,
            |c| &c.service_accounts,
            identity::WorkloadAnnotations::of,
        )),
    )
    .touched_objects();
    let sa_events = crate::cluster::errors_logged(sa_events, "ServiceAccounts");
    let config_map_events = crate::cluster::retried(
        watcher(
            scoped_api::<PartialObjectMeta<ConfigMap>>(&ctx.client, &namespace),
            crate::cluster::watch_config(),
        )
        .inspect(observe(
            &ctx,
            &namespace,
            |c| &c.config_maps,
            |_| Default::default(),
        )),
    )
    .touched_objects();
    let config_map_events = crate::cluster::errors_logged(config_map_events, "ConfigMaps");
    let (secret_ctx, sa_ctx, config_map_ctx) = (ctx.clone(), ctx.clone(), ctx.clone());
    Controller::for_stream(kvs_events, reader)
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(
            vault_changes,
        ))
        .watches_stream(secret_events, move |secret| {
            if secret_ctx.is_checked(&secret) {
                Vec::new()
            } else {
                secret_ctx.read_now(affected_by_secret(&secret_ctx, &secret))
            }
        })
        .watches_stream(sa_events, move |sa| {
            sa_ctx.read_now(affected_by_service_account(&sa_ctx, &sa))
        })
        .watches_stream(config_map_events, move |config_map| {
            affected_by_config_map(&config_map_ctx, &config_map)
        })
        .with_config(controller::Config::default().concurrency(ctx.max_concurrent_syncs))
        .graceful_shutdown_on(shutdown)
        .run(
            reconciler::reconcile_contained,
            reconciler::error_policy,
            ctx,
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::watched;

    #[test]
    fn a_namespaced_watch_owns_only_its_namespace_objects() {
        let shop = Some("shop".to_owned());
        assert!(watched(&shop, "shop/db"));
        assert!(!watched(&shop, "web/db"), "another controller's object");
        assert!(!watched(&shop, "shopping/db"));
        assert!(watched(&None, "web/db"), "the cluster-wide watch owns all");
    }
}
