//! The Event Grid namespace: what a vault publishes on a new version, and the
//! pull-delivery wire (receive with long poll, acknowledge, release, reject,
//! lock expiry and redelivery), its authentication, the event faults, and
//! delivery to an Azurite storage queue read with the official queue SDK.

mod support;

use azure_storage_queue::models::QueueClientReceiveMessagesOptions;
use azure_storage_queue::{QueueClient, QueueClientOptions};
use base64::Engine;
use kvsync_emulator::azurite::{self, Azurite};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::*;

const TOPIC: &str = "keyvault";
const EVENT_GRID_SCOPE: &str = "https://eventgrid.azure.net/.default";
const SOURCE_PREFIX: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/kvsync-emulator/providers/Microsoft.KeyVault/vaults/";

/// The standard seed with a namespace: `kvsync` gets `shop`'s events (locks
/// of `lock_seconds`), `others` gets `other`'s; `queues` as given.
fn seed_with_events(lock_seconds: u64, queues: Value) -> impl FnOnce(&std::path::Path) -> String {
    move |dir| {
        let grid = json!({"eventGrid": {
            "topics": [{"name": TOPIC, "subscriptions": [
                {"name": "kvsync", "vaults": ["shop"], "lockDurationSeconds": lock_seconds},
                {"name": "others", "vaults": ["other"]}
            ]}],
            "queues": queues,
        }});
        format!(
            "{}\n{}",
            standard_seed(dir, ""),
            serde_norway::to_string(&grid).unwrap()
        )
    }
}

async fn start(lock_seconds: u64) -> Emulator {
    Emulator::start(seed_with_events(lock_seconds, json!([]))).await
}

/// An access token of the `READER` app for `scope`.
async fn token_for(emulator: &Emulator, scope: &str) -> String {
    let response = emulator
        .token_request(&[
            ("client_id", READER),
            ("client_secret", READER_SECRET),
            ("grant_type", "client_credentials"),
            ("scope", scope),
        ])
        .await;
    assert_eq!(response.status(), 200, "a token for {scope}");
    response.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

struct Namespace<'a> {
    emulator: &'a Emulator,
    token: String,
}

impl<'a> Namespace<'a> {
    async fn new(emulator: &'a Emulator) -> Self {
        let token = token_for(emulator, EVENT_GRID_SCOPE).await;
        Namespace { emulator, token }
    }

    fn url(&self, subscription: &str, verb: &str, query: &str) -> String {
        format!(
            "{}topics/{TOPIC}/eventsubscriptions/{subscription}:{verb}?api-version=2024-06-01{query}",
            self.emulator.endpoints.event_grid.as_deref().unwrap()
        )
    }

