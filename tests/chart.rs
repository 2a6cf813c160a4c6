//! The Helm chart, rendered by the real Helm engine (`scripts/render-chart.sh`).
//!
//! Structure and validity: both RBAC modes are server-side dry-run applied,
//! so the API server's validation, the CRD's schema and RBAC's escalation
//! checks run. RBAC for real: the chart's ServiceAccount, Roles and bindings
//! are installed, and `kvsync run` runs with a token of that ServiceAccount
//! and the arguments and environment of the chart's Deployment through a
//! sync and a rolling restart; the same token is then refused what the
//! operator has no business doing.

mod support;

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kvsync::api::KeyVaultSecret;
use kvsync::api::contract::DIGEST_ANNOTATION;
use serde_json::{Value, json};
use support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Pod names the test operators pretend to have (downward API `metadata.name`).
const POD_NAME: &str = "kvsync-7d9f-test0";
const STANDBY_POD_NAME: &str = "kvsync-7d9f-test1";

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

/// The chart's documents, or `None` when the Helm engine is unavailable.
fn render(
    values: &Value,
    release: &str,
    namespace: &str,
    kube_version: &str,
) -> Option<Vec<Value>> {
    match render_chart(values, release, namespace, Some(kube_version)) {
        Rendered::Manifests(text) => Some(documents(&text)),
        Rendered::Refused(message) => panic!("render failed: {message}"),
        Rendered::Unavailable => None,
    }
}

/// The message a render with these values fails with (`None`: no engine).
fn refusal(values: Value) -> Option<String> {
    match render_chart(&values, "kvsync", "kvsync-system", None) {
        Rendered::Refused(message) => Some(message),
        Rendered::Manifests(_) => panic!("rendered anyway: {values}"),
        Rendered::Unavailable => None,
    }
}

fn find<'a>(docs: &'a [Value], kind: &str, namespace: Option<&str>) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .filter(|d| namespace.is_none_or(|ns| d["metadata"]["namespace"] == ns))
        .collect()
}

fn container(docs: &[Value]) -> &Value {
    &find(docs, "Deployment", None)[0]["spec"]["template"]["spec"]["containers"][0]
}

fn operator_args(docs: &[Value]) -> Vec<String> {
    serde_json::from_value(container(docs)["args"].clone()).unwrap()
}

async fn kube_version(client: &kube::Client) -> String {
    client.apiserver_version().await.unwrap().git_version
}

async fn dry_run_all(client: &kube::Client, docs: &[Value], release_namespace: &str) {
    let mut failures = Vec::new();
    for doc in docs {
        if let Err(e) = apply_manifest(client, doc.clone(), release_namespace, true, true).await {
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
        "requireServiceAccountOptIn": true,
        "namespaceSelector": "kvsync=enabled",
        "changeDetection": "get",
        "vaultConcurrency": 3,
        "maxConcurrentSyncs": 16,
        "minReloadInterval": "1m",
        "resourceLabelSelector": "reload=true",
        "managedIdentity": {"identityEndpoint": "https://imds.test/metadata/identity/oauth2/token"},
    });
    let Some(docs) = render(
        &values,
        "kvsync",
        &release.name,
        &kube_version(&client).await,
    ) else {
        return;
    };

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
    for expected in [
        "--namespace-selector=kvsync=enabled",
        "--operator-identity-namespaces=platform",
        "--require-service-account-opt-in",
        "--change-detection=get",
        "--vault-concurrency=3",
        "--max-concurrent-syncs=16",
        "--min-reload-interval=1m",
        "--resource-label-selector=reload=true",
        "--leader-election=true",
        "--lease-name=kvsync",
    ] {
        assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
    }
    assert!(
        find(&docs, "PodDisruptionBudget", None).is_empty(),
        "1 replica: no PDB"
    );
    let env = container(&docs)["env"].as_array().unwrap();
    assert!(
        env.contains(&json!({"name": "IDENTITY_ENDPOINT", "value": "https://imds.test/metadata/identity/oauth2/token"})),
        "{env:?}"
    );

    dry_run_all(&client, &docs, &release.name).await;
}

