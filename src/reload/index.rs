//! The reload stage's whole memory of the cluster.
//!
//! ```text
//! Index
//! └─ namespace ─┬─ resources: (kind, name) → ResourceState { digest, match/ignore flags, version,
//!               │                                             version of the last data change }
//!               ├─ workloads: (kind, name) → WorkloadState { policy (parsed annotations),
//!               │                                            uses (from the pod spec),
//!               │                                            applied record, last restart,
//!               │                                            pause marks, template hash,
//!               │                                            version of the last template change, … }
//!               └─ reach: users: resource → {workloads whose pod spec uses it}
//!                         by_pattern: {workloads naming resources in `…/reload` lists}
//! ```
//!
//! The "version of the last change" fields are resourceVersions — etcd
//! revisions, one order across all kinds, whatever order the separate watch
//! streams deliver events in. They are known only for changes seen while
//! running (`None` after a first sight), and tell whether a workload's pod
//! template changed after a resource's data did ([`Index::covered_by_template`]).
//!
//! Watchers reduce every object to one of these entries as it arrives and drop
//! it: no Secret value, no pod spec, no full object outlives its watch event.
//! With thousands of Secrets that is tens of bytes each instead of kilobytes.
//! A resource change asks only the workloads that can react to it — those
//! using it, and those with name patterns — for their policy: with 10,000
//! workloads and 60,000 Secrets in a namespace, asking every workload on
//! every Secret event was most of the operator's CPU at start-up. The reach
//! is rebuilt from each workload observation as it is applied.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Instant;

use time::OffsetDateTime;

use super::annotations::{PolicyProblem, ReloadPolicy, ResourceFlags};
use super::digest::Digest;
use super::kinds::{ResourceKind, ResourceRef, RestartMethod, WorkloadKind, WorkloadRef};
use super::record::Applied;
use super::rollout::Progress;
use super::uses::{KeyUses, Uses};

/// What is kept of one Secret or ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceState {
    pub digest: Digest,
    /// Each key's digest, sorted by key (see [`Digest::of_keys`]).
    pub entries: Box<[(String, Digest)]>,
    pub flags: ResourceFlags,
    /// `metadata.resourceVersion` when numeric, to drop observations older
    /// than one already applied (a fast-path read racing a watch event).
    pub version: Option<u64>,
    /// The `version` at which the data last changed while kvsync watched;
    /// kept by the index (observations leave it `None`).
    pub data_version: Option<u64>,
    /// [`crate::api::contract::RESUME_ROLLOUT_ANNOTATION`]: the change id a
    /// person resumed after a halted wave.
    pub resume: Option<String>,
    /// The KeyVaultSecret that writes it (a Secret kvsync created or merged
    /// into): its rollout is summarized for that object's status.
    pub writer: Option<String>,
}

impl ResourceState {
    /// The id of the data's present state, as a halt names it and
    /// [`crate::api::contract::RESUME_ROLLOUT_ANNOTATION`] takes it.
    pub fn change_id(&self) -> String {
        self.digest.to_string()[..12].to_owned()
    }

    /// The digest a workload reading `keys` of it records (`None`: all).
    pub fn digest_for(&self, keys: Option<&[String]>) -> Digest {
        match keys {
            None => self.digest,
            Some(keys) => Digest::of_keys(&self.entries, keys),
        }
    }

    /// Whether a person resumed the present change.
    pub fn resumed(&self) -> bool {
        self.resume.as_deref() == Some(self.change_id().as_str())
    }
}

