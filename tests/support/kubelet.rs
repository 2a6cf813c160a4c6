//! A kubelet simulated at the API, the way kwok does it: the test plane runs
//! no node, so this marks the pods the real controllers create as running,
//! and the controllers compute the workloads' status (updated, available,
//! `ProgressDeadlineExceeded`) from that as they would on a cluster.
//!
//! ```text
//!  pod created ──▶ reads a Secret value containing "broken"? ──yes──▶ Running, never Ready
//!                      │ no                                              (a bad rotation)
//!                      ▼
//!                  its app held (`hold`)? ──yes──▶ Running, not Ready until `ready(app)`
//!                      │ no
//!                      ▼
//!                  Running and Ready
//! ```
//!
//! One per test namespace; it stops when dropped.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio::task::JoinHandle;

/// A Secret value containing this makes the pods reading it fail readiness.
pub const BROKEN: &str = "broken";

#[derive(Default)]
struct Rules {
    /// Apps (`app` label) whose new pods wait for [`Kubelet::ready`].
    held: BTreeSet<String>,
}

pub struct Kubelet {
    client: kube::Client,
    namespace: String,
    rules: Arc<Mutex<Rules>>,
    task: JoinHandle<()>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Kubelet {
    pub fn start(client: &kube::Client, namespace: &str) -> Kubelet {
        let rules = Arc::new(Mutex::new(Rules::default()));
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let task = tokio::spawn({
            let rules = rules.clone();
            async move {
                let mut events = watcher(pods.clone(), watcher::Config::default()).boxed();
                while let Some(event) = events.next().await {
                    let (watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) =
                        event.unwrap_or(watcher::Event::InitDone)
                    else {
                        continue;
                    };
                    if started(&pod) {
                        continue;
                    }
                    let ready = !reads_broken(&secrets, &pod).await
                        && !rules.lock().unwrap().held.contains(&app(&pod));
                    set_status(&pods, &pod, ready).await;
                }
            }
        });
        Kubelet {
            client: client.clone(),
            namespace: namespace.to_owned(),
            rules,
            task,
        }
    }

    /// New pods of `app` start but do not become ready until [`Self::ready`].
    pub fn hold(&self, app: &str) {
        self.rules.lock().unwrap().held.insert(app.to_owned());
    }

    /// Pods of `app` become ready (unless they read a broken value), and
    /// new ones are ready at once again.
    pub async fn ready(&self, app: &str) {
        self.rules.lock().unwrap().held.remove(app);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .unwrap();
        for pod in list.items {
            if !reads_broken(&secrets, &pod).await {
                set_status(&pods, &pod, true).await;
            }
        }
    }
}

fn app(pod: &Pod) -> String {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("app"))
        .cloned()
        .unwrap_or_default()
}

/// Whether this kubelet has started the pod already.
fn started(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Whether a Secret the pod reads (through `envFrom` or `secretKeyRef`)
/// holds a broken value, as the pod started with it.
async fn reads_broken(secrets: &Api<Secret>, pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    let mut names = BTreeSet::new();
    for container in &spec.containers {
        for from in container.env_from.iter().flatten() {
            if let Some(secret) = &from.secret_ref {
                names.insert(secret.name.clone());
            }
        }
        for env in container.env.iter().flatten() {
            if let Some(key) = env
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
            {
                names.insert(key.name.clone());
            }
        }
    }
    for name in names {
        // Read as the kubelet would: retried until the API server answers
        // (a transient error must not make a broken pod ready).
        let secret = loop {
            match secrets.get_opt(&name).await {
                Ok(secret) => break secret,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        };
        if let Some(secret) = secret {
            let broken = secret
                .data
                .iter()
                .flatten()
                .any(|(_, v)| String::from_utf8_lossy(&v.0).contains(BROKEN));
            if broken {
                return true;
            }
        }
    }
    false
}

async fn set_status(pods: &Api<Pod>, pod: &Pod, ready: bool) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let ready = if ready { "True" } else { "False" };
    let status = json!({"status": {
        "phase": "Running",
        "startTime": now,
        "conditions": [
            {"type": "Ready", "status": ready, "lastTransitionTime": now},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
        ],
    }});
    let name = pod.metadata.name.clone().unwrap_or_default();
    // Retried while the API server is slow; a pod deleted meanwhile (an old
    // ReplicaSet scaled down) is no error.
    for _ in 0..20 {
        match pods
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
        {
            Err(kube::Error::Api(e)) if e.is_not_found() => return,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            Ok(_) => return,
        }
    }
}