#[tokio::test]
async fn chart_in_namespaced_mode_grants_only_the_watched_namespaces() {
    let client = client().await;
    let release = TestNamespace::new(&client, "chart-ns").await;
    let team_a = TestNamespace::new(&client, "chart-ns-a").await;
    let team_b = TestNamespace::new(&client, "chart-ns-b").await;
    let values = json!({
        "watchNamespaces": [team_a.name, team_b.name],
        "replicas": 2,
        "extraCA": {"configMap": "corp-ca"},
        "allowVaultHosts": ["*.vault.local"],
        "leaderElection": {"leaseName": "kvsync-leader", "leaseDuration": "20s"},
    });
    let Some(docs) = render(
        &values,
        "kvsync",
        &release.name,
        &kube_version(&client).await,
    ) else {
        return;
    };

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
    for expected in [
        format!("--namespaces={},{}", team_a.name, team_b.name),
        "--lease-name=kvsync-leader".into(),
        "--lease-duration=20s".into(),
    ] {
        assert!(args.contains(&expected), "{expected} in {args:?}");
    }
    assert_eq!(
        find(&docs, "PodDisruptionBudget", None).len(),
        1,
        "2 replicas: a PDB"
    );

    dry_run_all(&client, &docs, &release.name).await;
}

#[test]
fn chart_refuses_values_that_cannot_work() {
    // Namespaced mode has no permission to read Namespaces, so the selector
    // could never match: a render error is better than a silent no-op.
    let Some(message) =
        refusal(json!({"watchNamespaces": ["a"], "namespaceSelector": "team=shop"}))
    else {
        return;
    };
    assert!(message.contains("namespaceSelector"), "{message}");
    // Two replicas without an election would both sync and restart.
    let message = refusal(json!({"replicas": 2, "leaderElection": {"enabled": false}})).unwrap();
    assert!(message.contains("leaderElection"), "{message}");
}

// ---------------------------------------------------------------------------
// RBAC for real: the operator runs as the chart's ServiceAccount.

