//! Kubernetes Events on workloads (`events.k8s.io/v1`, Kubernetes ≥ 1.19):
//! `Reloaded` after a restart, naming the resources that changed (names only,
//! never values), and a `Warning` for annotation values that had to be skipped.
//!
//! Written directly rather than through kube's `Recorder`, which folds events
//! with the same reason into one series and would keep showing the first
//! restart's resource names for later restarts.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};

use super::annotations::PolicyProblem;
use super::kinds::{ResourceRef, WorkloadRef};
use super::metrics::ReloadMetrics;

const CONTROLLER: &str = "kvsync.io/reload";
/// The API's limit for an Event's note.
const NOTE_LIMIT: usize = 1024;

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

    pub fn reloaded(&self, regarding: Regarding<'_>, changed: &[ResourceRef]) {
        let names: Vec<String> = changed.iter().map(ResourceRef::to_string).collect();
        let note = format!("Rolling restart: {} changed", names.join(", "));
        self.publish(regarding.reference(), "Normal", "Reloaded", "Restart", note);
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

    fn publish(
        &self,
        regarding: ObjectReference,
        type_: &str,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let now = Timestamp::now();
        let name = regarding.name.clone().unwrap_or_default();
        let namespace = regarding.namespace.clone().unwrap_or_default();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(type_.to_owned()),
            reason: Some(reason.to_owned()),
            action: Some(action.to_owned()),
            note: Some(truncate(note, NOTE_LIMIT)),
            regarding: Some(regarding),
            reporting_controller: Some(CONTROLLER.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            if let Err(error) = api.create(&PostParams::default(), &event).await {
                metrics.error("event");
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

/// Cuts `text` to at most `limit` bytes, on a character boundary.
fn truncate(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut end = limit - "…".len();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_on_character_boundaries() {
        assert_eq!(truncate("short".into(), 10), "short");
        let long = "é".repeat(600);
        let cut = truncate(long, NOTE_LIMIT);
        assert!(cut.len() <= NOTE_LIMIT);
        assert!(cut.ends_with('…'));
    }
}
