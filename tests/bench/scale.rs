//! Scale benchmark: kvsync against the real control plane and the emulator,
//! with change detection by listing and with ESO-style GETs, side by side.
//!
//! ```text
//! cargo bench --bench scale -- [--sizes 100,1000] [--vault-secrets 100] [--interval 30s]
//!                              [--unrelated-secrets 0] [--deployments 0] [--samples 10]
//!                              [--fanout 0] [--kv-limits on|off] [--modes list,get,events]
//!                              [--long-interval 10m]
//! ```
//!
//! Modes: `list` and `get` are the change detections; `events` is `list`
//! with an Event Grid source (the emulator's namespace, read with the
//! operator's own workload identity): its vault change→Secret latency is the
//! "change→Secret with events" column, and its idle cycle shows that events
//! add no Key Vault request.
//!
//! For each mode and size N it creates N KeyVaultSecrets
//! over the vault's secrets (round robin) and measures: time until all are
//! Ready, how long applying them took, and each object's time from its apply
//! to Ready; Key Vault requests in an idle refresh cycle and in one where 1 % of
//! the vault secrets changed; Kubernetes writes (Secret and status
//! resourceVersion changes) in the idle cycle; the operator's API-server
//! requests in the idle cycle, watches excluded, per minute (its
//! `kvsync_kubernetes_requests_total`); latency from a vault change to
//! the Secret updated (and to the Deployment template patched when
//! `--deployments` > 0), with and without `kvsync.io/force-sync`; the
//! 429s the vault answered over the whole run; and the operator's peak RSS.
//! With `--fanout M` (largest size only) M more Deployments use one Secret
//! (`kvs-fan`), and the time from forcing its change to all M templates
//! patched is measured; while that fan-out is under way, the one Deployment
//! of another namespace has its Secret changed, and the time until it is
//! restarted is measured too (the reload pacer's fairness: namespaces take
//! turns, so it does not wait behind the fan-out). With `--long-interval D` every second KeyVaultSecret
//! refreshes every D instead (intervals mixed on the same vault), and its
//! change→Secret latency is reported apart. It prints one table and the
//! ratios of the two modes.
//!
//! The emulator enforces Key Vault's documented service limits (4,000
//! transactions per 10 s per vault, 300 secret creates) unless
//! `--kv-limits off`: both modes meet the 429s a real vault would send.
//!
//! ```text
//! cargo bench --bench scale -- --churn 5000 [--cycles 2] [--interval 30s] [--sweep-wait 11m]
//! ```
//!
//! With `--churn N` it measures instead whether the operator's memory follows
//! its objects (list mode, N KeyVaultSecrets over [`CHURN_VAULTS`] vaults ×
//! [`CHURN_IDENTITIES`] identities):
//!
//! ```text
//!  operator started ─▶ probe object Ready, deleted ─▶ RSS "at rest"
//!  ┌─ cycle k (--cycles times) ────────────────────────────────────────────┐
//!  │ create N ─▶ all Ready ─▶ RSS "with N"                                 │
//!  │ delete N ─▶ no KeyVaultSecret, no target Secret ─▶ 5 intervals        │
//!  │ (unrenewed subscriptions expire after 3) ─▶ 1 interval ─▶ RSS         │
//!  │ "deleted" + Key Vault requests in that last interval (pollers: 0)     │
//!  └───────────────────────────────────────────────────────────────────────┘
//!  --sweep-wait (default 11m: the vault layer drops state unused for 10 min,
//!  swept every minute) ─▶ RSS "after sweep"
//! ```
//!
//! RSS that stays above "at rest" but is the same after every cycle is
//! memory the allocator keeps for reuse; RSS that grows by cycle is a leak.

#[path = "../support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kvsync::api::KeyVaultSecret;
use kvsync::api::contract::DIGEST_ANNOTATION;
use kvsync::reload::KEY_SECRET_NAME;
use reqwest::Method;
use serde_json::{Value, json};
use support::*;

struct Options {
    sizes: Vec<usize>,
    vault_secrets: usize,
    interval: Duration,
    unrelated_secrets: usize,
    deployments: usize,
    samples: usize,
    churn: Option<usize>,
    cycles: usize,
    sweep_wait: Duration,
    fanout: usize,
    kv_limits: bool,
    modes: Vec<&'static str>,
    long_interval: Option<Duration>,
}

fn options() -> Options {
    let mut options = Options {
        sizes: vec![100, 1000],
        vault_secrets: 100,
        interval: Duration::from_secs(30),
        unrelated_secrets: 0,
        deployments: 0,
        samples: 10,
        churn: None,
        cycles: 2,
        sweep_wait: Duration::from_secs(660),
        fanout: 0,
        kv_limits: true,
        modes: vec!["list", "get", "events"],
        long_interval: None,
    };
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).map(String::as_str).unwrap_or_default();
        match pair[0].as_str() {
            "--sizes" => {
                options.sizes = value
                    .split(',')
                    .map(|n| n.parse().expect("--sizes 100,1000"))
                    .collect()
            }
            "--vault-secrets" => options.vault_secrets = value.parse().expect("--vault-secrets N"),
            "--interval" => {
                options.interval = humantime::parse_duration(value).expect("--interval 30s")
            }
            "--unrelated-secrets" => {
                options.unrelated_secrets = value.parse().expect("--unrelated-secrets N")
            }
            "--deployments" => options.deployments = value.parse().expect("--deployments N"),
            "--samples" => options.samples = value.parse().expect("--samples N"),
            "--churn" => options.churn = Some(value.parse().expect("--churn N")),
            "--cycles" => options.cycles = value.parse().expect("--cycles N"),
            "--sweep-wait" => {
                options.sweep_wait = humantime::parse_duration(value).expect("--sweep-wait 11m")
            }
            "--fanout" => options.fanout = value.parse().expect("--fanout N"),
            "--kv-limits" => {
                options.kv_limits = match value {
                    "on" => true,
                    "off" => false,
                    _ => panic!("--kv-limits on|off"),
                }
            }
            "--modes" => {
                options.modes = value
                    .split(',')
                    .map(|mode| match mode {
                        "list" => "list",
                        "get" => "get",
                        "events" => "events",
                        _ => panic!("--modes list,get,events"),
                    })
                    .collect()
            }
            "--long-interval" => {
                options.long_interval =
                    Some(humantime::parse_duration(value).expect("--long-interval 10m"))
            }
            other => panic!("unknown option {other}"),
        }
    }
    options
}

