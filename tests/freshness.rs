//! How old may the vault state behind a `Synced` Secret be? At most the
//! object's own `refreshInterval` (+ jitter + a little slack), whatever else
//! shares the vault and the identity; failures never stick; pinned versions
//! are re-checked; and change detection does not trust the operator's clock.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kube::ResourceExt;
use reqwest::Method;
use serde_json::{Value, json};
use support::*;

/// Time a sync needs beyond its trigger (API round trips on a busy 2-core machine).
const SLACK: Duration = Duration::from_secs(3);

/// Requests the emulator saw on vault routes for which `route` holds.
fn count(counters: &Value, route: impl Fn(&str) -> bool) -> u64 {
    counters["byEndpoint"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(key, _)| key.strip_prefix("vault:shop ").is_some_and(&route))
        .filter_map(|(_, n)| n.as_u64())
        .sum()
}

/// (listings, value reads) the emulator saw.
fn listings_and_reads(counters: &Value) -> (u64, u64) {
    (
        count(counters, |route| route == "GET /secrets"),
        count(counters, |route| route.starts_with("GET /secrets/")),
    )
}

fn data_entry(name: &str) -> Value {
    json!([{"secretKey": "pw", "remoteRef": {"name": name}}])
}

/// Waits until Secret `name` has `pw == value`; returns how long that took.
async fn value_arrives(f: &Fixture, name: &str, value: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    eventually(&format!("{name} to hold {value}"), limit, || async {
        (f.secret_data(name).await?.get("pw")? == value).then_some(())
    })
    .await;
    start.elapsed()
}

/// A 5 s object created after a 1 h one on the same vault and identity gets
/// rotations within its own 5 s (the listing poller follows the shortest
/// subscriber at once), and an idle cycle still costs one shared listing.
#[tokio::test]
async fn a_short_interval_is_honoured_beside_a_long_one() {
    let f = Fixture::new("mixed").await;
    f.apply(
        "slow",
        json!({"refreshInterval": "1h", "data": data_entry("app-config")}),
    )
    .await;
    f.wait_reason("slow", "Synced").await;
    // From a later second than the seeding on, a value read is trusted while
    // the listing says it is unchanged: only a listing recent enough for the
    // 5 s object can reveal the rotation.
    next_second().await;
    f.apply(
        "fast",
        json!({"refreshInterval": "5s", "data": data_entry("db-password")}),
    )
    .await;
    f.wait_reason("fast", "Synced").await;

    let interval = Duration::from_secs(5);
    let limit = interval.mul_f64(1.1) + SLACK;
    let mut worst = Duration::ZERO;
    for round in 0..3 {
        let value = format!("rotated-{round}");
        f.emulator.set_secret("shop", "db-password", &value).await;
        let took = value_arrives(&f, "fast", &value, limit + WAIT).await;
        eprintln!("mixed intervals: rotation {round} in the Secret after {took:.1?}");
        assert!(
            took <= limit,
            "rotation {round} took {took:?}, more than the 5 s interval allows ({limit:?})"
        );
        worst = worst.max(took);
        let slow = f.kvs_api().get("slow").await.unwrap();
        assert_eq!(ready(&slow).unwrap().reason, "Synced");
    }
    eprintln!("mixed intervals: worst staleness observed {worst:.1?} (bound {limit:?})");

    // Idle: values read in the same second as their update are read once
    // more (one-second resolution of `updated`); the window opens once those
    // re-reads are over.
    vault_reads_settled(&f.emulator, Duration::from_secs(60)).await;
    f.emulator
        .control(Method::POST, "counters/reset", None)
        .await;
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let idle = f.emulator.counters().await;
    let (lists, gets) = listings_and_reads(&idle);
    eprintln!("mixed intervals: idle {window:?}: {lists} listings, {gets} value reads");
    assert_eq!(gets, 0, "no value is read while nothing changes: {idle}");
    assert!(
        (1..=3).contains(&lists),
        "one shared listing per 5 s, not one per object or per reader: {idle}"
    );
}

/// With `refreshInterval: 0` there is no poller: a failed read must not
/// stick, retries must reach the vault, and a force-sync reads as of now.
#[tokio::test]
async fn a_failed_listing_never_sticks() {
    let f = Fixture::new("nosticking").await;
    f.apply(
        "once",
        json!({"refreshInterval": "0", "data": data_entry("db-password")}),
    )
    .await;
    f.wait_reason("once", "Synced").await;
    let good = f.secrets().get("once").await.unwrap();

    f.emulator
        .control(
            Method::POST,
            "faults",
            Some(json!({"target": "vault:shop", "count": 100_000, "kind": {"status": 500}})),
        )
        .await;
    f.emulator
        .set_secret("shop", "db-password", "after-recovery")
        .await;
    f.force_sync("once", "1").await;
    f.wait_reason("once", "VaultUnavailable").await;
    let kept = f.secrets().get("once").await.unwrap();
    assert_eq!(
        (kept.resource_version(), kept.data),
        (good.resource_version(), good.data),
        "the last good data stays"
    );

    // The vault recovers: the retries (backoff, capped at 4 s) reach it.
    f.emulator.control(Method::DELETE, "faults", None).await;
    let took = value_arrives(&f, "once", "after-recovery", Duration::from_secs(4) + SLACK).await;
    eprintln!("no sticking: recovered {took:.1?} after the vault did");
    f.wait_reason("once", "Synced").await;

    // A force-sync reads the vault as of now: at once, or when the object's
    // last read as of now (the retry that recovered) is one minimum refresh
    // interval old.
    f.emulator
        .set_secret("shop", "db-password", "forced-now")
        .await;
    f.force_sync("once", "2").await;
    let took = value_arrives(&f, "once", "forced-now", MIN_REFRESH_INTERVAL + SLACK).await;
    eprintln!("no sticking: force-sync read as of now in {took:.1?}");
}

