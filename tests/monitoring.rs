//! What the chart ships for monitoring — the PrometheusRule's alerts and the
//! Grafana dashboard — checked with the real Prometheus tools (Debian's
//! `prometheus` package, installed by `scripts/test.sh`): `promtool check
//! rules` and `promtool test rules` (tests/alerts/kvsync.test.yaml) on the
//! rendered alerts, and a real Prometheus scraping a running operator.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The chart with alerts and dashboard on, or `None` without a Helm engine.
fn monitoring_manifests() -> Option<Vec<Value>> {
    let values = json!({"metrics": {
        "prometheusRule": {"enabled": true},
        "dashboard": {"enabled": true},
    }});
    match render_chart(&values, "kvsync", "kvsync-system", None) {
        Rendered::Manifests(text) => Some(documents(&text)),
        Rendered::Refused(message) => panic!("render failed: {message}"),
        Rendered::Unavailable => None,
    }
}

fn the<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<_> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

/// A Prometheus binary of Debian's `prometheus` package.
fn tool(name: &str) -> String {
    let path = format!("/usr/bin/{name}");
    assert!(
        Path::new(&path).exists(),
        "{path} missing: install Debian's `prometheus` package (scripts/test.sh does)"
    );
    path
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    text
}

/// The alerts as a Prometheus rule file (the PrometheusRule's spec).
fn write_rule_file(docs: &[Value], dir: &Path) -> Vec<Value> {
    let spec = &the(docs, "PrometheusRule")["spec"];
    std::fs::write(
        dir.join("rules.yaml"),
        serde_norway::to_string(spec).unwrap(),
    )
    .unwrap();
    spec["groups"][0]["rules"].as_array().unwrap().clone()
}

#[test]
fn alerts_pass_promtool_check_and_unit_tests() {
    let Some(docs) = monitoring_manifests() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rule_file(&docs, dir.path());
    let names: Vec<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    assert_eq!(
        names,
        [
            "KvsyncSyncFailing",
            "KvsyncSecretStale",
            "KvsyncKeyVaultThrottled",
            "KvsyncReloadErrors",
            "KvsyncRestartsHeldBack",
        ]
    );
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    for rule in &rules {
        let name = rule["alert"].as_str().unwrap();
        assert!(
            rule["annotations"]["runbook_url"]
                .as_str()
                .is_some_and(|url| url.ends_with("README.md#alerts")),
            "{name}: runbook_url"
        );
        assert!(
            readme.contains(&format!("| `{name}` |")),
            "{name} has no runbook line in the README's Alerts table"
        );
    }
    let promtool = tool("promtool");
    let checked = run(Command::new(&promtool)
        .args(["check", "rules", "rules.yaml"])
        .current_dir(dir.path()));
    assert!(checked.contains("SUCCESS: 5 rules found"), "{checked}");
    std::fs::copy(
        Path::new(ROOT).join("tests/alerts/kvsync.test.yaml"),
        dir.path().join("kvsync.test.yaml"),
    )
    .unwrap();
    run(Command::new(&promtool)
        .args(["test", "rules", "kvsync.test.yaml"])
        .current_dir(dir.path()));
}
