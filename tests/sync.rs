//! The sync stage against a real kube-apiserver and the Key Vault emulator:
//! each test gets its own namespace, emulator and operator.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kvsync::api::KeyVaultSecret;
use reqwest::Method;
use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn every_data_form_syncs_into_one_secret() {
    let f = Fixture::new("forms").await;
    f.apply(
        "app",
        json!({
            "target": {"name": "app-secret", "labels": {"team": "shop"}},
            "data": [
                {"secretKey": "password", "remoteRef": {"name": "db-password"}},
                {"secretKey": "nested", "remoteRef": {"name": "json-blob", "property": "db.password"}},
                {"secretKey": "decoded", "remoteRef": {"name": "b64-value", "decodingStrategy": "Base64"}}
            ],
            "dataFrom": [
                {"extract": {"name": "app-config"}},
                {"find": {"nameRegex": "^app-", "tags": {"env": "prod"}}}
            ]
        }),
    )
    .await;
    let kvs = f.wait_reason("app", "Synced").await;
    let data = f.secret_data("app-secret").await.unwrap();
    let expected: BTreeMap<String, String> = [
        ("password", "s3cr3t-db-value"),
        ("nested", "nested-pw"),
        ("decoded", "hello-world"),
        ("user", "app"),
        ("port", "5432"),
        ("app-alpha", "alpha-val"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(
        data, expected,
        "disabled app-gamma and dev-tagged app-beta are left out"
    );

    let secret = f.secrets().get("app-secret").await.unwrap();
    assert_eq!(
        secret
            .labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("kvsync")
    );
    assert_eq!(
        secret.labels().get("team").map(String::as_str),
        Some("shop")
    );
    assert_eq!(
        secret
            .annotations()
            .get("reloader.stakater.com/match")
            .map(String::as_str),
        Some("true")
    );
    let owner = &secret.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("KeyVaultSecret", Some(true))
    );

    let status = kvs.status.unwrap();
    assert_eq!(status.secret_name.as_deref(), Some("app-secret"));
    assert_eq!(status.observed_generation, kvs.metadata.generation);
    for name in [
        "db-password",
        "json-blob",
        "b64-value",
        "app-config",
        "app-alpha",
    ] {
        let version = status
            .synced_versions
            .get(name)
            .expect("a version per vault secret read");
        assert!(
            version.len() == 32 && version.chars().all(|c| c.is_ascii_hexdigit()),
            "{name}: {version}"
        );
    }
}

#[tokio::test]
async fn tls_certificate_becomes_tls_crt_and_key() {
    let f = Fixture::new("tls").await;
    f.apply(
        "web",
        json!({"target": {"type": "kubernetes.io/tls"}, "dataFrom": [{"certificate": {"name": "web-cert"}}]}),
    )
    .await;
    f.wait_reason("web", "Synced").await;
    let secret = f.secrets().get("web").await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = decoded(&secret);
    assert!(data["tls.crt"].starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(data["tls.key"].contains("PRIVATE KEY") && !data["tls.key"].contains("CERTIFICATE"));
}

#[tokio::test]
async fn rotation_is_picked_up_and_idle_refreshes_write_nothing() {
    let f = Fixture::new("rotate").await;
    f.apply("db", json!({"refreshInterval": "2s", "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}))
        .await;
    let first = f.wait_reason("db", "Synced").await;
    let secret = f.secrets().get("db").await.unwrap();
    let (secret_rv, kvs_rv) = (secret.resource_version(), first.resource_version());

    // Three refresh intervals with no change: neither the Secret nor the status is written.
    always(
        "neither the Secret nor the status rewritten while idle",
        Duration::from_secs(7),
        || async {
            f.secrets().get("db").await.unwrap().resource_version() == secret_rv
                && f.kvs_api().get("db").await.unwrap().resource_version() == kvs_rv
        },
    )
    .await;
    let gets = f.emulator.counters().await;
    assert!(
        gets["total"].as_u64().unwrap() >= 4,
        "the vault was actually polled: {gets}"
    );

    f.emulator
        .set_secret("shop", "db-password", "rotated-value")
        .await;
    eventually("the rotated value", Duration::from_secs(6), || async {
        (f.secret_data("db").await?.get("pw")? == "rotated-value").then_some(())
    })
    .await;
    f.assert_nothing_leaked(&["rotated-value"]).await;
}

#[tokio::test]
async fn tokens_never_go_to_hosts_outside_the_allow_list() {
    let f = Fixture::new("containment").await;
    // A second "vault" the operator was not told to allow (it allows `localhost` only).
    let rogue = Emulator::start(json!({"vaults": [{"name": "rogue", "secrets": [{"name": "db-password", "value": "x"}]}],
        "apps": [{"tenantId": TENANT, "clientId": SA_APP, "access": [{"vault": "rogue", "secrets": ["*"]}]}]}))
    .await;
    let rogue_url = rogue.vault_url("rogue").replace("localhost", "127.0.0.1");
    let body = json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "KeyVaultSecret", "metadata": {"name": "rogue"},
        "spec": {"vaultUrl": rogue_url, "auth": {"workloadIdentity": {"serviceAccountName": "shop-api"}},
                 "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}});
    f.kvs_api()
        .patch("rogue", &PatchParams::apply("test"), &Patch::Apply(&body))
        .await
        .unwrap();
    let refused = f.wait_reason("rogue", "InvalidSpec").await;
    assert!(
        ready(&refused)
            .unwrap()
            .message
            .contains("not an allowed Key Vault host")
    );
    always(
        "the rogue host sees no request",
        Duration::from_secs(2),
        || async { rogue.counters().await["total"].as_u64() == Some(0) },
    )
    .await;
}

#[tokio::test]
async fn force_sync_and_target_changes_sync_immediately() {
    let f = Fixture::new("force").await;
    let secret = f.synced_db("1h").await;
    assert_eq!(
        secret
            .annotations()
            .get("reloader.stakater.com/match")
            .map(String::as_str),
        Some("true"),
        "an omitted target still opts in to reload"
    );
    f.emulator
        .set_secret("shop", "db-password", "forced-value")
        .await;
    f.force_sync("db", "1").await;
    eventually("the forced value", Duration::from_secs(5), || async {
        (f.secret_data("db").await?.get("pw")? == "forced-value").then_some(())
    })
    .await;
    // A deleted or hand-edited target is repaired at once, not at the next refresh (1h).
    f.secrets()
        .delete("db", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the deleted Secret to be recreated",
        Duration::from_secs(5),
        || async { (f.secret_data("db").await?.get("pw")? == "forced-value").then_some(()) },
    )
    .await;
    let edit = json!({"stringData": {"pw": "tampered"}});
    f.secrets()
        .patch("db", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    eventually(
        "the edited Secret to be repaired",
        Duration::from_secs(5),
        || async { (f.secret_data("db").await?.get("pw")? == "forced-value").then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn client_secret_auth_and_its_rotation() {
    let f = Fixture::new("clientsecret").await;
    let creds: Secret = serde_json::from_value(
        json!({"metadata": {"name": "kv-creds"}, "stringData": {"clientSecret": "wrong"}}),
    )
    .unwrap();
    f.secrets()
        .create(&PostParams::default(), &creds)
        .await
        .unwrap();
    let auth = json!({"clientSecret": {"tenantId": TENANT, "clientId": SECRET_APP, "secretRef": {"name": "kv-creds", "key": "clientSecret"}}});
    f.apply(
        "db",
        json!({"auth": auth, "data": [{"secretKey": "pw", "remoteRef": {"name": "restricted"}}]}),
    )
    .await;
    let failed = f.wait_reason("db", "AuthFailed").await;
    assert!(
        ready(&failed).unwrap().message.contains("AADSTS7000215"),
        "{:?}",
        ready(&failed)
    );
    assert!(f.secrets().get_opt("db").await.unwrap().is_none());

    // Fixing the credential Secret is picked up without touching the KeyVaultSecret.
    let fix = json!({"stringData": {"clientSecret": SECRET_APP_PASSWORD}});
    f.secrets()
        .patch("kv-creds", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .unwrap();
    f.wait_reason("db", "Synced").await;
    assert_eq!(f.secret_data("db").await.unwrap()["pw"], "not-for-you");
    f.assert_nothing_leaked(&["wrong"]).await;
}

#[tokio::test]
async fn client_certificate_auth() {
    let f = Fixture::new("clientcert").await;
    let creds: Secret = serde_json::from_value(
        json!({"metadata": {"name": "kv-cert"}, "stringData": {"tls.pem": f.app_certificate}}),
    )
    .unwrap();
    f.secrets()
        .create(&PostParams::default(), &creds)
        .await
        .unwrap();
    let auth = json!({"clientCertificate": {"tenantId": TENANT, "clientId": CERT_APP, "secretRef": {"name": "kv-cert", "key": "tls.pem"}}});
    f.apply(
        "db",
        json!({"auth": auth, "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}),
    )
    .await;
    f.wait_reason("db", "Synced").await;
    assert_eq!(f.secret_data("db").await.unwrap()["pw"], "s3cr3t-db-value");
    f.assert_nothing_leaked(&[]).await;
}

#[tokio::test]
async fn identities_are_confined_to_their_namespace() {
    let f = Fixture::new("isolation").await;
    // The operator identity is refused where it is not allowed.
    f.apply("op", json!({"auth": {"workloadIdentity": {}}, "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}))
        .await;
    let refused = f.wait_reason("op", "AuthFailed").await;
    assert!(
        ready(&refused)
            .unwrap()
            .message
            .contains("--operator-identity-namespaces")
    );

    // Namespace B's service account named like A's, annotated with A's client id: Entra
    // (the emulator) refuses it because the federated subject names namespace A.
    let other = TestNamespace::new(&f.client, "isolation-b").await;
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "impostor", "annotations": {
        "azure.workload.identity/client-id": SA_APP, "azure.workload.identity/tenant-id": TENANT}}}))
    .unwrap();
    Api::<ServiceAccount>::namespaced(f.client.clone(), &other.name)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let operator_b = Operator::start(&f.emulator, &other.name, &[]);
    let api_b: Api<KeyVaultSecret> = Api::namespaced(f.client.clone(), &other.name);
    let body = json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "KeyVaultSecret", "metadata": {"name": "steal"},
        "spec": {"vaultUrl": f.emulator.vault_url("shop"), "auth": {"workloadIdentity": {"serviceAccountName": "impostor"}},
                 "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}});
    api_b
        .patch("steal", &PatchParams::apply("test"), &Patch::Apply(&body))
        .await
        .unwrap();
    let stolen = eventually("namespace B to be refused", WAIT, || async {
        let kvs = api_b.get("steal").await.ok()?;
        ready(&kvs).filter(|c| c.reason == "AuthFailed").cloned()
    })
    .await;
    assert!(
        stolen.message.contains("AADSTS700213"),
        "{}",
        stolen.message
    );
    assert!(
        Api::<Secret>::namespaced(f.client.clone(), &other.name)
            .get_opt("steal")
            .await
            .unwrap()
            .is_none()
    );
    drop(operator_b);
}

#[tokio::test]
async fn an_unowned_secret_is_never_overwritten_but_can_be_merged() {
    let f = Fixture::new("conflict").await;
    let theirs: Secret = serde_json::from_value(
        json!({"metadata": {"name": "shared"}, "stringData": {"theirs": "keep-me"}}),
    )
    .unwrap();
    f.secrets()
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    f.apply("owner", json!({"target": {"name": "shared"}, "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}))
        .await;
    f.wait_reason("owner", "SecretConflict").await;
    assert_eq!(
        f.secret_data("shared").await.unwrap(),
        BTreeMap::from([("theirs".into(), "keep-me".into())])
    );

    f.kvs_api()
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    f.apply(
        "merger",
        json!({"target": {"name": "shared", "creationPolicy": "Merge"}, "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}),
    )
    .await;
    f.wait_reason("merger", "Synced").await;
    let data = f.secret_data("shared").await.unwrap();
    assert_eq!(
        (data["theirs"].as_str(), data["pw"].as_str()),
        ("keep-me", "s3cr3t-db-value")
    );

    // A second KeyVaultSecret aiming at the same Secret is refused.
    f.apply("second", json!({"target": {"name": "shared", "creationPolicy": "Merge"}, "data": [{"secretKey": "x", "remoteRef": {"name": "app-alpha"}}]}))
        .await;
    let second = f.wait_reason("second", "SecretConflict").await;
    assert!(ready(&second).unwrap().message.contains("merger"));
}

#[tokio::test]
async fn remote_failures_keep_the_last_good_secret() {
    let f = Fixture::new("failures").await;
    let good = f.synced_db("1s").await;

    f.emulator
        .control(
            Method::PATCH,
            "vaults/shop/secrets/db-password",
            Some(json!({"enabled": false})),
        )
        .await;
    f.wait_reason("db", "RemoteDisabled").await;
    f.emulator
        .control(
            Method::PATCH,
            "vaults/shop/secrets/db-password",
            Some(json!({"enabled": true})),
        )
        .await;
    f.wait_reason("db", "Synced").await;

    f.emulator
        .control(Method::POST, "faults", Some(json!({"target": "vault:shop", "pathPrefix": "/secrets", "count": 1000, "kind": {"status": 429}})))
        .await;
    f.force_sync("db", "1").await;
    f.wait_reason("db", "Throttled").await;
    f.emulator.control(Method::DELETE, "faults", None).await;
    f.emulator
        .control(Method::POST, "faults", Some(json!({"target": "vault:shop", "pathPrefix": "/secrets", "count": 1000, "kind": {"status": 500}})))
        .await;
    f.wait_reason("db", "VaultUnavailable").await;
    f.emulator.control(Method::DELETE, "faults", None).await;
    f.wait_reason("db", "Synced").await;

    f.emulator
        .control(Method::DELETE, "vaults/shop/secrets/db-password", None)
        .await;
    f.wait_reason("db", "RemoteNotFound").await;

    f.apply(
        "forbidden",
        json!({"data": [{"secretKey": "pw", "remoteRef": {"name": "restricted"}}]}),
    )
    .await;
    let forbidden = f.wait_reason("forbidden", "Forbidden").await;
    assert!(
        ready(&forbidden)
            .unwrap()
            .message
            .contains("Key Vault Secrets User")
    );

    let now = f.secrets().get("db").await.unwrap();
    assert_eq!(
        now.data, good.data,
        "the Secret kept its last good data through every failure"
    );
    assert_eq!(
        now.resource_version(),
        good.resource_version(),
        "and was never rewritten"
    );
}

#[tokio::test]
async fn deletion_follows_the_creation_policy() {
    let f = Fixture::new("deletion").await;
    let spec = |policy: &str| json!({"target": {"creationPolicy": policy}, "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]});
    f.apply("owned", spec("Owner")).await;
    f.apply("orphan", spec("Orphan")).await;
    f.wait_reason("owned", "Synced").await;
    f.wait_reason("orphan", "Synced").await;
    for name in ["owned", "orphan"] {
        f.kvs_api()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    eventually(
        "the garbage collector to delete the owned Secret",
        WAIT,
        || async {
            f.secrets()
                .get_opt("owned")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    always(
        "the orphan Secret stays",
        Duration::from_secs(2),
        || async { f.secrets().get_opt("orphan").await.unwrap().is_some() },
    )
    .await;
}

#[tokio::test]
async fn invalid_specs_are_refused_or_reported() {
    let f = Fixture::new("invalid").await;
    // Rejected by the schema.
    let bad = json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "KeyVaultSecret", "metadata": {"name": "bad"},
        "spec": {"vaultUrl": "http://shop.vault.azure.net/", "auth": {"workloadIdentity": {}, "clientSecret": {"tenantId": "t", "clientId": "c", "secretRef": {"name": "x", "key": "y"}}},
                 "refreshInterval": "soon", "data": [{"secretKey": "bad key", "remoteRef": {"name": "under_score"}}]}});
    let error = f
        .kvs_api()
        .create(
            &PostParams::default(),
            &serde_json::from_value(bad).unwrap(),
        )
        .await
        .unwrap_err();
    let message = error.to_string();
    for field in [
        "spec.vaultUrl",
        "spec.auth",
        "spec.refreshInterval",
        "secretKey",
        "remoteRef.name",
    ] {
        assert!(
            message.contains(field),
            "schema error should name {field}: {message}"
        );
    }

    // Accepted by the schema, refused by the operator before any request.
    let before = f.emulator.counters().await["total"].as_u64().unwrap();
    let body = json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "KeyVaultSecret", "metadata": {"name": "evil"},
        "spec": {"vaultUrl": "https://attacker.example.com/", "auth": {"workloadIdentity": {"serviceAccountName": "shop-api"}},
                 "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}});
    f.kvs_api()
        .create(
            &PostParams::default(),
            &serde_json::from_value(body).unwrap(),
        )
        .await
        .unwrap();
    let evil = f.wait_reason("evil", "InvalidSpec").await;
    assert!(
        ready(&evil)
            .unwrap()
            .message
            .contains("not an allowed Key Vault host")
    );

    f.apply(
        "regex",
        json!({"dataFrom": [{"find": {"nameRegex": "(unclosed"}}]}),
    )
    .await;
    f.wait_reason("regex", "InvalidSpec").await;
    let refused = f.emulator.counters().await["total"].as_u64().unwrap();
    assert_eq!(
        refused, before,
        "evil and regex are refused before any request"
    );
    f.apply("notjson", json!({"data": [{"secretKey": "pw", "remoteRef": {"name": "db-password", "property": "a.b"}}]})).await;
    let notjson = f.wait_reason("notjson", "InvalidSpec").await;
    assert!(
        !ready(&notjson).unwrap().message.contains("s3cr3t"),
        "no value in conditions"
    );
    assert!(
        f.secrets().get_opt("notjson").await.unwrap().is_none(),
        "nothing half-written"
    );
    // notjson's value was read (the error is about its content); how many
    // syncs it took depends on when the watches delivered their first lists.
    let after = f.emulator.counters().await["total"].as_u64().unwrap();
    assert!(after > refused, "the not-json value was read");
}

#[tokio::test]
async fn kubectl_columns_show_ready_reason_and_secret() {
    let f = Fixture::new("columns").await;
    f.apply("db", json!({"target": {"name": "db-creds"}, "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]})).await;
    f.wait_reason("db", "Synced").await;
    let request = http::Request::get(format!(
        "/apis/kvsync.io/v1alpha1/namespaces/{}/keyvaultsecrets",
        f.ns.name
    ))
    .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
    .body(vec![])
    .unwrap();
    let table: Value = f.client.request(request).await.unwrap();
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        ["Name", "Ready", "Reason", "Secret", "Last Sync", "Age"]
    );
    let cells = &table["rows"][0]["cells"];
    assert_eq!(
        (cells[1].as_str(), cells[2].as_str(), cells[3].as_str()),
        (Some("True"), Some("Synced"), Some("db-creds"))
    );
}

/// Sum of the emulator's counters for one route (`/secrets/{name}` also
/// counts its trailing-slash form, which the SDK uses for the latest version).
fn count(counters: &Value, route: &str) -> u64 {
    counters["byEndpoint"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.trim_end_matches('/').ends_with(route))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum()
}

#[tokio::test]
async fn many_keyvaultsecrets_share_one_listing_and_read_a_change_once() {
    let f = Fixture::new("economy").await;
    for i in 0..10 {
        f.apply(
            &format!("app-{i}"),
            json!({"refreshInterval": "2s", "data": [
                {"secretKey": "pw", "remoteRef": {"name": "db-password"}},
                {"secretKey": "cfg", "remoteRef": {"name": "app-config"}}]}),
        )
        .await;
    }
    for i in 0..10 {
        f.wait_reason(&format!("app-{i}"), "Synced").await;
    }
    // Values first read in the same second as their last update are read once
    // more (Key Vault's `updated` has one-second resolution): the window
    // opens once those re-reads are over.
    vault_reads_settled(&f.emulator, Duration::from_secs(60)).await;
    f.emulator
        .control(Method::POST, "counters/reset", None)
        .await;
    // An observation window of three refresh intervals.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let idle = f.emulator.counters().await;
    let (lists, gets) = (
        count(&idle, "GET /secrets"),
        count(&idle, "GET /secrets/{name}"),
    );
    assert_eq!(gets, 0, "no value is read while nothing changes: {idle}");
    assert!(
        (1..=5).contains(&lists),
        "one shared listing per interval, not one per object: {idle}"
    );

    // The rotation lands right after a listing, so the listing that notices
    // it comes about one interval later, in a later second than the new
    // version's `updated`: a value read in that same second is never trusted
    // and would be read again by each of the ten (src/vault/detect.rs).
    f.emulator
        .control(Method::POST, "counters/reset", None)
        .await;
    eventually("a listing to rotate after", WAIT, || async {
        (count(&f.emulator.counters().await, "GET /secrets") >= 1).then_some(())
    })
    .await;
    f.emulator
        .control(Method::POST, "counters/reset", None)
        .await;
    f.emulator
        .set_secret("shop", "db-password", "rotated-for-all")
        .await;
    for i in 0..10 {
        let name = format!("app-{i}");
        eventually(
            "every Secret to get the rotated value",
            Duration::from_secs(8),
            || async {
                (f.secret_data(&name).await?.get("pw")? == "rotated-for-all").then_some(())
            },
        )
        .await;
    }
    let after = f.emulator.counters().await;
    assert_eq!(
        count(&after, "GET /secrets/{name}"),
        1,
        "the changed secret is read once for all ten: {after}"
    );
}

/// The operator's API-server requests that are not watches, by method.
async fn api_requests(f: &Fixture) -> BTreeMap<String, u64> {
    f.metrics()
        .await
        .lines()
        .filter_map(|line| line.strip_prefix("kvsync_kubernetes_requests_total{method=\""))
        .filter_map(|rest| {
            let (method, rest) = rest.split_once('"')?;
            let count = rest.strip_prefix(",watch=\"false\"} ")?;
            Some((method.to_owned(), count.trim().parse().ok()?))
        })
        .collect()
}

/// Resource versions of every Secret and KeyVaultSecret of the namespace.
async fn all_versions(f: &Fixture) -> BTreeMap<String, String> {
    let secrets = f.secrets().list(&Default::default()).await.unwrap();
    let objects = f.kvs_api().list(&Default::default()).await.unwrap();
    let secrets = secrets
        .items
        .iter()
        .map(|s| (format!("secret/{}", s.name_any()), s.resource_version()));
    let objects = objects
        .items
        .iter()
        .map(|k| (format!("kvs/{}", k.name_any()), k.resource_version()));
    secrets
        .chain(objects)
        .map(|(key, rv)| (key, rv.unwrap_or_default()))
        .collect()
}

/// Scale (issue 17): an idle refresh reads the target Secret, the credential
/// Secret and the ServiceAccount as the watches saw them, so the API-server
/// requests of an idle operator do not grow with its KeyVaultSecrets — and
/// a change by someone else to any of them (or to a template source) still
/// takes effect at once.
#[tokio::test]
async fn idle_refreshes_ask_the_api_server_nothing_per_object() {
    const OBJECTS: usize = 20;
    let f = Fixture::new("idle-api").await;
    let creds: Secret = serde_json::from_value(
        json!({"metadata": {"name": "kv-creds"}, "stringData": {"clientSecret": SECRET_APP_PASSWORD}}),
    )
    .unwrap();
    f.secrets()
        .create(&PostParams::default(), &creds)
        .await
        .unwrap();
    let client_secret = json!({"clientSecret": {"tenantId": TENANT, "clientId": SECRET_APP, "secretRef": {"name": "kv-creds", "key": "clientSecret"}}});
    let workload = json!({"workloadIdentity": {"serviceAccountName": "shop-api"}});
    let config_maps: Api<ConfigMap> = Api::namespaced(f.client.clone(), &f.ns.name);
    let templates: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "templates"}, "data": {"conf": "pw={{ pw }}"}}),
    )
    .unwrap();
    config_maps
        .create(&PostParams::default(), &templates)
        .await
        .unwrap();
    // Half with a service account, half with a credential Secret; a quarter with a template source too.
    for i in 0..OBJECTS {
        let auth = if i % 2 == 0 {
            &workload
        } else {
            &client_secret
        };
        let mut spec = json!({"refreshInterval": "2s", "auth": auth, "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]});
        if i % 4 < 2 {
            spec["target"] = json!({"template": {"mergePolicy": "Merge",
                "templateFrom": [{"configMap": {"name": "templates", "items": [{"key": "conf"}]}}]}});
        }
        f.apply(&format!("app-{i}"), spec).await;
    }
    for i in 0..OBJECTS {
        f.wait_reason(&format!("app-{i}"), "Synced").await;
    }
    let total = |requests: &BTreeMap<String, u64>| requests.values().sum::<u64>();
    // Settled: a refresh of everyone (2 s) with next to no request, e.g.
    // once the watch has delivered the operator's own writes.
    eventually(
        "an idle refresh interval (at most 2 API requests in 2.5 s)",
        Duration::from_secs(60),
        || async {
            let before = total(&api_requests(&f).await);
            tokio::time::sleep(Duration::from_millis(2500)).await;
            (total(&api_requests(&f).await) <= before + 2).then_some(())
        },
    )
    .await;
    let (requests, versions) = (api_requests(&f).await, all_versions(&f).await);
    let unchanged = f.sync_count("unchanged").await;
    // Four refresh intervals: about 80 refreshes, each of which used to GET
    // its target and its credential Secret or ServiceAccount. What remains
    // does not depend on the objects: the Lease renewal (a GET and a PATCH
    // every few seconds) and the reload stage's look for Argo Rollouts.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (idle_requests, refreshes) = (
        api_requests(&f).await,
        f.sync_count("unchanged").await - unchanged,
    );
    assert!(
        refreshes >= OBJECTS as u64,
        "every object was refreshed in the window: {refreshes} refreshes"
    );
    assert!(
        total(&idle_requests) <= total(&requests) + 8,
        "{refreshes} idle refreshes made no request per object: {requests:?} then {idle_requests:?}"
    );
    assert_eq!(
        all_versions(&f).await,
        versions,
        "no Secret or status was written"
    );

    // What someone else changes still counts at once: an edited template …
    let edit = json!({"data": {"conf": "password={{ pw }}"}});
    config_maps
        .patch("templates", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    eventually("the edited template to be rendered", WAIT, || async {
        (f.secret_data("app-1").await?.get("conf")? == "password=s3cr3t-db-value").then_some(())
    })
    .await;
    // … an edited target …
    let edit = json!({"stringData": {"pw": "tampered"}});
    f.secrets()
        .patch("app-0", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    eventually("the edited Secret to be repaired", WAIT, || async {
        (f.secret_data("app-0").await?.get("pw")? == "s3cr3t-db-value").then_some(())
    })
    .await;
    // … a ServiceAccount that lost its client id …
    let sa: Api<ServiceAccount> = Api::namespaced(f.client.clone(), &f.ns.name);
    let drop_client_id =
        json!({"metadata": {"annotations": {"azure.workload.identity/client-id": null}}});
    sa.patch(
        "shop-api",
        &PatchParams::default(),
        &Patch::Merge(&drop_client_id),
    )
    .await
    .unwrap();
    let refused = f.wait_reason("app-0", "InvalidSpec").await;
    assert!(ready(&refused).unwrap().message.contains("no client id"));
    // … and a rotated credential.
    let wrong = json!({"stringData": {"clientSecret": "wrong"}});
    f.secrets()
        .patch("kv-creds", &PatchParams::default(), &Patch::Merge(&wrong))
        .await
        .unwrap();
    f.wait_reason("app-1", "AuthFailed").await;
    f.assert_nothing_leaked(&["tampered", "wrong"]).await;
}

#[tokio::test]
async fn one_operator_serves_several_listed_namespaces() {
    let f = Fixture::new("multi-a").await;
    let other = TestNamespace::new(&f.client, "multi-b").await;
    let operator = Operator::start(&f.emulator, &f.ns.name, &["--namespaces", &other.name]);
    let creds: Secret = serde_json::from_value(
        json!({"metadata": {"name": "kv-creds"}, "stringData": {"clientSecret": SECRET_APP_PASSWORD}}),
    )
    .unwrap();
    Api::<Secret>::namespaced(f.client.clone(), &other.name)
        .create(&PostParams::default(), &creds)
        .await
        .unwrap();
    let api_b: Api<KeyVaultSecret> = Api::namespaced(f.client.clone(), &other.name);
    let body = json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "KeyVaultSecret", "metadata": {"name": "db"},
        "spec": {"vaultUrl": f.emulator.vault_url("shop"),
                 "auth": {"clientSecret": {"tenantId": TENANT, "clientId": SECRET_APP, "secretRef": {"name": "kv-creds", "key": "clientSecret"}}},
                 "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}});
    api_b
        .patch("db", &PatchParams::apply("test"), &Patch::Apply(&body))
        .await
        .unwrap();
    eventually("the second namespace to sync", WAIT, || async {
        let kvs = api_b.get("db").await.ok()?;
        ready(&kvs).filter(|c| c.reason == "Synced").map(|_| ())
    })
    .await;
    drop(operator);
}

#[tokio::test]
async fn only_the_lease_holder_acts_and_a_standby_takes_over() {
    let f = Fixture::new("leader").await;
    let home = TestNamespace::new(&f.client, "leader-home").await;
    let replica = |identity: &str| {
        Operator::start(
            &f.emulator,
            &home.name,
            &["--leader-identity", identity, "--lease-duration", "3s"],
        )
    };
    let leader = replica("replica-a");
    let home_secrets: Api<Secret> = Api::namespaced(f.client.clone(), &home.name);
    eventually("replica-a to lead", WAIT, || async {
        leader
            .process
            .output()
            .contains("became the leader")
            .then_some(())
    })
    .await;
    let standby = replica("replica-b");

    let creds: Secret = serde_json::from_value(
        json!({"metadata": {"name": "kv-creds"}, "stringData": {"clientSecret": SECRET_APP_PASSWORD}}),
    )
    .unwrap();
    home_secrets
        .create(&PostParams::default(), &creds)
        .await
        .unwrap();
    let kvs: Api<KeyVaultSecret> = Api::namespaced(f.client.clone(), &home.name);
    let body = json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "KeyVaultSecret", "metadata": {"name": "db"},
        "spec": {"vaultUrl": f.emulator.vault_url("shop"), "refreshInterval": "1s",
                 "auth": {"clientSecret": {"tenantId": TENANT, "clientId": SECRET_APP, "secretRef": {"name": "kv-creds", "key": "clientSecret"}}},
                 "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}});
    kvs.patch("db", &PatchParams::apply("test"), &Patch::Apply(&body))
        .await
        .unwrap();
    let value = |want: &'static str| {
        let api = home_secrets.clone();
        move || {
            let api = api.clone();
            async move {
                let secret = api.get_opt("db").await.ok()??;
                (secret.data?.get("pw")?.0 == want.as_bytes()).then_some(())
            }
        }
    };
    eventually("the leader to sync", WAIT, value("s3cr3t-db-value")).await;
    assert!(
        !standby.process.output().contains("became the leader"),
        "two leaders at once"
    );
    assert!(
        !standby.process.output().contains("wrote Secret"),
        "the standby acted"
    );

    // The leader crashes; the standby takes over within a lease duration or so.
    leader.process.kill();
    f.emulator
        .set_secret("shop", "db-password", "after-failover")
        .await;
    let started = std::time::Instant::now();
    eventually(
        "the standby to take over and sync",
        Duration::from_secs(20),
        value("after-failover"),
    )
    .await;
    assert!(standby.process.output().contains("became the leader"));
    eprintln!("failover took {:?}", started.elapsed());
}

#[tokio::test]
async fn health_metrics_json_logs_and_graceful_shutdown() {
    let f = Fixture::new("service").await;
    // A second operator for another namespace, with JSON logs, to stop with SIGTERM.
    let home = TestNamespace::new(&f.client, "service-json").await;
    let operator = Operator::start(&f.emulator, &home.name, &["--log-format", "json"]);
    f.apply(
        "db",
        json!({"data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}),
    )
    .await;
    f.wait_reason("db", "Synced").await;

    let base = eventually("the metrics address in the log", WAIT, || async {
        metrics_url(&f.operator.process.output())
    })
    .await;
    let http = reqwest::Client::new();
    let healthz = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert!(
        healthz.status().is_success(),
        "/healthz: {}",
        healthz.status()
    );
    // Ready once the reload stage's watches have listed, which may come after
    // the first sync when the machine is busy; until then a 503 names them.
    eventually("/readyz to answer 200", WAIT, || async {
        let response = http.get(format!("{base}/readyz")).send().await.ok()?;
        let status = response.status();
        let body = response.text().await.ok()?;
        assert!(
            status.is_success() || body.starts_with("waiting for the first list of: "),
            "/readyz: {status} {body}"
        );
        status.is_success().then_some(())
    })
    .await;
    // The status is written before the sync that wrote it is counted: wait
    // for the counts rather than scrape once.
    let series = [
        "kvsync_syncs_total{outcome=\"written\"} 1",
        "kvsync_keyvault_requests_total{vault=\"localhost\",operation=\"get\",result=\"ok\"}",
        "kvsync_sync_duration_seconds_bucket",
        "kvsync_syncs_in_flight",
        // Its watches and its own reads and writes of the API server.
        "kvsync_kubernetes_requests_total{method=\"GET\",watch=\"true\"}",
        "kvsync_kubernetes_requests_total{method=\"GET\",watch=\"false\"}",
    ];
    eventually(&format!("/metrics with {series:?}"), WAIT, || async {
        let response = http.get(format!("{base}/metrics")).send().await.ok()?;
        let metrics = response.text().await.ok()?;
        series.iter().all(|s| metrics.contains(s)).then_some(())
    })
    .await;

    let json_lines = eventually("JSON log lines", WAIT, || async {
        let output = operator.process.output();
        output.contains("became the leader").then_some(output)
    })
    .await;
    for line in json_lines.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    }
    let (status, output) = operator.process.terminate_with_output();
    assert!(
        status.success(),
        "SIGTERM ends the operator cleanly: {status:?}"
    );
    assert!(output.contains("shutting down"));
}
