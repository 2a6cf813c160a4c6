//! The reload stage against a real kube-apiserver and kube-controller-manager:
//! each test gets its own namespace and its own `kvsync run` scoped to it.
//!
//! No kubelet runs, so pods never start; a restart is what a user would see in
//! the API: a new ReplicaSet for a Deployment, a new ControllerRevision for a
//! StatefulSet or DaemonSet. "Nothing happens" claims are checked over a
//! window several times the debounce, and most are followed by a change that
//! must restart, which proves the operator was listening all along. The
//! fixture is `tests/support/fixture.rs`, its reload side `tests/support/reload.rs`.

mod kinds;
mod owed;
mod pacing;
mod reacting;
mod scope;
#[path = "../support/mod.rs"]
mod support;
mod timing;
mod uses;
mod waves;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kvsync::api::contract::reloader::PAUSED_AT as RELOADER_PAUSED_AT;
use kvsync::api::contract::{
    DIGEST_ANNOTATION, JOB_PENDING_ANNOTATION, PAUSED_AT_ANNOTATION, RELOAD_KEYS_ANNOTATION,
    RESTARTED_AT_ANNOTATION,
};
use kvsync::reload::record::parse_time;
use serde_json::{Value, json};
use support::reload::{AUTO, QUIET, WAIT, create, generation, pod_using_db, rollout_api};
use support::*;
use time::OffsetDateTime;

/// Pauses Deployment `name` the way Reloader does (and, with a template
/// change, the way it restarts while paused); `None`: paused by a user.
async fn pause_as_reloader(f: &Fixture, name: &str, paused_at: Option<OffsetDateTime>) {
    let paused_at = paused_at.map(|at| {
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    });
    let patch = json!({
        "metadata": {"annotations": {RELOADER_PAUSED_AT: paused_at}},
        "spec": {"paused": true, "template": {"metadata": {"annotations": {"reloader.stakater.com/last-reloaded-from": "db"}}}},
    });
    f.api::<Deployment>()
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

async fn is_paused(f: &Fixture, name: &str) -> bool {
    let deployment = f.api::<Deployment>().get(name).await.unwrap();
    deployment.spec.unwrap().paused == Some(true)
}

/// What `helm upgrade` or `kubectl apply` does to a Deployment along with its data.
async fn change_template(f: &Fixture, name: &str, version: &str) {
    let patch =
        json!({"spec": {"template": {"metadata": {"annotations": {"app-version": version}}}}});
    f.api::<Deployment>()
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

/// Pod specs using Secret `db` in every way a pod can, and one that
/// declares it as a volume no container mounts: (name, spec, restarts).
fn ways_to_use_db() -> Vec<(&'static str, Value, bool)> {
    let image = "example.invalid/app";
    let volume = json!({"name": "creds", "secret": {"secretName": "db"}});
    let mounted = json!({"name": "app", "image": image, "volumeMounts": [{"name": "creds", "mountPath": "/creds"}]});
    let plain = json!({"name": "app", "image": image});
    let key = |optional: bool| {
        json!({"name": "app", "image": image, "env": [{"name": "K", "valueFrom":
            {"secretKeyRef": {"name": "db", "key": "k", "optional": optional}}}]})
    };
    vec![
        (
            "mounted",
            json!({"containers": [mounted], "volumes": [volume]}),
            true,
        ),
        (
            "projected",
            json!({"containers": [mounted], "volumes": [{"name": "creds",
                   "projected": {"sources": [{"secret": {"name": "db"}}]}}]}),
            true,
        ),
        ("key", json!({"containers": [key(false)]}), true),
        ("optional-key", json!({"containers": [key(true)]}), true),
        (
            "init-only",
            json!({"initContainers": [{"name": "init", "image": image,
                   "volumeMounts": [{"name": "creds", "mountPath": "/creds"}]}],
                   "containers": [plain], "volumes": [volume]}),
            true,
        ),
        // As Reloader: a volume no container mounts changes nothing that runs.
        (
            "unmounted",
            json!({"containers": [plain], "volumes": [volume]}),
            false,
        ),
    ]
}

/// A dynamic API of `kind` in the fixture's namespace, as the server serves it.
async fn served_api(f: &Fixture, versions: &[&str], kind: &str) -> (Api<DynamicObject>, String) {
    for api_version in versions {
        let (group, version) = api_version.split_once('/').unwrap();
        let gvk = GroupVersionKind::gvk(group, version, kind);
        if let Ok((resource, _)) = kube::discovery::pinned_kind(&f.client, &gvk).await {
            return (
                Api::namespaced_with(f.client.clone(), &f.ns.name, &resource),
                api_version.to_string(),
            );
        }
    }
    panic!("{kind} is not served as any of {versions:?}");
}

/// Jobs made from CronJob `owner`.
async fn jobs_of(f: &Fixture, owner: &str) -> Vec<Job> {
    let jobs = f.api::<Job>().list(&ListParams::default()).await.unwrap();
    jobs.items
        .into_iter()
        .filter(|job| {
            job.owner_references()
                .iter()
                .any(|o| o.kind == "CronJob" && o.name == owner)
        })
        .collect()
}

/// The `kvsync.io/restartedAt` of each Deployment in the namespace that has one.
async fn restarts(f: &Fixture) -> BTreeMap<String, OffsetDateTime> {
    let list = f
        .api::<Deployment>()
        .list(&ListParams::default())
        .await
        .unwrap();
    list.items
        .into_iter()
        .filter_map(|d| Some((d.name_any(), restarted_at(&d)?)))
        .collect()
}

/// Every `restartedAt` written on the namespace's Deployments while it
/// runs, as a watch delivers each update (started, and its first list done,
/// before [`StampWatch::start`] returns).
struct StampWatch {
    seen: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Vec<OffsetDateTime>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StampWatch {
    async fn start(f: &Fixture) -> Self {
        use futures::StreamExt;
        use kube::runtime::watcher;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let (listed, listed_rx) = tokio::sync::oneshot::channel();
        let mut listed = Some(listed);
        let record = seen.clone();
        let mut events = watcher(f.api::<Deployment>(), watcher::Config::default()).boxed();
        let task = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event.expect("the Deployment watch") {
                    watcher::Event::InitDone => {
                        if let Some(listed) = listed.take() {
                            let _ = listed.send(());
                        }
                    }
                    watcher::Event::Apply(d) | watcher::Event::InitApply(d) => {
                        let Some(at) = restarted_at(&d) else { continue };
                        let mut seen = record.lock().unwrap();
                        let stamps: &mut Vec<OffsetDateTime> =
                            seen.entry(d.name_any()).or_default();
                        if !stamps.contains(&at) {
                            stamps.push(at);
                        }
                    }
                    _ => {}
                }
            }
        });
        listed_rx.await.expect("the Deployment watch listed");
        StampWatch { seen, task }
    }

    /// Per Deployment, the stamps seen other than its one in `before`.
    fn seen(
        &self,
        before: &BTreeMap<String, OffsetDateTime>,
    ) -> BTreeMap<String, Vec<OffsetDateTime>> {
        let mut seen = self.seen.lock().unwrap().clone();
        for (name, stamps) in seen.iter_mut() {
            stamps.retain(|at| before.get(name) != Some(at));
        }
        seen
    }
}

