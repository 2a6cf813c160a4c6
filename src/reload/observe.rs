//! Reduces Kubernetes objects to index entries, the moment they arrive.

use std::fmt::Debug;
use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use super::annotations::{Annotations, PolicyProblem, ReloadPolicy, ResourceFlags};
use super::digest::{self, Digest, DigestKey};
use super::index::{ResourceObservation, ResourceState, WorkloadObservation, WorkloadState};
use super::kinds::{ResourceRef, RestartMethod, WorkloadKind, WorkloadRef};
use super::record::{Applied, parse_time};
use super::rollout::{self, Progress};
use super::uses::{KeyUses, key_uses, uses};
use crate::api::contract::{
    DIGEST_ANNOTATION, JOB_PENDING_ANNOTATION, MERGED_BY_ANNOTATION, OWNER_ANNOTATION,
    PAUSED_AT_ANNOTATION, PENDING_ANNOTATION, RELOAD_KEYS_ANNOTATION, RESTARTED_AT_ANNOTATION,
    RESUME_ROLLOUT_ANNOTATION, ROLLOUT_WAVE_ANNOTATION, reloader,
};

/// What the reload stage reads of a workload, whatever API serves it.
pub trait WorkloadView {
    const KIND: WorkloadKind;
    fn object_meta(&self) -> &ObjectMeta;
    fn pod_template(&self) -> Option<&PodTemplateSpec>;
    /// `spec.paused` (only Deployments have it).
    fn paused(&self) -> bool {
        false
    }
    fn restart_method(&self) -> RestartMethod {
        RestartMethod::PodTemplate
    }
    /// How far its rollout has come, as its status says.
    fn progress(&self) -> Progress {
        Progress::NotTracked
    }
    /// When kvsync (or Reloader's `restartAt`) last restarted it.
    fn last_restart(&self) -> Option<OffsetDateTime> {
        let annotations = self
            .pod_template()?
            .metadata
            .as_ref()?
            .annotations
            .as_ref()?;
        parse_time(annotations.get(RESTARTED_AT_ANNOTATION).map(String::as_str))
    }
}

/// An `apps/v1` workload, watched and patched through its typed API.
pub trait WorkloadObject:
    WorkloadView
    + kube::Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl WorkloadView for Deployment {
    const KIND: WorkloadKind = WorkloadKind::Deployment;
    fn object_meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn pod_template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    fn paused(&self) -> bool {
        self.spec.as_ref().and_then(|s| s.paused).unwrap_or(false)
    }
    fn progress(&self) -> Progress {
        rollout::deployment(self)
    }
}

impl WorkloadView for StatefulSet {
    const KIND: WorkloadKind = WorkloadKind::StatefulSet;
    fn object_meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn pod_template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    fn restart_method(&self) -> RestartMethod {
        let strategy = self.spec.as_ref().and_then(|s| s.update_strategy.as_ref());
        update_strategy(strategy.and_then(|s| s.type_.as_deref()))
    }
    fn progress(&self) -> Progress {
        rollout::stateful_set(self)
    }
}

impl WorkloadView for DaemonSet {
    const KIND: WorkloadKind = WorkloadKind::DaemonSet;
    fn object_meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn pod_template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    fn restart_method(&self) -> RestartMethod {
        let strategy = self.spec.as_ref().and_then(|s| s.update_strategy.as_ref());
        update_strategy(strategy.and_then(|s| s.type_.as_deref()))
    }
    fn progress(&self) -> Progress {
        rollout::daemon_set(self)
    }
}

/// The restart method of a StatefulSet or DaemonSet with this
/// `spec.updateStrategy.type` (`RollingUpdate` when unset).
fn update_strategy(type_: Option<&str>) -> RestartMethod {
    if type_ == Some("OnDelete") {
        RestartMethod::OnDelete
    } else {
        RestartMethod::PodTemplate
    }
}

impl WorkloadObject for Deployment {}
impl WorkloadObject for StatefulSet {}
impl WorkloadObject for DaemonSet {}

/// A Secret or ConfigMap, digested with the operator's key.
pub trait ResourceObject:
    kube::Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    fn reference(name: String) -> ResourceRef;
    fn digest(&self, key: &DigestKey) -> Digest;
    /// Each key's digest, sorted by key (for key-level restarts).
    fn entries(&self, key: &DigestKey) -> Box<[(String, Digest)]>;
}

impl ResourceObject for Secret {
    fn reference(name: String) -> ResourceRef {
        ResourceRef::secret(name)
    }
    fn digest(&self, key: &DigestKey) -> Digest {
        key.secret(digested(self), self.data.as_ref())
    }
    fn entries(&self, key: &DigestKey) -> Box<[(String, Digest)]> {
        let object = digested(self);
        self.data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), key.entry(object, k, &v.0)))
            .collect()
    }
}

