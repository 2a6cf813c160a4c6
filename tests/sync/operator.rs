//! The operator process: several namespaces, leader election, health, metrics, logs and shutdown.

use super::*;

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
        metrics_url(&f.process().output())
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
