//! One vault as seen by one identity: the latest listing, values read from
//! it, who is interested in which names, and the poller that keeps the
//! listing fresh.
//!
//! ```text
//!   poller ── every min(refreshInterval of subscribers) ──▶ GET /secrets (paged, 25/page)
//!     │                                                       │
//!     │                              diff with previous listing (detect::changed_names)
//!     ▼                                                       │
//!   subscribers interested in a changed name ◀── "sync now" ──┘
//!
//!   reads: value cache hit if the listing says it is still current (detect::still_current),
//!          else one GET — concurrent reads of the same ref share it (single-flight)
//! ```
//!
//! So an idle refresh cycle costs one listing per (vault, identity), however
//! many KeyVaultSecrets and refs use it, and a changed secret is read once.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::UnboundedSender;

use super::detect::{ReadStamp, Snapshot, changed_names, still_current};
use super::{RemoteSecret, VaultError};

/// Which names a subscriber's Secret depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interest {
    Names(BTreeSet<String>),
    /// `dataFrom.find`: any change in the vault may matter.
    Everything,
}

impl Interest {
    fn touched_by(&self, changed: &BTreeSet<String>) -> bool {
        match self {
            Interest::Everything => !changed.is_empty(),
            Interest::Names(names) => !names.is_disjoint(changed),
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

/// A listing and when it was requested.
#[derive(Clone)]
pub struct Listed {
    pub started: Instant,
    pub snapshot: Arc<Snapshot>,
}

type ValueKey = (String, Option<String>, bool);

/// State of one (vault, identity).
#[derive(Default)]
pub struct VaultView {
    /// Held while listing: concurrent callers wait for the one in flight.
    pub listing: tokio::sync::Mutex<Option<Listed>>,
    values: Mutex<HashMap<ValueKey, (RemoteSecret, ReadStamp)>>,
    reads_in_flight: Mutex<HashMap<ValueKey, Arc<tokio::sync::Mutex<()>>>>,
    subscribers: Mutex<HashMap<String, Subscription>>,
    poller_running: Mutex<bool>,
    /// Listing was forbidden for this identity: read by GET until then.
    pub listing_refused_until: Mutex<Option<Instant>>,
    /// Why the latest listing attempt failed, if it did: until a listing
    /// succeeds again, reads report it rather than vouch for stale data.
    pub listing_failure: Mutex<Option<VaultError>>,
    /// Wakes the poller when a listing someone else asked for failed, so it
    /// retries with backoff instead of after a whole (possibly long) period.
    pub listing_failed: tokio::sync::Notify,
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl VaultView {
    /// Registers (or renews) interest; returns whether a poller must be started.
    pub fn subscribe(&self, subscriber: &str, interest: Interest, interval: Duration) -> bool {
        self.subscribers.lock().unwrap().insert(
            subscriber.to_owned(),
            Subscription {
                interest,
                interval,
                renewed: Instant::now(),
            },
        );
        let mut running = self.poller_running.lock().unwrap();
        !std::mem::replace(&mut *running, true)
    }

    /// The polling period (shortest interval of live subscribers), pruning
    /// expired ones; `None` when nobody is left and the poller should stop.
    pub fn poll_period(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut subscribers = self.subscribers.lock().unwrap();
        subscribers.retain(|_, s| !s.expired(now));
        let period = subscribers.values().map(|s| s.interval).min();
        if period.is_none() {
            *self.poller_running.lock().unwrap() = false;
        }
        period
    }

    /// Tells every subscriber to sync now (the listing works again after failing).
    pub fn notify_all(&self, notify: &UnboundedSender<String>) {
        for key in self.subscribers.lock().unwrap().keys() {
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
        for (key, subscription) in subscribers.iter() {
            if subscription.interest.touched_by(&changed) {
                let _ = notify.send(key.clone());
                notified += 1;
            }
        }
        notified
    }

    /// A cached value that the listing says is still the latest (or a pinned
    /// version, which never changes).
    pub fn cached(&self, key: &ValueKey, listing: Option<&Snapshot>) -> Option<RemoteSecret> {
        let values = self.values.lock().unwrap();
        let (secret, stamp) = values.get(key)?;
        let pinned = key.1.is_some();
        let current = pinned
            || listing
                .and_then(|l| l.get(&key.0))
                .is_some_and(|info| still_current(stamp, info));
        current.then(|| secret.clone())
    }

    pub fn remember(&self, key: ValueKey, secret: RemoteSecret, read_at: i64) {
        let stamp = ReadStamp {
            updated: secret.updated,
            read_at,
        };
        self.values.lock().unwrap().insert(key, (secret, stamp));
    }

    /// The lock that makes concurrent reads of one ref a single request.
    pub fn read_lock(&self, key: &ValueKey) -> Arc<tokio::sync::Mutex<()>> {
        self.reads_in_flight
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone()
    }

    pub fn listing_refused(&self) -> bool {
        self.listing_refused_until
            .lock()
            .unwrap()
            .is_some_and(|until| Instant::now() < until)
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
