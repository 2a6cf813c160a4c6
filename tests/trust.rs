//! Trust (issue 10): the status tells the truth without churn, every fix a
//! condition asks for is picked up at once, and kvsync cleans up after
//! itself — on the real control plane with the emulator.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;

/// A Secret of the test namespace with these keys, written by someone else.
async fn create_secret(f: &Fixture, name: &str, data: &[(&str, &str)]) {
    let data: BTreeMap<&str, &str> = data.iter().copied().collect();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": data,
    }))
    .unwrap();
    f.secrets()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

async fn gone(f: &Fixture, name: &str) -> bool {
    f.secrets().get_opt(name).await.unwrap().is_none()
}

/// How soon a fix must be noticed: a watch event, not a poll.
const PROMPTLY: Duration = Duration::from_secs(10);

#[tokio::test]
async fn removing_a_data_entry_removes_its_version_and_then_nothing_is_written() {
    let f = Fixture::new("versions").await;
    let two = json!({"refreshInterval": "1s", "data": [
        {"secretKey": "pw", "remoteRef": {"name": "db-password"}},
        {"secretKey": "blob", "remoteRef": {"name": "json-blob"}}
    ]});
    f.apply("db", two).await;
    let kvs = f.wait_reason("db", "Synced").await;
    let versions = kvs.status.unwrap().synced_versions;
    assert!(versions.contains_key("db-password") && versions.contains_key("json-blob"));

    f.apply(
        "db",
        json!({"refreshInterval": "1s", "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}),
    )
    .await;
    let api = f.kvs_api();
    let settled = eventually("json-blob to leave syncedVersions", WAIT, || async {
        let kvs = api.get("db").await.ok()?;
        let status = kvs.status.as_ref()?;
        // The rollout counted for the rewritten Secret too (its last status write).
        let counted = status
            .conditions
            .iter()
            .any(|c| c.type_ == "RolledOut" && c.reason != "Pending");
        (status.observed_generation == kvs.metadata.generation
            && status.synced_versions.keys().collect::<Vec<_>>() == ["db-password"]
            && counted)
            .then_some(kvs)
    })
    .await;
    let secret = eventually("the Secret to lose key blob", WAIT, || async {
        let secret = f.secrets().get("db").await.ok()?;
        (decoded(&secret).keys().collect::<Vec<_>>() == ["pw"]).then_some(secret)
    })
    .await;
    // Baseline established (status and Secret settled): three refreshes later
    // neither has been written again.
    always(
        "the KeyVaultSecret and Secret resourceVersions",
        Duration::from_secs(4),
        || async {
            api.get("db").await.unwrap().resource_version() == settled.resource_version()
                && f.secrets().get("db").await.unwrap().resource_version()
                    == secret.resource_version()
        },
    )
    .await;
}

#[tokio::test]
async fn labels_and_annotations_removed_from_the_target_leave_the_secret() {
    let f = Fixture::new("markers").await;
    f.apply(
        "db",
        json!({
            "target": {"labels": {"team": "shop", "tier": "db"}, "annotations": {"note": "x", "owner-team": "shop"}},
            "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]
        }),
    )
    .await;
    f.wait_reason("db", "Synced").await;
    // Someone else's label: not kvsync's to remove.
    f.secrets()
        .patch(
            "db",
            &PatchParams::apply("someone"),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "db", "labels": {"other": "keep"}}
            })),
        )
        .await
        .unwrap();

    f.apply(
        "db",
        json!({
            // One annotation stays: a 1.20 API server turns a map emptied by
            // server-side apply into null, which the schema refuses.
            "target": {"labels": {"team": "shop"}, "annotations": {"owner-team": "shop"}, "reload": false},
            "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]
        }),
    )
    .await;
    let secret = eventually("tier, note and the reload marker to go", WAIT, || async {
        let secret = f.secrets().get("db").await.ok()?;
        let annotations = secret.annotations();
        (!secret.labels().contains_key("tier")
            && !annotations.contains_key("note")
            && !annotations.contains_key("reloader.stakater.com/match"))
        .then_some(secret)
    })
    .await;
    assert_eq!(
        secret.labels().get("team").map(String::as_str),
        Some("shop")
    );
    assert_eq!(
        secret.labels().get("other").map(String::as_str),
        Some("keep")
    );
    assert_eq!(decoded(&secret)["pw"], "s3cr3t-db-value");
}

