//! The Job a CronJob gets when data it uses changes, as Reloader makes it:
//! the CronJob's `jobTemplate`, owned by the CronJob, annotated
//! `cronjob.kubernetes.io/instantiate: manual` (what `kubectl create job
//! --from=cronjob/…` writes).
//!
//! Its name is derived from the CronJob's uid, its last restart and the
//! record being written, so a retry of one restart (a conflict on the
//! CronJob's patch, an operator crash in between) finds the Job it already
//! made instead of making a second: at most one Job per change.

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use sha2::{Digest as _, Sha256};

use crate::api::contract::CRONJOB_INSTANTIATE;

/// Job names become label values: at most 63 characters.
const NAME_LIMIT: usize = 63;
const HASH_CHARS: usize = 10;

/// The Job for one restart of `cron_job` (served as `api_version`), keyed by
/// `restart` (last restart and new record); `None` without a job template.
pub fn job_for(cron_job: &CronJob, api_version: &str, restart: &str) -> Option<Job> {
    let name = cron_job.metadata.name.as_deref()?;
    let uid = cron_job.metadata.uid.as_deref()?;
    let template = &cron_job.spec.as_ref()?.job_template;
    let hash = Sha256::new()
        .chain_update(uid)
        .chain_update([0])
        .chain_update(restart)
        .finalize();
    let hash: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let prefix: String = name.chars().take(NAME_LIMIT - HASH_CHARS - 1).collect();
    let template_meta = template.metadata.clone().unwrap_or_default();
    let mut annotations = template_meta.annotations.unwrap_or_default();
    annotations.insert(CRONJOB_INSTANTIATE.to_owned(), "manual".to_owned());
    Some(Job {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}-{}",
                prefix.trim_end_matches('-'),
                &hash[..HASH_CHARS]
            )),
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
        let job = job_for(&cron_job(), "batch/v1beta1", "r1").unwrap();
        let meta = &job.metadata;
        let name = meta.name.as_deref().unwrap();
        assert!(name.starts_with("nightly-") && name.len() == "nightly-".len() + HASH_CHARS);
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
    fn one_name_per_restart_within_the_length_limit() {
        let one = |restart| {
            job_for(&cron_job(), "batch/v1", restart)
                .unwrap()
                .metadata
                .name
        };
        assert_eq!(one("r1"), one("r1"), "a retry finds the same Job");
        assert_ne!(one("r1"), one("r2"));
        let mut long = cron_job();
        long.metadata.name = Some("x".repeat(52));
        let name = job_for(&long, "batch/v1", "r1")
            .unwrap()
            .metadata
            .name
            .unwrap();
        assert!(name.len() <= NAME_LIMIT, "{name}");
    }
}
