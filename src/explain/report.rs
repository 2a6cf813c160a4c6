//! The answers `kvsync explain` gives, as data: serialised as they are for
//! `-o json`, printed by [`super::render`] otherwise. Nothing here can hold a
//! secret value: keys, names, versions, rules and times only.

use std::collections::BTreeMap;

use serde::Serialize;

/// One explanation (each says its `kind`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Report {
    KeyVaultSecret(KeyVaultSecretReport),
    Workload(WorkloadReport),
}

/// `explain kvs/NAME`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyVaultSecretReport {
    /// Always `KeyVaultSecret`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub vault_url: String,
    /// The target Secret.
    pub secret: String,
    /// Whether the target Secret exists now.
    pub secret_exists: bool,
    /// Each spec entry: the Secret keys it makes and where they come from.
    pub keys: Vec<KeySource>,
    /// With `target.template`: its `mergePolicy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merge_policy: Option<String>,
    pub refresh: Refresh,
    pub condition: Option<ConditionView>,
    /// When the Secret's content last changed (or was first confirmed).
    pub last_sync_time: Option<String>,
    /// Whether the Secret is marked `reloader.stakater.com/match`.
    pub reload_marked: bool,
    /// Workloads of the namespace that restart when the Secret's data changes.
    pub restarts: Vec<WorkloadReaction>,
    /// How many of them run the current data, who is behind and why, a halt
    /// (the operator's `status.rollout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::api::RolloutStatus>,
    /// What could not be read (permissions), so the answer may be partial.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<String>,
}

/// Where Secret keys come from.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeySource {
    /// The Secret key, or a description of the keys (`<each field of …>`).
    pub key: String,
    /// `data`, `dataFrom.extract`, `dataFrom.find` or `dataFrom.certificate`.
    pub from: &'static str,
    /// The vault secret, or the filter for `find`.
    pub vault_secret: String,
    /// `latest` or the pinned version.
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
    pub decoding: String,
    /// The versions in the Secret now (vault secret → version), from status.
    pub synced: BTreeMap<String, String>,
    /// False: the spec says so, but the Secret has no such key (yet) — or,
    /// with templates and `mergePolicy: Replace`, a fetched key only the
    /// templates read.
    pub in_secret: bool,
    /// For a key `target.template` renders: the template and what it reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateUse>,
}

/// The template a Secret key is rendered from.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateUse {
    /// `target.template.data` or `templateFrom ConfigMap/NAME` (`Secret/NAME`).
    pub origin: String,
    /// The fetched values it looks up.
    pub variables: Vec<TemplateVariable>,
    /// Why its variables are not known (its text unreadable or invalid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
}

/// A variable a template looks up, traced to the spec entry fetching it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateVariable {
    pub variable: String,
    /// The spec entry, in words.
    pub from: String,
    /// The vault secret, when one is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vault_secret: Option<String>,
}

/// When the vault is read again.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Refresh {
    /// `refreshInterval` as written (default `1h`), or why it is unusable.
    pub interval: String,
    /// In words: when the next read happens.
    pub next: String,
}

/// The `Ready` condition, with what to do about it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    pub status: String,
    pub reason: String,
    pub message: String,
    pub since: String,
    /// Whether the condition describes the current spec (observedGeneration).
    pub current: bool,
    pub what_to_do: String,
}

/// A workload that reacts to a resource, and by which rule.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadReaction {
    pub workload: String,
    pub rule: String,
}

/// `explain deployment/NAME` (and statefulset, daemonset, rollout, cronjob).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadReport {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Rollout` or `CronJob`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// False: the workload carries no reload annotation; kvsync leaves it alone.
    pub opted_in: bool,
    /// The annotations the rules come from, in words.
    pub rules: Vec<String>,
    /// Annotation values that could not be used (and are skipped).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Secrets and ConfigMaps whose change restarts it.
    pub reacts_to: Vec<ResourceVerdict>,
    /// Secrets and ConfigMaps it uses or names but does not restart for.
    pub ignores: Vec<ResourceVerdict>,
    /// Whether kvsync has recorded what the pods run with (baselined).
    pub baselined: bool,
    pub last_restart: Option<LastRestart>,
    /// Whether a restart is pending now, and until when.
    pub pending: PendingRestart,
    /// When a restart for a change made now may happen.
    pub restart_window: RestartWindow,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<String>,
}

/// One Secret or ConfigMap, and why the workload does or does not react.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceVerdict {
    /// `Secret/NAME` or `ConfigMap/NAME`.
    pub resource: String,
    pub why: String,
    /// Whether the pod spec references it.
    pub used: bool,
    /// Whether it exists now.
    pub present: bool,
    /// The KeyVaultSecret that writes it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written_by: Option<String>,
}

/// The last restart kvsync made.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastRestart {
    pub at: String,
    /// The `Reloaded` event's note (`Rolling restart: Secret/db changed`), if still kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// For a CronJob: the Job kvsync created then, if it still exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

/// Whether kvsync has a restart to make for changes already made.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingRestart {
    pub state: PendingState,
    /// In words: why, and until when.
    pub summary: String,
    /// When the restart is due (now, for one held by nothing but the debounce).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// The resources whose change it is for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
}

/// Whether a restart is pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PendingState {
    Pending,
    None,
    /// What the pods run with cannot be compared to the present (see the summary).
    Unknown,
}

/// Where explain has the operator's `--min-reload-interval` from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "from", content = "object")]
pub enum IntervalSource {
    /// explain's own `--min-reload-interval`.
    Flag,
    /// The operator's Deployment (`Deployment NAMESPACE/NAME`).
    Operator(String),
    /// Neither: the operator's default.
    Assumed,
}

/// Whether a change now restarts at once or waits, and until when.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestartWindow {
    /// The operator's minimum interval between restarts.
    pub min_interval: String,
    /// Where `min_interval` comes from.
    pub min_interval_from: IntervalSource,
    /// Set while a change would wait: the earliest restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_until: Option<String>,
    pub summary: String,
}
