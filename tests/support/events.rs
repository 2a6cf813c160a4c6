//! Event-driven refresh in the harness (used as `support::events::*`): the
//! emulator's Event Grid namespace (topic `keyvault`, subscription `kvsync`
//! bound to vault `shop`), and the operator's own workload identity that
//! reads it — a TokenRequest token of ServiceAccount `kvsync-operator`,
//! federated to [`OPERATOR_APP`] — with the `kvsync run` flags and
//! environment that go with them.

use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use super::{Emulator, TENANT};

/// The operator's own app registration (events only: no vault grant).
pub const OPERATOR_APP: &str = "44444444-4444-4444-4444-444444444444";
pub const TOPIC: &str = "keyvault";
pub const SUBSCRIPTION: &str = "kvsync";
const OPERATOR_ACCOUNT: &str = "kvsync-operator";

/// The seed's `eventGrid` section: one subscription bound to `shop`, and `queues`.
pub fn event_grid_seed(queues: Value) -> Value {
    json!({
        "topics": [{"name": TOPIC, "subscriptions": [{"name": SUBSCRIPTION, "vaults": ["shop"]}]}],
        "queues": queues,
    })
}

/// The app registration of the operator's identity, federated with
/// `kvsync-operator` of `namespace` at the cluster's `issuer`.
pub fn operator_app(issuer: &str, namespace: &str) -> Value {
    json!({
        "tenantId": TENANT, "clientId": OPERATOR_APP,
        "federatedCredentials": [{"issuer": issuer,
            "subject": format!("system:serviceaccount:{namespace}:{OPERATOR_ACCOUNT}"),
            "audience": "api://AzureADTokenExchange"}],
    })
}

/// Creates `kvsync-operator` in `namespace` and writes a TokenRequest token
/// of it for Entra into `dir`, as the AKS webhook projects it; its path.
pub async fn operator_token(client: &kube::Client, namespace: &str, dir: &Path) -> PathBuf {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account = serde_json::from_value(json!({"metadata": {"name": OPERATOR_ACCOUNT}})).unwrap();
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let request: TokenRequest = serde_json::from_value(json!({"spec": {
        "audiences": ["api://AzureADTokenExchange"], "expirationSeconds": 3600}}))
    .unwrap();
    let answer = accounts
        .create_subresource::<TokenRequest, TokenRequest>(
            "token",
            OPERATOR_ACCOUNT,
            &PostParams::default(),
            &request,
        )
        .await
        .unwrap();
    let path = dir.join("operator-token");
    std::fs::write(&path, answer.status.unwrap().token).unwrap();
    path
}

/// The environment that gives the operator its own identity.
pub fn operator_env(token_file: &Path) -> Vec<(String, String)> {
    vec![
        ("AZURE_CLIENT_ID".to_owned(), OPERATOR_APP.to_owned()),
        ("AZURE_TENANT_ID".to_owned(), TENANT.to_owned()),
        (
            "AZURE_FEDERATED_TOKEN_FILE".to_owned(),
            token_file.display().to_string(),
        ),
    ]
}

/// `--event-source eventgrid:<the emulator's subscription>`.
pub fn event_grid_source(emulator: &Emulator) -> String {
    let namespace = emulator.endpoints.event_grid.as_deref().unwrap();
    format!("eventgrid:{namespace}topics/{TOPIC}/eventsubscriptions/{SUBSCRIPTION}")
}

/// `--event-vault shop=<its URL>` and an `--event-source` per entry of `sources`.
pub fn event_flags(emulator: &Emulator, sources: &[String]) -> Vec<String> {
    let mut flags = vec![
        "--event-vault".to_owned(),
        format!("shop={}", emulator.vault_url("shop")),
    ];
    for source in sources {
        flags.extend(["--event-source".to_owned(), source.clone()]);
    }
    flags
}
