//! Text output of `kvsync explain`: the report, one fact per line, grouped
//! under headings, for a person at a terminal (`-o json` prints the report
//! itself).

use std::fmt::Write;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::report::{
    IntervalSource, KeyVaultSecretReport, Report, ResourceVerdict, WorkloadReport,
};
use crate::api::contract::reloader;

/// A time as kubectl shows it: RFC 3339, UTC, whole seconds.
pub fn timestamp(at: OffsetDateTime) -> String {
    at.replace_nanosecond(0)
        .unwrap_or(at)
        .to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// A Kubernetes time, like [`timestamp`].
pub fn kube_time(at: &Time) -> String {
    OffsetDateTime::from_unix_timestamp(at.0.as_second())
        .map_or_else(|_| at.0.to_string(), timestamp)
}

/// The report as text.
pub fn text(report: &Report) -> String {
    match report {
        Report::KeyVaultSecret(report) => keyvaultsecret(report),
        Report::Workload(report) => workload(report),
    }
}

fn keyvaultsecret(r: &KeyVaultSecretReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "KeyVaultSecret {}/{}", r.namespace, r.name);
    let _ = writeln!(out, "  vault:   {}", r.vault_url);
    let exists = if r.secret_exists {
        ""
    } else {
        " (does not exist)"
    };
    let _ = writeln!(out, "  secret:  {}{exists}", r.secret);
    let _ = writeln!(out, "\nKeys (values are never shown):");
    if let Some(policy) = &r.merge_policy {
        let _ = writeln!(
            out,
            "  (target.template, mergePolicy {policy}: rendered keys first, then what they read)"
        );
    }
    for key in &r.keys {
        let absent = match (key.in_secret, &r.merge_policy) {
            (true, _) => "",
            (false, Some(policy)) if policy == "Replace" && key.template.is_none() => {
                " (read by the templates, not written: mergePolicy Replace)"
            }
            (false, _) => " (not in the Secret)",
        };
        let _ = writeln!(out, "  {}{absent}", key.key);
        if let Some(template) = &key.template {
            let _ = writeln!(out, "    from:     {}", template.origin);
            if let Some(why) = &template.unknown {
                let _ = writeln!(out, "    reads:    unknown ({why})");
            }
            if template.unknown.is_none() && template.variables.is_empty() {
                let _ = writeln!(out, "    reads:    no fetched value");
            }
            for variable in &template.variables {
                let vault = variable
                    .vault_secret
                    .as_deref()
                    .map_or_else(String::new, |name| format!(": vault secret {name}"));
                let _ = writeln!(
                    out,
                    "    reads:    {} ← {}{vault}",
                    variable.variable, variable.from
                );
            }
        } else {
            let _ = writeln!(
                out,
                "    from:     {} {} ({})",
                key.from, key.vault_secret, key.version
            );
            if let Some(property) = &key.property {
                let _ = writeln!(out, "    property: {property}");
            }
            let _ = writeln!(out, "    decoding: {}", key.decoding);
        }
        if key.synced.is_empty() {
            let _ = writeln!(out, "    synced:   nothing yet");
        }
        for (secret, version) in &key.synced {
            let _ = writeln!(out, "    synced:   {secret} version {version}");
        }
    }
    let _ = writeln!(out, "\nSync:");
    let _ = writeln!(out, "  refreshInterval: {}", r.refresh.interval);
    let _ = writeln!(out, "  next read:       {}", r.refresh.next);
    let changed = r.last_sync_time.as_deref().unwrap_or("never");
    let _ = writeln!(out, "  content changed: {changed}");
    match &r.condition {
        Some(c) => {
            let _ = writeln!(
                out,
                "  Ready:           {} ({}) since {}",
                c.status, c.reason, c.since
            );
            let _ = writeln!(out, "  message:         {}", c.message);
            let _ = writeln!(out, "  what to do:      {}", c.what_to_do);
        }
        None => {
            let _ = writeln!(
                out,
                "  Ready:           not reported yet (is kvsync running for this namespace?)"
            );
        }
    }
    let _ = writeln!(out, "\nRestarts when the Secret changes:");
    if !r.reload_marked {
        let _ = writeln!(
            out,
            "  (the Secret is not marked {}: only auto and named rules apply)",
            reloader::MATCH
        );
    }
    if r.restarts.is_empty() {
        let _ = writeln!(out, "  no workload");
    }
    for reaction in &r.restarts {
        let _ = writeln!(out, "  {}: {}", reaction.workload, reaction.rule);
    }
    if let Some(rollout) = &r.rollout {
        rollout_lines(&mut out, rollout);
    }
    limits(&mut out, &r.limits);
    out
}

