//! The KeyVaultSecret's status, computed from the outcome of a sync — pure.
//!
//! A status is written only when this computation yields something
//! different from what is stored; `lastTransitionTime` moves only when a
//! condition's status or reason changes, and `lastSyncTime` only when the
//! Secret's content changed. So an idle refresh writes nothing, however
//! short the interval.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::KeyVaultSecretStatus;

/// How a sync attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The Secret holds exactly what the vault has; `wrote` if this attempt changed it.
    Synced {
        secret_name: String,
        versions: BTreeMap<String, String>,
        wrote: bool,
    },
    /// Nothing was written; the reason and what to do about it.
    Failed {
        reason: &'static str,
        message: String,
    },
}

/// The status after `outcome`, given the stored one.
pub fn next_status(
    current: Option<&KeyVaultSecretStatus>,
    generation: Option<i64>,
    outcome: &Outcome,
    now: Timestamp,
) -> KeyVaultSecretStatus {
    let mut status = current.cloned().unwrap_or_default();
    status.observed_generation = generation;
    let (condition_status, reason, message) = match outcome {
        Outcome::Synced {
            secret_name,
            versions,
            wrote,
        } => {
            if *wrote
                || status.secret_name.as_deref() != Some(secret_name)
                || status.synced_versions != *versions
            {
                status.last_sync_time = Some(Time(now));
            }
            status.secret_name = Some(secret_name.clone());
            status.synced_versions = versions.clone();
            (
                "True",
                "Synced",
                format!("Secret {secret_name} is in sync with Key Vault"),
            )
        }
        Outcome::Failed { reason, message } => ("False", *reason, message.clone()),
    };
    set_condition(
        &mut status.conditions,
        "Ready",
        condition_status,
        reason,
        &message,
        generation,
        now,
    );
    status
}

fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let transition = conditions
        .iter()
        .find(|c| c.type_ == type_)
        .filter(|c| c.status == status && c.reason == reason)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: transition,
    });
}

/// The Ready condition's reason, if any (used to emit events only on change).
pub fn ready_reason(status: Option<&KeyVaultSecretStatus>) -> Option<&str> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synced(version: &str, wrote: bool) -> Outcome {
        Outcome::Synced {
            secret_name: "db".into(),
            versions: BTreeMap::from([("pw".into(), version.into())]),
            wrote,
        }
    }

    #[test]
    fn an_idle_refresh_changes_nothing() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let first = next_status(None, Some(1), &synced("v1", true), t0);
        let again = next_status(Some(&first), Some(1), &synced("v1", false), t1);
        assert_eq!(first, again, "no status write on an idle refresh");
    }

    #[test]
    fn a_new_version_moves_last_sync_but_not_the_transition() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let first = next_status(None, Some(1), &synced("v1", true), t0);
        let rotated = next_status(Some(&first), Some(1), &synced("v2", true), t1);
        assert_eq!(rotated.last_sync_time, Some(Time(t1)));
        assert_eq!(rotated.conditions[0].last_transition_time, Time(t0));
    }

    #[test]
    fn a_failure_keeps_versions_and_flips_ready() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let first = next_status(None, Some(1), &synced("v1", true), t0);
        let failed = next_status(
            Some(&first),
            Some(1),
            &Outcome::Failed {
                reason: "Throttled",
                message: "throttled".into(),
            },
            t0,
        );
        assert_eq!(failed.synced_versions, first.synced_versions);
        assert_eq!(ready_reason(Some(&failed)), Some("Throttled"));
        assert_eq!(failed.conditions[0].status, "False");
    }
}
