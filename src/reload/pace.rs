//! The pacing of the reload stage, free of I/O: when each dirty workload is
//! next evaluated ([`Schedule`]: coalesced to the first deadline, postponed
//! by rate limits) and in which order and at which rate rollouts go out
//! ([`Pacer`]: `--max-rollouts-per-second`, fair across namespaces).
//!
//! ```text
//!  watch event ──mark(now + debounce)──▶ Schedule ──take_due──▶ evaluate (super::decide)
//!                                          ▲                        │ Restart
//!                                          │                        ▼
//!       mark(head, its turn) ◀── Pacer::next_turn ◀── admit: the head of the fair order
//!                                          │          and a token free? ──yes──▶ write
//!                                          │                        └─no──▶ waits in its
//!                                          │                                namespace's queue
//!       any other verdict, deletion ─▶ Pacer::release (leaves the queue at once)
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

    pub fn contains(&self, key: &K) -> bool {
        self.by_key.contains_key(key)
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

/// Spaces rollouts across all workloads: at most one per `spacing`, and
/// never more than `per_second` in any one second
/// (`--max-rollouts-per-second`), so a Secret used by thousands of workloads
/// restarts them over seconds, not in one storm.
///
/// Workloads waiting for their turn queue per namespace, and the namespaces
/// take turns (round robin): one namespace's fan-out over 2,000 workloads
/// delays another namespace's single restart by one turn, not by 2,000.
/// Only the head of that order is ever scheduled ([`Pacer::next_turn`]), so
/// nothing is reserved ahead: a workload that no longer needs its restart
/// leaves the queue ([`Pacer::release`]) and the ones behind it move up at
/// once — a cancelled restart costs the others nothing. The order is the
/// queue's alone, so health-gated waves can replace it without touching the
/// rate.
///
/// Written by hand rather than with a rate-limiter crate: those answer "now
/// or not before t" for the next request, not whose turn it is.
#[derive(Debug)]
pub struct Pacer<K, G> {
    spacing: Duration,
    /// The limit (0: none).
    per_second: usize,
    /// When the last `per_second` rollouts were let through, oldest first.
    recent: VecDeque<Instant>,
    /// Waiting workloads by namespace, in arrival order.
    queues: HashMap<G, VecDeque<K>>,
    /// The namespaces with waiting workloads, whose turn is next first.
    turns: VecDeque<G>,
    /// Each waiting workload's namespace.
    waiting: HashMap<K, G>,
}

impl<K: Hash + Eq + Clone, G: Hash + Eq + Clone> Pacer<K, G> {
    /// `per_second`: 0 means no limit.
    pub fn new(per_second: u32) -> Self {
        Pacer {
            spacing: match per_second {
                0 => Duration::ZERO,
                n => Duration::from_secs(1) / n,
            },
            per_second: usize::try_from(per_second).unwrap_or(usize::MAX),
            recent: VecDeque::new(),
            queues: HashMap::new(),
            turns: VecDeque::new(),
            waiting: HashMap::new(),
        }
    }

    /// Whether `key` (of namespace `group`) may roll out now: it is the head
    /// of the fair order and a token is free. Otherwise it waits in its
    /// namespace's queue (keeping its place if it already did).
    pub fn admit(&mut self, key: K, group: G, now: Instant) -> bool {
        if !self.waiting.contains_key(&key) {
            self.enqueue(key.clone(), group);
        }
        let head = self.head() == Some(&key);
        if !head || self.token_at(now) > now {
            return false;
        }
        self.pop_head();
        if self.per_second > 0 {
            self.recent.push_back(now);
            if self.recent.len() > self.per_second {
                self.recent.pop_front();
            }
        }
        true
    }

    /// The workload whose turn is next, and when it comes (the stage
    /// evaluates it then).
    pub fn next_turn(&self, now: Instant) -> Option<(&K, Instant)> {
        self.head().map(|key| (key, self.token_at(now)))
    }

    /// Takes `key` out of the queue (it no longer needs a restart).
    pub fn release(&mut self, key: &K) {
        let Some(group) = self.waiting.remove(key) else {
            return;
        };
        let Some(queue) = self.queues.get_mut(&group) else {
            return;
        };
        queue.retain(|waiting| waiting != key);
        if queue.is_empty() {
            self.queues.remove(&group);
            self.turns.retain(|turn| *turn != group);
        }
    }

    /// Whether `key` waits for its turn.
    pub fn contains(&self, key: &K) -> bool {
        self.waiting.contains_key(key)
    }

    /// How many workloads wait for their turn.
    pub fn queued(&self) -> usize {
        self.waiting.len()
    }

    fn enqueue(&mut self, key: K, group: G) {
        let queue = self.queues.entry(group.clone()).or_default();
        if queue.is_empty() {
            self.turns.push_back(group.clone());
        }
        queue.push_back(key.clone());
        self.waiting.insert(key, group);
    }

    fn head(&self) -> Option<&K> {
        let group = self.turns.front()?;
        self.queues.get(group)?.front()
    }

    /// Takes the head out and gives its namespace's turn to the next one.
    fn pop_head(&mut self) {
        let Some(group) = self.turns.pop_front() else {
            return;
        };
        let Some(queue) = self.queues.get_mut(&group) else {
            return;
        };
        if let Some(key) = queue.pop_front() {
            self.waiting.remove(&key);
        }
        if queue.is_empty() {
            self.queues.remove(&group);
        } else {
            self.turns.push_back(group);
        }
    }

    /// When the next rollout may go out: one spacing after the last, and a
    /// second after the oldest of the last `per_second`.
    fn token_at(&self, now: Instant) -> Instant {
        let spaced = self.recent.back().map_or(now, |last| *last + self.spacing);
        let windowed = match self.recent.front() {
            Some(oldest) if self.recent.len() >= self.per_second => {
                *oldest + Duration::from_secs(1)
            }
            _ => now,
        };
        spaced.max(windowed).max(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollouts_are_spaced_and_never_beyond_the_limit_in_a_second() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut pacer = Pacer::new(2);
        assert!(pacer.admit("a", "ns", t0));
        assert!(!pacer.admit("b", "ns", t0), "one spacing after a");
        assert!(!pacer.admit("c", "ns", t0));
        assert_eq!(pacer.next_turn(t0), Some((&"b", t0 + ms(500))));
        assert_eq!(pacer.queued(), 2);
        assert!(!pacer.admit("c", "ns", t0 + ms(500)), "b's turn, not c's");
        assert!(pacer.admit("b", "ns", t0 + ms(500)));
        assert_eq!(
            pacer.next_turn(t0 + ms(500)),
            Some((&"c", t0 + ms(1000))),
            "two in the last second: c waits for a to be a second old"
        );
        assert!(pacer.admit("c", "ns", t0 + ms(1000)));
        assert_eq!(pacer.queued(), 0);
        assert_eq!(pacer.next_turn(t0 + ms(1000)), None);
        assert!(
            pacer.admit("d", "ns", t0 + ms(5000)),
            "idle time is not saved up, and a free token is used at once"
        );
        let mut unlimited = Pacer::new(0);
        for key in ["a", "b", "c"] {
            assert!(unlimited.admit(key, "ns", t0));
        }
    }

    #[test]
    fn a_cancelled_restart_gives_its_turn_back_at_once() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut pacer = Pacer::new(5);
        assert!(pacer.admit(0, "fanout", t0));
        for key in 1..150 {
            assert!(!pacer.admit(key, "fanout", t0));
        }
        for key in 1..150 {
            pacer.release(&key);
        }
        assert_eq!(pacer.queued(), 0, "nothing reserved ahead");
        assert!(!pacer.admit(500, "other", t0 + ms(100)));
        assert_eq!(
            pacer.next_turn(t0 + ms(100)),
            Some((&500, t0 + ms(200))),
            "one spacing after the last rollout, not 149 spacings"
        );
    }

    #[test]
    fn namespaces_take_turns() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let key = |name: &str| name.to_owned();
        let mut pacer = Pacer::new(1);
        assert!(pacer.admit(key("big-0"), "big", t0));
        for i in 1..2000 {
            assert!(!pacer.admit(format!("big-{i}"), "big", t0));
        }
        assert!(!pacer.admit(key("small"), "small", t0));
        assert_eq!(pacer.next_turn(t0), Some((&key("big-1"), t0 + second)));
        assert!(pacer.admit(key("big-1"), "big", t0 + second));
        assert_eq!(
            pacer.next_turn(t0 + second),
            Some((&key("small"), t0 + 2 * second)),
            "the other namespace's single restart comes next, not after 1,998 more"
        );
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
