//! Key Vault and Entra ID faults, and other writers of kvsync's Secrets.
//!
//! Each fault scenario syncs one KeyVaultSecret (`refreshInterval: 1s`), breaks
//! the emulator for a window of several refresh intervals and checks what a user
//! would see: the Secret keeps its last good data (not even rewritten), the
//! `Ready` condition names the cause, the number of requests the emulator saw
//! stays within what the backoff allows (exponential from 1 s, equal jitter,
//! capped by `--max-backoff`, `Retry-After` as a floor), and the Secret is in
//! sync again within one capped backoff after the fault clears.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use reqwest::Method;
use serde_json::{Value, json};
use support::*;

/// `--max-backoff` of every operator here.
const CAP: Duration = Duration::from_secs(4);
/// A hung request is abandoned after this (`--request-timeout`).
const REQUEST_TIMEOUT: &str = "1s";
/// How long each fault lasts: several refresh intervals and capped backoffs.
const WINDOW: Duration = Duration::from_secs(14);
/// Time a sync needs beyond its scheduled start (API round trips on a busy
/// 2-core machine), allowed on top of the backoff when waiting for recovery.
const SYNC_SLACK: Duration = Duration::from_secs(3);

/// Counter key prefixes: every request to the vault (listings and requests), and
/// token requests.
const VAULT: &str = "vault:shop ";
const TOKEN: &str = "entra POST /{tenant}/oauth2/v2.0/token";

async fn fixture(test: &str) -> Fixture {
    Fixture::with_operator_args(
        test,
        &[
            "--max-backoff",
            &format!("{}s", CAP.as_secs()),
            "--request-timeout",
            REQUEST_TIMEOUT,
        ],
    )
    .await
}

/// The operator's backoff before retry `n` (1 = after the first failure) lies
/// within these bounds (equal jitter: at least half the step; `Retry-After`
/// is a floor, even above the cap).
fn backoff_bounds(n: u32, retry_after: Option<Duration>) -> (Duration, Duration) {
    let floor = retry_after.unwrap_or_default();
    let step = Duration::from_secs(1 << (n - 1).min(20)).min(CAP);
    let ceiling = CAP.max(floor);
    (
        (step / 2).max(floor).min(ceiling),
        step.max(floor).min(ceiling),
    )
}

/// Most attempts one failing KeyVaultSecret can make within `window`: the
/// first, then one per shortest backoff that still fits.
fn max_attempts(window: Duration, retry_after: Option<Duration>) -> u64 {
    let (mut elapsed, mut attempts) = (Duration::ZERO, 1);
    loop {
        elapsed += backoff_bounds(attempts as u32, retry_after).0;
        if elapsed > window {
            return attempts;
        }
        attempts += 1;
    }
}

/// Fewest attempts within `window` when each takes up to `latency`, the first
/// starting within one refresh (1.1 s) of the window's start: retrying must
/// really happen, not stop.
fn min_attempts(window: Duration, retry_after: Option<Duration>, latency: Duration) -> u64 {
    let (mut elapsed, mut attempts) = (Duration::from_millis(1100) + latency, 1);
    loop {
        elapsed += backoff_bounds(attempts as u32, retry_after).1 + latency;
        if elapsed > window {
            return attempts;
        }
        attempts += 1;
    }
}

/// Requests the emulator saw on endpoints whose key starts with `endpoint`.
fn count(counters: &Value, endpoint: &str) -> u64 {
    counters["byEndpoint"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(key, _)| key.starts_with(endpoint))
        .filter_map(|(_, n)| n.as_u64())
        .sum()
}

/// Asserts for `period` that the Secret is exactly `good` (same data, never
/// rewritten) and that `db`'s condition says `reason`.
async fn hold_last_good(f: &Fixture, good: &Secret, reason: &str, period: Duration) {
    always(
        &format!("last good Secret kept and reason {reason}"),
        period,
        || async {
            let secret = f.secrets().get("db").await.unwrap();
            let kvs = f.kvs_api().get("db").await.unwrap();
            secret.resource_version() == good.resource_version()
                && secret.data == good.data
                && ready(&kvs).is_some_and(|c| c.reason == reason && c.status == "False")
        },
    )
    .await;
}

/// How many times kvsync reported writing the Secret of KeyVaultSecret
/// `name` (its `Synced` Events, counting those folded into a series). Each
/// is published after the status write of its sync.
async fn secret_writes(f: &Fixture, name: &str) -> i32 {
    Api::<Event>::namespaced(f.client.clone(), &f.ns.name)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Synced"))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum()
}

/// Waits until `db` is `Synced` again; returns how long that took.
async fn recovery(f: &Fixture, limit: Duration) -> Duration {
    let cleared = Instant::now();
    let api = f.kvs_api();
    eventually("recovery after the fault cleared", limit, || {
        let api = api.clone();
        async move {
            let kvs = api.get("db").await.ok()?;
            (ready(&kvs)?.reason == "Synced").then_some(())
        }
    })
    .await;
    cleared.elapsed()
}

