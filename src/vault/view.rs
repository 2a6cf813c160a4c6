//! One vault as seen by one identity: the newest listing attempt, values
//! read, who is interested in which names, and the poller that keeps the
//! listing fresh.
//!
//! ```text
//!   subscribe(interval) ── shorter than the period? ── wake ──┐
//!                                                             ▼
//!   poller ── one period (shortest live interval) after the newest listing,
//!     │       or one backoff after a failed one (freshness::next_listing) ──▶ GET /secrets (paged)
//!     │                              diff with the last good listing (detect::changed_names)
//!     ▼                                                       │
//!   subscribers interested in a changed name ◀── "sync now" ──┘   (all of them after an outage)
//!
//!   readers: listing as recent as their Freshness needs (freshness::decide), else one
//!            listing for all who wait (single-flight); the poller re-plans from it.
//!            latest values: cached while the listing says current (detect::still_current),
//!            pinned versions: re-read once their read is older than the reader's bound;
//!            either way one GET per ref for all concurrent readers (single-flight).
//!   versions of one secret (GET /secrets/{name}/versions, asked only for a latest version
//!            not valid yet, or for a previous value): kept while they list the latest
//!            version their reader read, so listed again when a new version came.
//! ```
//!
//! So an idle refresh cycle costs one listing per (vault, identity), however
//! many KeyVaultSecrets and refs use it, plus one GET per pinned ref; a
//! changed secret is read once, and its versions listed at most once more.
//!
//! Memory follows use: values of names gone from the listing are dropped at
//! once, values nobody read for a while by [`VaultView::prune`], and the
//! whole view by its owner once [`VaultView::idle`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedSender;

use super::detect::{ReadStamp, Snapshot, changed_names, still_current};
use super::freshness::{Attempt, LastListing};
use super::versions::VersionInfo;
use super::{RemoteSecret, VaultError};

/// Which names a subscriber's Secret depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interest {
    /// Sorted, each once (a slice: every subscriber keeps one, and a
    /// one-name `BTreeSet` would allocate an 11-slot node).
    Names(Box<[String]>),
    /// `dataFrom.find`: any change in the vault may matter.
    Everything,
}

impl Interest {
    fn touched_by(&self, changed: &BTreeSet<String>) -> bool {
        match self {
            Interest::Everything => !changed.is_empty(),
            Interest::Names(names) => names.iter().any(|name| changed.contains(name)),
        }
    }
}

struct Subscription {
    interest: Interest,
    interval: Duration,
    renewed: Instant,
}

impl Subscription {
    /// A subscriber that stopped renewing (deleted, moved to another vault)
    /// is forgotten after three of its intervals.
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.renewed) > self.interval * 3
    }
}

/// The subscriptions of a view, with their intervals counted: every refresh
/// renews its subscription, and finding the shortest interval by a scan each
/// time was quadratic in the objects per view (11 % of the operator's CPU
/// with 10,000 objects on one vault).
#[derive(Default)]
struct Subscribers {
    by_key: HashMap<String, Subscription>,
    /// How many subscriptions have each interval.
    intervals: BTreeMap<Duration, usize>,
}

impl Subscribers {
    fn insert(&mut self, key: &str, subscription: Subscription) {
        *self.intervals.entry(subscription.interval).or_default() += 1;
        let old = match self.by_key.get_mut(key) {
            Some(existing) => Some(std::mem::replace(existing, subscription)),
            None => self.by_key.insert(key.to_owned(), subscription),
        };
        if let Some(old) = old {
            uncount(&mut self.intervals, old.interval);
        }
    }

    /// Drops the subscriptions of the subscribers `keep` refuses.
    fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let intervals = &mut self.intervals;
        self.by_key.retain(|key, s| {
            let kept = keep(key);
            if !kept {
                uncount(intervals, s.interval);
            }
            kept
        });
    }

    /// Drops the subscriptions that expired by `now`.
    fn prune(&mut self, now: Instant) {
        let intervals = &mut self.intervals;
        self.by_key.retain(|_, s| {
            let expired = s.expired(now);
            if expired {
                uncount(intervals, s.interval);
            }
            !expired
        });
    }

    /// The polling period: the shortest interval subscribed.
    fn shortest(&self) -> Option<Duration> {
        self.intervals.keys().next().copied()
    }

    fn longest(&self) -> Option<Duration> {
        self.intervals.keys().next_back().copied()
    }
}

fn uncount(intervals: &mut BTreeMap<Duration, usize>, interval: Duration) {
    if let Some(count) = intervals.get_mut(&interval) {
        *count -= 1;
        if *count == 0 {
            intervals.remove(&interval);
        }
    }
}

