//! No restart lost or doubled (issue 26): what covers a data change, a
//! CronJob whose record is refused, OnDelete workloads, Rollouts with a
//! `workloadRef`, resources becoming visible, the queue metric, and the
//! default debounce against an Argo CD sync wave.

use kvsync::api::contract::JOB_PENDING_ANNOTATION;

use super::*;

/// `kubectl rollout undo` of Deployment `name`: its template back to the
/// one before [`change_template`] (whose ReplicaSet kube-controller-manager
/// scales up again, keeping its pods).
async fn undo_template(f: &Fixture, name: &str) {
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {"app-version": null}}}}});
    f.api::<Deployment>()
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

/// `kvsync_reload_skipped_total{reason}` (0 before the first).
async fn skipped(f: &Fixture, reason: &str) -> u64 {
    let line = format!("kvsync_reload_skipped_total{{reason=\"{reason}\"}} ");
    f.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_default()
}

/// Data changed, then the template changed and was rolled back (`kubectl
/// rollout undo`) within the debounce: the template is the one whose pods
/// ran with the old data, so the data change still owes a restart.
#[tokio::test]
async fn a_rolled_back_template_change_covers_no_data_change() {
    let mut f = Fixture::idle("reload-undo").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    f.deployment("web", &[AUTO], &["db"], &[]).await;
    const DEBOUNCE: Duration = Duration::from_secs(3);
    f.start_operator(&["--reload-debounce", "3s"]).await;
    f.baselined::<Deployment>("web").await;

    let writes = std::time::Instant::now();
    f.secret("db", &[("k", "2")], &[], &[]).await;
    change_template(&f, "web", "2").await;
    undo_template(&f, "web").await;
    assert!(
        writes.elapsed() < DEBOUNCE,
        "the three writes took {:?}, longer than the debounce: the machine is too slow for this test",
        writes.elapsed()
    );
    // The first ReplicaSet, the edit's, and kvsync's restart.
    f.expect_replica_sets("web", 3).await;
    assert_eq!(f.event_notes("web", "Reloaded").await.len(), 1);
}

