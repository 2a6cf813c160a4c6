//! The kube-apiserver restarts under a running operator. This test brings up a
//! control plane of its own (the restart must not disturb other tests) and so
//! lives alone in its test binary.

mod support;

use std::time::{Duration, Instant};

use kvsync::cluster::{WATCH_BACKOFF_MAX, WATCH_START_TIMEOUT};
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_keeps_working_across_an_apiserver_restart() {
    // Declared first so it is dropped last: the namespace and processes go first.
    let plane = PrivatePlane::up();
    let mut f = Fixture::new("apirestart").await;
    f.synced_db("1s").await;

    // The vault changes while the API server is away: the operator cannot
    // write it then, and must once the API server is back.
    let restart = Instant::now();
    std::thread::scope(|scope| {
        let restarting = scope.spawn(|| plane.restart_apiserver());
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                eventually(
                    "the API server to go away",
                    Duration::from_secs(20),
                    || async { f.secrets().get_opt("db").await.is_err().then_some(()) },
                )
                .await;
                f.emulator
                    .set_secret("shop", "db-password", "rotated-while-apiserver-down")
                    .await;
            })
        });
        restarting.join().unwrap();
    });
    let downtime = restart.elapsed();
    eventually(
        "the rotation after the restart",
        Duration::from_secs(60),
        || async {
            (f.secret_data("db").await?.get("pw")? == "rotated-while-apiserver-down").then_some(())
        },
    )
    .await;
    eprintln!(
        "apiserver restart took {downtime:.1?}; rotation synced {:.1?} after it was back",
        restart.elapsed() - downtime
    );

    // Watches were re-established: a new KeyVaultSecret and a new rotation
    // are synced. Precondition: the API server serves KeyVaultSecret watches
    // again. The operator's KeyVaultSecret watch may still be in a request
    // the restarting server accepted and never answers: it is given up after
    // WATCH_START_TIMEOUT, retried after one wait (≤ 2 × WATCH_BACKOFF_MAX,
    // jittered); its 410 Gone relists at once, and the object is synced from
    // the relist (5 s for that and the sync on a loaded machine).
    let watches_served = Instant::now();
    eventually(
        "the API server to serve KeyVaultSecret watches",
        Duration::from_secs(90),
        || async { serves_watches(&f).await.then_some(()) },
    )
    .await;
    eprintln!(
        "KeyVaultSecret watches served again {:.1?} after the rotation was synced",
        watches_served.elapsed()
    );
    f.apply("later", json!({"refreshInterval": "1s", "data": [{"secretKey": "cfg", "remoteRef": {"name": "app-config", "property": "user"}}]}))
        .await;
    let applied = Instant::now();
    let kvs = f.kvs_api();
    let budget = WATCH_START_TIMEOUT + 2 * WATCH_BACKOFF_MAX + Duration::from_secs(5);
    eventually("later to be Synced", budget, || async {
        let kvs = kvs.get("later").await.ok()?;
        (ready(&kvs)?.reason == "Synced").then_some(())
    })
    .await;
    eprintln!(
        "a KeyVaultSecret applied after the restart was Synced {:.1?} after it was applied",
        applied.elapsed()
    );
    assert_eq!(f.secret_data("later").await.unwrap()["cfg"], "app");
    f.emulator
        .set_secret("shop", "db-password", "rotated-after-restart")
        .await;
    eventually("a rotation after the restart", WAIT, || async {
        (f.secret_data("db").await?.get("pw")? == "rotated-after-restart").then_some(())
    })
    .await;

    assert!(f.process_mut().is_running(), "the operator exited");
    let log = f.process().output();
    assert!(!log.contains("panicked"), "the operator panicked");
    drop(f);
    drop(plane);
}

/// Whether a watch of the namespace's KeyVaultSecrets, from a fresh list,
/// is answered and ends (server timeout 1 s) within a few seconds.
async fn serves_watches(f: &Fixture) -> bool {
    use futures::StreamExt;
    use kube::api::{ListParams, WatchParams};
    let api = f.kvs_api();
    let Ok(list) = api.list_metadata(&ListParams::default()).await else {
        return false;
    };
    let Some(version) = list.metadata.resource_version else {
        return false;
    };
    let watch = async {
        let stream = api
            .watch(&WatchParams::default().timeout(1), &version)
            .await
            .ok()?;
        stream.collect::<Vec<_>>().await;
        Some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(4), watch).await,
        Ok(Some(()))
    )
}
