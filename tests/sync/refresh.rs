//! Rotations, force-sync, idle refreshes and what they cost the vault and the API server.

use super::*;

#[tokio::test]
async fn rotation_is_picked_up_and_idle_refreshes_write_nothing() {
    let f = Fixture::new("rotate").await;
    f.apply("db", json!({"refreshInterval": "2s", "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}))
        .await;
    let first = f.settled("db").await;
    let secret = f.secrets().get("db").await.unwrap();
    let since = (secret.resource_version(), first.resource_version());

    // Three refresh intervals with no change: neither the Secret nor the status is written.
    f.assert_idle(
        "db",
        since,
        Duration::from_secs(7),
        "neither the Secret nor the status rewritten while idle",
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
