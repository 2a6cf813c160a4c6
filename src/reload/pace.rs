//! The pacing of the reload stage, free of I/O: when each dirty workload is
//! next evaluated ([`Schedule`]: coalesced to the first deadline, postponed
//! by rate limits) and how rollouts are spaced across all workloads
//! ([`Pacer`]: `--max-rollouts-per-second`, a slot per waiting workload).
//!
//! ```text
//!  watch event ──mark(now + debounce)──▶ Schedule ──take_due──▶ evaluate (super::decide)
//!                                          ▲                        │ Restart
//!                     postpone(slot) ──────┴── Err(slot) ── Pacer::admit ──Ok──▶ write
//!  Wait (minimum interval, pause) ── postpone(when it is over)
//! ```

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// When each dirty workload is next evaluated.
///
/// Coalescing: the first change marks a workload due one debounce later;
/// further changes before then do not move it, so a steady trickle of changes
/// still gets evaluated (latency is bounded by the debounce) and everything
/// that arrived meanwhile is folded into that one evaluation.
#[derive(Debug)]
pub struct Schedule<K> {
    due: BTreeSet<(Instant, K)>,
    by_key: HashMap<K, Instant>,
}

impl<K> Default for Schedule<K> {
    fn default() -> Self {
        Schedule {
            due: BTreeSet::new(),
            by_key: HashMap::new(),
        }
    }
}

impl<K: Ord + Hash + Clone> Schedule<K> {
    /// Evaluate `key` at `at`, or earlier if it is already due earlier.
    pub fn mark(&mut self, key: K, at: Instant) {
        match self.by_key.get(&key) {
            Some(existing) if *existing <= at => {}
            _ => self.set(key, at),
        }
    }

    /// Evaluate `key` at `at` at the earliest (a rate limit).
    pub fn postpone(&mut self, key: K, at: Instant) {
        match self.by_key.get(&key) {
            Some(existing) if *existing >= at => {}
            _ => self.set(key, at),
        }
    }

    pub fn forget(&mut self, key: &K) {
        if let Some(at) = self.by_key.remove(key) {
            self.due.remove(&(at, key.clone()));
        }
    }

    /// The earliest due time, if anything is scheduled.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Removes and returns what is due at `now`, earliest first: at most
    /// `limit` keys (the rest stay due).
    pub fn take_due(&mut self, now: Instant, limit: usize) -> Vec<K> {
        let mut taken = Vec::new();
        while let Some((at, _)) = self.due.first()
            && *at <= now
            && taken.len() < limit
        {
            let (_, key) = self.due.pop_first().expect("checked above");
            self.by_key.remove(&key);
            taken.push(key);
        }
        taken
    }

    fn set(&mut self, key: K, at: Instant) {
        if let Some(old) = self.by_key.insert(key.clone(), at) {
            self.due.remove(&(old, key.clone()));
        }
        self.due.insert((at, key));
    }
}

/// Spaces rollouts across all workloads: at most one per `spacing`
/// (`--max-rollouts-per-second`), so a Secret used by thousands of
/// workloads restarts them over seconds, not in one storm.
///
/// A workload that must wait is given its own slot, so each waiting
/// workload is looked at once more, at its slot, rather than every waiting
/// workload competing again for each free one. A slot not used (the
/// workload no longer needs a restart by then) is simply lost. Slots that
/// passed while the loop was busy are caught up (the average rate is kept),
/// but never more than the limit in any one second: the last `per_second`
/// rollouts are remembered, and the next waits until the oldest is a second
/// old.
///
/// Written by hand rather than with a rate-limiter crate: those answer
/// "now or not before t" for the next request, not a reservation per key.
#[derive(Debug)]
pub struct Pacer<K> {
    spacing: Duration,
    next_free: Option<Instant>,
    reserved: HashMap<K, Instant>,
    /// The limit (0: none).
    per_second: usize,
    /// When the last `per_second` rollouts were let through, oldest first.
    recent: VecDeque<Instant>,
}

impl<K: Hash + Eq> Pacer<K> {
    /// `per_second`: 0 means no limit.
    pub fn new(per_second: u32) -> Self {
        Pacer {
            spacing: match per_second {
                0 => Duration::ZERO,
                n => Duration::from_secs(1) / n,
            },
            next_free: None,
            reserved: HashMap::new(),
            per_second: usize::try_from(per_second).unwrap_or(usize::MAX),
            recent: VecDeque::new(),
        }
    }

