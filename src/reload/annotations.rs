//! Stakater Reloader's annotation contract (v1.4.x), parsed once per workload
//! observation into a [`ReloadPolicy`] that answers "does this workload react
//! to that resource?" without looking at annotations again.
//!
//! Read from the workload's own annotations, or — per resource kind, exactly as
//! Reloader does — from the pod template's when the workload carries none of
//! that kind's keys (`<kind>.reloader.stakater.com/reload`, `reloader.stakater.com/auto`,
//! `<kind>.reloader.stakater.com/auto`, `reloader.stakater.com/search`).
//!
//! Deliberate differences from Reloader, all on the safe side:
//! - an invalid `…/reload` expression is reported and skipped (Reloader panics);
//! - each entry is anchored as a whole (`^(?:entry)$`), so `a|b` means "a or b"
//!   rather than Reloader's accidental "starts with a, or ends with b";
//! - `auto`, named entries and search/match combine as a union (Reloader stops
//!   at `auto` in some versions, so a named but unused resource was ignored);
//! - the exclude lists are also read from the pod template when the workload
//!   has none (Reloader reads them from the workload only).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use regex::{Regex, RegexBuilder};

use super::kinds::{ResourceKind, ResourceRef, WorkloadKind};
use crate::api::contract::reloader::{
    AUTO, CONFIGMAP_AUTO, CONFIGMAP_RELOAD, CONFIGMAPS_EXCLUDE, DEPLOYMENT_PAUSE_PERIOD, IGNORE,
    MATCH, SEARCH, SECRET_AUTO, SECRET_RELOAD, SECRETS_EXCLUDE,
};
use crate::api::contract::{
    CRONJOB_PAUSE_PERIOD, DAEMONSET_PAUSE_PERIOD, ROLLOUT_PAUSE_PERIOD, STATEFULSET_PAUSE_PERIOD,
};

/// Per-kind annotation keys.
pub fn typed_auto_key(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Secret => SECRET_AUTO,
        ResourceKind::ConfigMap => CONFIGMAP_AUTO,
    }
}

/// Comma list of anchored regular expressions naming resources to react to,
/// used or not.
pub fn reload_key(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Secret => SECRET_RELOAD,
        ResourceKind::ConfigMap => CONFIGMAP_RELOAD,
    }
}

/// Comma list of exact names never to react to.
pub fn exclude_key(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Secret => SECRETS_EXCLUDE,
        ResourceKind::ConfigMap => CONFIGMAPS_EXCLUDE,
    }
}

/// The pause period of a workload (Go/humantime duration): changes that
/// arrive within it after a first one are folded into one rollout, made when
/// it ends. Reloader defines it for Deployments only; kvsync offers the same
/// for StatefulSets and DaemonSets under its own keys.
pub fn pause_period_key(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::Deployment => DEPLOYMENT_PAUSE_PERIOD,
        WorkloadKind::StatefulSet => STATEFULSET_PAUSE_PERIOD,
        WorkloadKind::DaemonSet => DAEMONSET_PAUSE_PERIOD,
        WorkloadKind::Rollout => ROLLOUT_PAUSE_PERIOD,
        WorkloadKind::CronJob => CRONJOB_PAUSE_PERIOD,
    }
}

/// The longest pause period accepted (30 days). A pause holds a restart back
/// until it ends, so a longer one is no pause but a switch-off
/// (`reloader.stakater.com/auto: "false"` says that); the bound also keeps
/// every time kvsync computes from it far inside the calendar.
pub const MAX_PAUSE_PERIOD: Duration = Duration::from_secs(30 * 86400);

/// Upper bound for one compiled `…/reload` expression: annotations are user
/// input, and a pathological one must not cost the operator its memory.
const PATTERN_SIZE_LIMIT: usize = 256 * 1024;

pub type Annotations = BTreeMap<String, String>;

/// An anchored `…/reload` entry. Compared by its text, so that two
/// observations of an unchanged workload compare equal.
#[derive(Clone, Debug)]
pub struct Pattern(Regex);

