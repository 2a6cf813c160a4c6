//! The shipped examples stay valid against a real API server: every example
//! is server-side dry-run applied, so the API server's validation and the
//! CRD's schema run, but nothing is persisted. (The chart: `tests/chart.rs`.)

mod support;

use std::path::{Path, PathBuf};

use serde_json::json;
use support::{TestNamespace, apply_manifest, client, documents};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every example that a cluster with kvsync can take: `examples/*.yaml` and
/// `examples/migration/*.yaml`, except ESO's "before" objects (`eso-*.yaml`:
/// ESO's CRDs are not installed). `examples/demo/` belongs to the demo script.
fn example_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["examples", "examples/migration"] {
        for entry in std::fs::read_dir(Path::new(ROOT).join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml")
                && path
                    .file_name()
                    .is_some_and(|n| !n.to_string_lossy().starts_with("eso-"))
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[tokio::test]
async fn every_example_is_accepted_by_the_api_server() {
    let files = example_files();
    // Guards against the walk silently finding nothing or an example vanishing.
    let names: Vec<_> = files
        .iter()
        .map(|f| f.strip_prefix(ROOT).unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "examples/client-certificate.yaml",
        "examples/client-secret.yaml",
        "examples/datafrom-find-extract.yaml",
        "examples/managed-identity.yaml",
        "examples/migration/kvsync-after.yaml",
        "examples/migration/kvsync-templated.yaml",
        "examples/operator-identity.yaml",
        "examples/reloader-search.yaml",
        "examples/tls-certificate.yaml",
        "examples/workload-identity.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    let client = client().await;
    let ns = TestNamespace::new(&client, "examples").await;
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let docs = documents(&text);
        assert!(!docs.is_empty(), "{} has no documents", file.display());
        for doc in docs {
            if let Err(e) = apply_manifest(&client, doc, &ns.name, false, true).await {
                failures.push(format!("{}: {e}", file.display()));
            }
        }
    }
    assert!(failures.is_empty(), "rejected:\n{}", failures.join("\n"));
}

#[tokio::test]
async fn the_dry_run_rejects_an_invalid_keyvaultsecret() {
    // The check above is only worth something if a broken object fails it.
    let client = client().await;
    let ns = TestNamespace::new(&client, "examples-invalid").await;
    let broken = json!({
        "apiVersion": "kvsync.io/v1alpha1",
        "kind": "KeyVaultSecret",
        "metadata": {"name": "broken"},
        "spec": {
            "vaultUrl": "http://shop-kv.vault.azure.net/",
            "auth": {"workloadIdentity": {}},
        },
    });
    let err = apply_manifest(&client, broken, &ns.name, false, true)
        .await
        .expect_err("an http:// vaultUrl must be rejected by the CRD schema");
    assert!(err.contains("vaultUrl"), "unexpected error: {err}");
}

#[test]
fn eso_before_example_is_valid_yaml_of_eso_kinds() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("examples/migration/eso-before.yaml"))
        .unwrap();
    let kinds: Vec<String> = documents(&text)
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    for kind in ["SecretStore", "ExternalSecret", "Deployment"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in {kinds:?}");
    }
}
