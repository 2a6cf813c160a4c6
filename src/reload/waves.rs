//! Waves gated on health, free of I/O: whether a workload due for a restart
//! may go now, or waits for the earlier waves of the same change — or the
//! change is halted because an earlier wave's rollout failed.
//!
//! ```text
//!  workloads reacting to the changed Secret/ConfigMap, in one namespace
//!     ordered by (kvsync.io/rollout-wave, unannotated last; name),
//!     cut into chunks of --rollout-wave-size (0: one wave per annotation value)
//!
//!  wave 0 ─── all current and Complete? ──yes──▶ wave 1 may go ──▶ …
//!     │  some still to restart, or Progressing ──▶ Hold (looked at again when
//!     │                                             a rollout's progress changes)
//!     └─ some Failed (progress deadline) ─────────▶ Halted: nothing more restarts for
//!                                                   this change until the data changes
//!                                                   again or `kvsync.io/resume-rollout`
//!                                                   on the Secret names this change
//! ```
//!
//! Level-triggered like the rest of the stage: the gate reads only the
//! workloads' records and statuses, so a restarted operator continues a
//! wave rollout where it stood, and a halted one stays halted.

use std::cmp::Ordering;

use super::rollout::Progress;

/// A workload's place in the wave order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place<'a> {
    /// `kvsync.io/rollout-wave`; unannotated workloads go last.
    pub wave: Option<u32>,
    pub name: &'a str,
}

impl Ord for Place<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        let wave = |p: &Place| p.wave.unwrap_or(u32::MAX);
        wave(self)
            .cmp(&wave(other))
            .then(self.wave.is_none().cmp(&other.wave.is_none()))
            .then(self.name.cmp(other.name))
    }
}

impl PartialOrd for Place<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Where a workload reacting to the change stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Its restart for the change is still to come.
    Behind,
    /// Its record holds the present data; its rollout stands here.
    Current(Progress),
}

/// One workload reacting to the changed resource.
#[derive(Clone, Debug)]
pub struct Peer<'a> {
    pub place: Place<'a>,
    pub standing: Standing,
}

/// The gate's answer for one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Its wave may roll out.
    Go,
    /// An earlier wave is not done: this workload (named) is still to
    /// restart or its rollout is still progressing.
    Hold { waiting_for: String },
    /// An earlier wave's rollout failed: this workload (named).
    Halted { failed: String },
}

/// A wave, comparable: the annotation value (unannotated last), then the
/// chunk of `--rollout-wave-size` within it.
type Wave = (u32, bool, usize);

/// The wave of every place, in order: one pass over the sorted places.
fn waves<'p>(sorted: &[&'p Place<'p>], size: usize) -> Vec<(&'p Place<'p>, Wave)> {
    let mut out = Vec::with_capacity(sorted.len());
    let mut first = 0;
    for (index, place) in sorted.iter().enumerate() {
        if index > 0 && sorted[index - 1].wave != place.wave {
            first = index;
        }
        let chunk = (index - first).checked_div(size).unwrap_or(0);
        out.push((
            *place,
            (place.wave.unwrap_or(u32::MAX), place.wave.is_none(), chunk),
        ));
    }
    out
}

