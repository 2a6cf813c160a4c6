//! The patch model, pure: what one merge patch of a workload writes
//! ([`Changes`]) and its body ([`patch_body`]). A restart, its record, the
//! end of a pause and the pending mark go in one patch, conditional on the
//! `resourceVersion` evaluated, so that a restart and its record never part.
//!
//! ```text
//!  Changes { record, restarted_at, pause, pending, job_pending } ──patch_body(resourceVersion, method)──▶
//!    metadata.annotations  kvsync.io/reload-digest, kvsync.io/paused-at, kvsync.io/restart-pending,
//!                          kvsync.io/job-pending
//!                          (and Reloader's paused-at, removed when its pause is resumed)
//!    the restart           spec.template restartedAt | spec.restartAt | the CronJob's own restartedAt
//!    spec.paused: false    resuming a Deployment Reloader paused
//! ```

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::kinds::RestartMethod;
use super::record::{AppliedRecord, format_time, next_whole_second};
use crate::api::contract::{
    DIGEST_ANNOTATION, JOB_PENDING_ANNOTATION, PAUSED_AT_ANNOTATION, PENDING_ANNOTATION,
    RESTARTED_AT_ANNOTATION, reloader,
};

/// What one patch of a workload writes.
pub(super) struct Changes {
    pub(super) record: RecordChange,
    /// Restart: the new `kvsync.io/restartedAt` of the pod template.
    pub(super) restarted_at: Option<OffsetDateTime>,
    pub(super) pause: PauseChange,
    /// The `kvsync.io/restart-pending` mark.
    pub(super) pending: PendingChange,
    /// A CronJob's `kvsync.io/job-pending` mark (see [`super::job`]).
    pub(super) job_pending: PendingChange,
}

impl Changes {
    /// A patch that changes nothing (but is conditional on the version).
    pub(super) fn none() -> Self {
        Changes {
            record: RecordChange::Keep,
            restarted_at: None,
            pause: PauseChange::Keep,
            pending: PendingChange::Keep,
            job_pending: PendingChange::Keep,
        }
    }
}

pub(super) enum PendingChange {
    Keep,
    Set(String),
    Remove,
}

pub(super) enum RecordChange {
    Keep,
    Set(AppliedRecord),
    Remove,
}

pub(super) enum PauseChange {
    Keep,
    /// Start a pause period (`kvsync.io/paused-at`).
    Start(OffsetDateTime),
    /// End it; `resume`: unpause a Deployment Reloader paused.
    End {
        resume: bool,
    },
}

