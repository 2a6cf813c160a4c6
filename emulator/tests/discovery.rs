//! Raw HTTP: the discovery documents MSAL-based SDKs read before their first token
//! request, and the api-versions the current SDKs send by default.

mod support;

use jsonwebtoken::{DecodingKey, Validation};
use serde_json::Value;
use support::*;

#[tokio::test]
async fn discovery_points_msal_at_the_emulator_and_publishes_the_token_key() {
    let emulator = Emulator::start_standard().await;
    let authority = &emulator.endpoints.authority_host;
    let http = &emulator.http;
    let get_json = |url: String| async move {
        let response = http.get(&url).send().await.unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    };

    // Instance discovery, as MSAL sends it (the port dropped from the endpoint).
    let (status, instance) = get_json(format!(
        "{authority}common/discovery/instance?api-version=1.1&authorization_endpoint=https://localhost/{TENANT}/oauth2/v2.0/authorize"
    ))
    .await;
    assert_eq!(status, 200, "{instance}");
    let tenant_document = instance["tenant_discovery_endpoint"].as_str().unwrap();
    assert_eq!(
        tenant_document,
        format!("{authority}{TENANT}/v2.0/.well-known/openid-configuration")
    );
    let (status, foreign) = get_json(format!(
        "{authority}common/discovery/instance?api-version=1.1&authorization_endpoint=https://login.example.org/{TENANT}/oauth2/v2.0/authorize"
    ))
    .await;
    assert_eq!(
        (status, &foreign["error"]),
        (400, &"invalid_instance".into())
    );

    // The tenant's OpenID configuration: every endpoint on the emulator.
    let (status, document) = get_json(tenant_document.to_owned()).await;
    assert_eq!(status, 200, "{document}");
    assert_eq!(document["issuer"], format!("{authority}{TENANT}/v2.0"));
    assert_eq!(
        document["token_endpoint"],
        format!("{authority}{TENANT}/oauth2/v2.0/token")
    );
    assert_eq!(
        document["authorization_endpoint"],
        format!("{authority}{TENANT}/oauth2/v2.0/authorize")
    );

    // Unknown tenants answer as Entra does.
    let (status, unknown) = get_json(format!(
        "{authority}00000000-0000-0000-0000-000000000000/v2.0/.well-known/openid-configuration"
    ))
    .await;
    assert_eq!(status, 400);
    assert_eq!(unknown["error"], "invalid_tenant");
    assert_eq!(unknown["error_codes"][0], 90002);

    // The JWKS verifies the access tokens the emulator issues, also after a rollover.
    for round in 0..2 {
        let token = emulator.token(READER, READER_SECRET).await;
        let (status, jwks) = get_json(document["jwks_uri"].as_str().unwrap().to_owned()).await;
        assert_eq!(status, 200);
        let jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
        let mut validation = Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_audience(&["https://vault.azure.net"]);
        jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_jwk(&jwk).unwrap(), &validation)
            .unwrap_or_else(|error| panic!("round {round}: {error}"));
        emulator
            .control_ok(reqwest::Method::POST, "tokens/rollover", None)
            .await;
    }
}

#[tokio::test]
async fn the_api_versions_current_sdks_send_are_accepted_and_unknown_ones_refused() {
    let emulator = Emulator::start_standard().await;
    let vault = emulator.vault("shop");
    let token = emulator.token(READER, READER_SECRET).await;
    let status = |version: &'static str| {
        let request = emulator
            .http
            .get(format!("{vault}secrets/db-password?api-version={version}"))
            .bearer_auth(&token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // Python azure-keyvault-secrets 4.12.0, then JavaScript 4.11.2 and Rust 1.0.1.
    for version in ["2026-04-01", "2025-07-01", "7.6", "7.4", "7.0"] {
        assert_eq!(status(version).await, 200, "{version}");
    }
    for version in ["2026-99-01", "7.7", "2016-10-01"] {
        assert_eq!(status(version).await, 400, "{version}");
    }
}
