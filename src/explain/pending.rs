//! Whether a workload has a restart pending now, and until when — the reload
//! stage's own decision ([`desired_members`], [`decide`]) over what the
//! cluster holds, so explain cannot tell another story than the operator acts
//! on.
//!
//! ```text
//!  workload annotations: record (digests as the pods have them), restartedAt,
//!                        paused-at, pause period, Reloader's pause
//!  Secrets/ConfigMaps now, digested with the operator's key ──▶ decide ──▶ pending / none
//!  no key readable: the operator's marks — paused-at, restart-pending ───▶ pending / unknown
//! ```
//!
//! The digests on a workload are keyed (see [`crate::reload::digest`]): the
//! present can be compared with them only by whoever may read the key
//! Secret. Without it the marks the operator writes while it holds a restart
//! back tell (`kvsync.io/paused-at` for a pause period it started,
//! `kvsync.io/restart-pending` for a pause or the minimum interval); a change
//! it has not acted on yet cannot be told from "nothing changed": the answer
//! is then `unknown`, with the reason.
//!
//! Not seen from outside the operator: a pod-template change made after the
//! data change (which the operator lets stand for the restart) and the rollout
//! pacing; a restart `due now` happens within the operator's debounce and
//! `--max-rollouts-per-second` queue.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use time::OffsetDateTime;

use super::render::timestamp;
use super::report::{PendingRestart, PendingState};
use crate::reload::decide::{
    Baseline, Decision, Pause, Situation, Verdict, decide, desired_members, effective_last_restart,
    record_key_id, unreacted_uses,
};
use crate::reload::index::{ResourceState, WorkloadState};
use crate::reload::kinds::{ResourceRef, RestartMethod};
use crate::reload::record::{parse_job_mark, parse_pending_mark};

/// The namespace's Secrets and ConfigMaps digested with the operator's key.
#[derive(Clone, Copy, Debug)]
pub struct Digests<'a> {
    /// The key's id, as records name it.
    pub key_id: &'a str,
    pub resources: &'a BTreeMap<ResourceRef, ResourceState>,
}

/// Whether `state` has a restart pending at `now`; `digests` is `Err(why)`
/// when the present cannot be digested (the key or the data unreadable).
pub fn pending(
    state: &WorkloadState,
    digests: Result<Digests<'_>, &str>,
    min_interval: Duration,
    now: OffsetDateTime,
) -> PendingRestart {
    let pause = Pause {
        period: state.policy.pause_period,
        started: state.paused_at,
        by_reloader: state.reloader_paused_since,
    };
    if let Some(mark) = &state.job_pending {
        return job_due(mark, now);
    }
    if state.policy.is_inert() && pause.by_reloader.is_none() {
        return none("no reload annotation".to_owned());
    }
    match digests {
        Ok(digests) => decided(state, &digests, pause, min_interval, now),
        Err(why) => from_pause_marks(state, pause, now, why),
    }
}

fn decided(
    state: &WorkloadState,
    digests: &Digests<'_>,
    pause: Pause,
    min_interval: Duration,
    now: OffsetDateTime,
) -> PendingRestart {
    let desired = desired_members(&state.policy, &state.uses, &state.keys, digests.resources);
    let unreacted = unreacted_uses(&state.policy, &state.uses, &state.keys, digests.resources);
    let key_id = record_key_id(digests.key_id, &state.keys);
    let (last_restart, _) = effective_last_restart(state.restart_stamp, None, now);
    let job = matches!(state.restart, RestartMethod::Job { .. });
    let Decision {
        verdict, end_pause, ..
    } = decide(&Situation {
        opted_in: !state.policy.is_inert(),
        applied: &state.applied,
        key_id: &key_id,
        desired: &desired,
        unreacted: &unreacted,
        hidden_may_exist: false,
        uses: &state.uses,
        last_restart,
        min_interval,
        pause,
        covered: &BTreeSet::new(),
        suspended: matches!(state.restart, RestartMethod::Job { suspended: true }),
        now,
    });
    let restart = if job { "a Job" } else { "a restart" };
    match verdict {
        Verdict::UpToDate if end_pause => held(
            "Reloader's pause period is over: kvsync resumes the Deployment at its next look"
                .to_owned(),
            now,
            &[],
        ),
        Verdict::UpToDate => none("the pods run with the data kvsync recorded".to_owned()),
        Verdict::Baseline { why, .. } => none(format!(
            "kvsync records the present without {restart} ({})",
            baseline(why)
        )),
        Verdict::Forget => none("no reload annotation any more: kvsync removes its record".into()),
        Verdict::Restart { changed, .. } => held(
            format!(
                "{restart} is due now (the operator makes it within its debounce and rollout pacing)"
            ),
            now,
            &changed,
        ),
        Verdict::Pause { period, changed } => held(
            format!(
                "kvsync starts a pause period of {} at its next look; {restart} when it ends, about {}",
                humantime::format_duration(period),
                timestamp(now + period)
            ),
            now + period,
            &changed,
        ),
        Verdict::Wait { remaining, changed } => {
            let until = now + remaining;
            let at = timestamp(until);
            let why = if changed.is_empty() {
                format!(
                    "Reloader paused the Deployment: kvsync resumes it when the pause period ends at {at} (with a restart if data changed)"
                )
            } else if pause_running(pause, now) {
                format!("{restart} when the pause period ends at {at}")
            } else {
                format!(
                    "held by the minimum interval ({} after the last restart) until {at}",
                    humantime::format_duration(min_interval)
                )
            };
            held(why, until, &changed)
        }
    }
}

