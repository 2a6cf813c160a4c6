//! `kvsync explain` against the real control plane, its output compared with
//! golden files (tests/golden/explain/; `KVSYNC_UPDATE_GOLDEN=1` rewrites
//! them): a KeyVaultSecret (plain and templated), a Deployment that restarted
//! and one that did not, a restart held by the minimum interval, an Argo
//! Rollout in its pause period and a CronJob's last Job — as text and JSON, as
//! a user holding only read permissions, and through kubectl's plugin
//! mechanism (`kubectl kvsync …` runs `kubectl-kvsync`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kvsync::api::contract::{DIGEST_ANNOTATION, PAUSED_AT_ANNOTATION};
use serde_json::{Value, json};
use support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const ROTATED: &str = "rotated-explain-7f3k";
const ROTATED_AGAIN: &str = "rotated-again-explain-9q2m";

/// `kvsync explain ARGS…` with `kubeconfig`: its standard output.
fn explain(kubeconfig: &Path, namespace: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kvsync"))
        .arg("explain")
        .args(args)
        .args(["-n", namespace, "--operator-namespace", namespace])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("run kvsync explain");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "explain {args:?} failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// What differs between runs replaced by placeholders: the namespace, the
/// vault URL, times, vault versions and the hash in a Job's name.
fn normalize(text: &str, namespace: &str, vault_url: &str) -> String {
    let text = text
        .replace(namespace, "NAMESPACE")
        .replace(vault_url, "VAULT_URL");
    let times = regex::Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").unwrap();
    let versions = regex::Regex::new(r"\b[0-9a-f]{32}\b").unwrap();
    let job = regex::Regex::new(r"\bnightly-[0-9a-f]{10}\b").unwrap();
    let text = times.replace_all(&text, "TIME");
    let text = versions.replace_all(&text, "VERSION");
    job.replace_all(&text, "nightly-HASH").into_owned()
}

/// The output without its rollout section (`kvs/NAME`), which follows the
/// workloads' restarts as they happen: never golden (its rendering is
/// unit-tested in `src/explain/render.rs`, its content in tests/reload/waves.rs).
fn without_rollout(out: &str) -> String {
    // JSON: the top-level `"rollout": {…}` member, closed at its indentation.
    if let Some(start) = out.find(",\n  \"rollout\": {")
        && let Some(end) = out[start..].find("\n  }")
    {
        return format!("{}{}", &out[..start], &out[start + end + 4..]);
    }
    match out.split_once("\nRollout of the current data:\n") {
        Some((before, after)) => {
            let rest = after
                .split_once("\n\n")
                .map_or(String::new(), |(_, rest)| format!("\n{rest}"));
            format!("{before}{rest}")
        }
        None => out.to_owned(),
    }
}

/// Compares with (or, with `KVSYNC_UPDATE_GOLDEN=1`, writes) a golden file.
fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(ROOT).join("tests/golden/explain").join(name);
    if std::env::var_os("KVSYNC_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} missing: run with KVSYNC_UPDATE_GOLDEN=1",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{name} differs from its golden file (KVSYNC_UPDATE_GOLDEN=1 rewrites it):\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}

/// What explain reads: enough to `kubectl get` each object it shows.
fn read_everything() -> Value {
    json!([
        {"apiGroups": ["kvsync.io"], "resources": ["keyvaultsecrets"], "verbs": ["get", "list"]},
        {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets"], "verbs": ["get", "list"]},
        {"apiGroups": ["batch"], "resources": ["cronjobs", "jobs"], "verbs": ["get", "list"]},
        {"apiGroups": ["argoproj.io"], "resources": ["rollouts"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["secrets", "configmaps", "events"], "verbs": ["get", "list"]}
    ])
}

/// ServiceAccount `name` allowed only `rules` in the test namespace; returns
/// a kubeconfig acting as it.
async fn reader_kubeconfig(f: &Fixture, name: &str, rules: Value, dir: &Path) -> PathBuf {
    let ns = &f.ns.name;
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<ServiceAccount>::namespaced(f.client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let role: Role =
        serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules})).unwrap();
    Api::<Role>::namespaced(f.client.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(f.client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    token_kubeconfig(&f.client, ns, name, &dir).await
}

/// The API of `kind` as the server serves it (the first of `versions`) in
/// the test namespace, and its apiVersion.
async fn served(f: &Fixture, versions: &[&str], kind: &str) -> (Api<DynamicObject>, String) {
    for api_version in versions {
        let (group, version) = api_version.split_once('/').unwrap();
        let gvk = GroupVersionKind::gvk(group, version, kind);
        if let Ok((resource, _)) = kube::discovery::pinned_kind(&f.client, &gvk).await {
            let api = Api::namespaced_with(f.client.clone(), &f.ns.name, &resource);
            return (api, api_version.to_string());
        }
    }
    panic!("{kind} is not served as any of {versions:?}");
}

/// Creates `body` through `api`; waits until kvsync has recorded it.
async fn create_recorded(api: &Api<DynamicObject>, body: Value) {
    let object: DynamicObject = serde_json::from_value(body).unwrap();
    let name = object.name_any();
    api.create(&PostParams::default(), &object).await.unwrap();
    eventually(&format!("{name} baselined"), WAIT, || async {
        let object = api.get(&name).await.ok()?;
        object
            .annotations()
            .contains_key(DIGEST_ANNOTATION)
            .then_some(())
    })
    .await;
}

/// Pod spec using Secret `db`.
fn pod_using_db() -> Value {
    json!({
        "metadata": {"labels": {"app": "x"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": "example.invalid/app", "envFrom": [{"secretRef": {"name": "db"}}]}]}
    })
}

#[tokio::test]
async fn explain_a_secret_a_restarted_and_an_unrestarted_workload() {
    let f = Fixture::with_operator_args(
        "explain",
        &["--reload-debounce", "100ms", "--min-reload-interval", "10m"],
    )
    .await;
    let ns = f.ns.name.clone();
    let vault_url = f.emulator.vault_url("shop");
    f.apply(
        "db",
        json!({"refreshInterval": "1h",
               "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}],
               "dataFrom": [{"extract": {"name": "app-config"}}]}),
    )
    .await;
    f.wait_reason("db", "Synced").await;
    let templates: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "dsn-templates"},
        "data": {"pgpass": "db:{{ port }}:shop:{{ user }}:{{ pw }}"}
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(f.client.clone(), &ns)
        .create(&PostParams::default(), &templates)
        .await
        .unwrap();
    f.apply(
        "dsn",
        json!({"refreshInterval": "1h",
               "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}],
               "dataFrom": [{"extract": {"name": "app-config"}}],
               "target": {"template": {
                   "data": {"dsn": "postgresql://{{ user }}:{{ pw }}@db:{{ port }}/shop"},
                   "templateFrom": [{"configMap": {"name": "dsn-templates", "items": [{"key": "pgpass"}]}}]}}}),
    )
    .await;
    f.wait_reason("dsn", "Synced").await;
    let config_map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "settings"}, "data": {"mode": "fast"}}))
            .unwrap();
    Api::<ConfigMap>::namespaced(f.client.clone(), &ns)
        .create(&PostParams::default(), &config_map)
        .await
        .unwrap();
    Workload::deployment("web")
        .annotations(&[("reloader.stakater.com/auto", "true")])
        .env_from(&["db"])
        .create(&f.client, &ns)
        .await;
    Workload::deployment("batch")
        .annotations(&[
            ("secret.reloader.stakater.com/auto", "true"),
            ("secrets.exclude.reloader.stakater.com/reload", "db"),
        ])
        .env_from(&["db"])
        .env_from_config_maps(&["settings"])
        .create(&f.client, &ns)
        .await;
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &ns);
    // Where the chart puts the operator's settings (the operator itself runs
    // as a process here): explain reads --min-reload-interval from it.
    let operator: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "kvsync", "labels": {"app.kubernetes.io/name": "kvsync"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "kvsync"}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "kvsync"}},
                "spec": {"containers": [{"name": "kvsync", "image": "example.invalid/kvsync",
                                         "args": ["run", "--min-reload-interval=10m"]}]}
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &operator)
        .await
        .unwrap();
    for name in ["web", "batch"] {
        eventually(&format!("{name} baselined"), WAIT, || async {
            let d = deployments.get(name).await.ok()?;
            d.annotations()
                .contains_key(DIGEST_ANNOTATION)
                .then_some(())
        })
        .await;
    }
    // An Argo Rollout with a pause period, and a CronJob.
    let crd = documents(include_str!("manifests/argo-rollouts-crd.yaml")).remove(0);
    apply_manifest(&f.client, crd, &ns, true, false)
        .await
        .unwrap();
    let rollouts = eventually("the Rollout API served", WAIT, || async {
        let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout");
        kube::discovery::pinned_kind(&f.client, &gvk)
            .await
            .ok()
            .map(|(resource, _)| Api::namespaced_with(f.client.clone(), &ns, &resource))
    })
    .await;
    create_recorded(
        &rollouts,
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
               "metadata": {"name": "canary", "annotations": {
                   "reloader.stakater.com/auto": "true", "rollout.kvsync.io/pause-period": "1h"}},
               "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": pod_using_db()}}),
    )
    .await;
    // batch/v1 from Kubernetes 1.21, batch/v1beta1 before.
    let (cron_jobs, api_version) = served(&f, &["batch/v1", "batch/v1beta1"], "CronJob").await;
    create_recorded(
        &cron_jobs,
        json!({"apiVersion": api_version, "kind": "CronJob",
               "metadata": {"name": "nightly", "annotations": {"reloader.stakater.com/auto": "true"}},
               "spec": {"schedule": "0 0 1 1 *", "jobTemplate": {"spec": {"template": pod_using_db()}}}}),
    )
    .await;

    f.emulator.set_secret("shop", "db-password", ROTATED).await;
    f.force_sync("db", "rotate").await;
    eventually("web restarted", WAIT, || async {
        (owned::<ReplicaSet>(&f.client, &ns, "web").await == 2).then_some(())
    })
    .await;
    // The restart's event, which explain quotes as its cause.
    eventually("the Reloaded event", WAIT, || async {
        let out = explain(kubeconfig_path(), &ns, &["deployment/web"]);
        out.contains("cause:").then_some(())
    })
    .await;
    assert_eq!(owned::<ReplicaSet>(&f.client, &ns, "batch").await, 1);
    eventually("the Rollout's pause period started", WAIT, || async {
        let canary = rollouts.get("canary").await.ok()?;
        canary
            .annotations()
            .contains_key(PAUSED_AT_ANNOTATION)
            .then_some(())
    })
    .await;
    eventually("the CronJob's Job and its Reloaded event", WAIT, || async {
        let out = explain(kubeconfig_path(), &ns, &["cronjob/nightly"]);
        (out.contains("cause:") && out.contains("job:")).then_some(())
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let reader = reader_kubeconfig(&f, "reader", read_everything(), dir.path()).await;
    // The operator runs with a 10m minimum interval; batch's explanations
    // are asked without it (read from the operator's Deployment).
    let ten = ["--min-reload-interval", "10m"];
    let cases = [
        ("kvs.txt", vec!["kvs/db"]),
        ("kvs.json", vec!["keyvaultsecret/db", "-o", "json"]),
        ("kvs-template.txt", vec!["kvs/dsn"]),
        ("kvs-template.json", vec!["kvs/dsn", "-o", "json"]),
        ("web.txt", [&["deployment/web"][..], &ten].concat()),
        (
            "web.json",
            [&["deployment/web", "-o", "json"][..], &ten].concat(),
        ),
        ("batch.txt", vec!["deploy/batch"]),
        ("batch.json", vec!["deployment/batch", "-o", "json"]),
        ("canary.txt", [&["rollout/canary"][..], &ten].concat()),
        (
            "canary.json",
            [&["rollouts.argoproj.io/canary", "-o", "json"][..], &ten].concat(),
        ),
        ("nightly.txt", [&["cronjob/nightly"][..], &ten].concat()),
        (
            "nightly.json",
            [&["cj/nightly", "-o", "json"][..], &ten].concat(),
        ),
    ];
    let no_value = |file: &str, out: &str| {
        for value in [ROTATED, ROTATED_AGAIN, "s3cr3t-db-value", "5432/shop"] {
            assert!(!out.contains(value), "{file}: a value was printed");
        }
    };
    for (file, args) in &cases {
        let out = explain(&reader, &ns, args);
        no_value(file, &out);
        assert!(
            !out.contains("Not shown"),
            "{file}: the reader may read all it needs:\n{out}"
        );
        if file.ends_with(".json") {
            serde_json::from_str::<Value>(&out).expect("valid JSON");
        }
        golden(file, &normalize(&without_rollout(&out), &ns, &vault_url));
    }

    // kubectl's plugin mechanism: `kubectl kvsync` runs `kubectl-kvsync` from PATH.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kvsync"), bin.join("kubectl-kvsync")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("kubectl")
        .args([
            "kvsync",
            "explain",
            "deployment/web",
            "-n",
            &ns,
            "--min-reload-interval",
            "10m",
            "--operator-namespace",
            &ns,
        ])
        .env("PATH", path)
        .env("KUBECONFIG", &reader)
        .output()
        .expect("kubectl (Debian's kubernetes-client; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    golden(
        "web.txt",
        &normalize(&String::from_utf8(out.stdout).unwrap(), &ns, &vault_url),
    );
    // The Job explain names is the one kvsync made.
    let jobs = Api::<Job>::namespaced(f.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let job = jobs.items[0].name_any();
    assert_eq!(jobs.items.len(), 1);
    assert!(explain(&reader, &ns, &["cronjob/nightly"]).contains(&format!("job:          {job}")));

    // A second change within the minimum interval: pending, until when.
    f.emulator
        .set_secret("shop", "db-password", ROTATED_AGAIN)
        .await;
    f.force_sync("db", "rotate-again").await;
    eventually("the Secret rewritten", WAIT, || async {
        let data = f.secret_data("db").await?;
        (data.get("pw").map(String::as_str) == Some(ROTATED_AGAIN)).then_some(())
    })
    .await;
    for (file, args) in [
        ("web-pending.txt", [&["deployment/web"][..], &ten].concat()),
        (
            "web-pending.json",
            [&["deployment/web", "-o", "json"][..], &ten].concat(),
        ),
    ] {
        let out = explain(&reader, &ns, &args);
        no_value(file, &out);
        golden(file, &normalize(&out, &ns, &vault_url));
    }

    let absent = Command::new(env!("CARGO_BIN_EXE_kvsync"))
        .args(["explain", "kvs/absent", "-n", &ns])
        .env("KUBECONFIG", &reader)
        .output()
        .unwrap();
    assert!(!absent.status.success());
    assert_eq!(
        String::from_utf8_lossy(&absent.stderr),
        format!("error: KeyVaultSecret {ns}/absent not found\n")
    );

    // Allowed to read the workload only, explain still answers, and says
    // what it could not see.
    let partial = reader_kubeconfig(
        &f,
        "workloads-only",
        json!([{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]},
               {"apiGroups": ["argoproj.io"], "resources": ["rollouts"], "verbs": ["get"]}]),
        dir.path(),
    )
    .await;
    let out = explain(&partial, &ns, &["deployment/web"]);
    for unseen in ["Secrets: ", "ConfigMaps: ", "Events: "] {
        assert!(out.contains(unseen), "{unseen} listed as not shown:\n{out}");
    }
    assert!(
        out.contains("Secret/db: used, and reloader.stakater.com/auto"),
        "{out}"
    );
    // The digests cannot be compared without the key, but the operator's
    // mark says the restart it holds back.
    assert!(
        out.contains("pending:      restart pending: Secret/db changed since the last restart; the operator holds it back until "),
        "{out}"
    );
    assert!(out.contains("(the reload digest key): "), "{out}");
    assert!(
        out.contains("min interval: 30s (assumed: the operator's default"),
        "may not list the operator's Deployment:\n{out}"
    );
    // Without the key, the pause mark still says a restart is pending.
    let out = explain(&partial, &ns, &["rollout/canary"]);
    let pending = regex::Regex::new(
        r"pending: +restart pending: a change was seen at \S+: the restart follows when the pause period \(1h\) ends at \S+\n",
    )
    .unwrap();
    assert!(pending.is_match(&out), "{out}");
}

/// The `kubectl kvsync explain` sessions of docs/operating.md are the golden outputs
/// (with the namespace `shop`, example times and versions): every part of
/// a session (parts cut at a `…` line) is found in a golden file of its target.
#[test]
fn documented_sessions_are_golden_outputs() {
    let readme = std::fs::read_to_string(PathBuf::from(ROOT).join("docs/operating.md")).unwrap();
    let goldens = |target: &str| -> Vec<&str> {
        match target {
            "deployment/web" => vec!["web.txt", "web-pending.txt"],
            "deployment/batch" => vec!["batch.txt"],
            "rollout/canary" => vec!["canary.txt"],
            "cronjob/nightly" => vec!["nightly.txt"],
            "kvs/db" => vec!["kvs.txt"],
            "kvs/dsn" => vec!["kvs-template.txt"],
            other => panic!("docs/operating.md explains {other}: give it a golden file"),
        }
    };
    let blocks = regex::Regex::new(r"(?s)```\n\$ kubectl kvsync explain (.*?)```").unwrap();
    let mut sessions = 0;
    for block in blocks.captures_iter(&readme) {
        let command = block.get(1).unwrap().as_str();
        sessions += 1;
        let (command, output) = command.split_once('\n').unwrap();
        let target = command.split(' ').next().unwrap();
        let output = output
            .replace("https://shop-kv.vault.azure.net/", "VAULT_URL")
            .replace("Deployment kvsync-system/", "Deployment shop/");
        let output = normalize(&output, "shop", "VAULT_URL");
        let files: Vec<String> = goldens(target)
            .iter()
            .map(|file| {
                std::fs::read_to_string(PathBuf::from(ROOT).join("tests/golden/explain").join(file))
                    .unwrap()
            })
            .collect();
        for part in output.split("…\n").filter(|p| !p.is_empty()) {
            assert!(
                files.iter().any(|golden| golden.contains(part)),
                "docs/operating.md's `explain {command}` is not what explain prints (see {:?}):\n{part}",
                goldens(target)
            );
        }
    }
    assert_eq!(sessions, 7, "the explain sessions of docs/operating.md");
}
