//! Which KeyVaultSecrets an event on a Secret, ConfigMap or ServiceAccount
//! concerns — pure, kept in step with the KeyVaultSecret watch, so that a
//! watch event is mapped by one lookup instead of a scan of every object
//! (at 10,000 objects and 50,000 Secrets a re-list would otherwise compare
//! 5 × 10⁸ pairs).
//!
//! ```text
//!  References
//!   ├─ objects:   ObjectKey ─▶ [(kind, name)]     what each KeyVaultSecret names (in its namespace)
//!   └─ referents: Referent { kind, ObjectKey } ─▶ {KeyVaultSecret names}
//!        Secret          its target (by name), a client secret or certificate, a templateFrom source
//!        ConfigMap       a templateFrom source
//!        ServiceAccount  its workload identity
//! ```
//!
//! [`References::update`] replaces an object's entries, [`References::forget`]
//! and [`References::retain`] drop them with the object (memory follows
//! the objects). Sized for 10,000 objects: slices and hash sets, where a
//! `Vec`'s slack and a one-entry `BTreeSet`'s 11-slot node cost ~900 bytes
//! per object (heaptrack, docs/benchmark.md "10,000 KeyVaultSecrets…").

use std::collections::{HashMap, HashSet};

use kube::ResourceExt;

use super::key::ObjectKey;
use crate::api::{KeyVaultSecret, TemplateSourceKind};

/// The kinds of object a KeyVaultSecret refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Secret,
    ConfigMap,
    ServiceAccount,
}

/// An object a KeyVaultSecret refers to, in its own namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Referent {
    kind: Kind,
    object: ObjectKey,
}

/// What one KeyVaultSecret names in its own namespace, sorted.
type Named = Box<[(Kind, Box<str>)]>;

#[derive(Debug, Default)]
pub struct References {
    /// Each KeyVaultSecret ─▶ what it refers to in its namespace.
    objects: HashMap<ObjectKey, Named>,
    /// What is referred to ─▶ the names of the KeyVaultSecrets (same namespace).
    referents: HashMap<Referent, HashSet<Box<str>>>,
}

impl References {
    /// Records what `kvs` refers to now (replacing what it did before).
    pub fn update(&mut self, kvs: &KeyVaultSecret) {
        let namespace = kvs.namespace().unwrap_or_default();
        let name = kvs.name_any();
        let object = ObjectKey::new(&namespace, &name);
        let referents = referents_of(kvs);
        if self.objects.get(&object) == Some(&referents) {
            return;
        }
        self.forget(&object);
        for (kind, referent) in &referents {
            self.referents
                .entry(Referent {
                    kind: *kind,
                    object: ObjectKey::new(&namespace, referent),
                })
                .or_default()
                .insert(name.as_str().into());
        }
        self.objects.insert(object, referents);
    }

    /// Drops everything of `object`.
    pub fn forget(&mut self, object: &ObjectKey) {
        let Some(referents) = self.objects.remove(object) else {
            return;
        };
        for (kind, referent) in referents {
            let referent = Referent {
                kind,
                object: ObjectKey::new(object.namespace(), &referent),
            };
            if let Some(names) = self.referents.get_mut(&referent) {
                names.remove(object.name());
                if names.is_empty() {
                    self.referents.remove(&referent);
                }
            }
        }
    }

    /// Keeps the objects for which `keep` holds.
    pub fn retain(&mut self, keep: impl Fn(&ObjectKey) -> bool) {
        let gone: Vec<ObjectKey> = self
            .objects
            .keys()
            .filter(|object| !keep(object))
            .cloned()
            .collect();
        for object in gone {
            self.forget(&object);
        }
    }

    /// Whether the KeyVaultSecret `namespace/name` is known.
    pub fn contains(&self, namespace: &str, name: &str) -> bool {
        self.objects.contains_key(&ObjectKey::new(namespace, name))
    }

    /// The names of the KeyVaultSecrets of `namespace` that refer to the
    /// `kind` object `name`, sorted.
    pub fn referring_to(&self, kind: Kind, namespace: &str, name: &str) -> Vec<String> {
        let referent = Referent {
            kind,
            object: ObjectKey::new(namespace, name),
        };
        let mut names: Vec<String> = self
            .referents
            .get(&referent)
            .map(|names| names.iter().map(|n| n.to_string()).collect())
            .unwrap_or_default();
        names.sort_unstable();
        names
    }
}

