//! The two sides of the reload relation: the resources workloads read
//! (Secrets, ConfigMaps) and the workloads that get restarted (Deployments,
//! StatefulSets, DaemonSets, Argo Rollouts; CronJobs get a Job), named
//! without the Kubernetes types so the decision code stays free of API objects.

use std::fmt;

/// A kind of object a pod reads configuration from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    ConfigMap,
    Secret,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 2] = [ResourceKind::ConfigMap, ResourceKind::Secret];

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::ConfigMap => "ConfigMap",
            ResourceKind::Secret => "Secret",
        }
    }
}

/// A Secret or ConfigMap by name, within a namespace known from context.
///
/// Ordered by kind, then name: digests over a set of resources iterate in
/// this order, so they do not depend on the order things were observed in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceRef {
    pub kind: ResourceKind,
    pub name: String,
}

impl ResourceRef {
    pub fn new(kind: ResourceKind, name: impl Into<String>) -> Self {
        ResourceRef {
            kind,
            name: name.into(),
        }
    }

    pub fn secret(name: impl Into<String>) -> Self {
        Self::new(ResourceKind::Secret, name)
    }

    pub fn config_map(name: impl Into<String>) -> Self {
        Self::new(ResourceKind::ConfigMap, name)
    }

    /// Parses the `Kind/name` form produced by `Display`.
    pub fn parse(text: &str) -> Option<Self> {
        let (kind, name) = text.split_once('/')?;
        let kind = ResourceKind::ALL.into_iter().find(|k| k.as_str() == kind)?;
        (!name.is_empty()).then(|| ResourceRef::new(kind, name))
    }
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)
    }
}

/// A kind of workload the reload stage can restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    CronJob,
    DaemonSet,
    Deployment,
    /// Argo Rollouts' `argoproj.io/v1alpha1` Rollout.
    Rollout,
    StatefulSet,
}

impl WorkloadKind {
    /// The `apps/v1` kinds, always served.
    pub const APPS: [WorkloadKind; 3] = [
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::DaemonSet,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::CronJob => "CronJob",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::Rollout => "Rollout",
            WorkloadKind::StatefulSet => "StatefulSet",
        }
    }
}

/// How a workload is restarted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestartMethod {
    /// Change `kvsync.io/restartedAt` in the pod template (a rolling update).
    #[default]
    PodTemplate,
    /// Change `kvsync.io/restartedAt` in the pod template of a StatefulSet
    /// or DaemonSet with `updateStrategy: OnDelete`: the controller replaces
    /// no pod for it; each pod takes the new template (and data) only when
    /// it is deleted. Written all the same, so that the workload's status
    /// (`updatedReplicas`, `updateRevision`) shows which pods are behind,
    /// but never counted or announced as a restart.
    OnDelete,
    /// Set an Argo Rollout's `spec.restartAt` (asked for with
    /// `reloader.stakater.com/rollout-strategy: restart`, and always for a
    /// Rollout whose pods come from a `workloadRef`: it has no template of
    /// its own to patch).
    RestartAt,
    /// Create a Job from a CronJob's `jobTemplate` — never for a suspended one.
    Job { suspended: bool },
}

impl RestartMethod {
    /// Whether a change of the pod template by someone else (a `helm
    /// upgrade`) replaces every pod, so that the pods it starts read the
    /// data of that moment — and cover a data change made before it. Not so
    /// with `OnDelete` (no pod is replaced), a CronJob (a `jobTemplate`
    /// change runs no Job) or `spec.restartAt` (kvsync's restart there
    /// replaces the pods of every ReplicaSet, a template change only rolls a
    /// new one forward, step by step, and can be aborted with the old pods
    /// kept).
    pub fn template_change_replaces_pods(self) -> bool {
        matches!(self, RestartMethod::PodTemplate)
    }
}

/// A workload, by kind and name within a namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_ref_round_trips_through_text() {
        for r in [
            ResourceRef::secret("db-password"),
            ResourceRef::config_map("app.conf"),
        ] {
            assert_eq!(ResourceRef::parse(&r.to_string()), Some(r));
        }
        assert_eq!(ResourceRef::parse("Pod/x"), None);
        assert_eq!(ResourceRef::parse("Secret/"), None);
        assert_eq!(ResourceRef::parse("Secret"), None);
    }

    #[test]
    fn resources_sort_by_kind_then_name() {
        let mut refs = vec![
            ResourceRef::secret("a"),
            ResourceRef::config_map("z"),
            ResourceRef::config_map("b"),
        ];
        refs.sort();
        assert_eq!(
            refs,
            [
                ResourceRef::config_map("b"),
                ResourceRef::config_map("z"),
                ResourceRef::secret("a")
            ]
        );
    }
}
