//! Every form of data and template a KeyVaultSecret writes into its Secret.

use super::*;

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
        [
            "Name",
            "Ready",
            "Reason",
            "Secret",
            "Last Sync",
            "Expires",
            "Rolled Out",
            "Age"
        ]
    );
    let cells = &table["rows"][0]["cells"];
    assert_eq!(
        (cells[1].as_str(), cells[2].as_str(), cells[3].as_str()),
        (Some("True"), Some("Synced"), Some("db-creds"))
    );
}
