//! Model-based end-to-end test of issue 10's rule, on the real control plane
//! and emulator: a few dozen KeyVaultSecrets with random intervals (1–20 s
//! and `0`), pins and `data`/`extract`/`find` mixes share three vaults and
//! two identities (an app's client secret, a federated service account),
//! while a seeded schedule rotates, disables, enables, deletes and
//! re-creates vault secrets, edits specs, deletes target Secrets,
//! force-syncs and restarts the operator (SIGTERM or SIGKILL). Beside them,
//! a few KeyVaultSecrets merge into Secrets that are someone else's
//! (cert-manager's TLS Secrets), and the schedule changes their
//! `creationPolicy` and renames their targets.
//!
//! ```text
//!  seed ─▶ step: 1–3 actions ─▶ control API / kube writes ─▶ model (tests/model/world.rs)
//!              └─▶ observe every KeyVaultSecret + Secret ─▶ check(): the rule, per object
//!  at mid-run and at the end: settle (deadline from the bound) ─▶ idle window (2 × longest interval)
//! ```
//!
//! Rules (each violation names one): `ready-but-stale`, `ready-without-secret`,
//! `spec-observed`, `synced-versions`, `failing-sync-keeps-last-good` and
//! `foreign-keeps-its-data` (no foreign Secret loses data, ever) after
//! every step; `foreign-given-back` once the merging objects are deleted; `converges` (Ready and current, or RemoteDisabled/NotFound
//! with the last good Secret) before each idle window; `idle-writes` and
//! `idle-events` during it.
//!
//! The seed is printed; `KVSYNC_MODEL_SEED=<seed>` replays the schedule.
//! `KVSYNC_MODEL_STEPS` (default 200), `KVSYNC_MODEL_RESTARTS=0` and
//! `KVSYNC_MODEL_SPEC_EDITS=0` narrow a run down for diagnosis;
//! `KVSYNC_MODEL_KEEP_GOING=1` reports each (rule, object) once, counts
//! them all and fails at the end; `KVSYNC_MODEL_SKIP=synced-versions,…`
//! ignores rules (to see what else fails while one is known broken);
//! `KVSYNC_MODEL_DUMP=<file>` writes the running operator's log there when a
//! rule is broken.

mod support;
#[path = "model/world.rs"]
mod world;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Secret, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kvsync::api::KeyVaultSecret;
use kvsync::api::contract::FORCE_SYNC_ANNOTATION;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{Value, json};
use support::*;
use world::*;

const OBJECTS: usize = 26;
const DEFAULT_STEPS: usize = 200;
/// No Lease: a killed leader would hold it for the lease duration.
const ARGS: &[&str] = &["--leader-election", "false"];
/// The harness's `--max-backoff`: a failing object retries at least this often.
const MAX_BACKOFF: Duration = Duration::from_secs(4);
const SECRET_APP_ID: &str = "44444444-4444-4444-4444-444444444444";
const SECRET_APP_KEY: &str = "model-app-client-secret";
const FEDERATED_APP_ID: &str = "55555555-5555-5555-5555-555555555555";
const FIELD_MANAGER: &str = "model-test";
/// KeyVaultSecrets `m<i>` that start merging into foreign Secret `foreign-<i>`.
const MERGERS: usize = 3;
/// The vault secret (in `VAULTS[0]`, never changed) the mergers write as key `merged`.
const MERGED_SECRET: &str = "merged-value";
const POLICIES: [&str; 3] = ["Owner", "Orphan", "Merge"];
const TRACE_LINES: usize = 25;

/// What a step can do (counted, so a run proves it covered every kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Rotate,
    Recreate,
    Disable,
    Enable,
    Delete,
    AddEntry,
    RemoveEntry,
    ChangeInterval,
    ChangePin,
    DeleteTarget,
    ForceSync,
    Sigterm,
    Sigkill,
    /// A merger's `creationPolicy` changed, its target kept.
    PolicyChange,
    /// A merger's target renamed (and maybe its policy changed).
    Rename,
}

/// The data foreign Secret `foreign-<i>` is made with (and must keep).
fn foreign_data(i: usize) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("tls.crt".to_owned(), format!("certificate-{i}")),
        ("tls.key".to_owned(), format!("private-key-{i}")),
    ])
}

fn env_flag(name: &str, default: bool) -> bool {
    std::env::var(name).map_or(default, |v| v != "0" && !v.is_empty())
}

/// RV of every KeyVaultSecret and target Secret (the idle window's baseline).
type Versions = BTreeMap<String, (String, Option<String>)>;