/// A `…/reload` entry that is not a usable regular expression.
#[derive(Debug, thiserror::Error)]
#[error("{}", useful_line(.0))]
pub struct InvalidPattern(regex::Error);

/// The regex crate's message spans several lines with a caret diagram; the
/// line starting with "error:" is the useful part.
fn useful_line(error: &regex::Error) -> String {
    let text = error.to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or(&text);
    line.trim_start_matches("error:").trim().to_owned()
}

impl Pattern {
    fn compile(entry: &str) -> Result<Self, InvalidPattern> {
        RegexBuilder::new(&format!("^(?:{entry})$"))
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map(Pattern)
            .map_err(InvalidPattern)
    }

    pub fn is_match(&self, name: &str) -> bool {
        self.0.is_match(name)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Pattern {}

/// What a workload reacts to among resources of one kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindRules {
    /// `auto` or the typed `auto`: every used resource of this kind.
    pub auto: bool,
    /// `search`: used resources of this kind that carry `match`.
    pub search: bool,
    /// Named resources (used or not).
    pub patterns: Vec<Pattern>,
    /// Never these, whatever else says.
    pub excluded: BTreeSet<String>,
}

impl KindRules {
    fn is_inert(&self) -> bool {
        !self.auto && !self.search && self.patterns.is_empty()
    }
}

/// Everything the annotations of one workload say about reloading it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadPolicy {
    pub secrets: KindRules,
    pub config_maps: KindRules,
    /// [`pause_period_key`], when set and valid.
    pub pause_period: Option<Duration>,
}

/// The reload-relevant annotations of a Secret or ConfigMap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceFlags {
    /// `reloader.stakater.com/match: "true"`.
    pub matched: bool,
    /// `reloader.stakater.com/ignore: "true"`.
    pub ignored: bool,
}

impl ResourceFlags {
    pub fn from_annotations(annotations: &Annotations) -> Self {
        let is_true = |key: &str| annotations.get(key).is_some_and(|v| v == "true");
        ResourceFlags {
            matched: is_true(MATCH),
            ignored: is_true(IGNORE),
        }
    }
}

/// Why a pause period annotation was refused.
#[derive(Debug, thiserror::Error)]
pub enum PausePeriodError {
    #[error("is not a duration ({0})")]
    Unparsable(#[from] humantime::DurationError),
    #[error(
        "is longer than the maximum of {}",
        humantime::format_duration(MAX_PAUSE_PERIOD)
    )]
    TooLong,
}

/// Reads a pause period: a humantime duration of at most [`MAX_PAUSE_PERIOD`].
pub fn parse_pause_period(value: &str) -> Result<Duration, PausePeriodError> {
    let period = humantime::parse_duration(value.trim())?;
    if period > MAX_PAUSE_PERIOD {
        return Err(PausePeriodError::TooLong);
    }
    Ok(period)
}

/// An annotation value that could not be used; reported, then skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyProblem {
    pub annotation: &'static str,
    pub value: String,
    pub reason: String,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "annotation {}: `{}` {}; ignored",
            self.annotation, self.value, self.reason
        )
    }
}

impl ReloadPolicy {
    /// Parses a workload's annotations (and its pod template's, as fallback).
    /// Never fails: unusable values come back as problems to report.
    pub fn parse(
        kind: WorkloadKind,
        workload: &Annotations,
        template: &Annotations,
    ) -> (Self, Vec<PolicyProblem>) {
        let mut problems = Vec::new();
        let secrets = KindRules::parse(ResourceKind::Secret, workload, template, &mut problems);
        let config_maps =
            KindRules::parse(ResourceKind::ConfigMap, workload, template, &mut problems);
        let pause_key = pause_period_key(kind);
        let pause_period = workload.get(pause_key).and_then(|value| {
            parse_pause_period(value)
                .map_err(|reason| {
                    problems.push(PolicyProblem {
                        annotation: pause_key,
                        value: value.clone(),
                        reason: reason.to_string(),
                    })
                })
                .ok()
        });
        (
            ReloadPolicy {
                secrets,
                config_maps,
                pause_period,
            },
            problems,
        )
    }

