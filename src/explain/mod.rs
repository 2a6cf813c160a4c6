//! `kvsync explain`: what a KeyVaultSecret resolves to, and why a workload
//! did or did not restart — without printing a single secret value.
//!
//! ```text
//!  kvsync explain kvs/NAME ────────┐            ┌─ report::KeyVaultSecretReport
//!  kvsync explain deployment/NAME ─┼─ fetch ──▶ │   keys ← sources, condition, workloads that restart
//!  (statefulset/, daemonset/,     │  (reads)   └─ report::WorkloadReport
//!   rollout/, cronjob/)            │                reacts to / ignores (rule), last restart,
//!                                  │                pending restart (reload's own decide), window
//!                                  └──────────────▶ text (render) or JSON (-o json)
//! ```
//!
//! [`keyvaultsecret`], [`workload`] and [`pending`] are pure: they take the objects (and
//! the reload stage's own reductions of them — [`crate::reload::observe`]
//! parses the annotations with the same [`crate::reload::annotations`] rules
//! the operator applies) and return a [`report`]. `fetch` does the reads,
//! each with the permission `kubectl get` of that object needs; what cannot
//! be read is reported as a limit, not an error. [`render`] prints text.
//! Secret data is never read into a report: only key names, annotations and
//! the versions `status.syncedVersions` records.

mod fetch;
pub mod keyvaultsecret;
pub mod operator;
pub mod pending;
pub mod render;
pub mod report;
pub mod template;
pub mod workload;

pub use fetch::{ExplainArgs, ExplainError, run};

/// What to explain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    KeyVaultSecret(String),
    Deployment(String),
    StatefulSet(String),
    DaemonSet(String),
    /// An Argo Rollout (where its CRD is served).
    Rollout(String),
    CronJob(String),
}

/// A target that is not `KIND/NAME` with a kind kvsync explains.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}`: expected kvs/NAME, deployment/NAME, statefulset/NAME, daemonset/NAME, rollout/NAME or cronjob/NAME (also keyvaultsecret, deploy, sts, ds, ro, cj)"
)]
pub struct TargetError(String);

impl std::str::FromStr for Target {
    type Err = TargetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || TargetError(text.to_owned());
        let (kind, name) = text.split_once('/').ok_or_else(error)?;
        if name.is_empty() || name.contains('/') {
            return Err(error());
        }
        let name = name.to_owned();
        // The kind as kubectl accepts it: singular, plural or short, any group suffix.
        let kind = kind
            .split('.')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match kind.as_str() {
            "kvs" | "keyvaultsecret" | "keyvaultsecrets" => Ok(Target::KeyVaultSecret(name)),
            "deploy" | "deployment" | "deployments" => Ok(Target::Deployment(name)),
            "sts" | "statefulset" | "statefulsets" => Ok(Target::StatefulSet(name)),
            "ds" | "daemonset" | "daemonsets" => Ok(Target::DaemonSet(name)),
            "ro" | "rollout" | "rollouts" => Ok(Target::Rollout(name)),
            "cj" | "cronjob" | "cronjobs" => Ok(Target::CronJob(name)),
            _ => Err(error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_read_like_kubectl_reads_them() {
        let deployment = |n: &str| Target::Deployment(n.into());
        assert_eq!("kvs/db".parse(), Ok(Target::KeyVaultSecret("db".into())));
        assert_eq!(
            "keyvaultsecrets.kvsync.io/db".parse(),
            Ok(Target::KeyVaultSecret("db".into()))
        );
        assert_eq!("deploy/web".parse(), Ok(deployment("web")));
        assert_eq!("Deployment.apps/web".parse(), Ok(deployment("web")));
        assert_eq!("sts/db".parse(), Ok(Target::StatefulSet("db".into())));
        assert_eq!(
            "rollouts.argoproj.io/web".parse(),
            Ok(Target::Rollout("web".into()))
        );
        assert_eq!("cj/nightly".parse(), Ok(Target::CronJob("nightly".into())));
        for bad in ["web", "pod/web", "deployment/", "kvs/a/b"] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }
}
