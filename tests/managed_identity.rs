//! `auth.managedIdentity`: the node's managed identity through IMDS (the
//! emulator's, reached the way azure_identity allows: IDENTITY_ENDPOINT), allowed
//! only in `--operator-identity-namespaces`.

mod support;

use reqwest::Method;
use serde_json::json;
use support::*;

const SYSTEM_ASSIGNED: &str = "55555555-5555-5555-5555-555555555555";
const USER_ASSIGNED: &str = "66666666-6666-6666-6666-666666666666";

#[tokio::test]
async fn the_nodes_managed_identities_read_the_vault_only_in_allowed_namespaces() {
    let mut f = Fixture::new("managed-id").await;
    for (client_id, kind, secret) in [
        (SYSTEM_ASSIGNED, "systemAssigned", "db-password"),
        (USER_ASSIGNED, "userAssigned", "app-alpha"),
    ] {
        f.emulator
            .control(
                Method::PUT,
                &format!("apps/{client_id}"),
                Some(
                    json!({"tenantId": TENANT, "clientId": client_id, "managedIdentity": kind,
                            "access": [{"vault": "shop", "secrets": [secret]}]}),
                ),
            )
            .await;
    }
    let imds_env = [
        (
            "IDENTITY_ENDPOINT".to_owned(),
            f.emulator.endpoints.identity_endpoint.clone(),
        ),
        ("IDENTITY_HEADER".to_owned(), "kvsync-test".to_owned()),
    ];
    f.stop_operator().await;
    f.operator = Some(Operator::start_with_env(&f.emulator, &f.ns.name, &[], &imds_env).process);

    // Not an allowed namespace: refused before any token request.
    let system = json!({"managedIdentity": {}});
    f.apply(
        "system",
        json!({"auth": system, "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}),
    )
    .await;
    let refused = f.wait_reason("system", "AuthFailed").await;
    let message = &ready(&refused).unwrap().message;
    assert!(
        message.contains("--operator-identity-namespaces"),
        "{message}"
    );
    let imds_calls = |counters: serde_json::Value| {
        counters["byEndpoint"]["entra GET /metadata/identity/oauth2/token"]
            .as_u64()
            .unwrap_or(0)
    };
    assert_eq!(imds_calls(f.emulator.counters().await), 0);

    // Allowed: the system-assigned identity, and a user-assigned one by client id.
    f.stop_operator().await;
    f.operator = Some(
        Operator::start_with_env(
            &f.emulator,
            &f.ns.name,
            &["--operator-identity-namespaces", &f.ns.name],
            &imds_env,
        )
        .process,
    );
    f.apply(
        "user",
        json!({"auth": {"managedIdentity": {"clientId": USER_ASSIGNED}},
               "data": [{"secretKey": "alpha", "remoteRef": {"name": "app-alpha"}}]}),
    )
    .await;
    f.wait_reason("system", "Synced").await;
    f.wait_reason("user", "Synced").await;
    assert_eq!(
        f.secret_data("system").await.unwrap()["pw"],
        "s3cr3t-db-value"
    );
    assert_eq!(f.secret_data("user").await.unwrap()["alpha"], "alpha-val");
    assert!(imds_calls(f.emulator.counters().await) >= 2);
    f.assert_nothing_leaked(&[]).await;
}