/// What `kvs` refers to in its namespace, each once.
fn referents_of(kvs: &KeyVaultSecret) -> Named {
    let auth = &kvs.spec.auth;
    let secrets = std::iter::once(kvs.target_name())
        .chain(
            [&auth.client_secret, &auth.client_certificate]
                .into_iter()
                .flatten()
                .map(|c| c.secret_ref.name.clone()),
        )
        .map(|name| (Kind::Secret, name));
    let templates = kvs
        .spec
        .target
        .template
        .iter()
        .flat_map(|template| template.sources())
        .map(|(kind, source)| {
            let kind = match kind {
                TemplateSourceKind::Secret => Kind::Secret,
                TemplateSourceKind::ConfigMap => Kind::ConfigMap,
            };
            (kind, source.name.clone())
        });
    let service_account = auth
        .workload_identity
        .as_ref()
        .and_then(|wi| wi.service_account_name.clone())
        .map(|name| (Kind::ServiceAccount, name));
    let mut referents: Vec<(Kind, Box<str>)> = secrets
        .chain(templates)
        .chain(service_account)
        .map(|(kind, name)| (kind, name.into()))
        .collect();
    referents.sort_by(|(a_kind, a), (b_kind, b)| (*a_kind as u8, a).cmp(&(*b_kind as u8, b)));
    referents.dedup();
    referents.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kvs(namespace: &str, name: &str, spec: serde_json::Value) -> KeyVaultSecret {
        serde_json::from_value(json!({
            "apiVersion": "kvsync.io/v1alpha1", "kind": "KeyVaultSecret",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }))
        .unwrap()
    }

    fn client_secret(target: &str, creds: &str) -> serde_json::Value {
        json!({"vaultUrl": "https://v.vault.azure.net", "target": {"name": target},
            "auth": {"clientSecret": {"tenantId": "t", "clientId": "c",
                "secretRef": {"name": creds, "key": "k"}}},
            "data": [{"secretKey": "a", "remoteRef": {"name": "a"}}]})
    }

    #[test]
    fn an_event_reaches_the_objects_that_name_it_in_its_namespace_only() {
        let mut refs = References::default();
        refs.update(&kvs("shop", "db", client_secret("db-secret", "creds")));
        refs.update(&kvs("shop", "cache", client_secret("cache", "creds")));
        refs.update(&kvs("web", "db", client_secret("db-secret", "creds")));
        assert_eq!(
            refs.referring_to(Kind::Secret, "shop", "creds"),
            ["cache", "db"]
        );
        assert_eq!(refs.referring_to(Kind::Secret, "shop", "db-secret"), ["db"]);
        assert_eq!(
            refs.referring_to(Kind::Secret, "web", "cache"),
            [] as [&str; 0]
        );
        assert_eq!(
            refs.referring_to(Kind::ConfigMap, "shop", "creds"),
            [] as [&str; 0],
            "a ConfigMap of the same name is another object"
        );
    }

    #[test]
    fn an_edit_moves_the_references_and_a_deletion_drops_them() {
        let mut refs = References::default();
        refs.update(&kvs("shop", "db", client_secret("db-secret", "old-creds")));
        refs.update(&kvs("shop", "db", client_secret("db-secret", "new-creds")));
        assert_eq!(
            refs.referring_to(Kind::Secret, "shop", "old-creds"),
            [] as [&str; 0]
        );
        assert_eq!(refs.referring_to(Kind::Secret, "shop", "new-creds"), ["db"]);
        assert!(refs.contains("shop", "db"));
        refs.forget(&ObjectKey::new("shop", "db"));
        assert!(!refs.contains("shop", "db"));
        assert!(
            refs.referents.is_empty(),
            "nothing kept for a deleted object"
        );
    }

    #[test]
    fn templates_and_workload_identity_are_referents_too() {
        let mut refs = References::default();
        refs.update(&kvs(
            "shop",
            "db",
            json!({"vaultUrl": "https://v.vault.azure.net",
                "auth": {"workloadIdentity": {"serviceAccountName": "app"}},
                "target": {"template": {"templateFrom": [
                    {"configMap": {"name": "tpl", "items": [{"key": "k"}]}},
                    {"secret": {"name": "tpl-secret", "items": [{"key": "k"}]}}]}},
                "data": [{"secretKey": "a", "remoteRef": {"name": "a"}}]}),
        ));
        assert_eq!(refs.referring_to(Kind::ConfigMap, "shop", "tpl"), ["db"]);
        assert_eq!(
            refs.referring_to(Kind::Secret, "shop", "tpl-secret"),
            ["db"]
        );
        assert_eq!(
            refs.referring_to(Kind::ServiceAccount, "shop", "app"),
            ["db"]
        );
        assert_eq!(
            refs.referring_to(Kind::Secret, "shop", "db"),
            ["db"],
            "the target defaults to the object's name"
        );
    }

    #[test]
    fn retain_keeps_only_the_objects_still_listed() {
        let mut refs = References::default();
        refs.update(&kvs("shop", "db", client_secret("db", "creds")));
        refs.update(&kvs("shop", "gone", client_secret("gone", "creds")));
        refs.retain(|object| object.as_str() != "shop/gone");
        assert_eq!(refs.referring_to(Kind::Secret, "shop", "creds"), ["db"]);
        assert_eq!(
            refs.referring_to(Kind::Secret, "shop", "gone"),
            [] as [&str; 0]
        );
    }
}