/// Whether `me` may restart now, given every peer reacting to the change
/// (`me` among them). `resumed`: a person resumed this change, so failed
/// rollouts of earlier waves no longer stop it.
pub fn gate(me: &Place, peers: &[Peer], size: usize, resumed: bool) -> Gate {
    let mut sorted: Vec<&Place> = peers.iter().map(|p| &p.place).collect();
    sorted.push(me);
    sorted.sort();
    sorted.dedup();
    let waves = waves(&sorted, size);
    let wave = |place: &Place| {
        let index = waves
            .binary_search_by(|(p, _)| (*p).cmp(place))
            .expect("every place is sorted in");
        waves[index].1
    };
    let mine = wave(me);
    let mut earlier: Vec<&Peer> = peers.iter().filter(|p| wave(&p.place) < mine).collect();
    earlier.sort_by(|a, b| a.place.cmp(&b.place));
    if !resumed
        && let Some(failed) = earlier
            .iter()
            .find(|p| p.standing == Standing::Current(Progress::Failed))
    {
        return Gate::Halted {
            failed: failed.place.name.to_owned(),
        };
    }
    let waiting = earlier.iter().find(|p| match p.standing {
        Standing::Behind => true,
        Standing::Current(progress) => progress == Progress::Progressing,
    });
    match waiting {
        Some(peer) => Gate::Hold {
            waiting_for: peer.place.name.to_owned(),
        },
        None => Gate::Go,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(wave: Option<u32>, name: &str, standing: Standing) -> Peer<'_> {
        Peer {
            place: Place { wave, name },
            standing,
        }
    }

    const BEHIND: Standing = Standing::Behind;
    const DONE: Standing = Standing::Current(Progress::Complete);
    const ROLLING: Standing = Standing::Current(Progress::Progressing);
    const FAILED: Standing = Standing::Current(Progress::Failed);

    fn place(wave: Option<u32>, name: &str) -> Place<'_> {
        Place { wave, name }
    }

    #[test]
    fn without_annotations_or_a_size_everything_is_one_wave() {
        let peers = [
            peer(None, "a", BEHIND),
            peer(None, "b", FAILED),
            peer(None, "c", BEHIND),
        ];
        assert_eq!(gate(&place(None, "c"), &peers, 0, false), Gate::Go);
    }

    #[test]
    fn the_canary_wave_goes_first_and_the_rest_waits_for_it_to_be_healthy() {
        let canary_behind = [peer(Some(0), "canary", BEHIND), peer(None, "web", BEHIND)];
        assert_eq!(
            gate(&place(Some(0), "canary"), &canary_behind, 0, false),
            Gate::Go
        );
        assert_eq!(
            gate(&place(None, "web"), &canary_behind, 0, false),
            Gate::Hold {
                waiting_for: "canary".into()
            }
        );
        let canary_rolling = [peer(Some(0), "canary", ROLLING), peer(None, "web", BEHIND)];
        assert_eq!(
            gate(&place(None, "web"), &canary_rolling, 0, false),
            Gate::Hold {
                waiting_for: "canary".into()
            }
        );
        let canary_done = [peer(Some(0), "canary", DONE), peer(None, "web", BEHIND)];
        assert_eq!(gate(&place(None, "web"), &canary_done, 0, false), Gate::Go);
    }

    #[test]
    fn a_failed_earlier_wave_halts_the_later_ones_until_resumed() {
        let peers = [
            peer(Some(0), "canary", FAILED),
            peer(Some(1), "api", BEHIND),
            peer(None, "web", BEHIND),
        ];
        let halted = Gate::Halted {
            failed: "canary".into(),
        };
        assert_eq!(gate(&place(Some(1), "api"), &peers, 0, false), halted);
        assert_eq!(gate(&place(None, "web"), &peers, 0, false), halted);
        assert_eq!(gate(&place(Some(0), "canary"), &peers, 0, false), Gate::Go);
        assert_eq!(gate(&place(Some(1), "api"), &peers, 0, true), Gate::Go);
        assert_eq!(
            gate(&place(None, "web"), &peers, 0, true),
            Gate::Hold {
                waiting_for: "api".into()
            }
        );
    }

    #[test]
    fn the_wave_size_cuts_one_annotation_value_into_chunks_by_name() {
        let peers = [
            peer(None, "a", DONE),
            peer(None, "b", ROLLING),
            peer(None, "c", BEHIND),
            peer(None, "d", BEHIND),
            peer(None, "e", BEHIND),
        ];
        // Chunks of two: [a b] [c d] [e].
        assert_eq!(gate(&place(None, "a"), &peers, 2, false), Gate::Go);
        assert_eq!(
            gate(&place(None, "c"), &peers, 2, false),
            Gate::Hold {
                waiting_for: "b".into()
            }
        );
        assert_eq!(
            gate(&place(None, "e"), &peers, 2, false),
            Gate::Hold {
                waiting_for: "b".into()
            }
        );
        let later = [
            peer(None, "a", DONE),
            peer(None, "b", DONE),
            peer(None, "c", BEHIND),
            peer(None, "d", BEHIND),
            peer(None, "e", BEHIND),
        ];
        assert_eq!(gate(&place(None, "d"), &later, 2, false), Gate::Go);
        assert_eq!(
            gate(&place(None, "e"), &later, 2, false),
            Gate::Hold {
                waiting_for: "c".into()
            }
        );
    }

    #[test]
    fn annotated_waves_come_in_number_order_before_the_unannotated() {
        let mut places = [
            place(None, "a"),
            place(Some(2), "b"),
            place(Some(0), "z"),
            place(Some(10), "c"),
        ];
        places.sort();
        let names: Vec<&str> = places.iter().map(|p| p.name).collect();
        assert_eq!(names, ["z", "b", "c", "a"]);
    }
}
