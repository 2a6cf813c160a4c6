//! The reload stage's event loop: folds watch events into the index, marks
//! affected workloads, and when a workload is due evaluates it and writes the
//! verdict back with one patch.
//!
//! Nothing is evaluated before every watcher has listed once: a workload
//! judged against a half-loaded index would see its resources as absent.
//!
//! Writes run concurrently (up to [`MAX_WRITES_IN_FLIGHT`]): the loop issues
//! a restart when its slot under `--max-rollouts-per-second` comes, without
//! waiting for the answers to the ones before, so the API server's latency
//! does not lower the rate. A workload with a write under way is not
//! evaluated again until the answer is in; and every patch is conditional on
//! the `resourceVersion` evaluated, so each change restarts a workload once.
//!
//! ```text
//!  watch events ──▶ index ──mark──▶ Schedule (pace) ──due──▶ evaluate: decide (pure, no I/O)
//!                                                               │ Pacer (pace) admits a restart
//!                                                               ▼
//!                              patch_body (patch, pure) ──▶ start_write ──spawned──▶ write (I/O)
//!                                                                                      │
//!  index, schedule, events, metrics ◀──────────── written (the answer) ◀───────────────┘
//! ```
//!
//! This file is the loop only: the decision is [`super::decide`]'s, the
//! timing [`super::pace`]'s, the patch model [`super::patch`]'s and the
//! writes [`super::write`]'s.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, FuturesUnordered};
use kube::api::ApiResource;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;
use time::OffsetDateTime;
use tracing::{debug, error, info, warn};

use super::annotations::PolicyProblem;
use super::decide::{
    Decision, Pause, Situation, Verdict, decide, desired_members, effective_last_restart,
    record_key_id, unreacted_uses,
};
use super::events::{EventPublisher, Regarding};
use super::index::{Index, ResourceChange, WorkloadObservation};
use super::job::job_name;
use super::kinds::{ResourceRef, RestartMethod, WorkloadKind, WorkloadRef};

mod gate;
mod rollouts;

use super::board::RolloutBoard;
use super::metrics::{Failure, ReloadMetrics, Skip};
use super::pace::{Pacer, Schedule};
use super::patch::{Changes, PauseChange, PendingChange, RecordChange, patch_body};
use super::record::{AppliedRecord, format_time, job_mark, parse_job_mark, pending_mark};
use super::watch::{Input, Listing, Observed, Source, Watched};
use super::write::{Outcome, Purpose, Written, retry_delay, write};
use gate::Held;

/// At most this many workload writes (patches, a CronJob's Job) in flight.
/// Restarts are paced by `--max-rollouts-per-second`; this bounds what the
/// API server is asked at once when it is slow (or the rate unlimited).
const MAX_WRITES_IN_FLIGHT: usize = 64;

/// Timing settings of the stage.
#[derive(Debug)]
pub struct Timing {
    pub debounce: Duration,
    pub min_reload_interval: Duration,
    pub max_rollouts_per_second: u32,
    /// `--rollout-wave-size`.
    pub wave_size: usize,
    /// `--progress-deadline`.
    pub progress_deadline: Duration,
    /// `--resource-label-selector` is set: a resource kvsync does not see
    /// may exist (see [`super::decide::Situation::hidden_may_exist`]).
    pub resources_selected: bool,
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
    /// Readiness waits for its first list (not for an API that may appear later).
    required: bool,
    listed_once: bool,
    /// Keys seen since the last `Init`, while a (re-)list is in progress.
    listing: Option<Listing>,
}

