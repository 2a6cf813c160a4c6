//! Each workload kind's restart: StatefulSets, DaemonSets, CronJobs, Argo Rollouts.

use super::*;

#[tokio::test]
async fn statefulsets_and_daemonsets_roll_to_a_new_revision() {
    let mut f = Fixture::idle("reload-kinds").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    f.workload::<StatefulSet>("store", &[AUTO], &[], &["db"], &[])
        .await;
    f.workload::<DaemonSet>("agent", &[AUTO], &[], &["db"], &[])
        .await;
    f.start_operator(&[]).await;
    f.baselined::<StatefulSet>("store").await;
    f.baselined::<DaemonSet>("agent").await;
    always("no new revisions on first sight", QUIET, || async {
        f.revisions("store").await == 1 && f.revisions("agent").await == 1
    })
    .await;

    f.secret("db", &[("k", "2")], &[], &[]).await;
    eventually("new revisions of both", WAIT, || async {
        (f.revisions("store").await == 2 && f.revisions("agent").await == 2).then_some(())
    })
    .await;
    always("exactly one new revision each", QUIET, || async {
        f.revisions("store").await == 2 && f.revisions("agent").await == 2
    })
    .await;
    assert_eq!(f.event_notes("store", "Reloaded").await.len(), 1);
    assert_eq!(f.event_notes("agent", "Reloaded").await.len(), 1);
}

#[tokio::test]
async fn cron_jobs_get_one_job_per_change_and_suspended_ones_none() {
    let mut f = Fixture::idle("reload-cron").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    // batch/v1 from Kubernetes 1.21, batch/v1beta1 on 1.20: whatever is served.
    let (cron_jobs, api_version) = served_api(&f, &["batch/v1", "batch/v1beta1"], "CronJob").await;
    for (name, suspend) in [("nightly", false), ("held", true)] {
        create(
            &cron_jobs,
            json!({
                "apiVersion": api_version, "kind": "CronJob",
                "metadata": {"name": name, "annotations": pairs(&[AUTO])},
                "spec": {"schedule": "0 0 1 1 *", "suspend": suspend, "jobTemplate": {
                    "metadata": {"labels": {"team": "shop"}},
                    "spec": {"template": pod_using_db()}}}
            }),
        )
        .await;
    }
    f.start_operator(&[]).await;
    for name in ["nightly", "held"] {
        eventually(&format!("the digest record on {name}"), WAIT, || async {
            cron_jobs
                .get(name)
                .await
                .unwrap()
                .annotations()
                .contains_key(DIGEST_ANNOTATION)
                .then_some(())
        })
        .await;
    }
    always("no Job on first sight", QUIET, || async {
        jobs_of(&f, "nightly").await.is_empty()
    })
    .await;

    let changed = std::time::Instant::now();
    f.secret("db", &[("k", "2")], &[], &[]).await;
    let job = eventually("a Job from the CronJob", WAIT, || async {
        jobs_of(&f, "nightly").await.pop()
    })
    .await;
    println!(
        "CronJob reload latency (Secret written → Job created): {:?}",
        changed.elapsed()
    );
    let nightly = cron_jobs.get("nightly").await.unwrap();
    let owner = &job.owner_references()[0];
    assert_eq!(
        (owner.api_version.as_str(), owner.uid.as_str()),
        (api_version.as_str(), nightly.uid().unwrap().as_str())
    );
    assert_eq!(owner.controller, Some(true));
    assert_eq!(
        job.annotations()["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    assert_eq!(job.labels()["team"], "shop");
    always(
        "one Job per change, none for the suspended one",
        QUIET,
        || async {
            jobs_of(&f, "nightly").await.len() == 1 && jobs_of(&f, "held").await.is_empty()
        },
    )
    .await;

    // Level-triggered: a restart of the operator makes no second Job.
    f.stop_operator().await;
    f.start_operator(&[]).await;
    f.secret("db", &[("k", "3")], &[], &[]).await;
    eventually("a second Job for the second change", WAIT, || async {
        (jobs_of(&f, "nightly").await.len() == 2).then_some(())
    })
    .await;
    always(
        "still two, still none for the suspended one",
        QUIET,
        || async {
            jobs_of(&f, "nightly").await.len() == 2 && jobs_of(&f, "held").await.is_empty()
        },
    )
    .await;
}

/// The two moments a crash can split a CronJob restart at (see
/// `src/reload/job.rs`: the change and the Job it owes are recorded first,
/// then the Job is made, then the mark cleared), set up by hand while no
/// operator runs: `owed` carries the mark and no Job (a crash before the
/// Job), `made` carries the mark and its Job (a crash before the mark was
/// cleared). The next operator makes exactly the one Job owed and no second.
#[tokio::test]
async fn a_crash_between_the_record_and_the_job_makes_the_job_once() {
    let mut f = Fixture::idle("reload-cron-crash").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    let (cron_jobs, api_version) = served_api(&f, &["batch/v1", "batch/v1beta1"], "CronJob").await;
    for name in ["owed", "made"] {
        create(
            &cron_jobs,
            json!({
                "apiVersion": api_version, "kind": "CronJob",
                "metadata": {"name": name, "annotations": pairs(&[AUTO])},
                "spec": {"schedule": "0 0 1 1 *", "jobTemplate": {"spec": {"template": pod_using_db()}}}
            }),
        )
        .await;
    }
    f.start_operator(&[]).await;
    for name in ["owed", "made"] {
        eventually(&format!("the digest record on {name}"), WAIT, || async {
            let cron_job = cron_jobs.get(name).await.unwrap();
            cron_job
                .annotations()
                .contains_key(DIGEST_ANNOTATION)
                .then_some(())
        })
        .await;
    }
    f.stop_operator().await;

    // The state each crash leaves: the mark written, the Job made or not.
    for name in ["owed", "made"] {
        let mark = json!({"metadata": {"annotations": {JOB_PENDING_ANNOTATION: format!("{name}-crashed Secret/db")}}});
        cron_jobs
            .patch(name, &PatchParams::default(), &Patch::Merge(&mark))
            .await
            .unwrap();
    }
    let made = cron_jobs.get("made").await.unwrap();
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "made-crashed", "ownerReferences": [{
            "apiVersion": api_version, "kind": "CronJob", "name": "made",
            "uid": made.uid().unwrap(), "controller": true}]},
        "spec": {"template": pod_using_db()}
    }))
    .unwrap();
    f.api::<Job>()
        .create(&PostParams::default(), &job)
        .await
        .unwrap();

    f.start_operator(&[]).await;
    for name in ["owed", "made"] {
        eventually(&format!("the Job mark on {name} cleared"), WAIT, || async {
            let cron_job = cron_jobs.get(name).await.unwrap();
            (!cron_job.annotations().contains_key(JOB_PENDING_ANNOTATION)).then_some(())
        })
        .await;
    }
    let names = |jobs: Vec<Job>| jobs.iter().map(|j| j.name_any()).collect::<Vec<_>>();
    always("exactly the one Job owed to each", QUIET, || async {
        names(jobs_of(&f, "owed").await) == ["owed-crashed"]
            && names(jobs_of(&f, "made").await) == ["made-crashed"]
    })
    .await;
}