/// One Key Vault outage of `WINDOW`: the condition, the Secret, the request
/// count and the recovery. Returns (vault requests during the fault, recovery time).
async fn vault_outage(
    test: &str,
    kind: Value,
    reason: &str,
    message: &str,
    retry_after: Option<Duration>,
    latency: Duration,
) -> (u64, Duration) {
    let f = fixture(test).await;
    let good = f.synced_db("1s").await;
    f.emulator
        .control(
            Method::POST,
            "faults",
            Some(json!({"target": "vault:shop", "count": 100_000, "kind": kind})),
        )
        .await;
    // Counted from after the fault is in place: a healthy listing made
    // between a reset and the fault would be one request no backoff governs.
    f.emulator
        .control(Method::POST, "counters/reset", None)
        .await;
    let started = Instant::now();
    let failed = f.wait_reason("db", reason).await;
    let condition = ready(&failed).unwrap();
    assert!(
        condition.message.contains(message),
        "the condition says why: {}",
        condition.message
    );
    hold_last_good(&f, &good, reason, WINDOW.saturating_sub(started.elapsed())).await;

    // The window closes before the count for the fewest requests expected
    // and after it for the most allowed: a slow count (under load) still
    // counts every request the window's end allows.
    let window = started.elapsed();
    let counters = f.emulator.counters().await;
    let requests = count(&counters, VAULT);
    let counted_by = started.elapsed();
    let (low, high) = (
        min_attempts(window, retry_after, latency),
        max_attempts(counted_by, retry_after),
    );
    eprintln!(
        "{test}: {requests} vault requests in {window:.1?}..{counted_by:.1?} (backoff allows {low}..={high}); {}; {}",
        condition.message, counters["byEndpoint"]
    );
    assert!(
        requests <= high,
        "{requests} requests in {counted_by:?}: more than the backoff allows ({high})"
    );
    assert!(
        requests >= low,
        "{requests} requests in {window:?}: retrying stalled (expected at least {low})"
    );

    f.emulator.control(Method::DELETE, "faults", None).await;
    let limit = CAP.max(retry_after.unwrap_or_default()) + latency + SYNC_SLACK;
    let took = recovery(&f, limit).await;
    eprintln!("{test}: in sync {took:.1?} after the fault cleared (limit {limit:?})");
    let after = f.secrets().get("db").await.unwrap();
    assert_eq!(
        (after.resource_version(), after.data),
        (good.resource_version(), good.data.clone()),
        "nothing changed in the vault, so the Secret was not rewritten"
    );
    f.emulator
        .set_secret("shop", "db-password", "after-the-outage")
        .await;
    eventually("a rotation after the outage", WAIT, || async {
        (f.secret_data("db").await?.get("pw")? == "after-the-outage").then_some(())
    })
    .await;
    (requests, took)
}

#[tokio::test]
async fn vault_500s_back_off_and_keep_the_last_good_secret() {
    vault_outage(
        "outage500",
        json!({"status": 500}),
        "VaultUnavailable",
        "HTTP 500",
        None,
        Duration::from_millis(300),
    )
    .await;
}

#[tokio::test]
async fn vault_hangs_time_out_back_off_and_keep_the_last_good_secret() {
    vault_outage(
        "outagehang",
        json!({"hangMs": 30_000}),
        "VaultUnavailable",
        "timed out",
        None,
        Duration::from_millis(1300),
    )
    .await;
}

#[tokio::test]
async fn a_429_storm_without_retry_after_backs_off_exponentially() {
    vault_outage(
        "storm",
        json!({"status": 429}),
        "Throttled",
        "throttled by Key Vault",
        None,
        Duration::from_millis(300),
    )
    .await;
}

#[tokio::test]
async fn a_429_storm_with_retry_after_waits_as_told_even_beyond_the_cap() {
    let retry_after = CAP + Duration::from_secs(1);
    let (requests, _) = vault_outage(
        "stormra",
        json!({"status": 429, "retryAfterSeconds": retry_after.as_secs()}),
        "Throttled",
        "throttled by Key Vault",
        Some(retry_after),
        Duration::from_millis(300),
    )
    .await;
    assert!(
        requests <= max_attempts(WINDOW + SYNC_SLACK, Some(retry_after)),
        "Retry-After ({retry_after:?}) spaced the {requests} requests"
    );
}

