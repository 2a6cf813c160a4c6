//! The Job a CronJob gets when data it uses changes, as Reloader makes it:
//! the CronJob's `jobTemplate`, owned by the CronJob, annotated
//! `cronjob.kubernetes.io/instantiate: manual` (what `kubectl create job
//! --from=cronjob/…` writes).
//!
//! At most one Job per change, whatever fails when: the record comes first.
//!
//! ```text
//!  1. patch the CronJob: record + restartedAt + kvsync.io/job-pending: <job name> <changed>
//!  2. create the Job <job name>                (AlreadyExists: made before, fine)
//!  3. patch the CronJob: remove kvsync.io/job-pending
//! ```
//!
//! The name ([`job_name`]) is derived from the CronJob's uid, the restart's
//! time and the record, and written before the Job exists, so every retry of
//! step 2 (a failed create, an operator crash before step 3, a conflict on
//! step 3) names the same Job and gets `AlreadyExists` instead of making a
//! second. A CronJob whose patch is refused for good (a policy engine, the
//! annotation size limit) fails at step 1 and gets no Job at all — reported
//! (`ReloadRefused`) and retried with the backoff, never rerun for ever. (The
//! other order, Job first, made a Job per retry once the previous one was
//! cleaned up.) Within a process a Job once made is not made again while its
//! mark is cleared; only a step 3 refused for good across an operator restart,
//! with the Job deleted meanwhile, could make it twice.

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use sha2::{Digest as _, Sha256};

use crate::api::contract::CRONJOB_INSTANTIATE;

/// Job names become label values: at most 63 characters.
const NAME_LIMIT: usize = 63;
const HASH_CHARS: usize = 10;

/// The name of the Job a change of CronJob `name` (uid `uid`) owes, keyed by
/// `change` (the restart's time and the record written with it).
pub fn job_name(name: &str, uid: &str, change: &str) -> String {
    let hash = Sha256::new()
        .chain_update(uid)
        .chain_update([0])
        .chain_update(change)
        .finalize();
    let hash: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let prefix: String = name.chars().take(NAME_LIMIT - HASH_CHARS - 1).collect();
    format!("{}-{}", prefix.trim_end_matches('-'), &hash[..HASH_CHARS])
}

/// The Job named `job` made from `cron_job` (served as `api_version`);
/// `None` without a job template.
pub fn job_for(cron_job: &CronJob, api_version: &str, job: &str) -> Option<Job> {
    let name = cron_job.metadata.name.as_deref()?;
    let uid = cron_job.metadata.uid.as_deref()?;
    let template = &cron_job.spec.as_ref()?.job_template;
    let template_meta = template.metadata.clone().unwrap_or_default();
    let mut annotations = template_meta.annotations.unwrap_or_default();
    annotations.insert(CRONJOB_INSTANTIATE.to_owned(), "manual".to_owned());
    Some(Job {
        metadata: ObjectMeta {
            name: Some(job.to_owned()),
            namespace: cron_job.metadata.namespace.clone(),
            annotations: Some(annotations),
            labels: template_meta.labels,
            owner_references: Some(vec![OwnerReference {
                api_version: api_version.to_owned(),
                kind: "CronJob".to_owned(),
                name: name.to_owned(),
                uid: uid.to_owned(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cron_job() -> CronJob {
        serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "nightly", "namespace": "ns", "uid": "u-1"},
            "spec": {
                "schedule": "0 0 * * *",
                "jobTemplate": {
                    "metadata": {"labels": {"team": "a"}, "annotations": {"note": "x"}},
                    "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c"}]}}}
                }
            }
        }))
        .unwrap()
    }

    #[test]
    fn the_job_is_the_job_template_owned_by_the_cron_job() {
        let job = job_for(&cron_job(), "batch/v1beta1", "nightly-0123456789").unwrap();
        let meta = &job.metadata;
        assert_eq!(meta.name.as_deref(), Some("nightly-0123456789"));
        assert_eq!(meta.labels.as_ref().unwrap()["team"], "a");
        let annotations = meta.annotations.as_ref().unwrap();
        assert_eq!(annotations[CRONJOB_INSTANTIATE], "manual");
        assert_eq!(annotations["note"], "x");
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                owner.api_version.as_str(),
                owner.kind.as_str(),
                owner.uid.as_str()
            ),
            ("batch/v1beta1", "CronJob", "u-1")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(job.spec, cron_job().spec.unwrap().job_template.spec);
    }

    #[test]
    fn one_name_per_change_within_the_length_limit() {
        let name = job_name("nightly", "u-1", "r1");
        assert!(name.starts_with("nightly-") && name.len() == "nightly-".len() + HASH_CHARS);
        assert_eq!(
            name,
            job_name("nightly", "u-1", "r1"),
            "a retry names the same Job"
        );
        assert_ne!(name, job_name("nightly", "u-1", "r2"));
        assert_ne!(
            name,
            job_name("nightly", "u-2", "r1"),
            "a re-created CronJob"
        );
        let long = job_name(&"x".repeat(52), "u-1", "r1");
        assert!(long.len() <= NAME_LIMIT, "{long}");
    }
}
