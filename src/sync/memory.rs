//! What the sync stage remembers between syncs of an object — pure, and
//! dropped when the object goes away.
//!
//! ```text
//!  Memory
//!   ├─ objects: "ns/name" ─▶ ObjectMemory { failures, force_sync, read_now }
//!   │     failures    consecutive failed syncs (backoff)
//!   │     force_sync  the kvsync.io/force-sync value last synced (a new value → read as of now)
//!   │     read_now    a watched event asked for a read as of now (target repair, credential change)
//!   └─ own_writes: ("ns", "secret") ─▶ (resourceVersion kvsync wrote, "ns/name" of the writer)
//!         so the watch event of kvsync's own write does not trigger another sync
//! ```
//!
//! Entries are removed when the KeyVaultSecret is deleted ([`Memory::forget`])
//! and, after the watch re-lists, for every object no longer there
//! ([`Memory::retain`]): memory follows the objects.

use std::collections::HashMap;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ObjectMemory {
    failures: u32,
    force_sync: Option<Option<String>>,
    read_now: bool,
}

/// Per-object state of the sync stage.
#[derive(Debug, Default)]
pub struct Memory {
    objects: HashMap<String, ObjectMemory>,
    own_writes: HashMap<(String, String), (String, String)>,
}

impl Memory {
    /// One more consecutive failure; returns the count.
    pub fn failed(&mut self, object: &str) -> u32 {
        let memory = self.objects.entry(object.to_owned()).or_default();
        memory.failures += 1;
        memory.failures
    }

    pub fn succeeded(&mut self, object: &str) {
        if let Some(memory) = self.objects.get_mut(object) {
            memory.failures = 0;
        }
    }

    /// Asks the next sync of `object` to read the vault as of now.
    pub fn request_read_now(&mut self, object: &str) {
        self.objects.entry(object.to_owned()).or_default().read_now = true;
    }

    /// Whether this sync must read the vault as of now because of a
    /// request or a new force-sync value; consumes the request and
    /// records the value.
    pub fn take_read_now(&mut self, object: &str, force_sync: Option<&str>) -> bool {
        let memory = self.objects.entry(object.to_owned()).or_default();
        let force_sync = force_sync.map(str::to_owned);
        let forced = memory
            .force_sync
            .replace(force_sync.clone())
            .is_some_and(|previous| previous != force_sync);
        std::mem::take(&mut memory.read_now) || forced
    }

    pub fn remember_own_write(
        &mut self,
        object: &str,
        namespace: &str,
        secret: &str,
        resource_version: String,
    ) {
        self.own_writes.insert(
            (namespace.to_owned(), secret.to_owned()),
            (resource_version, object.to_owned()),
        );
    }

    pub fn is_own_write(&self, namespace: &str, secret: &str, resource_version: &str) -> bool {
        self.own_writes
            .get(&(namespace.to_owned(), secret.to_owned()))
            .is_some_and(|(rv, _)| rv == resource_version)
    }

    /// Drops everything kept for `object` (it was deleted).
    pub fn forget(&mut self, object: &str) {
        self.objects.remove(object);
        self.own_writes.retain(|_, (_, writer)| writer != object);
    }

    /// Keeps only what belongs to objects for which `alive` holds.
    pub fn retain(&mut self, alive: impl Fn(&str) -> bool) {
        self.objects.retain(|object, _| alive(object));
        self.own_writes.retain(|_, (_, writer)| alive(writer));
    }

    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        (self.objects.len(), self.own_writes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_force_sync_value_reads_now_once() {
        let mut memory = Memory::default();
        assert!(!memory.take_read_now("ns/a", None), "first sight");
        assert!(!memory.take_read_now("ns/a", None));
        assert!(memory.take_read_now("ns/a", Some("1")), "new value");
        assert!(!memory.take_read_now("ns/a", Some("1")), "same value again");
        assert!(
            memory.take_read_now("ns/a", None),
            "removed is a change too"
        );
    }

    #[test]
    fn a_read_now_request_is_consumed_by_one_sync() {
        let mut memory = Memory::default();
        memory.request_read_now("ns/a");
        assert!(memory.take_read_now("ns/a", None));
        assert!(!memory.take_read_now("ns/a", None));
    }

    #[test]
    fn failures_count_up_and_reset() {
        let mut memory = Memory::default();
        assert_eq!(memory.failed("ns/a"), 1);
        assert_eq!(memory.failed("ns/a"), 2);
        memory.succeeded("ns/a");
        assert_eq!(memory.failed("ns/a"), 1);
    }

    #[test]
    fn own_writes_are_recognised_by_resource_version() {
        let mut memory = Memory::default();
        memory.remember_own_write("ns/a", "ns", "db", "7".into());
        assert!(memory.is_own_write("ns", "db", "7"));
        assert!(!memory.is_own_write("ns", "db", "8"));
        assert!(!memory.is_own_write("other", "db", "7"));
    }

    #[test]
    fn forgetting_and_retaining_drop_everything_of_gone_objects() {
        let mut memory = Memory::default();
        for object in ["ns/a", "ns/b", "ns/c"] {
            memory.failed(object);
            memory.remember_own_write(object, "ns", &object[3..], "1".into());
        }
        memory.forget("ns/a");
        assert_eq!(memory.sizes(), (2, 2));
        assert!(!memory.is_own_write("ns", "a", "1"));
        memory.retain(|object| object == "ns/c");
        assert_eq!(memory.sizes(), (1, 1));
        assert!(memory.is_own_write("ns", "c", "1"));
    }
}
