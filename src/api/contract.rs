//! The contract with the cluster: every annotation, label, finalizer,
//! field-manager and Event-reporter name kvsync reads or writes on
//! Kubernetes objects, each with who writes it and when. Names only — what a
//! value means and how it is parsed stays with the stage that reads it.
//!
//! ```text
//!  written by           on                 name
//!  ────────────────────────────────────────────────────────────────────────────────────────
//!  the user         ──▶ KeyVaultSecret     kvsync.io/force-sync
//!  sync (Merge)     ──▶ KeyVaultSecret     finalizer kvsync.io/merge-cleanup
//!  sync             ──▶ target Secret      kvsync.io/owner (created) | kvsync.io/merged-by (merged),
//!                                          app.kubernetes.io/managed-by,
//!                                          reloader.stakater.com/match (unless target.reload: false)
//!  the user         ──▶ Secret, ConfigMap  kvsync.io/merge, reloader.stakater.com/match|ignore
//!  the user, AKS    ──▶ ServiceAccount     kvsync.io/allow-token-exchange, azure.workload.identity/*
//!  the user         ──▶ workload           reloader.stakater.com/* rules, <kind>.kvsync.io/pause-period
//!  reload           ──▶ workload           kvsync.io/reload-digest, kvsync.io/paused-at,
//!                                          kvsync.io/restart-pending; kvsync.io/restartedAt
//!                                          (pod template: the restart itself)
//!  Reloader         ──▶ Deployment         deployment.reloader.stakater.com/paused-at (reload removes it)
//!  reload           ──▶ Job                cronjob.kubernetes.io/instantiate: manual
//!  sync, reload     ──▶ Event              reportingController kvsync | kvsync.io/reload
//!  sync, reload     ──▶ what they write    field managers kvsync, kvsync-released | kvsync-reload
//!  the chart        ──▶ the operator       app.kubernetes.io/name: kvsync (explain finds it)
//! ```
//!
//! Reloader's own names, honoured as Reloader defines them, are in
//! [`reloader`]; kvsync's extensions of them live under `kvsync.io`.

// ── KeyVaultSecret ──────────────────────────────────────────────────────────

/// Annotation on a KeyVaultSecret, written by the user (or `kubectl annotate`):
/// a new value makes the sync stage read the vault at once, as of now.
pub const FORCE_SYNC_ANNOTATION: &str = "kvsync.io/force-sync";

/// Finalizer the sync stage adds to `creationPolicy: Merge` KeyVaultSecrets
/// (and removes when its keys are withdrawn from someone else's Secret
/// at deletion).
pub const MERGE_FINALIZER: &str = "kvsync.io/merge-cleanup";

// ── Secrets ─────────────────────────────────────────────────────────────────

/// Label the sync stage sets on every Secret it writes (and the reload stage
/// on the digest key Secret it creates).
pub const MANAGED_BY_LABEL: (&str, &str) = ("app.kubernetes.io/managed-by", "kvsync");

/// Annotation naming the KeyVaultSecret that manages a Secret: written by the
/// sync stage only on Secrets it created (one of the marks that, with the
/// ownership record in the KeyVaultSecret's status, prove a Secret kvsync's
/// own), read to tell its own Secrets from anyone else's, removed when it
/// lets go of a Secret.
pub const OWNER_ANNOTATION: &str = "kvsync.io/owner";

/// Annotation naming the KeyVaultSecret that merged its keys into a Secret
/// it did not create (`creationPolicy: Merge`): written by the sync stage
/// instead of [`OWNER_ANNOTATION`], read to refuse a second KeyVaultSecret,
/// withdrawn with kvsync's keys when it lets go of the Secret.
pub const MERGED_BY_ANNOTATION: &str = "kvsync.io/merged-by";

/// Annotation the user sets to `allow` on a Secret to let `creationPolicy:
/// Merge` write into it although its type or controller protects it; read by
/// the sync stage before a merge.
pub const MERGE_OPT_IN_ANNOTATION: &str = "kvsync.io/merge";

// ── ServiceAccounts ─────────────────────────────────────────────────────────

/// Azure Workload Identity's client id on a ServiceAccount, set by the user
/// (or AKS tooling); read by the sync stage when `workloadIdentity.clientId`
/// is not given.
pub const SA_CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";

