//! One sync of one KeyVaultSecret, in named steps:
//!
//! ```text
//!  reconcile ─▶ in scope? ─▶ being deleted? ── finalize (merged-into targets: withdraw keys) ─▶ done
//!      │         └ no: only a deletion is finished (no finalizer left hanging)
//!      └─▶ (Merge: finalizer) ─▶ sync: validate ─▶ identity ─▶ subscribe ─▶ fetch + render ─▶ write target
//!                 ─▶ let go of the other recorded targets (a rename: only now that the new one holds the data)
//!                 ─▶ Outcome ─▶ finalizer as the ownership record now needs it
//!                 ─▶ record (status + ownership record, patched only if changed; event on change)
//!                                └─▶ next: refreshInterval ± jitter (or a pending version's nbf,
//!                                          if sooner) | backoff | await change
//! ```
//!
//! Failures never touch the Secret: the last good data stays, the `Ready`
//! condition names the cause, and [`SyncError::retry`] says when to look again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use regex::Regex;
use serde_json::json;

use super::context::Context;
use super::error::{Retry, SyncError};
use super::fetch::{Rendered, fetch_and_render, interest};
use super::key::ObjectKey;
use super::shares::SHARE_RETRY;
use super::status::{Outcome, merge_patch, next_status, ready_reason};
use super::target::{self, DesiredSecret, Release};
use super::{expiry, identity, keys, rollout, template, template_from, write};
use crate::api::contract::{FIELD_MANAGER, FORCE_SYNC_ANNOTATION, MERGE_FINALIZER};
use crate::api::{
    CreationPolicy, DataFrom, DeletionPolicy, KeyVaultSecret, TargetHow, TargetRecord,
};
use crate::schedule;
use crate::vault::Freshness;

/// Errors that are the cluster's, not the user's: the controller retries them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The sync panicked: a defect of kvsync's, contained to this object.
    #[error("the sync panicked (a defect of kvsync); retried with backoff")]
    Panicked,
}

impl Error {
    /// Label for the error counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube_api",
            Error::Panicked => "panic",
        }
    }

    /// The reason the object's failure is counted under.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => SyncError::KUBE_REASON,
            Error::Panicked => "InternalError",
        }
    }
}

/// [`reconcile`], with a fault contained to its object: a panic in one sync
/// becomes that object's error (counted, logged, retried with backoff by
/// [`error_policy`]); the process and every other object go on.
///
/// An object whose namespace holds its whole share of the sync slots is
/// requeued at once, leaving its slot to other namespaces (see [`super::shares`]).
pub async fn reconcile_contained(
    kvs: Arc<KeyVaultSecret>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    use futures::FutureExt;
    let Some(_slot) = ctx.shares.enter(&kvs.namespace().unwrap_or_default()) else {
        let jitter = SHARE_RETRY.mul_f64(rand::random::<f64>());
        return Ok(Action::requeue(SHARE_RETRY + jitter));
    };
    std::panic::AssertUnwindSafe(reconcile(kvs, ctx))
        .catch_unwind()
        .await
        .unwrap_or(Err(Error::Panicked))
}

/// What a successful sync produced.
struct Synced {
    secret_name: String,
    rendered: Rendered,
    wrote: bool,
}

