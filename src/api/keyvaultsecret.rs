//! The `KeyVaultSecret` custom resource (`kvsync.io/v1alpha1`).
//!
//! ```text
//! KeyVaultSecret
//!  ├─ spec.vaultUrl ─────────── which vault (host must be on the operator's allow-list)
//!  ├─ spec.auth ─────────────── exactly one identity to read it with
//!  ├─ spec.data[]  ──────────── one Secret key  ← one vault secret (optionally a JSON property of it)
//!  ├─ spec.dataFrom[] ───────── many Secret keys ← a JSON object secret | every secret matching a filter
//!  │                                             | a certificate-backed secret as tls.crt/tls.key
//!  └─ spec.target ───────────── the Secret written (name, type, labels, ownership, reload opt-in)
//! ```
//!
//! What the schema can check statically it does (required fields, `https://`
//! URLs, name patterns, duration syntax, "exactly one of"); everything else is
//! reported by the reconciler as an `InvalidSpec` condition. The schema stays
//! within what Kubernetes 1.20 accepts (structural, no CEL).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use litemap::LiteMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What to read (vault, identity, secrets) and which Secret to write.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kvsync.io",
    version = "v1alpha1",
    kind = "KeyVaultSecret",
    namespaced,
    shortname = "kvs",
    doc = "A KeyVaultSecret keeps one Kubernetes Secret in step with secrets in an Azure Key Vault: kvsync re-reads the vault every spec.refreshInterval, writes the Secret only when a value changed, and (unless spec.target.reload is false) marks it so that annotated workloads restart on change. status.conditions[Ready] says whether the Secret is current and, if not, what to fix; `kvsync explain kvs/NAME` shows where each key comes from and what restarts when it changes.",
    status = "KeyVaultSecretStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".status.secretName"}"#,
    printcolumn = r#"{"name":"Last Sync","type":"date","jsonPath":".status.lastSyncTime"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"Rolled Out","type":"string","jsonPath":".status.conditions[?(@.type==\"RolledOut\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyVaultSecretSpec {
    /// The vault's URL, e.g. `https://shop-kv.vault.azure.net/`. Its host must be
    /// an Azure Key Vault domain or on the operator's allow-list.
    #[schemars(regex(pattern = r"^https://[^/?#\s]+/?$"))]
    pub vault_url: String,

    /// The identity used to read the vault: exactly one of `workloadIdentity`,
    /// `clientSecret`, `clientCertificate`.
    pub auth: Auth,

    /// How often to re-read the vault (`15m`, `1h`; `0` = once). Default `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(0|([0-9]+(ms|s|m|h|d))+)$"))]
    pub refresh_interval: Option<String>,

    /// The Secret to write. Default: a Secret named like the KeyVaultSecret,
    /// owned by it, marked for reloads.
    #[serde(default)]
    pub target: Target,

    /// One Secret key per vault secret (or per JSON property of one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<DataRef>,

    /// Many Secret keys from one source each: a JSON object secret, every
    /// secret matching a filter, or a certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_from: Vec<DataFrom>,
}

/// Exactly one way to authenticate to Key Vault.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = exactly_one_auth)]
pub struct Auth {
    /// Federated Workload Identity: a service account of this namespace, or
    /// (no `serviceAccountName`) the operator's own identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<WorkloadIdentityAuth>,
    /// An Entra app's client secret, read from a Secret in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<ClientSecretAuth>,
    /// An Entra app's client certificate (PEM with key), read from a Secret in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientSecretAuth>,
    /// The managed identity of the node the operator runs on (Azure Instance
    /// Metadata Service): the operator's host identity, so allowed only in
    /// namespaces the operator is configured to allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_identity: Option<ManagedIdentityAuth>,
}