/// A template change after the data change restarts nothing with the new
/// data where kvsync's restart is not a template change: an Argo Rollout
/// restarted through `spec.restartAt`, and a CronJob (a `jobTemplate`
/// change runs no Job). Both still get their restart.
#[tokio::test]
async fn restart_at_rollouts_and_cron_jobs_restart_after_a_template_change_too() {
    let mut f = Fixture::idle("reload-uncovered").await;
    let rollouts = rollout_api(&f).await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    let strategy = ("reloader.stakater.com/rollout-strategy", "restart");
    create(
        &rollouts,
        json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "canary", "annotations": pairs(&[AUTO, strategy])},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": pod_using_db()}
        }),
    )
    .await;
    let (cron_jobs, api_version) = served_api(&f, &["batch/v1", "batch/v1beta1"], "CronJob").await;
    create(
        &cron_jobs,
        json!({
            "apiVersion": api_version, "kind": "CronJob",
            "metadata": {"name": "nightly", "annotations": pairs(&[AUTO])},
            "spec": {"schedule": "0 0 1 1 *", "jobTemplate": {"spec": {"template": pod_using_db()}}}
        }),
    )
    .await;
    const DEBOUNCE: Duration = Duration::from_secs(3);
    f.start_operator(&["--reload-debounce", "3s"]).await;
    for (api, name) in [(&rollouts, "canary"), (&cron_jobs, "nightly")] {
        eventually(&format!("the digest record on {name}"), WAIT, || async {
            api.get(name)
                .await
                .unwrap()
                .annotations()
                .contains_key(DIGEST_ANNOTATION)
                .then_some(())
        })
        .await;
    }

    let writes = std::time::Instant::now();
    f.secret("db", &[("k", "2")], &[], &[]).await;
    let edit = json!({"metadata": {"annotations": {"app-version": "2"}}});
    let patch = json!({"spec": {"template": edit}});
    rollouts
        .patch("canary", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let patch = json!({"spec": {"jobTemplate": {"spec": {"template": edit}}}});
    cron_jobs
        .patch("nightly", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    assert!(
        writes.elapsed() < DEBOUNCE,
        "the writes took {:?}, longer than the debounce: the machine is too slow for this test",
        writes.elapsed()
    );
    eventually("spec.restartAt set", WAIT, || async {
        let canary = rollouts.get("canary").await.unwrap();
        canary.data["spec"]["restartAt"].as_str().map(drop)
    })
    .await;
    eventually("a Job for the change", WAIT, || async {
        (jobs_of(&f, "nightly").await.len() == 1).then_some(())
    })
    .await;
    always("one Job, one restart", QUIET, || async {
        jobs_of(&f, "nightly").await.len() == 1
    })
    .await;
    assert_eq!(f.event_notes("canary", "Reloaded").await.len(), 1);
    assert_eq!(f.event_notes("nightly", "Reloaded").await.len(), 1);
}

/// A CronJob whose patch the API server refuses for good (here: its
/// annotations leave no room for kvsync's restart stamp) gets no Job at all
/// — not one Job per retry once the last was cleaned up — and its Job once
/// the refusal is lifted: one Job for the change, neither lost nor doubled.
#[tokio::test]
async fn a_cron_job_whose_record_is_refused_gets_no_job_until_it_can_be_written() {
    let mut f = Fixture::idle("reload-cron-refused").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    let (cron_jobs, api_version) = served_api(&f, &["batch/v1", "batch/v1beta1"], "CronJob").await;
    create(
        &cron_jobs,
        json!({
            "apiVersion": api_version, "kind": "CronJob",
            "metadata": {"name": "nightly", "annotations": pairs(&[AUTO])},
            "spec": {"schedule": "0 0 1 1 *", "jobTemplate": {"spec": {"template": pod_using_db()}}}
        }),
    )
    .await;
    f.start_operator(&[]).await;
    let recorded = eventually("the digest record", WAIT, || async {
        let annotations = cron_jobs
            .get("nightly")
            .await
            .unwrap()
            .annotations()
            .clone();
        annotations
            .contains_key(DIGEST_ANNOTATION)
            .then_some(annotations)
    })
    .await;
    // Fill the annotations to 40 bytes short of Kubernetes' 256 KiB: the
    // record fits (it is written), a restart's stamp and Job mark do not.
    let used: usize = recorded.iter().map(|(k, v)| k.len() + v.len()).sum();
    let filler = "x".repeat(262_144 - used - "filler".len() - 40);
    let patch = json!({"metadata": {"annotations": {"filler": filler}}});
    cron_jobs
        .patch("nightly", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();

    f.secret("db", &[("k", "2")], &[], &[]).await;
    eventually("the restart refused", WAIT, || async {
        (reload_errors(&f, "refused").await >= 1).then_some(())
    })
    .await;
    assert!(
        jobs_of(&f, "nightly").await.is_empty(),
        "no Job for a change that could not be recorded"
    );
    // The retry after the backoff (10 s) is refused too, and makes no Job.
    eventually("the retry refused", WAIT, || async {
        (reload_errors(&f, "refused").await >= 2).then_some(())
    })
    .await;
    assert!(jobs_of(&f, "nightly").await.is_empty());
    assert_eq!(f.event_notes("nightly", "ReloadRefused").await.len(), 1);

    // Room again: the next retry (20 s later) records the change and makes its Job.
    let patch = json!({"metadata": {"annotations": {"filler": null}}});
    cron_jobs
        .patch("nightly", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    eventually("the Job of the change", WAIT, || async {
        (jobs_of(&f, "nightly").await.len() == 1).then_some(())
    })
    .await;
    eventually("the Job mark cleared", WAIT, || async {
        let annotations = cron_jobs
            .get("nightly")
            .await
            .unwrap()
            .annotations()
            .clone();
        (!annotations.contains_key(JOB_PENDING_ANNOTATION)).then_some(())
    })
    .await;
    always("one Job for the one change", QUIET, || async {
        jobs_of(&f, "nightly").await.len() == 1
    })
    .await;
    assert_eq!(f.event_notes("nightly", "Reloaded").await.len(), 1);
}

/// StatefulSets and DaemonSets with `updateStrategy: OnDelete` replace no
/// pod for a template change: kvsync updates the template (a new revision,
/// taken by each pod when deleted) but neither counts nor announces a
/// restart — it says what happens.
#[tokio::test]
async fn on_delete_workloads_are_not_announced_as_restarted() {
    let mut f = Fixture::idle("reload-ondelete").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    f.workload::<StatefulSet>("store", &[AUTO], &[], &["db"], &[])
        .await;
    f.workload::<DaemonSet>("agent", &[AUTO], &[], &["db"], &[])
        .await;
    let on_delete =
        json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}});
    f.api::<StatefulSet>()
        .patch("store", &PatchParams::default(), &Patch::Merge(&on_delete))
        .await
        .unwrap();
    f.api::<DaemonSet>()
        .patch("agent", &PatchParams::default(), &Patch::Merge(&on_delete))
        .await
        .unwrap();
    f.start_operator(&[]).await;
    f.baselined::<StatefulSet>("store").await;
    f.baselined::<DaemonSet>("agent").await;

    f.secret("db", &[("k", "2")], &[], &[]).await;
    eventually("both pod templates updated", WAIT, || async {
        (f.revisions("store").await == 2 && f.revisions("agent").await == 2).then_some(())
    })
    .await;
    eventually("what happens, said", WAIT, || async {
        let store = f.event_notes("store", "ReloadAwaitingPodDeletion").await;
        let agent = f.event_notes("agent", "ReloadAwaitingPodDeletion").await;
        (store.len() == 1 && agent.len() == 1).then_some(store)
    })
    .await;
    let note = &f.event_notes("store", "ReloadAwaitingPodDeletion").await[0];
    assert!(
        note.contains("Secret/db") && note.contains("only when it is deleted"),
        "{note}"
    );
    assert!(f.event_notes("store", "Reloaded").await.is_empty());
    assert!(f.event_notes("agent", "Reloaded").await.is_empty());
    let metrics = f.metrics().await;
    assert!(
        !metrics.contains("kvsync_reload_rollouts_total{"),
        "no rollout counted:\n{metrics}"
    );
    assert_eq!(skipped(&f, "on_delete").await, 2);
}