/// What is kept of one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadState {
    pub uid: String,
    /// For the optimistic-concurrency precondition of the restart patch.
    pub resource_version: String,
    pub policy: ReloadPolicy,
    /// Annotation values the policy had to skip.
    pub problems: Vec<PolicyProblem>,
    pub uses: Uses,
    /// The resources it reads only some keys of (see [`super::uses::key_uses`]);
    /// empty with `kvsync.io/reload-keys: any`.
    pub keys: KeyUses,
    pub applied: Applied,
    /// When to time the next restart from (see
    /// [`super::decide::effective_last_restart`]).
    pub last_restart: Option<OffsetDateTime>,
    /// The last restart as stamped on the object.
    pub restart_stamp: Option<OffsetDateTime>,
    pub restart: RestartMethod,
    /// `kvsync.io/paused-at`: a pause period kvsync started.
    pub paused_at: Option<OffsetDateTime>,
    /// `kvsync.io/restart-pending` as written (only compared, to write it once).
    pub pending_mark: Option<String>,
    /// A CronJob's `kvsync.io/job-pending`: the Job its last change owes
    /// (see [`super::job`]).
    pub job_pending: Option<String>,
    /// A Deployment Reloader paused (`spec.paused` and
    /// `deployment.reloader.stakater.com/paused-at`), since when; an
    /// unreadable time counts as long ago (resumed at once, as Reloader does).
    pub reloader_paused_since: Option<OffsetDateTime>,
    /// Hash of the pod template, kvsync's own restart annotation left out.
    pub template: u64,
    /// The resourceVersion at which `template` was first seen while kvsync
    /// watched (every pod of that template started after it); `None` for
    /// the template of a first sight. Kept by the index (observations leave
    /// it `None`).
    pub template_version: Option<u64>,
    /// The templates the workload had before, with their first-seen
    /// versions; kept by the index.
    pub earlier_templates: EarlierTemplates,
    /// Being deleted: never restarted.
    pub deleting: bool,
    /// [`crate::api::contract::ROLLOUT_WAVE_ANNOTATION`].
    pub wave: Option<u32>,
    /// How far its rollout has come (see [`super::rollout`]).
    pub progress: Progress,
    /// Since when this process has seen it `Progressing`, for
    /// `--progress-deadline`; kept by the index (observations leave it `None`).
    pub progressing_since: Option<Instant>,
}

impl WorkloadState {
    /// Whether `other` could lead to another decision (the version and uid aside).
    fn decides_like(&self, other: &WorkloadState) -> bool {
        self.policy == other.policy
            && self.uses == other.uses
            && self.keys == other.keys
            && self.applied == other.applied
            && self.last_restart == other.last_restart
            && self.restart == other.restart
            && self.paused_at == other.paused_at
            && self.job_pending == other.job_pending
            && self.reloader_paused_since == other.reloader_paused_since
            && self.template_version == other.template_version
            && self.deleting == other.deleting
            && self.wave == other.wave
    }

    fn numeric_version(&self) -> Option<u64> {
        self.resource_version.parse().ok()
    }

    fn reacts_to(&self, resource: &ResourceRef, flags: ResourceFlags) -> bool {
        self.policy
            .reacts_to(resource, self.uses.contains_key(resource), flags)
    }
}

/// How many earlier pod templates a workload's entry remembers: a
/// Deployment keeps the ReplicaSets of its last 10 (`revisionHistoryLimit`'s
/// default), so `kubectl rollout undo` cannot go back further than that.
const EARLIER_TEMPLATES: usize = 10;

/// A workload's earlier pod templates, most recent last: (hash, first seen).
/// A template that comes back (`kubectl rollout undo`, a reverted edit)
/// keeps its first-seen version — its ReplicaSet's pods may be older than
/// any data change since.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EarlierTemplates(Vec<(u64, Option<u64>)>);

impl EarlierTemplates {
    /// The version at which `template` was first seen, if it is remembered.
    fn first_seen(&self, template: u64) -> Option<Option<u64>> {
        self.0
            .iter()
            .find(|(hash, _)| *hash == template)
            .map(|(_, seen)| *seen)
    }

    /// Remembers `template` (first seen at `seen`) as left behind.
    fn left(&mut self, template: u64, seen: Option<u64>) {
        self.0.retain(|(hash, _)| *hash != template);
        self.0.push((template, seen));
        if self.0.len() > EARLIER_TEMPLATES {
            self.0.remove(0);
        }
    }
}

/// A resource as a watcher or the fast path saw it.
#[derive(Clone, Debug)]
pub struct ResourceObservation {
    pub namespace: String,
    pub resource: ResourceRef,
    pub state: ResourceState,
}

/// A workload as a watcher (or a patch response) showed it.
#[derive(Clone, Debug)]
pub struct WorkloadObservation {
    pub workload: WorkloadRef,
    pub state: WorkloadState,
}

