//! The reload stage's event loop: folds watch events into the index, marks
//! affected workloads, and when a workload is due evaluates it and writes the
//! verdict back with one patch.
//!
//! Nothing is evaluated before every watcher has listed once: a workload
//! judged against a half-loaded index would see its resources as absent.

use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tracing::{debug, info, warn};

use super::annotations::{PolicyProblem, RELOADER_PAUSED_AT};
use super::decide::{Decision, Pause, Schedule, Situation, Verdict, decide, desired_members};
use super::events::{EventPublisher, Regarding};
use super::index::{Index, ResourceChange, WorkloadObservation};
use super::kinds::{WorkloadKind, WorkloadRef};
use super::metrics::ReloadMetrics;
use super::observe::{WorkloadObject, observe_workload};
use super::record::{
    AppliedRecord, DIGEST_ANNOTATION, PAUSED_AT_ANNOTATION, RESTARTED_AT_ANNOTATION, format_time,
};
use super::watch::{Input, Listing, Observed, Source, Watched};

/// Wait before retrying a workload whose patch failed for another reason
/// than a conflict (which the next watch event resolves).
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(10);

const FIELD_MANAGER: &str = "kvsync-reload";

/// Timing settings of the stage.
#[derive(Debug)]
pub struct Timing {
    pub debounce: Duration,
    pub min_reload_interval: Duration,
}

/// How an object came to be observed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Someone wrote it (a watch event, or the sync stage's report).
    Written,
    /// A (re-)list returned it: nothing was necessarily written.
    Listed,
}

struct SourceState {
    source: Source,
    listed_once: bool,
    /// Keys seen since the last `Init`, while a (re-)list is in progress.
    listing: Option<Listing>,
}

pub struct Stage {
    client: kube::Client,
    key_id: String,
    timing: Timing,
    index: Index,
    schedule: Schedule<WorkloadRef>,
    sources: Vec<SourceState>,
    ready: bool,
    events: EventPublisher,
    metrics: ReloadMetrics,
}

impl Stage {
    pub fn new(
        client: kube::Client,
        key_id: String,
        timing: Timing,
        sources: Vec<Source>,
        namespace_selector: bool,
        metrics: ReloadMetrics,
    ) -> Self {
        Stage {
            events: EventPublisher::new(client.clone(), metrics.clone()),
            metrics,
            client,
            key_id,
            timing,
            index: Index::new(namespace_selector),
            schedule: Schedule::default(),
            sources: sources
                .into_iter()
                .map(|source| SourceState {
                    source,
                    listed_once: false,
                    listing: None,
                })
                .collect(),
            ready: false,
        }
    }

    /// Runs until `inputs` ends (it does not: watchers retry forever).
    pub async fn run(mut self, mut inputs: BoxStream<'static, Input>) {
        loop {
            let due = if self.ready {
                self.schedule.next_due()
            } else {
                None
            };
            tokio::select! {
                input = inputs.next() => match input {
                    Some(input) => self.handle(input),
                    None => return,
                },
                () = sleep_until(due) => {
                    for workload in self.schedule.take_due(Instant::now()) {
                        self.evaluate(workload).await;
                    }
                }
            }
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Watch { source, event } => self.watch_event(source, event),
            Input::WatchFailed { source, error } => {
                self.metrics.error("watch");
                let watched = self.sources.get(source).map(|s| &s.source);
                warn!(?watched, %error, "watch failed; retrying with backoff");
            }
            Input::Fetched(Ok(Some(observation))) => {
                self.observe(Observed::Resource(observation), Seen::Written)
            }
            Input::Fetched(Ok(None)) => {}
            Input::Fetched(Err((written, error))) => {
                self.metrics.error("fast_path_read");
                warn!(namespace = %written.namespace, name = %written.name, %error,
                      "could not read a written Secret; its watch event will cover it");
            }
        }
    }

    fn watch_event(&mut self, source: usize, event: Event<Observed>) {
        let Some(state) = self.sources.get_mut(source) else {
            return;
        };
        match event {
            Event::Init => state.listing = Some(Listing::new()),
            Event::InitApply(observed) => {
                if let Some(listing) = &mut state.listing {
                    listing.insert(observed.listing_key());
                }
                self.observe(observed, Seen::Listed);
            }
            Event::InitDone => {
                let listed = state.listing.take().unwrap_or_default();
                state.listed_once = true;
                let source = state.source.clone();
                self.forget_unlisted(&source, &listed);
                self.become_ready_when_listed();
            }
            Event::Apply(observed) => self.observe(observed, Seen::Written),
            Event::Delete(observed) => self.forget(observed),
        }
    }

