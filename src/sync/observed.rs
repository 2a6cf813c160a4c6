//! What the Secret and ServiceAccount watches have seen — pure: an index of
//! versions, not copies of the objects.
//!
//! ```text
//!  Observed<T>
//!   └─ ObjectKey ─▶ Entry { version, listed, known: T }
//!        version  the resourceVersion the watch saw last (every object of the kind, ~100 bytes each)
//!        listed   the re-list that last saw it (entries a re-list did not see are dropped)
//!        known    what kvsync learned of the object at that version; a new version resets it
//!
//!  Secrets, ConfigMaps  known = values of the keys read (GET) at that version: credentials,
//!                       template sources (see [`super::values`]); none until read
//!  ServiceAccounts      known = their workload-identity annotations, from the watch event itself
//! ```
//!
//! A refresh trusts what is known at the current version instead of asking
//! the API server: an object changed by someone else has a new version as
//! soon as the watch delivers the change, and that same event syncs the
//! objects it concerns (see [`super::run`]). What the watch has not seen
//! (not listed yet, just created, deleted) is read from the API server.
//! The target Secret's check works the same way, with the digest of what
//! kvsync wrote or checked kept per object in [`super::memory`].

use std::collections::HashMap;

use kube::Resource;
use kube::runtime::watcher;

use super::key::ObjectKey;

#[derive(Debug)]
struct Entry<T> {
    version: Box<str>,
    listed: u64,
    known: T,
}

/// Versions of every object of one kind the watches have seen, with what
/// kvsync knows of each at that version.
#[derive(Debug)]
pub struct Observed<T> {
    entries: HashMap<ObjectKey, Entry<T>>,
    /// Re-lists so far; an entry's `listed` is the last one that saw it.
    relists: u64,
    /// The re-list in progress, by watch scope (a namespace, or `None`: all).
    relisting: HashMap<Option<String>, u64>,
}

impl<T> Default for Observed<T> {
    fn default() -> Self {
        Observed {
            entries: HashMap::new(),
            relists: 0,
            relisting: HashMap::new(),
        }
    }
}

impl<T> Observed<T> {
    /// Follows one event of the watch of `scope` (`None`: all namespaces);
    /// `known` says what an object's event itself tells (for a new version).
    pub fn follow<K: Resource>(
        &mut self,
        scope: &Option<String>,
        event: &watcher::Event<K>,
        known: impl Fn(&K) -> T,
    ) {
        match event {
            watcher::Event::Apply(object) => self.seen(object, None, &known),
            watcher::Event::InitApply(object) => {
                let listed = self.relisting.get(scope).copied();
                self.seen(object, listed, &known);
            }
            watcher::Event::Delete(object) => {
                self.entries.remove(&ObjectKey::of(object));
            }
            watcher::Event::Init => {
                self.relists += 1;
                self.relisting.insert(scope.clone(), self.relists);
            }
            watcher::Event::InitDone => {
                if let Some(listed) = self.relisting.remove(scope) {
                    self.entries
                        .retain(|key, entry| entry.listed == listed || !key.watched_by(scope));
                }
            }
        }
    }

    /// The watch of `scope` failed: what it saw may be out of date until it
    /// lists again, so its objects are read from the API server meanwhile
    /// (a watch that stays broken never leaves a refresh trusting old state).
    pub fn lost(&mut self, scope: &Option<String>) {
        self.relisting.remove(scope);
        self.entries.retain(|key, _| !key.watched_by(scope));
    }

    fn seen<K: Resource>(&mut self, object: &K, listed: Option<u64>, known: impl Fn(&K) -> T) {
        let Some(version) = object.meta().resource_version.as_deref() else {
            return;
        };
        let key = ObjectKey::of(object);
        match self.entries.get_mut(&key) {
            Some(entry) if &*entry.version == version => {
                entry.listed = listed.unwrap_or(entry.listed);
            }
            _ => {
                let entry = Entry {
                    version: version.into(),
                    listed: listed.unwrap_or_default(),
                    known: known(object),
                };
                self.entries.insert(key, entry);
            }
        }
    }

    /// The version of `key` the watch saw last.
    pub fn version(&self, key: &ObjectKey) -> Option<&str> {
        self.entries.get(key).map(|entry| &*entry.version)
    }

    /// What is known of `key` at the version the watch saw last.
    pub fn known(&self, key: &ObjectKey) -> Option<&T> {
        self.entries.get(key).map(|entry| &entry.known)
    }