/// A Rollout whose pods come from a Deployment (`spec.workloadRef`) has no
/// template of its own: kvsync restarts it through `spec.restartAt`, never
/// by writing a template into it (which Argo reports as Degraded).
#[tokio::test]
async fn workload_ref_rollouts_restart_through_restart_at() {
    let mut f = Fixture::idle("reload-workloadref").await;
    let rollouts = rollout_api(&f).await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    create(
        &rollouts,
        json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "referring", "annotations": pairs(&[("secret.reloader.stakater.com/reload", "db")])},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}
        }),
    )
    .await;
    f.start_operator(&[]).await;
    eventually("the digest record", WAIT, || async {
        rollouts
            .get("referring")
            .await
            .unwrap()
            .annotations()
            .contains_key(DIGEST_ANNOTATION)
            .then_some(())
    })
    .await;

    f.secret("db", &[("k", "2")], &[], &[]).await;
    let rollout = eventually("spec.restartAt set", WAIT, || async {
        let rollout = rollouts.get("referring").await.unwrap();
        rollout.data["spec"]["restartAt"]
            .is_string()
            .then_some(rollout)
    })
    .await;
    assert!(
        rollout.data["spec"].get("template").is_none(),
        "no template written into a workloadRef Rollout: {}",
        rollout.data["spec"]
    );
    assert_eq!(f.event_notes("referring", "Reloaded").await.len(), 1);
}

/// A Secret the pods use but the workload does not react to (no
/// `reloader.stakater.com/match` under `search`) changes: nothing restarts.
/// When it gains `match` together with new data, the pods (which have the
/// data of before) restart. Under `--resource-label-selector`, a used
/// Secret gaining the selector's label with new data restarts the pods too.
#[tokio::test]
async fn a_secret_becoming_visible_with_new_data_restarts() {
    let mut f = Fixture::idle("reload-visible").await;
    let search = ("reloader.stakater.com/search", "true");
    let matched = ("reloader.stakater.com/match", "true");
    let label = ("reload", "true");
    f.secret("db", &[("k", "1")], &[], &[]).await;
    f.secret("cache", &[("k", "1")], &[], &[]).await;
    f.deployment("search", &[search], &["db"], &[]).await;
    f.deployment("labelled", &[AUTO], &["cache"], &[]).await;
    // Only Secrets with the label count; `search` reads `match` on them.
    f.secret("db", &[("k", "1")], &[], &[label]).await;
    f.start_operator(&["--resource-label-selector", "reload=true"])
        .await;
    f.baselined::<Deployment>("search").await;
    f.baselined::<Deployment>("labelled").await;

    f.secret("db", &[("k", "2")], &[], &[label]).await;
    f.secret("cache", &[("k", "2")], &[], &[]).await;
    always(
        "no restart for Secrets the workloads do not see",
        QUIET,
        || async { f.replica_sets("search").await == 1 && f.replica_sets("labelled").await == 1 },
    )
    .await;

    f.secret("db", &[("k", "3")], &[matched], &[label]).await;
    f.secret("cache", &[("k", "3")], &[], &[label]).await;
    f.expect_replica_sets("search", 2).await;
    f.expect_replica_sets("labelled", 2).await;
    assert_eq!(f.event_notes("search", "Reloaded").await.len(), 1);
    assert_eq!(f.event_notes("labelled", "Reloaded").await.len(), 1);
}

