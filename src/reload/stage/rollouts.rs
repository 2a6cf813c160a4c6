//! The rollout summaries of kvsync's Secrets (see [`super::super::board`]):
//! how many of the workloads reacting to each run its current data with
//! their rollout complete, and why the others are behind. Recomputed, in
//! batches, for the Secrets whose workloads moved.

use std::time::{Duration, Instant};

use super::super::board::Summary;
use super::super::kinds::{ResourceRef, RestartMethod, WorkloadKind, WorkloadRef};
use super::super::rollout::Progress;
use super::Stage;
use crate::api::{BehindWorkload, HaltedRollout, RolloutStatus};

/// Changes are summarized this long after the first one (a batch).
const SUMMARY_DELAY: Duration = Duration::from_millis(500);

/// At most this many behind workloads are named in a status.
const NAMED_BEHIND: usize = 10;

impl Stage {
    /// The kvsync Secrets `workload` uses may have another summary now.
    pub(super) fn touch(&mut self, workload: &WorkloadRef) {
        let Some(state) = self.index.workload(workload) else {
            return;
        };
        let resources = self.index.resources(&workload.namespace);
        let touched: Vec<ResourceRef> = state
            .uses
            .keys()
            .filter(|r| resources.get(r).is_some_and(|s| s.writer.is_some()))
            .cloned()
            .collect();
        for resource in touched {
            self.touch_resource(&workload.namespace, resource);
        }
    }

    pub(super) fn touch_resource(&mut self, namespace: &str, resource: ResourceRef) {
        self.dirty_summaries
            .insert((namespace.to_owned(), resource));
        self.summaries_due
            .get_or_insert_with(|| Instant::now() + SUMMARY_DELAY);
    }

    /// Summarizes the touched Secrets onto the board.
    pub(super) fn publish_summaries(&mut self) {
        self.summaries_due = None;
        let now = Instant::now();
        for (namespace, resource) in std::mem::take(&mut self.dirty_summaries) {
            let Some(state) = self.index.resources(&namespace).get(&resource) else {
                self.board.remove(&namespace, &resource.name);
                continue;
            };
            let (Some(writer), Some(version)) = (state.writer.clone(), state.version) else {
                continue;
            };
            let summary = Summary {
                secret_version: version,
                status: self.summarize(&namespace, &resource, now),
            };
            self.board
                .publish(&namespace, &resource.name, &writer, summary);
        }
    }

    fn summarize(&self, namespace: &str, resource: &ResourceRef, now: Instant) -> RolloutStatus {
        let reacting = self.index.reacting_to(namespace, resource);
        let mut status = RolloutStatus {
            workloads: u32::try_from(reacting.len()).unwrap_or(u32::MAX),
            ..RolloutStatus::default()
        };
        for (workload, state) in &reacting {
            let progress = self.progress(workload, state, now);
            match self.behind(workload, state.restart, progress) {
                None => status.current += 1,
                Some(reason) if status.behind.len() < NAMED_BEHIND => {
                    status.behind.push(BehindWorkload {
                        workload: format!("{}/{}", workload.kind.as_str(), workload.name),
                        reason,
                    });
                }
                Some(_) => {}
            }
            if let Some(held) = self.held.get(workload)
                && held.halted
                && held.resource == *resource
                && status.halted.is_none()
            {
                let failed = reacting
                    .iter()
                    .find(|(w, _)| w.name == held.peer)
                    .map_or(held.peer.clone(), |(w, _)| {
                        format!("{}/{}", w.kind.as_str(), w.name)
                    });
                let change = self
                    .index
                    .resources(namespace)
                    .get(resource)
                    .map(|r| r.change_id())
                    .unwrap_or_default();
                status.halted = Some(HaltedRollout {
                    workload: failed,
                    change,
                });
            }
        }
        status
    }

    /// Why `workload` does not run the current data with its rollout
    /// complete yet (`None`: it does).
    fn behind(
        &self,
        workload: &WorkloadRef,
        restart: RestartMethod,
        progress: Progress,
    ) -> Option<String> {
        if let Some(held) = self.held.get(workload) {
            return Some(if held.halted {
                format!("halted: the rollout of {} failed", held.peer)
            } else {
                format!("waiting for an earlier wave ({})", held.peer)
            });
        }
        if self.writing.contains_key(workload) {
            return Some("restarting".to_owned());
        }
        if self.pacer.contains(workload) {
            return Some("waiting for a rollout slot (--max-rollouts-per-second)".to_owned());
        }
        if self.schedule.contains(workload) {
            let held_back = self
                .index
                .workload(workload)
                .is_some_and(|s| s.pending_mark.is_some());
            return Some(if held_back {
                "held back by the minimum reload interval or a pause period (kvsync.io/restart-pending)"
                    .to_owned()
            } else {
                "due for a restart".to_owned()
            });
        }
        match (progress, restart) {
            (Progress::Complete | Progress::NotTracked, _) => None,
            (Progress::Progressing, RestartMethod::OnDelete) => Some(
                "updateStrategy OnDelete: its pods take the data when they are deleted".to_owned(),
            ),
            (Progress::Progressing, _) => Some("rolling out".to_owned()),
            (Progress::Failed, _) => Some("its rollout failed (progress deadline)".to_owned()),
        }
    }

    /// Its rollout's progress, `--progress-deadline` applied to the kinds
    /// without a deadline of their own.
    pub(super) fn progress(
        &self,
        workload: &WorkloadRef,
        state: &super::super::index::WorkloadState,
        now: Instant,
    ) -> Progress {
        match workload.kind {
            WorkloadKind::StatefulSet | WorkloadKind::DaemonSet => state.progress.with_deadline(
                state.progressing_since,
                self.timing.progress_deadline,
                now,
            ),
            _ => state.progress,
        }
    }
}