#[tokio::test]
async fn merge_waits_for_its_secret_and_withdraws_its_keys_when_deleted() {
    let f = Fixture::new("merge-missing").await;
    f.apply(
        "db",
        json!({
            "target": {"name": "app", "creationPolicy": "Merge"},
            "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]
        }),
    )
    .await;
    let kvs = f.wait_reason("db", "SecretMissing").await;
    let message = &ready(&kvs).unwrap().message;
    assert!(message.contains("Secret app does not exist"), "{message}");
    assert!(gone(&f, "app").await, "Merge never creates the Secret");

    create_secret(&f, "app", &[("theirs", "1")]).await;
    let synced_within = Instant::now();
    f.wait_reason("db", "Synced").await;
    assert!(synced_within.elapsed() < PROMPTLY);
    let data = f.secret_data("app").await.unwrap();
    assert_eq!(data["pw"], "s3cr3t-db-value");
    assert_eq!(data["theirs"], "1");

    f.kvs_api()
        .delete("db", &DeleteParams::default())
        .await
        .unwrap();
    let api = f.kvs_api();
    eventually("the KeyVaultSecret to go", WAIT, || async {
        api.get_opt("db").await.unwrap().is_none().then_some(())
    })
    .await;
    let secret = f.secrets().get("app").await.unwrap();
    assert_eq!(
        decoded(&secret).keys().collect::<Vec<_>>(),
        ["theirs"],
        "kvsync's key withdrawn, theirs kept"
    );
    assert!(!secret.annotations().contains_key("kvsync.io/owner"));
}

#[tokio::test]
async fn a_renamed_target_is_deleted_when_owned_and_released_when_orphaned() {
    let f = Fixture::new("rename").await;
    let spec = |target: &str, policy: &str| {
        json!({
            "target": {"name": target, "creationPolicy": policy, "type": "kubernetes.io/basic-auth"},
            "data": [{"secretKey": "password", "remoteRef": {"name": "db-password"}}]
        })
    };
    f.apply("owned", spec("owned-a", "Owner")).await;
    f.apply("orphan", spec("orphan-a", "Orphan")).await;
    f.wait_reason("owned", "Synced").await;
    f.wait_reason("orphan", "Synced").await;

    f.apply("owned", spec("owned-b", "Owner")).await;
    f.apply("orphan", spec("orphan-b", "Orphan")).await;
    eventually("owned-a deleted, owned-b written", WAIT, || async {
        (gone(&f, "owned-a").await && f.secret_data("owned-b").await.is_some()).then_some(())
    })
    .await;
    let released = eventually("orphan-a released", WAIT, || async {
        let secret = f.secrets().get("orphan-a").await.ok()?;
        (!secret.annotations().contains_key("kvsync.io/owner")).then_some(secret)
    })
    .await;
    assert_eq!(decoded(&released)["password"], "s3cr3t-db-value");
    assert_eq!(released.type_.as_deref(), Some("kubernetes.io/basic-auth"));
    assert!(
        !released
            .labels()
            .contains_key("app.kubernetes.io/managed-by")
    );
    // The new target is written before the old one is let go of.
    assert!(f.secret_data("orphan-b").await.is_some());

    // Released means released: another KeyVaultSecret may merge into it.
    f.apply(
        "taker",
        json!({
            "target": {"name": "orphan-a", "creationPolicy": "Merge"},
            "data": [{"secretKey": "extra", "remoteRef": {"name": "app-alpha"}}]
        }),
    )
    .await;
    f.wait_reason("taker", "Synced").await;
    let data = f.secret_data("orphan-a").await.unwrap();
    assert_eq!(
        (data["password"].as_str(), data["extra"].as_str()),
        ("s3cr3t-db-value", "alpha-val"),
        "the released data stays when another object merges in"
    );
}

