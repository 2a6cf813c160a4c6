//! The watch streams feeding the index, merged into one stream of small
//! [`Input`]s: every object is reduced to its index entry inside the stream,
//! before it reaches the stage, and dropped there.
//!
//! One watcher per watched kind and per entry of
//! [`ScopeArgs::watched_namespaces`] (the same list the sync stage watches):
//! per listed namespace when `--namespaces` lists some (namespaced watches
//! need only namespaced RBAC), else a single cluster-wide watcher per kind,
//! filtered by `--ignore-namespaces`.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::SecretWritten;
use super::digest::DigestKey;
use super::dynamic;
use super::index::{ResourceObservation, WorkloadObservation};
use super::kinds::{ResourceKind, WorkloadKind};
use super::observe::{ResourceObject, WorkloadObject, observe_resource, observe_workload};
use crate::scope::{LabelSelector, ScopeArgs};

/// An object reduced to what the index keeps.
#[derive(Debug)]
pub enum Observed {
    Resource(ResourceObservation),
    /// Boxed: a parsed policy is much larger than the other variants.
    Workload(Box<WorkloadObservation>),
    /// A Namespace and whether its labels pass `--namespace-selector`.
    Namespace {
        name: String,
        selected: bool,
    },
}

impl Observed {
    /// Identity within a list, for noticing what a re-list no longer contains.
    pub fn listing_key(&self) -> (String, String) {
        match self {
            Observed::Resource(r) => (r.namespace.clone(), r.resource.name.clone()),
            Observed::Workload(w) => (w.workload.namespace.clone(), w.workload.name.clone()),
            Observed::Namespace { name, .. } => (name.clone(), String::new()),
        }
    }
}

/// What one watcher covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watched {
    Resources(ResourceKind),
    Workloads(WorkloadKind),
    Namespaces,
}

/// One watcher: what it watches and where (`None`: every namespace in scope).
#[derive(Clone, Debug)]
pub struct Source {
    pub watched: Watched,
    pub namespace: Option<String>,
    /// Served at start-up: readiness waits for its first list. An API that
    /// may appear later (a CRD installed meanwhile) does not hold it up.
    pub required: bool,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.watched {
            Watched::Resources(kind) => f.write_str(kind.as_str())?,
            Watched::Workloads(kind) => f.write_str(kind.as_str())?,
            Watched::Namespaces => f.write_str("Namespace")?,
        }
        match &self.namespace {
            Some(namespace) => write!(f, " in {namespace}"),
            None => f.write_str(" (all namespaces)"),
        }
    }
}

/// An item of the merged input stream.
pub enum Input {
    Watch {
        source: usize,
        event: Event<Observed>,
    },
    WatchFailed {
        source: usize,
        error: watcher::Error,
    },
    /// A Secret the sync stage wrote (the fast path): `None` when it does not
    /// pass `--resource-label-selector`.
    Written(Option<ResourceObservation>),
}

/// Secrets can be large; smaller list pages bound what a re-list holds at once.
const LIST_PAGE_SIZE: u32 = 100;

/// Everything the watchers need to know.
pub struct WatchPlan {
    pub client: Client,
    pub key: Arc<DigestKey>,
    pub scope: ScopeArgs,
    pub resource_selector: Option<LabelSelector>,
    /// The dynamic kinds and the API serving each at start-up, if any.
    pub dynamic: Vec<(WorkloadKind, Option<ApiResource>)>,
}