/// The chart's ServiceAccount and RBAC, installed for real (the rest of the
/// chart dry-run), and a kubeconfig with a token of that ServiceAccount.
/// Cluster-scoped objects are deleted on drop; the rest goes with the
/// namespaces.
struct Installed {
    docs: Vec<Value>,
    release_namespace: String,
    kubeconfig: PathBuf,
    cluster_objects: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

const INSTALLED_KINDS: &[&str] = &[
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
];

impl Installed {
    /// Renders the chart as release `release` into `release_namespace` and
    /// installs it; `None` when the Helm engine is unavailable.
    async fn new(
        client: &kube::Client,
        release: &str,
        release_namespace: &str,
        values: Value,
    ) -> Option<Self> {
        let docs = render(
            &values,
            release,
            release_namespace,
            &kube_version(client).await,
        )?;
        let mut installed = Installed {
            docs: Vec::new(),
            release_namespace: release_namespace.to_owned(),
            kubeconfig: PathBuf::new(),
            cluster_objects: Vec::new(),
            _dir: tempfile::tempdir().unwrap(),
        };
        for doc in &docs {
            let kind = doc["kind"].as_str().unwrap();
            let real = INSTALLED_KINDS.contains(&kind);
            if kind.starts_with("Cluster") {
                let name = doc["metadata"]["name"].as_str().unwrap();
                installed.cluster_objects.push((kind.into(), name.into()));
            }
            apply_manifest(client, doc.clone(), release_namespace, true, !real)
                .await
                .unwrap_or_else(|e| panic!("install: {e}"));
        }
        let account = find(&docs, "ServiceAccount", None)[0]["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_owned();
        installed.kubeconfig =
            token_kubeconfig(client, release_namespace, &account, installed._dir.path()).await;
        installed.docs = docs;
        Some(installed)
    }

    /// `kvsync run` as the chart's Deployment would start it in pod
    /// `pod_name`, but with the ServiceAccount's token, the emulator trusted,
    /// and metrics on a free loopback port.
    fn start_operator(&self, emulator: &Emulator, pod_name: &str) -> Process {
        let mut args: Vec<String> = operator_args(&self.docs)
            .into_iter()
            .filter(|a| !a.starts_with("--metrics-addr"))
            .collect();
        args.extend(
            [
                "--metrics-addr",
                "127.0.0.1:0",
                "--authority-host",
                &emulator.endpoints.authority_host,
                "--allow-vault-host",
                "localhost",
                "--extra-ca-file",
                &emulator.endpoints.ca_file.display().to_string(),
            ]
            .map(str::to_owned),
        );
        let env: Vec<(String, String)> = container(&self.docs)["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let name = e["name"].as_str().unwrap().to_owned();
                let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.namespace") => self.release_namespace.clone(),
                    Some("metadata.name") => pod_name.to_owned(),
                    Some(other) => panic!("{name}: the test cannot emulate fieldRef {other}"),
                    // The chart's level, plus the status of every API call
                    // (for `refused_calls`).
                    None if name == "RUST_LOG" => {
                        format!("{},kube_client=debug", e["value"].as_str().unwrap())
                    }
                    None => e["value"].as_str().expect("a plain value").to_owned(),
                };
                (name, value)
            })
            .collect();
        Process::start_as(&args, &self.kubeconfig, &env)
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let objects = std::mem::take(&mut self.cluster_objects);
        cleanup_in_drop(async move {
            let client = client().await;
            for (kind, name) in objects {
                let dp = DeleteParams::default();
                let _ = match kind.as_str() {
                    "ClusterRole" => Api::<ClusterRole>::all(client.clone())
                        .delete(&name, &dp)
                        .await
                        .map(|_| ()),
                    _ => Api::<ClusterRoleBinding>::all(client.clone())
                        .delete(&name, &dp)
                        .await
                        .map(|_| ()),
                };
            }
        });
    }
}

/// A vault with one secret, readable by `SECRET_APP` with its client secret
/// and by `SA_APP` federated to ServiceAccount `shop-api` of `namespace`
/// (Workload Identity). The directory holds the cluster's JWKS.
async fn emulator(client: &kube::Client, namespace: &str) -> (Emulator, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (issuer, jwks) = cluster_issuer(client, dir.path()).await;
    let emulator = Emulator::start(json!({
        "vaults": [{"name": "shop", "secrets": [{"name": "db-password", "value": "first-value"}]}],
        "apps": [
            {
                "tenantId": TENANT, "clientId": SECRET_APP, "clientSecret": SECRET_APP_PASSWORD,
                "access": [{"vault": "shop", "secrets": ["*"]}]
            },
            {
                "tenantId": TENANT, "clientId": SA_APP,
                "federatedCredentials": [{
                    "issuer": issuer,
                    "subject": format!("system:serviceaccount:{namespace}:shop-api"),
                    "audience": "api://AzureADTokenExchange"
                }],
                "access": [{"vault": "shop", "secrets": ["*"]}]
            }
        ],
        "issuers": [{"issuer": issuer, "jwksFile": jwks}]
    }))
    .await;
    (emulator, dir)
}

async fn apply<K>(client: &kube::Client, namespace: &str, body: Value)
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let name = body["metadata"]["name"].as_str().unwrap().to_owned();
    Api::<K>::namespaced(client.clone(), namespace)
        .patch(
            &name,
            &PatchParams::apply("kvsync-chart-test").force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}