#[tokio::test]
async fn annotating_the_service_account_fixes_a_missing_client_id_at_once() {
    let f = Fixture::new("sa-fix").await;
    let sas: Api<ServiceAccount> = Api::namespaced(f.client.clone(), &f.ns.name);
    let strip = json!({"metadata": {"annotations": {
        "azure.workload.identity/client-id": null, "azure.workload.identity/tenant-id": null}}});
    sas.patch("shop-api", &PatchParams::default(), &Patch::Merge(&strip))
        .await
        .unwrap();
    f.apply(
        "db",
        json!({"refreshInterval": "1h", "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}),
    )
    .await;
    let kvs = f.wait_reason("db", "InvalidSpec").await;
    assert!(ready(&kvs).unwrap().message.contains("no client id"));

    let annotate = json!({"metadata": {"annotations": {
        "azure.workload.identity/client-id": SA_APP, "azure.workload.identity/tenant-id": TENANT}}});
    sas.patch(
        "shop-api",
        &PatchParams::default(),
        &Patch::Merge(&annotate),
    )
    .await
    .unwrap();
    let fixed = Instant::now();
    f.wait_reason("db", "Synced").await;
    assert!(fixed.elapsed() < PROMPTLY, "{:?}", fixed.elapsed());
}

#[tokio::test]
async fn creating_the_missing_credential_secret_fixes_it_at_once() {
    let f = Fixture::new("creds-fix").await;
    f.apply(
        "db",
        json!({
            "refreshInterval": "1h",
            "auth": {"clientSecret": {"tenantId": TENANT, "clientId": SECRET_APP,
                     "secretRef": {"name": "kv-creds", "key": "clientSecret"}}},
            "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]
        }),
    )
    .await;
    let kvs = f.wait_reason("db", "InvalidSpec").await;
    assert!(
        ready(&kvs)
            .unwrap()
            .message
            .contains("credential Secret kv-creds does not exist")
    );
    create_secret(&f, "kv-creds", &[("clientSecret", SECRET_APP_PASSWORD)]).await;
    let fixed = Instant::now();
    f.wait_reason("db", "Synced").await;
    assert!(fixed.elapsed() < PROMPTLY, "{:?}", fixed.elapsed());
}

#[tokio::test]
async fn deleting_the_conflicting_secret_fixes_it_at_once() {
    let f = Fixture::new("conflict-fix").await;
    create_secret(&f, "db", &[("mine", "1")]).await;
    f.apply(
        "db",
        json!({"refreshInterval": "1h", "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}),
    )
    .await;
    f.wait_reason("db", "SecretConflict").await;
    assert_eq!(f.secret_data("db").await.unwrap()["mine"], "1", "untouched");

    f.secrets()
        .delete("db", &DeleteParams::default())
        .await
        .unwrap();
    let fixed = Instant::now();
    f.wait_reason("db", "Synced").await;
    assert!(fixed.elapsed() < PROMPTLY, "{:?}", fixed.elapsed());
    assert_eq!(
        f.secret_data("db")
            .await
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["pw"]
    );
}

#[tokio::test]
async fn a_value_fixed_in_the_vault_is_picked_up_within_the_interval() {
    let f = Fixture::new("content-fix").await;
    f.emulator
        .set_secret("shop", "b64-value", "not base64 at all!")
        .await;
    f.apply(
        "db",
        json!({"refreshInterval": "2s", "data": [
            {"secretKey": "decoded", "remoteRef": {"name": "b64-value", "decodingStrategy": "Base64"}}
        ]}),
    )
    .await;
    let kvs = f.wait_reason("db", "InvalidSpec").await;
    assert!(ready(&kvs).unwrap().message.contains("not valid Base64"));
    assert!(gone(&f, "db").await, "nothing half-written");

    f.emulator.set_secret("shop", "b64-value", "Zml4ZWQ=").await;
    let fixed = Instant::now();
    f.wait_reason("db", "Synced").await;
    // 2 s interval + 10 % jitter + listing/sync latency.
    assert!(
        fixed.elapsed() < Duration::from_secs(6),
        "{:?}",
        fixed.elapsed()
    );
    assert_eq!(f.secret_data("db").await.unwrap()["decoded"], "fixed");
}

/// Creates an object from its JSON form.
async fn create<K>(api: Api<K>, object: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &object).await.unwrap();
}

/// The cluster-scoped RBAC of a test, deleted when dropped.
struct ClusterRbac(String);

impl Drop for ClusterRbac {
    fn drop(&mut self) {
        let name = self.0.clone();
        cleanup_in_drop(async move {
            let client = client().await;
            let dp = DeleteParams::default();
            let _ = Api::<ClusterRoleBinding>::all(client.clone())
                .delete(&name, &dp)
                .await;
            let _ = Api::<ClusterRole>::all(client).delete(&name, &dp).await;
        });
    }
}

/// RBAC for an operator that may do everything it needs in the test
/// namespace except write Secrets; returns its kubeconfig (in `dir`).
async fn operator_without_secret_writes(
    f: &Fixture,
    dir: &std::path::Path,
) -> (std::path::PathBuf, ClusterRbac) {
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "restricted-operator"}})).unwrap();
    Api::<ServiceAccount>::namespaced(f.client.clone(), &f.ns.name)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let everything = |groups: &[&str], resources: &[&str]| json!({"apiGroups": groups, "resources": resources, "verbs": ["*"]});
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": f.ns.name},
        "rules": [
            everything(&["kvsync.io", "coordination.k8s.io", "events.k8s.io", "apps"], &["*"]),
            everything(&[""], &["events", "namespaces", "configmaps", "serviceaccounts", "serviceaccounts/token"]),
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}
        ]
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": f.ns.name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f.ns.name},
        "subjects": [{"kind": "ServiceAccount", "name": "restricted-operator", "namespace": f.ns.name}]
    });
    create(Api::<ClusterRole>::all(f.client.clone()), role).await;
    let rbac = ClusterRbac(f.ns.name.clone());
    create(Api::<ClusterRoleBinding>::all(f.client.clone()), binding).await;
    let kubeconfig = token_kubeconfig(&f.client, &f.ns.name, "restricted-operator", dir).await;
    (kubeconfig, rbac)
}

