//! Writing the target Secret, and letting go of Secrets kvsync no longer
//! manages.
//!
//! ```text
//!  DesiredSecret ── same digest, same version as last checked (watch) ──▶ UpToDate ── no request
//!       └─ else GET ── created by kvsync? (record + marks, target.rs) ── decide (pure)
//!                                           ├▶ UpToDate ── no write; version + digest remembered
//!                                           ├▶ Conflict / Missing ── SyncError, nothing written
//!                                           └▶ Apply ── SSA (manager kvsync) ──▶ drop foreign keys ──▶ notify reload
//!       └─▶ the ownership record of what was written: {secretName, uid, Created | Merged}
//!
//!  let go of a recorded Secret (after the new target holds the data), by target::release:
//!                   Delete ─── kvsync created it and it carries the ownerReference: delete (uid precondition)
//!                   Keep ───── kvsync created it under Orphan: keep the data, drop kvsync's markers and field ownership
//!                   Withdraw ─ someone else's: withdraw kvsync's keys and markers from it
//!                   Leave ──── another Secret by now (uid differs): untouched
//!  Merge object deleted ── withdraw (behind the kvsync.io/merge-cleanup finalizer)
//! ```
//!
//! An API server's refusal becomes [`SyncError::write_refused`]: `InvalidSpec`
//! for a 422, `WriteFailed` (with backoff) for RBAC, admission webhooks,
//! quota or conflicts.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::json;

use super::context::Context;
use super::error::SyncError;
use super::key::ObjectKey;
use super::target::{self, DesiredSecret, Release, WriteDecision};
use crate::api::TargetRecord;
use crate::api::contract::{FIELD_MANAGER, RELEASED_FIELD_MANAGER};

/// Writes the target if it differs; returns whether it wrote. `immutable`:
/// written `immutable: true` (only a Secret kvsync creates), and once so,
/// its data is never changed. `targets`, the ownership record, is brought
/// up to date with the target as read (a Secret kvsync created or marked
/// as merged into, also when the write is then refused) and as written.
pub async fn write_target(
    ctx: &Context,
    object: &ObjectKey,
    desired: &DesiredSecret,
    immutable: bool,
    targets: &mut Vec<TargetRecord>,
) -> Result<bool, SyncError> {
    let digest = desired.digest(immutable);
    if still_holds(ctx, desired, digest) {
        return Ok(false);
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &desired.namespace);
    let existing = api.get_opt(&desired.name).await?;
    let record = targets.iter().find(|t| t.secret_name == desired.name);
    let created = existing
        .as_ref()
        .is_none_or(|s| target::created_by(s, &desired.owner_name, record));
    if let Some(existing) = existing
        .as_ref()
        .filter(|s| created || target::marked_by(s, &desired.owner_name))
    {
        target::remember(targets, target::record_of(existing, created));
    }
    let desired = &desired.clone().held(created);
    let immutable = immutable && created;
    let decision = desired.decide(existing.as_ref());
    if decision == WriteDecision::Apply
        && let Some(frozen) = existing.as_ref().filter(|s| s.immutable == Some(true))
        && !same_data(frozen, desired)
    {
        return Err(SyncError::Immutable(desired.name.clone()));
    }
    tracing::debug!(namespace = %desired.namespace, secret = %desired.name, ?decision, "target decision");
    match decision {
        WriteDecision::UpToDate => {
            if let Some(version) = existing.as_ref().and_then(|s| s.resource_version()) {
                remember_checked(ctx, object, desired, version, Some(digest));
            }
            Ok(false)
        }
        WriteDecision::Conflict(message) => Err(SyncError::Conflict(message)),
        WriteDecision::Missing => Err(SyncError::SecretMissing(desired.name.clone())),
        WriteDecision::Apply => {
            let uid = existing.as_ref().and_then(|s| s.uid());
            let written = apply(&api, desired, immutable, uid).await?;
            if existing.is_none() && target::created_meanwhile(&written) {
                // Someone else created it between the read and the apply:
                // not kvsync's. Take back what was applied (markers,
                // ownerReference) before anything else happens to it.
                withdraw(&api, &written).await?;
                return Err(SyncError::Conflict(format!(
                    "Secret {} was created by someone else while kvsync was creating it; kvsync withdrew what it wrote: choose another target.name, or set creationPolicy: Merge",
                    desired.name
                )));
            }
            let written = remove_foreign_keys(&api, desired, written).await?;
            let resource_version = written.resource_version();
            target::remember(targets, target::record_of(&written, created));
            if resource_version == existing.as_ref().and_then(|s| s.resource_version()) {
                // The apply changed nothing (e.g. only fields kvsync does not
                // own differed): not a write, so no event, reload or status.
                return Ok(false);
            }
            if let Some(version) = resource_version {
                let holds = desired.decide(Some(&written)) == WriteDecision::UpToDate;
                remember_checked(ctx, object, desired, version, holds.then_some(digest));
            }
            ctx.notifier.secret_written(&written);
            tracing::info!(namespace = %desired.namespace, secret = %desired.name, keys = desired.data.len(), "wrote Secret");
            Ok(true)
        }
    }
}