/// One row of the result table.
#[derive(Default)]
struct Row {
    mode: &'static str,
    size: usize,
    ready: Duration,
    /// How long applying all of them took (the API server's pace).
    applying: Duration,
    /// Each object's apply answered → first seen Ready.
    apply_to_ready: Vec<Duration>,
    idle_requests: u64,
    change_requests: u64,
    idle_writes: usize,
    secret_latency: Vec<Duration>,
    /// Vault change → Secret updated, in `events` mode.
    event_secret_latency: Vec<Duration>,
    /// The same, for the objects refreshing every `--long-interval`.
    long_secret_latency: Vec<Duration>,
    forced_latency: Vec<Duration>,
    rollout_latency: Vec<Duration>,
    forced_rollout_latency: Vec<Duration>,
    peak_rss_mib: f64,
    /// 429s the vault answered over the whole run.
    throttled: u64,
    /// The operator's API-server requests (watches excluded) per minute of the idle cycle.
    idle_api_requests_per_minute: f64,
    /// Forced change of the shared Secret → every one of the `--fanout` templates patched.
    fanout_rollout: Option<Duration>,
    /// During that fan-out: another namespace's Secret changed → its one
    /// Deployment's template patched.
    fanout_other: Option<Duration>,
}

fn seconds(duration: Option<Duration>) -> String {
    duration.map_or("-".into(), |d| format!("{:.2}s", d.as_secs_f64()))
}