struct Run {
    seed: u64,
    rng: StdRng,
    started: Instant,
    client: kube::Client,
    ns: TestNamespace,
    emulator: Emulator,
    operator: Option<Operator>,
    /// The logs of operators stopped so far (for the leak scan).
    past_logs: String,
    history: History,
    clock: Clock,
    objects: BTreeMap<String, Object>,
    /// The mergers: name → (target name, creationPolicy) as last applied.
    mergers: BTreeMap<String, (String, &'static str)>,
    trace: VecDeque<String>,
    step: usize,
    counter: u64,
    restarts: bool,
    spec_edits: bool,
    keep_going: bool,
    /// Rules not to report (KVSYNC_MODEL_SKIP, comma-separated), for diagnosis.
    skip: BTreeSet<String>,
    /// (rule, object) pairs already printed (KVSYNC_MODEL_KEEP_GOING prints each once).
    reported: BTreeSet<(&'static str, String)>,
    coverage: BTreeMap<Kind, usize>,
    failures: BTreeMap<&'static str, usize>,
    next_signal_is_kill: bool,
    _issuer_dir: tempfile::TempDir,
}

impl Run {
    fn now(&self) -> At {
        self.started.elapsed()
    }

    fn note(&mut self, line: String) {
        let line = format!("{:>3} {:>6.1}s {line}", self.step, self.now().as_secs_f64());
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    fn kvs_api(&self) -> Api<KeyVaultSecret> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    // ─────────────────────────── vault actions ───────────────────────────

    /// A new version of `vault/name` (a rotation, or a re-creation after a delete).
    async fn set_secret(&mut self, vault: &str, name: &str) {
        self.counter += 1;
        let n = self.counter;
        let value = if JSON.contains(&name) {
            let [a, b] = json_fields(name);
            json!({a: format!("{vault}-{name}-a-{n}"), b: format!("{vault}-{name}-b-{n}")})
                .to_string()
        } else {
            format!("{vault}-{name}-{n}")
        };
        let began = self.now();
        let bundle = self
            .emulator
            .control(
                Method::PUT,
                &format!("vaults/{vault}/secrets/{name}"),
                Some(json!({"value": value, "tags": tags_of(name)})),
            )
            .await;
        let applied = self.now();
        let id = bundle["id"].as_str().expect("bundle id");
        let version = id.rsplit('/').next().unwrap().to_owned();
        self.history.record(
            Change::Set {
                vault: vault.into(),
                name: name.into(),
                version: Version {
                    id: version.clone(),
                    value,
                    enabled: true,
                },
            },
            began,
            applied,
        );
        self.note(format!("set {vault}/{name}@{}", short(&version)));
    }

    async fn set_enabled(&mut self, vault: &str, name: &str, enabled: bool) {
        let began = self.now();
        self.emulator
            .control(
                Method::PATCH,
                &format!("vaults/{vault}/secrets/{name}"),
                Some(json!({"enabled": enabled})),
            )
            .await;
        let applied = self.now();
        let change = Change::SetEnabled {
            vault: vault.into(),
            name: name.into(),
            enabled,
        };
        self.history.record(change, began, applied);
        self.note(format!(
            "{} {vault}/{name}",
            if enabled { "enable" } else { "disable" }
        ));
    }

    async fn delete_secret(&mut self, vault: &str, name: &str) {
        let began = self.now();
        self.emulator
            .control(
                Method::DELETE,
                &format!("vaults/{vault}/secrets/{name}"),
                None,
            )
            .await;
        let applied = self.now();
        let change = Change::Delete {
            vault: vault.into(),
            name: name.into(),
        };
        self.history.record(change, began, applied);
        self.note(format!("delete {vault}/{name}"));
    }

    // ─────────────────────────── object actions ──────────────────────────

    fn auth(&self, identity: usize) -> Value {
        match identity {
            0 => json!({"clientSecret": {"tenantId": TENANT, "clientId": SECRET_APP_ID,
                         "secretRef": {"name": "model-cred", "key": "password"}}}),
            _ => json!({"workloadIdentity": {"serviceAccountName": "model-sa"}}),
        }
    }

    /// Server-side applies the whole spec; records it under its new generation.
    async fn apply(&mut self, name: &str, spec: Spec, trigger: Trigger) {
        let body = json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "KeyVaultSecret",
            "metadata": {"name": name},
            "spec": spec.to_json(&self.emulator.vault_url(&spec.vault), self.auth(spec.identity))});
        let written = self
            .kvs_api()
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .unwrap();
        let at = self.now();
        let generation = written.metadata.generation.expect("a generation");
        self.note(format!("{name} gen {generation}: {}", spec.summary()));
        let object = self
            .objects
            .entry(name.to_owned())
            .or_insert_with(|| Object {
                name: name.to_owned(),
                specs: BTreeMap::new(),
                triggers: Vec::new(),
                last_seen_ready: None,
                failing: None,
            });
        object.specs.insert(generation, (spec, at));
        object.triggers.push((at, trigger));
    }

    /// The longest refresh interval of any object's current spec.
    fn longest_interval(&self) -> Duration {
        self.objects
            .values()
            .map(|o| o.current().1.interval())
            .max()
            .unwrap_or_default()
    }

    /// Records that `trigger` happened to object `name` now.
    fn triggered(&mut self, name: &str, trigger: Trigger, line: String) {
        let at = self.now();
        self.objects
            .get_mut(name)
            .unwrap()
            .triggers
            .push((at, trigger));
        self.note(line);
    }

    async fn force_sync(&mut self, name: &str) {
        self.counter += 1;
        let patch = json!({"metadata": {"annotations": {FORCE_SYNC_ANNOTATION: format!("t{}", self.counter)}}});
        self.kvs_api()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        self.triggered(name, Trigger::ForceSync, format!("force-sync {name}"));
    }

    async fn delete_target(&mut self, name: &str) {
        let deleted = self.secrets().delete(name, &DeleteParams::default()).await;
        match deleted {
            Ok(_) => self.triggered(
                name,
                Trigger::TargetDeleted,
                format!("delete Secret {name}"),
            ),
            Err(kube::Error::Api(status)) if status.code == 404 => {
                self.note(format!("delete Secret {name}: already absent"));
            }
            Err(error) => panic!("deleting Secret {name}: {error}"),
        }
    }

    /// Applies merger `name` with this target and policy.
    async fn apply_merger(&mut self, name: &str, target: &str, policy: &'static str) {
        let body = json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "KeyVaultSecret",
            "metadata": {"name": name},
            "spec": {"vaultUrl": self.emulator.vault_url(VAULTS[0]), "auth": self.auth(0),
                     "refreshInterval": "0",
                     "target": {"name": target, "creationPolicy": policy},
                     "data": [{"secretKey": "merged", "remoteRef": {"name": MERGED_SECRET}}]}});
        self.kvs_api()
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .unwrap();
        self.mergers
            .insert(name.to_owned(), (target.to_owned(), policy));
        self.note(format!("{name}: {policy} into {target}"));
    }

    /// A random merger gets a random policy and target (its foreign Secret,
    /// or one of two names of its own).
    async fn change_merger(&mut self) -> Option<Kind> {
        let i = self.rng.random_range(0..MERGERS);
        let name = format!("m{i}");
        let (target, policy) = self.mergers[&name].clone();
        let targets = [
            format!("foreign-{i}"),
            format!("{name}-a"),
            format!("{name}-b"),
        ];
        let new_target = targets[self.rng.random_range(0..targets.len())].clone();
        let new_policy = POLICIES[self.rng.random_range(0..POLICIES.len())];
        let kind = match (new_target == target, new_policy == policy) {
            (true, true) => return None,
            (true, false) => Kind::PolicyChange,
            (false, _) => Kind::Rename,
        };
        self.apply_merger(&name, &new_target, new_policy).await;
        Some(kind)
    }

    /// The rule for the foreign Secrets, as they are now.
    async fn check_foreign_secrets(&self) -> Vec<Violation> {
        let mut violations = Vec::new();
        for i in 0..MERGERS {
            let name = format!("foreign-{i}");
            let now = self
                .secrets()
                .get_opt(&name)
                .await
                .unwrap()
                .map(|s| Foreign {
                    data: decoded(&s),
                    owned: !s.owner_references().is_empty(),
                    immutable: s.immutable == Some(true),
                });
            violations.extend(check_foreign(&name, now.as_ref(), &foreign_data(i)));
        }
        violations
    }

    /// Deletes the mergers; then every foreign Secret holds nothing of
    /// kvsync's (its key and markers withdrawn) and still all of its own.
    async fn delete_mergers(&mut self) {
        for name in self.mergers.keys() {
            self.kvs_api()
                .delete(name, &DeleteParams::default())
                .await
                .unwrap();
        }
        let api = self.kvs_api();
        let mergers: Vec<String> = self.mergers.keys().cloned().collect();
        eventually("the mergers deleted", WAIT, || async {
            for name in &mergers {
                if api.get_opt(name).await.unwrap().is_some() {
                    return None;
                }
            }
            Some(())
        })
        .await;
        let mut violations = self.check_foreign_secrets().await;
        for i in 0..MERGERS {
            let name = format!("foreign-{i}");
            let Some(secret) = self.secrets().get_opt(&name).await.unwrap() else {
                continue;
            };
            let kvsyncs: Vec<String> = decoded(&secret)
                .into_keys()
                .filter(|k| k == "merged")
                .chain(
                    secret
                        .annotations()
                        .keys()
                        .filter(|k| k.starts_with("kvsync.io/"))
                        .cloned(),
                )
                .collect();
            if !kvsyncs.is_empty() {
                violations.push(Violation {
                    rule: "foreign-given-back",
                    object: name,
                    detail: format!("still holds kvsync's {kvsyncs:?} after the mergers went"),
                });
            }
        }
        let seen = self.observe().await;
        self.report(violations, &seen);
    }

    /// Stops the operator (SIGTERM and a clean exit, or SIGKILL) and starts a new one.
    async fn restart(&mut self, kill: bool) {
        let began = self.now();
        let mut operator = self.operator.take().expect("a running operator");
        let output = if kill {
            let output = operator.process.output();
            operator.process.kill();
            output
        } else {
            let pid = operator.process.pid().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status();
            eventually("the operator to exit after SIGTERM", WAIT, || {
                let exited = !operator.process.is_running();
                async move { exited.then_some(()) }
            })
            .await;
            operator.process.output()
        };
        assert!(
            !output.contains("panicked"),
            "step {}: the operator panicked:\n{output}",
            self.step
        );
        self.past_logs += &output;
        self.operator = Some(Operator::start(&self.emulator, &self.ns.name, ARGS));
        let up = self.now();
        self.clock.down(began, up + RESTART_GRACE);
        self.note(format!(
            "operator restarted ({})",
            if kill { "SIGKILL" } else { "SIGTERM" }
        ));
    }

    // ─────────────────────────── random choices ──────────────────────────

    /// A restart, SIGTERM and SIGKILL taking turns.
    async fn random_restart(&mut self) -> Kind {
        let kill = self.next_signal_is_kill;
        self.next_signal_is_kill = !kill;
        self.restart(kill).await;
        if kill { Kind::Sigkill } else { Kind::Sigterm }
    }

    fn random_interval(&mut self) -> u64 {
        if self.rng.random_bool(0.15) {
            0
        } else {
            self.rng.random_range(1..=20)
        }
    }

    /// A pin to one of the versions `vault/name` has now (none if deleted).
    fn random_pin(&mut self, vault: &str, name: &str) -> Option<String> {
        let versions = self.history.current().versions(vault, name);
        if versions.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..versions.len());
        Some(versions[i].id.clone())
    }

    fn random_entry(&mut self, spec: &Spec) -> Entry {
        let has_find = spec.find().is_some();
        let extracted: BTreeSet<String> = spec
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Extract { name } => Some(name.clone()),
                _ => None,
            })
            .collect();
        let roll = self.rng.random_range(0..100);
        if roll < 15 && !has_find {
            let find = match self.rng.random_range(0..4) {
                0 => Find::Tag("a"),
                1 => Find::Tag("b"),
                2 => Find::Plain(0, 2),
                _ => Find::Plain(3, 5),
            };
            return Entry::Find(find);
        }
        if roll < 35 {
            let name = JSON[self.rng.random_range(0..JSON.len())];
            if !extracted.contains(name) {
                return Entry::Extract { name: name.into() };
            }
        }
        let used: BTreeSet<String> = spec
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Data { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect();
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| !used.contains(k))
            .unwrap();
        let (name, property) = if self.rng.random_bool(0.25) {
            let name = JSON[self.rng.random_range(0..JSON.len())];
            let field = json_fields(name)[self.rng.random_range(0..2)].clone();
            (name, Some(field))
        } else {
            (PLAIN[self.rng.random_range(0..PLAIN.len())], None)
        };
        let pin = if self.rng.random_bool(0.25) {
            self.random_pin(&spec.vault, name)
        } else {
            None
        };
        Entry::Data {
            key,
            name: name.into(),
            pin,
            property,
        }
    }

    fn random_spec(&mut self) -> Spec {
        let mut spec = Spec {
            vault: VAULTS[self.rng.random_range(0..VAULTS.len())].into(),
            identity: self.rng.random_range(0..2),
            interval: self.random_interval(),
            entries: Vec::new(),
        };
        for _ in 0..self.rng.random_range(1..=3) {
            let entry = self.random_entry(&spec);
            spec.entries.push(entry);
        }
        spec
    }

    fn random_kind(&mut self) -> Kind {
        let mut table = vec![
            (Kind::Rotate, 56),
            (Kind::Recreate, 8),
            (Kind::Disable, 14),
            (Kind::Enable, 8),
            (Kind::Delete, 10),
            (Kind::DeleteTarget, 12),
            (Kind::ForceSync, 20),
        ];
        if self.spec_edits {
            table.extend([
                (Kind::AddEntry, 8),
                (Kind::RemoveEntry, 8),
                (Kind::ChangeInterval, 8),
                (Kind::ChangePin, 8),
                (Kind::PolicyChange, 6),
                (Kind::Rename, 6),
            ]);
        }
        // Rare: each restart makes the next RESTART_GRACE lenient.
        if self.restarts {
            table.push((Kind::Sigterm, 1));
        }
        let total: u32 = table.iter().map(|(_, w)| w).sum();
        let mut roll = self.rng.random_range(0..total);
        for (kind, weight) in table {
            if roll < weight {
                return kind;
            }
            roll -= weight;
        }
        unreachable!()
    }

    fn random_object(&mut self) -> String {
        let names: Vec<String> = self.objects.keys().cloned().collect();
        names[self.rng.random_range(0..names.len())].clone()
    }

    /// One random action; returns the kind done (or None when nothing fitted).
    async fn random_action(&mut self) -> Option<Kind> {
        let kind = self.random_kind();
        let vault = VAULTS[self.rng.random_range(0..VAULTS.len())];
        let all: Vec<&str> = PLAIN.iter().chain(JSON.iter()).copied().collect();
        let name = all[self.rng.random_range(0..all.len())];
        let latest = self.history.current().latest(vault, name).cloned();
        let object = self.random_object();
        let (_, spec) = self.objects[&object].current();
        let mut spec = spec.clone();
        let done = match kind {
            Kind::Rotate | Kind::Recreate => {
                // A rotation of a deleted secret re-creates it.
                let kind = if latest.is_some() {
                    Kind::Rotate
                } else {
                    Kind::Recreate
                };
                self.set_secret(vault, name).await;
                kind
            }
            Kind::Disable if latest.as_ref().is_some_and(|v| v.enabled) => {
                self.set_enabled(vault, name, false).await;
                kind
            }
            Kind::Enable if latest.as_ref().is_some_and(|v| !v.enabled) => {
                self.set_enabled(vault, name, true).await;
                kind
            }
            Kind::Delete if latest.is_some() => {
                self.delete_secret(vault, name).await;
                kind
            }
            Kind::AddEntry if spec.entries.len() < 4 => {
                let entry = self.random_entry(&spec);
                spec.entries.push(entry);
                self.apply(&object, spec, Trigger::SpecEdit).await;
                kind
            }
            Kind::RemoveEntry if spec.entries.len() >= 2 => {
                let i = self.rng.random_range(0..spec.entries.len());
                spec.entries.remove(i);
                self.apply(&object, spec, Trigger::SpecEdit).await;
                kind
            }
            Kind::ChangeInterval => {
                let interval = self.random_interval();
                if interval == spec.interval {
                    return None;
                }
                spec.interval = interval;
                self.apply(&object, spec, Trigger::SpecEdit).await;
                kind
            }
            Kind::ChangePin => {
                let data: Vec<usize> = (0..spec.entries.len())
                    .filter(|&i| matches!(spec.entries[i], Entry::Data { .. }))
                    .collect();
                if data.is_empty() {
                    return None;
                }
                let i = data[self.rng.random_range(0..data.len())];
                let vault = spec.vault.clone();
                let Entry::Data { name, pin, .. } = &spec.entries[i] else {
                    unreachable!()
                };
                let name = name.clone();
                let new_pin = if pin.is_some() && self.rng.random_bool(0.5) {
                    None
                } else {
                    self.random_pin(&vault, &name)
                };
                if let Entry::Data { pin, .. } = &mut spec.entries[i] {
                    if *pin == new_pin {
                        return None;
                    }
                    *pin = new_pin;
                }
                self.apply(&object, spec, Trigger::SpecEdit).await;
                kind
            }
            Kind::DeleteTarget => {
                self.delete_target(&object).await;
                kind
            }
            Kind::ForceSync => {
                self.force_sync(&object).await;
                kind
            }
            Kind::Sigterm | Kind::Sigkill => self.random_restart().await,
            Kind::PolicyChange | Kind::Rename => return self.change_merger().await,
            _ => return None,
        };
        Some(done)
    }

    // ──────────────────────────── observation ────────────────────────────

    async fn observe(&self) -> BTreeMap<String, Observation> {
        let read_from = self.now();
        let objects = self
            .kvs_api()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        let secrets: BTreeMap<String, Secret> = self
            .secrets()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|s| (s.name_any(), s))
            .collect();
        let read_to = self.now();
        objects
            .into_iter()
            .map(|kvs| {
                let status = kvs.status.clone().unwrap_or_default();
                let ready = ready(&kvs).map(|c| Ready {
                    status: c.status == "True",
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                    observed_generation: c.observed_generation.unwrap_or(0),
                });
                let target = kvs.target_name();
                let secret = secrets
                    .get(&target)
                    .map(|s| (s.resource_version().unwrap_or_default(), decoded(s)));
                let rollout_counted = status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "RolledOut" && c.reason != "Pending");
                let seen = Observation {
                    rollout_counted,
                    kvs_version: kvs.resource_version().unwrap_or_default(),
                    ready,
                    status_generation: status.observed_generation,
                    synced_versions: status.synced_versions.into_iter().collect(),
                    secret,
                    read_from,
                    read_to,
                };
                (kvs.name_any(), seen)
            })
            .collect()
    }

    fn versions_of(seen: &BTreeMap<String, Observation>) -> Versions {
        seen.iter()
            .map(|(name, o)| {
                (
                    name.clone(),
                    (
                        o.kvs_version.clone(),
                        o.secret.as_ref().map(|(rv, _)| rv.clone()),
                    ),
                )
            })
            .collect()
    }

    /// Observes everything and checks the rule for every object.
    async fn check_all(&mut self) -> BTreeMap<String, Observation> {
        let seen = self.observe().await;
        let mut violations = Vec::new();
        for (name, object) in &mut self.objects {
            let Some(observation) = seen.get(name) else {
                violations.push(Violation {
                    rule: "exists",
                    object: name.clone(),
                    detail: "the KeyVaultSecret is missing".into(),
                });
                continue;
            };
            violations.extend(check(object, observation, &self.history, &self.clock));
        }
        violations.extend(self.check_foreign_secrets().await);
        self.report(violations, &seen);
        seen
    }

    /// Fails the test (or, with KVSYNC_MODEL_KEEP_GOING, prints and counts).
    fn report(&mut self, violations: Vec<Violation>, seen: &BTreeMap<String, Observation>) {
        let violations: Vec<Violation> = violations
            .into_iter()
            .filter(|v| !self.skip.contains(v.rule))
            .collect();
        for v in &violations {
            *self.failures.entry(v.rule).or_default() += 1;
        }
        let violations: Vec<Violation> = violations
            .into_iter()
            .filter(|v| self.reported.insert((v.rule, v.object.clone())) || !self.keep_going)
            .collect();
        if violations.is_empty() {
            return;
        }
        let mut text = format!(
            "model test seed {} (replay with KVSYNC_MODEL_SEED={}), step {} at {:.1}s: {} violation(s)\n",
            self.seed,
            self.seed,
            self.step,
            self.now().as_secs_f64(),
            violations.len()
        );
        for v in violations.iter().take(6) {
            text += &format!("\n  [{}] {}: {}\n", v.rule, v.object, v.detail);
            if let Some(object) = self.objects.get(&v.object) {
                let (generation, spec) = object.current();
                text += &format!("    spec gen {generation}: {}\n", spec.summary());
                if let Some(o) = seen.get(&v.object) {
                    let held: Vec<String> = o
                        .secret
                        .iter()
                        .flat_map(|(_, d)| {
                            d.iter()
                                .map(|(k, v)| format!("{k}={}", self.history.label(v)))
                        })
                        .collect();
                    text += &format!(
                        "    Ready {:?}; syncedVersions {:?}; Secret {:?}\n",
                        o.ready.as_ref().map(|r| (
                            r.status,
                            r.reason.as_str(),
                            r.message.as_str(),
                            r.observed_generation
                        )),
                        o.synced_versions
                            .iter()
                            .map(|(k, v)| format!("{k}@{}", short(v)))
                            .collect::<Vec<_>>(),
                        o.secret.as_ref().map(|_| held)
                    );
                }
                let secrets: BTreeSet<(String, String)> = PLAIN
                    .iter()
                    .chain(JSON.iter())
                    .filter(|n| spec.static_names().contains(**n) || spec.find().is_some())
                    .map(|n| (spec.vault.clone(), n.to_string()))
                    .collect();
                for line in self.history.timeline(&secrets, 8) {
                    text += &format!("    vault: {line}\n");
                }
                let triggers: Vec<String> = object
                    .triggers
                    .iter()
                    .rev()
                    .take(4)
                    .map(|(at, t)| format!("{t:?}@{:.1}s", at.as_secs_f64()))
                    .collect();
                let downtimes: Vec<String> = self
                    .clock
                    .downtimes()
                    .iter()
                    .map(|(s, e)| format!("{:.1}–{:.1}s", s.as_secs_f64(), e.as_secs_f64()))
                    .collect();
                text += &format!(
                    "    triggers (latest first): {triggers:?}; operator down or starting: {downtimes:?}\n"
                );
            }
        }
        text += "\n  last steps:\n";
        for line in &self.trace {
            text += &format!("    {line}\n");
        }
        if let Ok(path) = std::env::var("KVSYNC_MODEL_DUMP") {
            std::fs::write(&path, self.operator.as_ref().unwrap().process.output()).unwrap();
        }
        if self.keep_going {
            eprintln!("{text}");
        } else {
            panic!("{text}");
        }
    }

    // ─────────────────────── settle and idle windows ─────────────────────

    /// Waits until every object has caught up with the vault (see
    /// [`world::settled`]) and nothing moved for a second; returns the
    /// resourceVersions then, or None if it did not happen in time.
    async fn settle(&mut self) -> Option<Versions> {
        // `refreshInterval: 0` objects read the vault only when told to.
        let once: Vec<String> = self
            .objects
            .iter()
            .filter(|(_, o)| o.current().1.interval == 0)
            .map(|(n, _)| n.clone())
            .collect();
        for name in once {
            self.force_sync(&name).await;
        }
        let longest = self.longest_interval();
        let budget = staleness_bound(longest) + MAX_BACKOFF;
        let start = self.now().max(self.clock.up_again());
        let deadline = start + budget;
        let mut stable: Option<(At, Versions)> = None;
        let check_versions = !self.skip.contains("synced-versions");
        loop {
            let seen = self.check_all().await;
            let unsettled: Vec<String> = self
                .objects
                .iter()
                .filter_map(|(name, object)| {
                    let why = match seen.get(name) {
                        Some(o) => settled(object, o, &self.history, check_versions).err()?,
                        None => "missing".into(),
                    };
                    Some(format!("{name} ({}): {why}", object.current().1.summary()))
                })
                .collect();
            let now = self.now();
            if unsettled.is_empty() {
                let versions = Self::versions_of(&seen);
                match &stable {
                    Some((since, before)) if *before == versions => {
                        if now - *since >= Duration::from_secs(1) {
                            return Some(versions);
                        }
                    }
                    _ => stable = Some((now, versions)),
                }
            } else {
                stable = None;
                if now > deadline {
                    let detail = format!(
                        "{} object(s) not caught up within {:.1}s (longest interval + jitter + slack + max backoff):\n    {}",
                        unsettled.len(),
                        budget.as_secs_f64(),
                        unsettled
                            .iter()
                            .take(8)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("\n    ")
                    );
                    let violation = Violation {
                        rule: "converges",
                        object: "(all)".into(),
                        detail,
                    };
                    self.report(vec![violation], &seen);
                    return None;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Events about KeyVaultSecrets and Secrets: name → resourceVersion.
    async fn events(&self) -> BTreeMap<String, (String, String)> {
        Api::<Event>::namespaced(self.client.clone(), &self.ns.name)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                matches!(
                    e.involved_object.kind.as_deref(),
                    Some("KeyVaultSecret" | "Secret")
                )
            })
            .map(|e| {
                let what = format!(
                    "{} {}",
                    e.involved_object.name.clone().unwrap_or_default(),
                    e.reason.clone().unwrap_or_default()
                );
                (
                    e.name_any(),
                    (e.resource_version().unwrap_or_default(), what),
                )
            })
            .collect()
    }

    /// Settles, then holds that nothing is written for two of the longest
    /// intervals (+ jitter): no Secret, no status, no event.
    async fn settle_and_idle(&mut self) {
        self.note("settle".into());
        let Some(baseline) = self.settle().await else {
            return;
        };
        let events = self.events().await;
        let longest = self.longest_interval();
        let period = longest
            .max(Duration::from_secs(5))
            .mul_f64(2.0 * (1.0 + JITTER));
        self.note(format!("idle window of {:.1}s", period.as_secs_f64()));
        let end = self.now() + period;
        while self.now() < end {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let seen = self.check_all().await;
            let versions = Self::versions_of(&seen);
            let mut violations: Vec<Violation> = versions
                .iter()
                .filter(|(name, v)| baseline.get(*name) != Some(*v))
                .map(|(name, v)| {
                    let before = &baseline[name];
                    let what = [
                        ("KeyVaultSecret", before.0 != v.0),
                        ("Secret", before.1 != v.1),
                    ]
                    .iter()
                    .filter(|(_, changed)| *changed)
                    .map(|(w, _)| *w)
                    .collect::<Vec<_>>()
                    .join(" and ");
                    Violation {
                        rule: "idle-writes",
                        object: name.clone(),
                        detail: format!(
                            "{what} written in an idle window (nothing changed in vault or spec)"
                        ),
                    }
                })
                .collect();
            let now_events = self.events().await;
            violations.extend(
                now_events
                    .iter()
                    .filter(|(name, e)| events.get(*name) != Some(*e))
                    .map(|(_, (_, what))| Violation {
                        rule: "idle-events",
                        object: what.split(' ').next().unwrap_or_default().to_owned(),
                        detail: format!("event {what} in an idle window"),
                    }),
            );
            if !violations.is_empty() {
                self.report(violations, &seen);
                return;
            }
        }
    }
}

#[tokio::test]
async fn the_rule_holds_for_a_random_schedule() {
    let seed = std::env::var("KVSYNC_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("model test seed: {seed} (replay with KVSYNC_MODEL_SEED={seed})");
    let steps = std::env::var("KVSYNC_MODEL_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_STEPS);
    let mut run = start(seed).await;
    run.restarts = env_flag("KVSYNC_MODEL_RESTARTS", true);
    run.spec_edits = env_flag("KVSYNC_MODEL_SPEC_EDITS", true);
    run.keep_going = env_flag("KVSYNC_MODEL_KEEP_GOING", false);
    run.skip = std::env::var("KVSYNC_MODEL_SKIP")
        .unwrap_or_default()
        .split(',')
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect();

    run.settle().await;
    for step in 1..=steps {
        run.step = step;
        if run.restarts && step % 50 == 25 {
            // Besides the random ones: every run restarts both ways at least twice.
            let kind = run.random_restart().await;
            *run.coverage.entry(kind).or_default() += 1;
        }
        for _ in 0..run.rng.random_range(1..=3) {
            if let Some(kind) = run.random_action().await {
                *run.coverage.entry(kind).or_default() += 1;
            }
        }
        // Pacing only, so that refreshes fall between steps; the checks below are the proof.
        let pause = Duration::from_millis(run.rng.random_range(100..400));
        tokio::time::sleep(pause).await;
        run.check_all().await;
        if step == steps / 2 {
            run.settle_and_idle().await;
        }
    }
    run.settle_and_idle().await;
    run.delete_mergers().await;
    if let Some(operator) = run.operator.take() {
        let output = operator.process.output();
        assert!(
            !output.contains("panicked"),
            "the operator panicked:\n{output}"
        );
        run.past_logs += &output;
    }
    eprintln!(
        "model test: seed {seed}, {steps} steps, {} objects, {:.0?}; actions {:?}; violations {:?}",
        run.objects.len(),
        run.started.elapsed(),
        run.coverage,
        run.failures
    );
    assert!(
        run.failures.is_empty(),
        "violations by rule: {:?} (seed {seed})",
        run.failures
    );
    if steps >= DEFAULT_STEPS && run.restarts && run.spec_edits {
        let missing: Vec<&Kind> = [
            Kind::Rotate,
            Kind::Recreate,
            Kind::Disable,
            Kind::Delete,
            Kind::AddEntry,
            Kind::RemoveEntry,
            Kind::ChangeInterval,
            Kind::ChangePin,
            Kind::DeleteTarget,
            Kind::ForceSync,
            Kind::Sigterm,
            Kind::Sigkill,
            Kind::PolicyChange,
            Kind::Rename,
        ]
        .iter()
        .filter(|k| !run.coverage.contains_key(k))
        .collect();
        assert!(missing.is_empty(), "seed {seed} never did {missing:?}");
    }
}

impl Drop for Run {
    /// The leak scan over every operator's log, the events and statuses (as
    /// a [`Fixture`] runs it), unless the test already failed.
    fn drop(&mut self) {
        scan_when_dropped(|| {
            let mut operator_log = std::mem::take(&mut self.past_logs);
            if let Some(operator) = &self.operator {
                operator_log += &operator.process.output();
            }
            LeakScan {
                namespace: self.ns.name.clone(),
                operator_log,
                control_url: Some(self.emulator.endpoints.control_url.clone()),
                named: vec![SECRET_APP_KEY.to_owned()],
                handled: self.emulator.values_set(),
                private_keys: Vec::new(),
            }
        });
    }
}

/// Namespace, emulator (three vaults, two app registrations), identities,
/// seeded vault secrets, the KeyVaultSecrets and the operator.
async fn start(seed: u64) -> Run {
    let client = client().await;
    let ns = TestNamespace::new(&client, "model").await;
    let issuer_dir = tempfile::tempdir().unwrap();
    let (issuer, jwks) = cluster_issuer(&client, issuer_dir.path()).await;
    let access: Vec<Value> = VAULTS
        .iter()
        .map(|v| json!({"vault": v, "secrets": ["*"]}))
        .collect();
    let emulator = Emulator::start(json!({
        "vaults": VAULTS.iter().map(|v| json!({"name": v})).collect::<Vec<_>>(),
        "apps": [
            {"tenantId": TENANT, "clientId": SECRET_APP_ID, "clientSecret": SECRET_APP_KEY, "access": access},
            {"tenantId": TENANT, "clientId": FEDERATED_APP_ID, "access": access,
             "federatedCredentials": [{"issuer": issuer,
                "subject": format!("system:serviceaccount:{}:model-sa", ns.name),
                "audience": "api://AzureADTokenExchange"}]}
        ],
        "issuers": [{"issuer": issuer, "jwksFile": jwks}]
    }))
    .await;
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "model-sa", "annotations": {
        "azure.workload.identity/client-id": FEDERATED_APP_ID,
        "azure.workload.identity/tenant-id": TENANT}}}))
        .unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let credential: Secret = serde_json::from_value(
        json!({"metadata": {"name": "model-cred"}, "stringData": {"password": SECRET_APP_KEY}}),
    )
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &credential)
        .await
        .unwrap();
    let mut run = Run {
        seed,
        rng: StdRng::seed_from_u64(seed),
        started: Instant::now(),
        client,
        ns,
        emulator,
        operator: None,
        past_logs: String::new(),
        history: History::default(),
        clock: Clock::default(),
        objects: BTreeMap::new(),
        mergers: BTreeMap::new(),
        trace: VecDeque::new(),
        step: 0,
        counter: 0,
        restarts: true,
        spec_edits: true,
        keep_going: false,
        skip: BTreeSet::new(),
        reported: BTreeSet::new(),
        coverage: BTreeMap::new(),
        failures: BTreeMap::new(),
        next_signal_is_kill: false,
        _issuer_dir: issuer_dir,
    };
    run.next_signal_is_kill = run.rng.random_bool(0.5);
    for vault in VAULTS {
        for name in PLAIN.iter().chain(JSON.iter()) {
            run.set_secret(vault, name).await;
        }
    }
    for i in 0..OBJECTS {
        let spec = run.random_spec();
        run.apply(&format!("o{i:02}"), spec, Trigger::Created).await;
    }
    run.emulator
        .set_secret(VAULTS[0], MERGED_SECRET, "merged-by-the-model")
        .await;
    for i in 0..MERGERS {
        let foreign: Secret = serde_json::from_value(json!({
            "metadata": {"name": format!("foreign-{i}"),
                         "annotations": {"cert-manager.io/certificate-name": format!("web-{i}")}},
            "type": "kubernetes.io/tls",
            "stringData": foreign_data(i),
        }))
        .unwrap();
        run.secrets()
            .create(&PostParams::default(), &foreign)
            .await
            .unwrap();
        run.apply_merger(&format!("m{i}"), &format!("foreign-{i}"), "Merge")
            .await;
    }
    run.operator = Some(Operator::start(&run.emulator, &run.ns.name, ARGS));
    let up = run.now();
    run.clock.down(At::ZERO, up + RESTART_GRACE);
    run
}