/// Whether the target is still the version kvsync last wrote or read
/// holding the desired Secret with this digest, as far as the Secret watch
/// has seen: then there is nothing to read or write. A change by anyone else
/// is a new version (and its watch event syncs the object at once).
fn still_holds(ctx: &Context, desired: &DesiredSecret, digest: u64) -> bool {
    let key = ObjectKey::new(&desired.namespace, &desired.name);
    let Some(version) = ctx.secrets.lock().unwrap().version(&key).map(str::to_owned) else {
        return false;
    };
    ctx.memory.lock().unwrap().holds(&key, &version, digest)
}

/// Remembers the version of the target `object` wrote or read, and whether
/// it holds the desired Secret with this digest.
fn remember_checked(
    ctx: &Context,
    object: &ObjectKey,
    desired: &DesiredSecret,
    version: String,
    holds: Option<u64>,
) {
    let secret = ObjectKey::new(&desired.namespace, &desired.name);
    ctx.memory
        .lock()
        .unwrap()
        .remember_checked(object, secret, version, holds);
}

/// Whether an existing Secret holds exactly the desired data.
fn same_data(secret: &Secret, desired: &DesiredSecret) -> bool {
    let data = secret.data.as_ref();
    data.map_or(0, |d| d.len()) == desired.data.len()
        && desired
            .data
            .iter()
            .all(|(key, value)| data.and_then(|d| d.get(key)).map(|v| &v.0) == Some(value))
}

/// Server-side apply of kvsync's fields. `uid`: the Secret decided on (a
/// precondition: if it was replaced meanwhile, the API server answers 409
/// and the sync is retried, deciding again on the new one).
async fn apply(
    api: &Api<Secret>,
    desired: &DesiredSecret,
    immutable: bool,
    uid: Option<String>,
) -> Result<Secret, SyncError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut body = desired.apply_body();
    if immutable {
        body["immutable"] = true.into();
    }
    if let Some(uid) = uid {
        body["metadata"]["uid"] = uid.into();
    }
    api.patch(&desired.name, &params, &Patch::Apply(body))
        .await
        .map_err(|e| SyncError::write_refused(&desired.name, e))
}

/// Removes keys another field manager added to a Secret whose data is
/// kvsync's alone (SSA only removes fields the applier owns).
async fn remove_foreign_keys(
    api: &Api<Secret>,
    desired: &DesiredSecret,
    written: Secret,
) -> Result<Secret, SyncError> {
    let foreign = desired.foreign_keys(&written);
    if foreign.is_empty() {
        return Ok(written);
    }
    // Guarded by the resourceVersion just written: a concurrent change
    // makes this fail (409) and the sync is retried.
    let removal: serde_json::Map<String, serde_json::Value> = foreign
        .into_iter()
        .map(|key| (key, serde_json::Value::Null))
        .collect();
    let patch = json!({
        "metadata": {"resourceVersion": written.resource_version()},
        "data": removal,
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch(&desired.name, &params, &Patch::Merge(patch))
        .await
        .map_err(|e| SyncError::write_refused(&desired.name, e))
}

/// Lets go of a Secret kvsync recorded for the KeyVaultSecret
/// `owner_name`/`owner_uid` and no longer writes (a renamed target, or the
/// target itself when every remote secret is gone: `remote_deleted`), as
/// [`target::release`] decides from the record and the live Secret.
pub async fn let_go(
    ctx: &Context,
    namespace: &str,
    (owner_name, owner_uid): (&str, &str),
    record: &TargetRecord,
    remote_deleted: bool,
) -> Result<(), SyncError> {
    let name = record.secret_name.as_str();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(existing) = api.get_opt(name).await? else {
        return Ok(());
    };
    let refused = |e| SyncError::write_refused(name, e);
    let release = target::release(&existing, record, owner_name, owner_uid, remote_deleted);
    match release {
        Release::Leave => return Ok(()),
        Release::Delete => {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: existing.uid(),
                    resource_version: existing.resource_version(),
                }),
                ..Default::default()
            };
            api.delete(name, &params).await.map_err(refused)?;
        }
        Release::Keep => {
            let keep = PatchParams::apply(RELEASED_FIELD_MANAGER).force();
            let kept = api
                .patch(
                    name,
                    &keep,
                    &Patch::Apply(DesiredSecret::keep_body(&existing)),
                )
                .await
                .map_err(refused)?;
            withdraw(&api, &kept).await?;
        }
        Release::Withdraw => withdraw(&api, &existing).await?,
    }
    tracing::info!(%namespace, secret = %name, ?release, "let go of a target Secret");
    Ok(())
}

/// Withdraws everything kvsync applied to `secret` (its keys and markers)
/// with an empty apply; fields co-owned by another manager stay. Guarded by
/// the resourceVersion read, so it never creates a Secret that went away.
pub async fn withdraw(api: &Api<Secret>, secret: &Secret) -> Result<(), SyncError> {
    let name = secret.name_any();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(
        &name,
        &params,
        &Patch::Apply(DesiredSecret::withdrawal_body(secret)),
    )
    .await
    .map_err(|e| SyncError::write_refused(&name, e))?;
    Ok(())
}
