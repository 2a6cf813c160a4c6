//! The target Secret: what kvsync wants it to be, whether writing it is
//! needed or allowed, and how to let go of it — pure.
//!
//! Ownership. kvsync deletes a Secret, sets an ownerReference on it, makes it
//! immutable, replaces its data or removes keys from it only when kvsync
//! created that very Secret for that very KeyVaultSecret, whatever the spec
//! says later. Everything else it touched it only gives back: its own keys
//! and markers. Two facts decide it, never the current `creationPolicy`:
//!
//! ```text
//!  the ownership record   status.targets[]: {secretName, uid, how: Created | Merged}, written by
//!                         kvsync when it creates a Secret or first merges into it
//!  the Secret's marks     kvsync.io/owner: <object> and kvsync's field manager owning `type` —
//!                         written by kvsync only on Secrets it created (a merge writes
//!                         kvsync.io/merged-by and never applies `type`)
//!
//!  created  =  marks  and not (record of this very uid says Merged)
//!  delete   =  created, record's uid = live uid (precondition), and the controller
//!              ownerReference to this object's uid (or: every remote secret deleted, deletionPolicy Delete)
//! ```
//!
//! A forged record cannot make kvsync destroy anything: the marks are on the
//! Secret, so placing them takes write access to that Secret (which already
//! allows deleting it); a forged record can only withhold (say `Merged`), or
//! point at another uid (then kvsync leaves that Secret alone).
//!
//! What a KeyVaultSecret may not do with its target, whoever created it:
//!
//! ```text
//!  target.type  service-account-token | bootstrap token ─▶ refused (Kubernetes would fill in a credential)
//!  target.annotations  kubernetes.io/… k8s.io/…          ─▶ refused (they change how Kubernetes treats it)
//!  target.immutable with creationPolicy Merge            ─▶ refused (kvsync freezes only Secrets it creates)
//!  Owner | Orphan onto a Secret kvsync did not create     ─▶ Conflict (also after a Merge into it)
//!  Merge into  service-account-token | bootstrap token | helm.sh/release.v1,
//!              or a Secret another controller owns       ─▶ Conflict, unless the Secret says kvsync.io/merge: allow
//!              (owned by an ExternalSecret or a KeyVaultSecret: allowed — the ESO migration path)
//! ```
//!
//! What kvsync wrote is read back from the Secret's `managedFields` (the
//! entry of field manager `kvsync`, operation `Apply`): a label, annotation
//! or (under `Merge`) data key kvsync applied earlier but no longer wants is
//! removed by the next apply, and nothing another manager owns is touched.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};

use crate::api::contract::{
    FIELD_MANAGER, MANAGED_BY_LABEL, MERGE_OPT_IN_ANNOTATION, MERGED_BY_ANNOTATION,
    OWNER_ANNOTATION, reloader,
};
use crate::api::{CreationPolicy, Target, TargetHow, TargetRecord};

/// Secret types Kubernetes fills in with a credential: never written.
pub const CREDENTIAL_TYPES: &[&str] = &[
    "kubernetes.io/service-account-token",
    "bootstrap.kubernetes.io/token",
];

/// Secret types a `Merge` does not write into without the opt-in.
const PROTECTED_TYPES: &[&str] = &[
    "kubernetes.io/service-account-token",
    "bootstrap.kubernetes.io/token",
    "helm.sh/release.v1",
];

/// Controllers (API group, kind) whose Secrets a `Merge` may write into.
const MERGEABLE_CONTROLLERS: &[(&str, &str)] = &[
    ("external-secrets.io", "ExternalSecret"),
    ("kvsync.io", "KeyVaultSecret"),
];

/// A target the spec may not ask for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "target.type {0} is refused: Kubernetes fills Secrets of this type with a token; use Opaque or another type"
    )]
    CredentialType(String),
    #[error(
        "target.annotations: {0} is refused: annotations under kubernetes.io/ and k8s.io/ change how Kubernetes treats the Secret"
    )]
    ReservedAnnotation(String),
    #[error(
        "target.immutable is refused with creationPolicy Merge: the Secret is someone else's, and an immutable Secret stays so for its owner too; use creationPolicy Owner"
    )]
    ImmutableMerge,
}

