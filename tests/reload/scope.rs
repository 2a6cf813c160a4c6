//! Where the reload stage acts: label selectors, namespace selectors, kinds it may not list, its own namespace.

use super::*;

#[tokio::test]
async fn resource_label_selector_limits_which_resources_count() {
    let mut f = Fixture::idle("reload-selector").await;
    let labelled = [("reload", "yes")];
    f.secret("labelled", &[("k", "1")], &[], &labelled).await;
    f.secret("unlabelled", &[("k", "1")], &[], &[]).await;
    f.deployment("web", &[AUTO], &["labelled", "unlabelled"], &[])
        .await;
    f.start_operator(&["--resource-label-selector", "reload=yes"])
        .await;
    f.baselined::<Deployment>("web").await;

    f.secret("unlabelled", &[("k", "2")], &[], &[]).await;
    f.expect_replica_sets("web", 1).await;
    f.secret("labelled", &[("k", "2")], &[], &labelled).await;
    f.expect_replica_sets("web", 2).await;
}

#[tokio::test]
async fn a_missing_operator_namespace_stops_the_operator_with_a_clear_error() {
    let f = Fixture::idle("reload-no-op-ns").await;
    let missing = format!("{}-missing", f.ns.name);
    let args: Vec<String> = [
        "run",
        "--namespaces",
        &f.ns.name,
        "--operator-namespace",
        &missing,
        "--metrics-addr",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let operator = Process::start(&args);
    let output = eventually(
        "the operator to report the missing namespace",
        WAIT,
        || async {
            let output = operator.output();
            output.contains("does not exist").then_some(output)
        },
    )
    .await;
    assert!(output.contains(&missing), "{output}");
    let status = operator.terminate();
    assert!(!status.success(), "exits with failure: {status:?}");
}

#[tokio::test]
async fn namespace_selector_gates_workloads_until_the_namespace_matches() {
    let mut f = Fixture::idle("reload-nssel").await;
    let label = format!("kvsync-reload-{}", f.ns.name);
    f.secret("db", &[("k", "1")], &[], &[]).await;
    f.deployment("web", &[AUTO], &["db"], &[]).await;
    let invalid = ("secret.reloader.stakater.com/reload", "bad-[");
    f.deployment("broken", &[invalid], &[], &[]).await;
    // Cluster-wide watches, acting only in namespaces carrying the label (the
    // operator's own namespace, another one, is out of scope unless named).
    let home = TestNamespace::new(&f.client, "reload-nssel-op").await;
    let args: Vec<String> = [
        "run",
        "--namespace-selector",
        &format!("{label}=yes"),
        "--operator-namespace",
        &home.name,
        "--metrics-addr",
        "127.0.0.1:0",
        "--reload-debounce",
        "300ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let operator = Process::start(&args);
    // The window below means something only once the operator is looking.
    reload_listed(&operator).await;
    f.operator = Some(operator);

    f.secret("db", &[("k", "2")], &[], &[]).await;
    always(
        "nothing happens outside the selected namespaces",
        QUIET,
        || async {
            f.replica_sets("web").await == 1
                && !f
                    .annotations::<Deployment>("web")
                    .await
                    .contains_key(DIGEST_ANNOTATION)
                && f.event_notes("broken", "InvalidReloadAnnotation")
                    .await
                    .is_empty()
        },
    )
    .await;

    // Coming into scope is a first sight: baselined, not restarted.
    let labels = json!({"metadata": {"labels": {label: "yes"}}});
    Api::<k8s_openapi::api::core::v1::Namespace>::all(f.client.clone())
        .patch(&f.ns.name, &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .unwrap();
    f.baselined::<Deployment>("web").await;
    f.expect_replica_sets("web", 1).await;
    // Its problems are reported once it is in scope, not before.
    eventually("the Warning about the broken annotation", WAIT, || async {
        (f.event_notes("broken", "InvalidReloadAnnotation")
            .await
            .len()
            == 1)
            .then_some(())
    })
    .await;
    f.secret("db", &[("k", "3")], &[], &[]).await;
    f.expect_replica_sets("web", 2).await;
}

#[tokio::test]
async fn a_kind_the_operator_may_not_list_is_reported_not_waited_for() {
    let mut f = Fixture::idle("reload-forbidden").await;
    let ns = f.ns.name.clone();
    // Everything the operator needs in its namespace, but no CronJobs (an
    // older chart) and no Rollouts.
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "limited"}})).unwrap();
    f.api::<k8s_openapi::api::core::v1::ServiceAccount>()
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let all = |groups: &[&str], resources: &[&str]| json!({"apiGroups": groups, "resources": resources, "verbs": ["*"]});
    for doc in [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "limited"},
               "rules": [all(&["", "apps", "events.k8s.io", "coordination.k8s.io", "kvsync.io"],
                             &["secrets", "configmaps", "serviceaccounts", "events", "namespaces", "deployments",
                               "statefulsets", "daemonsets", "leases", "keyvaultsecrets", "keyvaultsecrets/status"])]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "limited"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "limited"},
               "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": ns}]}),
    ] {
        apply_manifest(&f.client, doc, &ns, false, false)
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = token_kubeconfig(&f.client, &ns, "limited", dir.path()).await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    f.deployment("web", &[AUTO], &["db"], &[]).await;

    let args: Vec<String> = [
        "run",
        "--namespaces",
        &ns,
        "--operator-namespace",
        &ns,
        "--metrics-addr",
        "127.0.0.1:0",
        "--reload-debounce",
        "300ms",
        "--min-reload-interval",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // As in a pod: the forbidden watch is reported on the operator's pod.
    let pod = [
        ("POD_NAME".to_owned(), "kvsync-0".to_owned()),
        ("POD_NAMESPACE".to_owned(), ns.clone()),
    ];
    let operator = Process::start_as(&args, &kubeconfig, &pod);
    reload_listed(&operator).await;
    f.operator = Some(operator);
    f.baselined::<Deployment>("web").await;
    f.secret("db", &[("k", "2")], &[], &[]).await;
    f.expect_replica_sets("web", 2).await;

    assert!(reload_errors(&f, "watch_forbidden").await >= 1);
    let metrics = f.metrics().await;
    assert!(
        metrics.contains("kvsync_reload_watches_unlisted 0"),
        "{metrics}"
    );
    let base = metrics_url(&f.process().output()).unwrap();
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert!(ready.status().is_success(), "{}", ready.status());
    eventually(
        "a WatchForbidden event on the operator's pod",
        WAIT,
        || async {
            let notes = f.event_notes("kvsync-0", "WatchForbidden").await;
            notes.iter().any(|n| n.contains("CronJob")).then_some(())
        },
    )
    .await;
}
