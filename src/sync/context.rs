//! The sync stage's shared state: its settings, its clients, and the
//! indexes it keeps in step with the watches (each pure, in its own file),
//! behind one lock each. No I/O here: the controller wiring
//! ([`super::controller`]) feeds the indexes watch events; each sync
//! ([`super::reconciler`]) reads and updates them.
//!
//! ```text
//!  Context
//!   ├─ client, vault, events, notifier, metrics        the I/O the sync does
//!   ├─ scope, identity settings, backoff, concurrency  the operator's flags
//!   ├─ memory            per KeyVaultSecret: failures, read-now requests, checked targets
//!   ├─ references        which KeyVaultSecrets a Secret / ConfigMap / ServiceAccount concerns
//!   └─ secrets, config_maps, service_accounts         versions the watches saw (+ what was read at them)
//! ```
//!
//! Every index is keyed by [`ObjectKey`] and follows the objects: a deleted
//! KeyVaultSecret's entries go at once ([`Context::follow`]), and after a
//! re-list those of every object no longer there.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use tokio::sync::mpsc::UnboundedReceiver;

use super::events::ObjectEvents;
use super::identity::WorkloadAnnotations;
use super::key::ObjectKey;
use super::memory::Memory;
use super::metrics::SyncMetrics;
use super::observed::Observed;
use super::references::{Kind, References};
use super::shares::Shares;
use super::values;
use crate::api::KeyVaultSecret;
use crate::reload::ReloadNotifier;
use crate::reload::board::RolloutBoard;
use crate::scope::ScopeArgs;
use crate::vault::VaultAccess;

/// Shared state of the sync stage.
pub struct Context {
    pub client: kube::Client,
    pub vault: VaultAccess,
    /// Events on KeyVaultSecrets, one recorder per object (see [`super::events`]).
    pub events: ObjectEvents,
    pub notifier: ReloadNotifier,
    /// The reload stage's rollout summaries of the Secrets (see [`super::rollout`]).
    pub rollouts: RolloutBoard,
    /// KeyVaultSecrets whose Secret's summary changed (namespace, name); taken by the controller.
    pub(super) rollout_feed: Mutex<Option<UnboundedReceiver<(String, String)>>>,
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
    /// How long before `exp` an object is `Expiring` (`--expiry-window`).
    pub expiry_window: Duration,
    /// Each namespace's share of the sync slots (see [`super::shares`]).
    pub(super) shares: Shares,
    /// What is remembered per object between syncs (see [`super::memory`]).
    pub(super) memory: Mutex<Memory>,
    /// Which objects each Secret, ConfigMap and ServiceAccount concerns (see [`super::references`]).
    pub(super) references: Mutex<References>,
    /// Versions of the Secrets the watches have seen, with the values of
    /// keys read at them (credentials, templates; see [`super::observed`], [`super::values`]).
    pub(super) secrets: Mutex<Observed<values::Known>>,
    /// Versions of the ConfigMaps, with the values of template keys read at them.
    pub(super) config_maps: Mutex<Observed<values::Known>>,
    /// Versions of the ServiceAccounts the watches have seen, with their annotations.
    pub(super) service_accounts: Mutex<Observed<WorkloadAnnotations>>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: kube::Client,
        vault: VaultAccess,
        events: ObjectEvents,
        notifier: ReloadNotifier,
        (rollouts, rollout_feed): (RolloutBoard, UnboundedReceiver<(String, String)>),
        metrics: SyncMetrics,
        scope: ScopeArgs,
        operator_identity_namespaces: Vec<String>,
        require_service_account_opt_in: bool,
        default_tenant_id: Option<String>,
        max_backoff: Duration,
        max_concurrent_syncs: u16,
        min_refresh_interval: Duration,
        expiry_window: Duration,
    ) -> Self {
        Context {
            client,
            vault,
            events,
            notifier,
            rollouts,
            rollout_feed: Mutex::new(Some(rollout_feed)),
            metrics,
            scope,
            operator_identity_namespaces,
            require_service_account_opt_in,
            default_tenant_id,
            max_backoff,
            max_concurrent_syncs,
            min_refresh_interval,
            expiry_window,
            shares: Shares::new(max_concurrent_syncs),
            memory: Mutex::default(),
            references: Mutex::default(),
            secrets: Mutex::default(),
            config_maps: Mutex::default(),
            service_accounts: Mutex::default(),
        }
    }

    /// The object whose sync wrote this version of the Secret, or read it
    /// as up to date, if one did.
    pub(super) fn checked_by(&self, secret: &PartialObjectMeta<Secret>) -> Option<ObjectKey> {
        let version = secret.resource_version()?;
        self.memory
            .lock()
            .unwrap()
            .checked_by(&ObjectKey::of(secret), &version)
            .cloned()
    }

    /// The objects an event on a Secret or ServiceAccount concerns: their
    /// next sync reads the vault as of now (a repair, or a fixed credential).
    pub(super) fn read_now(
        &self,
        objects: Vec<ObjectRef<KeyVaultSecret>>,
    ) -> Vec<ObjectRef<KeyVaultSecret>> {
        let mut memory = self.memory.lock().unwrap();
        for object in &objects {
            memory.request_read_now(&ObjectKey::of_ref(object));
        }
        objects
    }

    /// Follows the KeyVaultSecret watch of `namespace` (`None`: all): what
    /// an object refers to is indexed as it is seen; a deleted object's
    /// memory is dropped, and after a re-list everything of the watch's
    /// objects no longer there (other watches' objects are kept).
    pub(super) fn follow(
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
                let object = ObjectKey::of(kvs);
                self.references.lock().unwrap().forget(&object);
                self.memory.lock().unwrap().forget(&object);
                self.vault.unsubscribe(object.as_str());
                self.metrics.forget_object(&object);
                self.events.forget(&object);
            }
            watcher::Event::InitDone => {
                let alive: HashSet<ObjectKey> = store
                    .state()
                    .iter()
                    .map(|kvs| ObjectKey::of(kvs.as_ref()))
                    .collect();
                let keep =
                    |object: &ObjectKey| alive.contains(object) || !object.watched_by(namespace);
                self.references.lock().unwrap().retain(keep);
                self.memory.lock().unwrap().retain(keep);
                self.vault.retain_subscribers(|subscriber| {
                    ObjectKey::parse(subscriber).is_none_or(|key| keep(&key))
                });
                self.metrics.retain_objects(keep);
                self.events.retain(keep);
            }
            watcher::Event::Init => {}
        }
    }

    /// The objects that refer to the `kind` object `referent` (in its
    /// namespace), and (for a Secret) the one its `kvsync.io/owner`
    /// annotation names.
    pub(super) fn referring_to(
        &self,
        kind: Kind,
        referent: &ObjectKey,
        owner: Option<&String>,
    ) -> Vec<ObjectRef<KeyVaultSecret>> {
        let namespace = referent.namespace();
        let references = self.references.lock().unwrap();
        let mut names = references.referring_to(kind, namespace, referent.name());
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
