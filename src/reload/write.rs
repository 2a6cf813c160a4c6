//! The reload stage's writes, the I/O of a verdict: the Job a CronJob's
//! change owes, if it makes one (see [`super::job`]), then one merge patch of the workload (its body
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
use super::kinds::{RestartMethod, WorkloadKind, WorkloadRef};
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
    /// A restart (for a CronJob: its Job made); `changed` names the
    /// resources that changed.
    Restart {
        changed: Vec<String>,
        uid: String,
        method: RestartMethod,
    },
    /// A CronJob's change recorded with the Job it owes: make it now.
    JobOwed,
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
    /// The CronJob's Job this write made (or found made), whatever the
    /// patch's outcome.
    pub(super) job_made: Option<String>,
}

/// Makes the CronJob's Job named `job` (if any), then merge-patches the
/// workload with `body`; the Job's name too once it is made. `api`: the API
/// of a dynamic kind.
pub(super) async fn write(
    client: kube::Client,
    api: Option<ApiResource>,
    workload: &WorkloadRef,
    body: Value,
    job: Option<String>,
) -> (Outcome, Option<String>) {
    let mut made = None;
    if let Some(job) = job {
        let Some(api) = &api else {
            return (Outcome::Skipped, None);
        };
        match create_job(client.clone(), api, workload, &job).await {
            Ok(true) => made = Some(job),
            Ok(false) => return (Outcome::Skipped, None),
            Err(error) => return (Outcome::Failed(Failure::Job, error), None),
        }
    }
    let result = match workload.kind {
        WorkloadKind::Deployment => patch::<Deployment>(client, workload, body).await,
        WorkloadKind::StatefulSet => patch::<StatefulSet>(client, workload, body).await,
        WorkloadKind::DaemonSet => patch::<DaemonSet>(client, workload, body).await,
        WorkloadKind::CronJob | WorkloadKind::Rollout => match &api {
            Some(api) => dynamic::patch(client, api, workload, &patch_params(), body).await,
            None => return (Outcome::Skipped, made),
        },
    };
    let outcome = match result {
        Ok(updated) => Outcome::Applied(updated.map(Box::new)),
        Err(error) => Outcome::Failed(Failure::Patch, error),
    };
    (outcome, made)
}

/// Creates the Job `job` for a change of a CronJob (see [`super::job`]);
/// `Ok(false)` when there is nothing to make it from (the CronJob is gone).
/// A Job of that name already there is this change's, made before.
async fn create_job(
    client: kube::Client,
    api: &ApiResource,
    workload: &WorkloadRef,
    job: &str,
) -> Result<bool, kube::Error> {
    let cron_job = dynamic::api(client.clone(), api, &workload.namespace)
        .get_opt(&workload.name)
        .await?
        .as_ref()
        .and_then(dynamic::cron_job);
    let Some(job) = cron_job.and_then(|c| job_for(&c, &api.api_version, job)) else {
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