/// The one identity an `auth` names.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AuthMethod<'a> {
    WorkloadIdentity(&'a WorkloadIdentityAuth),
    ClientSecret(&'a ClientSecretAuth),
    ClientCertificate(&'a ClientSecretAuth),
    ManagedIdentity(&'a ManagedIdentityAuth),
}

impl Auth {
    /// The identity to use; `None` unless exactly one is set (the schema
    /// requires one, but a 1.20 API server prunes rather than validates).
    pub fn method(&self) -> Option<AuthMethod<'_>> {
        match (
            &self.workload_identity,
            &self.client_secret,
            &self.client_certificate,
            &self.managed_identity,
        ) {
            (Some(wi), None, None, None) => Some(AuthMethod::WorkloadIdentity(wi)),
            (None, Some(cs), None, None) => Some(AuthMethod::ClientSecret(cs)),
            (None, None, Some(cc), None) => Some(AuthMethod::ClientCertificate(cc)),
            (None, None, None, Some(mi)) => Some(AuthMethod::ManagedIdentity(mi)),
            _ => None,
        }
    }
}

fn exactly_one_auth(schema: &mut schemars::Schema) {
    exactly_one_of(
        schema,
        &[
            "workloadIdentity",
            "clientSecret",
            "clientCertificate",
            "managedIdentity",
        ],
    );
}

/// A managed identity of the node: system-assigned, or the user-assigned one
/// with this client id (e.g. an AKS kubelet identity).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManagedIdentityAuth {
    /// Client id of a user-assigned identity. Omitted: the system-assigned identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub client_id: Option<String>,
}

/// Adds a structural `oneOf` that makes exactly one of `fields` required.
pub(super) fn exactly_one_of(schema: &mut schemars::Schema, fields: &[&str]) {
    let one_of: Vec<serde_json::Value> = fields
        .iter()
        .map(|field| serde_json::json!({ "required": [field] }))
        .collect();
    schema.insert("oneOf".into(), one_of.into());
}

/// Federated Workload Identity (AKS): the token of a service account of this
/// namespace is exchanged for an Entra token.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadIdentityAuth {
    /// A service account in this namespace. Omitted: the operator's own identity
    /// (allowed only in namespaces the operator is configured to allow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub service_account_name: Option<String>,
    /// Overrides the service account's `azure.workload.identity/client-id` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Overrides the service account's `azure.workload.identity/tenant-id` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
}

/// An Entra app credential kept in a Secret of the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientSecretAuth {
    /// The Entra tenant (directory) id of the app.
    #[schemars(length(min = 1))]
    pub tenant_id: String,
    /// The app's client (application) id.
    #[schemars(length(min = 1))]
    pub client_id: String,
    /// The Secret key holding the credential (client secret, or PEM
    /// certificate with its private key).
    pub secret_ref: SecretKeyRef,
}

/// A key of a Secret in the KeyVaultSecret's own namespace (never another).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
    /// The key within the Secret's data.
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]{1,253}$"))]
    pub key: String,
}

/// The Secret that kvsync writes.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    /// Secret name; default: the KeyVaultSecret's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        length(max = 253)
    )]
    pub name: Option<String>,
    /// Secret type, e.g. `Opaque`, `kubernetes.io/tls`. Default `Opaque`.
    /// Not a type Kubernetes fills with a token (service-account, bootstrap).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("not" = {"enum": ["kubernetes.io/service-account-token", "bootstrap.kubernetes.io/token"]}))]
    pub type_: Option<String>,
    /// Labels added to the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Who owns the Secret: `Owner` (default; kvsync creates it and it is
    /// deleted with the KeyVaultSecret), `Orphan` (kvsync creates it and it
    /// outlives the KeyVaultSecret) or `Merge` (the Secret exists already;
    /// kvsync manages only its own keys).
    #[serde(default)]
    pub creation_policy: CreationPolicy,
    /// Mark the Secret `reloader.stakater.com/match: "true"` so workloads with
    /// `reloader.stakater.com/search` restart on change. Default true.
    #[serde(default = "default_true")]
    pub reload: bool,
    /// Build the data from templates over the fetched values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<super::Template>,
    /// Write the Secret `immutable: true`; a later change of the vault is
    /// reported (`SecretImmutable`), not written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub immutable: bool,
    /// When a referenced remote secret is deleted: `Retain` (default), `Merge`, `Delete`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub deletion_policy: super::DeletionPolicy,
}

fn default_true() -> bool {
    true
}

/// Written by hand: an omitted `target` must mean `reload: true`, like an
/// omitted `target.reload` (a derived `Default` would say false).
impl Default for Target {
    fn default() -> Self {
        Target {
            name: None,
            type_: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            creation_policy: CreationPolicy::default(),
            reload: default_true(),
            template: None,
            immutable: false,
            deletion_policy: super::DeletionPolicy::default(),
        }
    }
}

