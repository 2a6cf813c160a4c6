//! The wave gate's side of the stage (see [`super::super::waves`]): which
//! restarts wait for an earlier wave or a halted change, and waking them
//! when the workload they wait for moves on.

use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::super::events::Regarding;
use super::super::index::{ResourceState, WorkloadState};
use super::super::kinds::{ResourceRef, RestartMethod, WorkloadRef};
use super::super::rollout::Progress;
use super::super::waves::{self, Gate, Peer, Place, Standing};
use super::{Stage, release};

/// Why the wave gate holds a restart back (see [`super::super::waves`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Held {
    /// The resource whose change is gated.
    pub(super) resource: ResourceRef,
    /// The workload of an earlier wave it waits for, or whose failed
    /// rollout halted the change (by name, in the same namespace).
    pub(super) peer: String,
    pub(super) halted: bool,
}

/// A held restart is looked at again when the workload it waits for moves
/// on, and at the latest after this long (a safety net: a deadline passing
/// is no event).
const HOLD_RECHECK: Duration = Duration::from_secs(30);

impl Stage {
    /// The wave gate's answer for restarting `workload` for `changed`:
    /// `None` to go now.
    pub(super) fn wave_gate(
        &self,
        workload: &WorkloadRef,
        changed: &[ResourceRef],
    ) -> Option<Held> {
        let me = self.index.workload(workload)?;
        let place = Place {
            wave: me.wave,
            name: &workload.name,
        };
        let now = Instant::now();
        let resources = self.index.resources(&workload.namespace);
        for resource in changed {
            let reacting = self.index.reacting_to(&workload.namespace, resource);
            if self.timing.wave_size == 0 && reacting.iter().all(|(_, s)| s.wave.is_none()) {
                continue; // one wave: nothing to wait for
            }
            let peers: Vec<Peer> = reacting
                .iter()
                .filter(|(w, _)| w != workload)
                .map(|(w, s)| Peer {
                    place: Place {
                        wave: s.wave,
                        name: &w.name,
                    },
                    standing: self.standing(w, s, now),
                })
                .collect();
            let resumed = resources.get(resource).is_some_and(ResourceState::resumed);
            let (peer, halted) = match waves::gate(&place, &peers, self.timing.wave_size, resumed) {
                Gate::Go => continue,
                Gate::Hold { waiting_for } => (waiting_for, false),
                Gate::Halted { failed } => (failed, true),
            };
            return Some(Held {
                resource: resource.clone(),
                peer,
                halted,
            });
        }
        None
    }

    /// Where a workload reacting to a change stands for the wave gate.
    pub(super) fn standing(
        &self,
        workload: &WorkloadRef,
        state: &WorkloadState,
        now: Instant,
    ) -> Standing {
        let behind = self.held.contains_key(workload)
            || self.evaluating.contains(workload)
            || self.schedule.contains(workload)
            || self.pacer.contains(workload)
            || self.writing.contains_key(workload);
        if behind {
            return Standing::Behind;
        }
        if state.restart == RestartMethod::OnDelete {
            // Its pods take the data when deleted: no rollout to wait for.
            return Standing::Current(Progress::NotTracked);
        }
        Standing::Current(self.progress(workload, state, now))
    }

    /// Holds a restart back: out of the rollout queue, looked at again when
    /// the workload it waits for moves on (see [`Self::wake_held`]).
    pub(super) fn hold(&mut self, workload: WorkloadRef, held: Held) {
        release(
            &mut self.pacer,
            &mut self.schedule,
            &self.metrics,
            &workload,
        );
        if held.halted {
            self.announce_halt(&workload.namespace, &held);
        } else {
            debug!(%workload, waiting_for = held.peer, resource = %held.resource, "restart waits for an earlier wave");
        }
        self.schedule
            .postpone(workload.clone(), Instant::now() + HOLD_RECHECK);
        self.held.insert(workload, held);
        self.count_held();
    }

    pub(super) fn unhold(&mut self, workload: &WorkloadRef) {
        if self.held.remove(workload).is_some() {
            self.count_held();
        }
    }

    /// Looks again at the held restarts of `namespace` waiting for `peer`
    /// (all of them: `None`).
    pub(super) fn wake_held(&mut self, namespace: &str, peer: Option<&str>) {
        if self.held.is_empty() {
            return;
        }
        let now = Instant::now();
        for (workload, held) in &self.held {
            if workload.namespace == namespace && peer.is_none_or(|p| held.peer == p) {
                self.schedule.mark(workload.clone(), now);
            }
        }
    }

    fn count_held(&self) {
        let halted = self.held.values().filter(|h| h.halted).count();
        self.metrics.set_held(self.held.len() - halted, halted);
    }

    /// One log line and one Warning Event on the failed workload per halted
    /// change.
    fn announce_halt(&mut self, namespace: &str, held: &Held) {
        let Some(change) = self
            .index
            .resources(namespace)
            .get(&held.resource)
            .map(ResourceState::change_id)
        else {
            return;
        };
        let failed = self
            .index
            .reacting_to(namespace, &held.resource)
            .into_iter()
            .find(|(w, _)| w.name == held.peer)
            .map(|(w, s)| (w, s.uid.clone()));
        let Some((failed, uid)) = failed else {
            return;
        };
        if !self
            .halts_announced
            .insert((failed.clone(), held.resource.clone(), change.clone()))
        {
            return;
        }
        warn!(workload = %failed, resource = %held.resource, change, "rollout failed; halting the restarts of later waves for this change");
        let regarding = Regarding {
            workload: &failed,
            api_version: self.api_version(failed.kind),
            uid: &uid,
        };
        self.events
            .rollout_halted(regarding, &held.resource, &change);
    }
}
