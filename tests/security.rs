//! Whoever can create a KeyVaultSecret gets nothing more than they asked for.
//! Each test plays a namespace user (or a server they point kvsync at)
//! trying to turn kvsync's own power into more than reading their vault:
//! minting credentials through the target, taking over someone else's
//! Secret with `Merge`, getting a token for another resource or following a
//! redirect, using a ServiceAccount that did not opt in — and checks what they
//! get instead. The last one checks that the leak scan every fixture runs
//! sees every form of a secret.

mod support;

use std::collections::BTreeMap;

use futures::FutureExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kvsync::api::KeyVaultSecret;
use reqwest::Method;
use serde_json::{Value, json};
use support::*;

const DB: &str = r#"[{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]"#;

fn db_data() -> Value {
    serde_json::from_str(DB).unwrap()
}

/// Waits until `name` is `reason` with a message containing `part`; returns the message.
async fn wait_refused(f: &Fixture, name: &str, reason: &str, part: &str) -> String {
    let kvs = f.wait_reason(name, reason).await;
    let message = ready(&kvs).unwrap().message.clone();
    assert!(message.contains(part), "{name}: {message:?} lacks {part:?}");
    message
}

/// Creates a KeyVaultSecret from a whole spec (the vault URL as given).
async fn create_raw(f: &Fixture, name: &str, spec: Value) -> Result<KeyVaultSecret, kube::Error> {
    let body = json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "KeyVaultSecret",
        "metadata": {"name": name}, "spec": spec});
    f.kvs_api()
        .create(
            &PostParams::default(),
            &serde_json::from_value(body).unwrap(),
        )
        .await
}

/// Attack: have Kubernetes mint a long-lived service-account token (or
/// bootstrap token) into the target by its type or annotations; point kvsync
/// at a Managed HSM host. Gets: a schema refusal, or `InvalidSpec` and no
/// Secret.
#[tokio::test]
async fn credential_minting_targets_and_managed_hsm_are_refused() {
    let f = Fixture::new("sec-target").await;
    let sa_annotation = json!({"kubernetes.io/service-account.name": "shop-api"});
    for type_ in [
        "kubernetes.io/service-account-token",
        "bootstrap.kubernetes.io/token",
    ] {
        let spec = json!({"vaultUrl": f.emulator.vault_url("shop"),
            "auth": {"workloadIdentity": {"serviceAccountName": "shop-api"}},
            "target": {"type": type_, "annotations": sa_annotation}, "data": db_data()});
        match create_raw(&f, "minted", spec).await {
            Err(kube::Error::Api(status)) => assert!(
                status.code == 422 && status.message.contains("spec.target.type"),
                "{type_}: {status:?}"
            ),
            other => panic!("{type_} was accepted: {other:?}"),
        }
    }

    f.apply(
        "annotated",
        json!({"target": {"annotations": sa_annotation}, "data": db_data()}),
    )
    .await;
    f.apply(
        "gc-annotated",
        json!({"target": {"annotations": {"k8s.io/anything": "x"}}, "data": db_data()}),
    )
    .await;
    let hsm = json!({"vaultUrl": "https://shop.managedhsm.azure.net/",
        "auth": {"workloadIdentity": {"serviceAccountName": "shop-api"}}, "data": db_data()});
    create_raw(&f, "hsm", hsm).await.unwrap();
    wait_refused(
        &f,
        "annotated",
        "InvalidSpec",
        "kubernetes.io/service-account.name is refused",
    )
    .await;
    wait_refused(&f, "gc-annotated", "InvalidSpec", "k8s.io/anything").await;
    wait_refused(
        &f,
        "hsm",
        "InvalidSpec",
        "\"shop.managedhsm.azure.net\" is not an allowed Key Vault host",
    )
    .await;
    for name in ["annotated", "gc-annotated", "hsm"] {
        assert!(f.secrets().get_opt(name).await.unwrap().is_none(), "{name}");
    }
    // Descriptive annotations of Kubernetes' app.kubernetes.io domain stay usable.
    f.apply(
        "described",
        json!({"target": {"annotations": {"app.kubernetes.io/part-of": "shop"}}, "data": db_data()}),
    )
    .await;
    f.wait_reason("described", "Synced").await;
}