    pub fn rules(&self, kind: ResourceKind) -> &KindRules {
        match kind {
            ResourceKind::Secret => &self.secrets,
            ResourceKind::ConfigMap => &self.config_maps,
        }
    }

    /// Whether `…/reload` lists name resources: they react whether used or not.
    pub fn names_resources(&self) -> bool {
        !self.secrets.patterns.is_empty() || !self.config_maps.patterns.is_empty()
    }

    /// A workload without any reload annotation: the stage leaves it alone
    /// entirely (it writes nothing to workloads that did not opt in).
    pub fn is_inert(&self) -> bool {
        self.secrets.is_inert() && self.config_maps.is_inert()
    }

    /// Whether a change of `resource` should restart the workload.
    /// `used`: the pod spec references it (see [`super::uses`]).
    pub fn reacts_to(&self, resource: &ResourceRef, used: bool, flags: ResourceFlags) -> bool {
        let rules = self.rules(resource.kind);
        if flags.ignored || rules.excluded.contains(&resource.name) {
            return false;
        }
        (used && (rules.auto || (rules.search && flags.matched)))
            || rules.patterns.iter().any(|p| p.is_match(&resource.name))
    }
}

impl KindRules {
    fn parse(
        kind: ResourceKind,
        workload: &Annotations,
        template: &Annotations,
        problems: &mut Vec<PolicyProblem>,
    ) -> Self {
        let keys = [reload_key(kind), AUTO, typed_auto_key(kind), SEARCH];
        let source = if keys.iter().any(|k| workload.contains_key(*k)) {
            workload
        } else {
            template
        };
        let get = |key: &str| source.get(key).map(String::as_str);

        let patterns = get(reload_key(kind))
            .into_iter()
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .filter_map(|entry| {
                Pattern::compile(entry)
                    .map_err(|reason| {
                        problems.push(PolicyProblem {
                            annotation: reload_key(kind),
                            value: entry.to_owned(),
                            reason: format!("is not a valid regular expression ({reason})"),
                        })
                    })
                    .ok()
            })
            .collect();

        let exclude_key = exclude_key(kind);
        let excluded = workload
            .get(exclude_key)
            .or_else(|| template.get(exclude_key))
            .into_iter()
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect();

        KindRules {
            auto: get(AUTO).is_some_and(go_parse_bool)
                || get(typed_auto_key(kind)).is_some_and(go_parse_bool),
            search: get(SEARCH) == Some("true"),
            patterns,
            excluded,
        }
    }
}

