//! How far a workload's rollout has come, read from its status — free of
//! I/O, so the wave gate ([`super::waves`]) and the "safe to revoke" count
//! judge the same facts the controllers report.
//!
//! ```text
//!  Deployment   observedGeneration ≥ generation, every replica updated and available ─▶ Complete
//!               Progressing=False, reason ProgressDeadlineExceeded ─────────────────────▶ Failed
//!  StatefulSet  observedGeneration ≥ generation, currentRevision = updateRevision,
//!               every replica ready ─────────────────────────────────────────────────────▶ Complete
//!  DaemonSet    observedGeneration ≥ generation, every scheduled pod updated and available ▶ Complete
//!  Rollout      status.phase Healthy ─▶ Complete, Degraded ─▶ Failed
//!  otherwise    Progressing (StatefulSets, DaemonSets: Failed once Progressing for longer
//!               than --progress-deadline — they have no deadline of their own)
//! ```

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};

/// Where a workload's rollout stands, as its status tells.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Progress {
    /// Every replica runs the current pod template and is available.
    Complete,
    /// Pods are being replaced (or the controller has not caught up yet).
    Progressing,
    /// The controller gave up: the new pods do not become ready.
    Failed,
    /// Nothing to wait for: a CronJob (its Jobs are not a rollout).
    #[default]
    NotTracked,
}

impl Progress {
    /// `Progressing` for longer than `deadline` (since `since`) counts as
    /// failed — for kinds whose controller has no progress deadline of its own.
    pub fn with_deadline(
        self,
        since: Option<Instant>,
        deadline: Duration,
        now: Instant,
    ) -> Progress {
        match (self, since) {
            (Progress::Progressing, Some(at)) if now.saturating_duration_since(at) > deadline => {
                Progress::Failed
            }
            _ => self,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Progress::Complete => "complete",
            Progress::Progressing => "progressing",
            Progress::Failed => "failed",
            Progress::NotTracked => "not_tracked",
        }
    }
}

fn caught_up(generation: Option<i64>, observed: Option<i64>) -> bool {
    observed.unwrap_or(0) >= generation.unwrap_or(0)
}

pub fn deployment(deployment: &Deployment) -> Progress {
    let Some(status) = &deployment.status else {
        return Progress::Progressing;
    };
    // A condition from before the newest template says nothing about it.
    if !caught_up(deployment.metadata.generation, status.observed_generation) {
        return Progress::Progressing;
    }
    let deadline_exceeded = status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if deadline_exceeded {
        return Progress::Failed;
    }
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let complete = updated == wanted
        && status.replicas.unwrap_or(0) == updated
        && status.available_replicas.unwrap_or(0) == updated;
    if complete {
        Progress::Complete
    } else {
        Progress::Progressing
    }
}

pub fn stateful_set(set: &StatefulSet) -> Progress {
    let Some(status) = &set.status else {
        return Progress::Progressing;
    };
    let wanted = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let complete = caught_up(set.metadata.generation, status.observed_generation)
        && status.update_revision.is_some()
        && status.current_revision == status.update_revision
        && status.ready_replicas.unwrap_or(0) >= wanted;
    if complete {
        Progress::Complete
    } else {
        Progress::Progressing
    }
}

pub fn daemon_set(set: &DaemonSet) -> Progress {
    let Some(status) = &set.status else {
        return Progress::Progressing;
    };
    let desired = status.desired_number_scheduled;
    let complete = caught_up(set.metadata.generation, status.observed_generation)
        && status.updated_number_scheduled.unwrap_or(0) == desired
        && status.number_available.unwrap_or(0) == desired;
    if complete {
        Progress::Complete
    } else {
        Progress::Progressing
    }
}

/// An Argo Rollout's `status.phase`.
pub fn argo_phase(phase: Option<&str>) -> Progress {
    match phase {
        Some("Healthy") => Progress::Complete,
        Some("Degraded") => Progress::Failed,
        _ => Progress::Progressing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment_with(status: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 2},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_deployment_is_complete_only_when_every_replica_is_updated_and_available() {
        let done = json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2});
        assert_eq!(deployment(&deployment_with(done)), Progress::Complete);
        let old_pod_left = json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2});
        assert_eq!(
            deployment(&deployment_with(old_pod_left)),
            Progress::Progressing
        );
        let not_ready = json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1});
        assert_eq!(
            deployment(&deployment_with(not_ready)),
            Progress::Progressing
        );
        let not_seen = json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2});
        assert_eq!(
            deployment(&deployment_with(not_seen)),
            Progress::Progressing
        );
        let stuck = json!({"observedGeneration": 2, "conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]});
        assert_eq!(deployment(&deployment_with(stuck)), Progress::Failed);
    }

    #[test]
    fn a_stateful_set_is_complete_when_its_revisions_meet_and_replicas_are_ready() {
        let set = |status: serde_json::Value| -> StatefulSet {
            serde_json::from_value(json!({
                "metadata": {"name": "db", "generation": 3},
                "spec": {"replicas": 1, "selector": {}, "serviceName": "db", "template": {}},
                "status": status,
            }))
            .unwrap()
        };
        let done = json!({"observedGeneration": 3, "replicas": 1, "readyReplicas": 1, "currentRevision": "b", "updateRevision": "b"});
        assert_eq!(stateful_set(&set(done)), Progress::Complete);
        let rolling = json!({"observedGeneration": 3, "replicas": 1, "readyReplicas": 1, "currentRevision": "a", "updateRevision": "b"});
        assert_eq!(stateful_set(&set(rolling)), Progress::Progressing);
    }

    #[test]
    fn a_daemon_set_is_complete_when_every_scheduled_pod_is_updated_and_available() {
        let set = |updated: i32, available: i32| -> DaemonSet {
            serde_json::from_value(json!({
                "metadata": {"name": "agent", "generation": 1},
                "spec": {"selector": {}, "template": {}},
                "status": {"observedGeneration": 1, "desiredNumberScheduled": 2, "currentNumberScheduled": 2,
                           "numberMisscheduled": 0, "numberReady": available,
                           "updatedNumberScheduled": updated, "numberAvailable": available},
            }))
            .unwrap()
        };
        assert_eq!(daemon_set(&set(2, 2)), Progress::Complete);
        assert_eq!(daemon_set(&set(1, 2)), Progress::Progressing);
    }

    #[test]
    fn progressing_past_the_deadline_is_failed() {
        let restarted = Instant::now();
        let deadline = Duration::from_secs(600);
        let before = restarted + Duration::from_secs(599);
        let after = restarted + Duration::from_secs(601);
        let progressing = Progress::Progressing;
        assert_eq!(
            progressing.with_deadline(Some(restarted), deadline, before),
            Progress::Progressing
        );
        assert_eq!(
            progressing.with_deadline(Some(restarted), deadline, after),
            Progress::Failed
        );
        assert_eq!(
            progressing.with_deadline(None, deadline, after),
            Progress::Progressing
        );
        assert_eq!(
            Progress::Complete.with_deadline(Some(restarted), deadline, after),
            Progress::Complete
        );
        assert_eq!(argo_phase(Some("Degraded")), Progress::Failed);
        assert_eq!(argo_phase(Some("Healthy")), Progress::Complete);
    }
}