/// Who owns the target Secret.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum CreationPolicy {
    /// kvsync creates and owns the Secret; it is deleted with the KeyVaultSecret.
    #[default]
    Owner,
    /// kvsync creates the Secret but it outlives the KeyVaultSecret.
    Orphan,
    /// The Secret exists already (someone else's); kvsync manages only its own keys.
    Merge,
}

/// One Secret key from one vault secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataRef {
    /// The key in the target Secret.
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]{1,253}$"))]
    pub secret_key: String,
    /// The vault secret whose value goes there.
    pub remote_ref: RemoteRef,
    /// A second key holding the previous enabled version's value (the one
    /// created before the version in `secretKey`), read the same way, for
    /// services that accept the old and the new credential during a
    /// rotation. Not written while the secret has no previous version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]{1,253}$"))]
    pub previous_secret_key: Option<String>,
}

/// A vault secret (and optionally a part of its value).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemoteRef {
    /// The vault secret's name.
    #[schemars(regex(pattern = r"^[0-9a-zA-Z-]{1,127}$"))]
    pub name: String,
    /// Pin a version (32 hex characters); empty: the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9a-fA-F]{32})?$"))]
    pub version: Option<String>,
    /// For a JSON value: a dotted path to one field (`db.password`, `hosts.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
    /// How to decode the value before writing it.
    #[serde(default)]
    pub decoding_strategy: DecodingStrategy,
    /// `Fetch`: read the secret's tags instead of its value.
    #[serde(default, skip_serializing_if = "is_default")]
    pub metadata_policy: super::MetadataPolicy,
    /// Without a pinned version: `Respect` (default) reads the newest version
    /// whose `nbf` (not before) has passed and takes a newer one at its `nbf`;
    /// `Ignore` reads the newest version at once, whatever its `nbf`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub not_before_policy: super::NotBeforePolicy,
}

/// How to decode a vault value before writing it: `None` (default; as it
/// is), `Base64` (standard base64), `Base64URL` (URL-safe base64) or `Auto`
/// (decode when the value is valid base64 in either alphabet, else as it is).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DecodingStrategy {
    /// Write the value as it is.
    #[default]
    None,
    /// The value is standard base64.
    Base64,
    /// The value is URL-safe base64.
    Base64URL,
    /// Decode base64 (either alphabet) when the value is valid base64, else write as is.
    Auto,
}

/// Many Secret keys from one source: exactly one of `extract`, `find`, `certificate`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = exactly_one_data_from)]
pub struct DataFrom {
    /// A secret whose value is a JSON object: one key per top-level field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract: Option<ExtractRef>,
    /// Every enabled secret matching the filter: one key per secret (its name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub find: Option<FindRef>,
    /// A certificate-backed secret (PEM or PKCS#12) as `tls.crt` and `tls.key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateRef>,
    /// What happens to characters of the entry's keys that a Secret key cannot hold.
    #[serde(default, skip_serializing_if = "is_default")]
    pub conversion_strategy: super::ConversionStrategy,
    /// Rewrites of the entry's keys, applied in order after the conversion.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewrite: Vec<super::Rewrite>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// The one source a `dataFrom` entry names.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DataFromSource<'a> {
    Extract(&'a ExtractRef),
    Find(&'a FindRef),
    Certificate(&'a CertificateRef),
}

impl DataFrom {
    /// The entry's source; `None` unless exactly one is set (the schema
    /// requires one, but a 1.20 API server prunes rather than validates).
    pub fn source(&self) -> Option<DataFromSource<'_>> {
        match (&self.extract, &self.find, &self.certificate) {
            (Some(extract), None, None) => Some(DataFromSource::Extract(extract)),
            (None, Some(find), None) => Some(DataFromSource::Find(find)),
            (None, None, Some(certificate)) => Some(DataFromSource::Certificate(certificate)),
            _ => None,
        }
    }
}

fn exactly_one_data_from(schema: &mut schemars::Schema) {
    exactly_one_of(schema, &["extract", "find", "certificate"]);
}

/// A vault secret holding a JSON object.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtractRef {
    /// The vault secret's name.
    #[schemars(regex(pattern = r"^[0-9a-zA-Z-]{1,127}$"))]
    pub name: String,
    /// Pin a version (32 hex characters); empty: the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9a-fA-F]{32})?$"))]
    pub version: Option<String>,
    /// Explode this JSON field (a dotted path, as in `data[].remoteRef.property`) instead of the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
    /// How to decode each field's value before writing it.
    #[serde(default)]
    pub decoding_strategy: DecodingStrategy,
    /// Without a pinned version: `Respect` (default) reads the newest version
    /// whose `nbf` (not before) has passed and takes a newer one at its `nbf`;
    /// `Ignore` reads the newest version at once, whatever its `nbf`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub not_before_policy: super::NotBeforePolicy,
}

/// A filter over the vault's secrets (both parts must match).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FindRef {
    /// Regular expression on the secret name (unanchored; add `^…$` to anchor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_regex: Option<String>,
    /// Every one of these tags must be present with this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// How to decode each value before writing it.
    #[serde(default)]
    pub decoding_strategy: DecodingStrategy,
    /// `Respect` (default): each match's newest version whose `nbf` (not
    /// before) has passed, a match with none yet left out until its first
    /// `nbf`; `Ignore`: each match's newest version, whatever its `nbf`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub not_before_policy: super::NotBeforePolicy,
}