/// Checks `spec.target` against what no KeyVaultSecret may ask for.
pub fn check_target(target: &Target) -> Result<(), TargetError> {
    if let Some(type_) = target
        .type_
        .as_deref()
        .filter(|t| CREDENTIAL_TYPES.contains(t))
    {
        return Err(TargetError::CredentialType(type_.to_owned()));
    }
    if target.immutable && target.creation_policy == CreationPolicy::Merge {
        return Err(TargetError::ImmutableMerge);
    }
    match target
        .annotations
        .keys()
        .find(|k| is_reserved_annotation(k))
    {
        Some(key) => Err(TargetError::ReservedAnnotation(key.clone())),
        None => Ok(()),
    }
}

/// Keys of Kubernetes' own domains (`kubernetes.io`, `k8s.io` and their
/// subdomains), except the descriptive `app.kubernetes.io/` ones.
fn is_reserved_annotation(key: &str) -> bool {
    let Some((domain, _)) = key.split_once('/') else {
        return false;
    };
    let domain = domain.to_ascii_lowercase();
    domain != "app.kubernetes.io"
        && ["kubernetes.io", "k8s.io"]
            .iter()
            .any(|d| domain == *d || domain.ends_with(&format!(".{d}")))
}

/// Why a `Merge` may not write into `existing`, if it may not; `owner_uid`
/// is the merging KeyVaultSecret's (a controller reference to it is fine).
fn merge_refusal(existing: &Secret, owner_uid: &str) -> Option<String> {
    let meta = &existing.metadata;
    let opted_in = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(MERGE_OPT_IN_ANNOTATION))
        .is_some_and(|v| v == "allow");
    if opted_in {
        return None;
    }
    if let Some(type_) = existing
        .type_
        .as_deref()
        .filter(|t| PROTECTED_TYPES.contains(t))
    {
        return Some(format!("it is of type {type_}"));
    }
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true) && r.uid != owner_uid)?;
    let group = controller
        .api_version
        .split_once('/')
        .map_or("", |(group, _)| group);
    (!MERGEABLE_CONTROLLERS.contains(&(group, controller.kind.as_str()))).then(|| {
        format!(
            "it is controlled by {} {} ({})",
            controller.kind, controller.name, controller.api_version
        )
    })
}

/// The KeyVaultSecrets a Secret's markers name (`kvsync.io/owner`,
/// `kvsync.io/merged-by`).
fn marked_for(secret: &Secret) -> impl Iterator<Item = &String> {
    let annotations = secret.metadata.annotations.as_ref();
    [OWNER_ANNOTATION, MERGED_BY_ANNOTATION]
        .into_iter()
        .filter_map(move |key| annotations.and_then(|a| a.get(key)))
}

/// Whether `secret` has a controller ownerReference to the object of `uid`.
fn controlled_by(secret: &Secret, uid: &str) -> bool {
    secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == uid && r.controller == Some(true))
}

/// Whether kvsync created `secret` for KeyVaultSecret `owner_name`: it
/// carries the marks kvsync writes only on Secrets it created
/// (`kvsync.io/owner` naming the object, `type` applied by kvsync's field
/// manager), and `record`, the ownership record of its name, does not say
/// kvsync merged into this very Secret.
pub fn created_by(secret: &Secret, owner_name: &str, record: Option<&TargetRecord>) -> bool {
    let marked = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(OWNER_ANNOTATION))
        .is_some_and(|name| name == owner_name)
        && AppliedFields::of(secret).type_;
    let merged_into = record.is_some_and(|r| {
        r.how == TargetHow::Merged && Some(&r.uid) == secret.metadata.uid.as_ref()
    });
    marked && !merged_into
}

/// How kvsync lets go of a Secret it recorded and no longer writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// kvsync's own: delete it (preconditioned on its uid).
    Delete,
    /// kvsync's own, kept (created under `Orphan`): its data and type stay,
    /// kvsync's markers and field ownership go.
    Keep,
    /// Someone else's: withdraw kvsync's keys and markers, nothing more.
    Withdraw,
    /// Not the Secret kvsync recorded (another uid): not kvsync's to touch.
    Leave,
}

