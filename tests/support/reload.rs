//! The fixture's reload side (used by `tests/reload/` and
//! `tests/reload_discovery.rs`, with [`Fixture::idle`] and
//! [`Fixture::start_operator`]): making Secrets, ConfigMaps and workloads
//! (through the one [`Workload`] builder) and watching them roll.
//!
//! No kubelet runs, so pods never start; a restart is what a user would see in
//! the API: a new ReplicaSet for a Deployment, a new ControllerRevision for a
//! StatefulSet or DaemonSet.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::{ByteString, NamespaceResourceScope};
use kube::api::{Api, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use kvsync::api::contract::{DIGEST_ANNOTATION, RESTARTED_AT_ANNOTATION};
use kvsync::reload::record::parse_time;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::*;

pub use super::WAIT;
/// How long "nothing happens" must hold: many times the test debounce.
pub const QUIET: Duration = Duration::from_secs(3);

pub const AUTO: (&str, &str) = ("reloader.stakater.com/auto", "true");

/// Every Secret value a test writes ends with this: unique, and long enough
/// for the leak scan to look for it in every form (the tests compare whether
/// data changed, never the values).
pub const VALUE_SUFFIX: &str = "-reload-test-value";

impl Fixture {
    /// Creates or replaces a Secret's data (each value `v` written as
    /// `v` + [`VALUE_SUFFIX`]), labels and annotations (server-side apply: an
    /// unchanged apply is a no-op on the server).
    pub async fn secret(
        &self,
        name: &str,
        data: &[(&str, &str)],
        annotations: &[(&str, &str)],
        labels: &[(&str, &str)],
    ) {
        let data: BTreeMap<String, ByteString> = data
            .iter()
            .map(|(k, v)| {
                let value = format!("{v}{VALUE_SUFFIX}");
                self.secret_values.lock().unwrap().push(value.clone());
                (k.to_string(), ByteString(value.into_bytes()))
            })
            .collect();
        let body = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "annotations": pairs(annotations), "labels": pairs(labels)},
            "data": data,
        });
        self.apply_object::<Secret>(name, body).await;
    }

    pub async fn config_map(
        &self,
        name: &str,
        data: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) {
        let body = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "annotations": pairs(annotations)},
            "data": pairs(data),
        });
        self.apply_object::<ConfigMap>(name, body).await;
    }

    /// Server-side applies `body` (any namespaced kind), forcing conflicts.
    pub async fn apply_object<K>(&self, name: &str, body: Value)
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + Debug,
    {
        self.api::<K>()
            .patch(
                name,
                &PatchParams::apply("kvsync-reload-test").force(),
                &Patch::Apply(body),
            )
            .await
            .unwrap_or_else(|e| panic!("apply {name}: {e}"));
    }

    /// Creates a Deployment, StatefulSet or DaemonSet named `name` whose pod
    /// uses `secrets` (envFrom) and `config_maps` (mounted volumes), and
    /// waits for its first rollout.
    pub async fn workload<K>(
        &self,
        name: &str,
        annotations: &[(&str, &str)],
        template_annotations: &[(&str, &str)],
        secrets: &[&str],
        config_maps: &[&str],
    ) where
        K: Resource<DynamicType = ()>,
    {
        Workload::new(&K::kind(&()), name)
            .annotations(annotations)
            .template_annotations(template_annotations)
            .env_from(secrets)
            .mounts(config_maps)
            .create(&self.client, &self.ns.name)
            .await;
    }

    pub async fn deployment(
        &self,
        name: &str,
        annotations: &[(&str, &str)],
        secrets: &[&str],
        config_maps: &[&str],
    ) {
        self.workload::<Deployment>(name, annotations, &[], secrets, config_maps)
            .await;
    }

    /// ReplicaSets of a Deployment: one per distinct pod template it has had.
    pub async fn replica_sets(&self, deployment: &str) -> usize {
        owned::<ReplicaSet>(&self.client, &self.ns.name, deployment).await
    }

    /// ControllerRevisions of a StatefulSet or DaemonSet.
    pub async fn revisions(&self, owner: &str) -> usize {
        owned::<ControllerRevision>(&self.client, &self.ns.name, owner).await
    }

    /// Waits until the Deployment has exactly `count` ReplicaSets, then checks
    /// it keeps that many (no second rollout follows).
    pub async fn expect_replica_sets(&self, deployment: &str, count: usize) {
        eventually(
            &format!("{deployment} to have {count} ReplicaSets"),
            WAIT,
            || async { (self.replica_sets(deployment).await == count).then_some(()) },
        )
        .await;
        always(
            &format!("{deployment} keeping {count} ReplicaSets"),
            QUIET,
            || async { self.replica_sets(deployment).await == count },
        )
        .await;
    }

    pub async fn annotations<K>(&self, name: &str) -> BTreeMap<String, String>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        self.api::<K>()
            .get(name)
            .await
            .expect("get workload")
            .annotations()
            .clone()
    }

    /// Waits until kvsync has recorded its baseline on a workload.
    pub async fn baselined<K>(&self, name: &str)
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        eventually(&format!("the digest record on {name}"), WAIT, || async {
            self.annotations::<K>(name)
                .await
                .contains_key(DIGEST_ANNOTATION)
                .then_some(())
        })
        .await;
    }

    /// Waits until Deployment `name`'s rollout is complete: every replica
    /// updated and available, as the controller reports it.
    pub async fn rolled_out(&self, name: &str) {
        eventually(&format!("{name} rolled out"), WAIT, || async {
            let d = self.api::<Deployment>().get(name).await.unwrap();
            let generation = d.metadata.generation;
            let wanted = d.spec.and_then(|s| s.replicas).unwrap_or(1);
            let s = d.status?;
            (s.observed_generation == generation
                && s.updated_replicas == Some(wanted)
                && s.available_replicas == Some(wanted)
                && s.replicas == Some(wanted))
            .then_some(())
        })
        .await;
    }

    /// When kvsync last restarted Deployment `name`: its pod template's
    /// restartedAt, which the operator also reads back to time the next one.
    pub async fn restarted_at(&self, name: &str) -> OffsetDateTime {
        let deployment = self.api::<Deployment>().get(name).await.unwrap();
        let template = deployment.spec.unwrap().template.metadata.unwrap();
        let value = template
            .annotations
            .unwrap_or_default()
            .remove(RESTARTED_AT_ANNOTATION);
        parse_time(value.as_deref()).expect("a restartedAt annotation")
    }

    /// The time left until `interval` has passed since Deployment `name`'s
    /// last restart, less half a second: a "not restarted again" window of
    /// this length closes before the restart it waits for is due, however
    /// late (on a loaded machine) it opens.
    pub async fn until_due(&self, name: &str, interval: Duration) -> Duration {
        let due = self.restarted_at(name).await + interval;
        let left = due - OffsetDateTime::now_utc() - Duration::from_millis(500);
        left.try_into().unwrap_or_default()
    }

    /// Notes of the Events with `reason` about the workload `name`.
    pub async fn event_notes(&self, name: &str, reason: &str) -> Vec<String> {
        let list = self
            .api::<Event>()
            .list(&ListParams::default())
            .await
            .expect("list events");
        list.items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter_map(|e| e.note)
            .collect()
    }
}

/// A pod spec using Secret `db` through `envFrom`.
pub fn pod_using_db() -> Value {
    json!({
        "metadata": {"labels": {"app": "x"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": "example.invalid/app", "envFrom": [{"secretRef": {"name": "db"}}]}]}
    })
}

pub async fn create(api: &Api<DynamicObject>, body: Value) {
    let object: DynamicObject = serde_json::from_value(body).unwrap();
    api.create(&PostParams::default(), &object).await.unwrap();
}

/// Installs the test-only Rollout CRD (see the manifest) and waits until the
/// API serves it.
pub async fn rollout_api(f: &Fixture) -> Api<DynamicObject> {
    let crd = documents(include_str!("../manifests/argo-rollouts-crd.yaml")).remove(0);
    apply_manifest(&f.client, crd, &f.ns.name, true, false)
        .await
        .unwrap();
    let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout");
    let resource = eventually("the Rollout API served", WAIT, || async {
        kube::discovery::pinned_kind(&f.client, &gvk)
            .await
            .ok()
            .map(|(r, _)| r)
    })
    .await;
    Api::namespaced_with(f.client.clone(), &f.ns.name, &resource)
}

pub fn generation(object: &DynamicObject) -> i64 {
    object.metadata.generation.unwrap_or_default()
}
