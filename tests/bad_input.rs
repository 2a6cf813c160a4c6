//! Malformed KeyVaultSecrets, table-driven: each one is refused by the API
//! server's schema (the error names the field) or reported by the operator as
//! a `Ready=False` condition whose reason and message say what to fix. None of
//! them may panic the operator or stop a good KeyVaultSecret in the same
//! namespace from syncing.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use kvsync::api::KeyVaultSecret;
use serde_json::{Value, json};
use support::*;

/// A spec with the fixture's vault URL and service account filled in unless
/// given; a `null` removes the field.
fn body(f: &Fixture, name: &str, spec: Value) -> Value {
    let mut full = json!({
        "vaultUrl": f.emulator.vault_url("shop"),
        "auth": {"workloadIdentity": {"serviceAccountName": "shop-api"}},
    });
    for (key, value) in spec.as_object().unwrap() {
        if value.is_null() {
            full.as_object_mut().unwrap().remove(key);
        } else {
            full[key] = value.clone();
        }
    }
    json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "KeyVaultSecret", "metadata": {"name": name}, "spec": full})
}

/// Creates a KeyVaultSecret through the API server, as `kubectl create` would.
async fn create(f: &Fixture, name: &str, spec: Value) -> Result<KeyVaultSecret, kube::Error> {
    let raw = body(f, name, spec);
    let request = http::Request::post(format!(
        "/apis/kvsync.io/v1alpha1/namespaces/{}/keyvaultsecrets",
        f.ns.name
    ))
    .header("Content-Type", "application/json")
    .body(serde_json::to_vec(&raw).unwrap())
    .unwrap();
    f.client.request(request).await
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn pw_from(remote: Value) -> Value {
    json!([{"secretKey": "pw", "remoteRef": remote}])
}

#[tokio::test]
async fn malformed_keyvaultsecrets_are_refused_or_reported() {
    let f = Fixture::new("badinput").await;
    let ns = f.ns.name.clone();

    // A good KeyVaultSecret that must keep syncing throughout.
    f.apply(
        "good",
        json!({"refreshInterval": "1s", "data": pw_from(json!({"name": "db-password"}))}),
    )
    .await;
    f.wait_reason("good", "Synced").await;

    // Remote values the cases need, besides the fixture's seed.
    f.emulator
        .set_secret("shop", "bad-keys", r#"{"bad key":"x"}"#)
        .await;
    let big = "x".repeat(24 * 1024);
    for i in 0..48 {
        f.emulator
            .set_secret("shop", &format!("big-{i:02}"), &big)
            .await;
    }
    // Cluster objects the cases need.
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "no-annotations"}})).unwrap();
    Api::<ServiceAccount>::namespaced(f.client.clone(), &ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    for (name, data) in [
        (
            "app-creds",
            json!({"clientSecret": base64(SECRET_APP_PASSWORD)}),
        ),
        ("creds-without-key", json!({"other": "eA=="})),
        ("someone-elses", json!({"theirs": "eA=="})),
    ] {
        let secret: Secret =
            serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap();
        f.secrets()
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    // A credential Secret in another namespace, which a reference must not reach.
    let other = TestNamespace::new(&f.client, "badinput-other").await;
    let stolen: Secret = serde_json::from_value(json!({"metadata": {"name": "kv-creds"},
        "stringData": {"clientSecret": SECRET_APP_PASSWORD}}))
    .unwrap();
    Api::<Secret>::namespaced(f.client.clone(), &other.name)
        .create(&PostParams::default(), &stolen)
        .await
        .unwrap();

    let pw = || pw_from(json!({"name": "db-password"}));
    let client_secret = |secret_ref: Value| json!({"clientSecret": {"tenantId": TENANT, "clientId": SECRET_APP, "secretRef": secret_ref}});
    // An identity that may read every secret of the vault.
    let reader = || client_secret(json!({"name": "app-creds", "key": "clientSecret"}));

    // Refused by the schema: (name, spec, fields the error must name).
    let refused: Vec<(&str, Value, &[&str])> = vec![
        (
            "no-auth",
            json!({"auth": null, "data": pw()}),
            &["spec.auth"],
        ),
        (
            "empty-auth",
            json!({"auth": {}, "data": pw()}),
            &["spec.auth"],
        ),
        (
            "two-auths",
            json!({"auth": {"workloadIdentity": {}, "clientSecret": {"tenantId": "t", "clientId": "c", "secretRef": {"name": "x", "key": "y"}}}, "data": pw()}),
            &["spec.auth"],
        ),
        (
            "no-url",
            json!({"vaultUrl": null, "data": pw()}),
            &["spec.vaultUrl"],
        ),
        (
            "http-url",
            json!({"vaultUrl": "http://shop.vault.azure.net/", "data": pw()}),
            &["spec.vaultUrl"],
        ),
        (
            "url-with-path",
            json!({"vaultUrl": "https://shop.vault.azure.net/secrets/db", "data": pw()}),
            &["spec.vaultUrl"],
        ),
        (
            "not-a-url",
            json!({"vaultUrl": "shop-kv", "data": pw()}),
            &["spec.vaultUrl"],
        ),
        (
            "url-with-space",
            json!({"vaultUrl": "https://shop vault.azure.net/", "data": pw()}),
            &["spec.vaultUrl"],
        ),
        (
            "interval-word",
            json!({"refreshInterval": "soon", "data": pw()}),
            &["spec.refreshInterval"],
        ),
        (
            "interval-negative",
            json!({"refreshInterval": "-1m", "data": pw()}),
            &["spec.refreshInterval"],
        ),
        (
            "interval-fraction",
            json!({"refreshInterval": "1.5h", "data": pw()}),
            &["spec.refreshInterval"],
        ),
        (
            "interval-number",
            json!({"refreshInterval": 60, "data": pw()}),
            &["spec.refreshInterval"],
        ),
        (
            "key-with-space",
            json!({"data": [{"secretKey": "bad key", "remoteRef": {"name": "db-password"}}]}),
            &["secretKey"],
        ),
        (
            "key-empty",
            json!({"data": [{"secretKey": "", "remoteRef": {"name": "db-password"}}]}),
            &["secretKey"],
        ),
        (
            "key-too-long",
            json!({"data": [{"secretKey": "k".repeat(254), "remoteRef": {"name": "db-password"}}]}),
            &["secretKey"],
        ),
        (
            "remote-underscore",
            json!({"data": pw_from(json!({"name": "under_score"}))}),
            &["remoteRef.name"],
        ),
        (
            "remote-missing",
            json!({"data": [{"secretKey": "pw"}]}),
            &["remoteRef"],
        ),
        (
            "version-word",
            json!({"data": pw_from(json!({"name": "db-password", "version": "latest"}))}),
            &["remoteRef.version"],
        ),
        (
            "decoding-unknown",
            json!({"data": pw_from(json!({"name": "db-password", "decodingStrategy": "Hex"}))}),
            &["decodingStrategy"],
        ),
        (
            "datafrom-two",
            json!({"dataFrom": [{"extract": {"name": "app-config"}, "find": {"nameRegex": "x"}}]}),
            &["spec.dataFrom", "one and only one"],
        ),
        (
            "datafrom-empty",
            json!({"dataFrom": [{}]}),
            &["spec.dataFrom", "one and only one"],
        ),
        (
            "target-uppercase",
            json!({"target": {"name": "Upper"}, "data": pw()}),
            &["spec.target.name"],
        ),
        (
            "policy-unknown",
            json!({"target": {"creationPolicy": "Replace"}, "data": pw()}),
            &["spec.target.creationPolicy"],
        ),
        (
            "reload-string",
            json!({"target": {"reload": "yes"}, "data": pw()}),
            &["spec.target.reload"],
        ),
        (
            "client-secret-no-ref",
            json!({"auth": {"clientSecret": {"tenantId": TENANT, "clientId": SECRET_APP}}, "data": pw()}),
            &["spec.auth.clientSecret.secretRef"],
        ),
        (
            "client-secret-empty-tenant",
            json!({"auth": {"clientSecret": {"tenantId": "", "clientId": SECRET_APP, "secretRef": {"name": "x", "key": "y"}}}, "data": pw()}),
            &["spec.auth.clientSecret.tenantId"],
        ),
        (
            "sa-name-invalid",
            json!({"auth": {"workloadIdentity": {"serviceAccountName": "Bad_SA"}}, "data": pw()}),
            &["serviceAccountName"],
        ),
        (
            "data-not-a-list",
            json!({"data": {"pw": "db-password"}}),
            &["spec.data"],
        ),
    ];

    // Accepted by the schema, reported by the operator: (name, spec, reason, message part).
    let reported: Vec<(&str, Value, &str, String)> = vec![
        (
            "host-not-allowed",
            json!({"vaultUrl": "https://attacker.example.com/", "data": pw()}),
            "InvalidSpec",
            "not an allowed Key Vault host".into(),
        ),
        (
            "host-lookalike",
            json!({"vaultUrl": "https://shop.vault.azure.net.evil.example/", "data": pw()}),
            "InvalidSpec",
            "not an allowed Key Vault host".into(),
        ),
        (
            "host-ip",
            json!({"vaultUrl": "https://127.0.0.1:8443/", "data": pw()}),
            "InvalidSpec",
            "not an allowed Key Vault host".into(),
        ),
        (
            "nothing-to-sync",
            json!({}),
            "InvalidSpec",
            "nothing to sync".into(),
        ),
        (
            "interval-huge",
            json!({"refreshInterval": "18446744073709551615s", "data": pw()}),
            "InvalidSpec",
            "maximum of 180d".into(),
        ),
        (
            "interval-overflow",
            json!({"refreshInterval": "99999999999999999999999d", "data": pw()}),
            "InvalidSpec",
            "refreshInterval".into(),
        ),
        (
            "regex-unclosed",
            json!({"dataFrom": [{"find": {"nameRegex": "(unclosed"}}]}),
            "InvalidSpec",
            "dataFrom[0].find.nameRegex is not a valid regular expression".into(),
        ),
        (
            "regex-too-big",
            json!({"dataFrom": [{"find": {"nameRegex": "a{1000}{1000}"}}]}),
            "InvalidSpec",
            "nameRegex".into(),
        ),
        (
            "property-not-json",
            json!({"data": pw_from(json!({"name": "db-password", "property": "a.b"}))}),
            "InvalidSpec",
            "value is not JSON".into(),
        ),
        (
            "property-missing",
            json!({"data": pw_from(json!({"name": "json-blob", "property": "db.user"}))}),
            "InvalidSpec",
            "does not exist in its JSON value".into(),
        ),
        (
            "extract-not-object",
            json!({"dataFrom": [{"extract": {"name": "db-password"}}]}),
            "InvalidSpec",
            "needs a JSON object".into(),
        ),
        (
            "extract-bad-key",
            json!({"auth": reader(), "dataFrom": [{"extract": {"name": "bad-keys"}}]}),
            "InvalidSpec",
            "not a valid Secret key".into(),
        ),
        (
            "base64-invalid",
            json!({"data": pw_from(json!({"name": "db-password", "decodingStrategy": "Base64"}))}),
            "InvalidSpec",
            "not valid Base64".into(),
        ),
        (
            "certificate-not-pem",
            json!({"dataFrom": [{"certificate": {"name": "db-password"}}]}),
            "InvalidSpec",
            "needs a PEM value".into(),
        ),
        (
            "duplicate-key",
            json!({"data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}, {"secretKey": "pw", "remoteRef": {"name": "app-alpha"}}]}),
            "InvalidSpec",
            "produced by more than one entry".into(),
        ),
        (
            "remote-absent",
            json!({"auth": reader(), "data": pw_from(json!({"name": "no-such-secret"}))}),
            "RemoteNotFound",
            "create the secret in Key Vault".into(),
        ),
        (
            "version-absent",
            json!({"data": pw_from(json!({"name": "db-password", "version": "0".repeat(32)}))}),
            "RemoteNotFound",
            "fix the name/version".into(),
        ),
        (
            "remote-disabled",
            json!({"data": pw_from(json!({"name": "app-gamma"}))}),
            "RemoteDisabled",
            "enable the secret".into(),
        ),
        (
            "remote-forbidden",
            json!({"data": pw_from(json!({"name": "restricted"}))}),
            "Forbidden",
            "Key Vault Secrets User".into(),
        ),
        (
            "sa-absent",
            json!({"auth": {"workloadIdentity": {"serviceAccountName": "nobody"}}, "data": pw()}),
            "InvalidSpec",
            format!("service account nobody does not exist in namespace {ns}"),
        ),
        (
            "sa-unannotated",
            json!({"auth": {"workloadIdentity": {"serviceAccountName": "no-annotations"}}, "data": pw()}),
            "InvalidSpec",
            "no client id".into(),
        ),
        (
            "operator-identity",
            json!({"auth": {"workloadIdentity": {}}, "data": pw()}),
            "AuthFailed",
            "--operator-identity-namespaces".into(),
        ),
        (
            "creds-absent",
            json!({"auth": client_secret(json!({"name": "nope", "key": "clientSecret"})), "data": pw()}),
            "InvalidSpec",
            format!("credential Secret nope does not exist in namespace {ns}"),
        ),
        (
            "creds-key-absent",
            json!({"auth": client_secret(json!({"name": "creds-without-key", "key": "clientSecret"})), "data": pw()}),
            "InvalidSpec",
            "has no key clientSecret".into(),
        ),
        // The API server prunes the unknown `namespace` field: the reference stays in this namespace.
        (
            "creds-other-namespace",
            json!({"auth": client_secret(json!({"name": "kv-creds", "key": "clientSecret", "namespace": other.name})), "data": pw()}),
            "InvalidSpec",
            format!("credential Secret kv-creds does not exist in namespace {ns}"),
        ),
        (
            "target-taken",
            json!({"target": {"name": "someone-elses"}, "data": pw()}),
            "SecretConflict",
            "not managed by kvsync".into(),
        ),
        (
            "collides-with-good",
            json!({"target": {"name": "good"}, "data": pw()}),
            "SecretConflict",
            "managed by KeyVaultSecret good".into(),
        ),
        (
            "tls-without-keys",
            json!({"target": {"type": "kubernetes.io/tls"}, "data": pw()}),
            "InvalidSpec",
            "tls.crt".into(),
        ),
        (
            "label-invalid",
            json!({"target": {"labels": {"team": "bad value!"}}, "data": pw()}),
            "InvalidSpec",
            "the API server refused Secret".into(),
        ),
        (
            "too-big",
            json!({"auth": reader(), "target": {"name": "too-big"}, "dataFrom": [{"find": {"nameRegex": "^big-"}}]}),
            "InvalidSpec",
            "the API server refused Secret too-big".into(),
        ),
    ];
    assert!(refused.len() + reported.len() >= 30);

    for (name, spec, fields) in &refused {
        let error = create(&f, name, spec.clone())
            .await
            .expect_err(&format!("{name} must be refused by the schema"));
        let message = error.to_string();
        for field in *fields {
            assert!(
                message.contains(field),
                "{name}: the error should name {field}: {message}"
            );
        }
    }
    for (name, spec, _, _) in &reported {
        create(&f, name, spec.clone())
            .await
            .unwrap_or_else(|e| panic!("{name} is schema-valid: {e}"));
    }
    // Unknown fields are pruned by the API server (Kubernetes 1.20 has no
    // strict field validation): they can neither break nor change anything.
    create(
        &f,
        "unknown-fields",
        json!({"refreshIntervall": "1s", "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password", "typo": 1}}]}),
    )
    .await
    .unwrap();
    let pruned = serde_json::to_value(f.kvs_api().get("unknown-fields").await.unwrap()).unwrap();
    assert!(pruned["spec"].get("refreshIntervall").is_none());
    assert!(pruned["spec"]["data"][0]["remoteRef"].get("typo").is_none());

    // Every reported case reaches its condition.
    let expected: BTreeMap<&str, (&str, &str)> = reported
        .iter()
        .map(|(name, _, reason, message)| (*name, (*reason, message.as_str())))
        .chain([("unknown-fields", ("Synced", "in sync"))])
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut wrong = Vec::new();
        for kvs in f.kvs_api().list(&Default::default()).await.unwrap() {
            let name = kvs.metadata.name.clone().unwrap();
            let Some((reason, part)) = expected.get(name.as_str()) else {
                continue;
            };
            let condition = ready(&kvs);
            let ok = condition.is_some_and(|c| {
                c.reason == *reason
                    && c.message.contains(part)
                    && (c.status == "False") == (*reason != "Synced")
            });
            if !ok {
                wrong.push(format!(
                    "{name}: want {reason} ~ {part:?}, have {:?}",
                    condition.map(|c| (&c.reason, &c.message))
                ));
            }
        }
        if wrong.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "conditions after 60s:\n{}",
            wrong.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Nothing was written for a failing KeyVaultSecret, and the taken Secrets are untouched.
    for name in [
        "too-big",
        "tls-without-keys",
        "label-invalid",
        "property-not-json",
    ] {
        assert!(
            f.secrets().get_opt(name).await.unwrap().is_none(),
            "{name} was written"
        );
    }
    assert_eq!(
        f.secret_data("someone-elses").await.unwrap(),
        BTreeMap::from([("theirs".into(), "x".into())])
    );
    assert_eq!(
        f.secret_data("good").await.unwrap()["pw"],
        "s3cr3t-db-value"
    );

    // The good KeyVaultSecret still follows the vault.
    f.emulator
        .set_secret("shop", "db-password", "rotated-amid-bad-input")
        .await;
    eventually("the good Secret to follow a rotation", WAIT, || async {
        (f.secret_data("good").await?.get("pw")? == "rotated-amid-bad-input").then_some(())
    })
    .await;

    let log = f.operator.process.output();
    assert!(
        !log.contains("panicked"),
        "the operator panicked:\n{}",
        log.lines()
            .filter(|l| l.contains("panicked"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    f.assert_nothing_leaked(&["rotated-amid-bad-input", &big])
        .await;
}