    /// Records what was learned of `key` by reading it at `version`, if the
    /// watch sees that version too (else the read is not kept: the watch
    /// has not caught up, or the object has changed since).
    pub fn learn(&mut self, key: &ObjectKey, version: &str, learn: impl FnOnce(&mut T)) {
        if let Some(entry) = self.entries.get_mut(key)
            && &*entry.version == version
        {
            learn(&mut entry.known);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;
    use kube::runtime::watcher::Event;

    fn secret(namespace: &str, name: &str, version: &str) -> Secret {
        let mut secret = Secret::default();
        secret.metadata.namespace = Some(namespace.into());
        secret.metadata.name = Some(name.into());
        secret.metadata.resource_version = Some(version.into());
        secret
    }

    fn learned(observed: &mut Observed<Vec<&'static str>>, key: &str, version: &str) {
        observed.learn(&key.into(), version, |known| known.push("value"));
    }

    const ALL: Option<String> = None;

    #[test]
    fn what_was_learned_holds_until_the_version_changes() {
        let mut observed = Observed::default();
        observed.follow(&ALL, &Event::Apply(secret("a", "creds", "1")), |_| vec![]);
        learned(&mut observed, "a/creds", "1");
        assert_eq!(observed.known(&"a/creds".into()), Some(&vec!["value"]));
        observed.follow(&ALL, &Event::Apply(secret("a", "creds", "1")), |_| vec![]);
        assert_eq!(
            observed.known(&"a/creds".into()),
            Some(&vec!["value"]),
            "same version"
        );
        observed.follow(&ALL, &Event::Apply(secret("a", "creds", "2")), |_| vec![]);
        assert_eq!(observed.version(&"a/creds".into()), Some("2"));
        assert_eq!(
            observed.known(&"a/creds".into()),
            Some(&vec![]),
            "edited by someone"
        );
        observed.follow(&ALL, &Event::Delete(secret("a", "creds", "3")), |_| vec![]);
        assert_eq!(observed.known(&"a/creds".into()), None, "deleted");
    }

    #[test]
    fn a_failed_watch_is_trusted_again_only_after_it_lists() {
        let mut observed: Observed<Vec<&'static str>> = Observed::default();
        let a = Some("a".to_owned());
        let b = Some("b".to_owned());
        observed.follow(&a, &Event::Apply(secret("a", "target", "1")), |_| vec![]);
        observed.follow(&b, &Event::Apply(secret("b", "target", "1")), |_| vec![]);
        observed.lost(&a);
        assert_eq!(
            observed.version(&"a/target".into()),
            None,
            "read from the API server"
        );
        assert_eq!(
            observed.version(&"b/target".into()),
            Some("1"),
            "another watch"
        );
        observed.follow(&a, &Event::<Secret>::Init, |_| vec![]);
        observed.follow(
            &a,
            &Event::InitApply(secret("a", "target", "2")),
            |_| vec![],
        );
        observed.follow(&a, &Event::<Secret>::InitDone, |_| vec![]);
        assert_eq!(observed.version(&"a/target".into()), Some("2"));
        observed.lost(&ALL);
        assert_eq!(observed.len(), 0);
    }

    #[test]
    fn a_read_the_watch_has_not_caught_up_with_is_not_kept() {
        let mut observed = Observed::default();
        learned(&mut observed, "a/creds", "1");
        assert_eq!(
            observed.known(&"a/creds".into()),
            None,
            "not seen by the watch"
        );
        observed.follow(&ALL, &Event::Apply(secret("a", "creds", "1")), |_| vec![]);
        learned(&mut observed, "a/creds", "2");
        assert_eq!(
            observed.known(&"a/creds".into()),
            Some(&vec![]),
            "read a newer version"
        );
    }

    #[test]
    fn a_relist_drops_what_it_did_not_see_in_its_own_scope() {
        let mut observed: Observed<Vec<&str>> = Observed::default();
        let shop = Some("shop".to_owned());
        for (ns, name) in [("shop", "kept"), ("shop", "gone"), ("web", "other")] {
            observed.follow(&ALL, &Event::Apply(secret(ns, name, "1")), |_| vec![]);
        }
        learned(&mut observed, "shop/kept", "1");
        observed.follow(&shop, &Event::<Secret>::Init, |_| vec![]);
        observed.follow(
            &shop,
            &Event::InitApply(secret("shop", "kept", "1")),
            |_| vec![],
        );
        assert_eq!(observed.len(), 3, "nothing dropped before the list is done");
        observed.follow(&shop, &Event::<Secret>::InitDone, |_| vec![]);
        assert_eq!(
            observed.version(&"shop/gone".into()),
            None,
            "deleted while unwatched"
        );
        assert_eq!(
            observed.known(&"shop/kept".into()),
            Some(&vec!["value"]),
            "unchanged"
        );
        assert_eq!(
            observed.version(&"web/other".into()),
            Some("1"),
            "another watch's"
        );
    }

    #[test]
    fn the_event_itself_can_say_what_is_known() {
        let mut observed = Observed::default();
        let annotated = |s: &Secret| s.metadata.resource_version.clone();
        observed.follow(&ALL, &Event::Apply(secret("a", "sa", "4")), annotated);
        assert_eq!(observed.known(&"a/sa".into()), Some(&Some("4".to_owned())));
    }
}