/// A pinned version that is disabled becomes `RemoteDisabled` within its
/// interval (last good data kept), and `Synced` again once re-enabled.
#[tokio::test]
async fn a_pinned_version_is_rechecked() {
    let f = Fixture::new("pinned").await;
    let bundle = f
        .emulator
        .set_secret("shop", "db-password", "pinned-value")
        .await;
    let version = bundle["id"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    f.apply(
        "pinned",
        json!({"refreshInterval": "2s", "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password", "version": version}}]}),
    )
    .await;
    f.wait_reason("pinned", "Synced").await;
    let good = f.secrets().get("pinned").await.unwrap();
    assert_eq!(decoded(&good)["pw"], "pinned-value");

    let path = "vaults/shop/secrets/db-password";
    f.emulator
        .control(Method::PATCH, path, Some(json!({"enabled": false})))
        .await;
    let disabled_at = Instant::now();
    // Re-checked at least once per interval: the next refresh after one
    // interval (≤ 2.2 s) reads it again.
    let limit = Duration::from_secs(2).mul_f64(2.2) + SLACK;
    let api = f.kvs_api();
    eventually("RemoteDisabled", limit, || async {
        let kvs = api.get("pinned").await.ok()?;
        (ready(&kvs)?.reason == "RemoteDisabled").then_some(())
    })
    .await;
    eprintln!(
        "pinned: disabled version reported after {:.1?}",
        disabled_at.elapsed()
    );
    let kept = f.secrets().get("pinned").await.unwrap();
    assert_eq!(
        (kept.resource_version(), decoded(&kept)),
        (good.resource_version(), decoded(&good)),
        "the last good data stays"
    );

    f.emulator
        .control(Method::PATCH, path, Some(json!({"enabled": true})))
        .await;
    eventually("Synced again", limit, || async {
        let kvs = api.get("pinned").await.ok()?;
        (ready(&kvs)?.reason == "Synced").then_some(())
    })
    .await;

    // What the re-checks cost while idle: a GET of the pinned version about
    // once per interval (a refresh reuses a read younger than its interval).
    f.emulator
        .control(Method::POST, "counters/reset", None)
        .await;
    let window = Duration::from_secs(6);
    tokio::time::sleep(window).await;
    let (lists, gets) = listings_and_reads(&f.emulator.counters().await);
    eprintln!("pinned: idle {window:?} at 2 s: {lists} listings, {gets} pinned re-checks");
    assert!(
        (1..=4).contains(&gets),
        "{gets} re-checks of the pinned version in {window:?}"
    );
}

/// Sleeps until just after the start of the next wall-clock second (the
/// emulator's skew is whole seconds, so its seconds start at the same time).
async fn next_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = Duration::from_nanos(u64::from(now.subsec_nanos()));
    tokio::time::sleep(Duration::from_secs(1) - into + Duration::from_millis(20)).await;
}

fn updated(bundle: &Value) -> i64 {
    bundle["attributes"]["updated"].as_i64().unwrap()
}

/// Two updates in one second of the vault's clock, the first read by the
/// operator in between: the second is synced, whether the vault's clock runs
/// ahead of the operator's or behind it.
async fn same_second_updates(test: &str, skew_seconds: i64) {
    let f = Fixture::new(test).await;
    f.emulator
        .control(
            Method::POST,
            "clock",
            Some(json!({"skewSeconds": skew_seconds})),
        )
        .await;
    f.apply(
        "skew",
        json!({"refreshInterval": "1s", "data": data_entry("db-password")}),
    )
    .await;
    f.wait_reason("skew", "Synced").await;
    for round in 0..8 {
        next_second().await;
        let (first, second) = (format!("first-{round}"), format!("second-{round}"));
        let a = f.emulator.set_secret("shop", "db-password", &first).await;
        f.force_sync("skew", &format!("{round}")).await;
        value_arrives(&f, "skew", &first, WAIT).await;
        let b = f.emulator.set_secret("shop", "db-password", &second).await;
        if updated(&a) != updated(&b) {
            eprintln!("{test}: round {round} crossed a second; again");
            value_arrives(&f, "skew", &second, WAIT).await;
            continue;
        }
        let took = value_arrives(&f, "skew", &second, Duration::from_secs(1) * 3 + SLACK).await;
        eprintln!(
            "{test}: second update in the same vault second ({}) synced after {took:.1?}",
            updated(&b)
        );
        return;
    }
    panic!("{test}: could not make two updates in one second with a read in between");
}

#[tokio::test]
async fn a_second_update_in_the_same_second_is_synced_with_the_vault_clock_ahead() {
    same_second_updates("skewahead", 3).await;
}

#[tokio::test]
async fn a_second_update_in_the_same_second_is_synced_with_the_vault_clock_behind() {
    same_second_updates("skewbehind", -3).await;
}

/// The clock knob moves the vault's timestamps.
#[tokio::test]
async fn the_emulator_clock_skew_moves_updated() {
    let emulator =
        Emulator::start(json!({"vaults": [{"name": "shop", "tenantId": TENANT, "secrets": []}]}))
            .await;
    emulator
        .control(Method::POST, "clock", Some(json!({"skewSeconds": -3600})))
        .await;
    let bundle = emulator.set_secret("shop", "db-password", "x").await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((updated(&bundle) - (now - 3600)).abs() <= 2, "{bundle}");
}