/// The listing side of a view (behind an async lock held while listing, so
/// that concurrent readers wait for the listing in flight).
#[derive(Default)]
pub struct ListingState {
    /// The newest listing attempt, successful or not.
    pub newest: Option<Attempt<Arc<Snapshot>>>,
    /// The newest successful listing (what changes are found against).
    pub last_good: Option<Arc<Snapshot>>,
    /// Consecutive failed attempts.
    pub failures: u32,
}

impl ListingState {
    pub fn last(&self) -> Option<LastListing> {
        self.newest.as_ref().map(|attempt| LastListing {
            started: attempt.started,
            ended: attempt.ended,
            failures: self.failures,
            retry_after: attempt
                .outcome
                .as_ref()
                .err()
                .and_then(VaultError::retry_after),
        })
    }
}

/// What was last read of one (name, version, as_pem).
pub struct ValueRead {
    pub attempt: Attempt<RemoteSecret>,
    /// For values read successfully: what judges whether they are current.
    pub stamp: Option<ReadStamp>,
}

/// What was last listed of one secret's versions.
pub type VersionsRead = Attempt<Arc<[VersionInfo]>>;

/// One cache entry (a ref's value, a secret's versions); its async lock
/// makes concurrent reads one request.
pub struct Slot<T> {
    pub read: tokio::sync::Mutex<Option<T>>,
    last_used: Mutex<Option<Instant>>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            read: tokio::sync::Mutex::new(None),
            last_used: Mutex::new(None),
        }
    }
}

/// The cache entries of one kind, by key.
type Slots<K, T> = Mutex<HashMap<K, Arc<Slot<T>>>>;

/// The entry of `key` (made on first use), marked used now.
fn slot_of<K: Clone + Eq + std::hash::Hash, T>(slots: &Slots<K, T>, key: &K) -> Arc<Slot<T>> {
    let slot = slots
        .lock()
        .unwrap()
        .entry(key.clone())
        .or_default()
        .clone();
    *slot.last_used.lock().unwrap() = Some(Instant::now());
    slot
}

/// Keeps the entries that are in use (a read in flight) or `keep` accepts.
fn retain_slots<K, T>(slots: &Slots<K, T>, keep: impl Fn(&K, &Slot<T>) -> bool) {
    slots
        .lock()
        .unwrap()
        .retain(|key, slot| Arc::strong_count(slot) > 1 || keep(key, slot));
}

pub type ValueKey = (String, Option<String>, bool);

/// State of one (vault, identity).
pub struct VaultView {
    pub listing: tokio::sync::Mutex<ListingState>,
    values: Slots<ValueKey, ValueRead>,
    /// By secret name.
    versions: Slots<String, VersionsRead>,
    subscribers: Mutex<Subscribers>,
    poller_running: Mutex<bool>,
    /// Listing was forbidden for this identity: read by GET until then.
    listing_refused_until: Mutex<Option<Instant>>,
    /// Wakes the poller to plan again: a shorter subscriber came, or
    /// someone else's listing attempt ended.
    pub wake: Notify,
    last_used: Mutex<Instant>,
}

impl Default for VaultView {
    fn default() -> Self {
        VaultView {
            listing: Default::default(),
            values: Default::default(),
            versions: Default::default(),
            subscribers: Default::default(),
            poller_running: Default::default(),
            listing_refused_until: Default::default(),
            wake: Notify::new(),
            last_used: Mutex::new(Instant::now()),
        }
    }
}