/// The outcome of recording a resource observation.
#[derive(Debug, PartialEq, Eq)]
pub enum ResourceChange {
    /// Not newer than what the index holds (an older event, or the same
    /// version seen twice — the sync stage's report and the watch event):
    /// dropped, so nothing is counted twice.
    Stale,
    /// Same data and flags (a metadata-only update or a no-op write); this
    /// many workloads react to the resource and were left alone.
    Unchanged {
        reacting: usize,
        /// [`ResourceState::resume`] changed.
        resume_changed: bool,
    },
    /// Data or flags changed: these workloads need a look.
    Changed { affected: Vec<WorkloadRef> },
}

/// The outcome of recording a workload observation.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WorkloadChange {
    /// Something that feeds the decision changed (or the workload is new).
    pub needs_evaluation: bool,
    /// Its rollout's [`Progress`] changed (the workloads of later waves
    /// waiting for it need a look).
    pub progress_changed: bool,
    /// Problems with its annotations not reported before.
    pub new_problems: Vec<PolicyProblem>,
}

type WorkloadKey = (WorkloadKind, String);

#[derive(Debug, Default)]
struct NamespaceIndex {
    resources: BTreeMap<ResourceRef, ResourceState>,
    workloads: BTreeMap<WorkloadKey, WorkloadState>,
    /// The workloads whose pod spec uses each resource.
    users: HashMap<ResourceRef, BTreeSet<WorkloadKey>>,
    /// The workloads whose `…/reload` lists name resources (used or not).
    by_pattern: BTreeSet<WorkloadKey>,
}

impl NamespaceIndex {
    /// The workloads reacting to `resource` with any of `flags`: of those
    /// that can (they use it or name resources), the ones whose policy says so.
    fn reacting<'a>(
        &'a self,
        namespace: &'a str,
        resource: &'a ResourceRef,
        flags: &'a [ResourceFlags],
    ) -> impl Iterator<Item = WorkloadRef> + 'a {
        let candidates: BTreeSet<&WorkloadKey> = self
            .users
            .get(resource)
            .into_iter()
            .flatten()
            .chain(&self.by_pattern)
            .collect();
        candidates
            .into_iter()
            .filter(move |key| {
                self.workloads
                    .get(*key)
                    .is_some_and(|w| flags.iter().any(|f| w.reacts_to(resource, *f)))
            })
            .map(move |(kind, name)| WorkloadRef {
                kind: *kind,
                namespace: namespace.to_owned(),
                name: name.clone(),
            })
    }

    fn insert_workload(&mut self, key: WorkloadKey, state: WorkloadState) {
        self.remove_workload(&key);
        for resource in state.uses.keys() {
            self.users
                .entry(resource.clone())
                .or_default()
                .insert(key.clone());
        }
        if state.policy.names_resources() {
            self.by_pattern.insert(key.clone());
        }
        self.workloads.insert(key, state);
    }

    fn remove_workload(&mut self, key: &WorkloadKey) {
        let Some(old) = self.workloads.remove(key) else {
            return;
        };
        for resource in old.uses.keys() {
            if let Some(users) = self.users.get_mut(resource) {
                users.remove(key);
                if users.is_empty() {
                    self.users.remove(resource);
                }
            }
        }
        self.by_pattern.remove(key);
    }
}

#[derive(Debug)]
pub struct Index {
    namespaces: HashMap<String, NamespaceIndex>,
    /// Namespaces whose labels pass `--namespace-selector`; `None` without one.
    selected: Option<HashSet<String>>,
}

impl Index {
    /// `namespace_selector`: whether `--namespace-selector` is set (then no
    /// namespace counts until its labels were seen to match).
    pub fn new(namespace_selector: bool) -> Self {
        Index {
            namespaces: HashMap::new(),
            selected: namespace_selector.then(HashSet::new),
        }
    }