/// How to let go of `live`, recorded as `record`, for the KeyVaultSecret
/// `owner_name`/`owner_uid`. `remote_deleted`: every remote secret is gone
/// under `deletionPolicy: Delete`, so a Secret kvsync created goes whatever
/// its policy. Never decided by the current `creationPolicy`.
pub fn release(
    live: &Secret,
    record: &TargetRecord,
    owner_name: &str,
    owner_uid: &str,
    remote_deleted: bool,
) -> Release {
    let uid = live.metadata.uid.as_deref().unwrap_or_default();
    if !record.uid.is_empty() && record.uid != uid {
        return Release::Leave;
    }
    if !created_by(live, owner_name, Some(record)) {
        return Release::Withdraw;
    }
    if remote_deleted || controlled_by(live, owner_uid) {
        Release::Delete
    } else {
        Release::Keep
    }
}

/// Whether `written`, the answer to an apply meant to create it, shows that
/// someone else created the Secret just before (a field manager other than
/// kvsync's holds fields of it): then it is not kvsync's.
pub fn created_meanwhile(written: &Secret) -> bool {
    written
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .any(|entry| entry.manager.as_deref() != Some(FIELD_MANAGER))
}

/// Whether `secret` carries a marker naming KeyVaultSecret `owner_name`
/// (`kvsync.io/owner` or `kvsync.io/merged-by`): kvsync wrote into it.
pub fn marked_by(secret: &Secret, owner_name: &str) -> bool {
    marked_for(secret).any(|name| name == owner_name)
}

/// Puts `record` into the ownership record `targets`, replacing the entry
/// of its Secret name.
pub fn remember(targets: &mut Vec<TargetRecord>, record: TargetRecord) {
    targets.retain(|t| t.secret_name != record.secret_name);
    targets.push(record);
}

/// The record of a Secret kvsync read or wrote.
pub fn record_of(written: &Secret, created: bool) -> TargetRecord {
    TargetRecord {
        secret_name: written.metadata.name.clone().unwrap_or_default(),
        uid: written.metadata.uid.clone().unwrap_or_default(),
        how: if created {
            TargetHow::Created
        } else {
            TargetHow::Merged
        },
    }
}

/// The Secret as kvsync wants it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DesiredSecret {
    pub name: String,
    pub namespace: String,
    pub owner_name: String,
    pub owner_uid: String,
    pub policy: CreationPolicy,
    /// kvsync created the existing Secret (or will create it): set by
    /// [`DesiredSecret::held`] once the Secret has been read.
    pub created: bool,
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
    /// kvsync applied the Secret's `type` (only ever to a Secret it created).
    pub type_: bool,
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
            applied.type_ |= fields.0.get("f:type").is_some();
        }
        applied
    }
}

impl DesiredSecret {
    /// Labels and annotations kvsync sets, besides the user's own (the
    /// ownership marker follows in [`DesiredSecret::held`]).
    pub fn with_markers(mut self, reload: bool) -> Self {
        self.labels
            .insert(MANAGED_BY_LABEL.0.into(), MANAGED_BY_LABEL.1.into());
        if reload {
            self.annotations
                .insert(reloader::MATCH.into(), "true".into());
        }
        self
    }

    /// The Secret as kvsync holds it: `created` (see [`created_by`]) carries
    /// the marks of a Secret kvsync created — `kvsync.io/owner` and the
    /// `type` — whatever the policy is now; otherwise only
    /// `kvsync.io/merged-by`.
    pub fn held(mut self, created: bool) -> Self {
        self.created = created;
        let marker = if created {
            OWNER_ANNOTATION
        } else {
            MERGED_BY_ANNOTATION
        };
        self.annotations
            .insert(marker.into(), self.owner_name.clone());
        self
    }

