//! From hints to reads — the pure part: which vault URLs an event's vault
//! name means, which events are repeats, how bursts for one secret fold into
//! at most two reads, and how long a hint took to become a Secret.
//!
//! ```text
//!  Parsed ──▶ Recent (source+id seen lately?) ── yes ──▶ Ignored::Duplicate
//!               │ no
//!               ▼
//!           Debounce per (vault, name):  first ─▶ now
//!                                        more within the window ─▶ one more at its end
//!               │
//!               ▼  VaultNames::matches(vault key)
//!           VaultAccess::hint ─▶ subscribers told ─▶ Pending (ns/name ─▶ when the event came)
//!                                                       │ Secret written with kvsync.io/owner = name
//!                                                       ▼
//!                                                 event→Secret latency
//! ```
//!
//! Every map here is bounded: by count (oldest dropped first) and by age.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::vault::CLOUDS;

/// Which vault an event's vault name means: a vault URL of an Azure cloud
/// is `https://{name}.{vault domain}`; any other (an emulator) only by an
/// explicit alias (`--event-vault NAME=URL`).
#[derive(Clone, Debug, Default)]
pub struct VaultNames {
    /// Vault key (URL, lower case, no trailing slash) ─▶ vault name, lower case.
    aliases: HashMap<String, String>,
}

/// A vault key: the URL as the vault access keys it (lower case, no trailing slash).
pub fn vault_key(url: &str) -> String {
    url.trim_end_matches('/').to_ascii_lowercase()
}

impl VaultNames {
    pub fn new(aliases: impl IntoIterator<Item = (String, String)>) -> Self {
        VaultNames {
            aliases: aliases
                .into_iter()
                .map(|(name, url)| (vault_key(&url), name.to_ascii_lowercase()))
                .collect(),
        }
    }

    /// The name of the vault at `key` (a vault key), if events can name it.
    pub fn name_of(&self, key: &str) -> Option<String> {
        if let Some(name) = self.aliases.get(key) {
            return Some(name.clone());
        }
        let url = url::Url::parse(key).ok()?;
        if url.scheme() != "https" || url.port().is_some() || url.path().len() > 1 {
            return None;
        }
        let host = url.host_str()?;
        CLOUDS.iter().find_map(|cloud| {
            let name = host.strip_suffix(cloud.vault_domain)?.strip_suffix('.')?;
            (!name.is_empty() && !name.contains('.')).then(|| name.to_owned())
        })
    }
}

/// Event identities seen lately: at most `capacity`, each for `keep`.
#[derive(Debug)]
pub struct Recent {
    seen: HashSet<String>,
    order: VecDeque<(Instant, String)>,
    capacity: usize,
    keep: Duration,
}

impl Recent {
    pub fn new(capacity: usize, keep: Duration) -> Self {
        Recent {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity,
            keep,
        }
    }

    /// Whether `identity` was seen lately; remembers it either way.
    pub fn repeat(&mut self, identity: &str, now: Instant) -> bool {
        while let Some((at, oldest)) = self.order.front() {
            if self.order.len() < self.capacity && now.duration_since(*at) < self.keep {
                break;
            }
            self.seen.remove(oldest);
            self.order.pop_front();
        }
        if self.seen.contains(identity) {
            return true;
        }
        self.seen.insert(identity.to_owned());
        self.order.push_back((now, identity.to_owned()));
        false
    }
}

/// What to do with a hint for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Act on it now.
    Now,
    /// Folded into one more at the end of the window (from [`Debounce::due`]).
    Folded,
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    /// Hints came after the one acted on: act once more when the window ends.
    again_since: Option<Instant>,
}

/// At most two actions per key per window: the first hint at once, and, if
/// more came within the window, one more when it ends (so that a change
/// after the first read is not lost).
#[derive(Debug)]
pub struct Debounce<K> {
    window: Duration,
    windows: HashMap<K, Window>,
}

impl<K: Clone + Eq + Hash> Debounce<K> {
    pub fn new(window: Duration) -> Self {
        Debounce {
            window,
            windows: HashMap::new(),
        }
    }

    /// A hint for `key` that arrived at `arrived`.
    pub fn offer(&mut self, key: &K, arrived: Instant, now: Instant) -> Offer {
        let window = self.window;
        match self.windows.get_mut(key) {
            Some(open) if now < open.opened + window => {
                open.again_since = Some(open.again_since.map_or(arrived, |a| a.min(arrived)));
                Offer::Folded
            }
            _ => {
                self.windows.insert(
                    key.clone(),
                    Window {
                        opened: now,
                        again_since: None,
                    },
                );
                Offer::Now
            }
        }
    }

    /// When the next window with folded hints ends.
    pub fn next_due(&self) -> Option<Instant> {
        self.windows
            .values()
            .filter(|w| w.again_since.is_some())
            .map(|w| w.opened + self.window)
            .min()
    }

    /// Keys due to act again at `now` (each with when its first folded hint
    /// arrived; each opens a new window), and windows that ended quietly closed.
    pub fn due(&mut self, now: Instant) -> Vec<(K, Instant)> {
        let window = self.window;
        let mut due = Vec::new();
        self.windows.retain(|key, open| {
            if now < open.opened + window {
                return true;
            }
            match open.again_since.take() {
                Some(since) => {
                    due.push((key.clone(), since));
                    open.opened = now;
                    true
                }
                None => false,
            }
        });
        due
    }
}

