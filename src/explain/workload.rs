//! Explains one workload: which Secrets and ConfigMaps restart it and by
//! which annotation, which it uses but ignores and why, its last restart and
//! when the next may happen. Pure: the verdicts are the reload stage's own
//! ([`ReloadPolicy::reacts_to`] over [`crate::reload::observe`]'s reduction
//! of the workload); this module only names the annotation behind each.

use std::collections::BTreeMap;
use std::time::Duration;

use time::OffsetDateTime;

use super::pending::{Digests, pending};
use super::report::{IntervalSource, LastRestart, ResourceVerdict, RestartWindow, WorkloadReport};
use crate::api::contract::reloader::{AUTO, IGNORE, MATCH, SEARCH};
use crate::reload::annotations::{
    ReloadPolicy, ResourceFlags, exclude_key, pause_period_key, reload_key, typed_auto_key,
};
use crate::reload::index::WorkloadObservation;
use crate::reload::kinds::{ResourceKind, ResourceRef, WorkloadKind};
use crate::reload::record::Applied;

/// A Secret or ConfigMap of the workload's namespace, as explain sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceInfo {
    pub flags: ResourceFlags,
    /// The KeyVaultSecret writing it (`kvsync.io/owner`, or `kvsync.io/merged-by`).
    pub written_by: Option<String>,
}

/// Everything [`explain`] looks at besides the workload itself.
#[derive(Debug)]
pub struct Context<'a> {
    /// The namespace's Secrets and ConfigMaps (present ones).
    pub resources: &'a BTreeMap<ResourceRef, ResourceInfo>,
    /// The note of the newest `Reloaded` event on the workload.
    pub last_reloaded_note: Option<&'a str>,
    /// The operator's `--min-reload-interval`.
    pub min_reload_interval: Duration,
    /// Where `min_reload_interval` comes from.
    pub min_interval_from: IntervalSource,
    /// The namespace's resources digested with the operator's key, or why not.
    pub digests: Result<Digests<'a>, &'a str>,
    /// For a CronJob: the newest Job kvsync made for it.
    pub last_job: Option<&'a str>,
    pub now: OffsetDateTime,
    pub limits: Vec<String>,
}

/// Whether `policy` restarts the workload on a change of `resource`, and why
/// (or why not), in words.
pub fn verdict(
    policy: &ReloadPolicy,
    resource: &ResourceRef,
    used: bool,
    flags: ResourceFlags,
) -> (bool, String) {
    let reacts = policy.reacts_to(resource, used, flags);
    let rules = policy.rules(resource.kind);
    let kind = resource.kind;
    let why = if reacts {
        if rules.patterns.iter().any(|p| p.is_match(&resource.name)) {
            format!("named in {}", reload_key(kind))
        } else if rules.auto {
            format!("used, and {AUTO} (or {}) is true", typed_auto_key(kind))
        } else {
            format!("used, carries {MATCH}, and the workload has {SEARCH}")
        }
    } else if flags.ignored {
        format!("ignored: the {} has {IGNORE}: \"true\"", kind.as_str())
    } else if rules.excluded.contains(&resource.name) {
        format!("excluded by {}", exclude_key(kind))
    } else if used && rules.search {
        format!(
            "not matched: {SEARCH} needs {MATCH}: \"true\" on the {}",
            kind.as_str()
        )
    } else {
        format!(
            "not matched: used, but no {AUTO}, {} or {} rule covers it",
            typed_auto_key(kind),
            reload_key(kind)
        )
    };
    (reacts, why)
}

/// The policy in words, one line per rule.
fn rules(kind: WorkloadKind, policy: &ReloadPolicy) -> Vec<String> {
    let mut lines = Vec::new();
    for resource_kind in ResourceKind::ALL {
        let rules = policy.rules(resource_kind);
        let noun = format!("{}s", resource_kind.as_str());
        if rules.auto {
            lines.push(format!(
                "auto: every {} the pods use",
                resource_kind.as_str()
            ));
        }
        if rules.search {
            lines.push(format!("search: used {noun} that carry {MATCH}"));
        }
        if !rules.patterns.is_empty() {
            lines.push(format!("named {noun}: {}", reload_key(resource_kind)));
        }
        if !rules.excluded.is_empty() {
            let names: Vec<&str> = rules.excluded.iter().map(String::as_str).collect();
            lines.push(format!("excluded {noun}: {}", names.join(", ")));
        }
    }
    if let Some(pause) = policy.pause_period {
        lines.push(format!(
            "pause period {} ({})",
            humantime::format_duration(pause),
            pause_period_key(kind)
        ));
    }
    lines
}

