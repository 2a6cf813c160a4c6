//! What the chart ships for monitoring — the PrometheusRule's alerts and the
//! Grafana dashboard — checked with the real Prometheus tools (Debian's
//! `prometheus` package, installed by `scripts/test.sh`): `promtool check
//! rules` and `promtool test rules` (tests/alerts/kvsync.test.yaml) on the
//! rendered alerts, and a real Prometheus scraping a running operator.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::ResourceExt;
use kube::api::Api;
use kvsync::api::contract::DIGEST_ANNOTATION;
use reqwest::Method;
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
            "KvsyncSecretExpiring",
            "KvsyncRolloutHalted",
        ]
    );
    let runbooks = std::fs::read_to_string(Path::new(ROOT).join("docs/alerts.md")).unwrap();
    for rule in &rules {
        let name = rule["alert"].as_str().unwrap();
        // GitHub's anchor of the heading `## NAME` is its lowercase.
        let anchor = name.to_lowercase();
        assert_eq!(
            rule["annotations"]["runbook_url"].as_str(),
            Some(
                format!("https://github.com/kvsync/kvsync/blob/main/docs/alerts.md#{anchor}")
                    .as_str()
            ),
            "{name}: runbook_url, from the chart's home"
        );
        let entry = runbooks
            .split_once(&format!("\n## {name}\n"))
            .map(|(_, rest)| rest.split("\n#").next().unwrap_or_default())
            .unwrap_or_else(|| panic!("{name} has no entry (## {name}) in docs/alerts.md"));
        for part in ["**Means**", "**Check**", "**Do**"] {
            assert!(entry.contains(part), "{name}'s runbook lacks {part}");
        }
    }
    let promtool = tool("promtool");
    let checked = run(Command::new(&promtool)
        .args(["check", "rules", "rules.yaml"])
        .current_dir(dir.path()));
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    std::fs::copy(
        Path::new(ROOT).join("tests/alerts/kvsync.test.yaml"),
        dir.path().join("kvsync.test.yaml"),
    )
    .unwrap();
    run(Command::new(&promtool)
        .args(["test", "rules", "kvsync.test.yaml"])
        .current_dir(dir.path()));
}

#[test]
fn monitoring_is_off_by_default() {
    let Rendered::Manifests(text) = render_chart(&json!({}), "kvsync", "kvsync-system", None)
    else {
        return;
    };
    let docs = documents(&text);
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "PrometheusRule" || d["kind"] == "ConfigMap"),
        "no PrometheusRule and no dashboard unless asked for"
    );
}