impl Drop for StampWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `kvsync.io/restartedAt` of a Deployment's pod template.
fn restarted_at(d: &Deployment) -> Option<OffsetDateTime> {
    let template = d.spec.as_ref()?.template.metadata.as_ref()?;
    let at = template
        .annotations
        .as_ref()?
        .get(RESTARTED_AT_ANNOTATION)?;
    parse_time(Some(at))
}

/// The value of an unlabelled gauge on a metrics page (0 when absent).
fn gauge(metrics: &str, name: &str) -> usize {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_default()
}

/// One change of Secret `db` rolled out to every Deployment of the namespace.
struct Fanout {
    /// When each was restarted (its new `kvsync.io/restartedAt`), in order.
    times: Vec<OffsetDateTime>,
    /// The most restarts within any one second.
    peak_per_second: usize,
    /// Peaks of `kvsync_reload_rollouts_queued` and `_writes_in_flight`.
    queued_peak: usize,
    in_flight_peak: usize,
}

/// Writes `value` into Secret `db` and waits until each of the `workloads`
/// Deployments has restarted since, exactly once, sampling the operator's
/// queue and writes in flight meanwhile; prints the numbers. "Exactly once"
/// is read from a watch that sees every `restartedAt` written, not only the
/// latest: a workload restarted twice shows two stamps.
async fn fan_out(f: &Fixture, workloads: usize, value: &str, rate: &str) -> Fanout {
    let before = restarts(f).await;
    let stamps = StampWatch::start(f).await;
    let changed = OffsetDateTime::now_utc();
    f.secret("db", &[("k", value)], &[], &[]).await;
    // Sampled as often as the operator answers.
    let (mut queued_peak, mut in_flight_peak) = (0, 0);
    let base = metrics_url(&f.process().output()).unwrap();
    let sampling = async {
        loop {
            let page = reqwest::get(format!("{base}/metrics")).await.unwrap();
            let metrics = page.text().await.unwrap();
            queued_peak = queued_peak.max(gauge(&metrics, "kvsync_reload_rollouts_queued"));
            in_flight_peak = in_flight_peak.max(gauge(&metrics, "kvsync_reload_writes_in_flight"));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let restarted = || async {
        let mut all = restarts(f).await;
        all.retain(|name, at| before.get(name) != Some(at));
        all
    };
    let all = tokio::select! {
        all = eventually("every workload restarted", WAIT, || async {
            let all = restarted().await;
            (all.len() == workloads).then_some(all)
        }) => all,
        _ = sampling => unreachable!("sampling never ends"),
    };
    always("no workload restarted again", QUIET, || async {
        restarted().await == all
    })
    .await;
    let twice: Vec<String> = stamps
        .seen(&before)
        .into_iter()
        .filter(|(_, stamps)| stamps.len() > 1)
        .map(|(name, stamps)| format!("{name}: {stamps:?}"))
        .collect();
    assert!(twice.is_empty(), "restarted more than once: {twice:?}");

    let mut times: Vec<OffsetDateTime> = all.into_values().collect();
    times.sort();
    let last = *times.last().unwrap();
    let peak_per_second = times
        .iter()
        .map(|start| {
            times
                .iter()
                .filter(|t| **t >= *start && **t - *start < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    println!(
        "throttle: {workloads} workloads at --max-rollouts-per-second {rate}: all restarted {:.2}s after the change \
         (first to last {:.2}s), peak {peak_per_second} restarts in any one second, peak queue {queued_peak}, \
         peak writes in flight {in_flight_peak}",
        (last - changed).as_seconds_f64(),
        (last - times[0]).as_seconds_f64(),
    );
    Fanout {
        times,
        peak_per_second,
        queued_peak,
        in_flight_peak,
    }
}

/// `kvsync_reload_errors_total{reason}` (0 before the first).
async fn reload_errors(f: &Fixture, reason: &str) -> u64 {
    let line = format!("kvsync_reload_errors_total{{reason=\"{reason}\"}} ");
    f.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_default()
}