    pub fn apply_resource(&mut self, observation: ResourceObservation) -> ResourceChange {
        let ResourceObservation {
            namespace,
            resource,
            state,
        } = observation;
        let ns = self.namespaces.entry(namespace.clone()).or_default();
        let old = ns.resources.get(&resource);
        if let (Some(old), Some(new_version)) = (old.and_then(|o| o.version), state.version)
            && new_version <= old
        {
            return ResourceChange::Stale;
        }
        let old_flags = old.map_or(ResourceFlags::default(), |o| o.flags);
        let changed = old.is_none_or(|o| o.digest != state.digest || o.flags != state.flags);
        let mut state = state;
        state.data_version = match old {
            Some(o) if o.digest == state.digest => o.data_version,
            Some(_) => state.version,
            None => None,
        };
        let flags = [old_flags, state.flags];
        let change = if changed {
            ResourceChange::Changed {
                affected: ns.reacting(&namespace, &resource, &flags).collect(),
            }
        } else {
            ResourceChange::Unchanged {
                reacting: ns.reacting(&namespace, &resource, &flags[1..]).count(),
                resume_changed: old.is_some_and(|o| o.resume != state.resume),
            }
        };
        ns.resources.insert(resource, state);
        change
    }

    /// Forgets a deleted resource; returns the workloads that reacted to it.
    pub fn remove_resource(&mut self, namespace: &str, resource: &ResourceRef) -> Vec<WorkloadRef> {
        let Some(ns) = self.namespaces.get_mut(namespace) else {
            return Vec::new();
        };
        let Some(old) = ns.resources.remove(resource) else {
            return Vec::new();
        };
        let affected = ns.reacting(namespace, resource, &[old.flags]).collect();
        self.drop_namespace_if_empty(namespace);
        affected
    }

    pub fn apply_workload(&mut self, observation: WorkloadObservation) -> WorkloadChange {
        let WorkloadObservation {
            workload,
            mut state,
        } = observation;
        let ns = self.namespaces.entry(workload.namespace).or_default();
        let key = (workload.kind, workload.name);
        let old = ns.workloads.get(&key);
        if let (Some(old), Some(new)) = (
            old.and_then(WorkloadState::numeric_version),
            state.numeric_version(),
        ) && new < old
        {
            // An event from before our own patch, which the index already holds.
            return WorkloadChange::default();
        }
        (state.template_version, state.earlier_templates) = match old {
            Some(old) if old.template == state.template => {
                (old.template_version, old.earlier_templates.clone())
            }
            Some(old) => {
                let mut earlier = old.earlier_templates.clone();
                let seen = earlier
                    .first_seen(state.template)
                    .unwrap_or(state.numeric_version());
                earlier.left(old.template, old.template_version);
                (seen, earlier)
            }
            None => (None, EarlierTemplates::default()),
        };
        state.progressing_since = (state.progress == Progress::Progressing).then(|| {
            old.and_then(|old| old.progressing_since)
                .unwrap_or_else(Instant::now)
        });
        let change = WorkloadChange {
            needs_evaluation: old.is_none_or(|old| !old.decides_like(&state)),
            progress_changed: old.is_some_and(|old| old.progress != state.progress),
            new_problems: match old {
                Some(old) if old.problems == state.problems => Vec::new(),
                _ => state.problems.clone(),
            },
        };
        ns.insert_workload(key, state);
        change
    }

    pub fn remove_workload(&mut self, workload: &WorkloadRef) {
        if let Some(ns) = self.namespaces.get_mut(&workload.namespace) {
            ns.remove_workload(&(workload.kind, workload.name.clone()));
            self.drop_namespace_if_empty(&workload.namespace);
        }
    }

    pub fn workload(&self, workload: &WorkloadRef) -> Option<&WorkloadState> {
        self.namespaces
            .get(&workload.namespace)?
            .workloads
            .get(&(workload.kind, workload.name.clone()))
    }

    /// The resources whose latest data change came before the workload's
    /// current pod template was first seen: every pod of that template
    /// started after it, with that data already (Reloader #675), so the data
    /// change needs no restart of its own. Only where a template change
    /// replaces the pods ([`RestartMethod::template_change_replaces_pods`]);
    /// and a template the workload had before (`kubectl rollout undo`)
    /// counts from when it was first seen, so it covers nothing its old
    /// pods missed.
    pub fn covered_by_template(&self, workload: &WorkloadRef) -> BTreeSet<ResourceRef> {
        let Some(template) = self
            .workload(workload)
            .filter(|w| w.restart.template_change_replaces_pods())
            .and_then(|w| w.template_version)
        else {
            return BTreeSet::new();
        };
        self.resources(&workload.namespace)
            .iter()
            .filter(|(_, r)| r.data_version.is_some_and(|data| data < template))
            .map(|(resource, _)| resource.clone())
            .collect()
    }