/// The one merge patch that records digests, restarts (as `method` says) and
/// starts or ends a pause. `resourceVersion` makes it conditional on the
/// workload being as evaluated.
pub(super) fn patch_body(
    resource_version: &str,
    method: RestartMethod,
    changes: &Changes,
) -> Value {
    let mut annotations = serde_json::Map::new();
    let mut spec = serde_json::Map::new();
    match &changes.record {
        RecordChange::Keep => {}
        RecordChange::Set(record) => {
            annotations.insert(DIGEST_ANNOTATION.into(), json!(record.render()));
        }
        RecordChange::Remove => {
            annotations.insert(DIGEST_ANNOTATION.into(), Value::Null);
        }
    }
    match changes.pause {
        PauseChange::Keep => {}
        PauseChange::Start(at) => {
            annotations.insert(PAUSED_AT_ANNOTATION.into(), json!(format_time(at)));
        }
        PauseChange::End { resume } => {
            annotations.insert(PAUSED_AT_ANNOTATION.into(), Value::Null);
            if resume {
                annotations.insert(reloader::PAUSED_AT.into(), Value::Null);
                spec.insert("paused".into(), json!(false));
            }
        }
    }
    for (key, change) in [
        (PENDING_ANNOTATION, &changes.pending),
        (JOB_PENDING_ANNOTATION, &changes.job_pending),
    ] {
        match change {
            PendingChange::Keep => {}
            PendingChange::Set(mark) => {
                annotations.insert(key.into(), json!(mark));
            }
            PendingChange::Remove => {
                annotations.insert(key.into(), Value::Null);
            }
        }
    }
    if let Some(restarted_at) = changes.restarted_at {
        let at = json!(format_time(restarted_at));
        match method {
            RestartMethod::PodTemplate | RestartMethod::OnDelete => {
                spec.insert(
                    "template".into(),
                    json!({ "metadata": { "annotations": { RESTARTED_AT_ANNOTATION: at } } }),
                );
            }
            RestartMethod::RestartAt => {
                // Argo Rollouts compares spec.restartAt with its own
                // second-precision status: a fraction would read as a restart
                // never done. Rounded up, so it is never in the past.
                let at = format_time(next_whole_second(restarted_at));
                spec.insert("restartAt".into(), json!(at));
            }
            RestartMethod::Job { .. } => {
                annotations.insert(RESTARTED_AT_ANNOTATION.into(), at);
            }
        }
    }
    let mut body =
        json!({ "metadata": { "resourceVersion": resource_version, "annotations": annotations } });
    if !spec.is_empty() {
        body["spec"] = Value::Object(spec);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reload::record::{Members, pending_mark};

    fn record() -> AppliedRecord {
        AppliedRecord::new("k".into(), Members::new())
    }

    #[test]
    fn restart_and_record_go_in_one_conditional_patch() {
        let at = OffsetDateTime::from_unix_timestamp(0).unwrap();
        let changes = Changes {
            record: RecordChange::Set(record()),
            restarted_at: Some(at),
            pause: PauseChange::End { resume: true },
            pending: PendingChange::Remove,
            job_pending: PendingChange::Keep,
        };
        let body = patch_body("41", RestartMethod::PodTemplate, &changes);
        assert_eq!(body["metadata"]["resourceVersion"], "41");
        let annotations = &body["metadata"]["annotations"];
        assert_eq!(annotations[DIGEST_ANNOTATION], record().render());
        assert_eq!(
            body["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT_ANNOTATION],
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(body["spec"]["paused"], false, "resumed in the same patch");
        assert!(annotations[reloader::PAUSED_AT].is_null());
        assert!(annotations[PAUSED_AT_ANNOTATION].is_null());
        assert!(annotations[PENDING_ANNOTATION].is_null(), "no longer held");
    }

    #[test]
    fn a_cron_job_restart_records_the_job_it_owes_in_the_same_patch() {
        let at = OffsetDateTime::from_unix_timestamp(0).unwrap();
        let changes = Changes {
            record: RecordChange::Set(record()),
            restarted_at: Some(at),
            job_pending: PendingChange::Set("nightly-0123456789 Secret/db".into()),
            ..Changes::none()
        };
        let body = patch_body("5", RestartMethod::Job { suspended: false }, &changes);
        let annotations = &body["metadata"]["annotations"];
        assert_eq!(
            annotations[JOB_PENDING_ANNOTATION],
            "nightly-0123456789 Secret/db"
        );
        assert_eq!(annotations[RESTARTED_AT_ANNOTATION], "1970-01-01T00:00:00Z");
        assert_eq!(annotations[DIGEST_ANNOTATION], record().render());
        assert!(
            body.get("spec").is_none(),
            "the job template is not touched"
        );
        let made = Changes {
            job_pending: PendingChange::Remove,
            ..Changes::none()
        };
        let body = patch_body("6", RestartMethod::Job { suspended: false }, &made);
        assert_eq!(
            body["metadata"],
            json!({"resourceVersion": "6", "annotations": {JOB_PENDING_ANNOTATION: null}})
        );
    }

    #[test]
    fn an_argo_restart_at_has_whole_seconds() {
        let at =
            OffsetDateTime::from_unix_timestamp(0).unwrap() + time::Duration::milliseconds(250);
        let changes = Changes {
            record: RecordChange::Set(record()),
            restarted_at: Some(at),
            pause: PauseChange::Keep,
            pending: PendingChange::Keep,
            job_pending: PendingChange::Keep,
        };
        let body = patch_body("7", RestartMethod::RestartAt, &changes);
        assert_eq!(body["spec"]["restartAt"], "1970-01-01T00:00:01Z");
        let template = patch_body("7", RestartMethod::PodTemplate, &changes);
        assert_eq!(
            template["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT_ANNOTATION],
            "1970-01-01T00:00:00.25Z",
            "a pod-template stamp keeps its fraction (two restarts in a second stay distinct)"
        );
    }

    #[test]
    fn baselines_and_pauses_touch_metadata_only_and_forgetting_removes_the_record() {
        let at = OffsetDateTime::from_unix_timestamp(0).unwrap();
        let changes = Changes {
            record: RecordChange::Keep,
            restarted_at: None,
            pause: PauseChange::Start(at),
            pending: PendingChange::Set(pending_mark(at, &[])),
            job_pending: PendingChange::Keep,
        };
        let body = patch_body("1", RestartMethod::PodTemplate, &changes);
        assert!(body.get("spec").is_none(), "{body}");
        assert_eq!(
            body["metadata"]["annotations"],
            json!({ PAUSED_AT_ANNOTATION: "1970-01-01T00:00:00Z",
                    PENDING_ANNOTATION: "1970-01-01T00:00:00Z " })
        );
        let changes = Changes {
            record: RecordChange::Remove,
            restarted_at: None,
            pause: PauseChange::End { resume: false },
            pending: PendingChange::Keep,
            job_pending: PendingChange::Keep,
        };
        let body = patch_body("1", RestartMethod::PodTemplate, &changes);
        assert!(body.get("spec").is_none(), "{body}");
        assert_eq!(
            body["metadata"]["annotations"],
            json!({ DIGEST_ANNOTATION: null, PAUSED_AT_ANNOTATION: null })
        );
    }
}
