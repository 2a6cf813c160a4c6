//! The one builder of the workloads the tests make: a Deployment, StatefulSet
//! or DaemonSet (selector and pod labels `app: <name>`, one container) whose
//! pod uses Secrets through `envFrom` and ConfigMaps as mounted volumes, or
//! whatever pod spec a test gives.
//!
//! ```text
//! Workload::deployment("web").annotations(&[AUTO]).env_from(&["db"])
//!     .body()                      → the object as JSON (to apply or to build on)
//!     .create(&client, ns).await   → created, and its first rollout made
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use super::*;

#[derive(Clone, Debug)]
pub struct Workload {
    kind: String,
    name: String,
    annotations: BTreeMap<String, String>,
    template_annotations: BTreeMap<String, String>,
    env_from: Vec<Value>,
    config_maps: Vec<String>,
    pod_spec: Option<Value>,
    replicas: Option<i32>,
    paused: bool,
    progress_deadline_seconds: Option<i32>,
}

impl Workload {
    /// `kind` is `Deployment`, `StatefulSet` or `DaemonSet`.
    pub fn new(kind: &str, name: &str) -> Self {
        Workload {
            kind: kind.to_owned(),
            name: name.to_owned(),
            annotations: BTreeMap::new(),
            template_annotations: BTreeMap::new(),
            env_from: Vec::new(),
            config_maps: Vec::new(),
            pod_spec: None,
            replicas: None,
            paused: false,
            progress_deadline_seconds: None,
        }
    }

    pub fn deployment(name: &str) -> Self {
        Self::new("Deployment", name)
    }

    /// The workload's own annotations (added to those set before).
    pub fn annotations(mut self, added: &[(&str, &str)]) -> Self {
        self.annotations.extend(pairs(added));
        self
    }

    /// Annotations of the pod template.
    pub fn template_annotations(mut self, added: &[(&str, &str)]) -> Self {
        self.template_annotations.extend(pairs(added));
        self
    }

    /// The container reads every key of these Secrets (`envFrom.secretRef`).
    pub fn env_from(mut self, secrets: &[&str]) -> Self {
        self.env_from
            .extend(secrets.iter().map(|s| json!({"secretRef": {"name": s}})));
        self
    }

    /// The container reads every key of these ConfigMaps (`envFrom.configMapRef`).
    pub fn env_from_config_maps(mut self, config_maps: &[&str]) -> Self {
        self.env_from.extend(
            config_maps
                .iter()
                .map(|c| json!({"configMapRef": {"name": c}})),
        );
        self
    }

    /// The container mounts these ConfigMaps at `/etc/<name>`.
    pub fn mounts(mut self, config_maps: &[&str]) -> Self {
        self.config_maps
            .extend(config_maps.iter().map(|c| c.to_string()));
        self
    }

    /// This pod spec instead of the one built from the uses above.
    pub fn pod_spec(mut self, spec: Value) -> Self {
        self.pod_spec = Some(spec);
        self
    }

    pub fn replicas(mut self, replicas: i32) -> Self {
        self.replicas = Some(replicas);
        self
    }

    /// A Deployment's `progressDeadlineSeconds`.
    pub fn progress_deadline(mut self, seconds: i32) -> Self {
        self.progress_deadline_seconds = Some(seconds);
        self
    }

    /// A paused Deployment of no replicas: it makes no ReplicaSet, and its
    /// restarts are read from kvsync's restartedAt.
    pub fn paused(mut self) -> Self {
        self.paused = true;
        self.replicas(0)
    }

    /// The object, as JSON.
    pub fn body(&self) -> Value {
        let name = &self.name;
        let pod_spec = self.pod_spec.clone().unwrap_or_else(|| {
            let volumes: Vec<Value> = self
                .config_maps
                .iter()
                .map(|cm| json!({"name": cm, "configMap": {"name": cm}}))
                .collect();
            let mounts: Vec<Value> = self
                .config_maps
                .iter()
                .map(|cm| json!({"name": cm, "mountPath": format!("/etc/{cm}")}))
                .collect();
            json!({
                "containers": [{"name": "app", "image": "example.invalid/app",
                                "envFrom": self.env_from, "volumeMounts": mounts}],
                "volumes": volumes,
            })
        });
        let mut spec = json!({
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": self.template_annotations},
                "spec": pod_spec,
            }
        });
        if self.kind == "StatefulSet" {
            spec["serviceName"] = json!(name);
        }
        if let Some(replicas) = self.replicas {
            spec["replicas"] = json!(replicas);
        }
        if self.paused {
            spec["paused"] = json!(true);
        }
        if let Some(seconds) = self.progress_deadline_seconds {
            spec["progressDeadlineSeconds"] = json!(seconds);
        }
        json!({"apiVersion": "apps/v1", "kind": self.kind,
               "metadata": {"name": name, "annotations": self.annotations}, "spec": spec})
    }

    /// Creates the workload in `namespace` and, unless paused, waits for its
    /// first rollout (counts of ReplicaSets/revisions start at one, not zero).
    pub async fn create(&self, client: &kube::Client, namespace: &str) {
        let body = self.body();
        match self.kind.as_str() {
            "Deployment" => create_as::<Deployment>(client, namespace, body).await,
            "StatefulSet" => create_as::<StatefulSet>(client, namespace, body).await,
            "DaemonSet" => create_as::<DaemonSet>(client, namespace, body).await,
            other => panic!("no workload kind {other}"),
        }
        if self.paused {
            return;
        }
        if self.kind == "Deployment" {
            first_rollout_made::<ReplicaSet>(client, namespace, &self.name).await;
        } else {
            first_rollout_made::<ControllerRevision>(client, namespace, &self.name).await;
        }
    }
}

async fn create_as<K>(client: &kube::Client, namespace: &str, body: Value)
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let object: K = serde_json::from_value(body).unwrap();
    let name = object.meta().name.clone().unwrap_or_default();
    Api::<K>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("create {} {name}: {e}", K::kind(&())));
}

/// `(name, value)` pairs as a map (annotations, labels, data).
pub fn pairs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