impl ResourceObject for ConfigMap {
    fn reference(name: String) -> ResourceRef {
        ResourceRef::config_map(name)
    }
    fn digest(&self, key: &DigestKey) -> Digest {
        key.config_map(
            digested(self),
            self.data.as_ref(),
            self.binary_data.as_ref(),
        )
    }
    fn entries(&self, key: &DigestKey) -> Box<[(String, Digest)]> {
        let object = digested(self);
        let text = self.data.iter().flatten().map(|(k, v)| (k, v.as_bytes()));
        let binary = self
            .binary_data
            .iter()
            .flatten()
            .map(|(k, v)| (k, v.0.as_slice()));
        let mut entries: Vec<(String, Digest)> = text
            .chain(binary)
            .map(|(k, v)| (k.clone(), key.entry(object, k, v)))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.into()
    }
}

/// The object a digest is bound to (see [`super::digest`]).
fn digested<R: kube::Resource>(object: &R) -> digest::Object<'_> {
    let meta = object.meta();
    digest::Object {
        namespace: meta.namespace.as_deref().unwrap_or_default(),
        name: meta.name.as_deref().unwrap_or_default(),
    }
}

fn numeric_version(meta: &ObjectMeta) -> Option<u64> {
    meta.resource_version.as_deref()?.parse().ok()
}

/// `None` for an object without name or namespace (never sent by a server).
pub fn observe_resource<R: ResourceObject>(
    key: &DigestKey,
    object: &R,
) -> Option<ResourceObservation> {
    let meta = object.meta();
    Some(ResourceObservation {
        namespace: meta.namespace.clone()?,
        resource: R::reference(meta.name.clone()?),
        state: ResourceState {
            digest: object.digest(key),
            entries: object.entries(key),
            flags: meta
                .annotations
                .as_ref()
                .map(ResourceFlags::from_annotations)
                .unwrap_or_default(),
            version: numeric_version(meta),
            data_version: None,
            resume: annotation(meta, RESUME_ROLLOUT_ANNOTATION),
            writer: annotation(meta, OWNER_ANNOTATION)
                .or_else(|| annotation(meta, MERGED_BY_ANNOTATION)),
        },
    })
}

fn annotation(meta: &ObjectMeta, name: &str) -> Option<String> {
    meta.annotations.as_ref()?.get(name).cloned()
}

/// `None` for an object without name or namespace (never sent by a server).
pub fn observe_workload<W: WorkloadView>(object: &W) -> Option<WorkloadObservation> {
    static NONE: Annotations = Annotations::new();
    let meta = object.object_meta();
    let template = object.pod_template();
    let annotations = meta.annotations.as_ref().unwrap_or(&NONE);
    let template_annotations = template
        .and_then(|t| t.metadata.as_ref()?.annotations.as_ref())
        .unwrap_or(&NONE);
    let (policy, mut problems) = ReloadPolicy::parse(W::KIND, annotations, template_annotations);
    let wave = wave(annotations, &mut problems);
    let restart = object.restart_method();
    Some(WorkloadObservation {
        workload: WorkloadRef {
            kind: W::KIND,
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
        },
        state: WorkloadState {
            uid: meta.uid.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
            policy,
            problems,
            uses: template
                .and_then(|t| t.spec.as_ref())
                .map(uses)
                .unwrap_or_default(),
            keys: if annotations.get(RELOAD_KEYS_ANNOTATION).map(String::as_str) == Some("any") {
                KeyUses::new()
            } else {
                template
                    .and_then(|t| t.spec.as_ref())
                    .map(key_uses)
                    .unwrap_or_default()
            },
            applied: Applied::from_annotation(
                annotations.get(DIGEST_ANNOTATION).map(String::as_str),
            ),
            last_restart: object.last_restart(),
            restart_stamp: object.last_restart(),
            restart,
            paused_at: parse_time(annotations.get(PAUSED_AT_ANNOTATION).map(String::as_str)),
            pending_mark: annotations.get(PENDING_ANNOTATION).cloned(),
            job_pending: annotations.get(JOB_PENDING_ANNOTATION).cloned(),
            reloader_paused_since: reloader_paused_since(object.paused(), annotations),
            template: template.map_or(0, template_hash),
            template_version: None,
            earlier_templates: Default::default(),
            deleting: meta.deletion_timestamp.is_some(),
            wave,
            progress: object.progress(),
            progressing_since: None,
        },
    })
}