/// The controller's reconcile function.
pub async fn reconcile(kvs: Arc<KeyVaultSecret>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let _in_flight = ctx.metrics.sync_started();
    let mut targets = recorded_targets(&kvs);
    if !in_scope(&ctx, &kvs.namespace().unwrap_or_default()).await? {
        let key = ObjectKey::of(kvs.as_ref());
        tracing::debug!(object = %key, "not in scope (--namespaces, --ignore-namespaces, --namespace-selector): not served");
        ctx.vault.unsubscribe(key.as_str());
        // No longer served, but a deletion still gives back what it merged
        // and lets the object go: no finalizer is left hanging.
        if kvs.metadata.deletion_timestamp.is_some() {
            finish_deletion(&kvs, &ctx, &targets).await?;
        }
        return Ok(Action::await_change());
    }
    if kvs.metadata.deletion_timestamp.is_some() {
        finish_deletion(&kvs, &ctx, &targets).await?;
        return Ok(Action::await_change());
    }
    let merging = kvs.spec.target.creation_policy == CreationPolicy::Merge;
    if merging {
        // Before kvsync writes into someone else's Secret.
        set_finalizer(&kvs, &ctx, true).await?;
    }
    let key = ObjectKey::of(kvs.as_ref());
    let interval = kvs.spec.refresh_interval().ok().flatten();
    let freshness = match freshness(&kvs, &ctx, interval) {
        Ok(freshness) => freshness,
        // Read as of now again too soon: the sync waits (nothing changes meanwhile).
        Err(wait) => return Ok(Action::requeue(wait)),
    };
    // `expires` is known after a sync only; a failure keeps what the status says.
    let (outcome, action, expires) = match sync(&kvs, &ctx, freshness, &mut targets).await {
        Ok(synced) => {
            ctx.memory.lock().unwrap().succeeded(&key);
            ctx.metrics.object_current(&key, interval);
            ctx.metrics
                .object_expiry(&key, synced.rendered.expires, ctx.expiry_window);
            // A rotation scheduled in Key Vault is taken at its nbf, not at
            // the next refresh.
            let switch = synced.rendered.until_next_switch(Timestamp::now());
            let action = match switch {
                Some(switch) => Action::requeue(interval.map_or(switch, |interval| {
                    switch.min(schedule::refresh_delay(interval, rand::random()))
                })),
                None => at_interval(interval),
            };
            let outcome = Outcome::Synced {
                secret_name: synced.secret_name,
                versions: synced.rendered.versions,
                wrote: synced.wrote,
                pending: synced.rendered.pending,
            };
            (outcome, action, Some(synced.rendered.expires))
        }
        Err(SyncError::Kube(error)) => return Err(error.into()),
        Err(failure) => {
            let action = match failure.retry() {
                // With refreshInterval 0 a value that could not be rendered
                // yet would never be looked at again: backoff until it is.
                Retry::AtInterval if interval.is_none() && failure.unrendered() => {
                    backoff(&ctx, &key, None)
                }
                Retry::AfterChange => {
                    // Nothing to poll for until the spec or the identity
                    // changes: a withdrawn identity is used no more.
                    ctx.vault.unsubscribe(key.as_str());
                    Action::await_change()
                }
                Retry::AtInterval => at_interval(interval),
                Retry::Backoff(retry_after) => backoff(&ctx, &key, retry_after),
            };
            ctx.metrics.object_failed(&key, interval, failure.reason());
            let outcome = Outcome::Failed {
                reason: failure.reason(),
                message: failure.to_string(),
            };
            (outcome, action, None)
        }
    };
    if !merging {
        // As the sync left the record: a merged-into Secret let go of, or
        // one found (also when the write was refused).
        set_finalizer(&kvs, &ctx, wants_finalizer(&kvs, &targets)).await?;
    }
    record(&kvs, &ctx, &outcome, targets, expires).await?;
    ctx.metrics
        .observe_sync(outcome_label(&outcome), started.elapsed());
    Ok(action)
}

/// The next try after one more failure of `key`: exponential backoff,
/// `retry_after` (the server's) as a floor.
fn backoff(ctx: &Context, key: &ObjectKey, retry_after: Option<Duration>) -> Action {
    let failures = ctx.memory.lock().unwrap().failed(key);
    Action::requeue(schedule::backoff_delay(
        failures,
        retry_after,
        ctx.max_backoff,
        rand::random(),
    ))
}

fn at_interval(interval: Option<Duration>) -> Action {
    match interval {
        Some(interval) => Action::requeue(schedule::refresh_delay(interval, rand::random())),
        None => Action::await_change(),
    }
}

fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Synced { wrote: true, .. } => "written",
        Outcome::Synced { wrote: false, .. } => "unchanged",
        Outcome::Failed { reason, .. } => reason,
    }
}

/// What the controller does with an infrastructure error.
pub fn error_policy(kvs: Arc<KeyVaultSecret>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "reconcile failed");
    ctx.metrics.observe_error(error.metric_label());
    let key = ObjectKey::of(kvs.as_ref());
    ctx.metrics.object_failed(
        &key,
        kvs.spec.refresh_interval().ok().flatten(),
        error.reason(),
    );
    backoff(&ctx, &key, None)
}

async fn in_scope(ctx: &Context, namespace: &str) -> Result<bool, Error> {
    if !ctx.scope.name_in_scope(namespace) {
        return Ok(false);
    }
    if ctx.scope.namespace_selector.is_none() {
        return Ok(true);
    }
    let ns = Api::<Namespace>::all(ctx.client.clone())
        .get(namespace)
        .await?;
    Ok(ctx.scope.labels_in_scope(&ns.labels().clone()))
}

/// The ownership record as stored; a target written before the record
/// existed (only `status.secretName`) is recorded with an unknown uid (its
/// marks alone then tell whether kvsync created it).
fn recorded_targets(kvs: &KeyVaultSecret) -> Vec<TargetRecord> {
    let status = kvs.status.as_ref();
    let mut targets = status.map(|s| s.targets.clone()).unwrap_or_default();
    if targets.is_empty()
        && let Some(name) = status.and_then(|s| s.secret_name.clone())
    {
        targets.push(TargetRecord {
            secret_name: name,
            uid: String::new(),
            how: TargetHow::Created,
        });
    }
    targets
}