/// The user's journey in `namespace`: KeyVaultSecrets sync (one with
/// client-secret auth, one with Workload Identity: the operator reads the
/// ServiceAccount and requests a token for it), and a Deployment with
/// `reloader.stakater.com/auto` rolls when the value is rotated in the vault.
/// Also checks the status and Events a user would read, and that the
/// operator is never refused anything.
async fn sync_and_reload(
    client: &kube::Client,
    namespace: &str,
    emulator: &Emulator,
    operator: &Process,
) {
    apply::<Secret>(
        client,
        namespace,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kv-creds"},
               "stringData": {"clientSecret": SECRET_APP_PASSWORD}}),
    )
    .await;
    apply::<KeyVaultSecret>(
        client,
        namespace,
        json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "KeyVaultSecret", "metadata": {"name": "db"},
               "spec": {"vaultUrl": emulator.vault_url("shop"), "refreshInterval": "1s",
                        "auth": {"clientSecret": {"tenantId": TENANT, "clientId": SECRET_APP,
                                                  "secretRef": {"name": "kv-creds", "key": "clientSecret"}}},
                        "data": [{"secretKey": "password", "remoteRef": {"name": "db-password"}}]}}),
    )
    .await;
    apply::<ServiceAccount>(
        client,
        namespace,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "shop-api",
               "annotations": {"azure.workload.identity/client-id": SA_APP,
                               "azure.workload.identity/tenant-id": TENANT}}}),
    )
    .await;
    apply::<KeyVaultSecret>(
        client,
        namespace,
        json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "KeyVaultSecret", "metadata": {"name": "db-wi"},
               "spec": {"vaultUrl": emulator.vault_url("shop"), "refreshInterval": "1h",
                        "auth": {"workloadIdentity": {"serviceAccountName": "shop-api"}},
                        "data": [{"secretKey": "password", "remoteRef": {"name": "db-password"}}]}}),
    )
    .await;
    apply::<Deployment>(
        client,
        namespace,
        Workload::deployment("shop-api")
            .annotations(&[("reloader.stakater.com/auto", "true")])
            .env_from(&["db"])
            .body(),
    )
    .await;

    until(operator, "the Secret synced from the vault", || {
        password(client, namespace, "db", "first-value")
    })
    .await;
    until(operator, "the Workload Identity Secret synced", || {
        password(client, namespace, "db-wi", "first-value")
    })
    .await;
    let kvs: Api<KeyVaultSecret> = Api::namespaced(client.clone(), namespace);
    until(operator, "the KeyVaultSecret's status Synced", || async {
        let kvs = kvs.get("db").await.ok()?;
        let status = serde_json::to_value(kvs.status?).ok()?;
        let synced = status["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True" && c["reason"] == "Synced");
        synced.then_some(())
    })
    .await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let rollouts = || async {
        let list = replica_sets.list(&ListParams::default()).await.unwrap();
        list.items
            .iter()
            .filter(|rs| rs.owner_references().iter().any(|o| o.name == "shop-api"))
            .count()
    };
    until(operator, "kvsync's baseline on the Deployment", || async {
        let annotations = deployments
            .get("shop-api")
            .await
            .ok()?
            .annotations()
            .clone();
        (annotations.contains_key(DIGEST_ANNOTATION) && rollouts().await == 1).then_some(())
    })
    .await;

    emulator
        .set_secret("shop", "db-password", "rotated-value")
        .await;
    until(operator, "the rotated value in the Secret", || {
        password(client, namespace, "db", "rotated-value")
    })
    .await;
    until(operator, "a new ReplicaSet (rolling restart)", || async {
        (rollouts().await == 2).then_some(())
    })
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    until(operator, "the Reloaded Event on the Deployment", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("Reloaded")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("shop-api")
            })
            .then_some(())
    })
    .await;

    let refused = refused_calls(&operator.output());
    assert!(
        refused.is_empty(),
        "the operator was refused something:\n{}",
        refused.join("\n")
    );
}

/// `Some` once Secret `name` holds `expected` under `password`.
async fn password(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    expected: &str,
) -> Option<()> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .ok()??;
    let value = secret.data?.get("password")?.0.clone();
    (value == expected.as_bytes()).then_some(())
}

/// SIGTERM: the operator exits cleanly, releasing the Lease, and was never
/// refused anything (including on the way out).
fn stop(operator: Process) {
    let (status, output) = operator.terminate_with_output();
    assert!(status.success(), "the operator exits cleanly on SIGTERM");
    let refused = refused_calls(&output);
    assert!(refused.is_empty(), "refused:\n{}", refused.join("\n"));
}