/// Go's `strconv.ParseBool` truth values, which Reloader uses for `auto`.
fn go_parse_bool(value: &str) -> bool {
    matches!(value, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> Annotations {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn policy(workload: &[(&str, &str)], template: &[(&str, &str)]) -> ReloadPolicy {
        let (policy, problems) = ReloadPolicy::parse(
            WorkloadKind::Deployment,
            &annotations(workload),
            &annotations(template),
        );
        assert!(problems.is_empty(), "{problems:?}");
        policy
    }

    const PLAIN: ResourceFlags = ResourceFlags {
        matched: false,
        ignored: false,
    };
    const MATCHED: ResourceFlags = ResourceFlags {
        matched: true,
        ignored: false,
    };
    const IGNORED: ResourceFlags = ResourceFlags {
        matched: true,
        ignored: true,
    };

    #[test]
    fn no_annotations_is_inert() {
        let p = policy(&[("unrelated", "x")], &[]);
        assert!(p.is_inert());
        assert!(!p.reacts_to(&ResourceRef::secret("s"), true, PLAIN));
    }

    #[test]
    fn auto_reacts_to_used_resources_of_both_kinds_only() {
        let p = policy(&[(AUTO, "true")], &[]);
        assert!(p.reacts_to(&ResourceRef::secret("s"), true, PLAIN));
        assert!(p.reacts_to(&ResourceRef::config_map("c"), true, PLAIN));
        assert!(!p.reacts_to(&ResourceRef::secret("s"), false, PLAIN));
        assert!(
            policy(&[(AUTO, "True")], &[]).secrets.auto,
            "Go's ParseBool spellings"
        );
        assert!(policy(&[(AUTO, "false")], &[]).is_inert());
        assert!(policy(&[(AUTO, "yes")], &[]).is_inert());
    }

    #[test]
    fn typed_auto_is_per_kind() {
        let p = policy(&[("secret.reloader.stakater.com/auto", "true")], &[]);
        assert!(p.reacts_to(&ResourceRef::secret("s"), true, PLAIN));
        assert!(!p.reacts_to(&ResourceRef::config_map("c"), true, PLAIN));
        let p = policy(&[("configmap.reloader.stakater.com/auto", "true")], &[]);
        assert!(!p.reacts_to(&ResourceRef::secret("s"), true, PLAIN));
        assert!(p.reacts_to(&ResourceRef::config_map("c"), true, PLAIN));
    }

    #[test]
    fn named_entries_are_anchored_and_need_no_use() {
        let p = policy(
            &[("secret.reloader.stakater.com/reload", "db, cache-.*,a|b")],
            &[],
        );
        for name in ["db", "cache-1", "a", "b"] {
            assert!(
                p.reacts_to(&ResourceRef::secret(name), false, PLAIN),
                "{name}"
            );
        }
        for name in ["db2", "my-db", "cache", "ab"] {
            assert!(
                !p.reacts_to(&ResourceRef::secret(name), true, PLAIN),
                "{name}"
            );
        }
        assert!(
            !p.reacts_to(&ResourceRef::config_map("db"), true, PLAIN),
            "the secret list names secrets only"
        );
    }

    #[test]
    fn invalid_entries_are_reported_and_the_rest_still_work() {
        let (p, problems) = ReloadPolicy::parse(
            WorkloadKind::Deployment,
            &annotations(&[(
                "configmap.reloader.stakater.com/reload",
                "good,bad-[,(unclosed",
            )]),
            &Annotations::new(),
        );
        assert!(p.reacts_to(&ResourceRef::config_map("good"), false, PLAIN));
        assert_eq!(problems.len(), 2);
        assert_eq!(problems[0].value, "bad-[");
        assert!(
            problems[0]
                .to_string()
                .contains("configmap.reloader.stakater.com/reload")
        );
        assert!(
            problems[0].reason.contains("unclosed character class"),
            "{}",
            problems[0].reason
        );
    }

    #[test]
    fn excluded_names_win_over_auto_and_names() {
        let p = policy(
            &[
                (AUTO, "true"),
                ("secret.reloader.stakater.com/reload", "x-.*"),
                ("secrets.exclude.reloader.stakater.com/reload", "x-1, used"),
                ("configmaps.exclude.reloader.stakater.com/reload", "cm"),
            ],
            &[],
        );
        assert!(!p.reacts_to(&ResourceRef::secret("x-1"), true, PLAIN));
        assert!(!p.reacts_to(&ResourceRef::secret("used"), true, PLAIN));
        assert!(p.reacts_to(&ResourceRef::secret("x-2"), false, PLAIN));
        assert!(!p.reacts_to(&ResourceRef::config_map("cm"), true, PLAIN));
        assert!(
            p.reacts_to(&ResourceRef::config_map("used"), true, PLAIN),
            "the secret exclude list names secrets only"
        );
    }

    #[test]
    fn search_needs_use_and_match_and_auto_wins() {
        let p = policy(&[(SEARCH, "true")], &[]);
        assert!(p.reacts_to(&ResourceRef::secret("s"), true, MATCHED));
        assert!(!p.reacts_to(&ResourceRef::secret("s"), true, PLAIN));
        assert!(!p.reacts_to(&ResourceRef::secret("s"), false, MATCHED));
        let p = policy(&[(SEARCH, "true"), (AUTO, "true")], &[]);
        assert!(p.reacts_to(&ResourceRef::secret("s"), true, PLAIN));
        assert!(
            policy(&[(SEARCH, "True")], &[]).is_inert(),
            "search wants exactly \"true\""
        );
    }

    #[test]
    fn ignore_on_the_resource_wins_over_everything() {
        let p = policy(
            &[(AUTO, "true"), ("secret.reloader.stakater.com/reload", "s")],
            &[],
        );
        assert!(!p.reacts_to(&ResourceRef::secret("s"), true, IGNORED));
        let flags =
            ResourceFlags::from_annotations(&annotations(&[(IGNORE, "true"), (MATCH, "true")]));
        assert_eq!(flags, IGNORED);
        assert_eq!(
            ResourceFlags::from_annotations(&annotations(&[(IGNORE, "yes")])),
            PLAIN
        );
    }

    #[test]
    fn template_annotations_count_only_when_the_workload_has_none_of_the_kind() {
        let p = policy(&[], &[(AUTO, "true")]);
        assert!(p.reacts_to(&ResourceRef::secret("s"), true, PLAIN));
        // The workload's own secret list hides the template's auto for secrets,
        // but not for config maps (the fallback is decided per kind).
        let p = policy(
            &[("secret.reloader.stakater.com/reload", "other")],
            &[(AUTO, "true")],
        );
        assert!(!p.reacts_to(&ResourceRef::secret("s"), true, PLAIN));
        assert!(p.reacts_to(&ResourceRef::config_map("c"), true, PLAIN));
        // An explicit "false" on the workload is still "present".
        assert!(policy(&[(AUTO, "false")], &[(AUTO, "true")]).is_inert());
        // Excludes fall back to the template too.
        let p = policy(
            &[],
            &[
                (AUTO, "true"),
                ("secrets.exclude.reloader.stakater.com/reload", "s"),
            ],
        );
        assert!(!p.reacts_to(&ResourceRef::secret("s"), true, PLAIN));
    }

    #[test]
    fn pause_period_is_per_workload_kind() {
        let key = "statefulset.kvsync.io/pause-period";
        let (p, problems) = ReloadPolicy::parse(
            WorkloadKind::StatefulSet,
            &annotations(&[(key, "5m")]),
            &Annotations::new(),
        );
        assert!(problems.is_empty());
        assert_eq!(p.pause_period, Some(Duration::from_secs(300)));
        let (p, _) = ReloadPolicy::parse(
            WorkloadKind::Deployment,
            &annotations(&[(key, "5m")]),
            &Annotations::new(),
        );
        assert_eq!(
            p.pause_period, None,
            "a StatefulSet key on a Deployment means nothing"
        );
        let (p, _) = ReloadPolicy::parse(
            WorkloadKind::StatefulSet,
            &annotations(&[("statefulset.reloader.stakater.com/pause-period", "5m")]),
            &Annotations::new(),
        );
        assert_eq!(
            p.pause_period, None,
            "Reloader has no StatefulSet pause key; kvsync does not invent one in its namespace"
        );
        let (p, problems) = ReloadPolicy::parse(
            WorkloadKind::Deployment,
            &annotations(&[("deployment.reloader.stakater.com/pause-period", "soon")]),
            &Annotations::new(),
        );
        assert_eq!(p.pause_period, None);
        assert_eq!(problems.len(), 1);
        let (p, problems) = ReloadPolicy::parse(
            WorkloadKind::Deployment,
            &annotations(&[("deployment.reloader.stakater.com/pause-period", "1000000y")]),
            &Annotations::new(),
        );
        assert_eq!(p.pause_period, None, "beyond the maximum: refused");
        assert_eq!(
            problems[0].to_string(),
            "annotation deployment.reloader.stakater.com/pause-period: `1000000y` is longer than the maximum of 30days; ignored"
        );
        let (p, _) = ReloadPolicy::parse(
            WorkloadKind::Deployment,
            &annotations(&[("deployment.reloader.stakater.com/pause-period", "30d")]),
            &Annotations::new(),
        );
        assert_eq!(p.pause_period, Some(MAX_PAUSE_PERIOD));
    }
}
