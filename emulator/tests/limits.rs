//! Key Vault's service limits (seed `serviceLimits`): past a vault's limit
//! for an operation class, `429 Throttled` with `Retry-After`; after that
//! many seconds, served again.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::*;

#[tokio::test]
async fn past_the_limit_a_vault_answers_429_with_retry_after_until_the_window_moves_on() {
    // The documented 10-second window, with 3 reads and 1 create per window.
    let emulator = Emulator::start(|dir| {
        format!(
            "{}\nserviceLimits: {{other: 3, secretCreate: 1}}\n",
            standard_seed(dir, "")
        )
    })
    .await;
    let token = emulator.token(READER, READER_SECRET).await;
    let http = &emulator.http;
    let read = |vault: &str| {
        http.get(format!(
            "{}secrets/db-password?api-version=7.6",
            emulator.vault(vault)
        ))
        .bearer_auth(&token)
        .send()
    };
    let create = |value: &str| {
        http.put(format!(
            "{}secrets/new-one?api-version=7.6",
            emulator.vault("shop")
        ))
        .bearer_auth(&token)
        .json(&serde_json::json!({"value": value}))
        .send()
    };

    for _ in 0..3 {
        assert_eq!(read("shop").await.unwrap().status(), 200);
    }
    let throttled = read("shop").await.unwrap();
    assert_eq!(throttled.status(), 429);
    assert!(throttled.headers().contains_key("x-ms-request-id"));
    let retry_after: u64 = throttled.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&retry_after), "Retry-After {retry_after}");
    let body: Value = throttled.json().await.unwrap();
    assert_eq!(body["error"]["code"], "Throttled");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("VaultRequestTypeLimitReached")
    );

    // Creates have a limit of their own, and so does every vault (the
    // reader may not read `other`: its 403 shows the request got through).
    assert_eq!(create("a").await.unwrap().status(), 200);
    assert_eq!(create("b").await.unwrap().status(), 429);
    assert_eq!(read("other").await.unwrap().status(), 403);

    // Refused requests do not count: once the window has moved past the
    // first reads, the vault serves again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(read("shop").await.unwrap().status(), 200);
    let counters = emulator.counters().await;
    assert_eq!(counters["byStatus"]["429"], 2);
}