impl WatchPlan {
    /// All watchers (described by the returned sources, indexed like the
    /// `source` of each [`Input`]) and the fast path, merged into one stream.
    pub fn streams(
        &self,
        inbox: tokio::sync::mpsc::Receiver<SecretWritten>,
    ) -> (Vec<Source>, BoxStream<'static, Input>) {
        let namespaces = self.scope.watched_namespaces();
        let mut sources = Vec::new();
        let mut streams = Vec::new();
        for namespace in &namespaces {
            let namespace = namespace.as_deref();
            for kind in ResourceKind::ALL {
                let stream = match kind {
                    ResourceKind::Secret => {
                        self.resource_stream::<Secret>(sources.len(), namespace)
                    }
                    ResourceKind::ConfigMap => {
                        self.resource_stream::<ConfigMap>(sources.len(), namespace)
                    }
                };
                streams.push(stream);
                sources.push(Source {
                    watched: Watched::Resources(kind),
                    namespace: namespace.map(str::to_owned),
                    required: true,
                });
            }
            for kind in WorkloadKind::APPS {
                let stream = match kind {
                    WorkloadKind::Deployment => {
                        self.workload_stream::<Deployment>(sources.len(), namespace)
                    }
                    WorkloadKind::StatefulSet => {
                        self.workload_stream::<StatefulSet>(sources.len(), namespace)
                    }
                    _ => self.workload_stream::<DaemonSet>(sources.len(), namespace),
                };
                streams.push(stream);
                sources.push(Source {
                    watched: Watched::Workloads(kind),
                    namespace: namespace.map(str::to_owned),
                    required: true,
                });
            }
            for (kind, served) in &self.dynamic {
                let dynamic = DynamicWatch {
                    client: self.client.clone(),
                    scope: self.scope.clone(),
                    namespace: namespace.map(str::to_owned),
                    kind: *kind,
                    source: sources.len(),
                };
                streams.push(match served {
                    Some(api) => dynamic.stream(api),
                    None => dynamic.when_served(),
                });
                sources.push(Source {
                    watched: Watched::Workloads(*kind),
                    namespace: namespace.map(str::to_owned),
                    required: served.is_some(),
                });
            }
        }
        if let Some(selector) = &self.scope.namespace_selector {
            let selector = selector.clone();
            let api = Api::<Namespace>::all(self.client.clone());
            streams.push(watch_stream(
                api,
                crate::cluster::watch_config(),
                sources.len(),
                move |ns: &Namespace| {
                    Some(Observed::Namespace {
                        name: ns.name_any(),
                        selected: selector.matches(ns.labels()),
                    })
                },
            ));
            sources.push(Source {
                watched: Watched::Namespaces,
                namespace: None,
                required: true,
            });
        }
        streams.push(self.fast_path(inbox));
        (sources, stream::select_all(streams).boxed())
    }

    fn api<K>(&self, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    fn resource_stream<R: ResourceObject>(
        &self,
        source: usize,
        namespace: Option<&str>,
    ) -> BoxStream<'static, Input> {
        let mut config = crate::cluster::watch_config().page_size(LIST_PAGE_SIZE);
        if let Some(selector) = &self.resource_selector {
            config = config.labels(&selector.to_string());
        }
        let key = self.key.clone();
        let scope = self.scope.clone();
        watch_stream(
            self.api::<R>(namespace),
            config,
            source,
            move |object: &R| {
                in_scope(&scope, object)
                    .then(|| observe_resource(&key, object).map(Observed::Resource))
                    .flatten()
            },
        )
    }

    fn workload_stream<W: WorkloadObject>(
        &self,
        source: usize,
        namespace: Option<&str>,
    ) -> BoxStream<'static, Input> {
        let scope = self.scope.clone();
        watch_stream(
            self.api::<W>(namespace),
            crate::cluster::watch_config(),
            source,
            move |object: &W| {
                in_scope(&scope, object)
                    .then(|| observe_workload(object).map(|w| Observed::Workload(Box::new(w))))
                    .flatten()
            },
        )
    }

    /// Reduces each Secret the sync stage wrote (the object its write
    /// returned), so the index learns its new digest without waiting for the
    /// watch event — and without reading it back.
    fn fast_path(
        &self,
        inbox: tokio::sync::mpsc::Receiver<SecretWritten>,
    ) -> BoxStream<'static, Input> {
        let key = self.key.clone();
        let scope = self.scope.clone();
        let selector = self.resource_selector.clone();
        stream::unfold(inbox, |mut inbox| async move {
            inbox.recv().await.map(|written| (written, inbox))
        })
        .filter_map(move |SecretWritten(secret)| {
            let in_scope = secret
                .namespace()
                .is_some_and(|ns| scope.name_in_scope(&ns));
            let visible = selector.as_ref().is_none_or(|s| s.matches(secret.labels()));
            std::future::ready(in_scope.then(|| {
                Input::Written(
                    visible
                        .then(|| observe_resource(&key, secret.as_ref()))
                        .flatten(),
                )
            }))
        })
        .boxed()
    }
}