/// Explains `workload` (observed by the reload stage's reduction).
pub fn explain(workload: &WorkloadObservation, context: &Context<'_>) -> WorkloadReport {
    let state = &workload.state;
    let policy = &state.policy;
    let named = context.resources.keys().filter(|resource| {
        policy
            .rules(resource.kind)
            .patterns
            .iter()
            .any(|p| p.is_match(&resource.name))
    });
    let candidates: std::collections::BTreeSet<&ResourceRef> =
        state.uses.keys().chain(named).collect();
    let (mut reacts_to, mut ignores) = (Vec::new(), Vec::new());
    for resource in candidates {
        let info = context.resources.get(resource);
        let used = state.uses.contains_key(resource);
        let flags = info.map_or_else(ResourceFlags::default, |i| i.flags);
        let (reacts, why) = verdict(policy, resource, used, flags);
        let entry = ResourceVerdict {
            resource: resource.to_string(),
            why,
            used,
            present: info.is_some(),
            written_by: info.and_then(|i| i.written_by.clone()),
        };
        if reacts {
            reacts_to.push(entry);
        } else {
            ignores.push(entry);
        }
    }
    let min_interval = context.min_reload_interval;
    WorkloadReport {
        kind: workload.workload.kind.as_str(),
        namespace: workload.workload.namespace.clone(),
        name: workload.workload.name.clone(),
        opted_in: !policy.is_inert(),
        rules: rules(workload.workload.kind, policy),
        problems: state.problems.iter().map(ToString::to_string).collect(),
        reacts_to,
        ignores,
        baselined: matches!(state.applied, Applied::Record(_)),
        last_restart: state.last_restart.map(|at| LastRestart {
            at: super::render::timestamp(at),
            cause: context.last_reloaded_note.map(str::to_owned),
            job: context.last_job.map(str::to_owned),
        }),
        pending: pending(state, context.digests, min_interval, context.now),
        restart_window: RestartWindow {
            min_interval_from: context.min_interval_from.clone(),
            ..paused(
                window(
                    !policy.is_inert(),
                    state.last_restart,
                    min_interval,
                    context.now,
                ),
                policy.pause_period.filter(|_| !policy.is_inert()),
                state.paused_at,
                context.now,
            )
        },
        limits: context.limits.clone(),
    }
}