/// Without digests: the pause marks alone, which kvsync writes only for a change.
fn from_pause_marks(
    state: &WorkloadState,
    pause: Pause,
    now: OffsetDateTime,
    why: &str,
) -> PendingRestart {
    let period = pause.period.unwrap_or_default();
    if let Some(since) = pause.by_reloader {
        let until = (since + period).max(now);
        return held(
            format!(
                "Reloader paused the Deployment: kvsync resumes it when the pause period ends at {}",
                timestamp(until)
            ),
            until,
            &[],
        );
    }
    match (state.policy.pause_period, state.paused_at) {
        (Some(period), Some(started)) => {
            let until = (started + period).max(now);
            held(
                format!(
                    "a change was seen at {}: the restart follows when the pause period ({}) ends at {}",
                    timestamp(started),
                    humantime::format_duration(period),
                    timestamp(until)
                ),
                until,
                &[],
            )
        }
        _ => match state.pending_mark.as_deref().and_then(parse_pending_mark) {
            // What the operator wrote when it began holding a restart back.
            Some((until, changed)) if until > now => held_for(
                format!(
                    "the operator holds it back until {} (its kvsync.io/restart-pending mark)",
                    timestamp(until)
                ),
                until,
                changed,
            ),
            _ => unknown(why),
        },
    }
}
fn unknown(why: &str) -> PendingRestart {
    PendingRestart {
        state: PendingState::Unknown,
        summary: format!(
            "unknown: whether data changed since the last restart takes the operator's digest key ({why})"
        ),
        until: None,
        changed: Vec::new(),
    }
}

fn pause_running(pause: Pause, now: OffsetDateTime) -> bool {
    match (pause.period, pause.started) {
        (Some(period), Some(started)) => started + period > now,
        _ => false,
    }
}

fn baseline(why: Baseline) -> &'static str {
    match why {
        Baseline::FirstSight => "it has not recorded this workload yet",
        Baseline::KeyChanged => "the record was made with another digest key",
        Baseline::RecordUpdated => {
            "only the set of resources changed, or one the pods require appeared"
        }
        Baseline::TemplateChanged => "a later pod template change already rolls the pods",
        Baseline::Suspended => "the CronJob is suspended",
    }
}

/// A pending restart due at `until`; `why` says when in words.
/// A CronJob whose change kvsync recorded with the Job it owes
/// (`kvsync.io/job-pending`): the Job is made at the operator's next look.
fn job_due(mark: &str, now: OffsetDateTime) -> PendingRestart {
    let (job, changed) = parse_job_mark(mark);
    held_for(
        format!("kvsync recorded the change and makes Job {job} at its next look"),
        now,
        changed,
    )
}

fn held(why: String, until: OffsetDateTime, changed: &[ResourceRef]) -> PendingRestart {
    held_for(
        why,
        until,
        changed.iter().map(ToString::to_string).collect(),
    )
}