pub struct Stage {
    client: kube::Client,
    /// The APIs of the dynamic kinds (see [`dynamic`]).
    apis: HashMap<WorkloadKind, ApiResource>,
    key_id: String,
    timing: Timing,
    index: Index,
    schedule: Schedule<WorkloadRef>,
    pacer: Pacer<WorkloadRef, String>,
    /// Failed writes in a row, per workload (for the backoff).
    failures: HashMap<WorkloadRef, u32>,
    /// The Job each CronJob with a `kvsync.io/job-pending` mark had made
    /// for it by this process: not made again while the mark is cleared.
    jobs_made: HashMap<WorkloadRef, String>,
    /// Writes under way, answering with a [`Written`].
    writes: FuturesUnordered<BoxFuture<'static, Written>>,
    /// The workloads they are for; `true` once one became due again meanwhile
    /// (it is evaluated when the answer is in).
    writing: HashMap<WorkloadRef, bool>,
    /// Due workloads of the batch being evaluated, not looked at yet.
    evaluating: HashSet<WorkloadRef>,
    /// Restarts the wave gate holds back, and why (see [`super::waves`]).
    held: HashMap<WorkloadRef, Held>,
    /// Halts announced (failed workload, resource, change id): one Event each.
    halts_announced: HashSet<(WorkloadRef, ResourceRef, String)>,
    /// Where the rollout summaries of kvsync's Secrets go (see [`super::board`]).
    board: RolloutBoard,
    /// kvsync Secrets whose rollout summary may have changed, and when they
    /// are summarized (batched: a fan-out touches one Secret thousands of times).
    dirty_summaries: HashSet<(String, ResourceRef)>,
    summaries_due: Option<Instant>,
    sources: Vec<SourceState>,
    ready: bool,
    events: EventPublisher,
    metrics: ReloadMetrics,
}

/// Where the stage reports what it does: its metrics, and the rollout
/// summaries for the sync stage.
pub struct Reports {
    pub metrics: ReloadMetrics,
    pub board: RolloutBoard,
}

