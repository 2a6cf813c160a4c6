//! Kubernetes Events on workloads (`events.k8s.io/v1`, Kubernetes ≥ 1.19):
//! `Reloaded` after a restart, naming the resources that changed (names only,
//! never values), `ReloadAwaitingPodDeletion` where the pods take a change
//! only when deleted (`updateStrategy: OnDelete`), and a `Warning` for
//! annotation values that had to be skipped and for a rollout that failed
//! and halted a change (`RolloutHalted`, see `super::waves`).
//!
//! Written directly rather than through kube's `Recorder`, which folds events
//! with the same reason into one series and would keep showing the first
//! restart's resource names for later restarts.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

use super::annotations::PolicyProblem;
use super::kinds::{ResourceRef, WorkloadRef};
use super::metrics::{Failure, ReloadMetrics};
use crate::api::contract::{RELOAD_EVENT_REPORTER, RESUME_ROLLOUT_ANNOTATION};
use crate::events::{Reporting, Said};

/// Publishes Events in the background: a failed Event never holds up or
/// fails a restart.
#[derive(Clone)]
pub struct EventPublisher {
    client: kube::Client,
    /// `reportingInstance`: the pod name when the operator runs in one.
    instance: String,
    /// The operator's own pod (`POD_NAME` in `POD_NAMESPACE`, as the chart
    /// sets them), for Events about the operator itself.
    pod: Option<(String, String)>,
    metrics: ReloadMetrics,
}

/// A workload to write an Event about.
pub struct Regarding<'a> {
    pub workload: &'a WorkloadRef,
    pub api_version: &'a str,
    pub uid: &'a str,
}

impl EventPublisher {
    pub fn new(client: kube::Client, metrics: ReloadMetrics) -> Self {
        let pod_name = std::env::var("POD_NAME").ok();
        let pod = pod_name.clone().zip(std::env::var("POD_NAMESPACE").ok());
        EventPublisher {
            client,
            instance: pod_name.unwrap_or_else(|| "kvsync".to_owned()),
            pod,
            metrics,
        }
    }

    /// On the operator's pod (when it runs in one): a kind it may not list.
    pub fn watch_forbidden(&self, watch: &str) {
        let Some((name, namespace)) = &self.pod else {
            return;
        };
        let note = format!(
            "forbidden to list {watch}; reloading without it — grant list and watch on it to the operator's ServiceAccount"
        );
        let pod = ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            ..ObjectReference::default()
        };
        self.publish(pod, "Warning", "WatchForbidden", "Watch", note);
    }

    /// `changed`: the names of the resources that changed.
    pub fn reloaded(&self, regarding: Regarding<'_>, changed: &[String]) {
        let note = format!("Rolling restart: {} changed", changed.join(", "));
        self.publish(regarding.reference(), "Normal", "Reloaded", "Restart", note);
    }

    /// The pod template of a workload with `updateStrategy: OnDelete` was
    /// updated for `changed`: nothing restarts until its pods are deleted.
    pub fn awaiting_pod_deletion(&self, regarding: Regarding<'_>, changed: &[String]) {
        let note = format!(
            "{} changed; updateStrategy OnDelete: the pod template is updated, and each pod gets the new data only when it is deleted (kvsync deletes no pods)",
            changed.join(", ")
        );
        self.publish(
            regarding.reference(),
            "Normal",
            "ReloadAwaitingPodDeletion",
            "Restart",
            note,
        );
    }

    pub fn invalid_annotations(&self, regarding: Regarding<'_>, problems: &[PolicyProblem]) {
        let notes: Vec<String> = problems.iter().map(PolicyProblem::to_string).collect();
        self.publish(
            regarding.reference(),
            "Warning",
            "InvalidReloadAnnotation",
            "ParseAnnotations",
            notes.join("; "),
        );
    }

    /// The API server refused kvsync's update of the workload (an admission
    /// webhook, a validation error); kvsync retries with a backoff.
    pub fn refused(&self, regarding: Regarding<'_>, error: &str) {
        let note =
            format!("kvsync could not update this workload, retrying with a backoff: {error}");
        self.publish(
            regarding.reference(),
            "Warning",
            "ReloadRefused",
            "Restart",
            note,
        );
    }

    /// This workload's rollout failed and halted the change of `resource`
    /// (`change`: its id): the workloads of later waves keep their old pods.
    pub fn rollout_halted(&self, regarding: Regarding<'_>, resource: &ResourceRef, change: &str) {
        let kind = resource.kind.as_str().to_lowercase();
        let note = format!(
            "rollout failed; the change {change} of {resource} is halted: the workloads of later waves keep their old pods. Fix this workload and change the data again (a fix or a revert), or resume: kubectl annotate {kind} {name} {RESUME_ROLLOUT_ANNOTATION}={change} --overwrite",
            name = resource.name,
        );
        self.publish(
            regarding.reference(),
            "Warning",
            "RolloutHalted",
            "Restart",
            note,
        );
    }

    fn publish(
        &self,
        regarding: ObjectReference,
        type_: &str,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let name = regarding.name.clone().unwrap_or_default();
        let namespace = regarding.namespace.clone().unwrap_or_default();
        let reporting = Reporting {
            controller: RELOAD_EVENT_REPORTER,
            instance: &self.instance,
        };
        let said = Said {
            type_,
            reason,
            action,
            note,
        };
        let event = crate::events::event(regarding, said, &reporting, Timestamp::now());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            if let Err(error) = api.create(&PostParams::default(), &event).await {
                metrics.error(Failure::Event);
                tracing::warn!(namespace, name, %error, "could not publish an Event");
            }
        });
    }
}

impl Regarding<'_> {
    fn reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(self.api_version.to_owned()),
            kind: Some(self.workload.kind.as_str().to_owned()),
            name: Some(self.workload.name.clone()),
            namespace: Some(self.workload.namespace.clone()),
            uid: Some(self.uid.to_owned()),
            ..ObjectReference::default()
        }
    }
}
