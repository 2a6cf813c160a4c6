//! The shipped YAML stays valid against a real API server: every example and
//! the Helm chart (rendered by the real Helm engine, in both RBAC modes) is
//! server-side dry-run applied, so the API server's validation, the CRD's
//! schema and RBAC's escalation checks all run, but nothing is persisted.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::{Scope, pinned_kind};
use serde::Deserialize;
use serde_json::{Value, json};
use support::{TestNamespace, client};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The documents of a multi-document YAML text (empty documents dropped).
fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Server-side applies `doc` with dry run. Namespaced objects go to
/// `namespace` (their own `metadata.namespace` is replaced) unless
/// `keep_namespace` is set.
async fn dry_run_apply(
    client: &kube::Client,
    mut doc: Value,
    namespace: &str,
    keep_namespace: bool,
) -> Result<(), String> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_owned();
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    let gvk = GroupVersionKind::gvk(group, version, &kind);
    let (resource, caps) = pinned_kind(client, &gvk)
        .await
        .map_err(|e| format!("{kind} {name}: discovery of {api_version}: {e}"))?;
    let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
        if !keep_namespace || doc["metadata"]["namespace"].is_null() {
            doc["metadata"]["namespace"] = json!(namespace);
        }
        let ns = doc["metadata"]["namespace"].as_str().unwrap().to_owned();
        Api::namespaced_with(client.clone(), &ns, &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    };
    api.patch(
        &name,
        &PatchParams::apply("kvsync-examples-test").force().dry_run(),
        &Patch::Apply(&doc),
    )
    .await
    .map(|_| ())
    .map_err(|e| format!("{kind} {name}: {e}"))
}

/// Every example that a cluster with kvsync can take: `examples/*.yaml` and
/// `examples/migration/*.yaml`, except ESO's "before" objects (ESO's CRDs are
/// not installed). `examples/demo/` belongs to the demo script.
fn example_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["examples", "examples/migration"] {
        for entry in std::fs::read_dir(Path::new(ROOT).join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml")
                && path.file_name().is_some_and(|n| n != "eso-before.yaml")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[tokio::test]
async fn every_example_is_accepted_by_the_api_server() {
    let files = example_files();
    // Guards against the walk silently finding nothing or an example vanishing.
    let names: Vec<_> = files
        .iter()
        .map(|f| f.strip_prefix(ROOT).unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "examples/client-certificate.yaml",
        "examples/client-secret.yaml",
        "examples/datafrom-find-extract.yaml",
        "examples/migration/kvsync-after.yaml",
        "examples/operator-identity.yaml",
        "examples/reloader-search.yaml",
        "examples/tls-certificate.yaml",
        "examples/workload-identity.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    let client = client().await;
    let ns = TestNamespace::new(&client, "examples").await;
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let docs = documents(&text);
        assert!(!docs.is_empty(), "{} has no documents", file.display());
        for doc in docs {
            if let Err(e) = dry_run_apply(&client, doc, &ns.name, false).await {
                failures.push(format!("{}: {e}", file.display()));
            }
        }
    }
    assert!(failures.is_empty(), "rejected:\n{}", failures.join("\n"));
}

#[tokio::test]
async fn the_dry_run_rejects_an_invalid_keyvaultsecret() {
    // The check above is only worth something if a broken object fails it.
    let client = client().await;
    let ns = TestNamespace::new(&client, "examples-invalid").await;
    let broken = json!({
        "apiVersion": "kvsync.io/v1alpha1",
        "kind": "KeyVaultSecret",
        "metadata": {"name": "broken"},
        "spec": {
            "vaultUrl": "http://shop-kv.vault.azure.net/",
            "auth": {"workloadIdentity": {}},
        },
    });
    let err = dry_run_apply(&client, broken, &ns.name, false)
        .await
        .expect_err("an http:// vaultUrl must be rejected by the CRD schema");
    assert!(err.contains("vaultUrl"), "unexpected error: {err}");
}

#[test]
fn eso_before_example_is_valid_yaml_of_eso_kinds() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("examples/migration/eso-before.yaml"))
        .unwrap();
    let kinds: Vec<String> = documents(&text)
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    for kind in ["SecretStore", "ExternalSecret", "Deployment"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in {kinds:?}");
    }
}

