//! Crash safety: the operator is SIGKILLed at random (seeded) moments while
//! Key Vault rotations are being synced and rolled out, then started again.
//! After every restart each Secret matches Key Vault, each Deployment whose
//! Secret changed rolled exactly once (one new ReplicaSet), and none rolled
//! without a change.
//!
//! The seed is printed; `KVSYNC_CRASH_SEED=<seed>` replays a run.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kvsync::api::contract::DIGEST_ANNOTATION;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::*;

const ROUNDS: usize = 20;
/// Operator flags: no Lease (a killed leader would hold it for the lease
/// duration), and a short reload debounce and interval.
const ARGS: &[&str] = &[
    "--leader-election",
    "false",
    "--reload-debounce",
    "300ms",
    "--min-reload-interval",
    "1s",
];
/// Kill moments are drawn from [0, KILL_WINDOW) after the rotations: refresh
/// (1 s), sync, debounce and rollout all fall inside it.
const KILL_WINDOW_MS: u64 = 2500;
/// How long counts must hold after converging in each round (several
/// debounces). A double restart that comes later would still show: the next
/// round's convergence counts every ReplicaSet. Only the last round has no
/// next one, so it holds for [`LAST_QUIET`].
const QUIET: Duration = Duration::from_millis(1200);
/// After the last round: a restarted operator re-decides every workload
/// within one refresh (1 s), one debounce (0.3 s) and one minimum reload
/// interval (1 s) of listing; twice that, so that a double restart the last
/// crash caused cannot come after the window.
const LAST_QUIET: Duration = Duration::from_millis(2 * (1000 + 300 + 1000));

/// Vault secret (and KeyVaultSecret, Secret and Deployment `web-<name>`) names.
const SYNCED: [&str; 3] = ["app-alpha", "app-beta", "db-password"];

/// Every Secret holds what the vault holds and every Deployment has the
/// expected number of ReplicaSets, and that stays so for `quiet`.
async fn converged(
    f: &Fixture,
    values: &BTreeMap<&str, String>,
    rollouts: &BTreeMap<String, usize>,
    quiet: Duration,
) {
    let state = || async {
        let mut secrets = BTreeMap::new();
        for name in SYNCED {
            secrets.insert(name, f.secret_data(name).await?.get("v")?.clone());
        }
        let mut counts = BTreeMap::new();
        for deployment in rollouts.keys() {
            counts.insert(
                deployment.clone(),
                owned::<ReplicaSet>(&f.client, &f.ns.name, deployment).await,
            );
        }
        Some((secrets, counts))
    };
    let expected = (values.clone(), rollouts.clone());
    let deadline = Instant::now() + WAIT;
    loop {
        let now = state().await;
        if now.as_ref() == Some(&expected) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not converged after {WAIT:?}:\n  have {now:?}\n  want {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    always("Secrets and ReplicaSets to stay put", quiet, || async {
        state().await.as_ref() == Some(&expected)
    })
    .await;
}

#[tokio::test]
async fn random_crashes_lose_no_sync_and_roll_each_change_exactly_once() {
    let seed = std::env::var("KVSYNC_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("crash test seed: {seed} (replay with KVSYNC_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let mut f = Fixture::with_operator_args("crash", ARGS).await;
    let mut values: BTreeMap<&str, String> = BTreeMap::new();
    let mut rollouts: BTreeMap<String, usize> = BTreeMap::new();
    for name in SYNCED {
        values.insert(name, format!("{name}-0"));
        f.emulator.set_secret("shop", name, &values[name]).await;
        f.apply(name, json!({"refreshInterval": "1s", "data": [{"secretKey": "v", "remoteRef": {"name": name}}]}))
            .await;
        Workload::deployment(&format!("web-{name}"))
            .annotations(&[("reloader.stakater.com/auto", "true")])
            .env_from(&[name])
            .create(&f.client, &f.ns.name)
            .await;
        rollouts.insert(format!("web-{name}"), 1);
    }
    // A Deployment whose Secret kvsync does not manage: it must never roll.
    let fixed: Secret =
        serde_json::from_value(json!({"metadata": {"name": "fixed"}, "stringData": {"v": "x"}}))
            .unwrap();
    f.secrets()
        .create(&PostParams::default(), &fixed)
        .await
        .unwrap();
    Workload::deployment("web-fixed")
        .annotations(&[("reloader.stakater.com/auto", "true")])
        .env_from(&["fixed"])
        .create(&f.client, &f.ns.name)
        .await;
    rollouts.insert("web-fixed".into(), 1);
    for name in rollouts.keys() {
        eventually(&format!("the digest record on {name}"), WAIT, || async {
            let d = Api::<Deployment>::namespaced(f.client.clone(), &f.ns.name)
                .get(name)
                .await
                .ok()?;
            d.annotations()
                .contains_key(DIGEST_ANNOTATION)
                .then_some(())
        })
        .await;
    }
    converged(&f, &values, &rollouts, QUIET).await;

    let mut kills = Vec::new();
    for round in 1..=ROUNDS {
        let rotated: Vec<&str> = SYNCED
            .into_iter()
            .filter(|_| rng.random_bool(0.6))
            .collect();
        for name in &rotated {
            values.insert(name, format!("{name}-{round}"));
            f.emulator.set_secret("shop", name, &values[name]).await;
            *rollouts.get_mut(&format!("web-{name}")).unwrap() += 1;
        }
        let kill_after = Duration::from_millis(rng.random_range(0..KILL_WINDOW_MS));
        // A fixed observation window: the crash lands at a seeded moment.
        tokio::time::sleep(kill_after).await;
        f.crash_and_restart_operator(ARGS);
        kills.push(kill_after.as_millis());
        // The state may have converged before the kill: the quiet window
        // then proves something only once the new operator is looking.
        reload_listed(f.process()).await;
        let quiet = if round == ROUNDS { LAST_QUIET } else { QUIET };
        converged(&f, &values, &rollouts, quiet).await;
        assert!(
            !f.process().output().contains("panicked"),
            "round {round}: the operator panicked"
        );
    }
    eprintln!(
        "crash test: {ROUNDS} kills at {kills:?} ms after rotating; final ReplicaSets {rollouts:?}; {:.0?} in all",
        started.elapsed()
    );
}