fn held_for(why: String, until: OffsetDateTime, names: Vec<String>) -> PendingRestart {
    let what = if names.is_empty() {
        String::new()
    } else {
        format!("{} changed since the last restart; ", names.join(", "))
    };
    PendingRestart {
        state: PendingState::Pending,
        summary: format!("restart pending: {what}{why}"),
        until: Some(timestamp(until)),
        changed: names,
    }
}

fn none(why: String) -> PendingRestart {
    PendingRestart {
        state: PendingState::None,
        summary: format!("no restart pending: {why}"),
        until: None,
        changed: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reload::digest::DigestKey;
    use crate::reload::observe::{observe_resource, observe_workload};
    use crate::reload::record::{AppliedRecord, MemberState, format_time};
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Secret;
    use serde_json::json;

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_000_000 + seconds)
    }

    fn secret(key: &DigestKey, value: &str) -> ResourceState {
        let object: Secret = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "shop"},
            "data": {"pw": value}
        }))
        .unwrap();
        observe_resource(key, &object).unwrap().state
    }

    /// A Deployment using Secret `db`, recorded with `recorded`'s digest.
    fn workload(
        key: &DigestKey,
        recorded: &ResourceState,
        extra: serde_json::Value,
    ) -> WorkloadState {
        let record = AppliedRecord::new(
            key.id(),
            [(
                ResourceRef::secret("db"),
                MemberState::Present(recorded.digest),
            )]
            .into_iter()
            .collect(),
        );
        let mut annotations = json!({
            "reloader.stakater.com/auto": "true",
            "kvsync.io/reload-digest": record.render(),
        });
        annotations
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let object: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
            "spec": {"selector": {}, "template": {
                "metadata": {"annotations": {"kvsync.io/restartedAt": format_time(at(-60))}},
                "spec": {"containers": [{"name": "app", "envFrom": [{"secretRef": {"name": "db"}}]}]}
            }}
        }))
        .unwrap();
        observe_workload(&object).unwrap().state
    }

    #[test]
    fn a_job_kvsync_recorded_and_has_not_made_yet_is_due() {
        let key = DigestKey::generate();
        let old = secret(&key, "YQ==");
        let state = workload(
            &key,
            &old,
            json!({"kvsync.io/job-pending": "web-1a2b3c Secret/db"}),
        );
        let digests = Digests {
            key_id: &key.id(),
            resources: &[(ResourceRef::secret("db"), old.clone())].into(),
        };
        let pending = pending(&state, Ok(digests), Duration::from_secs(60), at(0));
        assert_eq!(pending.state, PendingState::Pending);
        assert_eq!(pending.changed, ["Secret/db"]);
        assert!(
            pending.summary.contains("makes Job web-1a2b3c"),
            "{}",
            pending.summary
        );
    }

    #[test]
    fn the_operators_decision_says_what_is_pending_and_until_when() {
        let key = DigestKey::generate();
        let (old, new) = (secret(&key, "YQ=="), secret(&key, "Yg=="));
        let id = key.id();
        let minute = Duration::from_secs(60);
        let ten_minutes = Duration::from_secs(600);
        let with = |state: &ResourceState| -> BTreeMap<ResourceRef, ResourceState> {
            [(ResourceRef::secret("db"), state.clone())].into()
        };
        let (same, changed) = (with(&old), with(&new));
        let digests = |resources| {
            Ok(Digests {
                key_id: &id,
                resources,
            })
        };
        let state = workload(&key, &old, json!({}));

        let up_to_date = pending(&state, digests(&same), ten_minutes, at(0));
        assert_eq!(up_to_date.state, PendingState::None);

        let held = pending(&state, digests(&changed), ten_minutes, at(0));
        assert_eq!(held.state, PendingState::Pending);
        assert_eq!(held.changed, ["Secret/db"]);
        assert_eq!(held.until.as_deref(), Some(timestamp(at(540)).as_str()));
        assert!(
            held.summary.starts_with(
                "restart pending: Secret/db changed since the last restart; held by the minimum interval (10m"
            ),
            "{}",
            held.summary
        );

        let due = pending(&state, digests(&changed), minute, at(0));
        assert!(due.summary.contains("is due now"), "{}", due.summary);
        assert_eq!(due.until.as_deref(), Some(timestamp(at(0)).as_str()));

        let paused = workload(
            &key,
            &old,
            json!({"deployment.reloader.stakater.com/pause-period": "1h",
                   "kvsync.io/paused-at": format_time(at(-30))}),
        );
        let in_pause = pending(&paused, digests(&changed), minute, at(0));
        assert_eq!(
            in_pause.until.as_deref(),
            Some(timestamp(at(3570)).as_str())
        );
        assert!(in_pause.summary.contains("when the pause period ends"));

        // Without the key only the pause mark tells; otherwise: unknown.
        let marked = pending(&paused, Err("forbidden"), minute, at(0));
        assert_eq!(marked.state, PendingState::Pending);
        assert_eq!(marked.until, in_pause.until);
        let unknown = pending(&state, Err("forbidden"), minute, at(0));
        assert_eq!(unknown.state, PendingState::Unknown);
        assert!(unknown.summary.ends_with("(forbidden)"));

        // ... or the operator's pending mark, while it lasts.
        let mut held_back = state.clone();
        held_back.pending_mark = Some(format!("{} Secret/db", format_time(at(20))));
        let marked = pending(&held_back, Err("forbidden"), minute, at(0));
        assert_eq!(marked.state, PendingState::Pending);
        assert_eq!(marked.changed, ["Secret/db"]);
        assert_eq!(marked.until.as_deref(), Some(timestamp(at(20)).as_str()));
        let over = pending(&held_back, Err("forbidden"), minute, at(21));
        assert_eq!(over.state, PendingState::Unknown);
    }

    /// An annotation value a tenant may write: anything, durations of every
    /// size, and times at and beyond the edges of the calendar.
    fn annotation_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            "\\PC{0,40}",
            (
                any::<u64>(),
                prop::sample::select(vec!["ns", "s", "m", "h", "d", "y", "years"])
            )
                .prop_map(|(n, unit)| format!("{n}{unit}")),
            (0i32..=9999, 1u8..=12)
                .prop_map(|(year, month)| format!("{year:04}-{month:02}-28T23:59:59.999999999Z")),
            prop::sample::select(vec![
                "9999-12-31T23:59:59Z".to_owned(),
                "0000-01-01T00:00:00Z".to_owned(),
                "+999999-01-01T00:00:00Z".to_owned(),
                "9999-12-31T23:59:59Z Secret/db".to_owned(),
            ]),
        ]
    }

    proptest::proptest! {
        #[test]
        fn no_annotation_value_panics_the_decision(
            pause_period in annotation_value(),
            paused_at in annotation_value(),
            reloader_paused_at in annotation_value(),
            pending_mark in annotation_value(),
            restarted_at in annotation_value(),
            spec_paused in proptest::bool::ANY,
            min_interval in 0u64..=400 * 86400,
        ) {
            let key = DigestKey::generate();
            let (old, new) = (secret(&key, "YQ=="), secret(&key, "Yg=="));
            let record = AppliedRecord::new(
                key.id(),
                [(ResourceRef::secret("db"), MemberState::Present(old.digest))]
                    .into_iter()
                    .collect(),
            );
            let object: Deployment = serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "shop", "annotations": {
                    "reloader.stakater.com/auto": "true",
                    "kvsync.io/reload-digest": record.render(),
                    "deployment.reloader.stakater.com/pause-period": pause_period,
                    "kvsync.io/paused-at": paused_at,
                    "deployment.reloader.stakater.com/paused-at": reloader_paused_at,
                    "kvsync.io/restart-pending": pending_mark,
                }},
                "spec": {"paused": spec_paused, "selector": {}, "template": {
                    "metadata": {"annotations": {"kvsync.io/restartedAt": restarted_at}},
                    "spec": {"containers": [{"name": "app", "envFrom": [{"secretRef": {"name": "db"}}]}]}
                }}
            }))
            .unwrap();
            let state = observe_workload(&object).unwrap().state;
            let id = key.id();
            let changed: BTreeMap<ResourceRef, ResourceState> =
                [(ResourceRef::secret("db"), new)].into();
            let digests = Digests { key_id: &id, resources: &changed };
            let now = OffsetDateTime::now_utc();
            let interval = Duration::from_secs(min_interval);
            pending(&state, Ok(digests), interval, now);
            pending(&state, Err("forbidden"), interval, now);
        }
    }
}
