//! The restart decision, free of I/O: which resources a workload reacts to
//! right now ([`desired_members`]) and what to do about the difference to
//! what it was last started with ([`decide`]). When to look again is
//! [`super::pace`]'s.
//!
//! Pause periods, as Reloader means them: the first change of a workload with
//! a pause period starts the period (kvsync writes `kvsync.io/paused-at` on
//! it); changes arriving within it fold into the one rollout made when it
//! ends. A Deployment Reloader paused (`spec.paused` and its `paused-at`) is
//! held until Reloader's period is over, then resumed — with the restart for
//! any change since folded into the same patch.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use time::OffsetDateTime;

use super::annotations::{ReloadPolicy, ResourceFlags};
use super::index::ResourceState;
use super::kinds::{ResourceKind, ResourceRef};
use super::record::{Applied, MemberState, Members, summarize};
use super::uses::{KeyUses, Need, Uses};

/// The resources `policy` reacts to, given what the pod spec `uses` and the
/// Secrets and ConfigMaps of the namespace, with their current states.
///
/// Candidates are the used resources (present or not: a used resource that is
/// missing is a member in state `Absent`) and, for kinds with named entries,
/// every present resource of that kind.
pub fn desired_members(
    policy: &ReloadPolicy,
    uses: &Uses,
    keys: &KeyUses,
    resources: &BTreeMap<ResourceRef, ResourceState>,
) -> Members {
    let named = ResourceKind::ALL
        .into_iter()
        .filter(|kind| !policy.rules(*kind).patterns.is_empty())
        .flat_map(|kind| {
            resources
                .range(ResourceRef::new(kind, "")..)
                .take_while(move |(r, _)| r.kind == kind)
                .map(|(r, _)| r)
        });
    uses.keys()
        .chain(named)
        .filter_map(|resource| {
            let state = resources.get(resource);
            let flags = state.map_or(ResourceFlags::default(), |s| s.flags);
            policy
                .reacts_to(resource, uses.contains_key(resource), flags)
                .then(|| {
                    let member = state.map_or(MemberState::Absent, |s| {
                        MemberState::Present(s.digest_for(keys.get(resource).map(|k| &k[..])))
                    });
                    (resource.clone(), member)
                })
        })
        .collect()
}

/// The resources the pod spec `uses` that `policy` does not react to and that
/// are present, with their states: recorded as the pods have them, so that
/// one becoming a member (gaining `reloader.stakater.com/match`, losing
/// `ignore`) restarts if its data differs from what the pods have.
pub fn unreacted_uses(
    policy: &ReloadPolicy,
    uses: &Uses,
    keys: &KeyUses,
    resources: &BTreeMap<ResourceRef, ResourceState>,
) -> Members {
    uses.keys()
        .filter_map(|resource| {
            let state = resources.get(resource)?;
            let digest = state.digest_for(keys.get(resource).map(|k| &k[..]));
            (!policy.reacts_to(resource, true, state.flags))
                .then(|| (resource.clone(), MemberState::Present(digest)))
        })
        .collect()
}

/// The id a workload's record is made with: the digest key's, marked when
/// some resource is read key by key (a workload switching between the two
/// is re-recorded, never restarted, since its digests change form).
pub fn record_key_id(key_id: &str, keys: &KeyUses) -> String {
    if keys.is_empty() {
        key_id.to_owned()
    } else {
        format!("{key_id}.keys")
    }
}

/// Why the record is rewritten without a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    /// kvsync has not seen the workload before (or cannot read its record).
    FirstSight,
    /// The record was made with another digest key.
    KeyChanged,
    /// The record is out of date in ways that need no restart: the workload
    /// started or stopped reacting to some resource, or a resource its pods
    /// require appeared (they cannot have started without it).
    RecordUpdated,
    /// Data changed, but the pod template changed after it: that rollout
    /// already starts pods with the new data (no second rollout).
    TemplateChanged,
    /// Data changed, but the workload is a suspended CronJob: no Job for it.
    Suspended,
}

impl Baseline {
    pub fn as_str(self) -> &'static str {
        match self {
            Baseline::FirstSight => "first_sight",
            Baseline::KeyChanged => "digest_key_changed",
            Baseline::RecordUpdated => "record_updated",
            Baseline::TemplateChanged => "template_changed",
            Baseline::Suspended => "suspended",
        }
    }
}

/// What to do with one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The record matches: nothing to write.
    UpToDate,
    /// Write `record`; do not restart.
    Baseline { why: Baseline, record: Members },
    /// Restart and write `record`: these resources changed.
    Restart {
        changed: Vec<ResourceRef>,
        record: Members,
    },
    /// These resources changed and the workload has a pause period: start
    /// it (write `kvsync.io/paused-at`) and look again when it is over.
    Pause {
        period: Duration,
        changed: Vec<ResourceRef>,
    },
    /// These resources changed, but the workload restarted too recently or
    /// its pause period is running: look again after this long. Nothing is
    /// written meanwhile, so later changes fold into that one restart.
    Wait {
        remaining: Duration,
        changed: Vec<ResourceRef>,
    },
    /// The workload no longer carries reload annotations: remove the record,
    /// so opting in again starts from a fresh baseline.
    Forget,
}

