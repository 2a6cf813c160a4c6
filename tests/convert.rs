//! `kvsync convert` on a corpus of ESO manifests (tests/convert/corpus):
//! each output matches its golden file (tests/convert/golden; regenerate
//! with KVSYNC_BLESS=1), is accepted by the API server (server-side dry
//! run), and the command's exit code says whether the conversion was
//! complete. One converted ExternalSecret is synced for real and its Secret
//! compared key by key with what ESO writes for the same vault content.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kube::api::{Api, Patch, PatchParams};
use kvsync::api::KeyVaultSecret;
use serde_json::json;
use support::*;

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/convert/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn golden(file: &Path, extension: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/convert/golden")
        .join(file.file_stem().unwrap())
        .with_extension(extension)
}

/// `kvsync convert <file>`: (stdout, stderr, exit code).
fn run_convert(args: &[&str], stdin: Option<&str>) -> (String, String, i32) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kvsync"));
    command
        .arg("convert")
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.code().unwrap(),
    )
}

#[test]
fn corpus_converts_to_the_golden_outputs_and_reports_every_unmapped_field() {
    let bless = std::env::var_os("KVSYNC_BLESS").is_some();
    let mut total_findings = 0;
    for file in corpus() {
        let docs =
            kvsync::convert::parse_documents(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let conversion = kvsync::convert::convert(&docs);
        let yaml = kvsync::convert::to_yaml(&conversion.resources);
        let findings: String = conversion
            .findings
            .iter()
            .map(|f| format!("{f}\n"))
            .collect();
        total_findings += conversion.findings.len();
        for (extension, actual) in [("yaml", &yaml), ("findings", &findings)] {
            let path = golden(&file, extension);
            if bless {
                std::fs::write(&path, actual).unwrap();
            }
            let expected = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(
                actual,
                &expected,
                "{} differs from {}",
                file.display(),
                path.display()
            );
        }
    }
    assert!(
        total_findings >= 15,
        "the unsupported corpus reports each of its fields"
    );
}

#[test]
fn the_templated_migration_example_is_the_converters_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/migration");
    let read = |name: &str| {
        kvsync::convert::parse_documents(&std::fs::read_to_string(root.join(name)).unwrap())
            .unwrap()
    };
    let conversion = kvsync::convert::convert(&read("eso-templated.yaml"));
    assert!(conversion.is_complete(), "{:?}", conversion.findings);
    let converted: Vec<serde_json::Value> = conversion
        .resources
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
    assert_eq!(converted, read("kvsync-templated.yaml"));
}

#[tokio::test]
async fn converted_manifests_pass_a_server_dry_run_and_the_exit_code_tells_complete() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "convert-dry-run").await;
    let api: Api<KeyVaultSecret> = Api::namespaced(client.clone(), &ns.name);
    let mut applied = 0;
    for file in corpus() {
        let (stdout, stderr, code) = run_convert(&[file.to_str().unwrap()], None);
        let findings = std::fs::read_to_string(golden(&file, "findings")).unwrap();
        let expected_code = if findings.is_empty() { 0 } else { 2 };
        assert_eq!(code, expected_code, "{}: {stderr}", file.display());
        for line in findings.lines() {
            assert!(
                stderr.contains(line),
                "{}: {line} not on stderr:\n{stderr}",
                file.display()
            );
        }
        for doc in kvsync::convert::parse_documents(&stdout).unwrap() {
            let mut resource: KeyVaultSecret = serde_json::from_value(doc).unwrap();
            resource.metadata.namespace = Some(ns.name.clone());
            let name = resource.metadata.name.clone().unwrap();
            let params = PatchParams::apply("convert-test").dry_run();
            let answer = api.patch(&name, &params, &Patch::Apply(&resource)).await;
            let accepted = answer.unwrap_or_else(|e| panic!("{}: {name}: {e}", file.display()));
            assert_eq!(accepted.spec, resource.spec, "nothing pruned from {name}");
            applied += 1;
        }
    }
    assert_eq!(
        applied, 6,
        "every converted KeyVaultSecret of the corpus was applied"
    );

    // stdin works too, and a file that is not YAML fails (exit 1).
    let one = std::fs::read_to_string(&corpus()[0]).unwrap();
    assert_eq!(
        run_convert(&[], Some(&one)).2,
        run_convert(&[corpus()[0].to_str().unwrap()], None).2
    );
    assert_eq!(run_convert(&["-"], Some("a: [")).2, 1);
}

