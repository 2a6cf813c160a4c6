//! The controller wiring of the sync stage — the I/O of its inputs: one
//! `kube` controller per watched namespace (or one for the cluster), the
//! watches that feed it, the mappers from a watch event to the
//! KeyVaultSecrets it concerns (pure lookups in the context's indexes), and
//! the route of the vault's change feed.
//!
//! ```text
//!  KeyVaultSecret (watch, filtered to spec/force-sync/deletion changes) ─┐
//!  Secret metadata events (target by name or kvsync.io/owner, credentials)┼─▶ reconcile (super::reconciler)
//!  ServiceAccount metadata events (workload identity annotations) ───────┤
//!  ConfigMap metadata events (templateFrom sources) ──────────────────────┤
//!  Namespace label changes (with --namespace-selector: every object in it)┤
//!  vault changes found by the listing pollers ───────────────────────────┤
//!  requeue (refreshInterval ± jitter, or backoff) ───────────────────────┘
//!  every watch event also updates the context's indexes (Context::follow, metadata_watch)
//! ```

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use kube::ResourceExt;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, controller, predicates, reflector, watcher};

use super::context::Context;
use super::identity::WorkloadAnnotations;
use super::key::ObjectKey;
use super::observed::Observed;
use super::reconciler;
use super::references::Kind;
use crate::api::KeyVaultSecret;
use crate::api::contract::{
    FORCE_SYNC_ANNOTATION, KUBECTL_LAST_APPLIED, MERGED_BY_ANNOTATION, OWNER_ANNOTATION,
};

/// Drops what kvsync never reads of a KeyVaultSecret before the store keeps
/// it: its managed fields and kubectl's copy of the last applied manifest
/// (together often larger than the rest of the object, for every object).
fn drop_unread(kvs: &mut KeyVaultSecret) {
    kvs.managed_fields_mut().clear();
    kvs.annotations_mut().remove(KUBECTL_LAST_APPLIED);
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
    let annotations = secret.annotations();
    let owner = annotations
        .get(OWNER_ANNOTATION)
        .or_else(|| annotations.get(MERGED_BY_ANNOTATION));
    ctx.referring_to(Kind::Secret, &ObjectKey::of(secret), owner)
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
        let routes = routes.clone();
        tokio::spawn(async move {
            while let Some(key) = feed.recv().await {
                let Some(key) = ObjectKey::parse(&key) else {
                    continue;
                };
                let (namespace, name) = (key.namespace(), key.name());
                let route = routes
                    .get(&Some(namespace.to_owned()))
                    .or_else(|| routes.get(&None));
                if let Some(route) = route {
                    let _ = route.send(ObjectRef::<KeyVaultSecret>::new(name).within(namespace));
                }
            }
        });
    }
    // Secrets whose rollout summary changed update their objects' status.
    if let Some(mut feed) = ctx.rollout_feed.lock().unwrap().take() {
        let routes = routes.clone();
        tokio::spawn(async move {
            while let Some((namespace, name)) = feed.recv().await {
                let route = routes
                    .get(&Some(namespace.clone()))
                    .or_else(|| routes.get(&None));
                if let Some(route) = route {
                    let _ = route.send(ObjectRef::<KeyVaultSecret>::new(&name).within(&namespace));
                }
            }
        });
    }
    futures::future::join_all(controllers).await;
}

/// Label changes of Namespaces, when `--namespace-selector` decides the
/// scope (else none): a namespace that starts or stops matching has its
/// objects synced at once (served, or let go of), without a restart.
fn namespace_label_changes(
    ctx: &Context,
) -> futures::stream::BoxStream<'static, Result<PartialObjectMeta<Namespace>, watcher::Error>> {
    if ctx.scope.namespace_selector.is_none() {
        return futures::stream::empty().boxed();
    }
    let events = crate::cluster::retried(watcher(
        Api::<PartialObjectMeta<Namespace>>::all(ctx.client.clone()),
        crate::cluster::watch_config(),
    ))
    .touched_objects()
    .predicate_filter(predicates::labels, Default::default());
    crate::cluster::errors_logged(events, "Namespaces").boxed()
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

/// The metadata-only watch of `K` in `scope` (the mappers need names,
/// annotations and resourceVersions, not the data of every Secret in the
/// cluster), keeping one index of the context (see [`super::observed`]) in
/// step with its events; `known` says what an event itself tells.
fn metadata_watch<K, T>(
    ctx: &Arc<Context>,
    scope: &Option<String>,
    index: fn(&Context) -> &Mutex<Observed<T>>,
    known: fn(&PartialObjectMeta<K>) -> T,
    watched: &'static str,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + use<K, T>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    T: 'static,
{
    let (observe_ctx, observe_scope) = (ctx.clone(), scope.clone());
    let events = crate::cluster::retried(
        watcher(
            scoped_api::<PartialObjectMeta<K>>(&ctx.client, scope),
            crate::cluster::watch_config(),
        )
        .inspect(move |event| {
            let mut index = index(&observe_ctx).lock().unwrap();
            match event {
                Ok(event) => index.follow(&observe_scope, event, known),
                Err(_) => index.lost(&observe_scope),
            }
        }),
    )
    .touched_objects();
    crate::cluster::errors_logged(events, watched)
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
    // These three also keep the indexes refreshes read instead of the API
    // server (see [`super::observed`]).
    let secret_events = metadata_watch::<Secret, _>(
        &ctx,
        &namespace,
        |c| &c.secrets,
        |_| Default::default(),
        "Secrets",
    );
    let sa_events = metadata_watch::<ServiceAccount, _>(
        &ctx,
        &namespace,
        |c| &c.service_accounts,
        WorkloadAnnotations::of,
        "ServiceAccounts",
    );
    let config_map_events = metadata_watch::<ConfigMap, _>(
        &ctx,
        &namespace,
        |c| &c.config_maps,
        |_| Default::default(),
        "ConfigMaps",
    );
    let (secret_ctx, sa_ctx, config_map_ctx) = (ctx.clone(), ctx.clone(), ctx.clone());
    let namespace_events = namespace_label_changes(&ctx);
    let in_namespace = reader.clone();
    Controller::for_stream(kvs_events, reader)
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(
            vault_changes,
        ))
        .watches_stream(secret_events, move |secret| {
            let affected = affected_by_secret(&secret_ctx, &secret);
            match secret_ctx.checked_by(&secret) {
                // Written (or read) by kvsync's own sync of `writer`: that
                // one is in step; those that read it as a template or
                // credential re-render at once (no vault read needed).
                Some(writer) => affected
                    .into_iter()
                    .filter(|object| ObjectKey::of_ref(object) != writer)
                    .collect(),
                None => secret_ctx.read_now(affected),
            }
        })
        // KeyVaultSecrets whose workload identity is this ServiceAccount.
        .watches_stream(sa_events, move |sa| {
            let affected = sa_ctx.referring_to(Kind::ServiceAccount, &ObjectKey::of(&sa), None);
            sa_ctx.read_now(affected)
        })
        // KeyVaultSecrets that read templates from this ConfigMap.
        .watches_stream(config_map_events, move |config_map| {
            config_map_ctx.referring_to(Kind::ConfigMap, &ObjectKey::of(&config_map), None)
        })
        // Every KeyVaultSecret of a Namespace whose labels changed.
        .watches_stream(namespace_events, move |namespace| {
            let name = namespace.name_any();
            in_namespace
                .state()
                .iter()
                .filter(|kvs| kvs.namespace().as_deref() == Some(name.as_str()))
                .map(|kvs| ObjectRef::from_obj(kvs.as_ref()))
                .collect::<Vec<_>>()
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