/// With a long refresh interval an outage is noticed by a force-sync; the
/// retries must not wait for the next refresh (an hour) to see it end.
#[tokio::test]
async fn an_outage_seen_between_long_refreshes_ends_within_one_backoff() {
    let f = fixture("longrefresh").await;
    let good = f.synced_db("1h").await;
    f.emulator
        .control(
            Method::POST,
            "faults",
            Some(json!({"target": "vault:shop", "count": 100_000, "kind": {"status": 503}})),
        )
        .await;
    f.emulator
        .set_secret("shop", "db-password", "rotated-during-outage")
        .await;
    f.force_sync("db", "1").await;
    f.wait_reason("db", "VaultUnavailable").await;
    hold_last_good(&f, &good, "VaultUnavailable", Duration::from_secs(6)).await;
    f.emulator.control(Method::DELETE, "faults", None).await;
    let cleared = Instant::now();
    eventually(
        "the rotation, once the vault answers again",
        CAP + SYNC_SLACK,
        || async {
            (f.secret_data("db").await?.get("pw")? == "rotated-during-outage").then_some(())
        },
    )
    .await;
    eprintln!(
        "long refresh: rotation synced {:.1?} after the outage ended",
        cleared.elapsed()
    );
}

/// The vault stops accepting the token kvsync holds (signing key rollover: the
/// token is unexpired but invalid), and for a while Entra cannot issue a new
/// one. kvsync must drop the refused token and fetch a new one once Entra
/// answers again, instead of presenting the refused token until it expires.
#[tokio::test]
async fn a_refused_token_is_replaced_once_entra_recovers() {
    let f = fixture("tokenrollover").await;
    let good = f.synced_db("1s").await;
    f.emulator
        .control(Method::POST, "counters/reset", None)
        .await;
    let entra_failures = 3;
    f.emulator
        .control(
            Method::POST,
            "faults",
            Some(json!({"target": "entra", "count": entra_failures, "kind": {"status": 500}})),
        )
        .await;
    let started = Instant::now();
    f.emulator
        .control(Method::POST, "tokens/rollover", None)
        .await;
    let failed = f.wait_reason("db", "AuthFailed").await;
    eprintln!("token refused: {}", ready(&failed).unwrap().message);

    // Each failed attempt costs Entra at most one token request, so the three
    // injected failures are used up within the first three backoffs.
    let worst_case: Duration = (1..=entra_failures)
        .map(|n| backoff_bounds(n, None).1)
        .sum::<Duration>()
        + CAP
        + SYNC_SLACK * 2;
    let took = recovery(&f, worst_case).await;
    let counters = f.emulator.counters().await;
    let (tokens, requests) = (count(&counters, TOKEN), count(&counters, VAULT));
    let window = started.elapsed();
    eprintln!(
        "token rollover: in sync after {took:.1?}; {tokens} token requests, {requests} vault requests"
    );
    assert!(
        tokens > u64::from(entra_failures) && tokens <= max_attempts(window, None) + 1,
        "{tokens} token requests: the failing ones, then one that worked"
    );
    // An attempt requests at most twice (the refused read, and its retry after
    // the challenge); the final one requests once more to get the value.
    assert!(
        requests <= 2 * max_attempts(window, None) + 1,
        "{requests} requests"
    );
    let secret = f.secrets().get("db").await.unwrap();
    assert_eq!(secret.resource_version(), good.resource_version());
    f.assert_nothing_leaked(&[]).await;
}

/// The federated credential is removed from the app registration (and, so
/// that kvsync needs a new token, the signing key rolls over): the condition
/// carries Entra's explanation, token requests back off, the Secret stays,
/// and restoring the credential brings the sync back within one backoff.
#[tokio::test]
async fn a_revoked_federated_credential_is_reported_and_recovered() {
    let f = fixture("revoked").await;
    let good = f.synced_db("1s").await;
    let app_path = format!("apps/{SA_APP}");
    f.emulator
        .control(
            Method::PUT,
            &app_path,
            Some(sa_app_registration(&f.issuer, &f.ns.name, false)),
        )
        .await;
    f.emulator
        .control(Method::POST, "counters/reset", None)
        .await;
    let started = Instant::now();
    f.emulator
        .control(Method::POST, "tokens/rollover", None)
        .await;
    let failed = eventually("Entra's refusal in the condition", WAIT, || async {
        let kvs = f.kvs_api().get("db").await.ok()?;
        let condition = ready(&kvs)?;
        (condition.reason == "AuthFailed" && condition.message.contains("AADSTS"))
            .then(|| condition.clone())
    })
    .await;
    assert!(
        failed.message.contains("federated"),
        "the message points at the federated credential: {}",
        failed.message
    );
    hold_last_good(
        &f,
        &good,
        "AuthFailed",
        WINDOW.saturating_sub(started.elapsed()),
    )
    .await;
    let window = started.elapsed();
    let tokens = count(&f.emulator.counters().await, TOKEN);
    let high = max_attempts(window, None);
    eprintln!(
        "revoked: {tokens} token requests in {window:.1?} (backoff allows {high}); {}",
        failed.message
    );
    assert!(
        (2..=high).contains(&tokens),
        "{tokens} token requests in {window:?}"
    );

    f.emulator
        .control(
            Method::PUT,
            &app_path,
            Some(sa_app_registration(&f.issuer, &f.ns.name, true)),
        )
        .await;
    let took = recovery(&f, CAP + SYNC_SLACK).await;
    eprintln!("revoked: in sync {took:.1?} after the credential was restored");
    assert_eq!(
        f.secrets().get("db").await.unwrap().resource_version(),
        good.resource_version()
    );
}

