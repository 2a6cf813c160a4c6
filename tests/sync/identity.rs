//! Identities: workload identity, client secrets and certificates, the vault-host allow list, namespace confinement.

use super::*;

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