/// Unix seconds now (the operator's clock).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl VaultView {
    /// Marks the view as in use (it is not dropped while used).
    pub fn touch(&self) {
        *self.last_used.lock().unwrap() = Instant::now();
    }

    /// Registers (or renews) interest; returns whether a poller must be
    /// started. Wakes a running poller when the period got shorter.
    pub fn subscribe(&self, subscriber: &str, interest: Interest, interval: Duration) -> bool {
        let shorter = {
            let mut subscribers = self.subscribers.lock().unwrap();
            let before = subscribers.shortest();
            subscribers.insert(
                subscriber,
                Subscription {
                    interest,
                    interval,
                    renewed: Instant::now(),
                },
            );
            before.is_some_and(|period| interval < period)
        };
        let mut running = self.poller_running.lock().unwrap();
        let start = !std::mem::replace(&mut *running, true);
        if shorter && !start {
            self.wake.notify_one();
        }
        start
    }

    /// Forgets at once the subscribers `keep` refuses (deleted, out of
    /// scope, or no longer able to use this identity); a poller left with
    /// nobody stops at its next turn.
    pub fn retain_subscribers(&self, keep: impl Fn(&str) -> bool) {
        self.subscribers.lock().unwrap().retain(keep);
    }

    /// The polling period (shortest interval of live subscribers), pruning
    /// expired ones; `None` when nobody is left and the poller should stop.
    pub fn poll_period(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut subscribers = self.subscribers.lock().unwrap();
        subscribers.prune(now);
        let period = subscribers.shortest();
        if period.is_none() {
            *self.poller_running.lock().unwrap() = false;
        }
        period
    }

    /// Tells every subscriber to sync now (the listing works again after failing).
    pub fn notify_all(&self, notify: &UnboundedSender<String>) {
        for key in self.subscribers.lock().unwrap().by_key.keys() {
            let _ = notify.send(key.clone());
        }
    }

    /// Tells subscribers whose names changed between two listings to sync now.
    pub fn notify_changes(
        &self,
        before: &Snapshot,
        after: &Snapshot,
        notify: &UnboundedSender<String>,
    ) -> usize {
        let changed = changed_names(before, after);
        if changed.is_empty() {
            return 0;
        }
        let subscribers = self.subscribers.lock().unwrap();
        let mut notified = 0;
        for (key, subscription) in &subscribers.by_key {
            if subscription.interest.touched_by(&changed) {
                let _ = notify.send(key.clone());
                notified += 1;
            }
        }
        notified
    }

    /// The cache entry of one ref (made on first use).
    pub fn slot(&self, key: &ValueKey) -> Arc<Slot<ValueRead>> {
        slot_of(&self.values, key)
    }

    /// The cache entry of one secret's versions (made on first use).
    pub fn versions_slot(&self, name: &str) -> Arc<Slot<VersionsRead>> {
        slot_of(&self.versions, &name.to_owned())
    }

    /// Drops cached values and versions of names the listing no longer has.
    pub fn forget_unlisted(&self, listing: &Snapshot) {
        retain_slots(&self.values, |(name, _, _), _| listing.contains_key(name));
        retain_slots(&self.versions, |name, _| listing.contains_key(name));
    }

    /// Drops cached values and versions nobody read for `unused_for`, and
    /// returns whether the whole view is idle: no subscriber, no poller, no
    /// use for `unused_for`.
    pub fn prune(&self, unused_for: Duration, now: Instant) -> bool {
        let stale = |at: Option<Instant>| at.is_none_or(|at| now.duration_since(at) > unused_for);
        retain_slots(&self.values, |_, slot| {
            !stale(*slot.last_used.lock().unwrap())
        });
        retain_slots(&self.versions, |_, slot| {
            !stale(*slot.last_used.lock().unwrap())
        });
        let nobody_subscribed = !*self.poller_running.lock().unwrap();
        nobody_subscribed && stale(Some(*self.last_used.lock().unwrap()))
    }

    /// The longest interval of a live subscriber (values it reads are kept
    /// at least three times that long).
    pub fn longest_interval(&self) -> Duration {
        self.subscribers
            .lock()
            .unwrap()
            .longest()
            .unwrap_or_default()
    }

    pub fn listing_refused(&self) -> bool {
        self.listing_refused_until
            .lock()
            .unwrap()
            .is_some_and(|until| Instant::now() < until)
    }

    pub fn refuse_listing_until(&self, until: Instant) {
        *self.listing_refused_until.lock().unwrap() = Some(until);
    }

    /// A Key Vault event's hint ([`crate::vault_events`]) that `name` changed
    /// (`None`: anything may have, e.g. the vault's access policy): forgets
    /// the cached latest values of it, so that the next read asks the vault
    /// as of now, and returns the subscribers it concerns (to be told to
    /// sync). Pinned versions never change and are kept.
    pub fn hinted(&self, name: Option<&str>) -> Vec<String> {
        self.values
            .lock()
            .unwrap()
            .retain(|(cached, version, _), _| {
                version.is_some() || name.is_some_and(|name| name != cached)
            });
        let subscribers = self.subscribers.lock().unwrap();
        subscribers
            .by_key
            .iter()
            .filter(|(_, subscription)| match (name, &subscription.interest) {
                (None, _) | (_, Interest::Everything) => true,
                (Some(name), Interest::Names(names)) => names.iter().any(|n| n == name),
            })
            .map(|(key, _)| key.clone())
            .collect()
    }
}

pub fn value_key(name: &str, version: Option<&str>, as_pem: bool) -> ValueKey {
    (
        name.to_owned(),
        version.filter(|v| !v.is_empty()).map(str::to_owned),
        as_pem,
    )
}

/// Error for a read that the listing already answers.
pub fn answered_by_listing(snapshot: &Snapshot, name: &str) -> Option<VaultError> {
    snapshot
        .get(name)
        .filter(|info| !info.enabled)
        .map(|_| VaultError::Disabled(name.to_owned()))
}