/// `kvsync_reload_rollouts_queued` counts the workloads really waiting for
/// their turn: never one already restarted, and with those restarted and
/// in flight, all of them.
#[tokio::test]
async fn the_queue_metric_counts_what_really_waits() {
    const WORKLOADS: usize = 20;
    let mut f = Fixture::idle("reload-queued").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    let deployments = f.api::<Deployment>();
    // Paused with no replicas, as in the throttle test: restarts are read
    // from kvsync's restartedAt.
    for i in 0..WORKLOADS {
        let name = format!("w{i:02}");
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": pairs(&[AUTO])},
            "spec": {"replicas": 0, "paused": true, "selector": {"matchLabels": {"app": name}}, "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app", "envFrom": [{"secretRef": {"name": "db"}}]}]}}}
        }))
        .unwrap();
        deployments
            .create(&PostParams::default(), &deployment)
            .await
            .unwrap();
    }
    f.start_operator(&["--max-rollouts-per-second", "4"]).await;
    eventually("every workload baselined", WAIT, || async {
        let list = deployments.list(&ListParams::default()).await.unwrap();
        list.items
            .iter()
            .all(|d| d.annotations().contains_key(DIGEST_ANNOTATION))
            .then_some(())
    })
    .await;
    let base = metrics_url(&f.operator.as_ref().unwrap().output()).unwrap();
    let gauges = || async {
        let page = reqwest::get(format!("{base}/metrics")).await.unwrap();
        let page = page.text().await.unwrap();
        (
            gauge(&page, "kvsync_reload_rollouts_queued"),
            gauge(&page, "kvsync_reload_writes_in_flight"),
        )
    };

    f.secret("db", &[("k", "2")], &[], &[]).await;
    let mut samples = Vec::new();
    // The change's workloads are judged one by one in one pass: from the
    // first sample after that pass, every one is counted somewhere.
    let mut judged = false;
    loop {
        let before = restarts(&f).await.len();
        let (queued, in_flight) = gauges().await;
        let after = restarts(&f).await.len();
        samples.push((before, queued, in_flight, after));
        assert!(
            queued <= WORKLOADS - before,
            "{queued} queued with {before} of {WORKLOADS} restarted"
        );
        if after == WORKLOADS {
            break;
        }
        // The stage sets the two gauges one after the other, and admits one
        // workload at a time: at most one is between them in a sample.
        let counted = queued + in_flight + after + 1 >= WORKLOADS;
        if judged {
            assert!(
                counted,
                "{queued} queued, {in_flight} in flight, {after} restarted: some waiting workloads are not counted"
            );
        }
        judged |= counted;
    }
    let peak = samples.iter().map(|s| s.1).max().unwrap();
    println!(
        "queued: {} samples over the fan-out of {WORKLOADS}, peak {peak}",
        samples.len()
    );
    assert!(peak >= WORKLOADS / 2, "the waiting workloads were counted");
    eventually("the queue empty", WAIT, || async {
        (gauges().await.0 == 0).then_some(())
    })
    .await;
}

/// Argo CD applies a Secret in one sync wave and the Deployment in the next,
/// 2 s apart (`ARGOCD_SYNC_WAVE_DELAY`'s default): with the default
/// debounce that is one rollout (the template change's, with the new data),
/// not two.
#[tokio::test]
async fn an_argo_cd_sync_wave_apart_is_one_rollout_with_the_default_debounce() {
    let mut f = Fixture::idle("reload-wave").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    f.deployment("web", &[AUTO], &["db"], &[]).await;
    f.start_operator_with_default_debounce(&[]).await;
    f.baselined::<Deployment>("web").await;

    let sync = std::time::Instant::now();
    f.secret("db", &[("k", "2")], &[], &[]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    change_template(&f, "web", "2").await;
    let debounce = humantime::parse_duration(kvsync::reload::DEFAULT_RELOAD_DEBOUNCE).unwrap();
    assert!(
        sync.elapsed() < debounce,
        "the two waves took {:?}, longer than the debounce: the machine is too slow for this test",
        sync.elapsed()
    );
    f.expect_replica_sets("web", 2).await;
    assert!(f.event_notes("web", "Reloaded").await.is_empty());
}