/// Someone else's writes to kvsync's Secrets: a key kvsync owns is repaired
/// (whatever tool wrote it), a key someone added to a `Merge` target is left
/// alone, and neither starts a write loop.
#[tokio::test]
async fn other_writers_keys_are_repaired_or_left_alone() {
    let f = fixture("writers").await;
    let intruder = |manager: &str| PatchParams::apply(manager).force();

    // An owned Secret: another field manager takes over `pw` with a forced apply.
    f.synced_db("1h").await;
    let takeover = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
        "data": {"pw": "dGFtcGVyZWQ="}});
    f.secrets()
        .patch("db", &intruder("intruder"), &Patch::Apply(&takeover))
        .await
        .unwrap();
    eventually(
        "the owned key to be repaired",
        Duration::from_secs(5),
        || async { (f.secret_data("db").await?.get("pw")? == "s3cr3t-db-value").then_some(()) },
    )
    .await;
    let repaired = f.secrets().get("db").await.unwrap();
    let pw_managers: Vec<_> = repaired
        .managed_fields()
        .iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.to_string().contains("f:pw"))
        })
        .filter_map(|m| m.manager.as_deref())
        .collect();
    assert_eq!(pw_managers, ["kvsync"], "kvsync owns pw again");
    always("the repair is final", Duration::from_secs(3), || async {
        f.secrets().get("db").await.unwrap().resource_version() == repaired.resource_version()
    })
    .await;

    // A key someone adds to an owned Secret is removed: its data is exactly
    // the vault's. Once: no write (or status write) per refresh follows.
    f.apply("db", json!({"refreshInterval": "1s", "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}))
        .await;
    let writes_before = secret_writes(&f, "db").await;
    let extra = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
        "data": {"extra": "eA=="}});
    f.secrets()
        .patch("db", &intruder("intruder"), &Patch::Apply(&extra))
        .await
        .unwrap();
    eventually(
        "the added key to be removed",
        Duration::from_secs(5),
        || async {
            let data = f.secret_data("db").await?;
            (data == BTreeMap::from([("pw".to_string(), "s3cr3t-db-value".to_string())]))
                .then_some(())
        },
    )
    .await;
    // The window opens once the repairing sync is over: its Event follows
    // its status write.
    eventually("the repair's Synced event", WAIT, || async {
        (secret_writes(&f, "db").await > writes_before).then_some(())
    })
    .await;
    f.settled("db").await;
    let since = f.versions("db").await;
    f.assert_idle(
        "db",
        since,
        Duration::from_secs(3),
        "no rewrites after the repair (three refreshes)",
    )
    .await;

    // A Merge target: their key stays, an added key stays, our key is repaired.
    let theirs: Secret = serde_json::from_value(
        json!({"metadata": {"name": "shared"}, "stringData": {"theirs": "keep-me"}}),
    )
    .unwrap();
    f.secrets()
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    f.apply(
        "merger",
        json!({"refreshInterval": "1s", "target": {"name": "shared", "creationPolicy": "Merge"},
        "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}),
    )
    .await;
    let merged = f.settled("merger").await;
    let added = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shared"},
        "data": {"added": "YnktYW5vdGhlci10ZWFt"}});
    let after_add = f
        .secrets()
        .patch("shared", &intruder("another-team"), &Patch::Apply(&added))
        .await
        .unwrap();
    let expected: BTreeMap<String, String> = [
        ("theirs", "keep-me"),
        ("added", "by-another-team"),
        ("pw", "s3cr3t-db-value"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    always(
        "the added key is left alone, without rewrites (three refreshes)",
        Duration::from_secs(3),
        || async {
            let secret = f.secrets().get("shared").await.unwrap();
            let status = f.kvs_api().get("merger").await.unwrap();
            secret.resource_version() == after_add.resource_version()
                && decoded(&secret) == expected
                && status.resource_version() == merged.resource_version()
        },
    )
    .await;
    f.secrets()
        .patch(
            "shared",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"pw": "tampered"}})),
        )
        .await
        .unwrap();
    eventually(
        "the Merge target's kvsync key to be repaired",
        Duration::from_secs(5),
        || async { (f.secret_data("shared").await? == expected).then_some(()) },
    )
    .await;
}