#[test]
fn chart_crd_matches_the_types() {
    let path = Path::new(ROOT).join("charts/kvsync/crds/keyvaultsecrets.kvsync.io.yaml");
    let copy = std::fs::read_to_string(path).expect("chart CRD");
    assert!(
        copy == kvsync::api::crd_yaml(),
        "charts/kvsync/crds/ is stale: run \
         `cargo run -- crd > charts/kvsync/crds/keyvaultsecrets.kvsync.io.yaml`"
    );
}

/// The chart rendered by `scripts/render-chart.sh` (the real Helm engine),
/// or `None` when that engine cannot be installed on this machine.
fn render_chart(values: &Value, namespace: &str, kube_version: &str) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let values_file = dir.path().join("values.yaml");
    std::fs::write(&values_file, serde_norway::to_string(values).unwrap()).unwrap();
    let out = Command::new("bash")
        .arg(Path::new(ROOT).join("scripts/render-chart.sh"))
        .arg("-f")
        .arg(&values_file)
        .args(["--name", "kvsync", "--namespace", namespace])
        .args(["--kube-version", kube_version, "--include-crds"])
        .output()
        .expect("run scripts/render-chart.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        eprintln!(
            "SKIPPED: the Helm engine is not installable here, chart not verified:\n{stderr}"
        );
        return None;
    }
    assert!(out.status.success(), "render failed: {stderr}");
    Some(String::from_utf8(out.stdout).unwrap())
}

fn find<'a>(docs: &'a [Value], kind: &str, namespace: Option<&str>) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .filter(|d| namespace.is_none_or(|ns| d["metadata"]["namespace"] == ns))
        .collect()
}

fn operator_args(docs: &[Value]) -> Vec<String> {
    let deployment = find(docs, "Deployment", None)[0];
    serde_json::from_value(deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone())
        .unwrap()
}

async fn kube_version(client: &kube::Client) -> String {
    client.apiserver_version().await.unwrap().git_version
}

async fn dry_run_all(client: &kube::Client, docs: &[Value], release_namespace: &str) {
    let mut failures = Vec::new();
    for doc in docs {
        if let Err(e) = dry_run_apply(client, doc.clone(), release_namespace, true).await {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "rejected:\n{}", failures.join("\n"));
}

#[tokio::test]
async fn chart_in_cluster_mode_is_accepted_by_the_api_server() {
    let client = client().await;
    let release = TestNamespace::new(&client, "chart-cluster").await;
    let values = json!({
        "workloadIdentity": {"enabled": true, "clientId": "11111111-1111-1111-1111-111111111111"},
        "operatorIdentityNamespaces": ["platform"],
        "namespaceSelector": "kvsync=enabled",
    });
    let Some(text) = render_chart(&values, &release.name, &kube_version(&client).await) else {
        return;
    };
    let docs = documents(&text);

    let cluster_roles = find(&docs, "ClusterRole", None);
    assert_eq!(cluster_roles.len(), 1, "one ClusterRole");
    let rules = cluster_roles[0]["rules"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r["resources"] == json!(["namespaces"])),
        "cluster mode reads Namespaces (for --namespace-selector)"
    );
    assert_eq!(find(&docs, "ClusterRoleBinding", None).len(), 1);
    let args = operator_args(&docs);
    assert!(
        !args.iter().any(|a| a.starts_with("--namespaces")),
        "{args:?}"
    );
    assert!(args.contains(&"--namespace-selector=kvsync=enabled".to_owned()));
    assert!(args.contains(&"--operator-identity-namespaces=platform".to_owned()));
    assert!(
        find(&docs, "PodDisruptionBudget", None).is_empty(),
        "1 replica: no PDB"
    );

    dry_run_all(&client, &docs, &release.name).await;
}

