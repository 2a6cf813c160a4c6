//! The control API: fault injection (hang, 500 with a count) and clear refusals
//! of bad requests.

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::*;

#[tokio::test]
async fn a_hang_fault_times_a_client_out_and_a_500_fault_clears_after_its_count() {
    let emulator = Emulator::start_standard().await;
    let token = emulator.token(READER, READER_SECRET).await;
    let url = format!("{}secrets/api-key?api-version=7.6", emulator.vault("shop"));

    emulator
        .control_ok(reqwest::Method::POST, "faults",
            Some(json!({"target": "vault:shop", "method": "GET", "count": 1, "kind": {"hangMs": 30000}})))
        .await;
    let impatient = emulator
        .http
        .get(&url)
        .bearer_auth(&token)
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(impatient.unwrap_err().is_timeout());

    emulator
        .control_ok(reqwest::Method::POST, "faults",
            Some(json!({"target": "vault:shop", "pathPrefix": "/secrets/api", "count": 2, "kind": {"status": 500}})))
        .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            emulator
                .http
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [500, 500, 200]);
}

#[tokio::test]
async fn the_control_api_refuses_bad_requests_clearly() {
    let emulator = Emulator::start_standard().await;
    let cases = [
        (
            reqwest::Method::PUT,
            "vaults/nope/secrets/x",
            json!({"value": "v"}),
            404,
            "VaultNotFound",
        ),
        (
            reqwest::Method::PUT,
            "vaults/shop/secrets/bad_name",
            json!({"value": "v"}),
            400,
            "BadParameter",
        ),
        (
            reqwest::Method::PATCH,
            "vaults/shop/secrets/nope",
            json!({"enabled": false}),
            404,
            "SecretNotFound",
        ),
        (
            reqwest::Method::POST,
            "faults",
            json!({"target": "vault:nope", "count": 1, "kind": {"status": 500}}),
            400,
            "BadParameter",
        ),
        (
            reqwest::Method::PUT,
            &format!("apps/{READER}"),
            json!({"tenantId": TENANT, "clientId": "someone-else"}),
            400,
            "BadParameter",
        ),
        (
            reqwest::Method::PUT,
            "apps/x",
            json!({"tenantId": TENANT, "clientId": "x", "access": [{"vault": "nope", "secrets": ["*"]}]}),
            400,
            "BadParameter",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let response = emulator.control_request(method, path, Some(body)).await;
        assert_eq!(response.status().as_u16(), status, "{path}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["error"]["code"],
            code,
            "{path}"
        );
    }
    let garbage = emulator
        .http
        .post(emulator.control("faults"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    assert_eq!(
        emulator
            .http
            .get(emulator.control("healthz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
}
