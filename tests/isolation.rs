//! Isolation on a shared cluster: a tenant with rights in its own namespace
//! only can neither stop the operator, nor starve another namespace, nor
//! learn another namespace's data through it.
//!
//! ```text
//!  attacker namespace ── the attack ──▶ operator (one process, both namespaces,
//!                                        the default --min-refresh-interval)
//!  victim namespace: KeyVaultSecret db (refreshInterval 30s) + Deployment web (auto)
//!  after the attack: the operator runs, its peak RSS < RSS_BOUND, and a rotation
//!  in the victim's vault reaches Secret db within 30 s + 2 s
//! ```
//!
//! Each test prints one row of the closing table: attack, what the attacker
//! saw, the operator's peak RSS, the victim's rotation latency.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use support::*;

/// The victim's refresh interval, and how late its rotation may arrive.
const VICTIM_INTERVAL: Duration = Duration::from_secs(30);
const VICTIM_SLACK: Duration = Duration::from_secs(2);

/// The operator's peak resident memory must stay below this (a debug build
/// idles at ~40 MiB here). Its address space is limited to AS_LIMIT besides,
/// so that a regression fails the test instead of eating the machine.
const RSS_BOUND_KIB: u64 = 256 * 1024;
const AS_LIMIT_BYTES: u64 = 8 << 30;

struct Arena {
    f: Fixture,
    attacker: TestNamespace,
}

impl Arena {
    /// The victim's healthy KeyVaultSecret and auto-reloaded Deployment, an
    /// attacker namespace, and one operator serving both with the defaults.
    async fn new(test: &str) -> Self {
        let mut f = Fixture::idle(test).await;
        let attacker = TestNamespace::new(&f.client, &format!("{test}-x")).await;
        let namespaces = format!("{},{}", f.ns.name, attacker.name);
        f.operator = Some(
            Operator::start_with_env(
                &f.emulator,
                &f.ns.name,
                &["--namespaces", &namespaces],
                &[("KVSYNC_MIN_REFRESH_INTERVAL".into(), "10s".into())],
            )
            .process,
        );
        limit_address_space(f.process().pid());
        f.apply(
            "db",
            json!({"refreshInterval": "30s", "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}),
        )
        .await;
        f.wait_reason("db", "Synced").await;
        apply(
            &f.client,
            &f.ns.name,
            workload("Deployment", "web", "db", &[]),
        )
        .await;
        Arena { f, attacker }
    }

    fn attacker_api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.f.client.clone(), &self.attacker.name)
    }

    /// The operator still runs, has not panicked, and its peak RSS (KiB) is
    /// under the bound; returns the peak.
    fn assert_alive_and_small(&mut self) -> u64 {
        let pid = self.f.process().pid();
        let peak = peak_rss_kib(pid);
        assert!(self.f.process_mut().is_running(), "the operator exited");
        let log = self.f.process().output();
        assert!(!log.contains("panicked"), "the operator panicked");
        assert!(
            peak < RSS_BOUND_KIB,
            "peak RSS {peak} KiB over {RSS_BOUND_KIB} KiB"
        );
        peak
    }

    /// Rotates the victim's vault secret; returns how long until Secret db
    /// holds the new value (asserted within its interval + 2 s).
    async fn victim_rotation_latency(&self, value: &str) -> Duration {
        self.f
            .emulator
            .set_secret("shop", "db-password", value)
            .await;
        let rotated = Instant::now();
        eventually(
            "the victim's rotation in its Secret",
            VICTIM_INTERVAL + VICTIM_SLACK,
            || async { (self.f.secret_data("db").await?.get("pw")? == value).then_some(()) },
        )
        .await;
        rotated.elapsed()
    }

    async fn report(&mut self, attack: &str, attacker_saw: &str, value: &str) {
        let latency = self.victim_rotation_latency(value).await;
        let peak = self.assert_alive_and_small();
        eprintln!(
            "| {attack} | {attacker_saw} | {:.1} MiB | {latency:.1?} |",
            peak as f64 / 1024.0
        );
    }
}