/// A watcher of one dynamic kind (see [`dynamic`]) in one namespace (or all).
struct DynamicWatch {
    client: Client,
    scope: ScopeArgs,
    namespace: Option<String>,
    kind: WorkloadKind,
    source: usize,
}

impl DynamicWatch {
    fn stream(self, api: &ApiResource) -> BoxStream<'static, Input> {
        let objects = match &self.namespace {
            Some(ns) => dynamic::api(self.client, api, ns),
            None => Api::all_with(self.client, api),
        };
        let (scope, kind) = (self.scope, self.kind);
        watch_stream(
            objects,
            crate::cluster::watch_config(),
            self.source,
            move |object: &DynamicObject| {
                in_scope(&scope, object)
                    .then(|| {
                        dynamic::observe_dynamic(kind, object)
                            .map(|w| Observed::Workload(Box::new(w)))
                    })
                    .flatten()
            },
        )
    }

    /// Looks for the API every [`dynamic::REDISCOVERY`] until it is served,
    /// then watches it.
    fn when_served(self) -> BoxStream<'static, Input> {
        let client = self.client.clone();
        let kind = self.kind;
        stream::once(async move {
            loop {
                tokio::time::sleep(dynamic::REDISCOVERY).await;
                if let Ok(Some(api)) = dynamic::discover(&client, kind).await {
                    tracing::info!(kind = kind.as_str(), api = %api.api_version, "API now served; watching it");
                    return api;
                }
            }
        })
        .flat_map(move |api| {
            DynamicWatch {
                client: self.client.clone(),
                scope: self.scope.clone(),
                namespace: self.namespace.clone(),
                kind: self.kind,
                source: self.source,
            }
            .stream(&api)
        })
        .boxed()
    }
}

fn in_scope<K: Resource>(scope: &ScopeArgs, object: &K) -> bool {
    object
        .meta()
        .namespace
        .as_deref()
        .is_some_and(|ns| scope.name_in_scope(ns))
}

/// A watcher whose objects are reduced by `reduce` (dropped when it says `None`).
fn watch_stream<K, F>(
    api: Api<K>,
    config: watcher::Config,
    source: usize,
    reduce: F,
) -> BoxStream<'static, Input>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    F: Fn(&K) -> Option<Observed> + Send + 'static,
{
    crate::cluster::retried(watcher::watcher(api, config))
        .filter_map(move |item| {
            let input = match item {
                Ok(event) => {
                    reduce_event(event, &reduce).map(|event| Input::Watch { source, event })
                }
                Err(error) => Some(Input::WatchFailed { source, error }),
            };
            std::future::ready(input)
        })
        .boxed()
}

fn reduce_event<K>(
    event: Event<K>,
    reduce: impl Fn(&K) -> Option<Observed>,
) -> Option<Event<Observed>> {
    Some(match event {
        Event::Apply(object) => Event::Apply(reduce(&object)?),
        Event::Delete(object) => Event::Delete(reduce(&object)?),
        Event::InitApply(object) => Event::InitApply(reduce(&object)?),
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    })
}

/// Keys a re-list contained, per source, between `Init` and `InitDone`.
pub type Listing = HashSet<(String, String)>;
