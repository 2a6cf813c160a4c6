//! Ownership, failures, deletion and invalid specs.

use super::*;

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