/// The highest wave number accepted (a bound, so a number stays a number).
const MAX_WAVE: u32 = 1_000_000;

/// [`ROLLOUT_WAVE_ANNOTATION`]; a value that is not a wave number is
/// reported and the workload goes with the unannotated ones.
fn wave(annotations: &Annotations, problems: &mut Vec<PolicyProblem>) -> Option<u32> {
    let value = annotations.get(ROLLOUT_WAVE_ANNOTATION)?;
    match value.trim().parse::<u32>() {
        Ok(wave) if wave <= MAX_WAVE => Some(wave),
        _ => {
            problems.push(PolicyProblem {
                annotation: ROLLOUT_WAVE_ANNOTATION,
                value: value.chars().take(64).collect(),
                reason: format!("is not a wave number (0 to {MAX_WAVE})"),
            });
            None
        }
    }
}

/// When Reloader paused this workload, if it did and it is still paused
/// (Reloader leaves `spec.paused` alone on a Deployment it did not pause).
fn reloader_paused_since(paused: bool, annotations: &Annotations) -> Option<OffsetDateTime> {
    let value = annotations
        .get(reloader::PAUSED_AT)
        .filter(|v| !v.is_empty());
    (paused && value.is_some())
        .then(|| parse_time(value.map(String::as_str)).unwrap_or(OffsetDateTime::UNIX_EPOCH))
}

/// A hash of the pod template without kvsync's restart annotation, to tell a
/// change made by someone else. Compared within one process only.
fn template_hash(template: &PodTemplateSpec) -> u64 {
    let mut template = template.clone();
    if let Some(annotations) = template
        .metadata
        .as_mut()
        .and_then(|m| m.annotations.as_mut())
    {
        annotations.remove(RESTARTED_AT_ANNOTATION);
    }
    let mut hasher = DefaultHasher::new();
    serde_json::to_string(&template)
        .expect("a pod template always serialises")
        .hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_reduce_to_digest_and_flags() {
        let key = DigestKey::generate();
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "ns", "resourceVersion": "42",
                         "annotations": {"reloader.stakater.com/match": "true"}},
            "data": {"password": "aHVudGVyMg=="}
        }))
        .unwrap();
        let observed = observe_resource(&key, &secret).unwrap();
        assert_eq!(observed.namespace, "ns");
        assert_eq!(observed.resource, ResourceRef::secret("db"));
        assert_eq!(observed.state.version, Some(42));
        assert!(observed.state.flags.matched);
        let object = digest::Object {
            namespace: "ns",
            name: "db",
        };
        assert_eq!(
            observed.state.digest,
            key.secret(object, secret.data.as_ref())
        );
    }

    #[test]
    fn config_maps_digest_both_data_sections() {
        let key = DigestKey::generate();
        let cm = |binary: &str| -> ConfigMap {
            serde_json::from_value(json!({
                "metadata": {"name": "app", "namespace": "ns"},
                "data": {"a": "1"}, "binaryData": {"b": binary}
            }))
            .unwrap()
        };
        let one = observe_resource(&key, &cm("AA==")).unwrap();
        let two = observe_resource(&key, &cm("AQ==")).unwrap();
        assert_eq!(one.resource, ResourceRef::config_map("app"));
        assert_ne!(one.state.digest, two.state.digest);
        assert_eq!(one.state.version, None);
    }

    #[test]
    fn workloads_reduce_to_policy_uses_and_record() {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1", "resourceVersion": "7",
                         "annotations": {"reloader.stakater.com/auto": "true", DIGEST_ANNOTATION: "garbage"}},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"annotations": {RESTARTED_AT_ANNOTATION: "2024-01-02T03:04:05Z"}},
                    "spec": {"containers": [{"name": "c", "envFrom": [{"secretRef": {"name": "db"}}]}]}
                }
            }
        }))
        .unwrap();
        let observed = observe_workload(&deployment).unwrap();
        assert_eq!(observed.workload.to_string(), "Deployment ns/web");
        assert_eq!(observed.state.uid, "u1");
        assert_eq!(observed.state.resource_version, "7");
        assert!(observed.state.policy.secrets.auto);
        assert_eq!(
            observed.state.uses,
            [(
                ResourceRef::secret("db"),
                crate::reload::uses::Need::Required
            )]
            .into_iter()
            .collect()
        );
        assert_eq!(observed.state.applied, Applied::Unreadable);
        assert_eq!(
            observed.state.last_restart.map(|t| t.unix_timestamp()),
            Some(1_704_164_645)
        );
        assert!(!observed.state.deleting);
    }
}