/// A Secret of the namespace created by someone else.
async fn foreign_secret(f: &Fixture, name: &str, type_: &str, meta: Value) -> Secret {
    let mut body = json!({"metadata": meta, "type": type_, "stringData": {"theirs": "kept"}});
    body["metadata"]["name"] = json!(name);
    f.secrets()
        .create(
            &PostParams::default(),
            &serde_json::from_value(body).unwrap(),
        )
        .await
        .unwrap()
}

fn merge_into(target: &str) -> Value {
    json!({"target": {"name": target, "creationPolicy": "Merge"}, "data": db_data()})
}

/// Attack: `creationPolicy: Merge` into a service-account token Secret, a
/// Helm release, or a Secret another controller owns. Gets: `SecretConflict`
/// telling the Secret's owner how to opt in, and the Secret untouched —
/// until the Secret says `kvsync.io/merge: allow`. Secrets controlled by an
/// ExternalSecret (the ESO migration) are merged into as before.
#[tokio::test]
async fn merge_stays_out_of_secrets_that_belong_to_someone_else() {
    let f = Fixture::new("sec-merge").await;
    foreign_secret(
        &f,
        "sa-token",
        "kubernetes.io/service-account-token",
        json!({"annotations": {"kubernetes.io/service-account.name": "shop-api"}}),
    )
    .await;
    foreign_secret(&f, "release", "helm.sh/release.v1", json!({})).await;
    let owner = Api::<ConfigMap>::namespaced(f.client.clone(), &f.ns.name)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap(),
        )
        .await
        .unwrap();
    let controlled_by = |api_version: &str, kind: &str, name: &str, uid: &str| {
        json!({"ownerReferences": [{"apiVersion": api_version, "kind": kind, "name": name,
            "uid": uid, "controller": true}]})
    };
    foreign_secret(
        &f,
        "controlled",
        "Opaque",
        controlled_by("v1", "ConfigMap", "owner", &owner.uid().unwrap()),
    )
    .await;
    foreign_secret(
        &f,
        "from-eso",
        "Opaque",
        controlled_by(
            "external-secrets.io/v1beta1",
            "ExternalSecret",
            "db",
            "00000000-0000-0000-0000-00000000e5e5",
        ),
    )
    .await;

    for target in ["sa-token", "release", "controlled", "from-eso"] {
        f.apply(&format!("m-{target}"), merge_into(target)).await;
    }
    wait_refused(
        &f,
        "m-sa-token",
        "SecretConflict",
        "it is of type kubernetes.io/service-account-token; if kvsync should add its keys anyway, annotate the Secret kvsync.io/merge=allow",
    )
    .await;
    wait_refused(&f, "m-release", "SecretConflict", "helm.sh/release.v1").await;
    wait_refused(
        &f,
        "m-controlled",
        "SecretConflict",
        "it is controlled by ConfigMap owner",
    )
    .await;
    f.wait_reason("m-from-eso", "Synced").await;
    let eso = f.secret_data("from-eso").await.unwrap();
    assert_eq!(
        (eso["pw"].as_str(), eso["theirs"].as_str()),
        ("s3cr3t-db-value", "kept")
    );
    for target in ["sa-token", "release", "controlled"] {
        let data = f.secret_data(target).await.unwrap();
        assert!(!data.contains_key("pw"), "{target} was written: {data:?}");
    }

    // The Helm release's owner opts in: the Secret watch brings the merge.
    f.secrets()
        .patch(
            "release",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"kvsync.io/merge": "allow"}}})),
        )
        .await
        .unwrap();
    f.wait_reason("m-release", "Synced").await;
    let release = f.secret_data("release").await.unwrap();
    assert_eq!(
        (release["pw"].as_str(), release["theirs"].as_str()),
        ("s3cr3t-db-value", "kept")
    );
}