/// Who runs the Secret's current data (safe to revoke once all do).
fn rollout_lines(out: &mut String, rollout: &crate::api::RolloutStatus) {
    let _ = writeln!(out, "\nRollout of the current data:");
    let _ = writeln!(
        out,
        "  {} of {} workload(s) run it with their rollout complete{}",
        rollout.current,
        rollout.workloads,
        if rollout.current >= rollout.workloads {
            ": safe to revoke the previous credential"
        } else {
            ""
        }
    );
    if let Some(halted) = &rollout.halted {
        let _ = writeln!(
            out,
            "  halted: the rollout of {} failed (change {}); later waves keep their old pods",
            halted.workload, halted.change
        );
    }
    for behind in &rollout.behind {
        let _ = writeln!(out, "  behind: {}: {}", behind.workload, behind.reason);
    }
}

fn verdicts(out: &mut String, title: &str, verdicts: &[ResourceVerdict]) {
    let _ = writeln!(out, "\n{title}:");
    if verdicts.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for v in verdicts {
        let mut facts = Vec::new();
        if !v.present {
            facts.push("does not exist".to_owned());
        }
        if !v.used {
            facts.push("not used by the pods".to_owned());
        }
        if let Some(kvs) = &v.written_by {
            facts.push(format!("written by kvs/{kvs}"));
        }
        let facts = if facts.is_empty() {
            String::new()
        } else {
            format!(" [{}]", facts.join("; "))
        };
        let _ = writeln!(out, "  {}: {}{facts}", v.resource, v.why);
    }
}

fn workload(r: &WorkloadReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} {}/{}", r.kind, r.namespace, r.name);
    if !r.opted_in {
        let _ = writeln!(out, "  no reload annotation: kvsync never restarts it");
    }
    for rule in &r.rules {
        let _ = writeln!(out, "  rule: {rule}");
    }
    for problem in &r.problems {
        let _ = writeln!(out, "  problem: {problem}");
    }
    verdicts(&mut out, "Restarts when these change", &r.reacts_to);
    verdicts(
        &mut out,
        "Uses or names, but does not restart for",
        &r.ignores,
    );
    let _ = writeln!(out, "\nRestarts:");
    let baselined = if r.baselined {
        "yes (kvsync knows what the pods run with)"
    } else {
        "not yet (the first look records, never restarts)"
    };
    let _ = writeln!(out, "  baselined:    {baselined}");
    match &r.last_restart {
        Some(last) => {
            let _ = writeln!(out, "  last restart: {}", last.at);
            if let Some(cause) = &last.cause {
                let _ = writeln!(out, "  cause:        {cause}");
            }
            if let Some(job) = &last.job {
                let _ = writeln!(out, "  job:          {job}");
            }
        }
        None => {
            let _ = writeln!(out, "  last restart: never by kvsync");
        }
    }
    let _ = writeln!(out, "  pending:      {}", r.pending.summary);
    let from = match &r.restart_window.min_interval_from {
        IntervalSource::Flag => String::new(),
        IntervalSource::Operator(object) => format!(" (the operator's, from {object})"),
        IntervalSource::Assumed => {
            " (assumed: the operator's default; pass --min-reload-interval if it runs with another)"
                .to_owned()
        }
    };
    let _ = writeln!(
        out,
        "  min interval: {}{from}",
        r.restart_window.min_interval
    );
    let _ = writeln!(out, "  next:         {}", r.restart_window.summary);
    limits(&mut out, &r.limits);
    out
}

fn limits(out: &mut String, limits: &[String]) {
    if !limits.is_empty() {
        let _ = writeln!(out, "\nNot shown (no permission):");
        for limit in limits {
            let _ = writeln!(out, "  {limit}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BehindWorkload, HaltedRollout, RolloutStatus};

    #[test]
    fn the_rollout_lists_who_is_behind_and_a_halt() {
        let mut out = String::new();
        rollout_lines(
            &mut out,
            &RolloutStatus {
                workloads: 3,
                current: 1,
                behind: vec![BehindWorkload {
                    workload: "Deployment/web".into(),
                    reason: "waiting for an earlier wave (canary)".into(),
                }],
                halted: Some(HaltedRollout {
                    workload: "Deployment/canary".into(),
                    change: "0123456789ab".into(),
                }),
            },
        );
        assert_eq!(
            out,
            "\nRollout of the current data:\n  1 of 3 workload(s) run it with their rollout complete\n  halted: the rollout of Deployment/canary failed (change 0123456789ab); later waves keep their old pods\n  behind: Deployment/web: waiting for an earlier wave (canary)\n"
        );
        let mut done = String::new();
        rollout_lines(
            &mut done,
            &RolloutStatus {
                workloads: 2,
                current: 2,
                ..RolloutStatus::default()
            },
        );
        assert!(
            done.contains("2 of 2 workload(s) run it with their rollout complete: safe to revoke")
        );
    }
}
