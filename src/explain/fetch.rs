//! The I/O of `kvsync explain`: reads what the pure explanations need, with
//! the caller's credentials, and prints the report. Each read needs only the
//! permission `kubectl get` of the same object does; a read refused is listed
//! in the report's limits instead of failing the command. Of Secrets only
//! names, annotations and (for a KeyVaultSecret's target) key names are kept;
//! values are dropped as soon as they arrive.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};
use time::OffsetDateTime;

use super::report::Report;
use super::workload::ResourceInfo;
use super::{Target, keyvaultsecret, render, workload};
use crate::api::KeyVaultSecret;
use crate::reload::annotations::ResourceFlags;
use crate::reload::index::WorkloadObservation;
use crate::reload::kinds::ResourceRef;
use crate::reload::observe::observe_workload;
use crate::sync::target::OWNER_ANNOTATION;

/// `kvsync explain`.
#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// What to explain: kvs/NAME, deployment/NAME, statefulset/NAME or daemonset/NAME.
    pub target: Target,
    /// The namespace; default: the kubeconfig context's.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: Output,
    /// The operator's --min-reload-interval, for when the next restart may happen.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub min_reload_interval: Duration,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

/// Why there is nothing to explain.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("cannot reach the cluster: {0}")]
    Client(#[source] kube::Error),
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        kind: String,
        namespace: String,
        name: String,
    },
    #[error("cannot read {kind} {namespace}/{name}: {source}")]
    Read {
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Explains the target and prints the report.
pub async fn run(args: ExplainArgs) -> Result<(), ExplainError> {
    let client = crate::cluster::client()
        .await
        .map_err(ExplainError::Client)?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let report = explain(&client, &namespace, &args).await?;
    match args.output {
        Output::Text => print!("{}", render::text(&report)),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report always serialises")
        ),
    }
    Ok(())
}

async fn explain(
    client: &kube::Client,
    namespace: &str,
    args: &ExplainArgs,
) -> Result<Report, ExplainError> {
    // Each workload kind is read as its own type, then reduced by the reload stage.
    let observation = match &args.target {
        Target::KeyVaultSecret(name) => {
            return explain_keyvaultsecret(client, namespace, name).await;
        }
        Target::Deployment(name) => {
            observe_workload(&get::<Deployment>(client, namespace, name).await?)
        }
        Target::StatefulSet(name) => {
            observe_workload(&get::<StatefulSet>(client, namespace, name).await?)
        }
        Target::DaemonSet(name) => {
            observe_workload(&get::<DaemonSet>(client, namespace, name).await?)
        }
    }
    .expect("a workload read from the server has a name and namespace");
    explain_workload(client, observation, args.min_reload_interval).await
}

async fn explain_keyvaultsecret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Report, ExplainError> {
    let mut limits = Vec::new();
    let kvs: KeyVaultSecret = get(client, namespace, name).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let target = kvs.target_name();
    // Key names only: the data is dropped here, never reaching the report.
    let secret = match secrets.get_opt(&target).await {
        Ok(secret) => secret.map(|secret| keyvaultsecret::TargetSecret {
            keys: secret.data.unwrap_or_default().into_keys().collect(),
            metadata: secret.metadata,
        }),
        Err(error) => {
            limits.push(format!("Secret {target}: {error}"));
            None
        }
    };
    let workloads = workloads(client, namespace, &mut limits).await;
    Ok(Report::KeyVaultSecret(keyvaultsecret::explain(
        &kvs,
        secret.as_ref(),
        &workloads,
        limits,
    )))
}

async fn explain_workload(
    client: &kube::Client,
    observation: WorkloadObservation,
    min_reload_interval: Duration,
) -> Result<Report, ExplainError> {
    let mut limits = Vec::new();
    let workload = &observation.workload;
    let namespace = workload.namespace.as_str();
    let mut resources = BTreeMap::new();
    resource_infos::<Secret>(
        client,
        namespace,
        ResourceRef::secret,
        &mut resources,
        &mut limits,
    )
    .await;
    resource_infos::<ConfigMap>(
        client,
        namespace,
        ResourceRef::config_map,
        &mut resources,
        &mut limits,
    )
    .await;
    let note = last_reloaded_note(
        client,
        namespace,
        workload.kind.as_str(),
        &workload.name,
        &mut limits,
    )
    .await;
    let context = workload::Context {
        resources: &resources,
        last_reloaded_note: note.as_deref(),
        min_reload_interval,
        now: OffsetDateTime::now_utc(),
        limits,
    };
    Ok(Report::Workload(workload::explain(&observation, &context)))
}

async fn get<K>(client: &kube::Client, namespace: &str, name: &str) -> Result<K, ExplainError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let kind = K::kind(&()).into_owned();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name)
        .await
        .map_err(|source| ExplainError::Read {
            kind: kind.clone(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })?
        .ok_or_else(|| ExplainError::NotFound {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
}

/// Every Deployment, StatefulSet and DaemonSet of the namespace, observed.
async fn workloads(
    client: &kube::Client,
    namespace: &str,
    limits: &mut Vec<String>,
) -> Vec<WorkloadObservation> {
    let mut observed = Vec::new();
    let deployments = list::<Deployment>(client, namespace, limits).await;
    observed.extend(deployments.iter().filter_map(observe_workload));
    let stateful_sets = list::<StatefulSet>(client, namespace, limits).await;
    observed.extend(stateful_sets.iter().filter_map(observe_workload));
    let daemon_sets = list::<DaemonSet>(client, namespace, limits).await;
    observed.extend(daemon_sets.iter().filter_map(observe_workload));
    observed
}

/// The namespace's objects of kind `K` (none, and a limit noted, when refused).
async fn list<K>(client: &kube::Client, namespace: &str, limits: &mut Vec<String>) -> Vec<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(error) => {
            limits.push(format!("{}s: {error}", K::kind(&())));
            Vec::new()
        }
    }
}

/// Names and reload annotations of the namespace's Secrets or ConfigMaps.
async fn resource_infos<K>(
    client: &kube::Client,
    namespace: &str,
    reference: fn(String) -> ResourceRef,
    resources: &mut BTreeMap<ResourceRef, ResourceInfo>,
    limits: &mut Vec<String>,
) where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.list_metadata(&ListParams::default()).await {
        Ok(list) => resources.extend(list.items.into_iter().map(|meta| {
            let info = ResourceInfo {
                flags: ResourceFlags::from_annotations(meta.annotations()),
                written_by: meta.annotations().get(OWNER_ANNOTATION).cloned(),
            };
            (reference(meta.name_any()), info)
        })),
        Err(error) => limits.push(format!("{}s: {error}", K::kind(&()))),
    }
}

/// The note of the newest `Reloaded` event on the workload.
async fn last_reloaded_note(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
    limits: &mut Vec<String>,
) -> Option<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let selector = format!("involvedObject.kind={kind},involvedObject.name={name},reason=Reloaded");
    match api.list(&ListParams::default().fields(&selector)).await {
        Ok(list) => list
            .items
            .into_iter()
            .max_by_key(|event| {
                event
                    .event_time
                    .as_ref()
                    .map(|t| t.0)
                    .or_else(|| event.metadata.creation_timestamp.as_ref().map(|t| t.0))
            })
            .and_then(|event| event.message),
        Err(error) => {
            limits.push(format!("Events: {error}"));
            None
        }
    }
}