    async fn post(&self, url: String, body: Value) -> (u16, Value) {
        let response = self
            .emulator
            .http
            .post(url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// One receive call; its `value`.
    async fn receive(&self, subscription: &str, max_events: u32, max_wait: u32) -> Vec<Value> {
        let query = format!("&maxEvents={max_events}&maxWaitTime={max_wait}");
        let (status, body) = self
            .post(self.url(subscription, "receive", &query), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        body["value"].as_array().unwrap().clone()
    }

    async fn settle(&self, verb: &str, query: &str, tokens: &[&Value]) -> Value {
        let (status, body) = self
            .post(
                self.url("kvsync", verb, query),
                json!({"lockTokens": tokens}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn stats(&self) -> Value {
        self.emulator
            .control_ok(Method::GET, "eventgrid", None)
            .await
            .json()
            .await
            .unwrap()
    }
}

fn lock_token(received: &Value) -> &Value {
    &received["brokerProperties"]["lockToken"]
}

fn event_ids(received: &[Value]) -> Vec<String> {
    received
        .iter()
        .map(|r| r["event"]["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn rotate(emulator: &Emulator, vault: &str, name: &str, value: &str) -> Value {
    emulator
        .control_ok(
            Method::PUT,
            &format!("vaults/{vault}/secrets/{name}"),
            Some(json!({"value": value, "exp": 1_900_000_000})),
        )
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_rotation_reaches_a_waiting_receive_as_the_cloud_event_a_vault_publishes() {
    let emulator = start(60).await;
    let namespace = Namespace::new(&emulator).await;
    let started = Instant::now();
    let (received, bundle) = tokio::join!(namespace.receive("kvsync", 10, 60), async {
        // Rotated once the receive call waits.
        while namespace.stats().await["keyvault/kvsync"]["waiting"] != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rotate(&emulator, "shop", "db-password", "rotated").await
    });
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the long poll answered when the event arrived, not at maxWaitTime"
    );
    assert_eq!(received.len(), 1);
    assert_eq!(received[0]["brokerProperties"]["deliveryCount"], 1);
    let event = &received[0]["event"];
    let version = bundle["id"].as_str().unwrap().rsplit('/').next().unwrap();
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], "Microsoft.KeyVault.SecretNewVersionCreated");
    assert_eq!(event["source"], format!("{SOURCE_PREFIX}shop"));
    assert_eq!(event["subject"], "db-password");
    assert_eq!(
        event["data"],
        json!({"Id": bundle["id"], "VaultName": "shop", "ObjectType": "Secret",
               "ObjectName": "db-password", "Version": version, "NBF": null, "EXP": 1_900_000_000})
    );
    assert!(event["time"].as_str().unwrap().ends_with('Z'));
    assert!(
        !event.to_string().contains("rotated"),
        "an event never carries the value"
    );

    // Acknowledged once; the second time the token is lost.
    let ack = namespace
        .settle("acknowledge", "", &[lock_token(&received[0])])
        .await;
    assert_eq!(
        ack,
        json!({"failedLockTokens": [], "succeededLockTokens": [lock_token(&received[0])]})
    );
    let again = namespace
        .settle("acknowledge", "", &[lock_token(&received[0])])
        .await;
    assert_eq!(
        again["failedLockTokens"],
        json!([{"lockToken": lock_token(&received[0]), "error": {"code": "TokenLost", "message": "Token has expired."}}])
    );

    // The SDK's set through the vault publishes too; the other vault's
    // subscription got none of this.
    emulator
        .reader_client()
        .set_secret(
            "api-key",
            azure_security_keyvault_secrets::models::SetSecretParameters {
                value: Some("new-key".into()),
                ..Default::default()
            }
            .try_into()
            .unwrap(),
            None,
        )
        .await
        .unwrap();
    let received = namespace.receive("kvsync", 10, 10).await;
    assert_eq!(received[0]["event"]["subject"], "api-key");
    let stats = namespace.stats().await;
    assert_eq!(stats["keyvault/kvsync"]["published"], 2);
    assert_eq!(stats["keyvault/kvsync"]["receiveCalls"], 2);
    assert_eq!(stats["keyvault/kvsync"]["waiting"], 0);
    assert_eq!(stats["keyvault/others"]["published"], 0);
}

#[tokio::test]
async fn an_unsettled_event_comes_back_after_its_lock_expires_and_its_old_token_is_lost() {
    let emulator = start(1).await;
    let namespace = Namespace::new(&emulator).await;
    rotate(&emulator, "shop", "db-password", "v2").await;
    let first = namespace.receive("kvsync", 1, 10).await;
    let locked_at = Instant::now();
    // The next receive waits for the lock to expire (1 s), not for maxWaitTime.
    let second = namespace.receive("kvsync", 1, 10).await;
    assert!(locked_at.elapsed() >= Duration::from_millis(900));
    assert!(locked_at.elapsed() < Duration::from_secs(9));
    assert_eq!(event_ids(&first), event_ids(&second));
    assert_eq!(second[0]["brokerProperties"]["deliveryCount"], 2);
    let late = namespace
        .settle(
            "acknowledge",
            "",
            &[lock_token(&first[0]), lock_token(&second[0])],
        )
        .await;
    assert_eq!(late["succeededLockTokens"], json!([lock_token(&second[0])]));
    assert_eq!(late["failedLockTokens"][0]["error"]["code"], "TokenLost");
    let stats = &namespace.stats().await["keyvault/kvsync"];
    assert_eq!(
        (
            stats["locksExpired"].as_u64(),
            stats["acknowledged"].as_u64()
        ),
        (Some(1), Some(1))
    );
}

#[tokio::test]
async fn release_hands_an_event_out_again_and_reject_takes_it_away() {
    let emulator = start(60).await;
    let namespace = Namespace::new(&emulator).await;
    rotate(&emulator, "shop", "db-password", "v2").await;
    rotate(&emulator, "shop", "api-key", "v2").await;
    let received = namespace.receive("kvsync", 2, 10).await;
    assert_eq!(received.len(), 2);

    let released = namespace
        .settle("release", "", &[lock_token(&received[0])])
        .await;
    assert_eq!(released["succeededLockTokens"].as_array().unwrap().len(), 1);
    let rejected = namespace
        .settle("reject", "", &[lock_token(&received[1])])
        .await;
    assert_eq!(rejected["succeededLockTokens"].as_array().unwrap().len(), 1);
    let again = namespace.receive("kvsync", 10, 10).await;
    assert_eq!(event_ids(&again), event_ids(&received[..1]));
    assert_eq!(again[0]["brokerProperties"]["deliveryCount"], 2);

    // A delayed release: not available until its delay has passed; only the
    // delays the spec lists are accepted.
    let (status, body) = namespace
        .post(
            namespace.url("kvsync", "release", "&releaseDelayInSeconds=5"),
            json!({"lockTokens": [lock_token(&again[0])]}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("BadRequest"))
    );
    namespace
        .settle(
            "release",
            "&releaseDelayInSeconds=10",
            &[lock_token(&again[0])],
        )
        .await;
    let stats = &namespace.stats().await["keyvault/kvsync"];
    assert_eq!(
        (&stats["delayed"], &stats["available"], &stats["rejected"]),
        (&json!(1), &json!(0), &json!(1))
    );
}

#[tokio::test]
async fn the_namespace_answers_only_event_grid_tokens_and_valid_requests() {
    let emulator = start(60).await;
    let namespace = Namespace::new(&emulator).await;
    let url = namespace.url("kvsync", "receive", "&maxWaitTime=10");
    let status = |request: reqwest::RequestBuilder| async move {
        let response = request.json(&json!({})).send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or_default();
        (
            status,
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    let http = &emulator.http;
    assert_eq!(status(http.post(&url)).await, (401, "Unauthorized".into()));
    let vault_token = token_for(&emulator, SCOPE).await;
    assert_eq!(
        status(http.post(&url).bearer_auth(&vault_token)).await,
        (401, "Unauthorized".into()),
        "a Key Vault token is not an Event Grid token"
    );
    let vault = emulator.vault("shop");
    let event_grid_token = &namespace.token;
    assert_eq!(
        status(
            http.get(format!("{vault}secrets/api-key?api-version=7.6"))
                .bearer_auth(event_grid_token)
        )
        .await
        .0,
        401,
        "nor the other way round"
    );
    let wrong = |query: &str| {
        http.post(format!(
            "{}topics/{TOPIC}/eventsubscriptions/{query}",
            emulator.endpoints.event_grid.as_deref().unwrap()
        ))
        .bearer_auth(event_grid_token)
    };
    for (query, expected) in [
        ("kvsync:receive?api-version=2019-01-01", (400, "BadRequest")),
        ("kvsync:receive", (400, "BadRequest")),
        (
            "kvsync:receive?api-version=2024-06-01&maxEvents=0",
            (400, "BadRequest"),
        ),
        (
            "kvsync:receive?api-version=2024-06-01&maxWaitTime=5",
            (400, "BadRequest"),
        ),
        (
            "nope:receive?api-version=2024-06-01&maxWaitTime=10",
            (404, "NotFound"),
        ),
        ("kvsync:explode?api-version=2024-06-01", (404, "NotFound")),
    ] {
        assert_eq!(
            status(wrong(query)).await,
            (expected.0, expected.1.into()),
            "{query}"
        );
    }
    let counters = emulator.counters().await;
    assert!(
        counters["byEndpoint"]["eventgrid POST /topics/{topic}/eventsubscriptions/{operation}"]
            .as_u64()
            .unwrap()
            >= 8,
        "{counters}"
    );
}

#[tokio::test]
async fn event_faults_drop_duplicate_delay_and_reorder_and_injected_events_arrive_as_given() {
    let emulator = start(60).await;
    let namespace = Namespace::new(&emulator).await;
    for fault in [
        json!({"kind": "drop", "count": 1}),
        json!({"kind": "duplicate", "count": 1}),
        json!({"kind": "delay", "count": 1, "delayMs": 1500}),
        json!({"kind": "reorder", "count": 2}),
    ] {
        emulator
            .control_ok(Method::POST, "eventgrid/faults", Some(fault))
            .await;
    }
    rotate(&emulator, "shop", "db-password", "dropped").await;
    rotate(&emulator, "shop", "db-password", "twice").await;
    let twice = namespace.receive("kvsync", 10, 10).await;
    assert_eq!(
        twice.len(),
        2,
        "the dropped one never comes, the duplicate twice"
    );
    assert_eq!(
        event_ids(&twice)[0],
        event_ids(&twice)[1],
        "the same event id"
    );

    let published = Instant::now();
    rotate(&emulator, "shop", "db-password", "late").await;
    let late = namespace.receive("kvsync", 10, 10).await;
    assert!(
        published.elapsed() >= Duration::from_millis(1400),
        "delayed"
    );
    assert_eq!(late.len(), 1);

    rotate(&emulator, "shop", "db-password", "first").await;
    rotate(&emulator, "shop", "api-key", "second").await;
    let reordered = namespace.receive("kvsync", 10, 10).await;
    let subjects: Vec<&Value> = reordered.iter().map(|r| &r["event"]["subject"]).collect();
    assert_eq!(subjects, [&json!("api-key"), &json!("db-password")]);

    // Any event, as given: a forged source for a vault the namespace never heard of.
    let forged = json!({"id": "forged-1", "source": format!("{SOURCE_PREFIX}evil"), "specversion": "1.0",
        "type": "Microsoft.KeyVault.SecretNewVersionCreated", "subject": "db-password",
        "data": {"VaultName": "evil", "ObjectName": "db-password", "Id": "https://evil.example/secrets/db-password/1"}});
    emulator
        .control_ok(
            Method::POST,
            "eventgrid/events",
            Some(json!({"event": forged, "vault": "shop"})),
        )
        .await;
    let received = namespace.receive("kvsync", 10, 10).await;
    assert_eq!(received[0]["event"], forged);
    assert_eq!(namespace.stats().await["keyvault/others"]["published"], 0);
    let refused = emulator
        .control_request(
            Method::POST,
            "eventgrid/faults",
            Some(json!({"kind": "delay", "count": 1})),
        )
        .await;
    assert_eq!(refused.status(), 400);
}

#[tokio::test]
async fn changed_grants_publish_the_vaults_access_policy_event() {
    let emulator = start(60).await;
    let namespace = Namespace::new(&emulator).await;
    emulator
        .control_ok(
            Method::PUT,
            "apps/55555555-5555-5555-5555-555555555555",
            Some(
                json!({"tenantId": TENANT, "clientId": "55555555-5555-5555-5555-555555555555",
                        "clientSecret": "x", "access": [{"vault": "shop", "secrets": ["*"]}]}),
            ),
        )
        .await;
    let received = namespace.receive("kvsync", 10, 10).await;
    let event = &received[0]["event"];
    assert_eq!(event["type"], "Microsoft.KeyVault.VaultAccessPolicyChanged");
    assert_eq!(event["data"]["ObjectType"], "Vault");
    assert_eq!(event["data"]["VaultName"], "shop");
}

#[tokio::test]
async fn events_reach_an_azurite_queue_as_base64_event_grid_events() {
    let port = azurite::free_port().unwrap();
    let url = azurite::queue_url(port, "kv-events");
    let emulator = Emulator::start(seed_with_events(
        60,
        json!([{"url": url, "vaults": ["shop"]}]),
    ))
    .await;
    let endpoints = emulator.endpoints.clone();
    let _azurite = tokio::task::spawn_blocking(move || Azurite::start(port, &endpoints))
        .await
        .unwrap()
        .unwrap_or_else(|error| panic!("{error}"));
    rotate(&emulator, "shop", "db-password", "queued").await;
    rotate(&emulator, "other", "elsewhere", "not-for-this-queue").await;

    // Read as a client would: the official queue SDK with an Entra token for Storage.
    let queue = QueueClient::new(
        url.parse().unwrap(),
        Some(emulator.secret_credential(READER, READER_SECRET)),
        Some(QueueClientOptions {
            client_options: emulator.client_options(),
            ..Default::default()
        }),
    )
    .unwrap();
    let messages = eventually_messages(&queue).await;
    assert_eq!(messages.len(), 1, "only shop's event");
    let text = messages[0].message_text.as_deref().unwrap();
    let event: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        event["eventType"],
        "Microsoft.KeyVault.SecretNewVersionCreated"
    );
    assert_eq!(event["topic"], format!("{SOURCE_PREFIX}shop"));
    assert_eq!(event["data"]["ObjectName"], "db-password");
    assert_eq!(event["dataVersion"], "1");
}

/// The queue's messages, once there are any (the delivery is asynchronous).
async fn eventually_messages(
    queue: &QueueClient,
) -> Vec<azure_storage_queue::models::ReceivedMessage> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let options = QueueClientReceiveMessagesOptions {
            number_of_messages: Some(32),
            ..Default::default()
        };
        let received = queue.receive_messages(Some(options)).await;
        if let Ok(received) = received {
            let items = received.into_model().unwrap().items.unwrap_or_default();
            if !items.is_empty() {
                return items;
            }
        }
        assert!(Instant::now() < deadline, "no message reached the queue");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