#[tokio::test]
async fn a_converted_external_secret_syncs_what_eso_would_write() {
    let f = Fixture::new("convert-sync").await;
    f.emulator
        .control(
            reqwest::Method::PUT,
            "vaults/shop/secrets/app-config",
            Some(json!({"value": r#"{"user":"app","port":5432,"db host":"db.local"}"#})),
        )
        .await;
    let manifests = format!(
        r#"
apiVersion: external-secrets.io/v1
kind: SecretStore
metadata: {{name: shop-kv, namespace: {ns}}}
spec:
  provider:
    azurekv:
      authType: WorkloadIdentity
      vaultUrl: {vault}
      serviceAccountRef: {{name: shop-api}}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {{name: app, namespace: {ns}}}
spec:
  refreshInterval: 1h
  secretStoreRef: {{name: shop-kv}}
  target:
    template:
      mergePolicy: Merge
      data:
        dsn: "postgres://{{{{ .user }}}}:{{{{ .password }}}}@{{{{ index . \"db_U0020_host\" }}}}/{{{{ .nested | upper }}}}"
  data:
    - secretKey: password
      remoteRef: {{key: secret/db-password}}
    - secretKey: nested
      remoteRef: {{key: json-blob, property: db.password}}
    - secretKey: decoded
      remoteRef: {{key: b64-value, decodingStrategy: Base64}}
  dataFrom:
    - extract: {{key: app-config, conversionStrategy: Unicode}}
    - find: {{name: {{regexp: "^app-"}}, tags: {{env: prod}}}}
      rewrite:
        - regexp: {{source: "^app-(.*)$", target: "FOUND_$1"}}
"#,
        ns = f.ns.name,
        vault = f.emulator.vault_url("shop"),
    );
    let (stdout, stderr, code) = run_convert(&["-"], Some(&manifests));
    assert_eq!(code, 0, "{stderr}");
    let resource: KeyVaultSecret =
        serde_json::from_value(kvsync::convert::parse_documents(&stdout).unwrap().remove(0))
            .unwrap();
    f.kvs_api()
        .patch(
            "app",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&resource),
        )
        .await
        .unwrap();
    f.wait_reason("app", "Synced").await;

    // What ESO writes for this vault content: fetched keys (data, extract with
    // Unicode-converted keys, find rewritten), then the template merged over them.
    let eso: BTreeMap<String, String> = [
        ("password", "s3cr3t-db-value"),
        ("nested", "nested-pw"),
        ("decoded", "hello-world"),
        ("user", "app"),
        ("port", "5432"),
        ("db_U0020_host", "db.local"),
        ("FOUND_alpha", "alpha-val"),
        ("dsn", "postgres://app:s3cr3t-db-value@db.local/NESTED-PW"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(f.secret_data("app").await.unwrap(), eso);
}

/// ESO's three kinds as minimal CRDs (ESO itself is not installed here):
/// enough for `--from-cluster` to list real objects.
async fn install_eso_kinds(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (kind, plural, scope) in [
        ("ExternalSecret", "externalsecrets", "Namespaced"),
        ("SecretStore", "secretstores", "Namespaced"),
        ("ClusterSecretStore", "clustersecretstores", "Cluster"),
    ] {
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.external-secrets.io")},
            "spec": {
                "group": "external-secrets.io",
                "scope": scope,
                "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
                "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": true
                }}}]
            }
        });
        let name = crd["metadata"]["name"].as_str().unwrap().to_owned();
        api.patch(
            &name,
            &PatchParams::apply("convert-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
        eventually(&format!("{name} established"), WAIT, || async {
            let crd = api.get(&name).await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn from_cluster_reads_the_same_objects_as_the_files() {
    let client = client().await;
    install_eso_kinds(&client).await;
    let ns = TestNamespace::new(&client, "convert-cluster").await;
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/convert/corpus/templates.yaml");
    let mut docs =
        kvsync::convert::parse_documents(&std::fs::read_to_string(file).unwrap()).unwrap();
    for doc in &mut docs {
        doc["metadata"]["namespace"] = json!(ns.name);
    }
    for doc in &docs {
        eventually("the ESO object to be accepted", WAIT, || async {
            apply_manifest(&client, doc.clone(), &ns.name, true, false)
                .await
                .ok()
        })
        .await;
    }
    let (stdout, stderr, code) = run_convert(&["--from-cluster", "-n", &ns.name], None);
    assert_eq!(code, 0, "{stderr}");
    let expected = kvsync::convert::convert(&docs);
    assert!(expected.is_complete(), "{:?}", expected.findings);
    assert_eq!(stdout, kvsync::convert::to_yaml(&expected.resources));
    assert!(
        stdout.contains("app.properties: |\n          db.user={{ user }}"),
        "the ConfigMap's template was read from the cluster"
    );
}