/// Azure Workload Identity's tenant id on a ServiceAccount, set by the user;
/// read by the sync stage when `workloadIdentity.tenantId` is not given.
pub const SA_TENANT_ID_ANNOTATION: &str = "azure.workload.identity/tenant-id";

/// Annotation an administrator sets to `"true"` on a ServiceAccount: with
/// `--require-service-account-opt-in`, the sync stage exchanges tokens only
/// for ServiceAccounts that carry it.
pub const SA_OPT_IN_ANNOTATION: &str = "kvsync.io/allow-token-exchange";

// ── Workloads ───────────────────────────────────────────────────────────────

/// Metadata annotation the reload stage writes on a workload: the digests of
/// the resources it reacts to, as its pods have them (`reload::record`).
pub const DIGEST_ANNOTATION: &str = "kvsync.io/reload-digest";

/// Pod template annotation the reload stage sets to the time of a restart:
/// changing it is what rolls the pods; read back as the last restart.
pub const RESTARTED_AT_ANNOTATION: &str = "kvsync.io/restartedAt";

/// Metadata annotation the reload stage writes when a pause period starts
/// (the time of its first change) and removes at the rollout that ends it.
pub const PAUSED_AT_ANNOTATION: &str = "kvsync.io/paused-at";

/// Metadata annotation the reload stage writes while it holds a restart back
/// (minimum interval or pause period): until when, for which changes. Removed
/// by the restart; for people and `kvsync explain`, never read back to decide.
pub const PENDING_ANNOTATION: &str = "kvsync.io/restart-pending";

/// Metadata annotation the reload stage writes on a CronJob, in the same
/// patch as the record of a change, naming the Job that change owes (and
/// the resources that changed); removed once the Job is made. Read back to
/// make that Job (`reload::job`).
pub const JOB_PENDING_ANNOTATION: &str = "kvsync.io/job-pending";

/// kvsync's pause period of a StatefulSet (Reloader has one for Deployments
/// only: [`reloader::DEPLOYMENT_PAUSE_PERIOD`]), set by the user; read by the
/// reload stage.
pub const STATEFULSET_PAUSE_PERIOD: &str = "statefulset.kvsync.io/pause-period";
/// kvsync's pause period of a DaemonSet, set by the user; read by the reload stage.
pub const DAEMONSET_PAUSE_PERIOD: &str = "daemonset.kvsync.io/pause-period";
/// kvsync's pause period of an Argo Rollout, set by the user; read by the reload stage.
pub const ROLLOUT_PAUSE_PERIOD: &str = "rollout.kvsync.io/pause-period";
/// kvsync's pause period of a CronJob, set by the user; read by the reload stage.
pub const CRONJOB_PAUSE_PERIOD: &str = "cronjob.kvsync.io/pause-period";

/// Set by the user to `any` on a workload that reads some keys of a Secret
/// or ConfigMap one by one (`secretKeyRef`, volume `items`) but should
/// restart when any key changes, as Reloader does; read by the reload stage
/// (`reload::uses::key_uses`).
pub const RELOAD_KEYS_ANNOTATION: &str = "kvsync.io/reload-keys";

/// A workload's wave (a number, lowest first; unannotated workloads go
/// after every numbered wave), set by the user; read by the reload stage,
/// which restarts a wave only once the earlier waves' rollouts are complete
/// (`reload::waves`).
pub const ROLLOUT_WAVE_ANNOTATION: &str = "kvsync.io/rollout-wave";

/// Set by a person on a Secret or ConfigMap whose change a failed wave
/// halted, to the change id the halt names: the later waves go on despite
/// the failure. Read by the reload stage; a stale id (an earlier change)
/// resumes nothing.
pub const RESUME_ROLLOUT_ANNOTATION: &str = "kvsync.io/resume-rollout";

/// Annotation (value `manual`) the reload stage writes on the Job it makes
/// from a CronJob, as `kubectl create job --from=cronjob/…` does; `kvsync
/// explain` reads it to find that Job.
pub const CRONJOB_INSTANTIATE: &str = "cronjob.kubernetes.io/instantiate";

/// kubectl's copy of the last applied manifest, written by `kubectl apply`:
/// a tool's annotation, never the user's data, often as large as the object.
/// The sync stage drops it from the KeyVaultSecrets it keeps; `kvsync
/// convert` drops it from what it converts.
pub const KUBECTL_LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

// ── The operator itself ─────────────────────────────────────────────────────

