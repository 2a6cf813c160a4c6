//! Malformed KeyVaultSecrets, table-driven: each one is refused by the API
//! server's schema (the error names the field) or reported by the operator as
//! a `Ready=False` condition whose reason and message say what to fix. None of
//! them may panic the operator or stop a good KeyVaultSecret in the same
//! namespace from syncing.
//!
//! One test per group of cases, each with its own namespace and operator, so
//! a failing group does not hide the others; within a group every case that
//! misses is reported together.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use kvsync::api::KeyVaultSecret;
use serde_json::{Value, json};
use support::*;

/// A case the schema refuses: (name, spec, fields the error must name).
type Refused = (&'static str, Value, &'static [&'static str]);
/// A case the operator reports: (name, spec, reason, message part).
type Reported = (&'static str, Value, &'static str, String);

/// What the reported cases refer to.
struct Refs<'a> {
    /// The namespace of the case.
    namespace: &'a str,
    /// Another namespace, holding a credential Secret a reference must not reach.
    other_namespace: &'a str,
}

/// A spec with `vault_url` and the fixture's service account filled in
/// unless given; a `null` removes the field.
fn body(vault_url: &str, name: &str, spec: Value) -> Value {
    let mut full = json!({
        "vaultUrl": vault_url,
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
async fn create(
    client: &kube::Client,
    namespace: &str,
    vault_url: &str,
    name: &str,
    spec: Value,
) -> Result<KeyVaultSecret, kube::Error> {
    let raw = body(vault_url, name, spec);
    let request = http::Request::post(format!(
        "/apis/kvsync.io/v1alpha1/namespaces/{namespace}/keyvaultsecrets"
    ))
    .header("Content-Type", "application/json")
    .body(serde_json::to_vec(&raw).unwrap())
    .unwrap();
    client.request(request).await
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn pw_from(remote: Value) -> Value {
    json!([{"secretKey": "pw", "remoteRef": remote}])
}

fn pw() -> Value {
    pw_from(json!({"name": "db-password"}))
}

fn client_secret(secret_ref: Value) -> Value {
    json!({"clientSecret": {"tenantId": TENANT, "clientId": SECRET_APP, "secretRef": secret_ref}})
}

/// An identity that may read every secret of the vault.
fn reader() -> Value {
    client_secret(json!({"name": "app-creds", "key": "clientSecret"}))
}

fn refused_cases() -> Vec<Refused> {
    vec![
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
    ]
}

/// Specs the operator refuses before or after reading the vault: `InvalidSpec`.
fn spec_cases() -> Vec<Reported> {
    vec![
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
    ]
}

/// Secrets the vault does not have or does not give.
fn vault_cases() -> Vec<Reported> {
    vec![
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
    ]
}

/// Identities and credentials that cannot work.
fn identity_cases(refs: &Refs) -> Vec<Reported> {
    vec![
        (
            "sa-absent",
            json!({"auth": {"workloadIdentity": {"serviceAccountName": "nobody"}}, "data": pw()}),
            "InvalidSpec",
            format!(
                "service account nobody does not exist in namespace {}",
                refs.namespace
            ),
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
            format!(
                "credential Secret nope does not exist in namespace {}",
                refs.namespace
            ),
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
            json!({"auth": client_secret(json!({"name": "kv-creds", "key": "clientSecret", "namespace": refs.other_namespace})), "data": pw()}),
            "InvalidSpec",
            format!(
                "credential Secret kv-creds does not exist in namespace {}",
                refs.namespace
            ),
        ),
    ]
}

/// Targets kvsync may not take, and Secrets the API server refuses.
fn target_cases() -> Vec<Reported> {
    vec![
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
            // 48 values of 24 KiB, one data entry each: the API server refuses
            // a Secret over 1 MiB (422).
            "too-big",
            json!({"auth": reader(), "target": {"name": "too-big"}, "data": (0..48)
                .map(|i| json!({"secretKey": format!("k{i:02}"), "remoteRef": {"name": format!("big-{i:02}")}}))
                .collect::<Vec<_>>()}),
            "InvalidSpec",
            "the API server refused Secret too-big".into(),
        ),
        (
            // The same values through find: refused before they are all read.
            "find-too-big",
            json!({"auth": reader(), "target": {"name": "find-too-big"}, "dataFrom": [{"find": {"nameRegex": "^big-"}}]}),
            "InvalidSpec",
            "dataFrom[0].find matches more than 1048576 bytes of values".into(),
        ),
    ]
}

#[test]
fn the_tables_cover_at_least_thirty_cases() {
    let refs = Refs {
        namespace: "ns",
        other_namespace: "other",
    };
    let reported = [
        spec_cases(),
        vault_cases(),
        identity_cases(&refs),
        target_cases(),
    ]
    .concat();
    assert!(refused_cases().len() + reported.len() >= 30);
}

#[tokio::test]
async fn the_schema_refuses_malformed_specs_naming_the_field() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "badinput-schema").await;
    let mut wrong = Vec::new();
    for (name, spec, fields) in refused_cases() {
        let Err(error) = create(
            &client,
            &ns.name,
            "https://shop.vault.azure.net/",
            name,
            spec,
        )
        .await
        else {
            wrong.push(format!("{name} must be refused by the schema"));
            continue;
        };
        let message = error.to_string();
        for field in fields {
            if !message.contains(field) {
                wrong.push(format!("{name}: the error should name {field}: {message}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn invalid_specs_are_reported_and_unknown_fields_pruned() {
    let f = with_good_keyvaultsecret("badinput-spec").await;
    f.emulator
        .set_secret("shop", "bad-keys", r#"{"bad key":"x"}"#)
        .await;
    app_credentials(&f).await;
    let cases = spec_cases();
    create_reported(&f, &cases).await;
    // Unknown fields are pruned by the API server (Kubernetes 1.20 has no
    // strict field validation): they can neither break nor change anything.
    create(
        &f.client,
        &f.ns.name,
        &f.emulator.vault_url("shop"),
        "unknown-fields",
        json!({"refreshIntervall": "1s", "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password", "typo": 1}}]}),
    )
    .await
    .unwrap();
    let pruned = serde_json::to_value(f.kvs_api().get("unknown-fields").await.unwrap()).unwrap();
    assert!(pruned["spec"].get("refreshIntervall").is_none());
    assert!(pruned["spec"]["data"][0]["remoteRef"].get("typo").is_none());
    let expected = expected_conditions(&cases, &[("unknown-fields", ("Synced", "in sync"))]);
    reach_conditions(&f, &expected).await;
    for name in ["property-not-json"] {
        assert!(
            f.secrets().get_opt(name).await.unwrap().is_none(),
            "{name} was written"
        );
    }
    survived(&f, &[]).await;
}

#[tokio::test]
async fn vault_refusals_are_reported() {
    let f = with_good_keyvaultsecret("badinput-vault").await;
    app_credentials(&f).await;
    let cases = vault_cases();
    create_reported(&f, &cases).await;
    reach_conditions(&f, &expected_conditions(&cases, &[])).await;
    survived(&f, &[]).await;
}

#[tokio::test]
async fn unusable_identities_and_credentials_are_reported() {
    let f = with_good_keyvaultsecret("badinput-identity").await;
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "no-annotations"}})).unwrap();
    Api::<ServiceAccount>::namespaced(f.client.clone(), &f.ns.name)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    create_secret(&f, "creds-without-key", json!({"other": "eA=="})).await;
    // A credential Secret in another namespace, which a reference must not reach.
    let other = TestNamespace::new(&f.client, "badinput-other").await;
    let stolen: Secret = serde_json::from_value(json!({"metadata": {"name": "kv-creds"},
        "stringData": {"clientSecret": SECRET_APP_PASSWORD}}))
    .unwrap();
    Api::<Secret>::namespaced(f.client.clone(), &other.name)
        .create(&PostParams::default(), &stolen)
        .await
        .unwrap();
    let cases = identity_cases(&Refs {
        namespace: &f.ns.name,
        other_namespace: &other.name,
    });
    create_reported(&f, &cases).await;
    reach_conditions(&f, &expected_conditions(&cases, &[])).await;
    survived(&f, &[]).await;
}

#[tokio::test]
async fn taken_targets_and_refused_secrets_are_reported_and_write_nothing() {
    let f = with_good_keyvaultsecret("badinput-target").await;
    app_credentials(&f).await;
    create_secret(&f, "someone-elses", json!({"theirs": "eA=="})).await;
    let big = "x".repeat(24 * 1024);
    for i in 0..48 {
        f.emulator
            .set_secret("shop", &format!("big-{i:02}"), &big)
            .await;
    }
    let cases = target_cases();
    create_reported(&f, &cases).await;
    reach_conditions(&f, &expected_conditions(&cases, &[])).await;
    // Nothing was written for a failing KeyVaultSecret, and the taken Secrets are untouched.
    for name in [
        "too-big",
        "find-too-big",
        "tls-without-keys",
        "label-invalid",
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
    survived(&f, &[&big]).await;
}

/// The sync fixture with a good KeyVaultSecret that must keep syncing throughout.
async fn with_good_keyvaultsecret(test: &str) -> Fixture {
    let f = Fixture::new(test).await;
    f.apply(
        "good",
        json!({"refreshInterval": "1s", "data": pw_from(json!({"name": "db-password"}))}),
    )
    .await;
    f.wait_reason("good", "Synced").await;
    f
}

async fn create_secret(f: &Fixture, name: &str, data: Value) {
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap();
    f.secrets()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// The credential Secret of [`reader`].
async fn app_credentials(f: &Fixture) {
    create_secret(
        f,
        "app-creds",
        json!({"clientSecret": base64(SECRET_APP_PASSWORD)}),
    )
    .await;
}

async fn create_reported(f: &Fixture, cases: &[Reported]) {
    let vault_url = f.emulator.vault_url("shop");
    for (name, spec, _, _) in cases {
        create(&f.client, &f.ns.name, &vault_url, name, spec.clone())
            .await
            .unwrap_or_else(|e| panic!("{name} is schema-valid: {e}"));
    }
}

fn expected_conditions<'a>(
    cases: &'a [Reported],
    also: &[(&'a str, (&'a str, &'a str))],
) -> BTreeMap<&'a str, (&'a str, &'a str)> {
    cases
        .iter()
        .map(|(name, _, reason, message)| (*name, (*reason, message.as_str())))
        .chain(also.iter().copied())
        .collect()
}

/// Waits until every KeyVaultSecret in `expected` has its condition: (reason,
/// message part); after 60 s fails listing every one that has not.
async fn reach_conditions(f: &Fixture, expected: &BTreeMap<&str, (&str, &str)>) {
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
}

/// The operator came through the bad input: the good KeyVaultSecret still
/// follows the vault, nothing panicked, and no secret (nor any of `also`)
/// leaked into logs, events or statuses.
async fn survived(f: &Fixture, also: &[&str]) {
    f.emulator
        .set_secret("shop", "db-password", "rotated-amid-bad-input")
        .await;
    eventually("the good Secret to follow a rotation", WAIT, || async {
        (f.secret_data("good").await?.get("pw")? == "rotated-amid-bad-input").then_some(())
    })
    .await;

    let log = f.process().output();
    assert!(
        !log.contains("panicked"),
        "the operator panicked:\n{}",
        log.lines()
            .filter(|l| l.contains("panicked"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut leaks = vec!["rotated-amid-bad-input"];
    leaks.extend(also);
    f.assert_nothing_leaked(&leaks).await;
}