    fn observe(&mut self, observed: Observed, seen: Seen) {
        let due = Instant::now() + self.timing.debounce;
        match observed {
            Observed::Resource(observation) => match self.index.apply_resource(observation) {
                ResourceChange::Changed { affected } => self.mark_all(affected, due),
                ResourceChange::Unchanged { reacting } if seen == Seen::Written => {
                    self.metrics.skipped("data_unchanged", reacting as u64);
                }
                ResourceChange::Unchanged { .. } | ResourceChange::Stale => {}
            },
            Observed::Workload(observation) => self.observe_workload(*observation, due),
            Observed::Namespace { name, selected } => {
                let revealed = self.index.set_selected(&name, selected);
                // Problems of workloads outside the selection were not
                // reported: now they are in scope, they are.
                for workload in &revealed {
                    if let Some(state) = self.index.workload(workload) {
                        self.report_problems(workload, &state.uid, &state.problems);
                    }
                }
                self.mark_all(revealed, due);
            }
        }
    }

    fn observe_workload(&mut self, observation: WorkloadObservation, due: Instant) {
        let workload = observation.workload.clone();
        let uid = observation.state.uid.clone();
        let change = self.index.apply_workload(observation);
        // A namespace outside `--namespace-selector` is not the operator's to
        // write Events in; its problems are reported if it comes into scope.
        if self.index.is_selected(&workload.namespace) {
            self.report_problems(&workload, &uid, &change.new_problems);
        }
        if change.needs_evaluation {
            self.schedule.mark(workload, due);
        }
    }

    /// Counts, logs and publishes (one Warning Event) a workload's unusable
    /// annotation values.
    fn report_problems(&self, workload: &WorkloadRef, uid: &str, problems: &[PolicyProblem]) {
        if problems.is_empty() {
            return;
        }
        for problem in problems {
            self.metrics.error("invalid_annotation");
            warn!(%workload, %problem, "unusable reload annotation");
        }
        self.events
            .invalid_annotations(Regarding { workload, uid }, problems);
    }

    fn forget(&mut self, observed: Observed) {
        let due = Instant::now() + self.timing.debounce;
        match observed {
            Observed::Resource(r) => {
                let affected = self.index.remove_resource(&r.namespace, &r.resource);
                self.mark_all(affected, due);
            }
            Observed::Workload(w) => {
                self.index.remove_workload(&w.workload);
                self.schedule.forget(&w.workload);
            }
            Observed::Namespace { name, .. } => {
                self.index.set_selected(&name, false);
            }
        }
    }

    fn forget_unlisted(&mut self, source: &Source, listed: &Listing) {
        let namespace = source.namespace.as_deref();
        match source.watched {
            Watched::Resources(kind) => {
                let affected = self.index.retain_resources(kind, namespace, listed);
                self.mark_all(affected, Instant::now() + self.timing.debounce);
            }
            Watched::Workloads(kind) => self.index.retain_workloads(kind, namespace, listed),
            Watched::Namespaces => {
                self.index
                    .retain_selected(&listed.iter().map(|(name, _)| name.clone()).collect());
            }
        }
    }

    fn become_ready_when_listed(&mut self) {
        if self.ready || !self.sources.iter().all(|s| s.listed_once) {
            return;
        }
        self.ready = true;
        let workloads = self.index.workloads();
        info!(
            workloads = workloads.len(),
            "reload stage has listed everything; evaluating"
        );
        let now = Instant::now();
        for workload in workloads {
            self.schedule.mark(workload, now);
        }
    }

    fn mark_all(&mut self, workloads: Vec<WorkloadRef>, due: Instant) {
        for workload in workloads {
            self.schedule.mark(workload, due);
        }
    }