fn percentile(samples: &[Duration], p: f64) -> String {
    if samples.is_empty() {
        return "-".into();
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    format!("{:.2}s", sorted[index].as_secs_f64())
}

fn secret_name(i: usize) -> String {
    format!("s-{i:03}")
}

/// A memory figure of `pid` from /proc (`VmHWM:` peak RSS, `VmRSS:` current), in MiB.
fn rss_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Resource versions of every Secret and KeyVaultSecret in the namespace.
async fn versions(client: &kube::Client, ns: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for s in secrets
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=kvsync"))
        .await
        .unwrap()
    {
        out.insert(
            format!("secret/{}", s.name_any()),
            s.resource_version().unwrap_or_default(),
        );
    }
    let kvs: Api<KeyVaultSecret> = Api::namespaced(client.clone(), ns);
    for k in kvs.list(&ListParams::default()).await.unwrap() {
        out.insert(
            format!("kvs/{}", k.name_any()),
            k.resource_version().unwrap_or_default(),
        );
    }
    out
}

/// 429s in the emulator's counters.
fn throttled(counters: &Value) -> u64 {
    counters["byStatus"]["429"].as_u64().unwrap_or_default()
}

/// The operator's `kvsync_kubernetes_requests_total` by method, watches excluded.
async fn api_requests(operator: &Operator) -> BTreeMap<String, u64> {
    let base = eventually(
        "the metrics address in the log",
        Duration::from_secs(60),
        || async { metrics_url(&operator.process.output()) },
    )
    .await;
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut by_method = BTreeMap::new();
    for line in text.lines().filter(|l| {
        l.starts_with("kvsync_kubernetes_requests_total{") && l.contains(r#"watch="false""#)
    }) {
        let method = line
            .split(r#"method=""#)
            .nth(1)
            .and_then(|m| m.split('"').next());
        let count = line.rsplit(' ').next().and_then(|c| c.parse::<u64>().ok());
        if let (Some(method), Some(count)) = (method, count) {
            *by_method.entry(method.to_owned()).or_default() += count;
        }
    }
    by_method
}

fn vault_requests(counters: &Value) -> u64 {
    counters["byEndpoint"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("vault:"))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum()
}

/// A `refreshInterval` value ("30s", "1m30s").
fn interval_text(interval: Duration) -> String {
    humantime::format_duration(interval)
        .to_string()
        .replace(' ', "")
}

/// A KeyVaultSecret `kvs-{i}` reading `remote` from `vault_url` as `client_id`
/// (client secret in the Secret `creds`, key `clientSecret`).
fn kvs_body(
    i: usize,
    vault_url: &str,
    interval: &str,
    client_id: &str,
    creds: &str,
    remote: &str,
) -> Value {
    json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "KeyVaultSecret", "metadata": {"name": format!("kvs-{i}")},
        "spec": {"vaultUrl": vault_url, "refreshInterval": interval,
            "auth": {"clientSecret": {"tenantId": TENANT, "clientId": client_id, "secretRef": {"name": creds, "key": "clientSecret"}}},
            "data": [{"secretKey": "value", "remoteRef": {"name": remote}}]}})
}

/// Server-side applies `body(i)` for every `i`, 16 at a time; returns when
/// each apply was answered, by object name.
async fn apply_all(
    api: &Api<KeyVaultSecret>,
    range: std::ops::Range<usize>,
    body: impl Fn(usize) -> Value,
) -> HashMap<String, Instant> {
    stream::iter(range)
        .map(|i| {
            let api = api.clone();
            let body = body(i);
            async move {
                let name = format!("kvs-{i}");
                api.patch(&name, &PatchParams::apply("bench"), &Patch::Apply(&body))
                    .await
                    .unwrap();
                (name, Instant::now())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Waits until `size` KeyVaultSecrets of the namespace are `Ready=True`,
/// by watching them (listing 10,000 objects every 100 ms would slow the API
/// server down for the operator); returns when each was first seen Ready.
async fn wait_all_ready(api: &Api<KeyVaultSecret>, size: usize) -> HashMap<String, Instant> {
    let mut ready = std::collections::HashSet::new();
    let mut first_ready = HashMap::new();
    let started = Instant::now();
    let mut reported = started;
    let mut objects = std::pin::pin!(
        watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .applied_objects()
    );
    let all_ready = async {
        while let Some(Ok(kvs)) = objects.next().await {
            let is_ready = kvs.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if is_ready {
                first_ready
                    .entry(kvs.name_any())
                    .or_insert_with(Instant::now);
                ready.insert(kvs.name_any());
            } else {
                ready.remove(&kvs.name_any());
            }
            if ready.len() == size {
                return;
            }
            if reported.elapsed() >= Duration::from_secs(10) {
                reported = Instant::now();
                eprintln!("  {:.0?}: {}/{size} Ready", started.elapsed(), ready.len());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(600), all_ready)
        .await
        .expect("every KeyVaultSecret Ready within 600 s");
    first_ready
}

/// An object a latency measurement watches.
enum Changed {
    Secret(Box<Secret>),
    Deployment(Box<Deployment>),
}

async fn run_one(options: &Options, mode: &'static str, size: usize) -> Row {
    let client = client().await;
    let ns = TestNamespace::new(&client, &format!("bench-{mode}-{size}")).await;
    let secrets: Vec<Value> = (0..options.vault_secrets)
        .map(|i| json!({"name": secret_name(i), "value": format!("v0-{i}")}))
        .collect();
    let mut seed = json!({
        "vaults": [{"name": "shop", "secrets": secrets}],
        "apps": [{"tenantId": TENANT, "clientId": SECRET_APP, "clientSecret": SECRET_APP_PASSWORD,
                  "access": [{"vault": "shop", "secrets": ["*"]}]}]
    });
    if options.kv_limits {
        seed["serviceLimits"] = json!({});
    }
    let events = mode == "events";
    let identity_dir = tempfile::tempdir().unwrap();
    if events {
        let (issuer, jwks) = cluster_issuer(&client, identity_dir.path()).await;
        seed["apps"]
            .as_array_mut()
            .unwrap()
            .push(events::operator_app(&issuer, &ns.name));
        seed["issuers"] = json!([{"issuer": issuer, "jwksFile": jwks}]);
        seed["eventGrid"] = events::event_grid_seed(json!([]));
    }
    let emulator = Emulator::start(seed).await;
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let creds: Secret = serde_json::from_value(
        json!({"metadata": {"name": "kv-creds"}, "stringData": {"clientSecret": SECRET_APP_PASSWORD}}),
    )
    .unwrap();
    secret_api
        .create(&PostParams::default(), &creds)
        .await
        .unwrap();

    // Unrelated Secrets (the operator must not keep them in memory) and
    // Deployments, for the largest size only: they are there to measure memory.
    let largest = options.sizes.iter().max() == Some(&size);
    let unrelated = if largest {
        options.unrelated_secrets
    } else {
        0
    };
    stream::iter(0..unrelated)
        .for_each_concurrent(16, |i| {
            let api = secret_api.clone();
            async move {
                let s: Secret = serde_json::from_value(
                    json!({"metadata": {"name": format!("unrelated-{i}")}, "stringData": {"k": "x".repeat(256)}}),
                )
                .unwrap();
                api.create(&PostParams::default(), &s).await.unwrap();
            }
        })
        .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment_count = if largest {
        options.deployments.min(size)
    } else {
        options.deployments.min(size).min(100)
    };
    create_deployments(&deployments, 0..deployment_count, |i| {
        (format!("app-{i}"), format!("kvs-{i}"))
    })
    .await;
    let fanout = if largest { options.fanout } else { 0 };
    create_deployments(&deployments, 0..fanout, |i| {
        (format!("fan-{i}"), FANOUT_SECRET.to_owned())
    })
    .await;
    // Another namespace, with one Deployment restarted during the fan-out.
    let other = TestNamespace::new(&client, &format!("bench-{mode}-{size}-other")).await;
    if fanout > 0 {
        set_solo_secret(&client, &other.name, "1").await;
        let other_deployments: Api<Deployment> = Api::namespaced(client.clone(), &other.name);
        create_deployments(&other_deployments, 0..1, |_| {
            (SOLO.to_owned(), SOLO.to_owned())
        })
        .await;
    }

    eprintln!("{mode} {size}: cluster populated");
    let interval = interval_text(options.interval);
    let long_interval = options.long_interval.map(interval_text);
    let interval_of = |i: usize| match &long_interval {
        Some(long) if i % 2 == 1 => long.clone(),
        _ => interval.clone(),
    };
    let namespaces = format!("{},{}", ns.name, other.name);
    let detection = if mode == "get" { "get" } else { "list" };
    let mut flags: Vec<String> = ["--change-detection", detection, "--namespaces", &namespaces]
        .map(str::to_owned)
        .to_vec();
    let mut env = Vec::new();
    if events {
        let token = events::operator_token(&client, &ns.name, identity_dir.path()).await;
        env = events::operator_env(&token);
        flags.extend(events::event_flags(
            &emulator,
            &[events::event_grid_source(&emulator)],
        ));
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let operator = Operator::start_with_env(&emulator, &ns.name, &flags, &env);
    let kvs_api: Api<KeyVaultSecret> = Api::namespaced(client.clone(), &ns.name);
    let started = Instant::now();
    // Watching from before the first apply, so each object's Ready is timed
    // when it happens (not when a watch started after the applies lists it).
    let apply = async {
        let applied = apply_all(&kvs_api, 0..size, |i| {
            kvs_body(
                i,
                &emulator.vault_url("shop"),
                &interval_of(i),
                SECRET_APP,
                "kv-creds",
                &secret_name(i % options.vault_secrets),
            )
        })
        .await;
        (applied, started.elapsed())
    };
    let ((applied, applying), first_ready) = futures::join!(apply, wait_all_ready(&kvs_api, size));
    eprintln!(
        "{mode} {size}: all Ready {:.1?} after the first; the operator's API requests so far (watches excluded): {:?}",
        started.elapsed(),
        api_requests(&operator).await
    );
    let mut row = Row {
        mode,
        size,
        ready: started.elapsed(),
        applying,
        apply_to_ready: applied
            .iter()
            .map(|(name, at)| first_ready[name].saturating_duration_since(*at))
            .collect(),
        ..Default::default()
    };
    // A change the reload stage sees before a Deployment's first record is
    // its baseline, not a restart: measure only once every record is written.
    wait_recorded(&deployments, "app-").await;
    eprintln!(
        "{mode} {size}: every Deployment recorded {:.1?} after the first KeyVaultSecret",
        started.elapsed()
    );

    // Let first-sync effects settle for one refresh cycle: a value first read
    // in the same second as its last update is read once more (Key Vault's
    // `updated` has one-second resolution), and reload baselines are written.
    tokio::time::sleep(options.interval.mul_f64(1.1)).await;
    let before = versions(&client, &ns.name).await;
    row.throttled += throttled(&emulator.counters().await);
    emulator.control(Method::POST, "counters/reset", None).await;
    let api_before = api_requests(&operator).await;
    let idle_start = Instant::now();
    tokio::time::sleep(options.interval.mul_f64(1.1)).await;
    let idle_api_requests =
        api_requests(&operator).await.values().sum::<u64>() - api_before.values().sum::<u64>();
    row.idle_api_requests_per_minute =
        idle_api_requests as f64 * 60.0 / idle_start.elapsed().as_secs_f64();
    let counters = emulator.counters().await;
    row.idle_requests = vault_requests(&counters);
    row.throttled += throttled(&counters);
    let after = versions(&client, &ns.name).await;
    row.idle_writes = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .count();

    // One cycle in which 1 % of the vault secrets change.
    let changed = (options.vault_secrets / 100).max(1);
    emulator.control(Method::POST, "counters/reset", None).await;
    for i in 0..changed {
        emulator
            .set_secret("shop", &secret_name(i), &format!("v1-{i}"))
            .await;
    }
    tokio::time::sleep(options.interval.mul_f64(1.1)).await;
    row.change_requests = vault_requests(&emulator.counters().await);

    // Latency: vault change → Secret updated (every KeyVaultSecret using it) → Deployment patched.
    let rotated: Vec<usize> =
        (changed..changed + options.samples.min(options.vault_secrets - changed)).collect();
    let templates_before = template_annotations(&deployments, "app-").await;
    let rotation_start = Instant::now();
    for &i in &rotated {
        emulator
            .set_secret("shop", &secret_name(i), &format!("v2-{i}"))
            .await;
    }
    let mut pending_secrets: BTreeMap<String, String> = (0..size)
        .filter(|k| rotated.contains(&(k % options.vault_secrets)))
        .map(|k| {
            (
                format!("kvs-{k}"),
                format!("v2-{}", k % options.vault_secrets),
            )
        })
        .collect();
    let mut pending_rollouts: Vec<String> = pending_secrets
        .keys()
        .filter_map(|k| k.strip_prefix("kvs-"))
        .filter(|i| i.parse::<usize>().unwrap() < deployment_count)
        .map(|i| format!("app-{i}"))
        .collect();
    let longest = options
        .long_interval
        .unwrap_or_default()
        .max(options.interval);
    let deadline = rotation_start + longest + options.interval * 2 + Duration::from_secs(10);
    // Watched, not listed: a list of every Secret and Deployment every 100 ms
    // would load the API server more than the operator does at 10,000.
    let secret_changes = watcher(
        secret_api.clone(),
        watcher::Config::default().labels("app.kubernetes.io/managed-by=kvsync"),
    )
    .default_backoff()
    .applied_objects()
    .map(|secret| secret.map(|s| Changed::Secret(Box::new(s))));
    let deployment_changes = watcher(deployments.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .map(|deployment| deployment.map(|d| Changed::Deployment(Box::new(d))));
    let mut changes = std::pin::pin!(stream::select(secret_changes, deployment_changes));
    while !pending_secrets.is_empty() || !pending_rollouts.is_empty() {
        let Ok(Some(Ok(changed))) = tokio::time::timeout_at(deadline.into(), changes.next()).await
        else {
            break;
        };
        match changed {
            Changed::Secret(secret) => {
                let name = secret.name_any();
                let value = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get("value"))
                    .map(|v| String::from_utf8_lossy(&v.0).into_owned());
                if pending_secrets
                    .get(&name)
                    .is_some_and(|want| Some(want) == value.as_ref())
                {
                    pending_secrets.remove(&name);
                    let long = options.long_interval.is_some()
                        && name
                            .strip_prefix("kvs-")
                            .and_then(|i| i.parse::<usize>().ok())
                            .is_some_and(|i| i % 2 == 1);
                    let latencies = if long {
                        &mut row.long_secret_latency
                    } else if events {
                        &mut row.event_secret_latency
                    } else {
                        &mut row.secret_latency
                    };
                    latencies.push(rotation_start.elapsed());
                }
            }
            Changed::Deployment(deployment) => {
                let name = deployment.name_any();
                let template = deployment
                    .spec
                    .and_then(|s| s.template.metadata)
                    .and_then(|m| m.annotations);
                if pending_rollouts.contains(&name)
                    && templates_before.get(&name) != Some(&template)
                {
                    pending_rollouts.retain(|n| *n != name);
                    row.rollout_latency.push(rotation_start.elapsed());
                }
            }
        }
    }
    eprintln!(
        "{mode} {size}: {} Secrets and {} templates not changed by the deadline",
        pending_secrets.len(),
        pending_rollouts.len()
    );

    // With force-sync: rotate, then annotate the KeyVaultSecrets using the secret.
    for sample in 0..options.samples.min(5) {
        let i = (sample + 50) % options.vault_secrets;
        emulator
            .set_secret("shop", &secret_name(i), &format!("v3-{i}"))
            .await;
        let target = format!("kvs-{i}");
        let start = Instant::now();
        let force =
            json!({"metadata": {"annotations": {"kvsync.io/force-sync": format!("{sample}")}}});
        kvs_api
            .patch(&target, &PatchParams::default(), &Patch::Merge(&force))
            .await
            .unwrap();
        let want = format!("v3-{i}");
        let reached = eventually("the forced value", options.interval * 2, || async {
            let secret = secret_api.get(&target).await.ok()?;
            let value = secret
                .data?
                .get("value")
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())?;
            (value == want).then(|| start.elapsed())
        })
        .await;
        row.forced_latency.push(reached);
        let workload = format!("app-{i}");
        if i < deployment_count {
            let before = templates_before.get(&workload).cloned();
            let rolled = eventually("the forced rollout", options.interval * 2, || async {
                let now = deployments.get(&workload).await.ok()?;
                let annotations = now
                    .spec
                    .and_then(|s| s.template.metadata)
                    .and_then(|m| m.annotations);
                (Some(annotations) != before).then(|| start.elapsed())
            })
            .await;
            row.forced_rollout_latency.push(rolled);
        }
    }
    if fanout > 0 {
        let namespaces = (ns.name.as_str(), other.name.as_str());
        let (all, other) = fanout_rollout(&emulator, &client, namespaces, &interval, fanout).await;
        row.fanout_rollout = Some(all);
        row.fanout_other = Some(other);
    }
    row.throttled += throttled(&emulator.counters().await);
    row.peak_rss_mib = rss_mib(operator.process.pid(), "VmHWM:");
    row
}

/// The Secret the `--fanout` Deployments use, and the vault secret it holds.
const FANOUT_SECRET: &str = "kvs-fan";
const FANOUT_VAULT_SECRET: &str = "fan";
/// The other namespace's Secret and the one Deployment using it.
const SOLO: &str = "solo";

async fn set_solo_secret(client: &kube::Client, namespace: &str, value: &str) {
    let body = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SOLO}, "stringData": {"k": value}});
    Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(
            SOLO,
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
}

/// Creates Deployments (no replicas, `reloader.stakater.com/auto`) named and
/// using the Secret `name_and_secret(i)` says, 16 at a time.
async fn create_deployments(
    api: &Api<Deployment>,
    range: std::ops::Range<usize>,
    name_and_secret: impl Fn(usize) -> (String, String),
) {
    stream::iter(range)
        .for_each_concurrent(16, |i| {
            let api = api.clone();
            let (name, secret) = name_and_secret(i);
            async move {
                let d: Deployment = serde_json::from_value(
                    Workload::deployment(&name)
                        .annotations(&[("reloader.stakater.com/auto", "true")])
                        .env_from(&[&secret])
                        .replicas(0)
                        .body(),
                )
                .unwrap();
                api.create(&PostParams::default(), &d).await.unwrap();
            }
        })
        .await;
}

/// Waits until every Deployment named `prefix…` carries kvsync's reload
/// record and no record has changed for two seconds (the records follow the
/// Secrets' appearance; a Deployment whose Secret does not exist yet, like the
/// fan-out ones before their KeyVaultSecret, is recorded when it appears).
/// Records, not resourceVersions: kube-controller-manager writes the status
/// of thousands of new Deployments at its own pace (20 requests/s by default)
/// for minutes after they were created.
async fn wait_recorded(api: &Api<Deployment>, prefix: &str) {
    let snapshot = || async {
        let list = api.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .filter(|d| d.name_any().starts_with(prefix))
            .map(|d| {
                let record = d.annotations().get(DIGEST_ANNOTATION)?;
                Some((d.name_any(), record.clone()))
            })
            .collect::<Option<BTreeMap<_, _>>>()
    };
    eventually(
        "every Deployment recorded and still",
        Duration::from_secs(600),
        || async {
            let before = snapshot().await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            (snapshot().await? == before).then_some(())
        },
    )
    .await;
}

/// The pod template annotations of the Deployments whose names start with `prefix`.
async fn template_annotations(
    api: &Api<Deployment>,
    prefix: &str,
) -> BTreeMap<String, Option<BTreeMap<String, String>>> {
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|d| d.name_any().starts_with(prefix))
        .map(|d| {
            let annotations = d
                .spec
                .and_then(|s| s.template.metadata)
                .and_then(|m| m.annotations);
            (d.metadata.name.unwrap_or_default(), annotations)
        })
        .collect()
}

/// One Secret used by `fanout` Deployments (`fan-*`, created before the
/// operator started): its KeyVaultSecret is made Ready, left for one refresh
/// cycle (the reload stage records its baseline), then its vault secret
/// changes and the change is forced. Once the first template is patched,
/// the Secret of the other namespace's one Deployment changes. Returns the
/// time until every fan-out template is patched, and the time from that other
/// change until its Deployment is patched (the debounce included).
async fn fanout_rollout(
    emulator: &Emulator,
    client: &kube::Client,
    (namespace, other): (&str, &str),
    interval: &str,
    fanout: usize,
) -> (Duration, Duration) {
    emulator
        .set_secret("shop", FANOUT_VAULT_SECRET, "fan-v0")
        .await;
    let kvs_api: Api<KeyVaultSecret> = Api::namespaced(client.clone(), namespace);
    let mut body = kvs_body(
        0,
        &emulator.vault_url("shop"),
        interval,
        SECRET_APP,
        "kv-creds",
        FANOUT_VAULT_SECRET,
    );
    body["metadata"]["name"] = json!(FANOUT_SECRET);
    kvs_api
        .patch(
            FANOUT_SECRET,
            &PatchParams::apply("bench"),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
    eventually(
        "the fan-out KeyVaultSecret Ready",
        Duration::from_secs(120),
        || async {
            let kvs = kvs_api.get(FANOUT_SECRET).await.ok()?;
            ready(&kvs)
                .is_some_and(|c| c.status == "True")
                .then_some(())
        },
    )
    .await;
    let interval = humantime::parse_duration(interval).unwrap();
    tokio::time::sleep(interval.mul_f64(1.1)).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let other_deployments: Api<Deployment> = Api::namespaced(client.clone(), other);
    wait_recorded(&deployments, "fan-").await;
    wait_recorded(&other_deployments, SOLO).await;
    let before = template_annotations(&deployments, "fan-").await;
    let solo_before = template_annotations(&other_deployments, SOLO).await;
    emulator
        .set_secret("shop", FANOUT_VAULT_SECRET, "fan-v1")
        .await;
    let start = Instant::now();
    let force = json!({"metadata": {"annotations": {"kvsync.io/force-sync": "fan"}}});
    kvs_api
        .patch(
            FANOUT_SECRET,
            &PatchParams::default(),
            &Patch::Merge(&force),
        )
        .await
        .unwrap();
    let rolled = || async {
        let now = template_annotations(&deployments, "fan-").await;
        now.iter()
            .filter(|(name, a)| before.get(*name) != Some(a))
            .count()
    };
    eventually(
        "the fan-out under way",
        Duration::from_secs(600),
        || async { (rolled().await > 0).then_some(()) },
    )
    .await;
    set_solo_secret(client, other, "2").await;
    let solo_changed = Instant::now();
    let other_restarted = eventually(
        "the other namespace's Deployment restarted",
        Duration::from_secs(600),
        || async {
            let now = template_annotations(&other_deployments, SOLO).await;
            (now != solo_before).then(|| solo_changed.elapsed())
        },
    )
    .await;
    let all = eventually(
        &format!("all {fanout} fan-out templates patched"),
        Duration::from_secs(600),
        || async {
            // A list of every Deployment at most once a second (±1 s on a ~50 s figure).
            tokio::time::sleep(Duration::from_secs(1)).await;
            (rolled().await == fanout).then(|| start.elapsed())
        },
    )
    .await;
    (all, other_restarted)
}

/// Vaults and identities the churn objects are spread over (round robin):
/// every (vault, identity) pair has a listing and vault-layer state of its own.
const CHURN_VAULTS: usize = 4;
const CHURN_IDENTITIES: usize = 2;

fn churn_vault(vault: usize) -> String {
    format!("churn{vault}")
}

fn churn_client_id(identity: usize) -> String {
    format!("00000000-0000-0000-0000-{identity:012}")
}

fn churn_password(identity: usize) -> String {
    format!("churn-client-secret-{identity}")
}

/// The Secret holding identity `identity`'s client secret.
fn churn_creds(identity: usize) -> String {
    format!("kv-creds-{identity}")
}

/// The emulator's seed: [`CHURN_VAULTS`] vaults of `vault_secrets` secrets,
/// each readable by all [`CHURN_IDENTITIES`] identities.
fn churn_seed(vault_secrets: usize) -> Value {
    let secrets: Vec<Value> = (0..vault_secrets)
        .map(|i| json!({"name": secret_name(i), "value": format!("v0-{i}")}))
        .collect();
    let vaults: Vec<Value> = (0..CHURN_VAULTS)
        .map(|v| json!({"name": churn_vault(v), "secrets": secrets}))
        .collect();
    let access: Vec<Value> = (0..CHURN_VAULTS)
        .map(|v| json!({"vault": churn_vault(v), "secrets": ["*"]}))
        .collect();
    let apps: Vec<Value> = (0..CHURN_IDENTITIES)
        .map(|a| json!({"tenantId": TENANT, "clientId": churn_client_id(a), "clientSecret": churn_password(a), "access": access}))
        .collect();
    json!({"vaults": vaults, "apps": apps})
}

/// Creates the identities' credential Secrets in `namespace`.
async fn create_churn_credentials(client: &kube::Client, namespace: &str) {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for identity in 0..CHURN_IDENTITIES {
        let creds: Secret = serde_json::from_value(json!({
            "metadata": {"name": churn_creds(identity)},
            "stringData": {"clientSecret": churn_password(identity)}
        }))
        .unwrap();
        api.create(&PostParams::default(), &creds).await.unwrap();
    }
}

/// Deletes every KeyVaultSecret of `namespace`, then the Secrets kvsync
/// created for them (the bench does what the garbage collector would do
/// through their owner references: the local controller-manager's collector
/// deletes only ~7 a second), and waits until none of either is left.
async fn delete_all(client: &kube::Client, namespace: &str) {
    let kvs_api: Api<KeyVaultSecret> = Api::namespaced(client.clone(), namespace);
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    // A loaded etcd answers a mass delete with "request timed out" now and
    // then; the bench asks again rather than losing the run.
    eventually(
        "the KeyVaultSecrets deleted",
        Duration::from_secs(300),
        || async {
            kvs_api
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await
                .ok()
        },
    )
    .await;
    let targets = ListParams::default()
        .labels("app.kubernetes.io/managed-by=kvsync")
        .fields(&format!("metadata.name!={KEY_SECRET_NAME}"));
    eventually(
        "the managed Secrets deleted",
        Duration::from_secs(300),
        || async {
            secret_api
                .delete_collection(&DeleteParams::default(), &targets)
                .await
                .ok()
        },
    )
    .await;
    eventually(
        "no KeyVaultSecret and no managed Secret left",
        Duration::from_secs(900),
        || async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let one = ListParams::default().limit(1);
            let kvs_left = !kvs_api.list(&one).await.ok()?.items.is_empty();
            let managed = ListParams::default().labels("app.kubernetes.io/managed-by=kvsync");
            let targets_left = secret_api
                .list(&managed)
                .await
                .ok()?
                .items
                .iter()
                .any(|s| s.annotations().contains_key("kvsync.io/owner"));
            (!kvs_left && !targets_left).then_some(())
        },
    )
    .await;
}

/// The operator's memory at one point of the churn run.
struct Measurement {
    stage: String,
    objects: usize,
    took: Duration,
    rss_mib: f64,
    peak_rss_mib: f64,
    vault_requests: Option<u64>,
}

impl Measurement {
    fn now(stage: String, objects: usize, took: Duration, pid: u32) -> Self {
        let rss = rss_mib(pid, "VmRSS:");
        eprintln!("== {stage}: RSS {rss:.1} MiB");
        Measurement {
            stage,
            objects,
            took,
            rss_mib: rss,
            peak_rss_mib: rss_mib(pid, "VmHWM:"),
            vault_requests: None,
        }
    }
}

/// The churn run (see the module docs): the operator's RSS at rest, with
/// `size` objects, after deleting them, per cycle, and after the sweep.
async fn churn(options: &Options, size: usize) -> Vec<Measurement> {
    let client = client().await;
    let ns = TestNamespace::new(&client, &format!("churn-{size}")).await;
    let emulator = Emulator::start(churn_seed(options.vault_secrets)).await;
    create_churn_credentials(&client, &ns.name).await;
    let interval = interval_text(options.interval);
    let body = |i: usize| {
        let identity = (i / CHURN_VAULTS) % CHURN_IDENTITIES;
        kvs_body(
            i,
            &emulator.vault_url(&churn_vault(i % CHURN_VAULTS)),
            &interval,
            &churn_client_id(identity),
            &churn_creds(identity),
            &secret_name(i % options.vault_secrets),
        )
    };
    let operator = Operator::start(&emulator, &ns.name, &["--change-detection", "list"]);
    let pid = operator.process.pid();
    let kvs_api: Api<KeyVaultSecret> = Api::namespaced(client.clone(), &ns.name);
    let mut rows = Vec::new();

    // At rest: one probe object made Ready and deleted proves that the
    // operator has listed and serves.
    let started = Instant::now();
    apply_all(&kvs_api, 0..1, &body).await;
    wait_all_ready(&kvs_api, 1).await;
    delete_all(&client, &ns.name).await;
    rows.push(Measurement::now(
        "at rest (after one probe object)".into(),
        0,
        started.elapsed(),
        pid,
    ));

    for cycle in 1..=options.cycles {
        eprintln!("== churn cycle {cycle}: {size} KeyVaultSecrets");
        let started = Instant::now();
        apply_all(&kvs_api, 0..size, &body).await;
        wait_all_ready(&kvs_api, size).await;
        rows.push(Measurement::now(
            format!("cycle {cycle}: all Ready"),
            size,
            started.elapsed(),
            pid,
        ));
        let started = Instant::now();
        delete_all(&client, &ns.name).await;
        let took = started.elapsed();
        // Subscriptions nobody renews expire after three intervals; the
        // pollers list at most once more. Then one interval must be quiet.
        tokio::time::sleep(options.interval * 5).await;
        emulator.control(Method::POST, "counters/reset", None).await;
        tokio::time::sleep(options.interval).await;
        rows.push(Measurement {
            vault_requests: Some(vault_requests(&emulator.counters().await)),
            ..Measurement::now(
                format!("cycle {cycle}: all deleted, + 6 intervals"),
                0,
                took,
                pid,
            )
        });
    }

    if !options.sweep_wait.is_zero() {
        eprintln!(
            "== waiting {} for the vault layer's sweep",
            humantime::format_duration(options.sweep_wait)
        );
        emulator.control(Method::POST, "counters/reset", None).await;
        tokio::time::sleep(options.sweep_wait).await;
        rows.push(Measurement {
            vault_requests: Some(vault_requests(&emulator.counters().await)),
            ..Measurement::now(
                format!(
                    "after the sweep (+ {})",
                    humantime::format_duration(options.sweep_wait)
                ),
                0,
                options.sweep_wait,
                pid,
            )
        });
    }
    rows
}

fn print_churn(options: &Options, size: usize, rows: &[Measurement]) {
    println!(
        "\nchurn: {size} KeyVaultSecrets over {CHURN_VAULTS} vaults × {CHURN_IDENTITIES} identities ({} vault secrets each), refreshInterval {}, list mode\n",
        options.vault_secrets,
        humantime::format_duration(options.interval)
    );
    println!(
        "| stage | KeyVaultSecrets | took (to Ready / to gone / wait) | RSS | RSS − at rest | peak RSS | KV requests in the last interval / the wait |"
    );
    println!("|---|---|---|---|---|---|---|");
    let rest = rows.first().map_or(0.0, |r| r.rss_mib);
    for r in rows {
        println!(
            "| {} | {} | {:.1}s | {:.1} MiB | {:+.1} MiB | {:.1} MiB | {} |",
            r.stage,
            r.objects,
            r.took.as_secs_f64(),
            r.rss_mib,
            r.rss_mib - rest,
            r.peak_rss_mib,
            r.vault_requests.map_or("-".into(), |n| n.to_string())
        );
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let options = options();
    if let Some(size) = options.churn {
        let rows = churn(&options, size).await;
        print_churn(&options, size, &rows);
        return;
    }
    let mut rows = Vec::new();
    for &size in &options.sizes {
        for &mode in &options.modes {
            eprintln!(
                "== {mode} × {size} KeyVaultSecrets over {} vault secrets",
                options.vault_secrets
            );
            rows.push(run_one(&options, mode, size).await);
        }
    }
    println!(
        "\nrefreshInterval {}{}, {} vault secrets; largest size also with {} unrelated Secrets, {} Deployments (others ≤ 100) and {} more sharing one Secret; Key Vault limits {}\n",
        humantime::format_duration(options.interval),
        options.long_interval.map_or(String::new(), |long| format!(
            " (every second object {}: its change→Secret apart)",
            humantime::format_duration(long)
        )),
        options.vault_secrets,
        options.unrelated_secrets,
        options.deployments,
        options.fanout,
        if options.kv_limits { "on" } else { "off" }
    );
    println!(
        "| mode | KeyVaultSecrets | all Ready | applying all | apply→Ready p50/p99/max | KV requests, idle cycle | KV requests, 1 % changed | k8s writes, idle cycle | change→Secret p50/p99 | change→Secret with events p50/p99 | long-interval change→Secret p50/p99 | forced→Secret p50/p99 | change→template p50/p99 | forced→template p50/p99 | peak RSS | KV 429s | API requests / idle min | forced→all fan-out templates | other namespace's change→template during the fan-out (debounce included) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1}s | {:.1}s | {}/{}/{} | {} | {} | {} | {}/{} | {}/{} | {}/{} | {}/{} | {}/{} | {}/{} | {:.1} MiB | {} | {:.1} | {} | {} |",
            r.mode,
            r.size,
            r.ready.as_secs_f64(),
            r.applying.as_secs_f64(),
            percentile(&r.apply_to_ready, 0.5),
            percentile(&r.apply_to_ready, 0.99),
            percentile(&r.apply_to_ready, 1.0),
            r.idle_requests,
            r.change_requests,
            r.idle_writes,
            percentile(&r.secret_latency, 0.5),
            percentile(&r.secret_latency, 0.99),
            percentile(&r.event_secret_latency, 0.5),
            percentile(&r.event_secret_latency, 0.99),
            percentile(&r.long_secret_latency, 0.5),
            percentile(&r.long_secret_latency, 0.99),
            percentile(&r.forced_latency, 0.5),
            percentile(&r.forced_latency, 0.99),
            percentile(&r.rollout_latency, 0.5),
            percentile(&r.rollout_latency, 0.99),
            percentile(&r.forced_rollout_latency, 0.5),
            percentile(&r.forced_rollout_latency, 0.99),
            r.peak_rss_mib,
            r.throttled,
            r.idle_api_requests_per_minute,
            seconds(r.fanout_rollout),
            seconds(r.fanout_other),
        );
    }
    println!();
    for &size in &options.sizes {
        let row = |mode: &str| rows.iter().find(|r| r.size == size && r.mode == mode);
        if let Some(events) = row("events") {
            println!(
                "N={size}: idle-cycle Key Vault requests with events = {}{}",
                events.idle_requests,
                row("list").map_or(String::new(), |list| format!(
                    " (list without events: {})",
                    list.idle_requests
                ))
            );
        }
        if let (Some(list), Some(get)) = (row("list"), row("get")) {
            println!(
                "N={}: idle-cycle Key Vault requests get/list = {}/{} = {:.0}x; 1%-change cycle {}/{} = {:.0}x",
                list.size,
                get.idle_requests,
                list.idle_requests,
                get.idle_requests as f64 / list.idle_requests.max(1) as f64,
                get.change_requests,
                list.change_requests,
                get.change_requests as f64 / list.change_requests.max(1) as f64
            );
        }
    }
}