/// Like [`eventually`], but fails at once, listing them, when the operator
/// is refused an API call meanwhile (rather than timing out later).
async fn until<T, F, Fut>(operator: &Process, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let outcome = eventually(what, WAIT, || {
        let refused = refused_calls(&operator.output());
        let checked = check();
        async move {
            if refused.is_empty() {
                checked.await.map(Ok)
            } else {
                Some(Err(refused))
            }
        }
    })
    .await;
    outcome.unwrap_or_else(|refused| {
        panic!(
            "waiting for {what}, the operator was refused:\n{}",
            refused.join("\n")
        )
    })
}

/// Log lines (the chart's JSON format) of API calls answered 403, or of
/// warnings and errors that mention a refusal. The HTTP spans of kube's
/// client carry each call's status, so even a refusal the operator
/// tolerates silently shows.
fn refused_calls(output: &str) -> Vec<String> {
    let mut refused: Vec<String> = Vec::new();
    for line in output.lines() {
        let finding = match serde_json::from_str::<Value>(line) {
            Ok(entry) => {
                let message = entry["fields"].to_string();
                let lower = message.to_lowercase();
                let warns = matches!(entry["level"].as_str(), Some("WARN" | "ERROR"));
                if entry["span"]["http.status_code"] == 403 {
                    let span = &entry["span"];
                    Some(format!("403: {} {}", span["http.method"], span["http.url"]))
                } else if warns && (lower.contains("403") || lower.contains("forbidden")) {
                    Some(message)
                } else {
                    None
                }
            }
            // Not a log entry (e.g. a panic): judge the text.
            Err(_) => (line.contains("403") || line.to_lowercase().contains("forbidden"))
                .then(|| line.to_owned()),
        };
        if let Some(finding) = finding.filter(|f| !refused.contains(f)) {
            refused.push(finding);
        }
    }
    refused
}

/// The holder of the chart's Lease.
async fn leader(client: &kube::Client, installed: &Installed) -> Option<String> {
    let args = operator_args(&installed.docs);
    let lease_name = args
        .iter()
        .find_map(|a| a.strip_prefix("--lease-name="))
        .expect("the chart names the Lease");
    let lease = Api::<Lease>::namespaced(client.clone(), &installed.release_namespace)
        .get(lease_name)
        .await
        .expect("the Lease exists");
    lease.spec.and_then(|s| s.holder_identity)
}

/// The status code of a refused call, `None` if it succeeded.
fn refusal_code<T>(result: Result<T, kube::Error>) -> Option<u16> {
    match result {
        Ok(_) => None,
        Err(kube::Error::Api(status)) => Some(status.code),
        Err(other) => panic!("not an API answer: {other}"),
    }
}