/// A workload of `kind` using Secret `secret` through `envFrom`, with
/// `reloader.stakater.com/auto` and the `extra` annotations.
fn workload(kind: &str, name: &str, secret: &str, extra: &[(&str, &str)]) -> Value {
    Workload::new(kind, name)
        .annotations(&[("reloader.stakater.com/auto", "true")])
        .annotations(extra)
        .env_from(&[secret])
        .body()
}

/// Server-side applies `body` (a Deployment, StatefulSet, DaemonSet or Secret).
async fn apply(client: &kube::Client, namespace: &str, body: Value) {
    match body["kind"].as_str().unwrap() {
        "Deployment" => apply_as::<Deployment>(client, namespace, body).await,
        "StatefulSet" => apply_as::<StatefulSet>(client, namespace, body).await,
        "DaemonSet" => apply_as::<DaemonSet>(client, namespace, body).await,
        "Secret" => apply_as::<Secret>(client, namespace, body).await,
        other => panic!("no apply for {other}"),
    }
}

async fn apply_as<K>(client: &kube::Client, namespace: &str, body: Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
{
    let name = body["metadata"]["name"].as_str().unwrap().to_owned();
    let params = PatchParams::apply("isolation-test").force();
    Api::<K>::namespaced(client.clone(), namespace)
        .patch(&name, &params, &Patch::Apply(&body))
        .await
        .unwrap();
}

fn secret(name: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data})
}

/// The peak resident set (VmHWM, KiB) of process `pid`.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Caps the operator's address space (prlimit, util-linux), so that a
/// runaway allocation fails the operator's allocation, not the machine.
fn limit_address_space(pid: u32) {
    let limit = format!("--as={AS_LIMIT_BYTES}");
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &limit])
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success(), "prlimit --as failed");
}

/// The reload record kvsync wrote on Deployment `name` (`kvsync.io/reload-digest`).
async fn reload_record(api: &Api<Deployment>, name: &str) -> Option<Value> {
    let deployment = api.get(name).await.ok()?;
    let record = deployment
        .metadata
        .annotations?
        .get("kvsync.io/reload-digest")?
        .clone();
    serde_json::from_str(&record).ok()
}

