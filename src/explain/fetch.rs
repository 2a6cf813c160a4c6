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
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use kube::api::{Api, DynamicObject, ListParams};
use kube::{Resource, ResourceExt};
use time::OffsetDateTime;

use super::pending::Digests;
use super::report::{IntervalSource, Report};
use super::template::{TemplateProblem, TemplateText};
use super::workload::ResourceInfo;
use super::{Target, keyvaultsecret, operator, render, workload};
use crate::api::contract::{
    CRONJOB_INSTANTIATE, MERGED_BY_ANNOTATION, OPERATOR_SELECTOR, OWNER_ANNOTATION,
    RELOAD_FIELD_MANAGER,
};
use crate::api::{KeyVaultSecret, TemplateSourceKind};
use crate::reload::annotations::ResourceFlags;
use crate::reload::digest::DigestKey;
use crate::reload::dynamic;
use crate::reload::index::{ResourceState, WorkloadObservation};
use crate::reload::key_secret::key_of;
use crate::reload::kinds::{ResourceRef, WorkloadKind};
use crate::reload::observe::{ResourceObject, observe_resource, observe_workload};
use crate::reload::{KEY_SECRET_NAME, ReloadError};

/// The operator's `--min-reload-interval` default, assumed when not given.
const DEFAULT_MIN_RELOAD_INTERVAL: Duration = Duration::from_secs(30);