#[tokio::test]
async fn namespaced_rbac_suffices_for_sync_and_reload_and_grants_nothing_more() {
    let client = client().await;
    let release = TestNamespace::new(&client, "chart-live-rel").await;
    let watched = TestNamespace::new(&client, "chart-live-app").await;
    let outside = TestNamespace::new(&client, "chart-live-out").await;
    let values = json!({
        "watchNamespaces": [watched.name],
        "reloadDebounce": "300ms",
        "minReloadInterval": "1s",
        "minRefreshInterval": "1s",
        "maxBackoff": "4s",
        "replicas": 2,
        "leaderElection": {"leaseDuration": "3s"},
    });
    let Some(installed) = Installed::new(&client, "kvsync", &release.name, values).await else {
        return;
    };
    let (emulator, _issuer) = emulator(&client, &watched.name).await;
    let operator = installed.start_operator(&emulator, POD_NAME);

    sync_and_reload(&client, &watched.name, &emulator, &operator).await;
    assert_eq!(leader(&client, &installed).await.as_deref(), Some(POD_NAME));

    // replicas: 2 — a second replica waits as a standby and takes over when
    // the leader goes, all with the chart's Lease rules.
    let standby = installed.start_operator(&emulator, STANDBY_POD_NAME);
    until(&standby, "the second replica to wait as a standby", || {
        let waiting = standby.output().contains("waiting to become the leader");
        async move { waiting.then_some(()) }
    })
    .await;
    stop(operator);
    until(&standby, "the standby to take the Lease", || async {
        (leader(&client, &installed).await.as_deref() == Some(STANDBY_POD_NAME)).then_some(())
    })
    .await;
    emulator
        .set_secret("shop", "db-password", "after-takeover")
        .await;
    until(&standby, "the new leader to sync", || {
        password(&client, &watched.name, "db", "after-takeover")
    })
    .await;

    // The same token, used directly: what the operator may not do.
    let token = client_from(&installed.kubeconfig).await;
    let secrets = |ns: &str| Api::<Secret>::namespaced(token.clone(), ns);
    let list = ListParams::default();
    assert_eq!(
        refusal_code(secrets(&watched.name).list(&list).await),
        None,
        "the token works where the operator acts"
    );
    assert_eq!(
        refusal_code(secrets(&outside.name).list(&list).await),
        Some(403),
        "Secrets of a namespace it does not watch"
    );
    assert_eq!(
        refusal_code(
            Api::<KeyVaultSecret>::namespaced(token.clone(), &outside.name)
                .list(&list)
                .await
        ),
        Some(403),
        "KeyVaultSecrets of a namespace it does not watch"
    );
    assert_eq!(
        refusal_code(Api::<Secret>::all(token.clone()).list(&list).await),
        Some(403),
        "Secrets cluster-wide"
    );
    assert_eq!(
        refusal_code(Api::<Namespace>::all(token.clone()).list(&list).await),
        Some(403),
        "Namespaces cluster-wide"
    );
    assert_eq!(
        refusal_code(
            Api::<KeyVaultSecret>::namespaced(token.clone(), &watched.name)
                .delete("db", &DeleteParams::default())
                .await
        ),
        Some(403),
        "deleting a KeyVaultSecret"
    );
    assert_eq!(
        refusal_code(secrets(&release.name).get("someone-elses").await),
        Some(403),
        "other Secrets of its own namespace"
    );
    assert_eq!(
        refusal_code(
            Api::<Lease>::namespaced(token.clone(), &release.name)
                .get("another-lease")
                .await
        ),
        Some(403),
        "other Leases of its own namespace"
    );

    stop(standby);
}

#[tokio::test]
async fn cluster_rbac_suffices_for_sync_and_reload() {
    let client = client().await;
    let release = TestNamespace::new(&client, "chart-live-crel").await;
    let watched = TestNamespace::new(&client, "chart-live-capp").await;
    // Other tests' namespaces stay out of this operator's reach: it acts only
    // where the selector matches (which also exercises the Namespace rules).
    let label = format!("kvsync-chart-test={}", watched.name);
    Api::<Namespace>::all(client.clone())
        .patch(
            &watched.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"kvsync-chart-test": watched.name}}})),
        )
        .await
        .unwrap();
    // A release name of its own: ClusterRoles are shared by every test.
    let name = format!("kvsync-{}", &release.name[release.name.len() - 6..]);
    let values = json!({
        "namespaceSelector": label,
        "reloadDebounce": "300ms",
        "minReloadInterval": "1s",
        "minRefreshInterval": "1s",
        "maxBackoff": "4s",
    });
    let Some(installed) = Installed::new(&client, &name, &release.name, values).await else {
        return;
    };
    assert_eq!(installed.cluster_objects.len(), 2, "ClusterRole + binding");
    let (emulator, _issuer) = emulator(&client, &watched.name).await;
    let operator = installed.start_operator(&emulator, POD_NAME);

    sync_and_reload(&client, &watched.name, &emulator, &operator).await;
    assert_eq!(leader(&client, &installed).await.as_deref(), Some(POD_NAME));
    stop(operator);
}