/// The digest the record on Deployment `name` holds for `member`.
async fn recorded_digest(api: &Api<Deployment>, name: &str, member: &str) -> Option<String> {
    let record = reload_record(api, name).await?;
    record
        .pointer(&format!("/digests/{}", member.replace('/', "~1")))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_period_past_the_calendar_stops_nobody() {
    let mut arena = Arena::new("iso-pause").await;
    let (client, ns) = (arena.f.client.clone(), arena.attacker.name.clone());
    apply(&client, &ns, secret("creds", &[("password", "1")])).await;
    let paused_at = (
        "deployment.reloader.stakater.com/paused-at",
        "2026-01-01T00:00:00Z",
    );
    let mut deployment = workload(
        "Deployment",
        "bomb",
        "creds",
        &[
            ("deployment.reloader.stakater.com/pause-period", "1000000y"),
            paused_at,
        ],
    );
    deployment["spec"]["paused"] = json!(true);
    apply(&client, &ns, deployment).await;
    for (kind, key) in [
        ("StatefulSet", "statefulset.kvsync.io/pause-period"),
        ("DaemonSet", "daemonset.kvsync.io/pause-period"),
    ] {
        let name = kind.to_lowercase();
        apply(
            &client,
            &ns,
            workload(kind, &name, "creds", &[(key, "1000000y")]),
        )
        .await;
    }
    // Precondition: the operator has read the bad annotations (one warning
    // per workload) before the Secret they react to changes.
    let events: Api<k8s_openapi::api::core::v1::Event> = arena.attacker_api();
    let warned = || async {
        let list = events.list(&Default::default()).await.ok()?;
        let objects: std::collections::BTreeSet<String> = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("InvalidReloadAnnotation"))
            .filter(|e| {
                e.message
                    .as_deref()
                    .unwrap_or("")
                    .contains("maximum of 30days")
            })
            .filter_map(|e| e.involved_object.name.clone())
            .collect();
        (objects.len() == 3).then_some(objects)
    };
    eventually(
        "a warning for each pause period",
        Duration::from_secs(30),
        warned,
    )
    .await;
    apply(&client, &ns, secret("creds", &[("password", "2")])).await;
    arena
        .report(
            "pause-period 1000000y (Deployment paused by Reloader, StatefulSet, DaemonSet) + a change",
            "InvalidReloadAnnotation: longer than the maximum of 30days",
            "rotated-after-pause-bomb",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_millisecond_interval_is_refused_with_the_minimum() {
    let mut arena = Arena::new("iso-interval").await;
    let api: Api<kvsync::api::KeyVaultSecret> = arena.attacker_api();
    let body = json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "KeyVaultSecret",
        "metadata": {"name": "greedy"},
        "spec": {"vaultUrl": arena.f.emulator.vault_url("shop"), "refreshInterval": "1ms",
                 "auth": {"workloadIdentity": {"serviceAccountName": "default"}},
                 "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}});
    api.patch(
        "greedy",
        &PatchParams::apply("isolation-test"),
        &Patch::Apply(&body),
    )
    .await
    .unwrap();
    let message = eventually("greedy to be refused", Duration::from_secs(30), || async {
        let kvs = api.get("greedy").await.ok()?;
        let ready = ready(&kvs)?;
        (ready.reason == "InvalidSpec").then(|| ready.message.clone())
    })
    .await;
    assert!(
        message.contains("shorter than this cluster's minimum of 10s"),
        "{message}"
    );
    let saw = format!("InvalidSpec: {message}");
    arena
        .report("refreshInterval: 1ms", &saw, "rotated-after-1ms")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_data_in_two_namespaces_gives_unrelated_digests() {
    let mut arena = Arena::new("iso-oracle").await;
    let client = arena.f.client.clone();
    let (victim, attacker) = (arena.f.ns.name.clone(), arena.attacker.name.clone());
    for ns in [&victim, &attacker] {
        apply(&client, ns, secret("guess", &[("password", "4711")])).await;
        apply(&client, ns, workload("Deployment", "oracle", "guess", &[])).await;
    }
    let digests = eventually(
        "both workloads recorded",
        Duration::from_secs(30),
        || async {
            let mut digests = Vec::new();
            for ns in [&victim, &attacker] {
                let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
                digests.push(recorded_digest(&api, "oracle", "Secret/guess").await?);
            }
            Some(digests)
        },
    )
    .await;
    assert_ne!(
        digests[0], digests[1],
        "equal data, equal digests: an oracle"
    );
    arena
        .report(
            "digest oracle (password 4711 in both namespaces)",
            "unrelated digests",
            "rotated-after-oracle",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_sync_loop_on_the_victims_vault_costs_the_victim_nothing() {
    let mut arena = Arena::new("iso-force").await;
    let api: Api<kvsync::api::KeyVaultSecret> = arena.attacker_api();
    let vault = arena.f.emulator.vault_url("shop");
    // The attacker's own identity (its namespace's default ServiceAccount,
    // annotated with the victim's app, which is not federated with it) has
    // no rights on the victim's vault.
    const OBJECTS: usize = 300;
    const ROUNDS: usize = 3;
    let sa = json!({"metadata": {"annotations": {
        "azure.workload.identity/client-id": SA_APP, "azure.workload.identity/tenant-id": TENANT}}});
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = arena.attacker_api();
    eventually(
        "the attacker's default ServiceAccount",
        Duration::from_secs(30),
        || async {
            accounts
                .patch("default", &PatchParams::default(), &Patch::Merge(&sa))
                .await
                .ok()
        },
    )
    .await;
    for i in 0..OBJECTS {
        let body = json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "KeyVaultSecret",
            "metadata": {"name": format!("aim-{i}")},
            "spec": {"vaultUrl": vault, "refreshInterval": "10s",
                     "auth": {"workloadIdentity": {"serviceAccountName": "default"}},
                     "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}});
        api.patch(
            &format!("aim-{i}"),
            &PatchParams::apply("isolation-test"),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
    }
    let refused = eventually(
        "every aimed object refused",
        Duration::from_secs(60),
        || async {
            let list = api.list(&Default::default()).await.ok()?;
            let reasons: Vec<String> = list
                .items
                .iter()
                .filter_map(|kvs| {
                    let ready = ready(kvs)?;
                    Some(format!("{}: {}", ready.reason, ready.message))
                })
                .collect();
            (reasons.len() == OBJECTS && reasons.iter().all(|r| !r.starts_with("Synced")))
                .then_some(reasons)
        },
    )
    .await;
    for round in 0..ROUNDS {
        for i in 0..OBJECTS {
            let patch =
                json!({"metadata": {"annotations": {"kvsync.io/force-sync": format!("{round}")}}});
            api.patch(
                &format!("aim-{i}"),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .unwrap();
        }
    }
    let saw = format!(
        "{OBJECTS} objects, {ROUNDS} force-syncs each: {}",
        refused[0]
    );
    arena
        .report(
            "force-sync loop aimed at the victim's vault",
            &saw,
            "rotated-after-force",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_find_over_more_than_a_secret_holds_is_refused_before_it_grows() {
    let mut arena = Arena::new("iso-find").await;
    // 45 values of 24 KiB (Key Vault's values are at most 25 KiB): 1.05 MiB.
    let big = "x".repeat(24 * 1024);
    for i in 0..45 {
        arena
            .f
            .emulator
            .set_secret("shop", &format!("bulk-{i:02}"), &big)
            .await;
    }
    // With an identity that may read every secret of the vault.
    apply(
        &arena.f.client,
        &arena.f.ns.name,
        secret("kv-creds", &[("clientSecret", SECRET_APP_PASSWORD)]),
    )
    .await;
    let auth = json!({"clientSecret": {"tenantId": TENANT, "clientId": SECRET_APP,
                                       "secretRef": {"name": "kv-creds", "key": "clientSecret"}}});
    arena
        .f
        .apply(
            "hoard",
            json!({"refreshInterval": "10s", "auth": auth,
                   "dataFrom": [{"find": {"nameRegex": "^bulk-"}}]}),
        )
        .await;
    let api = arena.f.kvs_api();
    let message = eventually("hoard to be refused", Duration::from_secs(30), || async {
        let kvs = api.get("hoard").await.ok()?;
        let ready = ready(&kvs)?;
        eprintln!("hoard: {} {}", ready.reason, ready.message);
        (ready.reason == "InvalidSpec").then(|| ready.message.clone())
    })
    .await;
    assert!(
        message.contains("more than 1048576 bytes of values"),
        "{message}"
    );
    assert!(
        arena.f.secret_data("hoard").await.is_none(),
        "no half-written Secret"
    );
    let saw = format!("InvalidSpec: {message}");
    arena
        .report("find over 45 × 24 KiB values", &saw, "rotated-after-find")
        .await;
}

/// Requests the emulator saw on vault routes and token routes.
fn vault_and_token_requests(counters: &Value) -> (u64, u64) {
    let sum = |prefix: &str| -> u64 {
        counters["byEndpoint"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(key, _)| key.starts_with(prefix))
            .filter_map(|(_, n)| n.as_u64())
            .sum()
    };
    (sum("vault:"), sum("entra "))
}

/// Asserts that, from `after` on, the emulator sees no vault or token
/// request for `quiet`.
async fn nothing_asked(f: &Fixture, after: Duration, quiet: Duration, what: &str) {
    tokio::time::sleep(after).await;
    f.emulator
        .control(reqwest::Method::POST, "counters/reset", None)
        .await;
    tokio::time::sleep(quiet).await;
    let (vault, tokens) = vault_and_token_requests(&f.emulator.counters().await);
    assert_eq!(
        (vault, tokens),
        (0, 0),
        "{what}: vault and token requests in the {quiet:?} from {after:?} on"
    );
    eprintln!("| {what} | 0 vault and 0 token requests in the {quiet:?} from {after:?} on |");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawn_access_is_used_no_more_after_one_interval() {
    let f = Fixture::new("iso-withdrawn").await;
    let interval = Duration::from_secs(2);
    let spec = json!({"refreshInterval": "2s", "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]});

    // The KeyVaultSecret is deleted.
    f.apply("gone", spec.clone()).await;
    f.wait_reason("gone", "Synced").await;
    f.kvs_api()
        .delete("gone", &Default::default())
        .await
        .unwrap();
    let api = f.kvs_api();
    eventually("gone to be gone", WAIT, || async {
        api.get_opt("gone").await.ok()?.is_none().then_some(())
    })
    .await;
    // The poller stops at its next turn: one interval at most.
    let next_turn = interval + Duration::from_secs(1);
    nothing_asked(&f, next_turn, 3 * interval, "KeyVaultSecret deleted").await;

    // The ServiceAccount loses the annotations that name its identity.
    f.apply("withdrawn", spec).await;
    f.wait_reason("withdrawn", "Synced").await;
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(f.client.clone(), &f.ns.name);
    let unannotated = json!({"metadata": {"annotations": {
        "azure.workload.identity/client-id": null, "azure.workload.identity/tenant-id": null}}});
    accounts
        .patch(
            "shop-api",
            &PatchParams::default(),
            &Patch::Merge(&unannotated),
        )
        .await
        .unwrap();
    eventually("withdrawn to fail", WAIT, || async {
        let kvs = api.get("withdrawn").await.ok()?;
        (ready(&kvs)?.reason != "Synced").then_some(())
    })
    .await;
    nothing_asked(
        &f,
        next_turn,
        3 * interval,
        "ServiceAccount's identity annotations removed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_leaving_the_scope_is_used_no_more_after_two_intervals() {
    let mut f = Fixture::idle("iso-unscoped").await;
    let interval = Duration::from_secs(2);
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(f.client.clone());
    let label = |value: Value| json!({"metadata": {"labels": {"kvsync-iso-scope": value}}});
    namespaces
        .patch(
            &f.ns.name,
            &PatchParams::default(),
            &Patch::Merge(&label(json!("in"))),
        )
        .await
        .unwrap();
    f.operator = Some(
        Operator::start(
            &f.emulator,
            &f.ns.name,
            &["--namespace-selector", "kvsync-iso-scope=in"],
        )
        .process,
    );
    f.apply(
        "scoped",
        json!({"refreshInterval": "2s", "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}),
    )
    .await;
    f.wait_reason("scoped", "Synced").await;
    namespaces
        .patch(
            &f.ns.name,
            &PatchParams::default(),
            &Patch::Merge(&label(Value::Null)),
        )
        .await
        .unwrap();
    // The operator notices at the object's next refresh (one interval, ±10 %),
    // and its poller stops at its next turn (one interval more).
    let noticed = interval * 2 + interval / 5 + Duration::from_secs(1);
    nothing_asked(&f, noticed, 3 * interval, "namespace left the scope").await;
}

/// The key id of the reload record on Deployment `name`.
async fn record_key(api: &Api<Deployment>, name: &str) -> Option<String> {
    let record = reload_record(api, name).await?;
    record["key"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_digest_key_rebaselines_without_a_restart() {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    let mut f = Fixture::new("iso-keyrotate").await;
    let (client, ns) = (f.client.clone(), f.ns.name.clone());
    apply(&client, &ns, secret("cfg", &[("password", "1")])).await;
    apply(&client, &ns, workload("Deployment", "app", "cfg", &[])).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let rollouts = || async {
        replica_sets
            .list(&Default::default())
            .await
            .map(|list| list.items.len())
            .unwrap_or(0)
    };
    let old_key = eventually("the first record and ReplicaSet", WAIT, || async {
        let key = record_key(&deployments, "app").await?;
        (rollouts().await == 1).then_some(key)
    })
    .await;

    // The documented rotation: delete the key Secret, restart the operator.
    Api::<Secret>::namespaced(client.clone(), &ns)
        .delete("kvsync-digest-key", &Default::default())
        .await
        .unwrap();
    f.operator = Some(Operator::start(&f.emulator, &ns, &[]).process);
    let new_key = eventually("a record under the new key", WAIT, || async {
        let key = record_key(&deployments, "app").await?;
        (key != old_key).then_some(key)
    })
    .await;
    always(
        "no restart for the new key",
        Duration::from_secs(3),
        || async {
            let template = deployments.get("app").await.unwrap().spec.unwrap().template;
            let restarted = template
                .metadata
                .and_then(|m| m.annotations)
                .is_some_and(|a| a.contains_key("kvsync.io/restartedAt"));
            !restarted && rollouts().await == 1
        },
    )
    .await;
    eprintln!("| digest key rotated ({old_key} → {new_key}) | re-baselined, no restart | — | — |");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_bombs_a_rewrite_chain_and_oversized_template_sources_are_refused() {
    let mut arena = Arena::new("iso-bombs").await;
    let (client, ns) = (arena.f.client.clone(), arena.f.ns.name.clone());
    // Three ConfigMaps of 900 KiB of template text each.
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &ns);
    let text = "{{ pw }}".repeat(900 * 1024 / 8);
    for i in 0..3 {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("tpl-{i}")},
                          "data": {"t": text}});
        configmaps
            .patch(
                &format!("tpl-{i}"),
                &PatchParams::apply("isolation-test").force(),
                &Patch::Apply(&body),
            )
            .await
            .unwrap();
    }
    let pw = || json!([{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]);
    let doubling: Vec<Value> = (0..40)
        .map(|_| json!({"regexp": {"source": "^(.*)$", "target": "$1$1"}}))
        .collect();
    let sources: Vec<Value> = (0..3)
        .map(|i| json!({"configMap": {"name": format!("tpl-{i}"), "items": [{"key": "t"}]}}))
        .collect();
    let cases = [
        (
            "repeat",
            json!({"data": pw(), "target": {"template": {"data": {"k": "{% for i in range(40) %}{{ 'x' * 100000000 }}{% endfor %}"}}}}),
            "TemplateFailed",
        ),
        (
            "indent",
            json!({"data": pw(), "target": {"template": {"data": {"k": "{{ pw | indent(100000000000) }}"}}}}),
            "TemplateFailed",
        ),
        (
            "chain",
            json!({"dataFrom": [{"extract": {"name": "app-config"}, "rewrite": doubling}]}),
            "InvalidSpec",
        ),
        (
            "sources",
            json!({"data": pw(), "target": {"template": {"templateFrom": sources}}}),
            "InvalidSpec",
        ),
    ];
    let mut saw = Vec::new();
    for (name, spec, _) in &cases {
        let mut spec = spec.clone();
        spec["refreshInterval"] = json!("10s");
        arena.f.apply(name, spec).await;
    }
    for (name, _, reason) in &cases {
        let kvs = arena.f.wait_reason(name, reason).await;
        let message = ready(&kvs).unwrap().message.clone();
        assert!(
            arena.f.secret_data(name).await.is_none(),
            "{name}: no Secret"
        );
        saw.push(format!("{name}: {reason} ({message})"));
    }
    assert!(saw[2].contains("longer than 4096 bytes"), "{}", saw[2]);
    assert!(
        saw[3].contains("more than the limit of 1048576"),
        "{}",
        saw[3]
    );
    arena
        .report(
            "template bombs (40 × 'x' * 1e8, indent(1e11)), a 40-step doubling rewrite chain, 2.7 MiB of templateFrom sources",
            &saw.join("; "),
            "rotated-after-bombs",
        )
        .await;
}
