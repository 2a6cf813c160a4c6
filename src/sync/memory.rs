//! What the sync stage remembers between syncs of an object — pure, and
//! dropped when the object goes away.
//!
//! ```text
//!  Memory
//!   ├─ objects: ObjectKey ─▶ ObjectMemory { failures, force_sync, read_now, read_now_at, data_written }
//!   │     failures    consecutive failed syncs (backoff)
//!   │     force_sync  the kvsync.io/force-sync value last synced (a new value → read as of now)
//!   │     read_now    a watched event asked for a read as of now (target repair, credential change)
//!   │     read_now_at when the object last read as of now: at most one such read per
//!   │                 minimum refresh interval (a force-sync or spec-change loop is rate-limited)
//!   │     data_written the target's resourceVersion at kvsync's last write of new data
//!   │                 (a rollout count older than it is not the current data's)
//!   └─ checked: the Secret's ObjectKey ─▶ Checked { version, writer: ObjectKey, desired: digest }
//!         the target's resourceVersion kvsync last wrote or read as up to date, and the digest
//!         of the desired Secret it holds (when it held all of it): the watch event of that
//!         version triggers no sync, and while the watch still sees that version a refresh
//!         that wants the same Secret reads nothing (see [`super::observed`])
//! ```
//!
//! Entries are removed when the KeyVaultSecret is deleted ([`Memory::forget`])
//! and, after the watch re-lists, for every object no longer there
//! ([`Memory::retain`]): memory follows the objects.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::key::ObjectKey;

/// A version of a target Secret kvsync wrote or read.
#[derive(Debug)]
struct Checked {
    version: String,
    writer: ObjectKey,
    /// Digest of the desired Secret it holds, if it holds all of it.
    desired: Option<u64>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ObjectMemory {
    failures: u32,
    force_sync: Option<Option<String>>,
    read_now: bool,
    read_now_at: Option<Instant>,
    data_written: Option<u64>,
}

/// Per-object state of the sync stage.
#[derive(Debug, Default)]
pub struct Memory {
    objects: HashMap<ObjectKey, ObjectMemory>,
    /// By the Secret's key.
    checked: HashMap<ObjectKey, Checked>,
}

impl Memory {
    /// One more consecutive failure; returns the count.
    pub fn failed(&mut self, object: &ObjectKey) -> u32 {
        let memory = self.objects.entry(object.clone()).or_default();
        memory.failures += 1;
        memory.failures
    }

    pub fn succeeded(&mut self, object: &ObjectKey) {
        if let Some(memory) = self.objects.get_mut(object) {
            memory.failures = 0;
        }
    }

    /// Asks the next sync of `object` to read the vault as of now.
    pub fn request_read_now(&mut self, object: &ObjectKey) {
        self.objects.entry(object.clone()).or_default().read_now = true;
    }

    /// Whether this sync must read the vault as of now because of a
    /// request or a new force-sync value; consumes the request and
    /// records the value.
    pub fn take_read_now(&mut self, object: &ObjectKey, force_sync: Option<&str>) -> bool {
        let memory = self.objects.entry(object.clone()).or_default();
        let force_sync = force_sync.map(str::to_owned);
        let forced = memory
            .force_sync
            .replace(force_sync.clone())
            .is_some_and(|previous| previous != force_sync);
        std::mem::take(&mut memory.read_now) || forced
    }

    /// How long until `object` may read the vault as of now (at most once
    /// per `gap`); `None` when it may at `now`, which is then recorded.
    pub fn read_now_wait(
        &mut self,
        object: &ObjectKey,
        now: Instant,
        gap: Duration,
    ) -> Option<Duration> {
        let memory = self.objects.entry(object.clone()).or_default();
        let since = memory
            .read_now_at
            .map(|last| now.saturating_duration_since(last));
        match since {
            Some(since) if since < gap => Some(gap - since),
            _ => {
                memory.read_now_at = Some(now);
                None
            }
        }
    }

    /// Remembers the version of Secret `secret` that `object` wrote or
    /// read, with the digest of the desired Secret it holds (if it does).
    pub fn remember_checked(
        &mut self,
        object: &ObjectKey,
        secret: ObjectKey,
        version: String,
        desired: Option<u64>,
    ) {
        self.checked.insert(
            secret,
            Checked {
                version,
                writer: object.clone(),
                desired,
            },
        );
    }

    /// The object whose sync wrote or read this version of the Secret, if
    /// kvsync did.
    pub fn checked_by(&self, secret: &ObjectKey, version: &str) -> Option<&ObjectKey> {
        self.checked
            .get(secret)
            .filter(|checked| checked.version == version)
            .map(|checked| &checked.writer)
    }

    /// `object` just wrote new data to Secret `secret`: the version it wrote
    /// (as remembered when checked) becomes the one rollout counts must reach.
    pub fn note_data_written(&mut self, object: &ObjectKey, secret: &ObjectKey) {
        let version = self
            .checked
            .get(secret)
            .and_then(|c| c.version.parse().ok());
        if let Some(version) = version {
            self.objects.entry(object.clone()).or_default().data_written = Some(version);
        }
    }