/// The dashboard ConfigMap is valid for the API server (names, labels, size).
#[tokio::test]
async fn the_dashboard_configmap_is_accepted_by_the_api_server() {
    let Some(docs) = monitoring_manifests() else {
        return;
    };
    let dashboard = the(&docs, "ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let client = client().await;
    let ns = TestNamespace::new(&client, "dashboard").await;
    apply_manifest(&client, dashboard.clone(), &ns.name, false, true)
        .await
        .unwrap();
}

/// A Prometheus server (Debian's binary) scraping one target every second.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n- job_name: kvsync\n  static_configs: [{{targets: ['{target}']}}]\n"
            ),
        )
        .unwrap();
        // A free port (released just before Prometheus binds it).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// How many series an instant query returns now (`None`: not answered).
    async fn series(&self, query: &str) -> Option<usize> {
        let answer: Value = reqwest::Client::new()
            .post(format!("{}/api/v1/query", self.url))
            .form(&[("query", query)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        assert_ne!(answer["status"], "error", "{query}: {answer}");
        answer["data"]["result"].as_array().map(Vec::len)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every query of the dashboard (Grafana's `$__rate_interval` as 30s) and
/// every alert expression without its threshold (what it compares).
fn queries(docs: &[Value]) -> Vec<String> {
    let json = the(docs, "ConfigMap")["data"]["kvsync.json"]
        .as_str()
        .expect("the dashboard JSON");
    let dashboard: Value = serde_json::from_str(json).expect("valid dashboard JSON");
    let mut queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap())
        .map(|target| {
            target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "30s")
        })
        .collect();
    for rule in the(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
    {
        let expr = rule["expr"].as_str().unwrap();
        let (compared, _threshold) = expr.rsplit_once(" > ").expect("alert compares");
        queries.push(compared.to_owned());
    }
    queries
}

/// A real Prometheus scrapes the operator through a sync, a failure, Key
/// Vault throttling, a restart, a deferred restart and a reload error; then
/// every dashboard query and alert expression returns series — no panel or
/// alert refers to a metric or label that does not exist.
#[tokio::test]
async fn prometheus_finds_series_for_every_dashboard_query_and_alert() {
    let Some(docs) = monitoring_manifests() else {
        return;
    };
    let queries = queries(&docs);
    let f = Fixture::with_operator_args(
        "monitoring",
        &["--reload-debounce", "100ms", "--min-reload-interval", "10m"],
    )
    .await;
    let target = eventually("the metrics address in the log", WAIT, || async {
        metrics_url(&f.process().output())
    })
    .await;
    let prometheus = Prometheus::start(target.trim_start_matches("http://"));

    f.synced_db("1s").await;
    // A version expiring in 10 days: the expiry series and KvsyncSecretExpiring.
    f.emulator
        .control(
            Method::PATCH,
            "vaults/shop/secrets/app-alpha",
            Some(json!({"exp": k8s_openapi::jiff::Timestamp::now().as_second() + 10 * 86_400})),
        )
        .await;
    f.apply(
        "expiring",
        json!({"refreshInterval": "1h",
               "data": [{"secretKey": "alpha", "remoteRef": {"name": "app-alpha"}}]}),
    )
    .await;
    f.apply(
        "missing",
        json!({"refreshInterval": "1s",
               "data": [{"secretKey": "x", "remoteRef": {"name": "no-such-secret"}}]}),
    )
    .await;
    Workload::deployment("web")
        .annotations(&[("reloader.stakater.com/auto", "true")])
        .env_from(&["db"])
        .create(&f.client, &f.ns.name)
        .await;
    Workload::deployment("broken")
        .annotations(&[("secret.reloader.stakater.com/reload", "bad-[")])
        .env_from(&["db"])
        .create(&f.client, &f.ns.name)
        .await;
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns.name);
    eventually("web baselined", WAIT, || async {
        let web = deployments.get("web").await.ok()?;
        web.annotations()
            .contains_key(DIGEST_ANNOTATION)
            .then_some(())
    })
    .await;
    // A restart, then a change within --min-reload-interval: deferred.
    f.emulator
        .set_secret("shop", "db-password", "rotated-2x9kq")
        .await;
    eventually("web restarted", WAIT, || async {
        (owned::<ReplicaSet>(&f.client, &f.ns.name, "web").await == 2).then_some(())
    })
    .await;
    f.emulator
        .set_secret("shop", "db-password", "rotated-3v7pw")
        .await;
    eventually("the second restart deferred", WAIT, || async {
        f.metrics()
            .await
            .contains("kvsync_reload_skipped_total{reason=\"rate_limited\"}")
            .then_some(())
    })
    .await;
    // Enough 429s that a sync reads one, whether it or the vault's listing
    // poller meets them first (the poller's failure answers syncs for a while).
    f.emulator
        .control(
            Method::POST,
            "faults",
            Some(json!({"target": "vault:shop", "count": 10, "kind": {"status": 429}})),
        )
        .await;

    eventually(
        "a series for every dashboard query and alert",
        Duration::from_secs(90),
        || async {
            let mut missing = Vec::new();
            for query in &queries {
                if prometheus.series(query).await.unwrap_or(0) == 0 {
                    missing.push(query.as_str());
                }
            }
            if !missing.is_empty() {
                eprintln!("without series yet: {missing:#?}");
            }
            missing.is_empty().then_some(())
        },
    )
    .await;
    // The object that never synced (refreshInterval 1s) is past two
    // intervals: what KvsyncSecretStale compares, for this namespace only.
    let stale = format!(
        "max by (namespace) (kvsync_sync_age_interval_ratio{{namespace=\"{}\"}}) > 2",
        f.ns.name
    );
    eventually("the namespace past two refresh intervals", WAIT, || async {
        (prometheus.series(&stale).await? == 1).then_some(())
    })
    .await;
    f.assert_nothing_leaked(&["rotated-2x9kq", "rotated-3v7pw"])
        .await;
}