#[tokio::test]
async fn a_refused_write_says_why_and_backs_off() {
    let mut f = Fixture::new("write-refused").await;
    let dir = tempfile::tempdir().unwrap();
    let (kubeconfig, _rbac) = operator_without_secret_writes(&f, dir.path()).await;
    // The fixture's operator made the reload stage's digest key (which the
    // restricted one could not) and releases its Lease on SIGTERM; the
    // restricted one (--max-backoff 16s) takes over at once.
    eventually("the reload digest key", WAIT, || async {
        f.secrets().get_opt("kvsync-digest-key").await.unwrap()
    })
    .await;
    f.stop_operator().await;
    f.operator = Some(
        Operator::start_as(
            &f.emulator,
            &f.ns.name,
            &["--max-backoff", "16s"],
            &kubeconfig,
        )
        .process,
    );
    f.apply(
        "db",
        json!({"refreshInterval": "1h", "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}),
    )
    .await;
    let kvs = f.wait_reason("db", "WriteFailed").await;
    let message = &ready(&kvs).unwrap().message;
    assert!(
        message.contains("writing Secret db failed") && message.contains("forbidden"),
        "{message}"
    );
    let warned = f.warning_events("WriteFailed").await;
    assert!(warned >= 1, "a Warning event WriteFailed");

    // Exponential backoff (1, 2, 4, 8, 16 s, each at least half of that):
    // at most 7 attempts in 30 s, where a fixed few-second retry makes 10+.
    let before = f.sync_count("WriteFailed").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let attempts = f.sync_count("WriteFailed").await - before;
    assert!((1..=7).contains(&attempts), "{attempts} attempts in 30 s");
    assert_eq!(
        f.warning_events("WriteFailed").await,
        warned,
        "one event per transition"
    );

    let grant = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "write-secrets", "namespace": f.ns.name},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "patch"]}]
    });
    let bind = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "write-secrets", "namespace": f.ns.name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "write-secrets"},
        "subjects": [{"kind": "ServiceAccount", "name": "restricted-operator", "namespace": f.ns.name}]
    });
    create(Api::<Role>::namespaced(f.client.clone(), &f.ns.name), grant).await;
    create(
        Api::<RoleBinding>::namespaced(f.client.clone(), &f.ns.name),
        bind,
    )
    .await;
    f.wait_reason("db", "Synced").await;
    assert_eq!(f.secret_data("db").await.unwrap()["pw"], "s3cr3t-db-value");
}

// ── Picked up without a poke (issue 25 item 6) ──────────────────────────────

