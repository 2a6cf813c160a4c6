//! The target Secret: what kvsync wants it to be, and whether writing it is
//! needed or allowed — pure.
//!
//! Ownership is recorded in the annotation `kvsync.io/owner: <KeyVaultSecret
//! name>` on every Secret kvsync writes (with `Owner` also a controller
//! ownerReference, so the garbage collector deletes it). A Secret without
//! that annotation, or naming another KeyVaultSecret, is someone else's and
//! is only touched under `creationPolicy: Merge`.
//!
//! What kvsync wrote is read back from the Secret's `managedFields` (the
//! entry of field manager `kvsync`, operation `Apply`): a label, annotation
//! or (under `Merge`) data key kvsync applied earlier but no longer wants is
//! removed by the next apply, and nothing another manager owns is touched.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};

use crate::api::{CreationPolicy, FIELD_MANAGER, MANAGED_BY_LABEL, RELOADER_MATCH_ANNOTATION};

/// Annotation naming the KeyVaultSecret that manages a Secret.
pub const OWNER_ANNOTATION: &str = "kvsync.io/owner";

/// The Secret as kvsync wants it.
#[derive(Clone, PartialEq, Eq)]
pub struct DesiredSecret {
    pub name: String,
    pub namespace: String,
    pub owner_name: String,
    pub owner_uid: String,
    pub policy: CreationPolicy,
    pub type_: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub data: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for DesiredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DesiredSecret({}/{}, keys {:?})",
            self.namespace,
            self.name,
            self.data.keys().collect::<Vec<_>>()
        )
    }
}

/// What to do about the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteDecision {
    /// It already matches: no write, no event, no resourceVersion bump.
    UpToDate,
    /// Create it, or update the fields kvsync manages.
    Apply,
    /// It belongs to someone else; the message says whose and what to do.
    Conflict(String),
    /// `Merge` needs an existing Secret, and there is none.
    Missing,
}

/// What kvsync's field manager applied to a Secret, by `managedFields`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AppliedFields {
    pub labels: BTreeSet<String>,
    pub annotations: BTreeSet<String>,
    pub data: BTreeSet<String>,
}

impl AppliedFields {
    /// Reads the `kvsync` Apply entry of `secret`'s managedFields.
    pub fn of(secret: &Secret) -> Self {
        let mut applied = AppliedFields::default();
        let entries = secret.metadata.managed_fields.iter().flatten();
        for entry in entries.filter(|e| {
            e.manager.as_deref() == Some(FIELD_MANAGER) && e.operation.as_deref() == Some("Apply")
        }) {
            let Some(fields) = &entry.fields_v1 else {
                continue;
            };
            let keys = |path: &[&str]| -> Vec<String> {
                let mut node = &fields.0;
                for step in path {
                    node = &node[*step];
                }
                node.as_object()
                    .into_iter()
                    .flat_map(|map| map.keys())
                    .filter_map(|key| key.strip_prefix("f:"))
                    .map(str::to_owned)
                    .collect()
            };
            applied.labels.extend(keys(&["f:metadata", "f:labels"]));
            applied
                .annotations
                .extend(keys(&["f:metadata", "f:annotations"]));
            applied.data.extend(keys(&["f:data"]));
        }
        applied
    }
}

impl DesiredSecret {
    /// Labels and annotations kvsync sets, besides the user's own.
    pub fn with_markers(mut self, reload: bool) -> Self {
        self.labels
            .insert(MANAGED_BY_LABEL.0.into(), MANAGED_BY_LABEL.1.into());
        self.annotations
            .insert(OWNER_ANNOTATION.into(), self.owner_name.clone());
        if reload {
            self.annotations
                .insert(RELOADER_MATCH_ANNOTATION.into(), "true".into());
        }
        self
    }

