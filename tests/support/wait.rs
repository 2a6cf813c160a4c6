//! Waiting for the preconditions of "nothing happens" windows.
//!
//! A window that asserts something stays put proves nothing — or fails for
//! the wrong reason — when it opens before the thing it watches exists or
//! before the operator is looking. Each helper here waits for one such
//! precondition to be established, so a window can start right after it:
//!
//! ```text
//!  create Deployment ──▶ first_rollout_made ──┐
//!  start operator ─────▶ reload_listed ───────┼──▶ always("nothing happens", …)
//!  write a resource ───▶ (baseline recorded) ─┤
//!  sync from a vault ──▶ vault_reads_settled ──┘
//! ```

use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::{Emulator, Process, eventually};

/// What the reload stage logs once every one of its watchers has listed:
/// from then on it has judged every workload against a complete index.
pub const RELOAD_LISTED: &str = "reload stage has listed everything";

/// How long a precondition may take on a loaded machine.
const PRECONDITION: Duration = Duration::from_secs(60);

/// Waits until `process` has printed `needle`; returns its output then.
pub async fn logged(process: &Process, what: &str, needle: &str) -> String {
    eventually(what, PRECONDITION, || {
        let output = process.output();
        async move { output.contains(needle).then_some(output) }
    })
    .await
}

/// Waits until the operator's reload stage has listed everything it watches
/// (see [`RELOAD_LISTED`]): before that, "no restart happened" only says that
/// the operator was not looking yet.
pub async fn reload_listed(operator: &Process) {
    logged(
        operator,
        "the reload stage to have listed everything",
        RELOAD_LISTED,
    )
    .await;
}

/// How many objects of kind `K` in `namespace` `owner` owns: a Deployment's
/// ReplicaSets, or a StatefulSet's or DaemonSet's ControllerRevisions — one
/// per pod template it has had.
pub async fn owned<K>(client: &kube::Client, namespace: &str, owner: &str) -> usize
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("list {}: {e}", K::kind(&())))
        .items
        .iter()
        .filter(|o| o.owner_references().iter().any(|r| r.name == owner))
        .count()
}

/// Waits until kube-controller-manager has made the first `K` (ReplicaSet or
/// ControllerRevision) of a new workload `owner`. Until it has, the workload
/// has zero, and "it has exactly one, always" would fail without any restart.
pub async fn first_rollout_made<K>(client: &kube::Client, namespace: &str, owner: &str)
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    eventually(
        &format!("the first {} of {owner}", K::kind(&())),
        PRECONDITION,
        || async { (owned::<K>(client, namespace, owner).await >= 1).then_some(()) },
    )
    .await;
}

/// Listings and value reads the emulator counted (`GET /secrets` and
/// `GET /secrets/{name}…` of any vault).
fn listings_and_reads(counters: &serde_json::Value) -> (u64, u64) {
    let mut found = (0, 0);
    for (key, n) in counters["byEndpoint"].as_object().into_iter().flatten() {
        let route = key.split_once(' ').map_or(key.as_str(), |(_, route)| route);
        let n = n.as_u64().unwrap_or_default();
        if route.trim_end_matches('/') == "GET /secrets" {
            found.0 += n;
        } else if route.starts_with("GET /secrets/") {
            found.1 += n;
        }
    }
    found
}

/// Waits until the emulator has served two listings in a row with no value
/// read between them (resetting its counters). A value read in the same
/// second as its update is not trusted and is read again after the next
/// listing, so an "idle: nothing is read" window opens only after this.
pub async fn vault_reads_settled(emulator: &Emulator, timeout: Duration) {
    let reset = || emulator.control(reqwest::Method::POST, "counters/reset", None);
    eventually("two listings without a value read", timeout, || async {
        reset().await;
        let reads = eventually("two listings", timeout, || async {
            let (listings, reads) = listings_and_reads(&emulator.counters().await);
            (listings >= 2).then_some(reads)
        })
        .await;
        (reads == 0).then_some(())
    })
    .await;
}