/// Attack: a server kvsync is allowed to talk to (here an `--allow-vault-host`
/// host, where the SDK's own challenge check is off) answers with a 401
/// challenge naming Azure Resource Manager, hoping for an ARM token for the
/// team's identity; then answers a read with a redirect to another secret.
/// Gets: no token for that resource is ever requested from Entra ID, the
/// redirect is not followed, and the condition says why each time.
#[tokio::test]
async fn a_vault_gets_only_key_vault_tokens_and_no_redirects() {
    let f = Fixture::new("sec-scope").await;
    let arm = "https://management.azure.com";
    f.emulator
        .control(
            Method::POST,
            "faults",
            Some(json!({"target": "vault:shop", "count": 100000, "kind": {"challengeResource": arm}})),
        )
        .await;
    f.apply("db", json!({"refreshInterval": "1s", "data": db_data()}))
        .await;
    wait_refused(
        &f,
        "db",
        "NotKeyVault",
        "asked for a token for [\"https://management.azure.com/.default\"]; kvsync only requests https://vault.azure.net/.default",
    )
    .await;
    let issued = f.emulator.control(Method::GET, "issued", None).await;
    let scopes = issued["requestedScopes"].as_array().unwrap();
    assert!(
        scopes
            .iter()
            .all(|s| s == "https://vault.azure.net/.default"),
        "{scopes:?}"
    );
    assert!(f.secrets().get_opt("db").await.unwrap().is_none());

    // The server behaves again: the refused challenge left nothing behind.
    f.emulator.control(Method::DELETE, "faults", None).await;
    f.wait_reason("db", "Synced").await;

    // A read answered with a redirect to a secret the identity may also read.
    f.emulator
        .control(
            Method::POST,
            "faults",
            Some(json!({"target": "vault:shop", "pathPrefix": "/secrets/db-password", "method": "GET",
                "count": 100000, "kind": {"redirectTo": "/secrets/app-alpha?api-version=7.6"}})),
        )
        .await;
    f.emulator
        .set_secret("shop", "db-password", "rotated-behind-a-redirect")
        .await;
    wait_refused(
        &f,
        "db",
        "NotKeyVault",
        "the vault answered HTTP 307 (a redirect); kvsync does not follow redirects",
    )
    .await;
    assert_eq!(
        f.secret_data("db").await.unwrap()["pw"],
        "s3cr3t-db-value",
        "the Secret keeps its last good value"
    );
    let issued = f.emulator.control(Method::GET, "issued", None).await;
    assert!(
        issued["requestedScopes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s == "https://vault.azure.net/.default")
    );
}

/// Attack: on a cluster run with `--require-service-account-opt-in`, use a
/// ServiceAccount of the namespace (federated to an Azure identity) whose
/// owner never agreed to kvsync exchanging tokens for it. Gets: `AuthFailed`
/// naming the annotation, and no TokenRequest or token exchange — until the
/// ServiceAccount is annotated, which the ServiceAccount watch picks up.
#[tokio::test]
async fn service_accounts_must_opt_in_when_the_flag_is_set() {
    let f = Fixture::with_operator_args("sec-optin", &["--require-service-account-opt-in"]).await;
    f.apply("db", json!({"data": db_data()})).await;
    wait_refused(
        &f,
        "db",
        "AuthFailed",
        "annotate it kvsync.io/allow-token-exchange=\"true\"",
    )
    .await;
    let issued = f.emulator.control(Method::GET, "issued", None).await;
    assert_eq!(
        issued["clientAssertions"],
        json!([]),
        "no service-account token was exchanged"
    );

    let sas: Api<ServiceAccount> = Api::namespaced(f.client.clone(), &f.ns.name);
    let opt_in = json!({"metadata": {"annotations": {"kvsync.io/allow-token-exchange": "true"}}});
    sas.patch("shop-api", &PatchParams::default(), &Patch::Merge(opt_in))
        .await
        .unwrap();
    f.wait_reason("db", "Synced").await;
    assert_eq!(f.secret_data("db").await.unwrap()["pw"], "s3cr3t-db-value");
}

#[test]
fn derived_forms_cover_encodings_and_decodings() {
    use base64::Engine;
    let forms = derived_forms("aGVsbG8td29ybGQ=");
    assert!(forms.contains(&"hello-world".to_string()), "{forms:?}");
    assert!(forms.contains(&base64::engine::general_purpose::STANDARD.encode("aGVsbG8td29ybGQ=")));
    let forms = derived_forms("line\n\"quoted\"");
    assert!(
        forms.contains(&r#"line\n\"quoted\""#.to_string()),
        "{forms:?}"
    );
    assert!(derived_forms("x").is_empty());
}

/// The scan every fixture runs finds a secret in each form and place it
/// covers: planted one at a time, each makes it fail (the plants are removed
/// before the fixture's own scan at the end).
#[tokio::test]
async fn the_leak_scan_sees_every_form_in_every_place() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let f = Fixture::new("sec-leaks").await;
    f.synced_db("1h").await;
    let issued = f.emulator.control(Method::GET, "issued", None).await;
    let token = issued["accessTokens"][0].as_str().unwrap().to_owned();
    let assertion = issued["clientAssertions"][0].as_str().unwrap().to_owned();
    let key_line = f
        .app_certificate
        .lines()
        .nth(3)
        .expect("a PEM body line")
        .to_owned();
    let plants: BTreeMap<&str, String> = BTreeMap::from([
        ("raw vault value", "s3cr3t-db-value".to_string()),
        ("base64 vault value", STANDARD.encode("s3cr3t-db-value")),
        ("decoded Base64 value", "hello-world".to_string()),
        ("client secret", SECRET_APP_PASSWORD.to_string()),
        ("access token", token),
        ("client assertion", assertion),
        ("private key line", key_line),
    ]);
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns.name);
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(f.client.clone(), &f.ns.name);
    let mut missed = Vec::new();
    for (what, value) in &plants {
        let deployment: Deployment = serde_json::from_value(
            Workload::deployment("planted")
                .annotations(&[("note", value.as_str())])
                .body(),
        )
        .unwrap();
        deployments
            .create(&PostParams::default(), &deployment)
            .await
            .unwrap();
        let caught = std::panic::AssertUnwindSafe(f.leak_scan(&[]).run())
            .catch_unwind()
            .await
            .is_err();
        deployments
            .delete("planted", &DeleteParams::foreground())
            .await
            .unwrap();
        eventually("the planted Deployment to go", WAIT, || async {
            deployments
                .get_opt("planted")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
        if !caught {
            missed.push(format!("{what} in a workload annotation"));
        }
    }
    // An event (JSON-escaped in the events list).
    let event: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": "planted"},
        "involvedObject": {"kind": "Secret", "name": "db", "namespace": f.ns.name},
        "reason": "Planted", "message": format!("value: {}", plants["raw vault value"]), "type": "Normal"
    }))
    .unwrap();
    events.create(&PostParams::default(), &event).await.unwrap();
    let caught = std::panic::AssertUnwindSafe(f.leak_scan(&[]).run())
        .catch_unwind()
        .await
        .is_err();
    events
        .delete("planted", &DeleteParams::default())
        .await
        .unwrap();
    if !caught {
        missed.push("a value in an event".into());
    }
    assert!(missed.is_empty(), "the scan missed: {missed:?}");
    // And with nothing planted it passes (as the fixture's own scan will).
    f.leak_scan(&[]).run().await;
}
