//! Rotation with Key Vault's `nbf` and the previous value, on a real
//! control plane: a version not valid yet waits in `status.pending` and is
//! taken at its `nbf` (the workload restarts once, then), its versions are
//! listed only for it and only once, `notBeforePolicy: Ignore` takes it at
//! once, a secret with no valid version is written at its first `nbf`, and
//! `previousSecretKey` holds the version before the current one.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kvsync::api::KeyVaultSecret;
use reqwest::Method;
use serde_json::{Value, json};
use support::reload::{AUTO, QUIET};
use support::*;

/// `GET /secrets/{name}/versions` requests the emulator counted (any secret).
async fn version_listings(f: &Fixture) -> u64 {
    f.emulator.counters().await["byEndpoint"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(route, _)| route.ends_with("GET /secrets/{name}/versions"))
        .map(|(_, n)| n.as_u64().unwrap())
        .sum()
}

/// `GET /secrets` listings the emulator counted.
async fn listings(f: &Fixture) -> u64 {
    f.emulator.counters().await["byEndpoint"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(route, _)| route.ends_with("GET /secrets"))
        .map(|(_, n)| n.as_u64().unwrap())
        .sum()
}

/// Waits until the vault was listed `n` more times: that many refresh
/// cycles of a 1 s object went by.
async fn refreshes(f: &Fixture, n: u64) {
    let from = listings(f).await;
    eventually(&format!("{n} more listings"), WAIT, || async {
        (listings(f).await >= from + n).then_some(())
    })
    .await;
}

/// Adds a version of `db-password` (optionally with an `nbf`); returns its id.
async fn new_version(f: &Fixture, value: &str, not_before: Option<i64>) -> String {
    let mut body = json!({"value": value});
    if let Some(nbf) = not_before {
        body["nbf"] = json!(nbf);
    }
    let bundle = f
        .emulator
        .control(Method::PUT, "vaults/shop/secrets/db-password", Some(body))
        .await;
    version_of(&bundle)
}

fn version_of(bundle: &Value) -> String {
    let id = bundle["id"].as_str().unwrap();
    id.rsplit('/').next().unwrap().to_owned()
}

fn pending(kvs: &KeyVaultSecret) -> Vec<(String, String, i64)> {
    kvs.status
        .iter()
        .flat_map(|s| &s.pending)
        .map(|p| {
            (
                p.name.clone(),
                p.version.clone(),
                p.not_before.0.as_second(),
            )
        })
        .collect()
}

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

/// `db` once its status records `version` of `db-password`: the status is
/// written after the Secret, so a Secret holding a value says nothing yet
/// of the status.
async fn status_with(f: &Fixture, version: &str) -> KeyVaultSecret {
    eventually(&format!("the status records {version}"), WAIT, || async {
        let kvs = f.kvs_api().get("db").await.ok()?;
        (synced_versions(&kvs).get("db-password").map(String::as_str) == Some(version))
            .then_some(kvs)
    })
    .await
}

