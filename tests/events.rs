//! Event-driven refresh on the real control plane: with `refreshInterval: 1h`
//! a Key Vault rotation reaches the Secret in under 2 s through an Event Grid
//! namespace subscription or a storage queue (Azurite); a lost event is
//! healed by polling; a duplicate costs no second read; forged and foreign
//! events cost no request at all and the URL an event carries is never
//! dialled; only the leader receives; and the operator's workload identity,
//! a managed identity or a client secret may read the sources.
//!
//! The emulator is the fixture's, seeded with a namespace (topic `keyvault`,
//! subscription `kvsync` bound to vault `shop`) and a decoy vault; the
//! operator reads the events with its own workload identity (a TokenRequest
//! token of ServiceAccount `kvsync-operator`, federated to `OPERATOR_APP`).

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kvsync_emulator::azurite::{self, Azurite};
use reqwest::Method;
use serde_json::{Value, json};
use support::events::*;
use support::*;

/// The bar for a rotation with events.
const WITH_EVENTS: Duration = Duration::from_secs(2);

fn source_of(vault: &str) -> String {
    format!(
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/kvsync-emulator/providers/Microsoft.KeyVault/vaults/{vault}"
    )
}

/// The fixture's seed plus the namespace, the decoy vault and `queues`.
async fn events_fixture(test: &str, queues: Value) -> (Fixture, PathBuf, tempfile::TempDir) {
    let mut f = Fixture::idle(test).await;
    let dir = tempfile::tempdir().unwrap();
    let (issuer, jwks) = cluster_issuer(&f.client, dir.path()).await;
    let (web_cert, web_key) = test_certificate("web.shop.example");
    let (app_cert, _) = test_certificate("kvsync-client");
    let mut seed = seed(
        &issuer,
        &jwks,
        &f.ns.name,
        &format!("{web_key}{web_cert}"),
        &app_cert,
    );
    seed["vaults"].as_array_mut().unwrap().push(
        json!({"name": "decoy", "secrets": [{"name": "db-password", "value": "decoy-value"}]}),
    );
    seed["apps"]
        .as_array_mut()
        .unwrap()
        .push(operator_app(&issuer, &f.ns.name));
    seed["eventGrid"] = event_grid_seed(queues);
    f.emulator = Emulator::start(seed).await;
    let token_file = operator_token(&f.client, &f.ns.name, dir.path()).await;
    (f, token_file, dir)
}

/// `kvsync run` with the operator's identity and `sources`; `extra` flags besides.
fn start_operator(
    f: &Fixture,
    token_file: &std::path::Path,
    sources: &[String],
    extra: &[&str],
) -> Process {
    start_operator_as(f, sources, extra, &operator_env(token_file))
}

