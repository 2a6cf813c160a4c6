//! The reload stage finding a workload API that appears while it runs: the
//! Argo Rollout CRD installed after the operator started (it looks again
//! every 10 s; readiness never waits for it).
//!
//! A test binary of its own because it first deletes the cluster-scoped
//! Rollout CRD (another test binary, or an earlier run, may have installed
//! it): a test elsewhere using Rollouts at that moment would see them vanish.
//! Cargo runs test binaries one after the other, so none does.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, GroupVersionKind};
use kvsync::api::contract::{DIGEST_ANNOTATION, RESTARTED_AT_ANNOTATION};
use serde_json::json;
use support::reload::{AUTO, QUIET, create, generation, pod_using_db, rollout_api};
use support::*;

const ROLLOUT_CRD: &str = "rollouts.argoproj.io";

/// How long the operator may take to notice the new API (it looks every
/// 10 s) and list it, on a loaded machine.
const DISCOVERY: Duration = Duration::from_secs(60);

/// Deletes the Rollout CRD if it is installed and waits until the API server
/// no longer serves Rollouts.
async fn remove_rollout_crd(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    match crds.delete(ROLLOUT_CRD, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_not_found() => {}
        Err(error) => panic!("delete the Rollout CRD: {error}"),
    }
    let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout");
    eventually("the Rollout API gone", DISCOVERY, || async {
        let gone = crds.get_opt(ROLLOUT_CRD).await.unwrap().is_none()
            && kube::discovery::pinned_kind(client, &gvk).await.is_err();
        gone.then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_rollout_crd_installed_after_start_is_found_and_its_rollouts_reloaded() {
    let mut f = Fixture::idle("reload-discovery").await;
    remove_rollout_crd(&f.client).await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    // Ready without the Rollout API: nothing waits for a CRD that may never come.
    f.start_operator(&[]).await;

    let rollouts = rollout_api(&f).await;
    create(
        &rollouts,
        json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "late", "annotations": pairs(&[AUTO])},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": pod_using_db()}
        }),
    )
    .await;
    let operator = f.process();
    logged(
        operator,
        "the Rollout API found",
        "API now served; watching it",
    )
    .await;
    let baselined = eventually("the digest record on the Rollout", DISCOVERY, || async {
        let rollout = rollouts.get("late").await.unwrap();
        rollout
            .annotations()
            .contains_key(DIGEST_ANNOTATION)
            .then_some(rollout)
    })
    .await;
    let before = generation(&baselined);

    let changed = Instant::now();
    f.secret("db", &[("k", "2")], &[], &[]).await;
    eventually(
        "the Rollout's template annotation set",
        DISCOVERY,
        || async {
            let rollout = rollouts.get("late").await.unwrap();
            rollout.data["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT_ANNOTATION]
                .as_str()
                .map(drop)
        },
    )
    .await;
    println!(
        "Rollout found after start, reload latency (Secret written → template patched): {:?}",
        changed.elapsed()
    );
    always("exactly one patch of its spec", QUIET, || async {
        generation(&rollouts.get("late").await.unwrap()) == before + 1
    })
    .await;
    assert_eq!(f.event_notes("late", "Reloaded").await.len(), 1);
}