    /// Decides against the Secret that exists now (if any).
    pub fn decide(&self, existing: Option<&Secret>) -> WriteDecision {
        let Some(existing) = existing else {
            return match self.policy {
                CreationPolicy::Merge => WriteDecision::Missing,
                _ => WriteDecision::Apply,
            };
        };
        let meta = &existing.metadata;
        let owner = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(OWNER_ANNOTATION));
        match (owner, self.policy) {
            (Some(owner), _) if owner != &self.owner_name => {
                return WriteDecision::Conflict(format!(
                    "Secret {} is managed by KeyVaultSecret {owner}; give this one another target.name",
                    self.name
                ));
            }
            (None, CreationPolicy::Owner | CreationPolicy::Orphan) => {
                return WriteDecision::Conflict(format!(
                    "Secret {} exists and is not managed by kvsync; delete it, choose another target.name, or set creationPolicy: Merge",
                    self.name
                ));
            }
            _ => {}
        }
        let current: BTreeMap<String, Vec<u8>> = existing
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        let data_ok = match self.policy {
            CreationPolicy::Merge => self.data.iter().all(|(k, v)| current.get(k) == Some(v)),
            _ => current == self.data,
        };
        let subset = |want: &BTreeMap<String, String>, have: &Option<BTreeMap<String, String>>| {
            want.iter()
                .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
        };
        let owned_by_us = meta
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == self.owner_uid && r.controller == Some(true));
        let ownership_ok = self.policy != CreationPolicy::Owner || owned_by_us;
        let type_ok = self.policy == CreationPolicy::Merge
            || existing.type_.as_deref().unwrap_or("Opaque") == self.type_;
        let applied = AppliedFields::of(existing);
        let nothing_stale = applied.labels.iter().all(|k| self.labels.contains_key(k))
            && applied
                .annotations
                .iter()
                .all(|k| self.annotations.contains_key(k))
            && applied.data.iter().all(|k| self.data.contains_key(k));
        if data_ok
            && type_ok
            && ownership_ok
            && nothing_stale
            && subset(&self.labels, &meta.labels)
            && subset(&self.annotations, &meta.annotations)
        {
            WriteDecision::UpToDate
        } else {
            WriteDecision::Apply
        }
    }

    /// Keys of `secret` that kvsync must remove because they are not its own:
    /// under `Owner` and `Orphan` the data is exactly the vault's, but a key
    /// another field manager added survives kvsync's server-side apply (SSA
    /// only removes fields the applier owns). Under `Merge` there are none.
    pub fn foreign_keys(&self, secret: &Secret) -> Vec<String> {
        if self.policy == CreationPolicy::Merge {
            return Vec::new();
        }
        secret
            .data
            .iter()
            .flatten()
            .map(|(key, _)| key)
            .filter(|key| !self.data.contains_key(*key))
            .cloned()
            .collect()
    }

    /// The server-side-apply body that withdraws everything kvsync applied to
    /// Secret `name` (its keys and markers): what is left of a `Merge`
    /// target when its KeyVaultSecret goes away.
    pub fn withdrawal_body(secret: &Secret) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": secret.metadata.name,
                "namespace": secret.metadata.namespace,
                "resourceVersion": secret.metadata.resource_version,
            },
        })
    }

    /// The server-side-apply body that keeps a released Secret's data and
    /// type (applied by another field manager before kvsync withdraws, so
    /// that the values stay and the immutable type is not reset).
    pub fn keep_body(secret: &Secret) -> Value {
        let mut body = Self::withdrawal_body(secret);
        body["type"] = json!(secret.type_);
        body["data"] = json!(secret.data);
        body
    }

    /// The server-side-apply body. Under `Merge` it carries only kvsync's keys
    /// and markers, so the other field managers' keys are left alone.
    pub fn apply_body(&self) -> Value {
        let data: BTreeMap<&String, String> = self
            .data
            .iter()
            .map(|(k, v)| (k, STANDARD.encode(v)))
            .collect();
        let mut body = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": self.labels,
                "annotations": self.annotations,
            },
            "data": data,
        });
        if self.policy != CreationPolicy::Merge {
            body["type"] = json!(self.type_);
        }
        if self.policy == CreationPolicy::Owner {
            body["metadata"]["ownerReferences"] = json!([{
                "apiVersion": "kvsync.io/v1alpha1",
                "kind": "KeyVaultSecret",
                "name": self.owner_name,
                "uid": self.owner_uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }]);
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn desired(policy: CreationPolicy) -> DesiredSecret {
        DesiredSecret {
            name: "db".into(),
            namespace: "shop".into(),
            owner_name: "db-kvs".into(),
            owner_uid: "uid-1".into(),
            policy,
            type_: "Opaque".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            data: BTreeMap::from([("password".into(), b"pw".to_vec())]),
        }
        .with_markers(true)
    }

    fn existing(desired: &DesiredSecret, extra: &[(&str, &[u8])]) -> Secret {
        let mut data: BTreeMap<String, ByteString> = desired
            .data
            .iter()
            .map(|(k, v)| (k.clone(), ByteString(v.clone())))
            .collect();
        data.extend(
            extra
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.to_vec()))),
        );
        Secret {
            metadata: ObjectMeta {
                name: Some(desired.name.clone()),
                labels: Some(desired.labels.clone()),
                annotations: Some(desired.annotations.clone()),
                owner_references: Some(vec![OwnerReference {
                    uid: "uid-1".into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Default::default()
        }
    }

    #[test]
    fn identical_content_is_not_rewritten() {
        let want = desired(CreationPolicy::Owner);
        assert_eq!(
            want.decide(Some(&existing(&want, &[]))),
            WriteDecision::UpToDate
        );
        assert_eq!(want.decide(None), WriteDecision::Apply);
    }

    #[test]
    fn changed_or_extra_data_is_rewritten_when_owned() {
        let want = desired(CreationPolicy::Owner);
        let mut changed = existing(&want, &[]);
        changed
            .data
            .as_mut()
            .unwrap()
            .insert("password".into(), ByteString(b"old".to_vec()));
        assert_eq!(want.decide(Some(&changed)), WriteDecision::Apply);
        assert_eq!(
            want.decide(Some(&existing(&want, &[("stale", b"x")]))),
            WriteDecision::Apply
        );
    }

    #[test]
    fn someone_elses_secret_is_a_conflict_unless_merging() {
        let want = desired(CreationPolicy::Owner);
        let mut foreign = existing(&want, &[]);
        foreign.metadata.annotations = None;
        assert!(matches!(
            want.decide(Some(&foreign)),
            WriteDecision::Conflict(_)
        ));
        let merge = desired(CreationPolicy::Merge);
        let mut foreign = existing(&merge, &[("theirs", b"x")]);
        foreign.metadata.annotations = None;
        assert_eq!(
            merge.decide(Some(&foreign)),
            WriteDecision::Apply,
            "adopt our keys only"
        );
        let ours = existing(&merge, &[("theirs", b"x")]);
        assert_eq!(
            merge.decide(Some(&ours)),
            WriteDecision::UpToDate,
            "their keys don't matter"
        );
    }

    #[test]
    fn two_keyvaultsecrets_cannot_share_a_secret() {
        let want = desired(CreationPolicy::Merge);
        let mut other = existing(&want, &[]);
        other
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(OWNER_ANNOTATION.into(), "other".into());
        assert!(
            matches!(want.decide(Some(&other)), WriteDecision::Conflict(m) if m.contains("other"))
        );
    }

    #[test]
    fn keys_added_by_others_are_foreign_unless_merging() {
        let owned = desired(CreationPolicy::Owner);
        let secret = existing(&owned, &[("extra", b"x")]);
        assert_eq!(owned.foreign_keys(&secret), vec!["extra".to_string()]);
        assert!(owned.foreign_keys(&existing(&owned, &[])).is_empty());
        let merge = desired(CreationPolicy::Merge);
        assert!(
            merge
                .foreign_keys(&existing(&merge, &[("extra", b"x")]))
                .is_empty()
        );
    }

    #[test]
    fn merge_body_leaves_type_and_ownership_alone() {
        let body = desired(CreationPolicy::Merge).apply_body();
        assert!(body.get("type").is_none());
        assert!(body["metadata"].get("ownerReferences").is_none());
        assert_eq!(body["data"]["password"], "cHc=");
        let owned = desired(CreationPolicy::Owner).apply_body();
        assert_eq!(owned["metadata"]["ownerReferences"][0]["controller"], true);
    }

    fn applied_by_kvsync(secret: &mut Secret, fields: serde_json::Value) {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
        secret.metadata.managed_fields = Some(vec![
            ManagedFieldsEntry {
                manager: Some("someone".into()),
                operation: Some("Apply".into()),
                fields_v1: Some(FieldsV1(json!({"f:data": {"f:theirs": {}}}))),
                ..Default::default()
            },
            ManagedFieldsEntry {
                manager: Some(FIELD_MANAGER.into()),
                operation: Some("Apply".into()),
                fields_v1: Some(FieldsV1(fields)),
                ..Default::default()
            },
        ]);
    }

    #[test]
    fn a_marker_or_key_kvsync_applied_and_no_longer_wants_is_removed() {
        let want = desired(CreationPolicy::Merge);
        let mut secret = existing(&want, &[("theirs", b"x"), ("dropped", b"y")]);
        secret
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "a".into());
        applied_by_kvsync(
            &mut secret,
            json!({"f:metadata": {"f:labels": {"f:team": {}}, "f:annotations": {"f:kvsync.io/owner": {}}},
                   "f:data": {"f:password": {}}}),
        );
        assert_eq!(
            AppliedFields::of(&secret).labels,
            BTreeSet::from(["team".to_string()])
        );
        assert_eq!(
            want.decide(Some(&secret)),
            WriteDecision::Apply,
            "label removed from spec"
        );

        applied_by_kvsync(
            &mut secret,
            json!({"f:data": {"f:password": {}, "f:dropped": {}}}),
        );
        assert_eq!(
            want.decide(Some(&secret)),
            WriteDecision::Apply,
            "data entry removed from spec"
        );

        applied_by_kvsync(&mut secret, json!({"f:data": {"f:password": {}}}));
        assert_eq!(
            want.decide(Some(&secret)),
            WriteDecision::UpToDate,
            "another manager's label and keys are not kvsync's to remove"
        );
    }

    #[test]
    fn merge_onto_a_missing_secret_does_not_create_it() {
        assert_eq!(
            desired(CreationPolicy::Merge).decide(None),
            WriteDecision::Missing
        );
        assert_eq!(
            desired(CreationPolicy::Orphan).decide(None),
            WriteDecision::Apply
        );
    }
}
