//! The `RolledOut` condition and `status.rollout`, free of I/O: from the
//! reload stage's summary of the Secret (see [`crate::reload::board`]) —
//! "safe to revoke" once every workload that uses the Secret runs its
//! current data with its rollout complete.
//!
//! ```text
//!  summary for an older Secret version than kvsync last wrote ─▶ RolledOut False Pending (counts dropped)
//!  every workload current ─────────────────────────────────────▶ RolledOut True  RolledOut
//!  a failed wave halted the change ────────────────────────────▶ RolledOut False Halted (how to resume)
//!  otherwise ──────────────────────────────────────────────────▶ RolledOut False InProgress (who is behind)
//!  no summary yet (the reload stage has not listed) ───────────▶ status left as it was
//! ```

use k8s_openapi::jiff::Timestamp;

use super::status::set_condition;
use crate::api::KeyVaultSecretStatus;
use crate::api::contract::RESUME_ROLLOUT_ANNOTATION;
use crate::reload::board::Summary;

/// The condition's type.
pub const ROLLED_OUT: &str = "RolledOut";

/// How many behind workloads the condition's message names.
const NAMED: usize = 3;

/// Sets `status.rollout` and `RolledOut` for Secret `secret` from `summary`;
/// `written`: the Secret's resourceVersion at kvsync's last write of new
/// data (others' writes, or kvsync reading it as current, count no rollout).
pub fn apply(
    status: &mut KeyVaultSecretStatus,
    secret: &str,
    summary: Option<&Summary>,
    written: Option<u64>,
    generation: Option<i64>,
    now: Timestamp,
) {
    let Some(summary) = summary else {
        return;
    };
    let mut set = |state: &str, reason: &str, message: &str| {
        set_condition(
            &mut status.conditions,
            ROLLED_OUT,
            state,
            reason,
            message,
            generation,
            now,
        );
    };
    // A count made before kvsync's newest data is not this data's — unless
    // no workload reacts: then there is nothing to roll out either way.
    let stale = written.is_some_and(|written| summary.secret_version < written);
    if stale && summary.status.workloads > 0 {
        set(
            "False",
            "Pending",
            &format!("Secret {secret} changed; counting the workloads that use it"),
        );
        status.rollout = None;
        return;
    }
    let rollout = &summary.status;
    if let Some(halted) = &rollout.halted {
        set(
            "False",
            "Halted",
            &format!(
                "the rollout of {} failed: the change {} of Secret {secret} is halted, and the workloads of later waves keep their old pods. Fix it and change the data again (a fix or a revert), or resume: kubectl annotate secret {secret} {RESUME_ROLLOUT_ANNOTATION}={} --overwrite",
                halted.workload, halted.change, halted.change
            ),
        );
    } else if rollout.current >= rollout.workloads {
        let message = match rollout.workloads {
            0 => format!("no workload restarts when Secret {secret} changes"),
            n => format!("all {n} workload(s) using Secret {secret} run its current data"),
        };
        set("True", "RolledOut", &message);
    } else {
        let named: Vec<String> = rollout
            .behind
            .iter()
            .take(NAMED)
            .map(|b| format!("{} ({})", b.workload, b.reason))
            .collect();
        let more = rollout.workloads - rollout.current - named.len() as u32;
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        set(
            "False",
            "InProgress",
            &format!(
                "{} of {} workload(s) run the current data of Secret {secret}; behind: {}{more}",
                rollout.current,
                rollout.workloads,
                named.join(", ")
            ),
        );
    }
    status.rollout = Some(rollout.clone());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BehindWorkload, HaltedRollout, RolloutStatus};

    fn summary(version: u64, workloads: u32, current: u32) -> Summary {
        Summary {
            secret_version: version,
            status: RolloutStatus {
                workloads,
                current,
                behind: (current..workloads)
                    .map(|i| BehindWorkload {
                        workload: format!("Deployment/w{i}"),
                        reason: "rolling out".into(),
                    })
                    .collect(),
                halted: None,
            },
        }
    }

    fn rolled_out(status: &KeyVaultSecretStatus) -> (&str, &str, &str) {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == ROLLED_OUT)
            .unwrap();
        (c.status.as_str(), c.reason.as_str(), c.message.as_str())
    }

    #[test]
    fn rolled_out_only_when_every_workload_is_current() {
        let mut status = KeyVaultSecretStatus::default();
        apply(
            &mut status,
            "db",
            Some(&summary(5, 3, 3)),
            Some(5),
            None,
            Timestamp::now(),
        );
        assert_eq!(rolled_out(&status).0, "True");
        apply(
            &mut status,
            "db",
            Some(&summary(6, 3, 1)),
            Some(5),
            None,
            Timestamp::now(),
        );
        let (state, reason, message) = rolled_out(&status);
        assert_eq!((state, reason), ("False", "InProgress"));
        assert!(message.starts_with("1 of 3"), "{message}");
        assert!(message.contains("Deployment/w1 (rolling out)"), "{message}");
        assert_eq!(status.rollout.as_ref().unwrap().current, 1);
    }

    #[test]
    fn a_summary_of_older_data_than_kvsync_wrote_is_not_taken() {
        let mut status = KeyVaultSecretStatus::default();
        apply(
            &mut status,
            "db",
            Some(&summary(5, 3, 3)),
            Some(9),
            None,
            Timestamp::now(),
        );
        assert_eq!(rolled_out(&status).1, "Pending");
        assert!(status.rollout.is_none());
        // Without workloads there is nothing to wait for: no Pending flap.
        let none = summary(5, 0, 0);
        apply(
            &mut status,
            "db",
            Some(&none),
            Some(9),
            None,
            Timestamp::now(),
        );
        assert_eq!(rolled_out(&status).0, "True");
    }

    #[test]
    fn a_halt_names_the_failed_workload_and_how_to_resume() {
        let mut status = KeyVaultSecretStatus::default();
        let mut halted = summary(5, 3, 1);
        halted.status.halted = Some(HaltedRollout {
            workload: "Deployment/canary".into(),
            change: "0123456789ab".into(),
        });
        apply(
            &mut status,
            "db",
            Some(&halted),
            None,
            None,
            Timestamp::now(),
        );
        let (state, reason, message) = rolled_out(&status);
        assert_eq!((state, reason), ("False", "Halted"));
        assert!(message.contains("Deployment/canary"), "{message}");
        assert!(
            message.contains("kvsync.io/resume-rollout=0123456789ab"),
            "{message}"
        );
    }

    #[test]
    fn no_summary_leaves_the_status_alone() {
        let mut status = KeyVaultSecretStatus::default();
        apply(&mut status, "db", None, Some(1), None, Timestamp::now());
        assert!(status.conditions.is_empty() && status.rollout.is_none());
    }
}