/// A cached latest-version value that the listing says is still the latest.
pub fn current_value(read: &ValueRead, listing: &Snapshot) -> Option<RemoteSecret> {
    let secret = read.attempt.outcome.as_ref().ok()?;
    let info = listing.get(&secret.name)?;
    read.stamp
        .as_ref()
        .is_some_and(|stamp| still_current(stamp, info))
        .then(|| secret.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::vault::RemoteSecretInfo;

    const MINUTE: Duration = Duration::from_secs(60);

    fn names(names: &[&str]) -> Interest {
        Interest::Names(names.iter().map(|n| n.to_string()).collect())
    }

    fn listing(names: &[&str]) -> Snapshot {
        names
            .iter()
            .map(|name| {
                let info = RemoteSecretInfo {
                    name: name.to_string(),
                    enabled: true,
                    tags: BTreeMap::new(),
                    updated: Some(1),
                };
                (name.to_string(), info)
            })
            .collect()
    }

    fn woken(view: &VaultView) -> bool {
        futures::FutureExt::now_or_never(view.wake.notified()).is_some()
    }

    #[test]
    fn the_period_follows_the_shortest_live_subscription() {
        let mut subscribers = Subscribers::default();
        let at = Instant::now();
        let every = |secs| Subscription {
            interest: Interest::Everything,
            interval: Duration::from_secs(secs),
            renewed: at,
        };
        subscribers.insert("ns/a", every(3600));
        subscribers.insert("ns/b", every(5));
        subscribers.insert("ns/c", every(60));
        assert_eq!(subscribers.shortest(), Some(Duration::from_secs(5)));
        assert_eq!(subscribers.longest(), Some(Duration::from_secs(3600)));
        subscribers.insert("ns/b", every(60));
        assert_eq!(
            subscribers.shortest(),
            Some(Duration::from_secs(60)),
            "a renewal replaces the subscriber's interval"
        );
        subscribers.prune(at + Duration::from_secs(200));
        assert_eq!(
            subscribers.shortest(),
            Some(Duration::from_secs(3600)),
            "unrenewed for three intervals: expired"
        );
        subscribers.prune(at + Duration::from_secs(4 * 3600));
        assert_eq!(subscribers.shortest(), None);
        assert!(subscribers.intervals.is_empty());
    }

    #[tokio::test]
    async fn a_shorter_subscriber_wakes_the_poller_and_sets_the_period() {
        let view = VaultView::default();
        assert!(
            view.subscribe("ns/slow", names(&["a"]), 60 * MINUTE),
            "first starts the poller"
        );
        assert!(!view.subscribe("ns/fast", names(&["b"]), Duration::from_secs(5)));
        assert!(woken(&view), "the sleeping poller re-plans at once");
        assert_eq!(view.poll_period(), Some(Duration::from_secs(5)));
        assert!(!view.subscribe("ns/medium", names(&["c"]), MINUTE));
        assert!(!woken(&view), "a longer one changes nothing");
        // The fast one moves to a long interval: the period follows.
        view.subscribe("ns/fast", names(&["b"]), 60 * MINUTE);
        assert_eq!(view.poll_period(), Some(MINUTE));
    }

    #[test]
    fn values_follow_the_listing_and_their_readers() {
        let view = VaultView::default();
        let (gone, kept, held) = (
            value_key("gone", None, false),
            value_key("kept", None, false),
            value_key("held", None, false),
        );
        for key in [&gone, &kept, &held] {
            view.slot(key);
            view.versions_slot(&key.0);
        }
        let holder = view.slot(&held);
        view.forget_unlisted(&listing(&["kept"]));
        let cached: Vec<_> = {
            let values = view.values.lock().unwrap();
            let mut names: Vec<_> = values.keys().map(|k| k.0.clone()).collect();
            names.sort();
            names
        };
        assert_eq!(cached, ["held", "kept"], "a read in flight keeps its slot");
        let mut versions: Vec<_> = view.versions.lock().unwrap().keys().cloned().collect();
        versions.sort();
        assert_eq!(versions, ["kept"], "versions of a gone secret are dropped");
        drop(holder);

        let later = Instant::now() + 2 * MINUTE;
        assert!(view.prune(MINUTE, later), "nobody subscribed or read: idle");
        assert!(
            view.values.lock().unwrap().is_empty() && view.versions.lock().unwrap().is_empty(),
            "unread values and versions dropped"
        );
    }

    #[test]
    fn a_subscribed_view_is_never_idle() {
        let view = VaultView::default();
        view.subscribe("ns/a", Interest::Everything, MINUTE);
        assert!(!view.prune(MINUTE, Instant::now() + 10 * MINUTE));
        assert!(!view.prune(MINUTE, Instant::now()));
    }
}
