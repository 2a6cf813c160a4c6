//! The KeyVaultSecret's status, computed from the outcome of a sync — pure.
//!
//! A status is written only when this computation yields something
//! different from what is stored; `lastTransitionTime` moves only when a
//! condition's status or reason changes, and `lastSyncTime` only when the
//! Secret's content changed. So an idle refresh writes nothing, however
//! short the interval.
//!
//! A rotation scheduled in Key Vault (a newer version whose `nbf` is still to
//! come) shows as `status.pending` and the condition `RotationScheduled`
//! (True while anything is pending, gone once nothing is), for
//! `kubectl describe` to tell when the Secret will change:
//!
//! ```text
//!  RotationScheduled True  NotYetValid  Key Vault secret db-password: version 4f2a… starts at
//!                                       2026-12-13T02:00:00Z (its notBefore); until then the
//!                                       Secret keeps version 9c1e…
//! ```

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use crate::api::{KeyVaultSecretStatus, PendingVersion, TargetRecord};

/// The condition type of a scheduled rotation.
pub const ROTATION_SCHEDULED: &str = "RotationScheduled";

/// How many pending versions the condition's message names (the rest are
/// counted; `status.pending` lists them all).
const NAMED_PENDING: usize = 5;

/// How a sync attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The Secret holds exactly what the vault has; `wrote` if this attempt changed it.
    Synced {
        secret_name: String,
        versions: BTreeMap<String, String>,
        wrote: bool,
        /// Newer versions not valid yet, earliest first.
        pending: Vec<PendingVersion>,
    },
    /// Nothing was written; the reason and what to do about it.
    Failed {
        reason: &'static str,
        message: String,
    },
}

/// The status after `outcome`, given the stored one, with the ownership
/// record `targets`.
pub fn next_status(
    current: Option<&KeyVaultSecretStatus>,
    generation: Option<i64>,
    outcome: &Outcome,
    targets: Vec<TargetRecord>,
    now: Timestamp,
) -> KeyVaultSecretStatus {
    let mut status = current.cloned().unwrap_or_default();
    status.observed_generation = generation;
    status.targets = targets;
    let (condition_status, reason, message) = match outcome {
        Outcome::Synced {
            secret_name,
            versions,
            wrote,
            pending,
        } => {
            schedule(&mut status, versions, pending, generation, now);
            if *wrote
                || status.secret_name.as_deref() != Some(secret_name)
                || !status.synced_versions.iter().eq(versions.iter())
            {
                status.last_sync_time = Some(Time(now));
            }
            status.secret_name = Some(secret_name.clone());
            status.synced_versions = versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
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

/// Sets `status.pending` and the `RotationScheduled` condition.
fn schedule(
    status: &mut KeyVaultSecretStatus,
    versions: &BTreeMap<String, String>,
    pending: &[PendingVersion],
    generation: Option<i64>,
    now: Timestamp,
) {
    status.pending = pending.to_vec();
    if pending.is_empty() {
        status.conditions.retain(|c| c.type_ != ROTATION_SCHEDULED);
        return;
    }
    let mut told: Vec<String> = pending
        .iter()
        .take(NAMED_PENDING)
        .map(|p| {
            let starts = p.not_before.0.strftime("%Y-%m-%dT%H:%M:%SZ");
            let kept = match versions.get(&p.name) {
                Some(current) => format!("until then the Secret keeps version {current}"),
                None => "until then it is not in the Secret".to_owned(),
            };
            format!(
                "Key Vault secret {}: version {} starts at {starts} (its notBefore); {kept}",
                p.name, p.version
            )
        })
        .collect();
    if pending.len() > NAMED_PENDING {
        told.push(format!(
            "{} more in status.pending",
            pending.len() - NAMED_PENDING
        ));
    }
    set_condition(
        &mut status.conditions,
        ROTATION_SCHEDULED,
        "True",
        "NotYetValid",
        &told.join("; "),
        generation,
        now,
    );
}

pub(super) fn set_condition(
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
    let condition = Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: transition,
    };
    // In place: the order of the conditions never changes by itself (a
    // reordering is a status write for nothing).
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}

/// The Ready condition's reason, if any (used to emit events only on change).
pub fn ready_reason(status: Option<&KeyVaultSecretStatus>) -> Option<&str> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.as_str())
}

/// The JSON merge patch (RFC 7386) that turns `current` into `next`: keys
/// that `next` no longer has are set to `null`, so removing a `data` entry
/// removes its `syncedVersions` key instead of leaving it behind (a plain
/// merge patch of `next` cannot delete map keys, and would then differ from
/// the stored status on every refresh).
///
/// Written by hand: it is the inverse of `json_patch::merge`, which the
/// `json-patch` crate does not offer, and it is ten lines.
pub fn merge_patch(current: Option<&KeyVaultSecretStatus>, next: &KeyVaultSecretStatus) -> Value {
    let next = serde_json::to_value(next).expect("a status always serializes");
    match current {
        Some(current) => diff(
            &serde_json::to_value(current).expect("a status always serializes"),
            next,
        ),
        None => next,
    }
}

