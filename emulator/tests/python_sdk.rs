//! Cross-SDK fidelity: the official Python SDKs (azure-identity, msal,
//! azure-keyvault-secrets; versions pinned in tests/python/requirements.txt,
//! installed once into ~/.cache/kvsync/py-sdk-venv) run tests/python/fidelity.py
//! against the in-process emulator with nothing pinned but the endpoints and the CA.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::*;

/// The emulated host's system-assigned managed identity.
const MANAGED_IDENTITY: &str = "77777777-7777-7777-7777-777777777777";

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python")
}

/// Runs a command off the runtime's thread, so the in-process emulator keeps serving.
async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("the command starts"))
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The venv with the pinned SDKs (created on first use).
async fn python() -> PathBuf {
    let output = run(Command::new(python_dir().join("venv.sh"))).await;
    assert!(
        output.status.success(),
        "cannot install the Python SDKs: {}",
        text(&output.stderr)
    );
    PathBuf::from(text(&output.stdout).trim()).join("bin/python")
}

#[tokio::test]
async fn the_official_python_sdks_work_against_the_emulator_with_their_default_api_version() {
    let emulator = Emulator::start_standard().await;
    emulator
        .control_ok(
            reqwest::Method::PUT,
            &format!("apps/{MANAGED_IDENTITY}"),
            Some(serde_json::json!({"tenantId": TENANT, "clientId": MANAGED_IDENTITY,
                "managedIdentity": "systemAssigned", "access": [{"vault": "shop", "secrets": ["db-password"]}]})),
        )
        .await;
    let mut command = Command::new(python().await);
    command
        .arg(python_dir().join("fidelity.py"))
        .env("AUTHORITY_HOST", &emulator.endpoints.authority_host)
        .env("TENANT_ID", TENANT)
        .env("CLIENT_ID", READER)
        .env("CLIENT_SECRET", READER_SECRET)
        .env("VAULT_URL", emulator.vault("shop"))
        .env("CONTROL_URL", &emulator.endpoints.control_url)
        .env("REQUESTS_CA_BUNDLE", &emulator.endpoints.ca_file)
        .env("SSL_CERT_FILE", &emulator.endpoints.ca_file)
        .env("IDENTITY_ENDPOINT", &emulator.endpoints.identity_endpoint)
        .env("IDENTITY_HEADER", "python-sdk-test");
    let output = run(command).await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(
        output.status.success(),
        "fidelity.py failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|error| panic!("no summary ({error}) in {stdout}"));
    println!("{stderr}{summary}");
    // Nothing pinned: the SDK's own default, the newest Key Vault version.
    assert_eq!(summary["api_versions"], serde_json::json!(["2026-04-01"]));
    // MSAL read the discovery documents from the emulator before asking for tokens;
    // the managed identity credential asked IMDS.
    let by_endpoint = &emulator.counters().await["byEndpoint"];
    assert_eq!(by_endpoint["entra GET /metadata/identity/oauth2/token"], 1);
    assert_eq!(by_endpoint["entra GET /common/discovery/instance"], 1);
    assert!(
        by_endpoint["entra GET /{tenant}/v2.0/.well-known/openid-configuration"]
            .as_u64()
            .is_some_and(|n| n >= 3),
        "{by_endpoint}"
    );
}