/// Everything [`decide`] looks at.
#[derive(Debug)]
pub struct Situation<'a> {
    /// False when the workload carries no reload annotation at all.
    pub opted_in: bool,
    pub applied: &'a Applied,
    pub key_id: &'a str,
    pub desired: &'a Members,
    /// [`unreacted_uses`] now.
    pub unreacted: &'a Members,
    /// Resources may exist unseen (`--resource-label-selector`): one
    /// appearing may have been there all along, its data in the pods.
    pub hidden_may_exist: bool,
    /// What the pod spec uses, for whether pods can start without a resource.
    pub uses: &'a Uses,
    pub last_restart: Option<OffsetDateTime>,
    /// `--min-reload-interval`.
    pub min_interval: Duration,
    pub pause: Pause,
    /// Resources whose change a later pod template change covers (see
    /// [`super::index::Index::covered_by_template`]).
    pub covered: &'a BTreeSet<ResourceRef>,
    /// A suspended CronJob: never restarted.
    pub suspended: bool,
    pub now: OffsetDateTime,
}

/// A workload's pause period and where it stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pause {
    /// Its pause-period annotation.
    pub period: Option<Duration>,
    /// `kvsync.io/paused-at`: when kvsync started the running period.
    pub started: Option<OffsetDateTime>,
    /// When Reloader paused this Deployment, if it is still paused.
    pub by_reloader: Option<OffsetDateTime>,
}

/// A [`Verdict`], and whether the patch also ends a pause (removes
/// `kvsync.io/paused-at`; for Reloader's, unpauses the Deployment and removes
/// its `paused-at`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub end_pause: bool,
    /// The record's [`super::record::AppliedRecord::unreacted`] to write with
    /// a `Baseline` or `Restart`: the states the pods have.
    pub unreacted: Members,
}

/// What is left of `period` begun at `start`. A start in the future (a hand
/// edit, clock skew) counts as now, so it delays by at most one period.
fn remaining(start: OffsetDateTime, period: Duration, now: OffsetDateTime) -> Duration {
    let since = (now - start).clamp(time::Duration::ZERO, time::Duration::MAX);
    period.saturating_sub(since.unsigned_abs())
}

/// Compares the record (what the pods were started with) to the present.
///
/// Per resource the workload reacts to, both before and now:
/// - different data → restart;
/// - deleted → no restart (a restart cannot give the pods anything newer, and
///   new pods would not start); the record keeps the data the pods have, so a
///   re-creation restarts only if it brings different data;
/// - appeared → restart only if pods could start without it (every reference
///   `optional`); pods that require it were waiting for it, and the kubelet
///   starts them with it.
///
/// Resources new to the set are recorded without a restart.
///
/// A Deployment Reloader left paused is held (nothing written) until its
/// period is over; any verdict but `Pause`/`Wait` then ends the pause.
pub fn decide(s: &Situation<'_>) -> Decision {
    if let Some(since) = s.pause.by_reloader {
        let remaining = remaining(since, s.pause.period.unwrap_or_default(), s.now);
        if !remaining.is_zero() {
            return Decision {
                verdict: Verdict::Wait {
                    remaining,
                    changed: Vec::new(),
                },
                end_pause: false,
                unreacted: Members::new(),
            };
        }
    }
    let (verdict, unreacted) = verdict(s);
    let paused = s.pause.started.is_some() || s.pause.by_reloader.is_some();
    let end_pause = paused && !matches!(verdict, Verdict::Pause { .. } | Verdict::Wait { .. });
    Decision {
        verdict,
        end_pause,
        unreacted,
    }
}

/// The verdict, and the unreacted part of the record it writes: as recorded
/// (what the pods have), a resource new to it as it is now — and all as
/// they are now when the pods are replaced.
fn verdict(s: &Situation<'_>) -> (Verdict, Members) {
    let Some(record) = recorded(s) else {
        return (members_verdict(s), s.unreacted.clone());
    };
    let kept: Members = s
        .unreacted
        .iter()
        .map(|(resource, now)| {
            let was = record
                .unreacted
                .get(resource)
                .or_else(|| record.members.get(resource))
                .filter(|was| matches!(was, MemberState::Present(_)));
            (resource.clone(), *was.unwrap_or(now))
        })
        .collect();
    let verdict = match members_verdict(s) {
        Verdict::UpToDate if record.summary.is_none() && kept != record.unreacted => {
            Verdict::Baseline {
                why: Baseline::RecordUpdated,
                record: record.members.clone(),
            }
        }
        verdict => verdict,
    };
    let replaced = matches!(
        verdict,
        Verdict::Restart { .. }
            | Verdict::Baseline {
                why: Baseline::TemplateChanged,
                ..
            }
    );
    let unreacted = if replaced { s.unreacted.clone() } else { kept };
    (verdict, unreacted)
}

