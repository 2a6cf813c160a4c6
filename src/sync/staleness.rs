//! How far behind each KeyVaultSecret is — pure, kept in memory, and
//! summarised per namespace and per failure reason so that the metrics built
//! from it stay bounded whatever the number of objects.
//!
//! ```text
//!  Staleness
//!   └─ objects: ObjectKey ─▶ Track { interval, current_since, failing }
//!         current_since  last successful sync (written or confirmed unchanged),
//!                        or when this process first saw the object
//!         failing        (reason, since): the ongoing run of failed syncs
//!
//!  summary(now) ─▶ per namespace: oldest age, largest age ÷ interval
//!                  per reason:    longest ongoing failure
//! ```
//!
//! Only objects that refresh (a `refreshInterval` other than `0`) count for
//! age: a sync-once object is current by definition. Before an object's first
//! success in this process its age runs from when it was first seen, so an
//! object that never syncs grows old instead of staying invisible (an
//! operator restart therefore resets ages; `status.lastSyncTime` is not used
//! because it records the last *change*, not the last confirmation).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::key::ObjectKey;

#[derive(Debug, Clone)]
struct Track {
    interval: Option<Duration>,
    current_since: Instant,
    failing: Option<(&'static str, Instant)>,
}

/// Per-object sync ages.
#[derive(Debug, Default)]
pub struct Staleness {
    objects: HashMap<ObjectKey, Track>,
}

/// The oldest object of one namespace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NamespaceAge {
    /// Seconds since the least recently synced object was last current.
    pub oldest_seconds: f64,
    /// The largest age ÷ refresh interval: above 2, some object missed two refreshes.
    pub max_interval_ratio: f64,
}

/// What the metrics show.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    pub namespaces: BTreeMap<String, NamespaceAge>,
    /// Reason → seconds of the longest ongoing run of failures with it.
    pub failing_seconds: BTreeMap<&'static str, f64>,
}

impl Staleness {
    fn track(
        &mut self,
        object: &ObjectKey,
        interval: Option<Duration>,
        now: Instant,
    ) -> &mut Track {
        let track = self.objects.entry(object.clone()).or_insert_with(|| Track {
            interval,
            current_since: now,
            failing: None,
        });
        track.interval = interval;
        track
    }

    /// The object's Secret was confirmed current at `now`.
    pub fn succeeded(&mut self, object: &ObjectKey, interval: Option<Duration>, now: Instant) {
        let track = self.track(object, interval, now);
        track.current_since = now;
        track.failing = None;
    }

    /// A sync of the object failed with `reason` at `now`.
    pub fn failed(
        &mut self,
        object: &ObjectKey,
        interval: Option<Duration>,
        reason: &'static str,
        now: Instant,
    ) {
        let track = self.track(object, interval, now);
        let since = track.failing.map_or(now, |(_, since)| since);
        track.failing = Some((reason, since));
    }

    /// Drops the object (it was deleted).
    pub fn forget(&mut self, object: &ObjectKey) {
        self.objects.remove(object);
    }

    /// Keeps only objects for which `alive` holds.
    pub fn retain(&mut self, alive: impl Fn(&ObjectKey) -> bool) {
        self.objects.retain(|object, _| alive(object));
    }

    /// Ages as of `now`, per namespace and per failure reason.
    pub fn summary(&self, now: Instant) -> Summary {
        let mut summary = Summary::default();
        for (object, track) in &self.objects {
            if let Some(interval) = track.interval {
                let age = now.saturating_duration_since(track.current_since);
                let ratio = age.as_secs_f64() / interval.as_secs_f64();
                let entry = summary
                    .namespaces
                    .entry(object.namespace().to_owned())
                    .or_insert(NamespaceAge {
                        oldest_seconds: 0.0,
                        max_interval_ratio: 0.0,
                    });
                entry.oldest_seconds = entry.oldest_seconds.max(age.as_secs_f64());
                entry.max_interval_ratio = entry.max_interval_ratio.max(ratio);
            }
            if let Some((reason, since)) = track.failing {
                let seconds = now.saturating_duration_since(since).as_secs_f64();
                let longest = summary.failing_seconds.entry(reason).or_insert(0.0);
                *longest = longest.max(seconds);
            }
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn the_oldest_object_of_each_namespace_counts() {
        let start = Instant::now();
        let mut staleness = Staleness::default();
        staleness.succeeded(&"a/one".into(), Some(MINUTE), start);
        staleness.succeeded(&"a/two".into(), Some(10 * MINUTE), start + MINUTE);
        staleness.succeeded(&"b/one".into(), Some(MINUTE), start + 2 * MINUTE);
        staleness.succeeded(&"b/once".into(), None, start);
        let summary = staleness.summary(start + 3 * MINUTE);
        assert_eq!(
            summary.namespaces["a"],
            NamespaceAge {
                oldest_seconds: 180.0,
                max_interval_ratio: 3.0
            }
        );
        assert_eq!(
            summary.namespaces["b"],
            NamespaceAge {
                oldest_seconds: 60.0,
                max_interval_ratio: 1.0
            },
            "a sync-once object never grows old"
        );
        assert!(summary.failing_seconds.is_empty());
    }

    #[test]
    fn failures_age_from_the_first_of_a_run_and_a_success_ends_it() {
        let start = Instant::now();
        let mut staleness = Staleness::default();
        staleness.failed(&"a/one".into(), Some(MINUTE), "RemoteNotFound", start);
        staleness.failed(&"a/one".into(), Some(MINUTE), "Throttled", start + MINUTE);
        let summary = staleness.summary(start + 5 * MINUTE);
        assert_eq!(summary.failing_seconds, [("Throttled", 300.0)].into());
        assert_eq!(
            summary.namespaces["a"].oldest_seconds, 300.0,
            "never synced: old since first seen"
        );
        staleness.succeeded(&"a/one".into(), Some(MINUTE), start + 6 * MINUTE);
        let summary = staleness.summary(start + 6 * MINUTE);
        assert!(summary.failing_seconds.is_empty());
        assert_eq!(summary.namespaces["a"].oldest_seconds, 0.0);
    }

    #[test]
    fn deleted_objects_leave_no_series() {
        let start = Instant::now();
        let mut staleness = Staleness::default();
        staleness.failed(&"a/one".into(), Some(MINUTE), "Forbidden", start);
        staleness.succeeded(&"b/one".into(), Some(MINUTE), start);
        staleness.forget(&"a/one".into());
        staleness.retain(|object| object.as_str() != "b/one");
        assert_eq!(staleness.summary(start), Summary::default());
    }
}
