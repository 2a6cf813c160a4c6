//! The reload tests' fixture: a namespace, a client, and `kvsync run` scoped
//! to that namespace (started when the test says, with a short debounce),
//! with helpers to make Secrets, ConfigMaps and workloads and to watch them
//! roll. Shared by `tests/reload.rs` and `tests/reload_discovery.rs`.
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

/// A namespace, a client, and the operator watching that namespace. When the
/// test ends (unless it failed), the fixture runs the [`LeakScan`] over the
/// logs of every operator it ran, with every Secret value written.
pub struct Fixture {
    pub client: kube::Client,
    pub ns: TestNamespace,
    pub operator: Option<Process>,
    /// What the operators stopped earlier printed.
    pub earlier_logs: String,
    /// Every Secret value written (as written).
    pub secret_values: std::sync::Mutex<Vec<String>>,
    /// A Key Vault emulator, for a test that syncs from it (its values and
    /// the credentials it issued are scanned for too).
    pub emulator: Option<Emulator>,
    /// Values to look for whatever their length.
    pub named: Vec<String>,
}

impl Fixture {
    /// A namespace without an operator yet.
    pub async fn new(test: &str) -> Self {
        let client = client().await;
        let ns = TestNamespace::new(&client, test).await;
        Fixture {
            client,
            ns,
            operator: None,
            earlier_logs: String::new(),
            secret_values: Default::default(),
            emulator: None,
            named: Vec::new(),
        }
    }

    fn leak_scan(&self) -> LeakScan {
        let mut handled = self.secret_values.lock().unwrap().clone();
        handled.extend(self.emulator.iter().flat_map(Emulator::values_set));
        let running = self.operator.as_ref().map(Process::output);
        LeakScan {
            namespace: self.ns.name.clone(),
            operator_log: self.earlier_logs.clone() + &running.unwrap_or_default(),
            control_url: self
                .emulator
                .as_ref()
                .map(|e| e.endpoints.control_url.clone()),
            named: self.named.clone(),
            handled,
            private_keys: Vec::new(),
        }
    }

    /// Starts `kvsync run` for the namespace (the digest key lives there too),
    /// with a short debounce and minimum interval unless `extra` overrides them,
    /// and waits until its reload stage has listed everything: every window
    /// after this one watches an operator that is looking.
    pub async fn start_operator(&mut self, extra: &[&str]) {
        self.start_operator_with(
            &[
                ("--reload-debounce", "300ms"),
                ("--min-reload-interval", "1s"),
            ],
            extra,
        )
        .await;
    }

    /// [`Self::start_operator`] with the operator's own `--reload-debounce`
    /// (the tests' short one left out), for tests of what the default folds.
    pub async fn start_operator_with_default_debounce(&mut self, extra: &[&str]) {
        self.start_operator_with(&[("--min-reload-interval", "1s")], extra)
            .await;
    }

    async fn start_operator_with(&mut self, defaults: &[(&str, &str)], extra: &[&str]) {
        let mut args: Vec<&str> = vec![
            "run",
            "--namespaces",
            &self.ns.name,
            "--operator-namespace",
            &self.ns.name,
            "--metrics-addr",
            "127.0.0.1:0",
        ];
        for (flag, default) in defaults {
            if !extra.contains(flag) {
                args.extend([*flag, *default]);
            }
        }
        args.extend(extra);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let operator = Process::start(&args);
        reload_listed(&operator).await;
        self.operator = Some(operator);
    }

    /// SIGTERM and wait: the operator stops cleanly.
    pub fn stop_operator(&mut self) {
        let operator = self.operator.take().expect("an operator is running");
        let (status, output) = operator.terminate_with_output();
        self.earlier_logs.push_str(&output);
        assert!(status.success(), "the operator exits cleanly on SIGTERM");
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

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
        self.apply::<Secret>(name, body).await;
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
        self.apply::<ConfigMap>(name, body).await;
    }

    pub async fn apply<K>(&self, name: &str, body: Value)
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
    /// uses `secrets` (envFrom) and `config_maps` (mounted volumes).
    pub async fn workload<K>(
        &self,
        name: &str,
        annotations: &[(&str, &str)],
        template_annotations: &[(&str, &str)],
        secrets: &[&str],
        config_maps: &[&str],
    ) where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + Debug,
    {
        let kind = K::kind(&());
        let volumes: Vec<Value> = config_maps
            .iter()
            .map(|cm| json!({"name": cm, "configMap": {"name": cm}}))
            .collect();
        let mounts: Vec<Value> = config_maps
            .iter()
            .map(|cm| json!({"name": cm, "mountPath": format!("/etc/{cm}")}))
            .collect();
        let env_from: Vec<Value> = secrets
            .iter()
            .map(|s| json!({"secretRef": {"name": s}}))
            .collect();
        let mut spec = json!({
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": pairs(template_annotations)},
                "spec": {
                    "containers": [{"name": "app", "image": "example.invalid/app", "envFrom": env_from, "volumeMounts": mounts}],
                    "volumes": volumes,
                }
            }
        });
        if kind == "StatefulSet" {
            spec["serviceName"] = json!(name);
        }
        let body = json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "annotations": pairs(annotations)}, "spec": spec});
        let object: K = serde_json::from_value(body).unwrap();
        self.api::<K>()
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("create {kind} {name}: {e}"));
        // Counts of ReplicaSets/revisions start at one, not at zero.
        if kind == "Deployment" {
            first_rollout_made::<ReplicaSet>(&self.client, &self.ns.name, name).await;
        } else {
            first_rollout_made::<ControllerRevision>(&self.client, &self.ns.name, name).await;
        }
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

    /// The part of `QUIET` that ends before `interval` has passed since
    /// Deployment `name`'s last restart: a "not restarted again" window must
    /// close before the restart it waits for is due, however late (on a
    /// loaded machine) it opens.
    pub async fn quiet_before_due(&self, name: &str, interval: Duration) -> Duration {
        let due = self.restarted_at(name).await + interval;
        let left = due - OffsetDateTime::now_utc() - Duration::from_millis(500);
        QUIET.min(left.try_into().unwrap_or_default())
    }

    /// The operator's metrics page.
    pub async fn metrics(&self) -> String {
        metrics_of(self.operator.as_ref().expect("an operator is running")).await
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

impl Drop for Fixture {
    fn drop(&mut self) {
        scan_when_dropped(|| self.leak_scan());
    }
}

pub fn pairs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
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