/// `kvsync explain`.
#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// What to explain: kvs/NAME, deployment/NAME, statefulset/NAME,
    /// daemonset/NAME, rollout/NAME or cronjob/NAME.
    pub target: Target,
    /// The namespace; default: the kubeconfig context's.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: Output,
    /// The operator's --min-reload-interval, for when the next restart may
    /// happen (default: read from the operator's Deployment in
    /// --operator-namespace, else its default, 30s, said to be assumed).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub min_reload_interval: Option<Duration>,
    /// The operator's namespace: its digest key Secret (kvsync-digest-key)
    /// there, when readable, tells whether data changed since a workload's
    /// last restart.
    #[arg(long, default_value = "kvsync-system")]
    pub operator_namespace: String,
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
    #[error("{kind} {namespace}/{name} is not a {kind} kvsync can read")]
    Unreadable {
        kind: String,
        namespace: String,
        name: String,
    },
    #[error("the cluster does not serve {0}s (for Rollouts: is Argo Rollouts' CRD installed?)")]
    NotServed(&'static str),
    #[error("cannot discover the API of {kind}s: {source}")]
    Discovery {
        kind: &'static str,
        #[source]
        source: kube::Error,
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
    // Each workload kind is read as its own type (CronJobs and Rollouts as
    // the API discovery finds serves them), then reduced by the reload stage.
    let (kind, name) = match &args.target {
        Target::KeyVaultSecret(name) => {
            return explain_keyvaultsecret(client, namespace, name).await;
        }
        Target::Deployment(name) => (WorkloadKind::Deployment, name),
        Target::StatefulSet(name) => (WorkloadKind::StatefulSet, name),
        Target::DaemonSet(name) => (WorkloadKind::DaemonSet, name),
        Target::Rollout(name) => (WorkloadKind::Rollout, name),
        Target::CronJob(name) => (WorkloadKind::CronJob, name),
    };
    let observation = match kind {
        WorkloadKind::Deployment => {
            observe_workload(&get::<Deployment>(client, namespace, name).await?)
        }
        WorkloadKind::StatefulSet => {
            observe_workload(&get::<StatefulSet>(client, namespace, name).await?)
        }
        WorkloadKind::DaemonSet => {
            observe_workload(&get::<DaemonSet>(client, namespace, name).await?)
        }
        WorkloadKind::Rollout | WorkloadKind::CronJob => {
            let object = get_dynamic(client, namespace, kind, name).await?;
            dynamic::observe_dynamic(kind, &object)
        }
    }
    .ok_or_else(|| ExplainError::Unreadable {
        kind: kind.as_str().to_owned(),
        namespace: namespace.to_owned(),
        name: name.clone(),
    })?;
    explain_workload(client, observation, args).await
}

/// A CronJob or Rollout, through the API discovery says serves it.
async fn get_dynamic(
    client: &kube::Client,
    namespace: &str,
    kind: WorkloadKind,
    name: &str,
) -> Result<DynamicObject, ExplainError> {
    let resource = dynamic::discover(client, kind)
        .await
        .map_err(|source| ExplainError::Discovery {
            kind: kind.as_str(),
            source,
        })?
        .ok_or(ExplainError::NotServed(kind.as_str()))?;
    let read = |source| ExplainError::Read {
        kind: kind.as_str().to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    };
    dynamic::api(client.clone(), &resource, namespace)
        .get_opt(name)
        .await
        .map_err(read)?
        .ok_or_else(|| ExplainError::NotFound {
            kind: kind.as_str().to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
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
    let templates = templates(client, namespace, &kvs, &mut limits).await;
    let workloads = workloads(client, namespace, &mut limits).await;
    Ok(Report::KeyVaultSecret(keyvaultsecret::explain(
        &kvs,
        secret.as_ref(),
        &templates,
        &workloads,
        limits,
    )))
}

/// The templates of `kvs` in the order the sync stage applies them:
/// `templateFrom` items, then `template.data`. The texts are only parsed.
async fn templates(
    client: &kube::Client,
    namespace: &str,
    kvs: &KeyVaultSecret,
    limits: &mut Vec<String>,
) -> Vec<TemplateText> {
    let Some(template) = &kvs.spec.target.template else {
        return Vec::new();
    };
    let mut texts = Vec::new();
    for (kind, source) in template.sources() {
        let (origin, content) = match kind {
            TemplateSourceKind::ConfigMap => (
                format!("templateFrom ConfigMap/{}", source.name),
                Api::<ConfigMap>::namespaced(client.clone(), namespace)
                    .get_opt(&source.name)
                    .await
                    .map(|found| found.map(|map| map.data.unwrap_or_default())),
            ),
            TemplateSourceKind::Secret => (
                format!("templateFrom Secret/{}", source.name),
                Api::<Secret>::namespaced(client.clone(), namespace)
                    .get_opt(&source.name)
                    .await
                    .map(|found| {
                        found.map(|secret| {
                            let data = secret.data.unwrap_or_default().into_iter();
                            data.map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                                .collect()
                        })
                    }),
            ),
        };
        let content = match content {
            Ok(Some(content)) => Ok(content),
            Ok(None) => Err(TemplateProblem::SourceMissing {
                origin: origin.clone(),
            }),
            Err(error) => {
                limits.push(format!("{origin}: {error}"));
                Err(TemplateProblem::SourceUnreadable {
                    origin: origin.clone(),
                })
            }
        };
        texts.extend(source.items.iter().map(|item| TemplateText {
            key: item.key.clone(),
            origin: origin.clone(),
            text: match &content {
                Ok(content) => content.get(&item.key).cloned().ok_or_else(|| {
                    TemplateProblem::NoKey {
                        origin: origin.clone(),
                        key: item.key.clone(),
                    }
                }),
                Err(why) => Err(why.clone()),
            },
        }));
    }
    texts.extend(template.data.iter().map(|(key, text)| TemplateText {
        key: key.clone(),
        origin: "target.template.data".to_owned(),
        text: Ok(text.clone()),
    }));
    texts
}

async fn explain_workload(
    client: &kube::Client,
    observation: WorkloadObservation,
    args: &ExplainArgs,
) -> Result<Report, ExplainError> {
    let mut limits = Vec::new();
    let workload = &observation.workload;
    let namespace = workload.namespace.as_str();
    let key = digest_key(client, &args.operator_namespace, &mut limits).await;
    let mut resources = BTreeMap::new();
    let mut states = BTreeMap::new();
    let key_ref = key.as_ref().ok();
    let secrets = read_resources::<Secret>(
        client,
        namespace,
        key_ref,
        &mut resources,
        &mut states,
        &mut limits,
    )
    .await;
    let config_maps = read_resources::<ConfigMap>(
        client,
        namespace,
        key_ref,
        &mut resources,
        &mut states,
        &mut limits,
    )
    .await;
    let key_id = key.as_ref().map(DigestKey::id).map_err(ToString::to_string);
    let digests = match &key_id {
        Err(why) => Err(why.as_str()),
        Ok(_) if !(secrets && config_maps) => {
            Err("the namespace's Secrets and ConfigMaps could not all be read")
        }
        Ok(key_id) => Ok(Digests {
            key_id,
            resources: &states,
        }),
    };
    let job = match workload.kind {
        WorkloadKind::CronJob => {
            last_job(client, namespace, &observation.state.uid, &mut limits).await
        }
        _ => None,
    };
    let (min_reload_interval, min_interval_from) = match args.min_reload_interval {
        Some(given) => (given, IntervalSource::Flag),
        None => operator_min_interval(client, &args.operator_namespace).await,
    };
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
        min_interval_from,
        digests,
        last_job: job.as_deref(),
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

/// Every workload of the namespace (of the kinds served), observed.
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
    for kind in dynamic::KINDS {
        let resource = match dynamic::discover(client, kind).await {
            Ok(Some(resource)) => resource,
            // Not served (no Argo Rollouts): none of that kind.
            Ok(None) => continue,
            Err(error) => {
                limits.push(format!("{}s (discovery): {error}", kind.as_str()));
                continue;
            }
        };
        match dynamic::api(client.clone(), &resource, namespace)
            .list(&ListParams::default())
            .await
        {
            Ok(list) => observed.extend(
                list.items
                    .iter()
                    .filter_map(|object| dynamic::observe_dynamic(kind, object)),
            ),
            Err(error) => limits.push(format!("{}s: {error}", kind.as_str())),
        }
    }
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

/// Names and reload annotations of the namespace's Secrets or ConfigMaps
/// and, with the operator's `key`, their digests (the data is dropped once
/// digested; without a key only metadata is read). False when refused.
async fn read_resources<K: ResourceObject>(
    client: &kube::Client,
    namespace: &str,
    key: Option<&DigestKey>,
    resources: &mut BTreeMap<ResourceRef, ResourceInfo>,
    states: &mut BTreeMap<ResourceRef, ResourceState>,
    limits: &mut Vec<String>,
) -> bool {
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let info = |meta: &kube::core::ObjectMeta| ResourceInfo {
        flags: meta
            .annotations
            .as_ref()
            .map(ResourceFlags::from_annotations)
            .unwrap_or_default(),
        written_by: meta
            .annotations
            .as_ref()
            .and_then(|a| {
                a.get(OWNER_ANNOTATION)
                    .or_else(|| a.get(MERGED_BY_ANNOTATION))
            })
            .cloned(),
    };
    let listed = match key {
        Some(key) => api.list(&ListParams::default()).await.map(|list| {
            for object in list.items {
                resources.insert(K::reference(object.name_any()), info(object.meta()));
                if let Some(observed) = observe_resource(key, &object) {
                    states.insert(observed.resource, observed.state);
                }
            }
        }),
        None => api.list_metadata(&ListParams::default()).await.map(|list| {
            resources.extend(
                list.items
                    .into_iter()
                    .map(|meta| (K::reference(meta.name_any()), info(&meta.metadata))),
            );
        }),
    };
    match listed {
        Ok(()) => true,
        Err(error) => {
            limits.push(format!("{}s: {error}", K::kind(&())));
            false
        }
    }
}

/// The operator's `--min-reload-interval` as its Deployment sets it, or its
/// default (said to be assumed) when that cannot be read.
async fn operator_min_interval(
    client: &kube::Client,
    namespace: &str,
) -> (Duration, IntervalSource) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let listed = api
        .list(&ListParams::default().labels(OPERATOR_SELECTOR))
        .await;
    let found = listed.ok().and_then(|list| {
        list.items.iter().find_map(|deployment| {
            let interval = operator::min_reload_interval(deployment)?;
            let object = format!("Deployment {namespace}/{}", deployment.name_any());
            Some((interval, IntervalSource::Operator(object)))
        })
    });
    found.unwrap_or((DEFAULT_MIN_RELOAD_INTERVAL, IntervalSource::Assumed))
}

/// Why the operator's digest key cannot be had.
#[derive(Debug, thiserror::Error)]
enum KeyUnavailable {
    #[error(
        "Secret {namespace}/{KEY_SECRET_NAME} does not exist: pass the operator's namespace as --operator-namespace"
    )]
    Missing { namespace: String },
    /// Refused or failed; the error itself is among the report's limits.
    #[error("Secret {namespace}/{KEY_SECRET_NAME} cannot be read")]
    Unreadable { namespace: String },
    #[error(transparent)]
    Unusable(#[from] ReloadError),
}

/// The operator's digest key, or why it cannot be had (a refusal is also a limit).
async fn digest_key(
    client: &kube::Client,
    namespace: &str,
    limits: &mut Vec<String>,
) -> Result<DigestKey, KeyUnavailable> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let namespace = namespace.to_owned();
    match api.get_opt(KEY_SECRET_NAME).await {
        Ok(Some(secret)) => Ok(key_of(&secret, &namespace)?),
        Ok(None) => Err(KeyUnavailable::Missing { namespace }),
        Err(error) => {
            limits.push(format!(
                "Secret {namespace}/{KEY_SECRET_NAME} (the reload digest key): {error}"
            ));
            Err(KeyUnavailable::Unreadable { namespace })
        }
    }
}

/// The newest Job kvsync's reload stage created for the CronJob `uid`.
async fn last_job(
    client: &kube::Client,
    namespace: &str,
    uid: &str,
    limits: &mut Vec<String>,
) -> Option<String> {
    let jobs = list::<Job>(client, namespace, limits).await;
    jobs.into_iter()
        .filter(|job| {
            let owned = job.owner_references().iter().any(|o| o.uid == uid);
            let manual = job
                .annotations()
                .get(CRONJOB_INSTANTIATE)
                .is_some_and(|v| v == "manual");
            let by_kvsync = job
                .managed_fields()
                .iter()
                .any(|f| f.manager.as_deref() == Some(RELOAD_FIELD_MANAGER));
            owned && manual && by_kvsync
        })
        .max_by_key(|job| job.creation_timestamp().map(|t| t.0))
        .map(|job| job.name_any())
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