#[tokio::test]
async fn argo_rollouts_restart_once_by_template_or_by_restart_at() {
    let mut f = Fixture::idle("reload-rollout").await;
    let rollouts = rollout_api(&f).await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    let strategy = ("reloader.stakater.com/rollout-strategy", "restart");
    for (name, annotations) in [
        ("by-template", vec![AUTO]),
        ("by-restart-at", vec![AUTO, strategy]),
    ] {
        create(
            &rollouts,
            json!({
                "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
                "metadata": {"name": name, "annotations": pairs(&annotations)},
                "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": pod_using_db()}
            }),
        )
        .await;
    }
    f.start_operator(&[]).await;
    let mut before = BTreeMap::new();
    for name in ["by-template", "by-restart-at"] {
        let object = eventually(&format!("the digest record on {name}"), WAIT, || async {
            let object = rollouts.get(name).await.unwrap();
            object
                .annotations()
                .contains_key(DIGEST_ANNOTATION)
                .then_some(object)
        })
        .await;
        before.insert(name, generation(&object));
    }
    let spec_of = |name: &'static str| {
        let rollouts = rollouts.clone();
        async move { rollouts.get(name).await.unwrap() }
    };
    always("no restart on first sight", QUIET, || async {
        for name in ["by-template", "by-restart-at"] {
            if generation(&spec_of(name).await) != before[name] {
                return false;
            }
        }
        true
    })
    .await;

    let changed = std::time::Instant::now();
    f.secret("db", &[("k", "2")], &[], &[]).await;
    eventually("spec.restartAt set", WAIT, || async {
        spec_of("by-restart-at").await.data["spec"]["restartAt"]
            .as_str()
            .map(drop)
    })
    .await;
    println!(
        "Rollout reload latency (Secret written → restartAt patched): {:?}",
        changed.elapsed()
    );
    eventually("the template annotation set", WAIT, || async {
        spec_of("by-template").await.data["spec"]["template"]["metadata"]["annotations"]
            [RESTARTED_AT_ANNOTATION]
            .as_str()
            .map(drop)
    })
    .await;
    always("exactly one patch of each spec", QUIET, || async {
        generation(&spec_of("by-template").await) == before["by-template"] + 1
            && generation(&spec_of("by-restart-at").await) == before["by-restart-at"] + 1
    })
    .await;
    let by_restart_at = spec_of("by-restart-at").await;
    assert!(
        by_restart_at.data["spec"]["template"]["metadata"]["annotations"]
            .get(RESTARTED_AT_ANNOTATION)
            .is_none(),
        "the restart strategy leaves the template alone"
    );
    for name in ["by-template", "by-restart-at"] {
        assert_eq!(f.event_notes(name, "Reloaded").await.len(), 1, "{name}");
    }
}