/// `kvsync run` with `sources`, `extra` flags and the environment `env`.
fn start_operator_as(
    f: &Fixture,
    sources: &[String],
    extra: &[&str],
    env: &[(String, String)],
) -> Process {
    let mut flags = event_flags(&f.emulator, sources);
    flags.extend(extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Process::start_as(
        &run_args(&f.emulator, &f.ns.name, &[], &flags),
        kubeconfig_path(),
        env,
    )
}

async fn stats(f: &Fixture) -> Value {
    f.emulator.control(Method::GET, "eventgrid", None).await[format!("{TOPIC}/{SUBSCRIPTION}")]
        .clone()
}

/// Waits until this many receive calls wait on the subscription.
async fn receivers_waiting(f: &Fixture, count: u64) {
    eventually(
        &format!("{count} receive call(s) waiting"),
        WAIT,
        || async { (stats(f).await["waiting"] == count).then_some(()) },
    )
    .await;
}

/// A counter or gauge of the operator's metrics (0 when absent).
async fn metric(operator: &Process, series: &str) -> f64 {
    metrics_of(operator)
        .await
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// Requests the emulator saw on `vault`'s routes for which `route` holds.
fn vault_requests(counters: &Value, vault: &str, route: impl Fn(&str) -> bool) -> u64 {
    let prefix = format!("vault:{vault} ");
    counters["byEndpoint"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(key, _)| key.strip_prefix(&prefix).is_some_and(&route))
        .filter_map(|(_, n)| n.as_u64())
        .sum()
}

/// Reads of a value (any `GET /secrets/{name}…` route) in vault `shop`.
fn value_reads(counters: &Value) -> u64 {
    vault_requests(counters, "shop", |route| route.starts_with("GET /secrets/"))
}

/// Applies `db` (refreshed every `interval`) and waits for its first sync.
async fn synced_db(f: &Fixture, interval: &str) {
    f.apply(
        "db",
        json!({"refreshInterval": interval, "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}),
    )
    .await;
    f.wait_reason("db", "Synced").await;
}

/// All syncs, whatever their outcome.
async fn syncs(operator: &Process) -> f64 {
    metrics_of(operator)
        .await
        .lines()
        .filter(|line| line.starts_with("kvsync_syncs_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the operator is quiet: a first sync may leave a read as of
/// now asked (its own Secret write seen by the watch first), which runs at
/// most one minimum refresh interval later; no sync for twice that long
/// means none is pending, so what follows is the events' doing.
async fn quiet(operator: &Process) {
    let deadline = Instant::now() + WAIT;
    let (mut count, mut since) = (syncs(operator).await, Instant::now());
    while since.elapsed() < 2 * MIN_REFRESH_INTERVAL {
        assert!(Instant::now() < deadline, "the operator never became quiet");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = syncs(operator).await;
        if now != count {
            (count, since) = (now, Instant::now());
        }
    }
}

/// Rotates `db-password` and returns how long until the Secret holds it.
async fn rotation_reaches_the_secret(f: &Fixture, value: &str, limit: Duration) -> Duration {
    let rotated = Instant::now();
    f.emulator.set_secret("shop", "db-password", value).await;
    loop {
        if f.secret_data("db")
            .await
            .and_then(|d| d.get("pw").cloned())
            .as_deref()
            == Some(value)
        {
            return rotated.elapsed();
        }
        assert!(
            rotated.elapsed() < limit,
            "the Secret did not get {value:?} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_rotation_reaches_the_secret_in_under_two_seconds_through_event_grid() {
    let (mut f, token, _dir) = events_fixture("events-grid", json!([])).await;
    let operator = start_operator(&f, &token, &[event_grid_source(&f.emulator)], &[]);
    synced_db(&f, "1h").await;
    receivers_waiting(&f, 1).await;
    quiet(&operator).await;

    let took = rotation_reaches_the_secret(&f, "rotated-by-event", WAIT).await;
    println!("event grid: rotation → Secret in {took:?}");
    assert!(took < WITH_EVENTS, "took {took:?}");

    eventually("the event acknowledged", WAIT, || async {
        (stats(&f).await["acknowledged"] == 1).then_some(())
    })
    .await;
    assert_eq!(
        metric(
            &operator,
            "kvsync_vault_events_received_total{source=\"eventgrid\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&operator, "kvsync_vault_events_matched_total").await,
        1.0
    );
    assert_eq!(
        metric(&operator, "kvsync_vault_event_to_secret_seconds_count").await,
        1.0
    );
    f.operator = Some(operator);
    f.assert_nothing_leaked(&["rotated-by-event"]).await;
}

/// With `--event-identity identity` and `env`: the rotation's latency, and
/// the emulator's IMDS token requests.
async fn rotation_read_as(test: &str, identity: &str, env: &[(String, String)]) -> (Duration, u64) {
    let (mut f, _token, _dir) = events_fixture(test, json!([])).await;
    f.emulator
        .control(
            Method::PUT,
            &format!("apps/{MANAGED_APP}"),
            Some(json!({"tenantId": TENANT, "clientId": MANAGED_APP, "managedIdentity": "userAssigned"})),
        )
        .await;
    let env: Vec<(String, String)> = env
        .iter()
        .cloned()
        .chain([
            (
                "IDENTITY_ENDPOINT".to_owned(),
                f.emulator.endpoints.identity_endpoint.clone(),
            ),
            ("IDENTITY_HEADER".to_owned(), "kvsync-test".to_owned()),
        ])
        .collect();
    let operator = start_operator_as(
        &f,
        &[event_grid_source(&f.emulator)],
        &["--event-identity", identity],
        &env,
    );
    synced_db(&f, "1h").await;
    receivers_waiting(&f, 1).await;
    quiet(&operator).await;
    let took = rotation_reaches_the_secret(&f, "rotated-by-event", WAIT).await;
    println!("{identity}: rotation → Secret in {took:?}");
    let imds =
        f.emulator.counters().await["byEndpoint"]["entra GET /metadata/identity/oauth2/token"]
            .as_u64()
            .unwrap_or(0);
    f.operator = Some(operator);
    f.assert_nothing_leaked(&["rotated-by-event"]).await;
    (took, imds)
}

/// A user-assigned managed identity of the node, for `--event-identity managed:<id>`.
const MANAGED_APP: &str = "55555555-5555-5555-5555-555555555555";

#[tokio::test]
async fn a_managed_identity_can_read_the_sources() {
    let (took, imds) =
        rotation_read_as("events-managed", &format!("managed:{MANAGED_APP}"), &[]).await;
    assert!(took < WITH_EVENTS, "took {took:?}");
    assert!(imds >= 1, "the managed identity's token came from IMDS");
}

#[tokio::test]
async fn a_client_secret_can_read_the_sources() {
    let env = [
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", SECRET_APP),
        ("AZURE_CLIENT_SECRET", SECRET_APP_PASSWORD),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let (took, imds) = rotation_read_as("events-client-secret", "client-secret", &env).await;
    assert!(took < WITH_EVENTS, "took {took:?}");
    assert_eq!(imds, 0, "a client secret asks no IMDS");
}

#[tokio::test]
async fn a_rotation_reaches_the_secret_in_under_two_seconds_through_a_storage_queue() {
    let port = azurite::free_port().unwrap();
    let queue_url = azurite::queue_url(port, "kv-events");
    let (mut f, token, _dir) = events_fixture(
        "events-queue",
        json!([{"url": queue_url, "vaults": ["shop"]}]),
    )
    .await;
    let endpoints = f.emulator.endpoints.clone();
    let _azurite = tokio::task::spawn_blocking(move || Azurite::start(port, &endpoints))
        .await
        .unwrap()
        .unwrap_or_else(|error| panic!("{error}"));
    let operator = start_operator(&f, &token, &[format!("queue:{queue_url}")], &[]);
    synced_db(&f, "1h").await;
    // The queue exists once the first event went through: one rotation
    // first, so the timed one meets a receiver already polling it.
    rotation_reaches_the_secret(&f, "first-through-the-queue", WAIT).await;
    quiet(&operator).await;

    let took = rotation_reaches_the_secret(&f, "rotated-by-queue", WAIT).await;
    println!("storage queue: rotation → Secret in {took:?}");
    assert!(took < WITH_EVENTS, "took {took:?}");
    assert_eq!(
        metric(
            &operator,
            "kvsync_vault_events_received_total{source=\"queue\"}"
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(&operator, "kvsync_vault_events_matched_total").await,
        2.0
    );
    f.operator = Some(operator);
    f.assert_nothing_leaked(&["first-through-the-queue", "rotated-by-queue"])
        .await;
}

/// Three objects read the rotated secret through one vault view: one read
/// serves them all (made a second after the event, when the vault's
/// one-second `updated` lets a read be trusted by the others), still well
/// under the bar.
#[tokio::test]
async fn objects_sharing_a_secret_share_one_read() {
    let (mut f, token, _dir) = events_fixture("events-shared", json!([])).await;
    let operator = start_operator(&f, &token, &[event_grid_source(&f.emulator)], &[]);
    let names = ["db-a", "db-b", "db-c"];
    for name in names {
        f.apply(
            name,
            json!({"refreshInterval": "1h", "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}),
        )
        .await;
    }
    for name in names {
        f.wait_reason(name, "Synced").await;
    }
    receivers_waiting(&f, 1).await;
    quiet(&operator).await;
    let before = value_reads(&f.emulator.counters().await);
    let rotated = Instant::now();
    f.emulator
        .set_secret("shop", "db-password", "shared-rotation")
        .await;
    let took = eventually("every Secret rotated", WAIT, || async {
        for name in names {
            if f.secret_data(name).await?.get("pw")? != "shared-rotation" {
                return None;
            }
        }
        Some(rotated.elapsed())
    })
    .await;
    println!("shared by 3: rotation → every Secret in {took:?}");
    assert!(took < WITH_EVENTS, "took {took:?}");
    assert_eq!(
        value_reads(&f.emulator.counters().await) - before,
        1,
        "one read for the three"
    );
    f.operator = Some(operator);
}

/// A new version of a secret the last listing had disabled: the event makes
/// the vault be listed again at once, so a `dataFrom.find` takes it in.
#[tokio::test]
async fn a_re_enabled_secret_joins_a_find_at_once() {
    let (mut f, token, _dir) = events_fixture("events-find", json!([])).await;
    let operator = start_operator(&f, &token, &[event_grid_source(&f.emulator)], &[]);
    f.apply(
        "apps",
        json!({"refreshInterval": "1h", "dataFrom": [{"find": {"nameRegex": "^app-", "tags": {"env": "prod"}}}]}),
    )
    .await;
    f.wait_reason("apps", "Synced").await;
    assert!(
        !f.secret_data("apps")
            .await
            .unwrap()
            .contains_key("app-gamma"),
        "disabled: left out"
    );
    receivers_waiting(&f, 1).await;
    quiet(&operator).await;
    let rotated = Instant::now();
    f.emulator
        .control(
            Method::PUT,
            "vaults/shop/secrets/app-gamma",
            Some(json!({"value": "gamma-again", "tags": {"env": "prod"}})),
        )
        .await;
    let took = eventually("app-gamma in the Secret", WAIT, || async {
        (f.secret_data("apps").await?.get("app-gamma")? == "gamma-again").then(|| rotated.elapsed())
    })
    .await;
    println!("find: re-enabled secret → Secret in {took:?}");
    assert!(took < WITH_EVENTS, "took {took:?}");
    f.operator = Some(operator);
}

#[tokio::test]
async fn a_dropped_event_is_healed_by_polling_within_the_interval() {
    let (mut f, token, _dir) = events_fixture("events-drop", json!([])).await;
    let operator = start_operator(&f, &token, &[event_grid_source(&f.emulator)], &[]);
    let interval = Duration::from_secs(5);
    synced_db(&f, "5s").await;
    receivers_waiting(&f, 1).await;
    f.emulator
        .control(
            Method::POST,
            "eventgrid/faults",
            Some(json!({"kind": "drop", "count": 1})),
        )
        .await;

    // One interval (+10 % jitter) for the listing to see it, and a sync.
    let took = rotation_reaches_the_secret(
        &f,
        "healed-by-polling",
        interval * 11 / 10 + Duration::from_secs(3),
    )
    .await;
    println!("dropped event: rotation → Secret by polling in {took:?}");
    assert_eq!(stats(&f).await["published"], 0, "the event never arrived");
    assert_eq!(
        metric(
            &operator,
            "kvsync_vault_events_received_total{source=\"eventgrid\"}"
        )
        .await,
        0.0
    );
    f.operator = Some(operator);
}

/// The rotation keeps the value (a new version of the same value): the
/// Secret is not rewritten, so every read counted is the event's doing (a
/// write would be seen by the sync stage's own Secret watch, which may read
/// the vault once more on its own account).
#[tokio::test]
async fn a_duplicate_event_makes_one_vault_read() {
    let (mut f, token, _dir) = events_fixture("events-dup", json!([])).await;
    let operator = start_operator(&f, &token, &[event_grid_source(&f.emulator)], &[]);
    synced_db(&f, "1h").await;
    receivers_waiting(&f, 1).await;
    quiet(&operator).await;
    f.emulator
        .control(
            Method::POST,
            "eventgrid/faults",
            Some(json!({"kind": "duplicate", "count": 1})),
        )
        .await;
    let before = value_reads(&f.emulator.counters().await);
    f.emulator
        .set_secret("shop", "db-password", "s3cr3t-db-value")
        .await;
    eventually(
        "both deliveries handled and the value read",
        WAIT,
        || async {
            let duplicates = metric(
                &operator,
                "kvsync_vault_events_ignored_total{reason=\"duplicate\"}",
            )
            .await;
            let read = value_reads(&f.emulator.counters().await) - before;
            (stats(&f).await["acknowledged"] == 2 && duplicates == 1.0 && read >= 1).then_some(())
        },
    )
    .await;
    // Past the debounce window (1 s) too: no second read comes.
    always("one read", Duration::from_secs(2), || async {
        value_reads(&f.emulator.counters().await) - before == 1
    })
    .await;
    assert_eq!(
        metric(&operator, "kvsync_vault_events_matched_total").await,
        1.0
    );
    f.operator = Some(operator);
}

#[tokio::test]
async fn forged_and_foreign_events_make_no_vault_request_and_an_events_url_is_never_dialled() {
    let (mut f, token, _dir) = events_fixture("events-forged", json!([])).await;
    let operator = start_operator(&f, &token, &[event_grid_source(&f.emulator)], &[]);
    synced_db(&f, "1h").await;
    receivers_waiting(&f, 1).await;
    quiet(&operator).await;
    f.emulator
        .control(Method::POST, "counters/reset", None)
        .await;

    let event = |source: String, data: Value| {
        json!({"id": format!("forged-{}", rand::random::<u32>()), "source": source, "specversion": "1.0",
               "type": "Microsoft.KeyVault.SecretNewVersionCreated", "subject": "db-password", "data": data})
    };
    let decoy_url = f.emulator.vault_url("decoy");
    let ignored = [
        // Not a vault at all.
        event(
            "/subscriptions/0/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/shop"
                .into(),
            json!({}),
        ),
        // A vault source whose data names another vault.
        event(source_of("shop"), json!({"VaultName": "decoy"})),
        // A vault nobody reads (the decoy is served, but no KeyVaultSecret names it).
        event(
            source_of("decoy"),
            json!({"VaultName": "decoy", "Id": format!("{decoy_url}secrets/db-password/1")}),
        ),
        // Not JSON that could be an event.
        json!({"hello": "world"}),
    ];
    for forged in &ignored {
        f.emulator
            .control(
                Method::POST,
                "eventgrid/events",
                Some(json!({"event": forged})),
            )
            .await;
    }
    eventually("the events handled", WAIT, || async {
        let reason = |r: &str| format!("kvsync_vault_events_ignored_total{{reason=\"{r}\"}}");
        let forged = metric(&operator, &reason("forged_source")).await;
        let unknown = metric(&operator, &reason("unknown_vault")).await;
        let malformed = metric(&operator, &reason("malformed")).await;
        (forged == 2.0 && unknown == 1.0 && malformed == 1.0).then_some(())
    })
    .await;
    let stats = stats(&f).await;
    assert_eq!(
        (&stats["acknowledged"], &stats["rejected"]),
        (&json!(3), &json!(1))
    );
    always("no vault request", Duration::from_secs(2), || async {
        let counters = f.emulator.counters().await;
        vault_requests(&counters, "shop", |_| true) + vault_requests(&counters, "decoy", |_| true)
            == 0
    })
    .await;

    // A genuine-looking event whose Id points at the decoy: the configured
    // vault is read once, the URL in the event never.
    let lying = event(
        source_of("shop"),
        json!({"VaultName": "shop", "ObjectName": "db-password", "Version": "ffffffffffffffffffffffffffffffff",
               "Id": format!("{decoy_url}secrets/db-password/ffffffffffffffffffffffffffffffff")}),
    );
    f.emulator
        .control(
            Method::POST,
            "eventgrid/events",
            Some(json!({"event": lying})),
        )
        .await;
    eventually("the configured vault read once", WAIT, || async {
        (value_reads(&f.emulator.counters().await) == 1).then_some(())
    })
    .await;
    let counters = f.emulator.counters().await;
    assert_eq!(vault_requests(&counters, "decoy", |_| true), 0);
    assert_eq!(
        f.secret_data("db").await.unwrap()["pw"],
        "s3cr3t-db-value",
        "the value is the vault's, whatever the event said"
    );
    f.operator = Some(operator);
}

#[tokio::test]
async fn only_the_leader_receives_and_events_keep_flowing_after_a_takeover() {
    let (mut f, token, _dir) = events_fixture("events-leader", json!([])).await;
    let sources = [event_grid_source(&f.emulator)];
    let lease = ["--lease-duration", "3s"];
    let leader = start_operator(
        &f,
        &token,
        &sources,
        &[&["--leader-identity", "op-a"][..], &lease].concat(),
    );
    synced_db(&f, "1h").await;
    receivers_waiting(&f, 1).await;
    quiet(&leader).await;
    let standby = start_operator(
        &f,
        &token,
        &sources,
        &[&["--leader-identity", "op-b"][..], &lease].concat(),
    );
    eventually("the second replica to wait as a standby", WAIT, || async {
        standby
            .output()
            .contains("waiting to become the leader")
            .then_some(())
    })
    .await;

    rotation_reaches_the_secret(&f, "seen-by-the-leader", WAIT).await;
    assert_eq!(stats(&f).await["waiting"], 1, "one receiver: the leader's");
    assert_eq!(
        metric(
            &standby,
            "kvsync_vault_events_received_total{source=\"eventgrid\"}"
        )
        .await,
        0.0,
        "the standby received nothing"
    );
    assert_eq!(
        metric(
            &leader,
            "kvsync_vault_events_received_total{source=\"eventgrid\"}"
        )
        .await,
        1.0
    );

    // The leader goes (releasing the Lease); the new one receives.
    let (status, output) = leader.terminate_with_output();
    assert!(status.success());
    f.earlier_logs.push_str(&output);
    eventually("the standby to take over", WAIT, || async {
        standby.output().contains("kvsync started").then_some(())
    })
    .await;
    receivers_waiting(&f, 1).await;
    quiet(&standby).await;
    let took = rotation_reaches_the_secret(&f, "seen-by-the-new-leader", WAIT).await;
    println!("after a takeover: rotation → Secret in {took:?}");
    assert!(took < WITH_EVENTS, "took {took:?}");
    f.operator = Some(standby);
}

#[test]
fn the_chart_renders_event_sources_the_operator_accepts_and_refuses_nonsense() {
    use clap::Parser;
    let grid =
        "https://ns1.westeurope-1.eventgrid.azure.net/topics/keyvault/eventsubscriptions/kvsync";
    let queue = "https://acct.queue.core.windows.net/kv-events";
    let values = json!({"events": {
        "sources": [{"eventGrid": grid}, {"storageQueue": queue}],
        "vaults": {"shop": "https://localhost:8443/"},
        "identity": "client-secret",
        "clientSecret": {"secretName": "kvsync-events"},
    }});
    let text = match render_chart(&values, "kvsync", "kvsync-system", None) {
        Rendered::Manifests(text) => text,
        Rendered::Refused(message) => panic!("render failed: {message}"),
        Rendered::Unavailable => return,
    };
    let docs = documents(&text);
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let args: Vec<String> = serde_json::from_value(
        deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone(),
    )
    .unwrap();
    let cli = kvsync::cli::Cli::try_parse_from(std::iter::once("kvsync".to_owned()).chain(args))
        .unwrap_or_else(|error| panic!("the operator refuses the chart's arguments: {error}"));
    let kvsync::cli::Command::Run(run) = cli.command else {
        panic!("not `kvsync run`");
    };
    assert_eq!(
        run.events.sources,
        [
            kvsync::vault_events::EventSource::parse(&format!("eventgrid:{grid}")).unwrap(),
            kvsync::vault_events::EventSource::parse(&format!("queue:{queue}")).unwrap(),
        ]
    );
    assert_eq!(run.events.vaults[0].name, "shop");
    assert_eq!(
        run.events.identity,
        kvsync::vault_events::EventIdentity::ClientSecret
    );
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    for (name, key) in [
        ("AZURE_TENANT_ID", "tenantId"),
        ("AZURE_CLIENT_ID", "clientId"),
        ("AZURE_CLIENT_SECRET", "clientSecret"),
    ] {
        let var = env
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not in the operator's environment"));
        assert_eq!(
            var["valueFrom"]["secretKeyRef"],
            json!({"name": "kvsync-events", "key": key})
        );
    }

    for (values, expected) in [
        (
            json!({"events": {"sources": [{"eventGrid": grid, "storageQueue": queue}]}}),
            "exactly one of eventGrid",
        ),
        (
            json!({"changeDetection": "get", "events": {"sources": [{"eventGrid": grid}]}}),
            "changeDetection: list",
        ),
        (
            json!({"events": {"sources": [{"eventGrid": grid}]}}),
            "set workloadIdentity.enabled",
        ),
        (
            json!({"events": {"sources": [{"eventGrid": grid}], "identity": "client-secret"}}),
            "set events.clientSecret.secretName",
        ),
    ] {
        match render_chart(&values, "kvsync", "kvsync-system", None) {
            Rendered::Refused(message) => assert!(message.contains(expected), "{message}"),
            Rendered::Manifests(_) => panic!("rendered anyway: {values}"),
            Rendered::Unavailable => return,
        }
    }
}