impl Stage {
    pub fn new(
        client: kube::Client,
        key_id: String,
        timing: Timing,
        sources: Vec<Source>,
        apis: HashMap<WorkloadKind, ApiResource>,
        namespace_selector: bool,
        Reports { metrics, board }: Reports,
    ) -> Self {
        Stage {
            pacer: Pacer::new(timing.max_rollouts_per_second),
            events: EventPublisher::new(client.clone(), metrics.clone()),
            metrics,
            client,
            apis,
            key_id,
            timing,
            index: Index::new(namespace_selector),
            schedule: Schedule::default(),
            failures: HashMap::new(),
            jobs_made: HashMap::new(),
            writes: FuturesUnordered::new(),
            writing: HashMap::new(),
            evaluating: HashSet::new(),
            held: HashMap::new(),
            halts_announced: HashSet::new(),
            board,
            dirty_summaries: HashSet::new(),
            summaries_due: None,
            sources: sources
                .into_iter()
                .map(|source| SourceState {
                    required: source.required,
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
        self.report_unlisted();
        loop {
            let room = MAX_WRITES_IN_FLIGHT.saturating_sub(self.writes.len());
            let due = if self.ready && room > 0 {
                self.schedule.next_due()
            } else {
                None
            };
            tokio::select! {
                input = inputs.next() => match input {
                    Some(input) => self.handle(input),
                    None => return,
                },
                Some(written) = self.writes.next(), if !self.writes.is_empty() => {
                    self.written(written);
                }
                () = sleep_until(due) => {
                    // The batch counts as still due until each is looked at
                    // (the wave gate must not take an earlier wave's
                    // workload, due in the same batch, for settled).
                    let batch = self.schedule.take_due(Instant::now(), room);
                    self.evaluating.extend(batch.iter().cloned());
                    for workload in batch {
                        self.evaluating.remove(&workload);
                        self.evaluate_contained(workload);
                    }
                }
                () = sleep_until(self.summaries_due), if self.ready => self.publish_summaries(),
            }
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Watch { source, event } => self.watch_event(source, event),
            Input::WatchFailed { source, error } => {
                self.metrics.error(Failure::Watch);
                let watched = self.sources.get(source).map(|s| &s.source);
                warn!(?watched, %error, "watch failed; retrying with backoff");
                if is_forbidden(&error) {
                    self.stop_waiting_for(source);
                }
            }
            Input::Written(Some(observation)) => {
                self.observe(Observed::Resource(observation), Seen::Written)
            }
            Input::Written(None) => {}
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
            Observed::Resource(observation) => {
                let namespace = observation.namespace.clone();
                if observation.state.writer.is_some() {
                    self.touch_resource(&namespace, observation.resource.clone());
                }
                match self.index.apply_resource(observation) {
                    ResourceChange::Changed { affected } => self.mark_all(affected, due),
                    ResourceChange::Unchanged {
                        reacting,
                        resume_changed,
                    } => {
                        if seen == Seen::Written {
                            self.metrics.skipped(Skip::DataUnchanged, reacting as u64);
                        }
                        if resume_changed {
                            self.wake_held(&namespace, None);
                        }
                    }
                    ResourceChange::Stale => {}
                }
            }
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

    fn observe_workload(&mut self, mut observation: WorkloadObservation, due: Instant) {
        let workload = observation.workload.clone();
        let previous = self
            .index
            .workload(&workload)
            .map(|w| (w.restart_stamp, w.last_restart));
        let stamp = observation.state.restart_stamp;
        let (last_restart, in_future) =
            effective_last_restart(stamp, previous, OffsetDateTime::now_utc());
        observation.state.last_restart = last_restart;
        if in_future {
            warn!(%workload, stamp = ?stamp.map(format_time),
                  "the last restart is stamped in the future (hand edit or clock skew); timing the next restart from now");
        }
        let uid = observation.state.uid.clone();
        let change = self.index.apply_workload(observation);
        // A namespace outside `--namespace-selector` is not the operator's to
        // write Events in; its problems are reported if it comes into scope.
        if self.index.is_selected(&workload.namespace) {
            self.report_problems(&workload, &uid, &change.new_problems);
        }
        if change.progress_changed {
            self.wake_held(&workload.namespace, Some(&workload.name));
        }
        self.touch(&workload);
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
            self.metrics.error(Failure::InvalidAnnotation);
            warn!(%workload, %problem, "unusable reload annotation");
        }
        self.events.invalid_annotations(
            Regarding {
                workload,
                api_version: self.api_version(workload.kind),
                uid,
            },
            problems,
        );
    }

    fn forget(&mut self, observed: Observed) {
        let due = Instant::now() + self.timing.debounce;
        match observed {
            Observed::Resource(r) => {
                if r.state.writer.is_some() {
                    self.touch_resource(&r.namespace, r.resource.clone());
                }
                let affected = self.index.remove_resource(&r.namespace, &r.resource);
                self.mark_all(affected, due);
            }
            Observed::Workload(w) => {
                self.touch(&w.workload);
                self.index.remove_workload(&w.workload);
                self.schedule.forget(&w.workload);
                release(
                    &mut self.pacer,
                    &mut self.schedule,
                    &self.metrics,
                    &w.workload,
                );
                self.failures.remove(&w.workload);
                self.jobs_made.remove(&w.workload);
                self.unhold(&w.workload);
                self.wake_held(&w.workload.namespace, Some(&w.workload.name));
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

    /// A watch the operator may not run (RBAC without that kind, e.g. an
    /// older chart without CronJobs) is reported and not waited for: the
    /// other kinds are reloaded meanwhile.
    fn stop_waiting_for(&mut self, source: usize) {
        let Some(state) = self.sources.get_mut(source) else {
            return;
        };
        if state.required && !state.listed_once {
            state.required = false;
            self.metrics.error(Failure::WatchForbidden);
            warn!(watched = %state.source, "forbidden to list this kind; reloading the others without it (grant list and watch to the operator)");
            self.events.watch_forbidden(&state.source.to_string());
            self.become_ready_when_listed();
        }
    }

    /// Publishes the watches readiness still waits for.
    fn report_unlisted(&self) {
        let unlisted = self
            .sources
            .iter()
            .filter(|s| s.required && !s.listed_once)
            .map(|s| s.source.to_string())
            .collect();
        self.metrics.set_unlisted(unlisted);
    }

    fn become_ready_when_listed(&mut self) {
        self.report_unlisted();
        if self.ready || !self.sources.iter().all(|s| s.listed_once || !s.required) {
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

    /// [`Self::evaluate`], with a fault contained to its workload: a panic
    /// (a defect of kvsync's, whatever the workload's annotations say) is
    /// counted and logged, and the workload is looked at again after the
    /// error backoff; the stage and every other workload go on.
    fn evaluate_contained(&mut self, workload: WorkloadRef) {
        let evaluated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.evaluate(workload.clone())
        }));
        self.touch(&workload);
        if evaluated.is_err() {
            self.metrics.error(Failure::Panic);
            let failures = self.failures.entry(workload.clone()).or_default();
            *failures += 1;
            let delay = retry_delay(*failures);
            error!(%workload, ?delay, "evaluating the workload failed (a defect of kvsync); retrying after a backoff");
            self.schedule.mark(workload, Instant::now() + delay);
        }
    }

    fn evaluate(&mut self, workload: WorkloadRef) {
        if let Some(again) = self.writing.get_mut(&workload) {
            *again = true;
            return;
        }
        let state = self
            .index
            .workload(&workload)
            .filter(|s| !s.deleting && self.index.is_selected(&workload.namespace));
        let Some(state) = state else {
            // Out of scope or going: it leaves the rollout queue.
            self.unhold(&workload);
            release(
                &mut self.pacer,
                &mut self.schedule,
                &self.metrics,
                &workload,
            );
            return;
        };
        if let Some(mark) = &state.job_pending {
            let owed = OwedJob {
                mark: mark.clone(),
                resource_version: state.resource_version.clone(),
                uid: state.uid.clone(),
                method: state.restart,
            };
            self.make_owed_job(workload, owed);
            return;
        }
        self.jobs_made.remove(&workload);
        let resources = self.index.resources(&workload.namespace);
        let desired = desired_members(&state.policy, &state.uses, &state.keys, resources);
        let unreacted = unreacted_uses(&state.policy, &state.uses, &state.keys, resources);
        let key_id = record_key_id(&self.key_id, &state.keys);
        let covered = self.index.covered_by_template(&workload);
        let now = OffsetDateTime::now_utc();
        let pause = Pause {
            period: state.policy.pause_period,
            started: state.paused_at,
            by_reloader: state.reloader_paused_since,
        };
        let Decision {
            verdict,
            end_pause,
            unreacted,
        } = decide(&Situation {
            opted_in: !state.policy.is_inert(),
            applied: &state.applied,
            key_id: &key_id,
            desired: &desired,
            unreacted: &unreacted,
            hidden_may_exist: self.timing.resources_selected,
            uses: &state.uses,
            last_restart: state.last_restart,
            min_interval: self.timing.min_reload_interval,
            pause,
            covered: &covered,
            suspended: matches!(state.restart, RestartMethod::Job { suspended: true }),
            now,
        });
        let resource_version = state.resource_version.clone();
        let uid = state.uid.clone();
        let method = state.restart;
        let record = |members| AppliedRecord::new(key_id, members).with_unreacted(unreacted);
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
            pending: PendingChange::Keep,
            job_pending: PendingChange::Keep,
        };
        if end_pause {
            info!(%workload, resumed = pause.by_reloader.is_some(), "pause period over");
        }
        if !matches!(verdict, Verdict::Restart { .. }) {
            release(
                &mut self.pacer,
                &mut self.schedule,
                &self.metrics,
                &workload,
            );
        }
        let held = match &verdict {
            Verdict::Pause { period, changed } => Some(pending_mark(now + *period, changed)),
            Verdict::Wait { remaining, changed } => Some(pending_mark(now + *remaining, changed)),
            _ => None,
        };
        changes.pending = match (held, &state.pending_mark) {
            (Some(mark), Some(written)) if mark == *written => PendingChange::Keep,
            (Some(mark), _) => PendingChange::Set(mark),
            (None, Some(_)) => PendingChange::Remove,
            (None, None) => PendingChange::Keep,
        };
        if !matches!(verdict, Verdict::Restart { .. }) {
            self.unhold(&workload);
            self.wake_held(&workload.namespace, Some(&workload.name));
        }
        let body = |changes: &Changes| patch_body(&resource_version, method, changes);
        match verdict {
            Verdict::UpToDate => {
                if end_pause || matches!(changes.pending, PendingChange::Remove) {
                    self.start_write(workload, body(&changes), None, Purpose::Record);
                }
            }
            Verdict::Baseline {
                why,
                record: members,
            } => {
                self.metrics.skipped(Skip::Baseline(why), 1);
                info!(%workload, reason = why.as_str(), "recording digests without a restart");
                changes.record = RecordChange::Set(record(members));
                self.start_write(workload, body(&changes), None, Purpose::Record);
            }
            Verdict::Forget => {
                info!(%workload, "no reload annotations any more; removing the digest record");
                changes.record = RecordChange::Remove;
                self.start_write(workload, body(&changes), None, Purpose::Record);
            }
            Verdict::Restart {
                changed,
                record: members,
            } => {
                if let Some(held) = self.wave_gate(&workload, &changed) {
                    self.hold(workload, held);
                    return;
                }
                self.unhold(&workload);
                let record = record(members);
                let namespace = workload.namespace.clone();
                let admitted = self
                    .pacer
                    .admit(workload.clone(), namespace, Instant::now());
                next_turn(&self.pacer, &mut self.schedule, &self.metrics);
                if !admitted {
                    return;
                }
                let purpose = if matches!(method, RestartMethod::Job { .. }) {
                    // The record first, naming the Job it owes (see `super::job`).
                    let change = format!("{} {}", format_time(now), record.render());
                    let job = job_name(&workload.name, &uid, &change);
                    changes.job_pending = PendingChange::Set(job_mark(&job, &changed));
                    Purpose::JobOwed
                } else {
                    Purpose::Restart {
                        changed: changed.iter().map(ToString::to_string).collect(),
                        uid,
                        method,
                    }
                };
                changes.record = RecordChange::Set(record);
                changes.restarted_at = Some(now);
                self.start_write(workload, body(&changes), None, purpose);
            }
            Verdict::Pause { period, changed } => {
                self.metrics.skipped(Skip::Paused, 1);
                info!(%workload, ?period, changed = changed.len(), "pause period started; restarting when it ends");
                changes.pause = PauseChange::Start(now);
                self.start_write(workload, body(&changes), None, Purpose::Pause { period });
            }
            Verdict::Wait { remaining, changed } => {
                self.metrics.skipped(Skip::RateLimited, 1);
                info!(%workload, ?remaining, changed = changed.len(), "restart deferred by the minimum interval or a pause period");
                self.schedule
                    .postpone(workload.clone(), Instant::now() + remaining);
                if matches!(changes.pending, PendingChange::Set(_)) {
                    self.start_write(workload, body(&changes), None, Purpose::Record);
                }
            }
        }
    }

    /// Makes the Job a CronJob's recorded change owes, and clears its mark
    /// (see [`super::job`]): the restart is announced then. A Job this
    /// process made already is not made again (only the mark is cleared),
    /// nor is one for a CronJob suspended meanwhile.
    fn make_owed_job(&mut self, workload: WorkloadRef, owed: OwedJob) {
        let (job, changed) = parse_job_mark(&owed.mark);
        let changes = Changes {
            job_pending: PendingChange::Remove,
            ..Changes::none()
        };
        let body = patch_body(&owed.resource_version, owed.method, &changes);
        let made = self.jobs_made.get(&workload) == Some(&job);
        if made || matches!(owed.method, RestartMethod::Job { suspended: true }) {
            info!(%workload, job, made, "clearing the Job mark without making the Job");
            self.start_write(workload, body, None, Purpose::Record);
            return;
        }
        let purpose = Purpose::Restart {
            changed,
            uid: owed.uid,
            method: owed.method,
        };
        self.start_write(workload, body, Some(job), purpose);
    }

    /// Starts writing `body` to the workload (after making its CronJob's
    /// Job, named `job`, if any); [`Stage::written`] takes the answer.
    fn start_write(
        &mut self,
        workload: WorkloadRef,
        body: Value,
        job: Option<String>,
        purpose: Purpose,
    ) {
        self.writing.insert(workload.clone(), false);
        let client = self.client.clone();
        let api = self.apis.get(&workload.kind).cloned();
        self.writes.push(Box::pin(async move {
            let (outcome, job_made) = write(client, api, &workload, body, job).await;
            Written {
                workload,
                purpose,
                outcome,
                job_made,
            }
        }));
        self.metrics.set_writes_in_flight(self.writes.len());
    }

    /// Takes the answer to a write: records the workload as the server
    /// returned it, or retries (a conflict at once, another failure after a
    /// backoff).
    fn written(&mut self, written: Written) {
        self.metrics.set_writes_in_flight(self.writes.len());
        let Written {
            workload,
            purpose,
            outcome,
            job_made,
        } = written;
        let due_again = self.writing.remove(&workload).unwrap_or(false);
        self.wake_held(&workload.namespace, Some(&workload.name));
        self.touch(&workload);
        if let Some(job) = job_made {
            self.jobs_made.insert(workload.clone(), job);
        }
        match outcome {
            Outcome::Applied(updated) => {
                self.failures.remove(&workload);
                if let Some(observation) = updated {
                    self.observe_workload(*observation, Instant::now() + self.timing.debounce);
                }
                match purpose {
                    Purpose::Record => {}
                    Purpose::Restart {
                        changed,
                        uid,
                        method,
                    } => {
                        let names = &changed;
                        let regarding = Regarding {
                            workload: &workload,
                            api_version: self.api_version(workload.kind),
                            uid: &uid,
                        };
                        if method == RestartMethod::OnDelete {
                            self.metrics.skipped(Skip::OnDelete, 1);
                            info!(%workload, changed = ?names, "pod template updated; updateStrategy OnDelete: the pods take it only when deleted");
                            self.events.awaiting_pod_deletion(regarding, &changed);
                        } else {
                            self.metrics.rollout(workload.kind.as_str());
                            info!(%workload, changed = ?names, "rolling restart");
                            self.events.reloaded(regarding, &changed);
                        }
                    }
                    Purpose::Pause { period } => {
                        self.schedule
                            .postpone(workload.clone(), Instant::now() + period);
                    }
                    Purpose::JobOwed => {
                        debug!(%workload, "change recorded; making its Job");
                        self.schedule.mark(workload.clone(), Instant::now());
                    }
                }
            }
            Outcome::Skipped => {}
            Outcome::Failed(_, kube::Error::Api(status)) if status.is_conflict() => {
                // Changed since we looked: its watch event brings the new state.
                debug!(%workload, "workload changed meanwhile; evaluating again");
                self.schedule
                    .mark(workload.clone(), Instant::now() + self.timing.debounce);
            }
            Outcome::Failed(_, kube::Error::Api(status)) if status.is_not_found() => {}
            Outcome::Failed(what, error) => self.failed(&workload, what, &error),
        }
        if due_again {
            self.schedule.mark(workload, Instant::now());
        }
    }

    /// The `apiVersion` the workload's kind is served as.
    fn api_version(&self, kind: WorkloadKind) -> &str {
        self.apis
            .get(&kind)
            .map_or("apps/v1", |api| api.api_version.as_str())
    }

    /// Counts and logs a failed write (`what`: the patch or the Job) and looks at
    /// the workload again after a backoff that doubles with each failure in
    /// a row. A refusal (a 4xx: an admission webhook, a 422) is published as
    /// one Warning Event, on the first failure of the row.
    fn failed(&mut self, workload: &WorkloadRef, what: Failure, error: &kube::Error) {
        let failures = self.failures.entry(workload.clone()).or_default();
        *failures += 1;
        let failures = *failures;
        let delay = retry_delay(failures);
        let refused = matches!(error, kube::Error::Api(status) if (400..500).contains(&status.code) && status.code != 429);
        self.metrics
            .error(if refused { Failure::Refused } else { what });
        warn!(%workload, %error, failures, ?delay, "could not update the workload; retrying after a backoff");
        if refused
            && failures == 1
            && let Some(state) = self.index.workload(workload)
        {
            let regarding = Regarding {
                workload,
                api_version: self.api_version(workload.kind),
                uid: &state.uid,
            };
            self.events.refused(regarding, &error.to_string());
        }
        self.schedule
            .postpone(workload.clone(), Instant::now() + delay);
    }
}

/// What making a CronJob's owed Job needs of its state.
struct OwedJob {
    /// Its `kvsync.io/job-pending`.
    mark: String,
    resource_version: String,
    uid: String,
    method: RestartMethod,
}

/// Takes `workload` out of the rollout queue; the next one moves up (free
/// of `Stage` so that it can run while the index is borrowed).
fn release(
    pacer: &mut Pacer<WorkloadRef, String>,
    schedule: &mut Schedule<WorkloadRef>,
    metrics: &ReloadMetrics,
    workload: &WorkloadRef,
) {
    pacer.release(workload);
    next_turn(pacer, schedule, metrics);
}

/// Schedules the workload whose rollout turn is next for its turn, and
/// tells how many wait.
fn next_turn(
    pacer: &Pacer<WorkloadRef, String>,
    schedule: &mut Schedule<WorkloadRef>,
    metrics: &ReloadMetrics,
) {
    if let Some((head, at)) = pacer.next_turn(Instant::now()) {
        schedule.mark(head.clone(), at);
    }
    metrics.set_queued(pacer.queued());
}

fn is_forbidden(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.is_forbidden())
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}
