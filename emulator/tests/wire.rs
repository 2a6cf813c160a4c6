//! Raw HTTP: the exact wire shapes of Key Vault and Entra ID responses the SDK
//! relies on (challenges, bodies, headers, error shapes).

mod support;

use serde_json::{Value, json};
use support::*;

/// Object keys of a JSON object, sorted.
fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

#[tokio::test]
async fn wire_shapes_match_key_vault() {
    let emulator = Emulator::start_standard().await;
    let vault = emulator.vault("shop");
    let http = &emulator.http;

    // 401 challenge before any token.
    let response = http
        .get(format!("{vault}secrets/db-password?api-version=2025-07-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        format!(
            r#"Bearer authorization="{}{TENANT}", resource="https://vault.azure.net""#,
            emulator.endpoints.authority_host
        )
        .as_str()
    );
    assert!(response.headers().contains_key("x-ms-request-id"));
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "Unauthorized"
    );

    let token = emulator.token(READER, READER_SECRET).await;
    let get = |path: &str| {
        http.get(format!("{vault}{path}"))
            .bearer_auth(&token)
            .send()
    };

    // 400 for an unsupported or missing api-version.
    for (query, named) in [
        ("?api-version=2016-10-01", "2016-10-01"),
        ("", "api-version"),
    ] {
        let response = get(&format!("secrets/db-password{query}")).await.unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "BadParameter");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(named),
            "{body}"
        );
    }

    // The bundle.
    let response = get("secrets/db-password/?api-version=7.6").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert!(response.headers().contains_key("x-ms-request-id"));
    let bundle: Value = response.json().await.unwrap();
    assert_eq!(
        keys(&bundle),
        ["attributes", "contentType", "id", "tags", "value"]
    );
    assert_eq!(bundle["value"], "s3cr3t");
    assert_eq!(bundle["tags"], json!({"env": "prod"}));
    let id = bundle["id"].as_str().unwrap();
    let version = id
        .strip_prefix(&format!("{vault}secrets/db-password/"))
        .unwrap();
    assert!(
        version.len() == 32
            && version
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{id}"
    );
    let attributes = &bundle["attributes"];
    assert_eq!(
        keys(attributes),
        [
            "created",
            "enabled",
            "recoverableDays",
            "recoveryLevel",
            "updated"
        ]
    );
    assert!(attributes["created"].is_i64() && attributes["updated"].is_i64());
    assert_eq!(attributes["enabled"], true);
    assert_eq!(attributes["recoverableDays"], 90);
    assert_eq!(attributes["recoveryLevel"], "Recoverable+Purgeable");
    // Absent fields are omitted, not null.
    let api_key: Value = get("secrets/api-key?api-version=7.5")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys(&api_key), ["attributes", "id", "value"]);

    // 404.
    let response = get("secrets/nope?api-version=7.6").await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.headers().contains_key("x-ms-request-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(keys(&body), ["error"]);
    assert_eq!(body["error"]["code"], "SecretNotFound");
    assert!(body["error"]["message"].as_str().unwrap().contains("nope"));

    // A list page: no values, unversioned ids, absolute nextLink with $skiptoken.
    let page: Value = get("secrets?api-version=2025-06-01&maxresults=1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys(&page), ["nextLink", "value"]);
    let item = &page["value"][0];
    assert_eq!(keys(item), ["attributes", "id"]);
    assert_eq!(item["id"], format!("{vault}secrets/api-key"));
    let next = page["nextLink"].as_str().unwrap();
    assert!(
        next.starts_with(&format!(
            "{vault}secrets?api-version=2025-06-01&$skiptoken="
        )),
        "{next}"
    );
    assert!(next.ends_with("&maxresults=1"), "{next}");
    let last: Value = http
        .get(next)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        last["value"][0]["id"],
        format!("{vault}secrets/db-password")
    );
    assert_eq!(last["nextLink"], Value::Null);

    // 429 from a fault, with and without Retry-After.
    for retry_after in [Some(3), None] {
        let mut kind = json!({"status": 429});
        if let Some(seconds) = retry_after {
            kind["retryAfterSeconds"] = json!(seconds);
        }
        emulator
            .control_ok(reqwest::Method::POST, "faults",
                Some(json!({"target": "vault:shop", "pathPrefix": "/secrets/db", "count": 1, "kind": kind})))
            .await;
        let response = get("secrets/db-password?api-version=7.6").await.unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
            retry_after.map(|s: u64| s.to_string())
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "Throttled");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("VaultRequestTypeLimitReached")
        );
    }
    assert_eq!(
        get("secrets/db-password?api-version=7.6")
            .await
            .unwrap()
            .status(),
        200,
        "faults are used up"
    );

    // Counters by route template.
    let counters = emulator.counters().await;
    assert_eq!(counters["byEndpoint"]["vault:shop GET /secrets/{name}"], 8);
    assert_eq!(counters["byEndpoint"]["vault:shop GET /secrets/{name}/"], 1);
    assert_eq!(counters["byEndpoint"]["vault:shop GET /secrets"], 2);
    assert_eq!(
        counters["byEndpoint"]["entra POST /{tenant}/oauth2/v2.0/token"],
        1
    );
    assert_eq!(counters["byStatus"]["429"], 2);
    assert_eq!(counters["byStatus"]["401"], 1);
    assert_eq!(counters["total"], 12);
    assert_eq!(counters["withBearerToken"], 10);
    emulator
        .control_ok(reqwest::Method::POST, "counters/reset", None)
        .await;
    assert_eq!(emulator.counters().await["total"], 0);
}

#[tokio::test]
async fn entra_errors_have_entras_shape() {
    let emulator = Emulator::start_standard().await;
    let response = emulator
        .token_request(&[
            ("client_id", READER),
            ("client_secret", "wrong"),
            ("grant_type", "client_credentials"),
            ("scope", SCOPE),
        ])
        .await;
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        keys(&body),
        [
            "correlation_id",
            "error",
            "error_codes",
            "error_description",
            "timestamp",
            "trace_id"
        ]
    );
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(body["error_codes"], json!([7000215]));
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS7000215: Invalid client secret provided.")
    );

    let wrong_scope = emulator
        .token_request(&[
            ("client_id", READER),
            ("client_secret", READER_SECRET),
            ("grant_type", "client_credentials"),
            ("scope", "https://management.azure.com/.default"),
        ])
        .await;
    assert_eq!(
        wrong_scope.json::<Value>().await.unwrap()["error_codes"],
        json!([70011])
    );

    let ok = emulator
        .token_request(&[
            ("client_id", READER),
            ("client_secret", READER_SECRET),
            ("grant_type", "client_credentials"),
            ("scope", SCOPE),
        ])
        .await;
    let body: Value = ok.json().await.unwrap();
    assert_eq!(
        keys(&body),
        ["access_token", "expires_in", "ext_expires_in", "token_type"]
    );
    assert_eq!(
        (&body["token_type"], &body["expires_in"]),
        (&json!("Bearer"), &json!(3599))
    );
}