    /// The Secrets and ConfigMaps of a namespace (empty if none are known).
    /// The workloads reacting to `resource` as it is now, with their states.
    pub fn reacting_to(
        &self,
        namespace: &str,
        resource: &ResourceRef,
    ) -> Vec<(WorkloadRef, &WorkloadState)> {
        let Some(ns) = self.namespaces.get(namespace) else {
            return Vec::new();
        };
        let flags = [ns
            .resources
            .get(resource)
            .map_or(ResourceFlags::default(), |r| r.flags)];
        ns.reacting(namespace, resource, &flags)
            .filter_map(|w| {
                let state = ns.workloads.get(&(w.kind, w.name.clone()))?;
                Some((w, state))
            })
            .collect()
    }

    pub fn resources(&self, namespace: &str) -> &BTreeMap<ResourceRef, ResourceState> {
        static NONE: BTreeMap<ResourceRef, ResourceState> = BTreeMap::new();
        self.namespaces
            .get(namespace)
            .map_or(&NONE, |ns| &ns.resources)
    }

    /// Every known workload.
    pub fn workloads(&self) -> Vec<WorkloadRef> {
        self.namespaces
            .iter()
            .flat_map(|(namespace, ns)| {
                ns.workloads.keys().map(|(kind, name)| WorkloadRef {
                    kind: *kind,
                    namespace: namespace.clone(),
                    name: name.clone(),
                })
            })
            .collect()
    }

    /// Whether workloads in `namespace` may be acted on (`--namespace-selector`).
    pub fn is_selected(&self, namespace: &str) -> bool {
        self.selected.as_ref().is_none_or(|s| s.contains(namespace))
    }

    /// Records whether a namespace's labels pass the selector; returns its
    /// workloads when it just came into scope (they may have missed changes).
    pub fn set_selected(&mut self, namespace: &str, selected: bool) -> Vec<WorkloadRef> {
        let Some(set) = &mut self.selected else {
            return Vec::new();
        };
        let newly_selected = if selected {
            set.insert(namespace.to_owned())
        } else {
            set.remove(namespace);
            false
        };
        if !newly_selected {
            return Vec::new();
        }
        self.workloads()
            .into_iter()
            .filter(|w| w.namespace == namespace)
            .collect()
    }

    /// After a re-list: forgets the resources of `kind` (in `namespace`, or
    /// everywhere) that the list did not contain, i.e. were deleted while the
    /// watch was down. Returns the workloads that reacted to them.
    pub fn retain_resources(
        &mut self,
        kind: ResourceKind,
        namespace: Option<&str>,
        listed: &HashSet<(String, String)>,
    ) -> Vec<WorkloadRef> {
        let gone: Vec<(String, ResourceRef)> = self
            .namespaces
            .iter()
            .filter(|(ns, _)| namespace.is_none_or(|only| only == ns.as_str()))
            .flat_map(|(ns, index)| {
                index
                    .resources
                    .keys()
                    .filter(|r| r.kind == kind && !listed.contains(&(ns.clone(), r.name.clone())))
                    .map(|r| (ns.clone(), r.clone()))
            })
            .collect();
        gone.iter()
            .flat_map(|(ns, resource)| self.remove_resource(ns, resource))
            .collect()
    }

    /// After a re-list: forgets the workloads of `kind` the list did not contain.
    pub fn retain_workloads(
        &mut self,
        kind: WorkloadKind,
        namespace: Option<&str>,
        listed: &HashSet<(String, String)>,
    ) {
        let gone: Vec<WorkloadRef> = self
            .workloads()
            .into_iter()
            .filter(|w| w.kind == kind && namespace.is_none_or(|only| only == w.namespace))
            .filter(|w| !listed.contains(&(w.namespace.clone(), w.name.clone())))
            .collect();
        for workload in &gone {
            self.remove_workload(workload);
        }
    }

    /// After a re-list of namespaces: only the listed ones stay selected.
    pub fn retain_selected(&mut self, listed: &HashSet<String>) {
        if let Some(set) = &mut self.selected {
            set.retain(|ns| listed.contains(ns));
        }
    }

