//! The key of a namespaced object the sync stage keeps something for — a
//! KeyVaultSecret's memory, references, staleness and Event folds, a
//! Secret's, ConfigMap's or ServiceAccount's version in the watch indexes —
//! typed: its namespace and its name. Pure.
//!
//! ```text
//!  ObjectKey ── namespace() ── "shop"
//!     │     └── name() ─────── "db"
//!     └─ held as one "shop/db" text: one allocation per key, for keys kept by
//!        the ten thousand in several maps; Display and as_str() give that
//!        text (logs, the vault's subscriber id), parse() reads it back
//! ```
//!
//! Neither a namespace nor an object name contains a `/` (Kubernetes names
//! are DNS subdomains or labels), so the text splits back exactly.

use std::fmt;

use kube::Resource;
use kube::runtime::reflector::ObjectRef;

/// A namespaced object's namespace and name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(Box<str>);

impl ObjectKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectKey(format!("{namespace}/{name}").into_boxed_str())
    }

    /// The key of `object` (an unset namespace or name reads as empty).
    pub fn of<K: Resource>(object: &K) -> Self {
        let meta = object.meta();
        Self::new(
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        )
    }

    /// The key of the object `object` refers to.
    pub fn of_ref<K: Resource>(object: &ObjectRef<K>) -> Self {
        Self::new(
            object.namespace.as_deref().unwrap_or_default(),
            &object.name,
        )
    }

    /// Reads back the text of [`Self::as_str`]; `None` without a `/`.
    pub fn parse(text: &str) -> Option<Self> {
        text.contains('/').then(|| ObjectKey(text.into()))
    }

    pub fn namespace(&self) -> &str {
        self.split().0
    }

    pub fn name(&self) -> &str {
        self.split().1
    }

    /// `namespace/name`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the watch of `scope` (a namespace; `None`: all) sees the object.
    pub fn watched_by(&self, scope: &Option<String>) -> bool {
        scope.as_deref().is_none_or(|ns| self.namespace() == ns)
    }

    fn split(&self) -> (&str, &str) {
        self.0.split_once('/').unwrap_or(("", &self.0))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// `"namespace/name"`, in tests.
#[cfg(test)]
impl From<&str> for ObjectKey {
    fn from(text: &str) -> Self {
        Self::parse(text).expect("a namespace/name key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_splits_back_into_namespace_and_name() {
        let key = ObjectKey::new("shop", "db");
        assert_eq!((key.namespace(), key.name()), ("shop", "db"));
        assert_eq!(key.to_string(), "shop/db");
        assert_eq!(ObjectKey::parse(key.as_str()), Some(key));
        assert_eq!(ObjectKey::parse("no-slash"), None);
    }

    #[test]
    fn a_namespaced_watch_sees_only_its_namespace_objects() {
        let shop = Some("shop".to_owned());
        assert!(ObjectKey::new("shop", "db").watched_by(&shop));
        assert!(
            !ObjectKey::new("web", "db").watched_by(&shop),
            "another controller's object"
        );
        assert!(!ObjectKey::new("shopping", "db").watched_by(&shop));
        assert!(
            ObjectKey::new("web", "db").watched_by(&None),
            "the cluster-wide watch sees all"
        );
    }
}