#[tokio::test]
async fn a_sync_once_object_whose_value_did_not_render_is_retried_until_it_does() {
    let f = Fixture::new("once-render").await;
    f.apply(
        "once",
        json!({"refreshInterval": "0", "data": [{"secretKey": "user", "remoteRef": {"name": "db-password", "property": "user"}}]}),
    )
    .await;
    f.wait_reason("once", "InvalidSpec").await;
    // Fixed in the vault; nothing pokes the object (no interval, no spec change).
    f.emulator
        .set_secret("shop", "db-password", r#"{"user":"fixed-user"}"#)
        .await;
    f.wait_reason("once", "Synced").await;
    assert_eq!(f.secret_data("once").await.unwrap()["user"], "fixed-user");
}

#[tokio::test]
async fn a_secret_the_api_server_refused_for_its_vault_content_is_written_once_the_vault_is_fixed()
{
    let f = Fixture::new("refused-422").await;
    // A TLS Secret whose keys come from the vault: without tls.crt and
    // tls.key the API server refuses it (422). Synced once (no interval, no
    // listing): only a retry of the refused write can see the fix.
    f.apply(
        "tls",
        json!({"refreshInterval": "0", "target": {"type": "kubernetes.io/tls"},
               "dataFrom": [{"extract": {"name": "app-config"}}]}),
    )
    .await;
    let refused = f.wait_reason("tls", "InvalidSpec").await;
    let message = &ready(&refused).unwrap().message;
    assert!(
        message.contains("the API server refused Secret tls"),
        "{message}"
    );
    // Retried with backoff (as for a webhook that may change its verdict),
    // not left until the spec changes.
    eventually("the refused write retried", WAIT, || async {
        (f.sync_count("InvalidSpec").await >= 3).then_some(())
    })
    .await;
    f.emulator
        .set_secret("shop", "app-config", r#"{"tls.crt":"crt","tls.key":"key"}"#)
        .await;
    f.wait_reason("tls", "Synced").await;
    assert_eq!(f.secret_data("tls").await.unwrap()["tls.crt"], "crt");
}

#[tokio::test]
async fn a_template_written_by_another_keyvaultsecret_re_renders_its_users_at_once() {
    let f = Fixture::new("template-chain").await;
    // `writer` writes Secret tpl; `user` renders tpl's key conf as a
    // template. Both refresh hourly: only the watch can carry the change.
    f.apply(
        "writer",
        json!({"target": {"name": "tpl"}, "data": [{"secretKey": "conf", "remoteRef": {"name": "db-password"}}]}),
    )
    .await;
    f.wait_reason("writer", "Synced").await;
    f.apply(
        "user",
        json!({"data": [{"secretKey": "alpha", "remoteRef": {"name": "app-alpha"}}],
               "target": {"template": {"templateFrom": [{"secret": {"name": "tpl", "items": [{"key": "conf"}]}}]}}}),
    )
    .await;
    f.wait_reason("user", "Synced").await;
    assert_eq!(
        f.secret_data("user").await.unwrap()["conf"],
        "s3cr3t-db-value"
    );

    f.emulator
        .set_secret("shop", "db-password", "rotated-template-text")
        .await;
    f.force_sync("writer", "rotate").await;
    eventually("user re-rendered from the rewritten tpl", WAIT, || async {
        (f.secret_data("user").await?.get("conf")? == "rotated-template-text").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_namespace_that_starts_or_stops_matching_the_selector_needs_no_restart() {
    const LABEL: &str = "kvsync-test-serve";
    let f = Fixture::with_operator_args(
        "ns-selector",
        &["--namespace-selector", "kvsync-test-serve=yes"],
    )
    .await;
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(f.client.clone());
    let label = |value: &str| {
        let patch = json!({"metadata": {"labels": {LABEL: value}}});
        let namespaces = namespaces.clone();
        let name = f.ns.name.clone();
        async move {
            namespaces
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    let pw = json!([{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]);
    // Served: a Merge into someone else's Secret (finalizer kvsync.io/merge-cleanup).
    label("yes").await;
    create_secret(&f, "app", &[("theirs", "1")]).await;
    f.apply(
        "merger",
        json!({"target": {"name": "app", "creationPolicy": "Merge"}, "data": pw}),
    )
    .await;
    f.wait_reason("merger", "Synced").await;

    // Stops matching: a new object is not served (the operator says so) …
    label("no").await;
    f.apply("late", json!({"data": pw})).await;
    eventually("late seen out of scope", WAIT, || async {
        let log = f.process().output();
        log.lines()
            .any(|line| line.contains("not in scope") && line.contains("/late"))
            .then_some(())
    })
    .await;
    assert!(
        f.kvs_api().get("late").await.unwrap().status.is_none(),
        "not served"
    );
    // … and starts matching again: served without a restart.
    label("yes").await;
    f.wait_reason("late", "Synced").await;

    // Deleted while out of scope: its keys are given back and the finalizer
    // does not hang the deletion.
    label("no").await;
    f.kvs_api()
        .delete("merger", &DeleteParams::default())
        .await
        .unwrap();
    eventually("merger deleted", WAIT, || async {
        f.kvs_api()
            .get_opt("merger")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let app = f.secret_data("app").await.unwrap();
    assert_eq!(
        app.keys().collect::<Vec<_>>(),
        ["theirs"],
        "kvsync's key withdrawn"
    );
}