/// Objects told to sync by a hint, each with when its earliest pending
/// event arrived, until their Secret is written or the hint is too old.
#[derive(Debug)]
pub struct Pending {
    since: HashMap<String, Instant>,
    capacity: usize,
    keep: Duration,
}

impl Pending {
    pub fn new(capacity: usize, keep: Duration) -> Self {
        Pending {
            since: HashMap::new(),
            capacity,
            keep,
        }
    }

    pub fn hinted(&mut self, objects: impl IntoIterator<Item = String>, arrived: Instant) {
        for object in objects {
            if self.since.len() >= self.capacity && !self.since.contains_key(&object) {
                self.prune(Instant::now());
                if self.since.len() >= self.capacity {
                    return;
                }
            }
            let earliest = self.since.entry(object).or_insert(arrived);
            *earliest = (*earliest).min(arrived);
        }
    }

    /// The Secret of `object` was written at `now`: how long after the event
    /// that asked for it, if one did.
    pub fn written(&mut self, object: &str, now: Instant) -> Option<Duration> {
        let since = self.since.remove(object)?;
        let age = now.saturating_duration_since(since);
        (age <= self.keep).then_some(age)
    }

    /// Forgets hints older than `keep` (their sync changed nothing).
    pub fn prune(&mut self, now: Instant) {
        let keep = self.keep;
        self.since
            .retain(|_, since| now.saturating_duration_since(*since) <= keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn vault_names_come_from_azure_hosts_or_aliases_only() {
        let names = VaultNames::new([("Shop".to_owned(), "https://localhost:8443/".to_owned())]);
        let name = |url: &str| names.name_of(&vault_key(url));
        assert_eq!(
            name("https://Shop.Vault.Azure.Net/").as_deref(),
            Some("shop")
        );
        assert_eq!(name("https://kv1.vault.azure.cn").as_deref(), Some("kv1"));
        assert_eq!(name("https://localhost:8443").as_deref(), Some("shop"));
        for nothing in [
            "https://localhost:9443/",
            "https://a.b.vault.azure.net/",
            "https://vault.azure.net/",
            "https://shop.vault.azure.net:8443/",
            "http://shop.vault.azure.net/",
            "https://shop.vault.azure.net.evil.example/",
        ] {
            assert_eq!(name(nothing), None, "{nothing}");
        }
    }

    #[test]
    fn a_repeat_is_known_while_remembered_and_memory_is_bounded() {
        let t0 = Instant::now();
        let mut recent = Recent::new(2, 60 * S);
        assert!(!recent.repeat("a", t0));
        assert!(recent.repeat("a", t0 + S));
        assert!(!recent.repeat("b", t0 + S));
        assert!(!recent.repeat("c", t0 + S), "capacity 2: a is forgotten");
        assert!(!recent.repeat("a", t0 + S));
        assert!(!recent.repeat("b", t0 + 120 * S), "too old: forgotten");
        assert!(recent.seen.len() <= 2);
    }

    #[test]
    fn a_burst_for_one_key_acts_at_once_and_once_more_at_the_window_end() {
        let t0 = Instant::now();
        let mut debounce = Debounce::new(S);
        assert_eq!(debounce.offer(&"db", t0, t0), Offer::Now);
        assert_eq!(debounce.offer(&"api", t0, t0), Offer::Now);
        assert_eq!(debounce.next_due(), None, "nothing folded yet");
        let later = t0 + S / 4;
        assert_eq!(debounce.offer(&"db", later, later), Offer::Folded);
        assert_eq!(debounce.offer(&"db", later, later + S / 4), Offer::Folded);
        assert_eq!(debounce.next_due(), Some(t0 + S));
        assert!(debounce.due(t0 + S / 2).is_empty());
        assert_eq!(debounce.due(t0 + S), [("db", later)]);
        assert_eq!(debounce.windows.len(), 1, "api's quiet window closed");
        assert_eq!(
            debounce.offer(&"db", t0 + S, t0 + S),
            Offer::Folded,
            "db's new window"
        );
        assert_eq!(debounce.due(t0 + 2 * S), [("db", t0 + S)]);
        assert!(debounce.due(t0 + 3 * S).is_empty());
        assert_eq!(debounce.offer(&"db", t0 + 3 * S, t0 + 3 * S), Offer::Now);
    }

    #[test]
    fn latency_runs_from_the_earliest_pending_event_to_the_write() {
        let t0 = Instant::now();
        let mut pending = Pending::new(2, 60 * S);
        pending.hinted(["ns/db".to_owned()], t0 + S);
        pending.hinted(["ns/db".to_owned(), "ns/api".to_owned()], t0);
        assert_eq!(pending.written("ns/db", t0 + 3 * S), Some(3 * S));
        assert_eq!(pending.written("ns/db", t0 + 4 * S), None, "counted once");
        pending.hinted(["ns/x".to_owned(), "ns/y".to_owned()], t0);
        assert_eq!(pending.since.len(), 2, "bounded");
        assert_eq!(pending.written("ns/api", t0 + 120 * S), None, "too old");
    }
}