    /// The target's resourceVersion at `object`'s last write of new data.
    pub fn data_written(&self, object: &ObjectKey) -> Option<u64> {
        self.objects.get(object)?.data_written
    }

    /// Whether this version of the Secret is known to hold the desired Secret with digest `desired`.
    pub fn holds(&self, secret: &ObjectKey, version: &str, desired: u64) -> bool {
        self.checked
            .get(secret)
            .is_some_and(|checked| checked.version == version && checked.desired == Some(desired))
    }

    /// Drops everything kept for `object` (it was deleted).
    pub fn forget(&mut self, object: &ObjectKey) {
        self.objects.remove(object);
        self.checked.retain(|_, checked| checked.writer != *object);
    }

    /// Keeps only what belongs to objects for which `alive` holds.
    pub fn retain(&mut self, alive: impl Fn(&ObjectKey) -> bool) {
        self.objects.retain(|object, _| alive(object));
        self.checked.retain(|_, checked| alive(&checked.writer));
    }

    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        (self.objects.len(), self.checked.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_force_sync_value_reads_now_once() {
        let mut memory = Memory::default();
        assert!(!memory.take_read_now(&"ns/a".into(), None), "first sight");
        assert!(!memory.take_read_now(&"ns/a".into(), None));
        assert!(memory.take_read_now(&"ns/a".into(), Some("1")), "new value");
        assert!(
            !memory.take_read_now(&"ns/a".into(), Some("1")),
            "same value again"
        );
        assert!(
            memory.take_read_now(&"ns/a".into(), None),
            "removed is a change too"
        );
    }

    #[test]
    fn a_read_now_request_is_consumed_by_one_sync() {
        let mut memory = Memory::default();
        memory.request_read_now(&"ns/a".into());
        assert!(memory.take_read_now(&"ns/a".into(), None));
        assert!(!memory.take_read_now(&"ns/a".into(), None));
    }

    #[test]
    fn reads_as_of_now_are_rate_limited_per_object() {
        let mut memory = Memory::default();
        let (start, gap) = (Instant::now(), Duration::from_secs(10));
        let second = Duration::from_secs(1);
        let (a, b): (ObjectKey, ObjectKey) = ("ns/a".into(), "ns/b".into());
        assert_eq!(memory.read_now_wait(&a, start, gap), None, "the first");
        assert_eq!(
            memory.read_now_wait(&a, start + 9 * second, gap),
            Some(second),
            "one second to go"
        );
        assert_eq!(memory.read_now_wait(&b, start, gap), None, "per object");
        assert_eq!(
            memory.read_now_wait(&a, start + gap, gap),
            None,
            "after the gap"
        );
        assert_eq!(memory.read_now_wait(&a, start + gap, gap), Some(gap));
    }

    #[test]
    fn failures_count_up_and_reset() {
        let mut memory = Memory::default();
        assert_eq!(memory.failed(&"ns/a".into()), 1);
        assert_eq!(memory.failed(&"ns/a".into()), 2);
        memory.succeeded(&"ns/a".into());
        assert_eq!(memory.failed(&"ns/a".into()), 1);
    }

    #[test]
    fn checked_versions_are_recognised_by_resource_version_and_digest() {
        let mut memory = Memory::default();
        memory.remember_checked(&"ns/a".into(), "ns/db".into(), "7".into(), Some(42));
        assert_eq!(
            memory.checked_by(&"ns/db".into(), "7"),
            Some(&"ns/a".into())
        );
        assert!(memory.checked_by(&"ns/db".into(), "8").is_none());
        assert!(memory.checked_by(&"other/db".into(), "7").is_none());
        assert!(memory.holds(&"ns/db".into(), "7", 42));
        assert!(!memory.holds(&"ns/db".into(), "8", 42), "changed since");
        assert!(
            !memory.holds(&"ns/db".into(), "7", 43),
            "another desired Secret"
        );
        memory.remember_checked(&"ns/a".into(), "ns/db".into(), "9".into(), None);
        assert!(memory.checked_by(&"ns/db".into(), "9").is_some());
        assert!(
            !memory.holds(&"ns/db".into(), "9", 42),
            "written, not all of it"
        );
    }

    #[test]
    fn forgetting_and_retaining_drop_everything_of_gone_objects() {
        let mut memory = Memory::default();
        for object in ["ns/a", "ns/b", "ns/c"] {
            let object = ObjectKey::from(object);
            memory.failed(&object);
            memory.remember_checked(&object, object.clone(), "1".into(), None);
        }
        memory.forget(&"ns/a".into());
        assert_eq!(memory.sizes(), (2, 2));
        assert!(memory.checked_by(&"ns/a".into(), "1").is_none());
        memory.retain(|object| object.as_str() == "ns/c");
        assert_eq!(memory.sizes(), (1, 1));
        assert!(memory.checked_by(&"ns/c".into(), "1").is_some());
    }
}