fn diff(current: &Value, next: Value) -> Value {
    match (current, next) {
        (Value::Object(current), Value::Object(mut next)) => {
            for (key, old) in current {
                match next.remove(key) {
                    None => {
                        next.insert(key.clone(), Value::Null);
                    }
                    Some(new) => {
                        next.insert(key.clone(), diff(old, new));
                    }
                }
            }
            Value::Object(next)
        }
        (_, next) => next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_a_condition_keeps_the_order_of_the_others() {
        let now = Timestamp::now();
        let mut conditions = Vec::new();
        set_condition(&mut conditions, "Ready", "True", "Synced", "", None, now);
        set_condition(
            &mut conditions,
            "RolledOut",
            "True",
            "RolledOut",
            "",
            None,
            now,
        );
        set_condition(
            &mut conditions,
            "Ready",
            "False",
            "RemoteNotFound",
            "",
            None,
            now,
        );
        let order: Vec<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(order, ["Ready", "RolledOut"]);
        assert_eq!(conditions[0].reason, "RemoteNotFound");
    }

    fn synced(version: &str, wrote: bool) -> Outcome {
        Outcome::Synced {
            secret_name: "db".into(),
            versions: BTreeMap::from([("pw".into(), version.into())]),
            wrote,
            pending: Vec::new(),
        }
    }

    #[test]
    fn an_idle_refresh_changes_nothing() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let first = next_status(None, Some(1), &synced("v1", true), Vec::new(), t0);
        let again = next_status(Some(&first), Some(1), &synced("v1", false), Vec::new(), t1);
        assert_eq!(first, again, "no status write on an idle refresh");
    }

    #[test]
    fn a_new_version_moves_last_sync_but_not_the_transition() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let first = next_status(None, Some(1), &synced("v1", true), Vec::new(), t0);
        let rotated = next_status(Some(&first), Some(1), &synced("v2", true), Vec::new(), t1);
        assert_eq!(rotated.last_sync_time, Some(Time(t1)));
        assert_eq!(rotated.conditions[0].last_transition_time, Time(t0));
    }

    #[test]
    fn a_failure_keeps_versions_and_flips_ready() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let first = next_status(None, Some(1), &synced("v1", true), Vec::new(), t0);
        let failed = next_status(
            Some(&first),
            Some(1),
            &Outcome::Failed {
                reason: "Throttled",
                message: "throttled".into(),
            },
            Vec::new(),
            t0,
        );
        assert_eq!(failed.synced_versions, first.synced_versions);
        assert_eq!(ready_reason(Some(&failed)), Some("Throttled"));
        assert_eq!(failed.conditions[0].status, "False");
    }

    #[test]
    fn a_removed_version_is_deleted_by_the_patch() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let two = Outcome::Synced {
            secret_name: "db".into(),
            versions: BTreeMap::from([("a".into(), "1".into()), ("b".into(), "1".into())]),
            wrote: true,
            pending: Vec::new(),
        };
        let first = next_status(None, Some(1), &two, Vec::new(), t0);
        let second = next_status(Some(&first), Some(2), &synced("v1", true), Vec::new(), t0);
        let patch = merge_patch(Some(&first), &second);
        assert_eq!(patch["syncedVersions"]["a"], Value::Null);
        assert_eq!(patch["syncedVersions"]["b"], Value::Null);
        assert_eq!(patch["syncedVersions"]["pw"], "v1");
        let mut stored = serde_json::to_value(&first).unwrap();
        json_patch::merge(&mut stored, &patch);
        assert_eq!(stored, serde_json::to_value(&second).unwrap());
    }

    #[test]
    fn a_pending_version_is_listed_and_told_until_it_is_current() {
        let t0: Timestamp = "2026-12-12T00:00:00Z".parse().unwrap();
        let starts: Timestamp = "2026-12-13T02:00:00Z".parse().unwrap();
        let waiting = |wrote| Outcome::Synced {
            secret_name: "db".into(),
            versions: BTreeMap::from([("pw".into(), "v1".into())]),
            wrote,
            pending: vec![PendingVersion {
                name: "pw".into(),
                version: "v2".into(),
                not_before: Time(starts),
            }],
        };
        let before = next_status(None, Some(1), &waiting(true), Vec::new(), t0);
        assert_eq!(before.pending.len(), 1);
        let condition = before
            .conditions
            .iter()
            .find(|c| c.type_ == ROTATION_SCHEDULED)
            .unwrap();
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("True", "NotYetValid")
        );
        assert_eq!(
            condition.message,
            "Key Vault secret pw: version v2 starts at 2026-12-13T02:00:00Z (its notBefore); until then the Secret keeps version v1"
        );
        let again = next_status(Some(&before), Some(1), &waiting(false), Vec::new(), starts);
        assert_eq!(
            before, again,
            "an idle refresh while pending writes nothing"
        );

        let switched = next_status(
            Some(&before),
            Some(1),
            &synced("v2", true),
            Vec::new(),
            starts,
        );
        assert!(switched.pending.is_empty());
        assert!(
            switched
                .conditions
                .iter()
                .all(|c| c.type_ != ROTATION_SCHEDULED),
            "nothing pending: the condition goes"
        );
    }
}
