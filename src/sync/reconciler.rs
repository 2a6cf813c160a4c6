//! One sync of one KeyVaultSecret, in named steps:
//!
//! ```text
//!  reconcile ─▶ in scope? ─▶ being deleted? ── finalize (Merge: withdraw keys) ─▶ done
//!      │
//!      └─▶ sync: validate ─▶ identity ─▶ subscribe ─▶ fetch + render ─▶ let go of a renamed target
//!                 ─▶ write target ─▶ Outcome ─▶ record (status patch only if changed, event on change)
//!                                                └─▶ next: refreshInterval ± jitter | backoff | await change
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
use super::target::{self, DesiredSecret};
use super::{expiry, identity, keys, template, template_from, write};
use crate::api::contract::{
    FIELD_MANAGER, FORCE_SYNC_ANNOTATION, MERGE_FINALIZER, OWNER_ANNOTATION,
};
use crate::api::{CreationPolicy, DataFrom, DeletionPolicy, KeyVaultSecret};
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
    if !in_scope(&ctx, &kvs.namespace().unwrap_or_default()).await? {
        ctx.vault.unsubscribe(ObjectKey::of(kvs.as_ref()).as_str());
        return Ok(Action::await_change());
    }
    if !keep_finalizer(&kvs, &ctx).await? {
        return Ok(Action::await_change());
    }
    let key = ObjectKey::of(kvs.as_ref());
    let interval = kvs.spec.refresh_interval().ok().flatten();
    let freshness = match freshness(&kvs, &ctx, interval) {
        Ok(freshness) => freshness,
        // Read as of now again too soon: the sync waits (nothing changes meanwhile).
        Err(wait) => return Ok(Action::requeue(wait)),
    };
    // `expires` is known after a sync only; a failure keeps what the status says.
    let (outcome, action, expires) = match sync(&kvs, &ctx, freshness).await {
        Ok(synced) => {
            ctx.memory.lock().unwrap().succeeded(&key);
            ctx.metrics.object_current(&key, interval);
            ctx.metrics
                .object_expiry(&key, synced.rendered.expires, ctx.expiry_window);
            let outcome = Outcome::Synced {
                secret_name: synced.secret_name,
                versions: synced.rendered.versions,
                wrote: synced.wrote,
            };
            (
                outcome,
                at_interval(interval),
                Some(synced.rendered.expires),
            )
        }
        Err(SyncError::Kube(error)) => return Err(error.into()),
        Err(failure) => {
            let action = match failure.retry() {
                Retry::AfterChange => {
                    // Nothing to poll for until the spec or the identity
                    // changes: a withdrawn identity is used no more.
                    ctx.vault.unsubscribe(key.as_str());
                    Action::await_change()
                }
                Retry::AtInterval => at_interval(interval),
                Retry::Backoff(retry_after) => {
                    let failures = ctx.memory.lock().unwrap().failed(&key);
                    Action::requeue(schedule::backoff_delay(
                        failures,
                        retry_after,
                        ctx.max_backoff,
                        rand::random(),
                    ))
                }
            };
            ctx.metrics.object_failed(&key, interval, failure.reason());
            let outcome = Outcome::Failed {
                reason: failure.reason(),
                message: failure.to_string(),
            };
            (outcome, action, None)
        }
    };
    record(&kvs, &ctx, &outcome, expires).await?;
    ctx.metrics
        .observe_sync(outcome_label(&outcome), started.elapsed());
    Ok(action)
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
    let failures = ctx.memory.lock().unwrap().failed(&key);
    Action::requeue(schedule::backoff_delay(
        failures,
        None,
        ctx.max_backoff,
        rand::random(),
    ))
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

/// Keeps the Merge finalizer in step with the policy, and finishes a
/// deletion: withdraws kvsync's keys from a Merge target, then lets the
/// object go. Returns whether the object is alive (to be synced).
async fn keep_finalizer(kvs: &KeyVaultSecret, ctx: &Context) -> Result<bool, Error> {
    let has = kvs.finalizers().iter().any(|f| f == MERGE_FINALIZER);
    let deleting = kvs.metadata.deletion_timestamp.is_some();
    let wants = !deleting && kvs.spec.target.creation_policy == CreationPolicy::Merge;
    if deleting && has {
        withdraw_from_target(kvs, ctx).await?;
    }
    if has != wants {
        let mut finalizers: Vec<String> = kvs
            .finalizers()
            .iter()
            .filter(|f| *f != MERGE_FINALIZER)
            .cloned()
            .collect();
        if wants {
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
    }
    Ok(!deleting)
}

/// Withdraws what a deleted Merge object wrote into its target, if the
/// target is still marked as its own.
async fn withdraw_from_target(kvs: &KeyVaultSecret, ctx: &Context) -> Result<(), Error> {
    let namespace = kvs.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(secret) = api.get_opt(&kvs.target_name()).await? else {
        return Ok(());
    };
    if secret.annotations().get(OWNER_ANNOTATION) != Some(&kvs.name_any()) {
        return Ok(());
    }
    match write::withdraw(&api, &secret).await {
        Ok(()) => Ok(()),
        Err(SyncError::Kube(error)) => Err(error.into()),
        Err(refused) => {
            // The object is going away; a Secret we may not write keeps the keys.
            tracing::warn!(%namespace, secret = %secret.name_any(), error = %refused, "could not withdraw keys of a deleted KeyVaultSecret");
            Ok(())
        }
    }
}

fn field_manager() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// Writes the status (only when it changed) and emits events on transitions.
/// `expires`: the earliest `exp` in the Secret after a sync (see [`expiry`]).
async fn record(
    kvs: &KeyVaultSecret,
    ctx: &Context,
    outcome: &Outcome,
    expires: Option<Option<i64>>,
) -> Result<(), Error> {
    let current = kvs.status.as_ref();
    let now = Timestamp::now();
    let mut next = next_status(current, kvs.metadata.generation, outcome, now);
    if let Some(expires) = expires {
        expiry::apply(
            &mut next,
            expires,
            ctx.expiry_window,
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

async fn sync(
    kvs: &KeyVaultSecret,
    ctx: &Context,
    freshness: Freshness,
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
        return Err(remove_target(kvs, ctx).await?);
    }
    if let Some(target_template) = &spec.target.template {
        rendered.data = template::render(&templates, &rendered.data, target_template.merge_policy)?;
    }
    let desired = desired_secret(kvs, &rendered);
    if let Some(previous) = kvs.status.as_ref().and_then(|s| s.secret_name.as_deref())
        && previous != desired.name
    {
        write::let_go_of_previous(
            ctx,
            &desired.namespace,
            &desired.owner_name,
            previous,
            desired.policy,
        )
        .await?;
    }
    let wrote =
        write::write_target(ctx, &ObjectKey::of(kvs), &desired, spec.target.immutable).await?;
    Ok(Synced {
        secret_name: desired.name,
        rendered,
        wrote,
    })
}

/// `deletionPolicy: Delete` with every remote secret gone: the target goes
/// (a Merge target loses kvsync's keys); the returned error says so.
async fn remove_target(kvs: &KeyVaultSecret, ctx: &Context) -> Result<SyncError, SyncError> {
    let policy = match kvs.spec.target.creation_policy {
        CreationPolicy::Merge => CreationPolicy::Merge,
        CreationPolicy::Owner | CreationPolicy::Orphan => CreationPolicy::Owner,
    };
    let name = kvs.target_name();
    let namespace = kvs.namespace().unwrap_or_default();
    write::let_go_of_previous(ctx, &namespace, &kvs.name_any(), &name, policy).await?;
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