    async fn evaluate(&mut self, workload: WorkloadRef) {
        if !self.index.is_selected(&workload.namespace) {
            return;
        }
        let Some(state) = self.index.workload(&workload) else {
            return;
        };
        if state.deleting {
            return;
        }
        let desired = desired_members(
            &state.policy,
            &state.uses,
            self.index.resources(&workload.namespace),
        );
        let covered = self.index.covered_by_template(&workload);
        let now = OffsetDateTime::now_utc();
        let pause = Pause {
            period: state.policy.pause_period,
            started: state.paused_at,
            by_reloader: state.reloader_paused_since,
        };
        let Decision { verdict, end_pause } = decide(&Situation {
            opted_in: !state.policy.is_inert(),
            applied: &state.applied,
            key_id: &self.key_id,
            desired: &desired,
            uses: &state.uses,
            last_restart: state.last_restart,
            min_interval: self.timing.min_reload_interval,
            pause,
            covered: &covered,
            now,
        });
        let resource_version = state.resource_version.clone();
        let uid = state.uid.clone();
        let record = |members| AppliedRecord {
            key_id: self.key_id.clone(),
            members,
        };
        let mut changes = Changes {
            record: RecordChange::Keep,
            restarted_at: None,
            pause: if end_pause {
                PauseChange::End {
                    resume: pause.by_reloader.is_some(),
                }
            } else {
                PauseChange::Keep
            },
        };
        if end_pause {
            info!(%workload, resumed = pause.by_reloader.is_some(), "pause period over");
        }
        match verdict {
            Verdict::UpToDate => {
                if end_pause {
                    self.write(&workload, patch_body(&resource_version, &changes))
                        .await;
                }
            }
            Verdict::Baseline {
                why,
                record: members,
            } => {
                self.metrics.skipped(why.as_str(), 1);
                info!(%workload, reason = why.as_str(), "recording digests without a restart");
                changes.record = RecordChange::Set(record(members));
                self.write(&workload, patch_body(&resource_version, &changes))
                    .await;
            }
            Verdict::Forget => {
                info!(%workload, "no reload annotations any more; removing the digest record");
                changes.record = RecordChange::Remove;
                self.write(&workload, patch_body(&resource_version, &changes))
                    .await;
            }
            Verdict::Restart {
                changed,
                record: members,
            } => {
                changes.record = RecordChange::Set(record(members));
                changes.restarted_at = Some(now);
                if self
                    .write(&workload, patch_body(&resource_version, &changes))
                    .await
                {
                    self.metrics.rollout(workload.kind.as_str());
                    let names: Vec<String> = changed.iter().map(ToString::to_string).collect();
                    info!(%workload, changed = ?names, "rolling restart");
                    self.events.reloaded(
                        Regarding {
                            workload: &workload,
                            uid: &uid,
                        },
                        &changed,
                    );
                }
            }
            Verdict::Pause { period, changed } => {
                self.metrics.skipped("paused", 1);
                info!(%workload, ?period, changed = changed.len(), "pause period started; restarting when it ends");
                changes.pause = PauseChange::Start(now);
                if self
                    .write(&workload, patch_body(&resource_version, &changes))
                    .await
                {
                    self.schedule.postpone(workload, Instant::now() + period);
                }
            }
            Verdict::Wait { remaining, changed } => {
                self.metrics.skipped("rate_limited", 1);
                info!(%workload, ?remaining, changed = changed.len(), "restart deferred by the minimum interval or a pause period");
                self.schedule.postpone(workload, Instant::now() + remaining);
            }
        }
    }