    fn drop_namespace_if_empty(&mut self, namespace: &str) {
        if self
            .namespaces
            .get(namespace)
            .is_some_and(|ns| ns.resources.is_empty() && ns.workloads.is_empty())
        {
            self.namespaces.remove(namespace);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reload::annotations::Annotations;
    use crate::reload::digest::{DigestKey, Object};

    fn key() -> DigestKey {
        DigestKey::from_bytes(&[1; 32]).unwrap()
    }

    fn secret(ns: &str, name: &str, value: &str, version: u64) -> ResourceObservation {
        let data = [(
            "k".to_string(),
            k8s_openapi::ByteString(value.as_bytes().to_vec()),
        )]
        .into();
        ResourceObservation {
            namespace: ns.into(),
            resource: ResourceRef::secret(name),
            state: ResourceState {
                entries: Box::default(),
                digest: key().secret(
                    Object {
                        namespace: ns,
                        name,
                    },
                    Some(&data),
                ),
                flags: ResourceFlags::default(),
                version: Some(version),
                data_version: None,
                resume: None,
                writer: None,
            },
        }
    }

    fn workload(
        ns: &str,
        name: &str,
        annotations: &[(&str, &str)],
        uses: &[&str],
    ) -> WorkloadObservation {
        let annotations: Annotations = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (policy, problems) =
            ReloadPolicy::parse(WorkloadKind::Deployment, &annotations, &Annotations::new());
        WorkloadObservation {
            workload: WorkloadRef {
                kind: WorkloadKind::Deployment,
                namespace: ns.into(),
                name: name.into(),
            },
            state: WorkloadState {
                uid: "uid".into(),
                resource_version: "1".into(),
                policy,
                problems,
                uses: uses
                    .iter()
                    .map(|n| (ResourceRef::secret(*n), crate::reload::uses::Need::Required))
                    .collect(),
                keys: KeyUses::new(),
                applied: Applied::Never,
                last_restart: None,
                restart_stamp: None,
                restart: RestartMethod::PodTemplate,
                paused_at: None,
                pending_mark: None,
                job_pending: None,
                reloader_paused_since: None,
                template: 0,
                template_version: None,
                earlier_templates: EarlierTemplates::default(),
                deleting: false,
                wave: None,
                progress: Progress::NotTracked,
                progressing_since: None,
            },
        }
    }

    const AUTO: (&str, &str) = ("reloader.stakater.com/auto", "true");

    #[test]
    fn template_changes_cover_data_changes_made_before_them_only() {
        let mut index = Index::new(false);
        let web = workload("ns", "web", &[AUTO], &["early", "late"]);
        index.apply_workload(web.clone());
        for name in ["early", "late"] {
            index.apply_resource(secret("ns", name, "1", 1));
        }
        let at = |mut w: WorkloadObservation, version: u64, template: u64| {
            w.state.resource_version = version.to_string();
            w.state.template = template;
            w
        };
        assert!(
            index.covered_by_template(&web.workload).is_empty(),
            "first sights order nothing"
        );
        index.apply_resource(secret("ns", "early", "2", 10));
        index.apply_workload(at(web.clone(), 11, 0));
        assert!(
            index.covered_by_template(&web.workload).is_empty(),
            "a workload update that keeps the template covers nothing"
        );
        index.apply_workload(at(web.clone(), 12, 7));
        index.apply_resource(secret("ns", "late", "2", 13));
        index.apply_resource(secret("ns", "early", "2", 14));
        assert_eq!(
            index.covered_by_template(&web.workload),
            [ResourceRef::secret("early")].into(),
            "the data of `late` changed after the template; a metadata update of `early` does not count"
        );
    }

    #[test]
    fn a_template_that_comes_back_covers_only_what_changed_before_it_was_first_seen() {
        let mut index = Index::new(false);
        let web = workload("ns", "web", &[AUTO], &["db"]);
        index.apply_workload(web.clone());
        index.apply_resource(secret("ns", "db", "1", 1));
        let at = |version: u64, template: u64| {
            let mut w = web.clone();
            w.state.resource_version = version.to_string();
            w.state.template = template;
            w
        };
        index.apply_resource(secret("ns", "db", "2", 10));
        index.apply_workload(at(11, 7));
        let db: BTreeSet<_> = [ResourceRef::secret("db")].into();
        assert_eq!(
            index.covered_by_template(&web.workload),
            db,
            "a new template"
        );
        index.apply_workload(at(12, 0));
        assert!(
            index.covered_by_template(&web.workload).is_empty(),
            "rolled back to the first template: its old pods have the old data"
        );
        index.apply_workload(at(13, 7));
        assert_eq!(
            index.covered_by_template(&web.workload),
            db,
            "forward again to a template first seen after the data change"
        );
        index.apply_resource(secret("ns", "db", "3", 14));
        index.apply_workload(at(15, 0));
        index.apply_workload(at(16, 7));
        assert!(
            index.covered_by_template(&web.workload).is_empty(),
            "a template first seen before the latest data change covers nothing"
        );
    }

    #[test]
    fn only_a_template_change_that_replaces_the_pods_covers() {
        for method in [
            RestartMethod::OnDelete,
            RestartMethod::RestartAt,
            RestartMethod::Job { suspended: false },
        ] {
            let mut index = Index::new(false);
            let mut web = workload("ns", "web", &[AUTO], &["db"]);
            web.state.restart = method;
            index.apply_workload(web.clone());
            index.apply_resource(secret("ns", "db", "1", 1));
            index.apply_resource(secret("ns", "db", "2", 10));
            web.state.resource_version = "11".into();
            web.state.template = 7;
            index.apply_workload(web.clone());
            assert!(
                index.covered_by_template(&web.workload).is_empty(),
                "{method:?}"
            );
        }
    }

    #[test]
    fn a_resource_reaches_its_users_and_the_workloads_naming_it_as_they_are_now() {
        let mut index = Index::new(false);
        let web = workload("ns", "web", &[AUTO], &["db"]);
        let named = workload(
            "ns",
            "named",
            &[("secret.reloader.stakater.com/reload", "db")],
            &[],
        );
        index.apply_workload(web.clone());
        index.apply_workload(named.clone());
        let affected = |index: &mut Index, version: u64| match index.apply_resource(secret(
            "ns",
            "db",
            &version.to_string(),
            version,
        )) {
            ResourceChange::Changed { affected } => affected,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            affected(&mut index, 1),
            [named.workload.clone(), web.workload.clone()],
            "a user, and a workload naming it without using it"
        );
        index.apply_workload(workload("ns", "web", &[AUTO], &["cache"]));
        assert_eq!(
            affected(&mut index, 2),
            std::slice::from_ref(&named.workload),
            "a workload that stopped using it no longer hears of it"
        );
        index.remove_workload(&named.workload);
        assert_eq!(affected(&mut index, 3), [] as [WorkloadRef; 0]);
        index.apply_workload(web.clone());
        assert_eq!(
            affected(&mut index, 4),
            std::slice::from_ref(&web.workload),
            "using it again"
        );
    }

    #[test]
    fn a_data_change_affects_the_workloads_reacting_to_it() {
        let mut index = Index::new(false);
        let web = workload("ns", "web", &[AUTO], &["db"]);
        let other = workload("ns", "other", &[AUTO], &["cache"]);
        let elsewhere = workload("ns2", "web", &[AUTO], &["db"]);
        for w in [&web, &other, &elsewhere] {
            assert!(index.apply_workload(w.clone()).needs_evaluation);
        }
        let ResourceChange::Changed { affected } =
            index.apply_resource(secret("ns", "db", "v1", 1))
        else {
            panic!()
        };
        assert_eq!(affected, std::slice::from_ref(&web.workload));
        assert_eq!(
            index.apply_resource(secret("ns", "db", "v1", 2)),
            ResourceChange::Unchanged {
                reacting: 1,
                resume_changed: false
            }
        );
        assert_eq!(
            index.apply_resource(secret("ns", "db", "v1", 2)),
            ResourceChange::Stale,
            "the same version seen again (fast path and watch) counts once"
        );
        assert_eq!(
            index.apply_resource(secret("ns", "db", "v0", 1)),
            ResourceChange::Stale
        );
        let ResourceChange::Changed { affected } =
            index.apply_resource(secret("ns", "db", "v2", 3))
        else {
            panic!()
        };
        assert_eq!(affected, std::slice::from_ref(&web.workload));
        assert_eq!(
            index.remove_resource("ns", &ResourceRef::secret("db")),
            [web.workload]
        );
    }

    #[test]
    fn flag_changes_affect_workloads_that_reacted_before_or_after() {
        let mut index = Index::new(false);
        let web = workload(
            "ns",
            "web",
            &[("reloader.stakater.com/search", "true")],
            &["db"],
        );
        index.apply_workload(web.clone());
        assert_eq!(
            index.apply_resource(secret("ns", "db", "v", 1)),
            ResourceChange::Changed { affected: vec![] }
        );
        let mut matched = secret("ns", "db", "v", 2);
        matched.state.flags.matched = true;
        assert_eq!(
            index.apply_resource(matched),
            ResourceChange::Changed {
                affected: vec![web.workload.clone()]
            }
        );
        assert_eq!(
            index.apply_resource(secret("ns", "db", "v", 3)),
            ResourceChange::Changed {
                affected: vec![web.workload]
            }
        );
    }

    #[test]
    fn workload_updates_that_decide_nothing_new_are_quiet() {
        let mut index = Index::new(false);
        let web = workload(
            "ns",
            "web",
            &[("secret.reloader.stakater.com/reload", "ok,bad[")],
            &[],
        );
        let first = index.apply_workload(web.clone());
        assert!(first.needs_evaluation);
        assert_eq!(first.new_problems.len(), 1);
        let mut status_update = web.clone();
        status_update.state.resource_version = "2".into();
        assert_eq!(
            index.apply_workload(status_update),
            WorkloadChange::default(),
            "problems are reported once"
        );
        let mut restarted = web.clone();
        restarted.state.resource_version = "3".into();
        restarted.state.last_restart = Some(OffsetDateTime::UNIX_EPOCH);
        assert!(index.apply_workload(restarted).needs_evaluation);
        assert_eq!(
            index.workload(&web.workload).unwrap().last_restart,
            Some(OffsetDateTime::UNIX_EPOCH)
        );
        let mut patched = web.clone();
        patched.state.resource_version = "9".into();
        index.apply_workload(patched);
        assert_eq!(
            index.apply_workload(web.clone()),
            WorkloadChange::default(),
            "older than the patch response"
        );
        assert_eq!(index.workload(&web.workload).unwrap().resource_version, "9");
    }

    #[test]
    fn relists_forget_what_was_deleted_meanwhile() {
        let mut index = Index::new(false);
        let web = workload("a", "web", &[AUTO], &["gone"]);
        index.apply_workload(web.clone());
        index.apply_workload(workload("b", "api", &[AUTO], &[]));
        index.apply_resource(secret("a", "gone", "v", 1));
        index.apply_resource(secret("a", "kept", "v", 1));
        index.apply_resource(secret("b", "gone", "v", 1));
        let listed = [("a".to_string(), "kept".to_string())].into();
        assert_eq!(
            index.retain_resources(ResourceKind::Secret, Some("a"), &listed),
            std::slice::from_ref(&web.workload)
        );
        assert_eq!(index.resources("a").len(), 1);
        assert_eq!(
            index.resources("b").len(),
            1,
            "other namespaces are not part of that list"
        );
        index.retain_workloads(
            WorkloadKind::Deployment,
            None,
            &[("a".to_string(), "web".to_string())].into(),
        );
        assert_eq!(index.workloads(), [web.workload]);
    }

    #[test]
    fn namespace_selection_gates_and_reveals_workloads() {
        let mut index = Index::new(true);
        let web = workload("ns", "web", &[AUTO], &[]);
        index.apply_workload(web.clone());
        assert!(!index.is_selected("ns"));
        assert_eq!(
            index.set_selected("ns", true),
            std::slice::from_ref(&web.workload)
        );
        assert!(index.is_selected("ns"));
        assert_eq!(index.set_selected("ns", true), [], "already selected");
        assert_eq!(index.set_selected("ns", false), []);
        assert!(!index.is_selected("ns"));
        index.set_selected("ns", true);
        index.retain_selected(&HashSet::new());
        assert!(!index.is_selected("ns"));
        assert!(Index::new(false).is_selected("anything"));
    }
}