#[tokio::test]
async fn chart_in_namespaced_mode_grants_only_the_watched_namespaces() {
    let client = client().await;
    let release = TestNamespace::new(&client, "chart-ns").await;
    let team_a = TestNamespace::new(&client, "chart-ns-a").await;
    let team_b = TestNamespace::new(&client, "chart-ns-b").await;
    let outside = TestNamespace::new(&client, "chart-ns-out").await;
    let values = json!({
        "watchNamespaces": [team_a.name, team_b.name],
        "replicas": 2,
        "extraCA": {"configMap": "corp-ca"},
        "allowVaultHosts": ["*.vault.local"],
    });
    let Some(text) = render_chart(&values, &release.name, &kube_version(&client).await) else {
        return;
    };
    let docs = documents(&text);

    assert!(
        find(&docs, "ClusterRole", None).is_empty(),
        "no cluster-wide grant"
    );
    assert!(find(&docs, "ClusterRoleBinding", None).is_empty());
    for ns in [&team_a.name, &team_b.name] {
        assert_eq!(find(&docs, "Role", Some(ns)).len(), 1, "Role in {ns}");
        assert_eq!(
            find(&docs, "RoleBinding", Some(ns)).len(),
            1,
            "RoleBinding in {ns}"
        );
    }
    let args = operator_args(&docs);
    let expected = format!("--namespaces={},{}", team_a.name, team_b.name);
    assert!(args.contains(&expected), "{args:?}");
    assert_eq!(
        find(&docs, "PodDisruptionBudget", None).len(),
        1,
        "2 replicas: a PDB"
    );

    dry_run_all(&client, &docs, &release.name).await;

    // Dry run proves the objects are valid, not that the grants are right:
    // create the namespaced RBAC for real (it goes with the test namespaces)
    // and ask the API server what the operator's ServiceAccount may do.
    for doc in docs
        .iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "RoleBinding")
    {
        let doc = doc.clone();
        let gvk = GroupVersionKind::gvk(
            "rbac.authorization.k8s.io",
            "v1",
            doc["kind"].as_str().unwrap(),
        );
        let (resource, _) = pinned_kind(&client, &gvk).await.unwrap();
        let ns = doc["metadata"]["namespace"].as_str().unwrap().to_owned();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(doc).unwrap(),
        )
        .await
        .expect("create RBAC");
    }
    let user = format!("system:serviceaccount:{}:kvsync", release.name);
    let may = |ns: &str, group: &str, resource: &str, sub: &str, verb: &str, name: &str| {
        let review: SubjectAccessReview = serde_json::from_value(json!({
            "spec": {"user": user, "groups": ["system:serviceaccounts"], "resourceAttributes": {
                "namespace": ns, "group": group, "resource": resource,
                "subresource": sub, "verb": verb, "name": name,
            }}
        }))
        .unwrap();
        let api: Api<SubjectAccessReview> = Api::all(client.clone());
        async move {
            let answer = api.create(&PostParams::default(), &review).await.unwrap();
            answer.status.is_some_and(|s| s.allowed)
        }
    };
    for ns in [&team_a.name, &team_b.name] {
        assert!(may(ns, "kvsync.io", "keyvaultsecrets", "", "watch", "").await);
        assert!(may(ns, "kvsync.io", "keyvaultsecrets", "status", "patch", "db").await);
        assert!(may(ns, "", "secrets", "", "create", "").await);
        assert!(may(ns, "", "serviceaccounts", "token", "create", "shop-api").await);
        assert!(may(ns, "apps", "deployments", "", "patch", "shop-api").await);
        assert!(may(ns, "events.k8s.io", "events", "", "create", "").await);
        assert!(
            !may(ns, "", "secrets", "", "delete", "db").await,
            "no delete"
        );
    }
    let outside = outside.name.as_str();
    assert!(
        !may(outside, "", "secrets", "", "get", "db").await,
        "secrets elsewhere"
    );
    assert!(!may(outside, "kvsync.io", "keyvaultsecrets", "", "list", "").await);
    assert!(
        !may("", "", "namespaces", "", "list", "").await,
        "no cluster reads"
    );
    let own = release.name.as_str();
    assert!(may(own, "", "secrets", "", "get", "kvsync-digest-key").await);
    assert!(!may(own, "", "secrets", "", "get", "someone-elses").await);
    assert!(may(own, "coordination.k8s.io", "leases", "", "update", "kvsync").await);
}

#[test]
fn chart_refuses_a_namespace_selector_in_namespaced_mode() {
    // Namespaced mode has no permission to read Namespaces, so the selector
    // could never match: a render error is better than a silent no-op.
    let dir = tempfile::tempdir().unwrap();
    let values_file = dir.path().join("values.yaml");
    std::fs::write(
        &values_file,
        "watchNamespaces: [a]\nnamespaceSelector: team=shop\n",
    )
    .unwrap();
    let out = Command::new("bash")
        .arg(Path::new(ROOT).join("scripts/render-chart.sh"))
        .arg("-f")
        .arg(&values_file)
        .output()
        .unwrap();
    if out.status.code() == Some(3) {
        eprintln!("SKIPPED: the Helm engine is not installable here, chart not verified");
        return;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rendered anyway");
    assert!(stderr.contains("namespaceSelector"), "{stderr}");
}