/// The secret behind a Key Vault certificate.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateRef {
    /// The certificate's (and its secret's) name.
    #[schemars(regex(pattern = r"^[0-9a-zA-Z-]{1,127}$"))]
    pub name: String,
    /// Pin a version (32 hex characters); empty: the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9a-fA-F]{32})?$"))]
    pub version: Option<String>,
    /// Without a pinned version: `Respect` (default) reads the newest version
    /// whose `nbf` (not before) has passed and takes a newer one at its `nbf`;
    /// `Ignore` reads the newest version at once, whatever its `nbf`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub not_before_policy: super::NotBeforePolicy,
}

/// Vault secret name → version, sorted: a vector (every object keeps one in
/// the store, where a one-entry `BTreeMap` would allocate an 11-slot node).
pub type SyncedVersions = LiteMap<String, String>;

/// What kvsync last did. Written only when it changes, so an idle refresh
/// costs no API write.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyVaultSecretStatus {
    /// The `metadata.generation` of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: True when the Secret holds the vault's current values (checked
    /// within refreshInterval); False with a reason and what to fix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The name of the Secret written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Vault secret name → the version whose value is in the Secret.
    #[serde(default, skip_serializing_if = "LiteMap::is_empty")]
    #[schemars(with = "BTreeMap<String, String>")]
    pub synced_versions: SyncedVersions,
    /// When the Secret's content last changed (or was first confirmed in sync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// The earliest `exp` (expiry) among the Key Vault versions in the Secret;
    /// absent when none has one. The `Expiring` and `Expired` conditions
    /// follow it (`Ready` does not: Key Vault still serves an expired version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// Newer Key Vault versions that are not valid yet (`nbf` in the future)
    /// and will replace what the Secret holds at their `notBefore`
    /// (`notBeforePolicy: Respect`), earliest first. The condition
    /// `RotationScheduled` says the same in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingVersion>,
    /// The ownership record: every Secret kvsync wrote for this object and
    /// has not let go of yet, with its uid and how kvsync came to it. kvsync
    /// deletes, freezes, takes over or strips a Secret only if it created
    /// that very Secret (see docs/resource.md, "Lifecycle and ownership").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetRecord>,
    /// How the workloads that restart when the Secret changes stand: how
    /// many run its current data with their rollout complete (the
    /// `RolledOut` condition is True when all do — then the previous
    /// credential can be revoked), which are still behind and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

/// The rollout of the Secret's current data to the workloads using it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Workloads that restart when the Secret's data changes.
    pub workloads: u32,
    /// Of those, the ones running the current data with their rollout complete.
    pub current: u32,
    /// Some of the workloads still behind (at most 10), with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub behind: Vec<BehindWorkload>,
    /// Set while a failed rollout halts the change: later waves keep their
    /// old pods until the data changes again or a person resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<HaltedRollout>,
}

/// A workload not yet running the current data.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BehindWorkload {
    /// `Kind/name`.
    pub workload: String,
    /// Why, in words (waiting for a wave, halted, minimum interval, …).
    pub reason: String,
}