/// The label selector of the operator's Deployment, as the chart labels it;
/// `kvsync explain` reads the operator's settings from that Deployment.
pub const OPERATOR_SELECTOR: &str = "app.kubernetes.io/name=kvsync";

// ── Field managers ──────────────────────────────────────────────────────────

/// Field manager of the sync stage's writes: the target Secrets (server-side
/// apply), the KeyVaultSecrets' status and finalizers, and the CRD at start-up.
pub const FIELD_MANAGER: &str = "kvsync";

/// Field manager the sync stage hands the data of a released `Orphan` Secret
/// to, so that its own apply can drop its ownership without deleting values.
pub const RELEASED_FIELD_MANAGER: &str = "kvsync-released";

/// Field manager of the reload stage's writes: workload patches (restarts,
/// digests, pause and pending marks) and the Jobs it makes from CronJobs.
pub const RELOAD_FIELD_MANAGER: &str = "kvsync-reload";

// ── Events ──────────────────────────────────────────────────────────────────

/// `reportingController` of the Events the sync stage writes on KeyVaultSecrets.
pub const SYNC_EVENT_REPORTER: &str = "kvsync";

/// `reportingController` of the Events the reload stage writes on workloads
/// (`Reloaded`, annotation warnings) and on the operator's own pod.
pub const RELOAD_EVENT_REPORTER: &str = "kvsync.io/reload";

/// Stakater Reloader's annotations (v1.4.x), which kvsync honours so that a
/// cluster can switch from Reloader without touching its workloads. The user
/// writes them on workloads and on Secrets and ConfigMaps; the reload stage
/// reads them (`reload::annotations` says how); the sync stage writes only
/// [`MATCH`] on its target Secrets, and the reload stage removes only
/// [`PAUSED_AT`].
pub mod reloader {
    /// `"true"` on a workload: reload on a change of any Secret or ConfigMap
    /// the pod spec uses.
    pub const AUTO: &str = "reloader.stakater.com/auto";
    /// `"true"` on a workload: react to used resources that carry [`MATCH`].
    pub const SEARCH: &str = "reloader.stakater.com/search";
    /// `"true"` on a Secret or ConfigMap: eligible for workloads with
    /// [`SEARCH`]. The sync stage writes it on its targets unless
    /// `target.reload: false`.
    pub const MATCH: &str = "reloader.stakater.com/match";
    /// `"true"` on a Secret or ConfigMap: never restarts anything.
    pub const IGNORE: &str = "reloader.stakater.com/ignore";

    /// [`AUTO`] for Secrets only.
    pub const SECRET_AUTO: &str = "secret.reloader.stakater.com/auto";
    /// [`AUTO`] for ConfigMaps only.
    pub const CONFIGMAP_AUTO: &str = "configmap.reloader.stakater.com/auto";
    /// Comma list of anchored regular expressions naming Secrets to react to,
    /// used or not.
    pub const SECRET_RELOAD: &str = "secret.reloader.stakater.com/reload";
    /// The same for ConfigMaps.
    pub const CONFIGMAP_RELOAD: &str = "configmap.reloader.stakater.com/reload";
    /// Comma list of exact Secret names never to react to.
    pub const SECRETS_EXCLUDE: &str = "secrets.exclude.reloader.stakater.com/reload";
    /// The same for ConfigMaps.
    pub const CONFIGMAPS_EXCLUDE: &str = "configmaps.exclude.reloader.stakater.com/reload";

    /// The pause period of a Deployment (Go duration): changes within it
    /// after a first one are folded into one rollout when it ends.
    pub const DEPLOYMENT_PAUSE_PERIOD: &str = "deployment.reloader.stakater.com/pause-period";
    /// On an Argo Rollout: `restart` restarts it by setting `spec.restartAt`
    /// (Argo then replaces the pods without a new revision); anything else,
    /// or none, by the pod template annotation, like a Deployment.
    pub const ROLLOUT_STRATEGY: &str = "reloader.stakater.com/rollout-strategy";
    /// Written by Reloader (RFC 3339) on a Deployment it paused (`spec.paused:
    /// true`) for its pause period; the reload stage resumes such a Deployment when the period is
    /// over and removes it, so switching from Reloader mid-pause strands nothing.
    pub const PAUSED_AT: &str = "deployment.reloader.stakater.com/paused-at";
}
