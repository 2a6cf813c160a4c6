//! The reload stage's writes, the I/O of a verdict: the Job of a CronJob's
//! restart, if it makes one, then one merge patch of the workload (its body
//! from [`super::patch`]); and how long a workload waits after a failed
//! write ([`retry_delay`]). The event loop ([`super::stage`]) starts them
//! and takes their answers.
//!
//! ```text
//!  Stage::start_write ──spawned──▶ write: [create the CronJob's Job] ─▶ merge patch (manager kvsync-reload)
//!                                      │
//!  Stage::written ◀── Written { workload, purpose, outcome }
//!                       outcome: Applied (the workload as returned) | Skipped | Failed (retry_delay)
//! ```

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ApiResource, Patch, PatchParams, PostParams};
use serde_json::Value;

use super::dynamic;
use super::index::WorkloadObservation;
use super::job::job_for;
use super::kinds::{ResourceRef, WorkloadKind, WorkloadRef};
use super::metrics::Failure;
use super::observe::{WorkloadObject, observe_workload};
use crate::api::contract::RELOAD_FIELD_MANAGER;

/// Wait before retrying a workload whose patch failed for another reason
/// than a conflict (which the next watch event resolves); doubled with each
/// failure in a row, up to [`MAX_RETRY_DELAY`].
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(10);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(600);

/// The backoff after `failures` failed writes in a row (at least one).
pub(super) fn retry_delay(failures: u32) -> Duration {
    RETRY_AFTER_ERROR
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
        .min(MAX_RETRY_DELAY)
}

/// What a write was for: what its success means.
pub(super) enum Purpose {
    /// Recording digests or ending a pause.
    Record,
    Restart {
        changed: Vec<ResourceRef>,
        uid: String,
    },
    /// A pause period started: look again when it is over.
    Pause { period: Duration },
}

/// How a write ended.
pub(super) enum Outcome {
    /// Applied; the workload as the server returned it (boxed: much
    /// larger than the other variants).
    Applied(Option<Box<WorkloadObservation>>),
    /// Nothing written: the CronJob is gone or its Job cannot be made, or
    /// the kind is not served.
    Skipped,
    /// The Job or the patch failed.
    Failed(Failure, kube::Error),
}

/// The answer to one write, for the loop.
pub(super) struct Written {
    pub(super) workload: WorkloadRef,
    pub(super) purpose: Purpose,
    pub(super) outcome: Outcome,
}

/// Makes the CronJob's Job named by `job` (if any), then merge-patches the
/// workload with `body`. `api`: the API of a dynamic kind.
pub(super) async fn write(
    client: kube::Client,
    api: Option<ApiResource>,
    workload: &WorkloadRef,
    body: Value,
    job: Option<String>,
) -> Outcome {
    if let Some(restart) = job {
        let Some(api) = &api else {
            return Outcome::Skipped;
        };
        match create_job(client.clone(), api, workload, &restart).await {
            Ok(true) => {}
            Ok(false) => return Outcome::Skipped,
            Err(error) => return Outcome::Failed(Failure::Job, error),
        }
    }
    let result = match workload.kind {
        WorkloadKind::Deployment => patch::<Deployment>(client, workload, body).await,
        WorkloadKind::StatefulSet => patch::<StatefulSet>(client, workload, body).await,
        WorkloadKind::DaemonSet => patch::<DaemonSet>(client, workload, body).await,
        WorkloadKind::CronJob | WorkloadKind::Rollout => match &api {
            Some(api) => dynamic::patch(client, api, workload, &patch_params(), body).await,
            None => return Outcome::Skipped,
        },
    };
    match result {
        Ok(updated) => Outcome::Applied(updated.map(Box::new)),
        Err(error) => Outcome::Failed(Failure::Patch, error),
    }
}

/// Creates the Job for one restart of a CronJob (see [`super::job`]);
/// `Ok(false)` when there is nothing to make it from (the CronJob is gone).
/// A Job of that name already there is this restart's, made before.
async fn create_job(
    client: kube::Client,
    api: &ApiResource,
    workload: &WorkloadRef,
    restart: &str,
) -> Result<bool, kube::Error> {
    let cron_job = dynamic::api(client.clone(), api, &workload.namespace)
        .get_opt(&workload.name)
        .await?
        .as_ref()
        .and_then(dynamic::cron_job);
    let Some(job) = cron_job.and_then(|c| job_for(&c, &api.api_version, restart)) else {
        return Ok(false);
    };
    let created = Api::<Job>::namespaced(client, &workload.namespace)
        .create(
            &PostParams {
                field_manager: Some(RELOAD_FIELD_MANAGER.to_owned()),
                ..PostParams::default()
            },
            &job,
        )
        .await;
    match created {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(true),
        Err(error) => Err(error),
    }
}

async fn patch<W: WorkloadObject>(
    client: kube::Client,
    workload: &WorkloadRef,
    body: Value,
) -> Result<Option<WorkloadObservation>, kube::Error> {
    let api: Api<W> = Api::namespaced(client, &workload.namespace);
    let updated = api
        .patch(&workload.name, &patch_params(), &Patch::Merge(body))
        .await?;
    Ok(observe_workload(&updated))
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(RELOAD_FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_writes_back_off_exponentially_up_to_ten_minutes() {
        let delays: Vec<u64> = (1..=8).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY_DELAY);
    }
}