/// A change halted by a failed rollout.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HaltedRollout {
    /// The workload whose rollout failed (`Kind/name`).
    pub workload: String,
    /// The change's id: `kvsync.io/resume-rollout` on the Secret takes it.
    pub change: String,
}

/// A Key Vault version that becomes current at its `nbf`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingVersion {
    /// The vault secret's name.
    pub name: String,
    /// The version (32 hex characters) that is not valid yet.
    pub version: String,
    /// Its `nbf`: when kvsync writes its value into the Secret.
    pub not_before: Time,
}

/// One Secret kvsync wrote for a KeyVaultSecret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRecord {
    /// The Secret's name (in the KeyVaultSecret's namespace).
    pub secret_name: String,
    /// The Secret's `metadata.uid` when kvsync wrote it.
    pub uid: String,
    /// How kvsync came to it.
    pub how: TargetHow,
}

/// How kvsync came to a target Secret.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TargetHow {
    /// kvsync created it (`creationPolicy` Owner or Orphan): kvsync's own.
    Created,
    /// It existed and kvsync added its keys (`creationPolicy: Merge`):
    /// someone else's, of which kvsync only ever gives back its own keys.
    Merged,
}

/// Longest `refreshInterval` accepted (180 days). The schema's pattern admits
/// any number of digits; longer intervals are refused with a message instead
/// of overflowing the scheduler's arithmetic.
pub const MAX_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(180 * 86400);

/// Why a `refreshInterval` cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RefreshIntervalError {
    #[error("{text:?}: {source}")]
    Unparsable {
        text: String,
        #[source]
        source: humantime::DurationError,
    },
    #[error("{0:?} is longer than the maximum of 180d; use 0 to sync only once")]
    TooLong(String),
}

impl KeyVaultSecretSpec {
    /// The refresh interval; `None` means "sync once".
    pub fn refresh_interval(&self) -> Result<Option<std::time::Duration>, RefreshIntervalError> {
        let text = self.refresh_interval.as_deref().unwrap_or("1h");
        let interval =
            humantime::parse_duration(text).map_err(|source| RefreshIntervalError::Unparsable {
                text: text.to_owned(),
                source,
            })?;
        if interval > MAX_REFRESH_INTERVAL {
            return Err(RefreshIntervalError::TooLong(text.to_owned()));
        }
        Ok((!interval.is_zero()).then_some(interval))
    }
}

impl KeyVaultSecret {
    /// The target Secret's name.
    pub fn target_name(&self) -> String {
        self.spec
            .target
            .name
            .clone()
            .unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(refresh_interval: &str) -> KeyVaultSecretSpec {
        serde_json::from_value(serde_json::json!({
            "vaultUrl": "https://shop.vault.azure.net/",
            "auth": {"workloadIdentity": {}},
            "refreshInterval": refresh_interval,
        }))
        .unwrap()
    }

    #[test]
    fn refresh_interval_forms() {
        let minutes = |m: u64| Ok(Some(std::time::Duration::from_secs(60 * m)));
        assert_eq!(spec("15m").refresh_interval(), minutes(15));
        assert_eq!(spec("1h30m").refresh_interval(), minutes(90));
        assert_eq!(spec("0").refresh_interval(), Ok(None));
        assert!(spec("soon").refresh_interval().is_err());
        let too_long = spec("18446744073709551615s")
            .refresh_interval()
            .unwrap_err();
        assert!(
            too_long.to_string().contains("maximum of 180d"),
            "{too_long}"
        );
    }

    proptest! {
        #[test]
        fn refresh_interval_never_panics(text in any::<String>()) {
            let _ = spec(&text).refresh_interval();
        }

        /// Whatever the schema lets through can be scheduled.
        #[test]
        fn schema_valid_intervals_can_be_scheduled(
            text in prop_oneof![
                "(0|([0-9]{1,22}(ms|s|m|h|d)){1,3})",
                (any::<u64>(), prop_oneof!["ms", "s", "m", "h", "d"]).prop_map(|(n, unit)| format!("{n}{unit}")),
            ],
            unit_random in 0.0f64..=1.0,
        ) {
            if let Ok(Some(interval)) = spec(&text).refresh_interval() {
                let delay = crate::schedule::refresh_delay(interval, unit_random);
                prop_assert!(delay >= interval.mul_f64(0.9) && delay <= interval.mul_f64(1.1));
            }
        }
    }
}
