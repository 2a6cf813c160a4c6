//! Key Vault's `exp` in kvsync: the earliest expiry of the versions in a
//! Secret shows in the status (`expiresAt`, conditions `Expiring`/`Expired`,
//! `Ready` untouched), as a Warning event once, and in the per-namespace
//! metrics the alert `KvsyncSecretExpiring` reads.

mod support;

use k8s_openapi::jiff::Timestamp;
use kvsync::api::KeyVaultSecret;
use reqwest::Method;
use serde_json::json;
use support::*;

const DAY: i64 = 86_400;

fn condition<'a>(
    kvs: &'a KeyVaultSecret,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    kvs.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// Warning events with `reason` in the namespace, repeats included: kvsync
/// folds a repeat into a series on the first Event (events.k8s.io/v1
/// `series.count`), which the core/v1 `count` does not show.
async fn warnings(f: &Fixture, reason: &str) -> i32 {
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(f.client.clone(), &f.ns.name);
    events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))
        .map(|e| e.series.as_ref().map_or(1, |series| series.count))
        .sum()
}

/// The value of one series in the operator's metrics text.
fn series(metrics: &str, name: &str, namespace: &str) -> Option<i64> {
    let prefix = format!("{name}{{namespace=\"{namespace}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().parse().unwrap())
}

#[tokio::test]
async fn a_version_expiring_in_10_days_is_expiring_with_its_date_metric_and_one_event() {
    let f = Fixture::new("expiring").await;
    let expires = Timestamp::now().as_second() + 10 * DAY;
    f.emulator
        .control(
            Method::PATCH,
            "vaults/shop/secrets/db-password",
            Some(json!({"exp": expires})),
        )
        .await;
    f.synced_db("1s").await;
    let date = Timestamp::from_second(expires)
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();

    let kvs = eventually("Expiring with the date", WAIT, || async {
        let kvs = f.kvs_api().get("db").await.ok()?;
        let expiring = condition(&kvs, "Expiring")?;
        (expiring.status == "True").then_some(kvs)
    })
    .await;
    let status = kvs.status.as_ref().unwrap();
    assert_eq!(
        status.expires_at.as_ref().map(|t| t.0.as_second()),
        Some(expires)
    );
    let expiring = condition(&kvs, "Expiring").unwrap();
    assert_eq!(expiring.reason, "ExpiresSoon");
    assert!(
        expiring.message.contains(&date) && expiring.message.contains("in 10 days"),
        "{}",
        expiring.message
    );
    assert_eq!(condition(&kvs, "Expired").unwrap().status, "False");
    let ready = ready(&kvs).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Synced"),
        "the Secret is still current: Ready stays True"
    );

    // The metrics: per namespace, no series per object; the alert's
    // expression `max by (namespace) (kvsync_secrets_expiring) > 0` holds.
    let metrics = f.metrics().await;
    assert_eq!(
        series(
            &metrics,
            "kvsync_secret_expiry_earliest_timestamp_seconds",
            &f.ns.name
        ),
        Some(expires)
    );
    let expiring_objects = series(&metrics, "kvsync_secrets_expiring", &f.ns.name);
    assert!(expiring_objects.is_some_and(|n| n > 0), "{metrics}");
    assert!(!metrics.contains("name=\"db\""), "no series per object");

    // One Warning event, however many refreshes follow (1 s interval: wait
    // for three more syncs after the event was recorded).
    eventually("the Expiring event", WAIT, || async {
        (warnings(&f, "Expiring").await == 1).then_some(())
    })
    .await;
    let syncs = f.sync_count("unchanged").await;
    eventually("three more refreshes", WAIT, || async {
        (f.sync_count("unchanged").await >= syncs + 3).then_some(())
    })
    .await;
    assert_eq!(warnings(&f, "Expiring").await, 1, "told once");

    // A new version without exp: the expiry, its conditions and its series go.
    f.emulator
        .set_secret("shop", "db-password", "rotated-9zq4x")
        .await;
    eventually("no expiry after the rotation", WAIT, || async {
        let kvs = f.kvs_api().get("db").await.ok()?;
        let status = kvs.status.as_ref()?;
        (status.expires_at.is_none() && condition(&kvs, "Expiring").is_none()).then_some(())
    })
    .await;
    let metrics = f.metrics().await;
    assert_eq!(
        series(&metrics, "kvsync_secrets_expiring", &f.ns.name),
        None
    );
    f.assert_nothing_leaked(&["rotated-9zq4x"]).await;
}

#[tokio::test]
async fn an_expired_version_is_expired_and_still_synced() {
    let f = Fixture::new("expired").await;
    let expired = Timestamp::now().as_second() - DAY;
    f.emulator
        .control(
            Method::PATCH,
            "vaults/shop/secrets/db-password",
            Some(json!({"exp": expired})),
        )
        .await;
    let secret = f.synced_db("1s").await;
    assert_eq!(
        decoded(&secret)["pw"],
        "s3cr3t-db-value",
        "Key Vault serves it, kvsync syncs it"
    );
    let kvs = eventually("Expired", WAIT, || async {
        let kvs = f.kvs_api().get("db").await.ok()?;
        (condition(&kvs, "Expired")?.status == "True").then_some(kvs)
    })
    .await;
    assert_eq!(condition(&kvs, "Expiring").unwrap().status, "False");
    assert_eq!(ready(&kvs).unwrap().status, "True");
    eventually("the Expired event", WAIT, || async {
        (warnings(&f, "Expired").await == 1).then_some(())
    })
    .await;
    assert_eq!(warnings(&f, "Expiring").await, 0);
}
