//! Raw HTTP: the IMDS token endpoint for managed identities, as azure_identity's
//! ManagedIdentityCredential calls it (the operator's end-to-end test uses the SDK).

mod support;

use serde_json::{Value, json};
use support::*;

const SYSTEM: &str = "55555555-5555-5555-5555-555555555555";
const USER: &str = "66666666-6666-6666-6666-666666666666";

#[tokio::test]
async fn imds_issues_tokens_for_the_hosts_managed_identities_only_with_the_metadata_header() {
    let seed = format!(
        r#"
- tenantId: {TENANT}
  clientId: {SYSTEM}
  managedIdentity: systemAssigned
  access: [{{vault: shop, secrets: [db-password]}}]
- tenantId: {TENANT}
  clientId: {USER}
  managedIdentity: userAssigned
  access: [{{vault: shop, secrets: [api-key]}}]
"#
    );
    let emulator = Emulator::start(|dir| {
        standard_seed(dir, "").replacen("apps:\n", &format!("apps:{seed}"), 1)
    })
    .await;
    let endpoint = &emulator.endpoints.identity_endpoint;
    let imds = |query: &str, metadata: bool| {
        let mut request = emulator.http.get(format!("{endpoint}?{query}"));
        if metadata {
            request = request.header("Metadata", "true");
        }
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let vault = "api-version=2019-08-01&resource=https%3A%2F%2Fvault.azure.net";

    // Without `Metadata: true` IMDS answers nothing.
    let (status, refused) = imds(vault, false).await;
    assert_eq!(
        (status, &refused["error"]),
        (400, &json!("invalid_request"))
    );
    // App Service's flavour (what MSAL for JavaScript sends): its secret header instead.
    let response = emulator
        .http
        .get(format!("{endpoint}?{vault}"))
        .header("X-IDENTITY-HEADER", "any")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // No client id: the system-assigned identity; a client id: that identity.
    for (query, client_id, readable) in [
        (vault.to_owned(), SYSTEM, "db-password"),
        (format!("{vault}&client_id={USER}"), USER, "api-key"),
    ] {
        let (status, body) = imds(&query, true).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["client_id"], client_id);
        assert_eq!(body["resource"], "https://vault.azure.net");
        let expires_on: i64 = body["expires_on"].as_str().unwrap().parse().unwrap();
        assert!(expires_on > 0);
        // The token opens what the identity is granted, and only that.
        let token = body["access_token"].as_str().unwrap();
        let read = |name: &str| {
            emulator
                .http
                .get(format!(
                    "{}secrets/{name}?api-version=7.6",
                    emulator.vault("shop")
                ))
                .bearer_auth(token)
                .send()
        };
        assert_eq!(read(readable).await.unwrap().status(), 200);
        assert_eq!(read("elsewhere").await.unwrap().status(), 403);
    }

    // An app registration is no managed identity; other resources are refused.
    let (status, body) = imds(&format!("{vault}&client_id={READER}"), true).await;
    assert_eq!(
        (status, &body["error_description"]),
        (400, &json!("Identity not found"))
    );
    let (status, body) = imds(
        "api-version=2019-08-01&resource=https%3A%2F%2Fmanagement.azure.com",
        true,
    )
    .await;
    assert_eq!((status, &body["error"]), (400, &json!("invalid_resource")));
}