/// With a pause period, a change starts the period (or joins the running
/// one) and the rollout is made when it ends.
fn paused(
    window: RestartWindow,
    pause: Option<Duration>,
    paused_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> RestartWindow {
    let Some(pause) = pause else {
        return window;
    };
    let period = humantime::format_duration(pause);
    match paused_at.map(|at| at + pause).filter(|end| *end > now) {
        Some(end) => RestartWindow {
            held_until: Some(super::render::timestamp(end)),
            summary: format!(
                "a pause period ({period}) runs until {}: changes until then fold into the one rollout made then",
                super::render::timestamp(end)
            ),
            ..window
        },
        None => RestartWindow {
            summary: format!(
                "a change now starts a pause period of {period}; the one rollout for it and for every change within it follows when it ends"
            ),
            ..window
        },
    }
}

/// When a change seen now would restart the workload.
fn window(
    opted_in: bool,
    last_restart: Option<OffsetDateTime>,
    min_interval: Duration,
    now: OffsetDateTime,
) -> RestartWindow {
    let min_interval_text = humantime::format_duration(min_interval).to_string();
    let held_until = last_restart
        .map(|last| last + min_interval)
        .filter(|until| *until > now);
    let summary = match (opted_in, held_until) {
        (false, _) => "never: the workload carries no reload annotation".to_owned(),
        (true, Some(until)) => format!(
            "a change now waits until {} ({min_interval_text} after the last restart); changes meanwhile fold into that one restart",
            super::render::timestamp(until)
        ),
        (true, None) => "a change now restarts it after the debounce".to_owned(),
    };
    RestartWindow {
        min_interval: min_interval_text,
        min_interval_from: IntervalSource::Flag,
        held_until: held_until.map(super::render::timestamp),
        summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reload::observe::observe_workload;
    use k8s_openapi::api::apps::v1::Deployment;
    use serde_json::json;

    fn deployment(annotations: serde_json::Value) -> WorkloadObservation {
        let object: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
            "spec": {"selector": {}, "template": {"spec": {"containers": [{
                "name": "app",
                "envFrom": [{"secretRef": {"name": "db"}}, {"secretRef": {"name": "api"}},
                            {"configMapRef": {"name": "settings"}}]
            }]}}}
        }))
        .unwrap();
        observe_workload(&object).unwrap()
    }

    fn context(resources: &BTreeMap<ResourceRef, ResourceInfo>) -> Context<'_> {
        Context {
            resources,
            last_reloaded_note: None,
            min_reload_interval: Duration::from_secs(30),
            min_interval_from: IntervalSource::Flag,
            digests: Err("no key"),
            last_job: None,
            now: OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
            limits: Vec::new(),
        }
    }

    #[test]
    fn each_resource_says_which_rule_restarts_for_it_or_why_none_does() {
        let workload = deployment(json!({
            "secret.reloader.stakater.com/auto": "true",
            "secrets.exclude.reloader.stakater.com/reload": "api",
            "configmap.reloader.stakater.com/reload": "other-.*",
        }));
        let resources: BTreeMap<_, _> = [
            (
                ResourceRef::secret("db"),
                ResourceInfo {
                    written_by: Some("db".into()),
                    ..Default::default()
                },
            ),
            (ResourceRef::secret("api"), ResourceInfo::default()),
            (ResourceRef::config_map("settings"), ResourceInfo::default()),
            (
                ResourceRef::config_map("other-flags"),
                ResourceInfo::default(),
            ),
        ]
        .into();
        let report = explain(&workload, &context(&resources));
        let reacts: Vec<(&str, &str)> = report
            .reacts_to
            .iter()
            .map(|r| (r.resource.as_str(), r.why.as_str()))
            .collect();
        assert_eq!(
            reacts,
            [
                (
                    "ConfigMap/other-flags",
                    "named in configmap.reloader.stakater.com/reload"
                ),
                (
                    "Secret/db",
                    "used, and reloader.stakater.com/auto (or secret.reloader.stakater.com/auto) is true"
                ),
            ]
        );
        assert_eq!(report.reacts_to[1].written_by.as_deref(), Some("db"));
        let ignores: Vec<&str> = report.ignores.iter().map(|r| r.why.as_str()).collect();
        assert_eq!(
            ignores[0],
            "not matched: used, but no reloader.stakater.com/auto, configmap.reloader.stakater.com/auto or configmap.reloader.stakater.com/reload rule covers it"
        );
        assert_eq!(
            ignores[1],
            "excluded by secrets.exclude.reloader.stakater.com/reload"
        );
        assert!(report.opted_in);
        assert!(!report.baselined);
        assert_eq!(
            report.restart_window.summary,
            "a change now restarts it after the debounce"
        );
    }

    #[test]
    fn search_without_match_and_ignore_are_told_apart() {
        let workload = deployment(json!({"reloader.stakater.com/search": "true"}));
        let ignored = ResourceFlags {
            matched: true,
            ignored: true,
        };
        let matched = ResourceFlags {
            matched: true,
            ignored: false,
        };
        let resources: BTreeMap<_, _> = [
            (
                ResourceRef::secret("db"),
                ResourceInfo {
                    flags: matched,
                    written_by: None,
                },
            ),
            (
                ResourceRef::secret("api"),
                ResourceInfo {
                    flags: ignored,
                    written_by: None,
                },
            ),
        ]
        .into();
        let report = explain(&workload, &context(&resources));
        assert_eq!(report.reacts_to.len(), 1);
        assert_eq!(
            report.reacts_to[0].why,
            "used, carries reloader.stakater.com/match, and the workload has reloader.stakater.com/search"
        );
        let why: Vec<&str> = report.ignores.iter().map(|r| r.why.as_str()).collect();
        assert_eq!(
            why,
            [
                "not matched: reloader.stakater.com/search needs reloader.stakater.com/match: \"true\" on the ConfigMap",
                "ignored: the Secret has reloader.stakater.com/ignore: \"true\"",
            ]
        );
        assert!(!report.ignores[0].present, "settings does not exist");
    }

    #[test]
    fn a_recent_restart_holds_the_next_one_for_the_longer_interval() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let window = window(
            true,
            Some(now - Duration::from_secs(60)),
            Duration::from_secs(300),
            now,
        );
        assert_eq!(window.held_until.as_deref(), Some("1970-01-12T13:50:40Z"));
        assert!(
            window
                .summary
                .starts_with("a change now waits until 1970-01-12T13:50:40Z (5m after"),
            "{}",
            window.summary
        );
        let passed = super::window(
            true,
            Some(now - Duration::from_secs(600)),
            Duration::from_secs(300),
            now,
        );
        assert_eq!(passed.held_until, None);
        let inert = super::window(false, None, Duration::from_secs(30), now);
        assert!(inert.summary.starts_with("never"));
    }
}