/// Whether the object needs the finalizer: kvsync may have keys to give
/// back (a `Merge` policy, or a merged-into Secret still recorded).
fn wants_finalizer(kvs: &KeyVaultSecret, targets: &[TargetRecord]) -> bool {
    kvs.spec.target.creation_policy == CreationPolicy::Merge
        || targets.iter().any(|t| t.how == TargetHow::Merged)
}

/// Finishes a deletion: withdraws kvsync's keys from the Secrets it merged
/// into, then lets the object go.
async fn finish_deletion(
    kvs: &KeyVaultSecret,
    ctx: &Context,
    targets: &[TargetRecord],
) -> Result<(), Error> {
    if kvs.finalizers().iter().any(|f| f == MERGE_FINALIZER) {
        withdraw_from_targets(kvs, ctx, targets).await?;
    }
    set_finalizer(kvs, ctx, false).await
}

/// Adds or removes the finalizer `kvsync.io/merge-cleanup` (if it is not
/// already so).
async fn set_finalizer(kvs: &KeyVaultSecret, ctx: &Context, wanted: bool) -> Result<(), Error> {
    let has = kvs.finalizers().iter().any(|f| f == MERGE_FINALIZER);
    if has == wanted {
        return Ok(());
    }
    let mut finalizers: Vec<String> = kvs
        .finalizers()
        .iter()
        .filter(|f| *f != MERGE_FINALIZER)
        .cloned()
        .collect();
    if wanted {
        finalizers.push(MERGE_FINALIZER.into());
    }
    // Guarded by resourceVersion: lists are replaced whole by a merge patch.
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": kvs.resource_version(),
    }});
    Api::<KeyVaultSecret>::namespaced(ctx.client.clone(), &kvs.namespace().unwrap_or_default())
        .patch(&kvs.name_any(), &field_manager(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

/// Withdraws what a deleted object wrote into the Secrets it did not
/// create (those it created go with it, or stay, as their ownerReference says).
async fn withdraw_from_targets(
    kvs: &KeyVaultSecret,
    ctx: &Context,
    targets: &[TargetRecord],
) -> Result<(), Error> {
    let namespace = kvs.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let (name, uid) = (kvs.name_any(), kvs.uid().unwrap_or_default());
    for record in targets {
        let Some(secret) = api.get_opt(&record.secret_name).await? else {
            continue;
        };
        if target::release(&secret, record, &name, &uid, false) != Release::Withdraw {
            continue;
        }
        match write::withdraw(&api, &secret).await {
            Ok(()) => {}
            Err(SyncError::Kube(error)) => return Err(error.into()),
            Err(refused) => {
                // The object is going away; a Secret we may not write keeps the keys.
                tracing::warn!(%namespace, secret = %secret.name_any(), error = %refused, "could not withdraw keys of a deleted KeyVaultSecret");
            }
        }
    }
    Ok(())
}

fn field_manager() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// Writes the status with the ownership record `targets` (only when it
/// changed) and emits events on transitions. `expires`: the earliest `exp`
/// in the Secret after a sync (see [`expiry`]).
async fn record(
    kvs: &KeyVaultSecret,
    ctx: &Context,
    outcome: &Outcome,
    mut targets: Vec<TargetRecord>,
    expires: Option<Option<i64>>,
) -> Result<(), Error> {
    let current = kvs.status.as_ref();
    // A target written before the record existed is recorded once read.
    targets.retain(|t| !t.uid.is_empty());
    let now = Timestamp::now();
    let mut next = next_status(current, kvs.metadata.generation, outcome, targets, now);
    if let Some(expires) = expires {
        expiry::apply(
            &mut next,
            expires,
            ctx.expiry_window,
            kvs.metadata.generation,
            now,
        );
    }
    if let Some(secret) = next.secret_name.clone() {
        let namespace = kvs.namespace().unwrap_or_default();
        let written = {
            let mut memory = ctx.memory.lock().unwrap();
            let object = ObjectKey::of(kvs);
            if matches!(outcome, Outcome::Synced { wrote: true, .. }) {
                memory.note_data_written(&object, &ObjectKey::new(&namespace, &secret));
            }
            memory.data_written(&object)
        };
        let summary = ctx.rollouts.get(&namespace, &secret);
        rollout::apply(
            &mut next,
            &secret,
            summary.as_ref(),
            written,
            kvs.metadata.generation,
            now,
        );
    }
    if Some(&next) != current {
        let api: Api<KeyVaultSecret> =
            Api::namespaced(ctx.client.clone(), &kvs.namespace().unwrap_or_default());
        api.patch_status(
            &kvs.name_any(),
            &field_manager(),
            &Patch::Merge(json!({ "status": merge_patch(current, &next) })),
        )
        .await?;
    }
    let event = match outcome {
        Outcome::Synced {
            wrote: true,
            secret_name,
            ..
        } => Some(Event {
            type_: EventType::Normal,
            reason: "Synced".into(),
            note: Some(format!("Secret {secret_name} updated from Key Vault")),
            action: "Sync".into(),
            secondary: None,
        }),
        Outcome::Failed { reason, message } if ready_reason(current) != Some(reason) => {
            Some(Event {
                type_: EventType::Warning,
                reason: (*reason).into(),
                note: Some(message.chars().take(1000).collect()),
                action: "Sync".into(),
                secondary: None,
            })
        }
        _ => None,
    };
    let expiry_event = expiry::warning(current, &next).map(|(reason, message)| Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(message),
        action: "Sync".into(),
        secondary: None,
    });
    for event in [event, expiry_event].into_iter().flatten() {
        if let Err(error) = ctx
            .events
            .publish(&ObjectKey::of(kvs), &event, &kvs.object_ref(&()))
            .await
        {
            tracing::warn!(%error, "could not publish event");
        }
    }
    Ok(())
}

/// One sync; `targets`, the ownership record, is kept up to date whatever
/// the outcome.
async fn sync(
    kvs: &KeyVaultSecret,
    ctx: &Context,
    freshness: Freshness,
    targets: &mut Vec<TargetRecord>,
) -> Result<Synced, SyncError> {
    let spec = &kvs.spec;
    let interval = validate(kvs, ctx)?;
    let find_patterns = compile_find_patterns(&spec.data_from)?;
    let shaping = keys::compile(&spec.data_from)
        .map_err(|invalid| SyncError::InvalidSpec(invalid.to_string()))?;
    let templates = template_from::load(ctx, kvs).await?;
    template::check(&templates)?;
    let identity = identity::resolve(kvs, ctx).await?;
    if let Some(interval) = interval {
        ctx.vault.subscribe(
            &spec.vault_url,
            &identity,
            ObjectKey::of(kvs).as_str(),
            interest(spec),
            interval,
        );
    }
    let mut rendered =
        fetch_and_render(ctx, spec, &identity, &find_patterns, &shaping, freshness).await?;
    if rendered.data.is_empty() && spec.target.deletion_policy == DeletionPolicy::Delete {
        return Err(remove_target(kvs, ctx, targets).await?);
    }
    if let Some(target_template) = &spec.target.template {
        rendered.data = template::render(&templates, &rendered.data, target_template.merge_policy)?;
    }
    let desired = desired_secret(kvs, &rendered);
    let wrote = write::write_target(
        ctx,
        &ObjectKey::of(kvs),
        &desired,
        spec.target.immutable,
        targets,
    )
    .await?;
    let_go_of_others(kvs, ctx, &desired.name, targets).await?;
    Ok(Synced {
        secret_name: desired.name,
        rendered,
        wrote,
    })
}

/// Lets go of every recorded Secret but `current` (a renamed target): run
/// only once the current target holds the data, so that a failed write
/// keeps the old Secret. One that cannot be let go of stays recorded and
/// the error names it.
async fn let_go_of_others(
    kvs: &KeyVaultSecret,
    ctx: &Context,
    current: &str,
    targets: &mut Vec<TargetRecord>,
) -> Result<(), SyncError> {
    let namespace = kvs.namespace().unwrap_or_default();
    let owner = (kvs.name_any(), kvs.uid().unwrap_or_default());
    let others: Vec<TargetRecord> = targets
        .iter()
        .filter(|t| t.secret_name != current)
        .cloned()
        .collect();
    for other in others {
        write::let_go(ctx, &namespace, (&owner.0, &owner.1), &other, false).await?;
        targets.retain(|t| *t != other);
    }
    Ok(())
}

/// `deletionPolicy: Delete` with every remote secret gone: the target goes
/// if kvsync created it, or loses kvsync's keys if kvsync merged into it;
/// the returned error says so.
async fn remove_target(
    kvs: &KeyVaultSecret,
    ctx: &Context,
    targets: &mut Vec<TargetRecord>,
) -> Result<SyncError, SyncError> {
    let name = kvs.target_name();
    let namespace = kvs.namespace().unwrap_or_default();
    let owner = (kvs.name_any(), kvs.uid().unwrap_or_default());
    let record = targets
        .iter()
        .find(|t| t.secret_name == name)
        .cloned()
        .unwrap_or(TargetRecord {
            secret_name: name.clone(),
            uid: String::new(),
            how: TargetHow::Created,
        });
    write::let_go(ctx, &namespace, (&owner.0, &owner.1), &record, true).await?;
    targets.retain(|t| t.secret_name != name);
    Ok(SyncError::RemoteDeleted(name))
}

/// How recent the vault data of this sync must be: as of now for a first
/// sync, a spec change, a force-sync, a repair asked by a watch event or
/// an object without a refresh interval; otherwise no older than its
/// interval (the shared listing usually is).
///
/// An object reads as of now at most once per minimum refresh interval:
/// within it, `Err` says how long until it may (a force-sync or spec-change
/// loop costs the vault no more than that interval does); a force-sync or
/// repair asked meanwhile stays asked.
fn freshness(
    kvs: &KeyVaultSecret,
    ctx: &Context,
    interval: Option<Duration>,
) -> Result<Freshness, Duration> {
    let force_sync = kvs
        .annotations()
        .get(FORCE_SYNC_ANNOTATION)
        .map(String::as_str);
    let key = ObjectKey::of(kvs);
    let mut memory = ctx.memory.lock().unwrap();
    let asked = memory.take_read_now(&key, force_sync);
    let spec_changed =
        kvs.status.as_ref().and_then(|s| s.observed_generation) != kvs.metadata.generation;
    if let Some(interval) = interval
        && !asked
        && !spec_changed
    {
        return Ok(Freshness::Within(interval));
    }
    match memory.read_now_wait(&key, Instant::now(), ctx.min_refresh_interval) {
        None => Ok(Freshness::Now),
        Some(wait) => {
            if asked {
                memory.request_read_now(&key);
            }
            Err(wait)
        }
    }
}

/// The Secret as the spec and the rendered data say it should be.
fn desired_secret(kvs: &KeyVaultSecret, rendered: &Rendered) -> DesiredSecret {
    let target = &kvs.spec.target;
    DesiredSecret {
        name: kvs.target_name(),
        namespace: kvs.namespace().unwrap_or_default(),
        owner_name: kvs.name_any(),
        owner_uid: kvs.uid().unwrap_or_default(),
        policy: target.creation_policy,
        created: false,
        type_: target.type_.clone().unwrap_or_else(|| "Opaque".into()),
        labels: target.labels.clone(),
        annotations: target.annotations.clone(),
        data: rendered.data.clone(),
    }
    .with_markers(target.reload)
}

/// Checks what the schema cannot (it cannot reach the operator's flags);
/// returns the refresh interval.
fn validate(kvs: &KeyVaultSecret, ctx: &Context) -> Result<Option<Duration>, SyncError> {
    let spec = &kvs.spec;
    ctx.vault
        .check_vault_url(&spec.vault_url)
        .map_err(|e| SyncError::InvalidSpec(e.to_string()))?;
    let interval = spec
        .refresh_interval()
        .map_err(|e| SyncError::InvalidSpec(format!("refreshInterval: {e}")))?;
    if let Some(interval) = interval
        && interval < ctx.min_refresh_interval
    {
        return Err(SyncError::InvalidSpec(format!(
            "refreshInterval: {} is shorter than this cluster's minimum of {} (the operator's --min-refresh-interval); use a longer interval",
            humantime::format_duration(interval),
            humantime::format_duration(ctx.min_refresh_interval)
        )));
    }
    target::check_target(&spec.target).map_err(|e| SyncError::InvalidSpec(e.to_string()))?;
    if spec.data.is_empty() && spec.data_from.is_empty() {
        return Err(SyncError::InvalidSpec(
            "nothing to sync: add at least one entry to data or dataFrom".into(),
        ));
    }
    Ok(interval)
}

/// Compiles `find.nameRegex` patterns.
fn compile_find_patterns(data_from: &[DataFrom]) -> Result<HashMap<usize, Regex>, SyncError> {
    let mut patterns = HashMap::new();
    for (index, entry) in data_from.iter().enumerate() {
        if let Some(pattern) = entry.find.as_ref().and_then(|f| f.name_regex.as_deref()) {
            let regex = keys::user_regex(pattern).map_err(|e| {
                SyncError::InvalidSpec(format!(
                    "dataFrom[{index}].find.nameRegex is not a valid regular expression: {e}"
                ))
            })?;
            patterns.insert(index, regex);
        }
    }
    Ok(patterns)
}
