//! kube-apiserver with the OwnerReferencesPermissionEnforcement admission
//! plugin (on in OpenShift): an ownerReference with `blockOwnerDeletion`
//! takes `update` on the owner's `finalizers` subresource. kvsync sets one on
//! the Secrets it creates under `creationPolicy: Owner` and on the Jobs it
//! makes from CronJobs; here both run under the chart's RBAC. The plugin is
//! the API server's, so this test brings up a control plane of its own and
//! lives alone in its test binary.

mod support;

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, GroupVersionKind, ListParams, PostParams};
use serde_json::{Value, json};
use support::*;

/// The kinds of the chart's RBAC: what the operator may do.
const RBAC_KINDS: &[&str] = &[
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
];

/// Installs the chart's RBAC (cluster mode) with its release in `namespace`;
/// returns a kubeconfig acting as the chart's ServiceAccount, or `None` when
/// the Helm engine is unavailable.
async fn chart_identity(
    client: &kube::Client,
    namespace: &str,
    dir: &std::path::Path,
) -> Option<std::path::PathBuf> {
    let version = client.apiserver_version().await.unwrap().git_version;
    let docs = match render_chart(&json!({}), "kvsync", namespace, Some(&version)) {
        Rendered::Manifests(text) => documents(&text),
        Rendered::Refused(message) => panic!("render failed: {message}"),
        Rendered::Unavailable => return None,
    };
    let rbac: Vec<&Value> = docs
        .iter()
        .filter(|d| RBAC_KINDS.iter().any(|k| d["kind"] == *k))
        .collect();
    for doc in &rbac {
        apply_manifest(client, (*doc).clone(), namespace, true, false)
            .await
            .unwrap_or_else(|e| panic!("install: {e}"));
    }
    let account = rbac
        .iter()
        .find(|d| d["kind"] == "ServiceAccount")
        .and_then(|d| d["metadata"]["name"].as_str())
        .expect("the chart's ServiceAccount");
    Some(token_kubeconfig(client, namespace, account, dir).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_cron_job_reloads_pass_owner_reference_permission_enforcement() {
    // Declared first so it is dropped last: the namespace and processes go first.
    let _plane = PrivatePlane::with_admission_plugins("OwnerReferencesPermissionEnforcement");
    let mut f = Fixture::idle("admission").await;
    let dir = tempfile::tempdir().unwrap();
    let Some(kubeconfig) = chart_identity(&f.client, &f.ns.name, dir.path()).await else {
        return;
    };
    f.operator = Some(Operator::start_as(&f.emulator, &f.ns.name, &[], &kubeconfig).process);

    // A CronJob that reloads on a change of Secret db (batch/v1beta1 on 1.20).
    let gvk = GroupVersionKind::gvk("batch", "v1beta1", "CronJob");
    let (resource, _) = kube::discovery::pinned_kind(&f.client, &gvk).await.unwrap();
    let cron_jobs: Api<DynamicObject> =
        Api::namespaced_with(f.client.clone(), &f.ns.name, &resource);
    let cron_job: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "batch/v1beta1", "kind": "CronJob",
        "metadata": {"name": "nightly", "annotations": {"reloader.stakater.com/auto": "true"}},
        "spec": {"schedule": "0 0 1 1 *", "jobTemplate": {"spec": {"template": {
            "spec": {"restartPolicy": "Never", "containers": [{"name": "app",
                "image": "example.invalid/app", "envFrom": [{"secretRef": {"name": "db"}}]}]}}}}}
    }))
    .unwrap();
    cron_jobs
        .create(&PostParams::default(), &cron_job)
        .await
        .unwrap();

    // The sync: an Owner Secret, its ownerReference blocking the object's deletion.
    let kvs = f.apply(
        "db",
        json!({"refreshInterval": "1h", "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}),
    )
    .await;
    f.wait_reason("db", "Synced").await;
    let secret = f.secrets().get("db").await.unwrap();
    let owner = &secret.owner_references()[0];
    assert_eq!(Some(&owner.uid), kvs.metadata.uid.as_ref());
    assert_eq!(owner.block_owner_deletion, Some(true));
    eventually("the digest record on the CronJob", WAIT, || async {
        let nightly = cron_jobs.get("nightly").await.ok()?;
        nightly
            .annotations()
            .contains_key("kvsync.io/reload-digest")
            .then_some(())
    })
    .await;

    // The reload: a Job from the CronJob, its ownerReference blocking the CronJob's deletion.
    f.emulator
        .set_secret("shop", "db-password", "rotated-under-enforcement")
        .await;
    f.force_sync("db", "rotate").await;
    let jobs: Api<Job> = Api::namespaced(f.client.clone(), &f.ns.name);
    let job = eventually("a Job from the CronJob", WAIT, || async {
        let list = jobs.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|job| job.owner_references().iter().any(|o| o.name == "nightly"))
    })
    .await;
    let owner = &job.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.block_owner_deletion),
        ("CronJob", Some(true))
    );
    assert_eq!(
        f.secret_data("db").await.unwrap()["pw"],
        "rotated-under-enforcement"
    );
}