    /// `Ok`: roll `key` out now. `Err(slot)`: look again at `slot`, which
    /// is now `key`'s.
    pub fn admit(&mut self, key: K, now: Instant) -> Result<(), Instant> {
        let slot = match self.reserved.get(&key) {
            Some(slot) => *slot,
            None => {
                let slot = self.next_free.map_or(now, |free| free.max(now));
                self.next_free = Some(slot + self.spacing);
                slot
            }
        };
        let turn = match self.recent.front() {
            Some(oldest) if self.recent.len() >= self.per_second => {
                slot.max(*oldest + Duration::from_secs(1))
            }
            _ => slot,
        };
        if turn <= now {
            self.reserved.remove(&key);
            if self.per_second > 0 {
                self.recent.push_back(now);
                if self.recent.len() > self.per_second {
                    self.recent.pop_front();
                }
            }
            Ok(())
        } else {
            self.reserved.insert(key, slot);
            Err(turn)
        }
    }

    /// Drops `key`'s slot (it no longer needs a restart).
    pub fn release(&mut self, key: &K) {
        self.reserved.remove(key);
    }

    /// How many workloads hold a slot in the future.
    pub fn queued(&self) -> usize {
        self.reserved.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_gives_each_waiting_workload_its_own_slot() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut pacer = Pacer::new(10);
        assert_eq!(pacer.admit("a", t0), Ok(()));
        assert_eq!(pacer.admit("b", t0), Err(t0 + ms(100)));
        assert_eq!(pacer.admit("c", t0), Err(t0 + ms(200)));
        assert_eq!(
            pacer.admit("c", t0 + ms(150)),
            Err(t0 + ms(200)),
            "early: keeps its slot"
        );
        assert_eq!(pacer.queued(), 2);
        assert_eq!(pacer.admit("b", t0 + ms(100)), Ok(()));
        pacer.release(&"c");
        assert_eq!(pacer.queued(), 0);
        assert_eq!(
            pacer.admit("d", t0 + ms(250)),
            Err(t0 + ms(300)),
            "c's slot is lost, not reused"
        );
        assert_eq!(
            pacer.admit("e", t0 + ms(5000)),
            Ok(()),
            "idle time is not saved up"
        );
        let mut unlimited = Pacer::new(0);
        for key in ["a", "b", "c"] {
            assert_eq!(unlimited.admit(key, t0), Ok(()));
        }
    }

    #[test]
    fn passed_slots_are_caught_up_but_never_beyond_the_limit_in_a_second() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut pacer = Pacer::new(2);
        assert_eq!(pacer.admit("a", t0), Ok(()));
        assert_eq!(pacer.admit("b", t0), Err(t0 + ms(500)));
        assert_eq!(pacer.admit("c", t0), Err(t0 + ms(1000)));
        assert_eq!(pacer.admit("d", t0), Err(t0 + ms(1500)));
        // The loop comes back late, at 1.2 s: b's and c's slots have passed.
        let late = t0 + ms(1200);
        assert_eq!(pacer.admit("b", late), Ok(()));
        assert_eq!(pacer.admit("c", late), Ok(()), "a is over a second old");
        assert_eq!(
            pacer.admit("d", t0 + ms(1500)),
            Err(late + ms(1000)),
            "b and c were let through in the last second"
        );
        assert_eq!(pacer.admit("d", late + ms(1000)), Ok(()));
    }

    #[test]
    fn schedule_coalesces_to_the_first_deadline() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut schedule = Schedule::default();
        schedule.mark("a", t0 + s(2));
        schedule.mark("a", t0 + s(3));
        schedule.mark("b", t0 + s(1));
        assert_eq!(schedule.next_due(), Some(t0 + s(1)));
        assert_eq!(schedule.take_due(t0, 10), Vec::<&str>::new());
        schedule.mark("c", t0 + s(2));
        assert_eq!(schedule.take_due(t0 + s(2), 2), ["b", "a"], "the limit");
        assert_eq!(
            schedule.take_due(t0 + s(2), 10),
            ["c"],
            "each once, earliest first"
        );
        assert_eq!(schedule.next_due(), None);
    }

    #[test]
    fn schedule_postpones_for_rate_limits_and_marks_can_pull_back() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut schedule = Schedule::default();
        schedule.mark("a", t0 + s(1));
        schedule.postpone("a", t0 + s(10));
        assert_eq!(schedule.next_due(), Some(t0 + s(10)));
        schedule.postpone("a", t0 + s(5));
        assert_eq!(
            schedule.next_due(),
            Some(t0 + s(10)),
            "postpone never moves earlier"
        );
        schedule.mark("a", t0 + s(2));
        assert_eq!(
            schedule.next_due(),
            Some(t0 + s(2)),
            "a new change is evaluated promptly"
        );
        schedule.forget(&"a");
        assert_eq!(schedule.next_due(), None);
    }
}