    /// Applies `body` to the workload; records the response in the index.
    /// Returns whether it was applied.
    async fn write(&mut self, workload: &WorkloadRef, body: Value) -> bool {
        let client = self.client.clone();
        let result = match workload.kind {
            WorkloadKind::Deployment => patch::<Deployment>(client, workload, body).await,
            WorkloadKind::StatefulSet => patch::<StatefulSet>(client, workload, body).await,
            WorkloadKind::DaemonSet => patch::<DaemonSet>(client, workload, body).await,
        };
        match result {
            Ok(updated) => {
                if let Some(observation) = updated {
                    self.observe_workload(observation, Instant::now() + self.timing.debounce);
                }
                true
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => {
                // Changed since we looked: its watch event brings the new state.
                debug!(%workload, "workload changed meanwhile; evaluating again");
                self.schedule
                    .mark(workload.clone(), Instant::now() + self.timing.debounce);
                false
            }
            Err(kube::Error::Api(status)) if status.is_not_found() => false,
            Err(error) => {
                self.metrics.error("patch");
                warn!(%workload, %error, "could not update the workload; retrying");
                self.schedule
                    .mark(workload.clone(), Instant::now() + RETRY_AFTER_ERROR);
                false
            }
        }
    }
}

async fn patch<W: WorkloadObject>(
    client: kube::Client,
    workload: &WorkloadRef,
    body: Value,
) -> Result<Option<WorkloadObservation>, kube::Error> {
    let api: Api<W> = Api::namespaced(client, &workload.namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let updated = api
        .patch(&workload.name, &params, &Patch::Merge(body))
        .await?;
    Ok(observe_workload(&updated))
}

/// What one patch of a workload writes.
struct Changes {
    record: RecordChange,
    /// Restart: the new `kvsync.io/restartedAt` of the pod template.
    restarted_at: Option<OffsetDateTime>,
    pause: PauseChange,
}

enum RecordChange {
    Keep,
    Set(AppliedRecord),
    Remove,
}

enum PauseChange {
    Keep,
    /// Start a pause period (`kvsync.io/paused-at`).
    Start(OffsetDateTime),
    /// End it; `resume`: unpause a Deployment Reloader paused.
    End {
        resume: bool,
    },
}

/// The one merge patch that records digests, restarts and starts or ends a
/// pause. `resourceVersion` makes it conditional on the workload being as
/// evaluated.
fn patch_body(resource_version: &str, changes: &Changes) -> Value {
    let mut body =
        json!({ "metadata": { "resourceVersion": resource_version, "annotations": {} } });
    let annotations = &mut body["metadata"]["annotations"];
    match &changes.record {
        RecordChange::Keep => {}
        RecordChange::Set(record) => annotations[DIGEST_ANNOTATION] = json!(record.render()),
        RecordChange::Remove => annotations[DIGEST_ANNOTATION] = Value::Null,
    }
    match changes.pause {
        PauseChange::Keep => {}
        PauseChange::Start(at) => annotations[PAUSED_AT_ANNOTATION] = json!(format_time(at)),
        PauseChange::End { resume } => {
            annotations[PAUSED_AT_ANNOTATION] = Value::Null;
            if resume {
                annotations[RELOADER_PAUSED_AT] = Value::Null;
                body["spec"] = json!({ "paused": false });
            }
        }
    }
    if let Some(at) = changes.restarted_at {
        body["spec"]["template"] =
            json!({ "metadata": { "annotations": { RESTARTED_AT_ANNOTATION: format_time(at) } } });
    }
    body
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reload::record::Members;

    fn record() -> AppliedRecord {
        AppliedRecord {
            key_id: "k".into(),
            members: Members::new(),
        }
    }

    #[test]
    fn restart_and_record_go_in_one_conditional_patch() {
        let at = OffsetDateTime::from_unix_timestamp(0).unwrap();
        let changes = Changes {
            record: RecordChange::Set(record()),
            restarted_at: Some(at),
            pause: PauseChange::End { resume: true },
        };
        let body = patch_body("41", &changes);
        assert_eq!(body["metadata"]["resourceVersion"], "41");
        let annotations = &body["metadata"]["annotations"];
        assert_eq!(annotations[DIGEST_ANNOTATION], record().render());
        assert_eq!(
            body["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT_ANNOTATION],
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(body["spec"]["paused"], false, "resumed in the same patch");
        assert!(annotations[RELOADER_PAUSED_AT].is_null());
        assert!(annotations[PAUSED_AT_ANNOTATION].is_null());
    }

    #[test]
    fn baselines_and_pauses_touch_metadata_only_and_forgetting_removes_the_record() {
        let at = OffsetDateTime::from_unix_timestamp(0).unwrap();
        let changes = Changes {
            record: RecordChange::Keep,
            restarted_at: None,
            pause: PauseChange::Start(at),
        };
        let body = patch_body("1", &changes);
        assert!(body.get("spec").is_none(), "{body}");
        assert_eq!(
            body["metadata"]["annotations"],
            json!({ PAUSED_AT_ANNOTATION: "1970-01-01T00:00:00Z" })
        );
        let changes = Changes {
            record: RecordChange::Remove,
            restarted_at: None,
            pause: PauseChange::End { resume: false },
        };
        let body = patch_body("1", &changes);
        assert!(body.get("spec").is_none(), "{body}");
        assert_eq!(
            body["metadata"]["annotations"],
            json!({ DIGEST_ANNOTATION: null, PAUSED_AT_ANNOTATION: null })
        );
    }
}