fn synced_versions(kvs: &KeyVaultSecret) -> BTreeMap<String, String> {
    kvs.status
        .iter()
        .flat_map(|s| s.synced_versions.iter())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

async fn pw(f: &Fixture) -> Option<String> {
    f.secret_data("db").await?.remove("pw")
}

#[tokio::test]
async fn a_version_not_valid_yet_waits_and_is_taken_at_its_nbf_restarting_the_workload_once() {
    let mut f = Fixture::idle("nbf-schedule").await;
    // A refresh interval of an hour: whatever switches the Secret within
    // seconds of nbf is the schedule, not a refresh.
    f.apply(
        "db",
        json!({"refreshInterval": "1h", "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}),
    )
    .await;
    f.deployment("web", &[AUTO], &["db"], &[]).await;
    f.start_operator(&[]).await;
    let synced = f.wait_reason("db", "Synced").await;
    let old_version = synced_versions(&synced)["db-password"].clone();
    assert_eq!(pw(&f).await.as_deref(), Some("s3cr3t-db-value"));
    f.baselined::<Deployment>("web").await;
    f.expect_replica_sets("web", 1).await;

    let nbf = Timestamp::now().as_second() + 20;
    let scheduled = new_version(&f, "scheduled-pw-4kq9z", Some(nbf)).await;
    // The new version is noticed at once (read as of now), not in an hour.
    f.force_sync("db", "after-the-new-version").await;
    let kvs = eventually("status names the pending version", WAIT, || async {
        let kvs = f.kvs_api().get("db").await.ok()?;
        (!pending(&kvs).is_empty()).then_some(kvs)
    })
    .await;
    assert_eq!(
        pending(&kvs),
        [("db-password".to_owned(), scheduled.clone(), nbf)]
    );
    let told = condition(&kvs, "RotationScheduled").expect("RotationScheduled");
    let starts = Timestamp::from_second(nbf)
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    assert_eq!(
        (told.status.as_str(), told.reason.as_str()),
        ("True", "NotYetValid")
    );
    assert!(
        told.message.contains(&scheduled)
            && told.message.contains(&starts)
            && told.message.contains(&old_version),
        "{}",
        told.message
    );
    assert_eq!(ready(&kvs).unwrap().status, "True");
    assert_eq!(synced_versions(&kvs)["db-password"], old_version);

    // Until nbf (less a second for the clocks' rounding) the old value stays
    // and nothing restarts.
    let left = Duration::try_from(
        Timestamp::from_second(nbf - 1)
            .unwrap()
            .duration_since(Timestamp::now()),
    )
    .unwrap_or_default();
    always("the old value until nbf", left, || async {
        pw(&f).await.as_deref() == Some("s3cr3t-db-value") && f.replica_sets("web").await == 1
    })
    .await;

    eventually("the scheduled value", WAIT, || async {
        (pw(&f).await.as_deref() == Some("scheduled-pw-4kq9z")).then_some(())
    })
    .await;
    let lag = Timestamp::now().as_millisecond() - nbf * 1000;
    eprintln!("the Secret switched {lag} ms after nbf");
    assert!(lag <= 3000, "switched {lag} ms after nbf");
    f.expect_replica_sets("web", 2).await;
    let kvs = status_with(&f, &scheduled).await;
    assert!(pending(&kvs).is_empty());
    assert!(condition(&kvs, "RotationScheduled").is_none());
    let notes = f.event_notes("web", "Reloaded").await;
    assert_eq!(notes.len(), 1, "one restart: {notes:?}");
}

#[tokio::test]
async fn versions_are_listed_once_and_only_for_the_secret_not_valid_yet() {
    let f = Fixture::new("nbf-requests").await;
    f.apply(
        "db",
        json!({"refreshInterval": "1s", "data": [
            {"secretKey": "pw", "remoteRef": {"name": "db-password"}},
            {"secretKey": "cfg", "remoteRef": {"name": "app-config"}}]}),
    )
    .await;
    f.wait_reason("db", "Synced").await;
    refreshes(&f, 3).await;
    assert_eq!(
        version_listings(&f).await,
        0,
        "every newest version valid: no versions listed"
    );

    let nbf = Timestamp::now().as_second() + 3600;
    let scheduled = new_version(&f, "later-pw-7tw2c", Some(nbf)).await;
    let kvs = eventually("db-password pending", WAIT, || async {
        let kvs = f.kvs_api().get("db").await.ok()?;
        (!pending(&kvs).is_empty()).then_some(kvs)
    })
    .await;
    assert_eq!(pending(&kvs), [("db-password".to_owned(), scheduled, nbf)]);
    assert_eq!(pw(&f).await.as_deref(), Some("s3cr3t-db-value"));
    refreshes(&f, 3).await;
    assert_eq!(
        version_listings(&f).await,
        1,
        "db-password's versions, once; app-config's never"
    );

    // The schedule moved in Key Vault (the version's nbf changed): followed,
    // with one more listing.
    let moved = Timestamp::now().as_second() + 600;
    f.emulator
        .control(
            Method::PATCH,
            "vaults/shop/secrets/db-password",
            Some(json!({"nbf": moved})),
        )
        .await;
    eventually("the moved start in status", WAIT, || async {
        let kvs = f.kvs_api().get("db").await.ok()?;
        (pending(&kvs).first().map(|p| p.2) == Some(moved)).then_some(())
    })
    .await;
    refreshes(&f, 3).await;
    assert_eq!(version_listings(&f).await, 2);
}

#[tokio::test]
async fn not_before_policy_ignore_takes_the_newest_version_at_once() {
    let f = Fixture::new("nbf-ignore").await;
    f.apply(
        "db",
        json!({"refreshInterval": "1s", "data": [
            {"secretKey": "pw", "remoteRef": {"name": "db-password", "notBeforePolicy": "Ignore"}}]}),
    )
    .await;
    f.wait_reason("db", "Synced").await;
    let nbf = Timestamp::now().as_second() + 3600;
    let newest = new_version(&f, "early-pw-3hv8d", Some(nbf)).await;
    eventually("the newest value at once", WAIT, || async {
        (pw(&f).await.as_deref() == Some("early-pw-3hv8d")).then_some(())
    })
    .await;
    let kvs = status_with(&f, &newest).await;
    assert!(pending(&kvs).is_empty(), "{:?}", pending(&kvs));
    assert_eq!(version_listings(&f).await, 0, "nothing to choose among");
}

#[tokio::test]
async fn the_previous_key_holds_the_version_before_the_current_one() {
    let f = Fixture::new("previous").await;
    f.apply(
        "db",
        json!({"refreshInterval": "1s", "data": [{"secretKey": "pw", "previousSecretKey": "pw-previous",
            "remoteRef": {"name": "db-password"}}]}),
    )
    .await;
    let kvs = f.wait_reason("db", "Synced").await;
    let first = synced_versions(&kvs)["db-password"].clone();
    let data = f.secret_data("db").await.unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["pw"],
        "no previous version: no previous key"
    );
    assert!(
        version_listings(&f).await >= 1,
        "nothing cached: the versions are listed"
    );
    // Not on every refresh: from a quiet vault on, none while nothing changes.
    vault_reads_settled(&f.emulator, WAIT).await;
    refreshes(&f, 3).await;
    assert_eq!(version_listings(&f).await, 0);

    let second = new_version(&f, "second-pw-6mx1r", None).await;
    let data = eventually("the rotation with its previous value", WAIT, || async {
        let data = f.secret_data("db").await?;
        (data.get("pw").map(String::as_str) == Some("second-pw-6mx1r")).then_some(data)
    })
    .await;
    assert_eq!(data["pw-previous"], "s3cr3t-db-value");
    let kvs = status_with(&f, &second).await;
    assert_eq!(
        synced_versions(&kvs),
        BTreeMap::from([
            ("db-password".to_owned(), second),
            ("db-password@previous".to_owned(), first),
        ])
    );
    // Listed again for the new version: once, or twice when the watch
    // delivered kvsync's own write of the Secret before the sync recorded
    // it, which reads the vault as of now (a repair).
    let listed = version_listings(&f).await;
    assert!((1..=2).contains(&listed), "{listed} listings");
    vault_reads_settled(&f.emulator, WAIT).await;
    refreshes(&f, 3).await;
    assert_eq!(version_listings(&f).await, 0, "none while nothing changes");

    new_version(&f, "third-pw-0pz5e", None).await;
    eventually("the second rotation", WAIT, || async {
        let data = f.secret_data("db").await?;
        (data.get("pw").map(String::as_str) == Some("third-pw-0pz5e")
            && data.get("pw-previous").map(String::as_str) == Some("second-pw-6mx1r"))
        .then_some(())
    })
    .await;
    always("the keys stay", QUIET, || async {
        f.secret_data("db").await.unwrap().len() == 2
    })
    .await;
}

#[tokio::test]
async fn a_secret_with_no_version_valid_yet_is_written_at_its_first_nbf() {
    let f = Fixture::new("nbf-first").await;
    let nbf = Timestamp::now().as_second() + 15;
    f.emulator
        .control(
            Method::PUT,
            "vaults/shop/secrets/launch-key",
            Some(json!({"value": "launch-key-5rj8w", "nbf": nbf})),
        )
        .await;
    // The client-secret app may read every secret of the vault.
    let credentials = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kv-creds"},
        "stringData": {"clientSecret": SECRET_APP_PASSWORD},
    });
    apply_manifest(&f.client, credentials, &f.ns.name, false, false)
        .await
        .unwrap();
    f.apply(
        "launch",
        json!({"refreshInterval": "1h",
            "auth": {"clientSecret": {"tenantId": TENANT, "clientId": SECRET_APP,
                                      "secretRef": {"name": "kv-creds", "key": "clientSecret"}}},
            "data": [{"secretKey": "key", "remoteRef": {"name": "launch-key"}}]}),
    )
    .await;
    let kvs = f.wait_reason("launch", "RemoteNotYetValid").await;
    let starts = Timestamp::from_second(nbf)
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let message = &ready(&kvs).unwrap().message;
    assert!(message.contains(&starts), "{message}");
    assert!(f.secrets().get_opt("launch").await.unwrap().is_none());

    let data = eventually("the Secret at nbf", WAIT, || async {
        f.secret_data("launch").await
    })
    .await;
    let lag = Timestamp::now().as_millisecond() - nbf * 1000;
    assert!(lag <= 3000, "written {lag} ms after nbf");
    assert_eq!(data["key"], "launch-key-5rj8w");
    f.wait_reason("launch", "Synced").await;
    // Looked at again at the start, not polled with backoff meanwhile (which
    // retries after 1, 2, 4… s): the first sync, and one more if the watch
    // delivered the credential Secret after the object (a read as of now).
    let failed = f.sync_count("RemoteNotYetValid").await;
    assert!(failed <= 2, "{failed} failed syncs before nbf");
}