/// The record a decision compares with: `None` when the workload is not
/// opted in, or its record is missing, unreadable or of another key.
fn recorded<'a>(s: &Situation<'a>) -> Option<&'a super::record::AppliedRecord> {
    match s.applied {
        Applied::Record(record) if s.opted_in && record.key_id == s.key_id => Some(record),
        _ => None,
    }
}

fn members_verdict(s: &Situation<'_>) -> Verdict {
    let record = match s.applied {
        _ if !s.opted_in => {
            return if *s.applied == Applied::Never {
                Verdict::UpToDate
            } else {
                Verdict::Forget
            };
        }
        Applied::Never if nothing_to_baseline(s) => return Verdict::UpToDate,
        Applied::Never | Applied::Unreadable => {
            let record = s.desired.clone();
            return Verdict::Baseline {
                why: Baseline::FirstSight,
                record,
            };
        }
        Applied::Record(record) if record.key_id != s.key_id => {
            let record = s.desired.clone();
            return Verdict::Baseline {
                why: Baseline::KeyChanged,
                record,
            };
        }
        Applied::Record(record) => record,
    };
    let (mut changed, next, same) = match &record.summary {
        None => compare_members(&record.members, &record.unreacted, s),
        Some(summary) => compare_summary(summary, s.desired),
    };
    let covered = changed.iter().any(|r| s.covered.contains(r));
    changed.retain(|r| !s.covered.contains(r));
    if changed.is_empty() {
        let why = if covered {
            Baseline::TemplateChanged
        } else if same {
            return Verdict::UpToDate;
        } else {
            Baseline::RecordUpdated
        };
        return Verdict::Baseline { why, record: next };
    }
    if s.suspended {
        return Verdict::Baseline {
            why: Baseline::Suspended,
            record: next,
        };
    }
    // Reloader's own pause, when over, was the period: no second one.
    if let Some(period) = s.pause.period.filter(|p| !p.is_zero())
        && s.pause.by_reloader.is_none()
    {
        let Some(start) = s.pause.started else {
            return Verdict::Pause { period, changed };
        };
        let remaining = remaining(start, period, s.now);
        if !remaining.is_zero() {
            return Verdict::Wait { remaining, changed };
        }
    }
    // A restart stamped in the future (clock skew) waits at most one interval.
    let remaining = s.last_restart.map_or(Duration::ZERO, |last| {
        remaining(last, s.min_interval, s.now)
    });
    if remaining.is_zero() {
        Verdict::Restart {
            changed,
            record: next,
        }
    } else {
        Verdict::Wait { remaining, changed }
    }
}

/// A workload seen for the first time whose pods require every resource it
/// reacts to, none of which exists yet: they cannot have started with any of
/// its data, so there is nothing to record until one appears — and that
/// appearance is its first sight, a baseline as a record would have made it.
/// One write less per workload applied before its Secrets (a GitOps sync, a
/// Helm install). (A workload reacting to nothing is recorded at once: the
/// record says kvsync has seen it.) Not under a resource selector: there a
/// resource kvsync does not see may exist, in the pods, and its becoming
/// visible must be compared with a record.
fn nothing_to_baseline(s: &Situation<'_>) -> bool {
    !s.hidden_may_exist
        && !s.desired.is_empty()
        && s.desired
            .iter()
            .all(|(r, m)| *m == MemberState::Absent && s.uses.get(r) == Some(&Need::Required))
}

/// Per member, what restarts (see [`decide`]): the changed resources, the
/// next record, and whether it equals `recorded`. A member new to the set
/// that the pods used unreacted is compared with the state recorded for it
/// there: one that became visible to the workload together with new data
/// restarts it.
fn compare_members(
    recorded: &Members,
    unreacted: &Members,
    s: &Situation<'_>,
) -> (Vec<ResourceRef>, Members, bool) {
    let mut changed = Vec::new();
    let mut next = Members::new();
    for (resource, now) in s.desired {
        let was = recorded
            .get(resource)
            .or_else(|| unreacted.get(resource))
            .copied();
        let restarts = match (was, *now) {
            (Some(MemberState::Present(a)), MemberState::Present(b)) => a != b,
            (Some(MemberState::Absent), MemberState::Present(_)) => {
                s.hidden_may_exist || s.uses.get(resource) != Some(&Need::Required)
            }
            _ => false,
        };
        if restarts {
            changed.push(resource.clone());
        }
        let kept = match (was, *now) {
            (Some(present @ MemberState::Present(_)), MemberState::Absent) => present,
            _ => *now,
        };
        next.insert(resource.clone(), kept);
    }
    let same = next == *recorded;
    (changed, next, same)
}