    /// A digest of everything that decides whether a Secret is up to date
    /// (written `immutable` or not): equal digests want the same Secret.
    pub fn digest(&self, immutable: bool) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        (self, immutable).hash(&mut hasher);
        hasher.finish()
    }

    /// Decides against the Secret that exists now (if any), as
    /// [`DesiredSecret::held`] says kvsync holds it.
    pub fn decide(&self, existing: Option<&Secret>) -> WriteDecision {
        let Some(existing) = existing else {
            return match self.policy {
                CreationPolicy::Merge => WriteDecision::Missing,
                _ => WriteDecision::Apply,
            };
        };
        let meta = &existing.metadata;
        if let Some(other) = marked_for(existing).find(|name| **name != self.owner_name) {
            return WriteDecision::Conflict(format!(
                "Secret {} is managed by KeyVaultSecret {other}; give this one another target.name",
                self.name
            ));
        }
        if self.policy != CreationPolicy::Merge && !self.created {
            let merged = marked_by(existing, &self.owner_name);
            return WriteDecision::Conflict(if merged {
                format!(
                    "Secret {} was not created by kvsync (this KeyVaultSecret merged its keys into it) and kvsync does not take over, replace or delete a Secret it did not create: set creationPolicy back to Merge, or choose another target.name for creationPolicy {:?}",
                    self.name, self.policy
                )
            } else {
                format!(
                    "Secret {} exists and is not managed by kvsync; delete it, choose another target.name, or set creationPolicy: Merge",
                    self.name
                )
            });
        }
        if !self.created
            && let Some(reason) = merge_refusal(existing, &self.owner_uid)
        {
            return WriteDecision::Conflict(format!(
                "creationPolicy Merge does not write into Secret {}: {reason}; if kvsync should add its keys anyway, annotate the Secret {MERGE_OPT_IN_ANNOTATION}=allow",
                self.name
            ));
        }
        let current: BTreeMap<String, Vec<u8>> = existing
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        let data_ok = if self.replaces_data() {
            current == self.data
        } else {
            self.data.iter().all(|(k, v)| current.get(k) == Some(v))
        };
        let subset = |want: &BTreeMap<String, String>, have: &Option<BTreeMap<String, String>>| {
            want.iter()
                .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
        };
        let owned_by_us = controlled_by(existing, &self.owner_uid);
        // The ownerReference: on a Secret kvsync created, under Owner; taken
        // off when the policy changes (else the garbage collector would
        // delete an Orphan's Secret with its object).
        let ownership_ok = owned_by_us == (self.created && self.policy == CreationPolicy::Owner);
        let type_ok = !self.created || existing.type_.as_deref().unwrap_or("Opaque") == self.type_;
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

    /// Whether the Secret's data is exactly the vault's: a Secret kvsync
    /// created, under `Owner` or `Orphan`.
    fn replaces_data(&self) -> bool {
        self.created && self.policy != CreationPolicy::Merge
    }

    /// Keys of `secret` that kvsync must remove because they are not its own:
    /// under `Owner` and `Orphan` the data is exactly the vault's, but a key
    /// another field manager added survives kvsync's server-side apply (SSA
    /// only removes fields the applier owns). Under `Merge`, or in a Secret
    /// kvsync did not create, there are none.
    pub fn foreign_keys(&self, secret: &Secret) -> Vec<String> {
        if !self.replaces_data() {
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

    /// The server-side-apply body. It carries kvsync's keys and markers, so
    /// the other field managers' keys are left alone; the `type` only for a
    /// Secret kvsync created, the ownerReference only for one it created
    /// under `Owner`.
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
        if self.created {
            body["type"] = json!(self.type_);
        }
        if self.created && self.policy == CreationPolicy::Owner {
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
            created: false,
            type_: "Opaque".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            data: BTreeMap::from([("password".into(), b"pw".to_vec())]),
        }
        .with_markers(true)
        .held(policy != CreationPolicy::Merge)
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
                owner_references: (desired.created && desired.policy == CreationPolicy::Owner)
                    .then(|| {
                        vec![OwnerReference {
                            uid: "uid-1".into(),
                            controller: Some(true),
                            ..Default::default()
                        }]
                    }),
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
    fn the_digest_changes_with_anything_that_is_written() {
        let want = desired(CreationPolicy::Owner);
        assert_eq!(want.digest(false), want.clone().digest(false));
        assert_ne!(want.digest(false), want.digest(true));
        let mut value = want.clone();
        value.data.insert("password".into(), b"new".to_vec());
        let mut label = want.clone();
        label.labels.insert("team".into(), "a".into());
        let mut policy = want.clone();
        policy.policy = CreationPolicy::Orphan;
        for other in [value, label, policy] {
            assert_ne!(want.digest(false), other.digest(false));
        }
    }

    #[test]
    fn the_owner_reference_goes_when_the_policy_is_no_longer_owner() {
        let owned = existing(&desired(CreationPolicy::Owner), &[]);
        for policy in [CreationPolicy::Orphan, CreationPolicy::Merge] {
            let want = desired(CreationPolicy::Owner);
            let want = DesiredSecret { policy, ..want };
            assert_eq!(
                want.decide(Some(&owned)),
                WriteDecision::Apply,
                "{policy:?}"
            );
            assert!(
                want.apply_body()["metadata"]
                    .get("ownerReferences")
                    .is_none()
            );
        }
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

    /// `want` as held for `secret`: created by kvsync or not, by its marks.
    fn held_for(
        want: &DesiredSecret,
        secret: &Secret,
        record: Option<&TargetRecord>,
    ) -> DesiredSecret {
        want.clone()
            .held(created_by(secret, &want.owner_name, record))
    }

    /// `secret` as kvsync created it: `type` applied by kvsync's field manager.
    fn with_type_applied(mut secret: Secret) -> Secret {
        applied_by_kvsync(
            &mut secret,
            json!({"f:type": {}, "f:data": {"f:password": {}}}),
        );
        secret.metadata.uid = Some("secret-uid".into());
        secret
    }

    #[test]
    fn someone_elses_secret_is_a_conflict_unless_merging() {
        let want = desired(CreationPolicy::Owner);
        let mut foreign = existing(&want, &[]);
        foreign.metadata.annotations = None;
        assert!(matches!(
            held_for(&want, &foreign, None).decide(Some(&foreign)),
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
    fn only_a_secret_with_kvsyncs_marks_and_no_merged_record_is_its_own() {
        let want = desired(CreationPolicy::Owner);
        let ours = with_type_applied(existing(&want, &[]));
        assert!(
            created_by(&ours, "db-kvs", None),
            "marks alone: written before the record"
        );
        assert!(!created_by(&ours, "other-kvs", None), "another object's");
        let record = |uid: &str, how| TargetRecord {
            secret_name: "db".into(),
            uid: uid.into(),
            how,
        };
        assert!(created_by(
            &ours,
            "db-kvs",
            Some(&record("secret-uid", TargetHow::Created))
        ));
        assert!(
            !created_by(
                &ours,
                "db-kvs",
                Some(&record("secret-uid", TargetHow::Merged))
            ),
            "kvsync merged into this very Secret"
        );
        // A merged-into Secret (kvsync never applied its type), whatever the
        // record claims: a forged `Created` gains nothing.
        let mut merged = existing(&desired(CreationPolicy::Merge), &[("theirs", b"x")]);
        merged.metadata.uid = Some("secret-uid".into());
        applied_by_kvsync(&mut merged, json!({"f:data": {"f:password": {}}}));
        let forged = record("secret-uid", TargetHow::Created);
        assert!(!created_by(&merged, "db-kvs", Some(&forged)));
        let want = held_for(&desired(CreationPolicy::Owner), &merged, Some(&forged));
        assert!(
            matches!(want.decide(Some(&merged)), WriteDecision::Conflict(m) if m.contains("merged its keys into it")),
            "Merge → Owner on the same Secret is refused"
        );
        assert!(
            want.apply_body()["metadata"]
                .get("ownerReferences")
                .is_none()
        );
        assert!(
            want.foreign_keys(&merged).is_empty(),
            "its keys are never removed"
        );
    }

    #[test]
    fn a_recorded_secret_is_released_as_it_was_come_by_never_by_the_policy() {
        let ours = with_type_applied(existing(&desired(CreationPolicy::Owner), &[]));
        let record = |how| TargetRecord {
            secret_name: "db".into(),
            uid: "secret-uid".into(),
            how,
        };
        let created = record(TargetHow::Created);
        assert_eq!(
            release(&ours, &created, "db-kvs", "uid-1", false),
            Release::Delete
        );
        let mut orphan = ours.clone();
        orphan.metadata.owner_references = None;
        assert_eq!(
            release(&orphan, &created, "db-kvs", "uid-1", false),
            Release::Keep
        );
        assert_eq!(
            release(&orphan, &created, "db-kvs", "uid-1", true),
            Release::Delete,
            "deletionPolicy Delete, every remote secret gone"
        );
        assert_eq!(
            release(&ours, &record(TargetHow::Merged), "db-kvs", "uid-1", true),
            Release::Withdraw
        );
        let mut recreated = ours.clone();
        recreated.metadata.uid = Some("someone-elses".into());
        assert_eq!(
            release(&recreated, &created, "db-kvs", "uid-1", true),
            Release::Leave
        );
        let mut merged = existing(&desired(CreationPolicy::Merge), &[("theirs", b"x")]);
        merged.metadata.uid = Some("secret-uid".into());
        merged.metadata.owner_references = None;
        assert_eq!(
            release(&merged, &created, "db-kvs", "uid-1", true),
            Release::Withdraw,
            "a forged Created record on a Secret kvsync merged into"
        );
    }

    #[test]
    fn a_secret_someone_else_created_meanwhile_is_told_by_its_field_managers() {
        let mut written = existing(&desired(CreationPolicy::Owner), &[]);
        applied_by_kvsync(&mut written, json!({"f:type": {}}));
        assert!(created_meanwhile(&written), "another manager's entry");
        written
            .metadata
            .managed_fields
            .as_mut()
            .unwrap()
            .retain(|e| e.manager.as_deref() == Some(FIELD_MANAGER));
        assert!(!created_meanwhile(&written), "kvsync's entry alone");
    }

    #[test]
    fn merged_into_secrets_carry_merged_by_not_owner() {
        let merge = desired(CreationPolicy::Merge);
        assert_eq!(
            merge
                .annotations
                .get(MERGED_BY_ANNOTATION)
                .map(String::as_str),
            Some("db-kvs")
        );
        assert!(!merge.annotations.contains_key(OWNER_ANNOTATION));
        let owner = desired(CreationPolicy::Owner);
        assert!(!owner.annotations.contains_key(MERGED_BY_ANNOTATION));
        assert_eq!(owner.apply_body()["type"], "Opaque");
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

    #[test]
    fn credential_types_and_kubernetes_annotations_are_refused() {
        let target = |json: serde_json::Value| -> Target { serde_json::from_value(json).unwrap() };
        assert_eq!(
            check_target(&target(
                json!({"type": "kubernetes.io/service-account-token"})
            )),
            Err(TargetError::CredentialType(
                "kubernetes.io/service-account-token".into()
            ))
        );
        assert!(check_target(&target(json!({"type": "bootstrap.kubernetes.io/token"}))).is_err());
        for key in [
            "kubernetes.io/service-account.name",
            "k8s.io/x",
            "kubectl.kubernetes.io/last-applied-configuration",
            "node.k8s.io/y",
        ] {
            assert_eq!(
                check_target(&target(json!({"annotations": {key: "v"}}))),
                Err(TargetError::ReservedAnnotation(key.into())),
                "{key}"
            );
        }
        let fine = target(json!({"type": "kubernetes.io/tls",
            "annotations": {"app.kubernetes.io/name": "shop", "team": "a", "example.com/kubernetes.io": "b"}}));
        assert_eq!(check_target(&fine), Ok(()));
        assert_eq!(
            check_target(&target(
                json!({"creationPolicy": "Merge", "immutable": true})
            )),
            Err(TargetError::ImmutableMerge),
            "kvsync freezes only Secrets it creates"
        );
        assert_eq!(
            check_target(&target(
                json!({"creationPolicy": "Owner", "immutable": true})
            )),
            Ok(())
        );
    }

    #[test]
    fn merge_stays_out_of_protected_and_foreign_controlled_secrets() {
        let merge = desired(CreationPolicy::Merge);
        let controlled_by = |api_version: &str, kind: &str| {
            let mut secret = existing(&merge, &[]);
            secret.metadata.annotations = None;
            secret.metadata.owner_references = Some(vec![OwnerReference {
                api_version: api_version.into(),
                kind: kind.into(),
                name: "x".into(),
                uid: "u".into(),
                controller: Some(true),
                ..Default::default()
            }]);
            secret
        };
        let refused = |secret: &Secret| matches!(merge.decide(Some(secret)), WriteDecision::Conflict(m) if m.contains("kvsync.io/merge=allow"));
        assert!(refused(&controlled_by("apps/v1", "Deployment")));
        assert!(refused(&controlled_by("cert-manager.io/v1", "Certificate")));
        assert!(!refused(&controlled_by(
            "external-secrets.io/v1beta1",
            "ExternalSecret"
        )));
        assert!(!refused(&controlled_by(
            "kvsync.io/v1alpha1",
            "KeyVaultSecret"
        )));
        for type_ in PROTECTED_TYPES {
            let mut secret = existing(&merge, &[]);
            secret.type_ = Some(type_.to_string());
            assert!(refused(&secret), "{type_}");
            secret
                .metadata
                .annotations
                .get_or_insert_default()
                .insert(MERGE_OPT_IN_ANNOTATION.into(), "allow".into());
            assert!(!refused(&secret), "{type_} opted in");
        }
    }
}
