//! Workload kinds that are not always served, or not in one version:
//! CronJobs (`batch/v1` from Kubernetes 1.21, `batch/v1beta1` before — the
//! version discovery lists is used) and Argo Rollouts (`argoproj.io/v1alpha1`,
//! served only where the Rollout CRD is installed). They are watched and
//! patched as dynamic objects and read through typed views: the `batch/v1`
//! [`CronJob`] (whose fields kvsync reads are the same in `v1beta1`) and
//! [`Rollout`], the few fields of a Rollout kvsync reads.

use std::time::Duration;

use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde::Deserialize;
use time::OffsetDateTime;

use super::index::WorkloadObservation;
use super::kinds::{RestartMethod, WorkloadKind, WorkloadRef};
use super::observe::{WorkloadView, observe_workload};
use super::record::parse_time;
use super::rollout::{self, Progress};
use crate::api::contract::RESTARTED_AT_ANNOTATION;
use crate::api::contract::reloader::ROLLOUT_STRATEGY;

/// The kinds found by discovery.
pub const KINDS: [WorkloadKind; 2] = [WorkloadKind::CronJob, WorkloadKind::Rollout];

/// How often an API not served at start-up is looked for again (a Rollout
/// CRD installed while the operator runs).
pub const REDISCOVERY: Duration = Duration::from_secs(10);

/// The APIs that may serve `kind`, preferred first.
fn candidates(kind: WorkloadKind) -> Vec<ApiResource> {
    let api = |group, version, kind, plural| {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
    };
    match kind {
        WorkloadKind::CronJob => vec![
            api("batch", "v1", "CronJob", "cronjobs"),
            api("batch", "v1beta1", "CronJob", "cronjobs"),
        ],
        WorkloadKind::Rollout => vec![api("argoproj.io", "v1alpha1", "Rollout", "rollouts")],
        _ => Vec::new(),
    }
}

/// The API serving `kind` according to discovery, if any.
pub async fn discover(
    client: &Client,
    kind: WorkloadKind,
) -> Result<Option<ApiResource>, kube::Error> {
    for candidate in candidates(kind) {
        match client
            .list_api_group_resources(&candidate.api_version)
            .await
        {
            Ok(list) if list.resources.iter().any(|r| r.name == candidate.plural) => {
                return Ok(Some(candidate));
            }
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(error) => return Err(error),
        }
    }
    Ok(None)
}

/// The API kvsync patches `kind` through: the discovered one, else the
/// preferred candidate (the only one for Rollouts, which may appear later).
pub fn api_resource(kind: WorkloadKind, discovered: Option<&ApiResource>) -> Option<ApiResource> {
    discovered
        .cloned()
        .or_else(|| candidates(kind).into_iter().next())
}

/// The few fields of an Argo Rollout kvsync reads.
#[derive(Debug, Deserialize)]
pub struct Rollout {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: RolloutSpec,
    #[serde(default)]
    status: RolloutStatus,
}

#[derive(Debug, Default, Deserialize)]
struct RolloutStatus {
    phase: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RolloutSpec {
    template: Option<PodTemplateSpec>,
    restart_at: Option<String>,
    /// Pods from a Deployment's template (`spec.workloadRef`) instead.
    workload_ref: Option<serde::de::IgnoredAny>,
}

impl WorkloadView for Rollout {
    const KIND: WorkloadKind = WorkloadKind::Rollout;
    fn object_meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn pod_template(&self) -> Option<&PodTemplateSpec> {
        self.spec.template.as_ref()
    }
    fn restart_method(&self) -> RestartMethod {
        let strategy = self
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ROLLOUT_STRATEGY));
        // A Rollout with a `workloadRef` has no template of its own: a
        // template patch makes Argo report it Degraded.
        if strategy.is_some_and(|s| s == "restart") || self.spec.workload_ref.is_some() {
            RestartMethod::RestartAt
        } else {
            RestartMethod::PodTemplate
        }
    }
    fn last_restart(&self) -> Option<OffsetDateTime> {
        let from_template = self
            .pod_template()?
            .metadata
            .as_ref()?
            .annotations
            .as_ref()
            .and_then(|a| parse_time(a.get(RESTARTED_AT_ANNOTATION).map(String::as_str)));
        let from_restart_at = parse_time(self.spec.restart_at.as_deref());
        from_template.max(from_restart_at)
    }
    fn progress(&self) -> Progress {
        rollout::argo_phase(self.status.phase.as_deref())
    }
}

impl WorkloadView for CronJob {
    const KIND: WorkloadKind = WorkloadKind::CronJob;
    fn object_meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn pod_template(&self) -> Option<&PodTemplateSpec> {
        Some(&self.spec.as_ref()?.job_template.spec.as_ref()?.template)
    }
    fn restart_method(&self) -> RestartMethod {
        let suspended = self.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
        RestartMethod::Job { suspended }
    }
    /// Kept in the CronJob's metadata: its job template is not to be touched.
    fn last_restart(&self) -> Option<OffsetDateTime> {
        let annotations = self.metadata.annotations.as_ref()?;
        parse_time(annotations.get(RESTARTED_AT_ANNOTATION).map(String::as_str))
    }
}

/// Reads a CronJob of either version as the `batch/v1` type.
pub fn cron_job(object: &DynamicObject) -> Option<CronJob> {
    let mut value = serde_json::to_value(object).ok()?;
    value["apiVersion"] = "batch/v1".into();
    serde_json::from_value(value).ok()
}

fn rollout(object: &DynamicObject) -> Option<Rollout> {
    serde_json::from_value(serde_json::to_value(object).ok()?).ok()
}

/// Reduces a dynamic workload of `kind` to its index entry.
pub fn observe_dynamic(kind: WorkloadKind, object: &DynamicObject) -> Option<WorkloadObservation> {
    match kind {
        WorkloadKind::CronJob => observe_workload(&cron_job(object)?),
        WorkloadKind::Rollout => observe_workload(&rollout(object)?),
        _ => None,
    }
}

pub fn api(client: Client, resource: &ApiResource, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client, namespace, resource)
}

/// Merge-patches a dynamic workload; returns its new state.
pub async fn patch(
    client: Client,
    resource: &ApiResource,
    workload: &WorkloadRef,
    params: &PatchParams,
    body: serde_json::Value,
) -> Result<Option<WorkloadObservation>, kube::Error> {
    let updated = api(client, resource, &workload.namespace)
        .patch(&workload.name, params, &Patch::Merge(body))
        .await?;
    Ok(observe_dynamic(workload.kind, &updated))
}