/// Against a summary record (see [`super::record::RECORD_LIMIT`]): any
/// difference restarts, naming every member (which one changed is unknown).
fn compare_summary(summary: &str, desired: &Members) -> (Vec<ResourceRef>, Members, bool) {
    let same = summarize(desired) == summary;
    let changed = if same {
        Vec::new()
    } else {
        desired.keys().cloned().collect()
    };
    (changed, desired.clone(), same)
}

/// The last restart to time the next one from. A `kvsync.io/restartedAt` in
/// the future (a hand edit, clock skew between replicas) counts from when
/// kvsync first saw that stamp — `previous`: the stamp and effective time of
/// the workload's last observation — so it delays a restart by at most one
/// `--min-reload-interval`. The flag is true when such a stamp is new (worth a
/// warning).
pub fn effective_last_restart(
    stamp: Option<OffsetDateTime>,
    previous: Option<(Option<OffsetDateTime>, Option<OffsetDateTime>)>,
    now: OffsetDateTime,
) -> (Option<OffsetDateTime>, bool) {
    match stamp {
        Some(at) if at > now => match previous {
            Some((seen, effective)) if seen == stamp => (effective, false),
            _ => (Some(now), true),
        },
        _ => (stamp, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reload::annotations::Annotations;
    use crate::reload::digest::{Digest, DigestKey, Object};
    use crate::reload::kinds::WorkloadKind;
    use crate::reload::record::AppliedRecord;

    fn digest(text: &str) -> Digest {
        let key = DigestKey::from_bytes(&[7; 32]).unwrap();
        let object = Object {
            namespace: "shop",
            name: "cfg",
        };
        key.config_map(
            object,
            Some(&[("v".to_string(), text.to_string())].into()),
            None,
        )
    }

    fn state(text: &str) -> ResourceState {
        ResourceState {
            digest: digest(text),
            entries: Box::default(),
            flags: ResourceFlags::default(),
            version: None,
            data_version: None,
            resume: None,
            writer: None,
        }
    }

    fn policy(pairs: &[(&str, &str)]) -> ReloadPolicy {
        let annotations: Annotations = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ReloadPolicy::parse(WorkloadKind::Deployment, &annotations, &Annotations::new()).0
    }

    #[test]
    fn members_are_used_or_named_resources_the_policy_reacts_to() {
        let resources: BTreeMap<_, _> = [
            (ResourceRef::secret("used"), state("1")),
            (ResourceRef::secret("named-1"), state("2")),
            (ResourceRef::secret("other"), state("3")),
            (ResourceRef::config_map("named-2"), state("4")),
        ]
        .into();
        let uses = secrets(&[("used", Need::Required), ("missing", Need::Required)]);
        let p = policy(&[
            ("reloader.stakater.com/auto", "true"),
            ("secret.reloader.stakater.com/reload", "named-.*"),
        ]);
        let members = desired_members(&p, &uses, &KeyUses::new(), &resources);
        let expected: Members = [
            (ResourceRef::secret("missing"), MemberState::Absent),
            (
                ResourceRef::secret("named-1"),
                MemberState::Present(digest("2")),
            ),
            (
                ResourceRef::secret("used"),
                MemberState::Present(digest("1")),
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(members, expected);
    }

    #[test]
    fn search_members_need_the_match_flag() {
        let mut matched = state("1");
        matched.flags.matched = true;
        let resources = [
            (ResourceRef::secret("a"), matched),
            (ResourceRef::secret("b"), state("2")),
        ]
        .into();
        let uses = secrets(&[("a", Need::Required), ("b", Need::Optional)]);
        let members = desired_members(
            &policy(&[("reloader.stakater.com/search", "true")]),
            &uses,
            &KeyUses::new(),
            &resources,
        );
        assert_eq!(
            members.keys().collect::<Vec<_>>(),
            [&ResourceRef::secret("a")]
        );
    }

    const KEY: &str = "k1";
    const MINUTE: Duration = Duration::from_secs(60);

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000 + seconds).unwrap()
    }

    fn members(pairs: &[(&str, Option<&str>)]) -> Members {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    ResourceRef::secret(*name),
                    value.map_or(MemberState::Absent, |v| MemberState::Present(digest(v))),
                )
            })
            .collect()
    }

    fn applied(pairs: &[(&str, Option<&str>)]) -> Applied {
        Applied::Record(AppliedRecord::new(KEY.into(), members(pairs)))
    }

    fn secrets(pairs: &[(&str, Need)]) -> Uses {
        pairs
            .iter()
            .map(|(name, need)| (ResourceRef::secret(*name), *need))
            .collect()
    }

    /// The verdict for a workload whose pods require every desired resource.
    fn verdict(
        applied: &Applied,
        desired: &Members,
        last_restart: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Verdict {
        let uses: Uses = desired
            .keys()
            .map(|r| (r.clone(), Need::Required))
            .collect();
        verdict_using(applied, desired, &uses, last_restart, now)
    }

    fn verdict_using(
        applied: &Applied,
        desired: &Members,
        uses: &Uses,
        last_restart: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Verdict {
        decide(&Situation {
            opted_in: true,
            applied,
            key_id: KEY,
            desired,
            unreacted: &Members::new(),
            hidden_may_exist: false,
            uses,
            last_restart,
            min_interval: MINUTE,
            pause: Pause::default(),
            covered: &BTreeSet::new(),
            suspended: false,
            now,
        })
        .verdict
    }

    fn restart(names: &[&str], record: Members) -> Verdict {
        let changed = names.iter().map(|n| ResourceRef::secret(*n)).collect();
        Verdict::Restart { changed, record }
    }

    #[test]
    fn first_sight_and_unreadable_records_baseline_without_restart() {
        let desired = members(&[("a", Some("1")), ("b", None)]);
        let baseline = Verdict::Baseline {
            why: Baseline::FirstSight,
            record: desired.clone(),
        };
        assert_eq!(verdict(&Applied::Never, &desired, None, at(0)), baseline);
        assert_eq!(
            verdict(&Applied::Unreadable, &desired, None, at(0)),
            baseline
        );
    }

    #[test]
    fn a_first_sight_with_only_missing_required_resources_records_nothing_yet() {
        let missing = members(&[("a", None), ("b", None)]);
        assert_eq!(
            verdict(&Applied::Never, &missing, None, at(0)),
            Verdict::UpToDate,
            "its pods cannot have started: the Secrets' appearance is its first sight"
        );
        let uses = secrets(&[("a", Need::Required), ("b", Need::Optional)]);
        assert_eq!(
            verdict_using(&Applied::Never, &missing, &uses, None, at(0)),
            Verdict::Baseline {
                why: Baseline::FirstSight,
                record: missing.clone()
            },
            "pods run without an optional Secret: its appearance must restart them"
        );
        assert_eq!(
            verdict(&Applied::Never, &Members::new(), None, at(0)),
            Verdict::Baseline {
                why: Baseline::FirstSight,
                record: Members::new()
            },
            "reacting to nothing: recorded as seen"
        );
        let appeared = members(&[("a", Some("1")), ("b", None)]);
        assert_eq!(
            verdict(&Applied::Never, &appeared, None, at(0)),
            Verdict::Baseline {
                why: Baseline::FirstSight,
                record: appeared.clone()
            }
        );
    }

    #[test]
    fn same_data_is_up_to_date() {
        let desired = members(&[("a", Some("1")), ("b", None)]);
        let record = applied(&[("a", Some("1")), ("b", None)]);
        assert_eq!(verdict(&record, &desired, None, at(0)), Verdict::UpToDate);
    }

    #[test]
    fn changed_data_restarts_once_naming_every_changed_resource() {
        let record = applied(&[("a", Some("1")), ("b", Some("2")), ("c", Some("3"))]);
        let desired = members(&[
            ("a", Some("1")),
            ("b", Some("changed")),
            ("c", Some("also")),
        ]);
        assert_eq!(
            verdict(&record, &desired, None, at(0)),
            restart(&["b", "c"], desired.clone())
        );
    }

    #[test]
    fn deletions_never_restart_and_the_record_keeps_what_pods_have() {
        let record = applied(&[("a", Some("1"))]);
        let deleted = members(&[("a", None)]);
        assert_eq!(verdict(&record, &deleted, None, at(0)), Verdict::UpToDate);
        // Re-created with the same data: nothing; with other data: a restart.
        let same = members(&[("a", Some("1"))]);
        assert_eq!(verdict(&record, &same, None, at(0)), Verdict::UpToDate);
        let other = members(&[("a", Some("2"))]);
        assert_eq!(
            verdict(&record, &other, None, at(0)),
            restart(&["a"], other.clone())
        );
    }

    #[test]
    fn appearing_resources_restart_only_pods_that_could_run_without_them() {
        let record = applied(&[("needed", None), ("optional", None)]);
        let uses = secrets(&[("needed", Need::Required), ("optional", Need::Optional)]);
        let needed_appears = members(&[("needed", Some("1")), ("optional", None)]);
        assert_eq!(
            verdict_using(&record, &needed_appears, &uses, None, at(0)),
            Verdict::Baseline {
                why: Baseline::RecordUpdated,
                record: needed_appears.clone()
            }
        );
        let optional_appears = members(&[("needed", None), ("optional", Some("1"))]);
        assert_eq!(
            verdict_using(&record, &optional_appears, &uses, None, at(0)),
            restart(&["optional"], optional_appears.clone())
        );
        // Named but unused resources are not needed by the pods either.
        let unused = members(&[("needed", None), ("optional", None), ("named", Some("1"))]);
        let record = applied(&[("needed", None), ("optional", None), ("named", None)]);
        assert_eq!(
            verdict_using(&record, &unused, &uses, None, at(0)),
            restart(&["named"], unused.clone())
        );
    }

    /// The decision for `desired` against a record of `members` and `unreacted`.
    fn with_unreacted(
        members: &Members,
        unreacted_then: &Members,
        desired: &Members,
        unreacted_now: &Members,
        hidden_may_exist: bool,
    ) -> Decision {
        let record = Applied::Record(
            AppliedRecord::new(KEY.into(), members.clone()).with_unreacted(unreacted_then.clone()),
        );
        let uses = secrets(&[("a", Need::Required), ("b", Need::Required)]);
        decide(&Situation {
            opted_in: true,
            applied: &record,
            key_id: KEY,
            desired,
            unreacted: unreacted_now,
            hidden_may_exist,
            uses: &uses,
            last_restart: None,
            min_interval: MINUTE,
            pause: Pause::default(),
            covered: &BTreeSet::new(),
            suspended: false,
            now: at(0),
        })
    }

    #[test]
    fn a_resource_becoming_visible_with_new_data_restarts() {
        let a = members(&[("a", Some("1"))]);
        let hidden_b = members(&[("b", Some("old"))]);
        // `b` gains `match` in the same write as new data.
        let visible = members(&[("a", Some("1")), ("b", Some("new"))]);
        let decision = with_unreacted(&a, &hidden_b, &visible, &Members::new(), false);
        assert_eq!(decision.verdict, restart(&["b"], visible.clone()));
        // ...with the data the pods have: no restart, the record takes it in.
        let same = members(&[("a", Some("1")), ("b", Some("old"))]);
        let decision = with_unreacted(&a, &hidden_b, &same, &Members::new(), false);
        assert_eq!(
            decision.verdict,
            Verdict::Baseline {
                why: Baseline::RecordUpdated,
                record: same.clone()
            }
        );
        // A change while unreacted restarts nothing and keeps what the pods have.
        let changed_hidden = members(&[("b", Some("newer"))]);
        let decision = with_unreacted(&a, &hidden_b, &a, &changed_hidden, false);
        assert_eq!(decision.verdict, Verdict::UpToDate);
        assert_eq!(decision.unreacted, hidden_b, "the pods still have `old`");
        // A restart for `a` gives the pods every resource as it is now.
        let a2 = members(&[("a", Some("2"))]);
        let decision = with_unreacted(&a, &hidden_b, &a2, &changed_hidden, false);
        assert_eq!(decision.verdict, restart(&["a"], a2.clone()));
        assert_eq!(decision.unreacted, changed_hidden);
        // Newly used without reacting: recorded once.
        let decision = with_unreacted(&a, &Members::new(), &a, &changed_hidden, false);
        assert_eq!(
            decision.verdict,
            Verdict::Baseline {
                why: Baseline::RecordUpdated,
                record: a.clone()
            }
        );
        assert_eq!(decision.unreacted, changed_hidden);
    }

    #[test]
    fn under_a_resource_selector_a_first_sight_is_recorded_even_with_nothing_visible() {
        let missing = members(&[("a", None)]);
        let uses = secrets(&[("a", Need::Required)]);
        let decision = decide(&Situation {
            opted_in: true,
            applied: &Applied::Never,
            key_id: KEY,
            desired: &missing,
            unreacted: &Members::new(),
            hidden_may_exist: true,
            uses: &uses,
            last_restart: None,
            min_interval: MINUTE,
            pause: Pause::default(),
            covered: &BTreeSet::new(),
            suspended: false,
            now: at(0),
        });
        assert_eq!(
            decision.verdict,
            Verdict::Baseline {
                why: Baseline::FirstSight,
                record: missing.clone()
            }
        );
    }

    #[test]
    fn under_a_resource_selector_a_required_resource_appearing_may_have_been_there() {
        let absent = members(&[("a", None)]);
        let appeared = members(&[("a", Some("1"))]);
        let decide = |hidden| {
            with_unreacted(&absent, &Members::new(), &appeared, &Members::new(), hidden).verdict
        };
        assert_eq!(
            decide(true),
            restart(&["a"], appeared.clone()),
            "it may just have gained the selector's label, with data the pods do not have"
        );
        assert_eq!(
            decide(false),
            Verdict::Baseline {
                why: Baseline::RecordUpdated,
                record: appeared.clone()
            },
            "without a selector it was missing: the pods were waiting for it"
        );
    }

    #[test]
    fn membership_changes_alone_only_rewrite_the_record() {
        let record = applied(&[("a", Some("1")), ("gone", Some("2"))]);
        let desired = members(&[("a", Some("1")), ("new", Some("3"))]);
        assert_eq!(
            verdict(&record, &desired, None, at(0)),
            Verdict::Baseline {
                why: Baseline::RecordUpdated,
                record: desired.clone()
            }
        );
        // ...but a data change among the kept ones still restarts.
        let desired = members(&[("a", Some("changed")), ("new", Some("3"))]);
        assert_eq!(
            verdict(&record, &desired, None, at(0)),
            restart(&["a"], desired.clone())
        );
    }

    #[test]
    fn summary_records_restart_on_any_difference_of_the_set() {
        let desired = members(&[("a", Some("1")), ("b", Some("2"))]);
        let summary = |members: &Members| {
            Applied::Record(AppliedRecord {
                key_id: KEY.into(),
                members: Members::new(),
                unreacted: Members::new(),
                summary: Some(summarize(members)),
            })
        };
        assert_eq!(
            verdict(&summary(&desired), &desired, None, at(0)),
            Verdict::UpToDate
        );
        let before = members(&[("a", Some("1")), ("b", Some("old"))]);
        assert_eq!(
            verdict(&summary(&before), &desired, None, at(0)),
            restart(&["a", "b"], desired.clone())
        );
    }

    #[test]
    fn another_key_rebaselines_instead_of_restarting_everything() {
        let record = Applied::Record(AppliedRecord::new(
            "old".into(),
            members(&[("a", Some("1"))]),
        ));
        let desired = members(&[("a", Some("other digest under the new key"))]);
        assert_eq!(
            verdict(&record, &desired, None, at(0)),
            Verdict::Baseline {
                why: Baseline::KeyChanged,
                record: desired.clone()
            }
        );
    }

    #[test]
    fn restarts_are_rate_limited_by_the_last_restart() {
        let record = applied(&[("a", Some("1"))]);
        let desired = members(&[("a", Some("2"))]);
        let changed = vec![ResourceRef::secret("a")];
        assert_eq!(
            verdict(&record, &desired, Some(at(0)), at(20)),
            Verdict::Wait {
                remaining: Duration::from_secs(40),
                changed: changed.clone()
            }
        );
        assert_eq!(
            verdict(&record, &desired, Some(at(0)), at(60)),
            restart(&["a"], desired.clone())
        );
        assert_eq!(
            verdict(&record, &desired, Some(at(1000)), at(0)),
            Verdict::Wait {
                remaining: MINUTE,
                changed
            },
            "a future stamp waits one interval, not forever"
        );
    }

    #[test]
    fn opting_out_forgets_the_record_and_never_touches_strangers() {
        let desired = Members::new();
        let uses = Uses::new();
        let covered = BTreeSet::new();
        let situation = |applied| Situation {
            opted_in: false,
            applied,
            key_id: KEY,
            desired: &desired,
            unreacted: &desired,
            hidden_may_exist: false,
            uses: &uses,
            last_restart: None,
            min_interval: MINUTE,
            pause: Pause::default(),
            covered: &covered,
            suspended: false,
            now: at(0),
        };
        let verdict = |applied| decide(&situation(applied)).verdict;
        assert_eq!(verdict(&Applied::Never), Verdict::UpToDate);
        let recorded = applied(&[("a", Some("1"))]);
        assert_eq!(verdict(&recorded), Verdict::Forget);
        assert_eq!(verdict(&Applied::Unreadable), Verdict::Forget);
    }

    /// The decision for a changed `a` of a workload with a pause period.
    fn paused(pause: Pause, covered: &[&str], last_restart: Option<i64>, now: i64) -> Decision {
        let record = applied(&[("a", Some("1"))]);
        let desired = members(&[("a", Some("2"))]);
        let uses = secrets(&[("a", Need::Required)]);
        let covered = covered.iter().map(|n| ResourceRef::secret(*n)).collect();
        decide(&Situation {
            opted_in: true,
            applied: &record,
            key_id: KEY,
            desired: &desired,
            unreacted: &Members::new(),
            hidden_may_exist: false,
            uses: &uses,
            last_restart: last_restart.map(at),
            min_interval: MINUTE,
            pause,
            covered: &covered,
            suspended: false,
            now: at(now),
        })
    }

    const FIVE_MINUTES: Duration = Duration::from_secs(300);

    #[test]
    fn a_pause_period_folds_changes_into_one_restart_when_it_ends() {
        let changed = vec![ResourceRef::secret("a")];
        let period = Some(FIVE_MINUTES);
        let not_started = Pause {
            period,
            ..Pause::default()
        };
        assert_eq!(
            paused(not_started, &[], None, 0).verdict,
            Verdict::Pause {
                period: FIVE_MINUTES,
                changed: changed.clone()
            },
            "the first change starts the period, restarting nothing"
        );
        let running = Pause {
            started: Some(at(0)),
            ..not_started
        };
        assert_eq!(
            paused(running, &[], None, 100),
            Decision {
                verdict: Verdict::Wait {
                    remaining: Duration::from_secs(200),
                    changed: changed.clone()
                },
                end_pause: false,
                unreacted: Members::new(),
            }
        );
        let over = paused(running, &[], None, 300);
        assert_eq!(over.verdict, restart(&["a"], members(&[("a", Some("2"))])));
        assert!(over.end_pause, "the restart removes paused-at");
        assert_eq!(
            paused(running, &[], Some(290), 300).verdict,
            Verdict::Wait {
                remaining: Duration::from_secs(50),
                changed: changed.clone()
            },
            "--min-reload-interval stays the global floor"
        );
        let future = Pause {
            started: Some(at(10_000)),
            ..not_started
        };
        assert_eq!(
            paused(future, &[], None, 0).verdict,
            Verdict::Wait {
                remaining: FIVE_MINUTES,
                changed
            },
            "a paused-at in the future holds for one period, not until then"
        );
    }

    #[test]
    fn reloaders_pause_is_held_to_its_end_then_resumed_with_the_restart() {
        let by_reloader = Pause {
            period: Some(FIVE_MINUTES),
            started: None,
            by_reloader: Some(at(0)),
        };
        assert_eq!(
            paused(by_reloader, &[], None, 60),
            Decision {
                verdict: Verdict::Wait {
                    remaining: Duration::from_secs(240),
                    changed: Vec::new()
                },
                end_pause: false,
                unreacted: Members::new(),
            }
        );
        let over = paused(by_reloader, &[], None, 300);
        assert_eq!(over.verdict, restart(&["a"], members(&[("a", Some("2"))])));
        assert!(over.end_pause, "one patch resumes and restarts");
        let no_period = Pause {
            period: None,
            ..by_reloader
        };
        assert!(
            paused(no_period, &[], None, 0).end_pause,
            "without a readable period it is over"
        );
        // Nothing changed: resumed all the same.
        let record = applied(&[("a", Some("1"))]);
        let desired = members(&[("a", Some("1"))]);
        let uses = Uses::new();
        let situation = Situation {
            opted_in: true,
            applied: &record,
            key_id: KEY,
            desired: &desired,
            unreacted: &Members::new(),
            hidden_may_exist: false,
            uses: &uses,
            last_restart: None,
            min_interval: MINUTE,
            pause: by_reloader,
            covered: &BTreeSet::new(),
            suspended: false,
            now: at(301),
        };
        assert_eq!(
            decide(&situation),
            Decision {
                verdict: Verdict::UpToDate,
                end_pause: true,
                unreacted: Members::new(),
            }
        );
    }

    #[test]
    fn a_later_template_change_covers_the_data_change() {
        let covered = paused(Pause::default(), &["a"], None, 0);
        assert_eq!(
            covered.verdict,
            Verdict::Baseline {
                why: Baseline::TemplateChanged,
                record: members(&[("a", Some("2"))])
            }
        );
        assert!(!covered.end_pause);
        assert_eq!(
            paused(Pause::default(), &["other"], None, 0).verdict,
            restart(&["a"], members(&[("a", Some("2"))]))
        );
    }

    #[test]
    fn suspended_cron_jobs_record_changes_without_a_job() {
        let record = applied(&[("a", Some("1"))]);
        let desired = members(&[("a", Some("2"))]);
        let uses = secrets(&[("a", Need::Required)]);
        let verdict = decide(&Situation {
            opted_in: true,
            applied: &record,
            key_id: KEY,
            desired: &desired,
            unreacted: &Members::new(),
            hidden_may_exist: false,
            uses: &uses,
            last_restart: None,
            min_interval: MINUTE,
            pause: Pause::default(),
            covered: &BTreeSet::new(),
            suspended: true,
            now: at(0),
        })
        .verdict;
        assert_eq!(
            verdict,
            Verdict::Baseline {
                why: Baseline::Suspended,
                record: desired
            }
        );
    }

    #[test]
    fn a_future_restart_stamp_counts_from_when_it_was_first_seen() {
        let future = Some(at(3600));
        assert_eq!(
            effective_last_restart(Some(at(-5)), None, at(0)),
            (Some(at(-5)), false)
        );
        assert_eq!(
            effective_last_restart(future, None, at(0)),
            (Some(at(0)), true)
        );
        assert_eq!(
            effective_last_restart(future, Some((future, Some(at(0)))), at(50)),
            (Some(at(0)), false),
            "seen before: still timed from then, so the wait ends"
        );
        assert_eq!(
            effective_last_restart(Some(at(7200)), Some((future, Some(at(0)))), at(50)),
            (Some(at(50)), true),
            "another future stamp"
        );
    }
}
