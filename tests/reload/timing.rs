//! When restarts happen: operator restarts, the minimum interval, pause periods, template changes, stamps in the future.

use super::*;

#[tokio::test]
async fn operator_restarts_restart_nothing_and_changes_made_meanwhile_apply_once() {
    let mut f = Fixture::idle("reload-restart").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    f.deployment("web", &[AUTO], &["db"], &[]).await;
    f.start_operator(&[]).await;
    f.baselined::<Deployment>("web").await;

    f.stop_operator().await;
    f.start_operator(&[]).await;
    f.expect_replica_sets("web", 1).await;

    f.stop_operator().await;
    f.secret("db", &[("k", "2")], &[], &[]).await;
    f.secret("db", &[("k", "3")], &[], &[]).await;
    f.expect_replica_sets("web", 1).await;
    f.start_operator(&[]).await;
    f.expect_replica_sets("web", 2).await;
}

#[tokio::test]
async fn min_reload_interval_folds_later_changes_into_one_restart() {
    let mut f = Fixture::idle("reload-interval").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    f.deployment("web", &[AUTO], &["db"], &[]).await;
    f.start_operator(&["--min-reload-interval", "8s"]).await;
    f.baselined::<Deployment>("web").await;

    f.secret("db", &[("k", "2")], &[], &[]).await;
    eventually("the first restart", WAIT, || async {
        (f.replica_sets("web").await == 2).then_some(())
    })
    .await;
    f.secret("db", &[("k", "3")], &[], &[]).await;
    f.secret("db", &[("k", "4")], &[], &[]).await;
    // Held back: the workload says so, and until when (for `kvsync explain`).
    let pending = |f: &Fixture| {
        let api = f.api::<Deployment>();
        async move {
            let web = api.get("web").await.unwrap();
            web.annotations().get("kvsync.io/restart-pending").cloned()
        }
    };
    let mark = eventually("the restart-pending mark", WAIT, || pending(&f)).await;
    assert!(mark.ends_with(" Secret/db"), "{mark}");
    let window = f.until_due("web", Duration::from_secs(8)).await;
    let first = f.restarted_at("web").await;
    always("no second restart within the interval", window, || async {
        f.replica_sets("web").await == 2
    })
    .await;
    f.expect_replica_sets("web", 3).await;
    let spacing = f.restarted_at("web").await - first;
    assert!(
        spacing >= Duration::from_secs(8),
        "restarted again after {spacing}"
    );
    eventually("the mark removed by the restart", WAIT, || async {
        pending(&f).await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_pause_period_folds_a_burst_into_one_rollout_even_across_operator_restarts() {
    // Long enough for the operator to be stopped and started again within it
    // on a loaded machine.
    const PERIOD: Duration = Duration::from_secs(8);
    let period = format!("{}s", PERIOD.as_secs());
    let mut f = Fixture::idle("reload-pause").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    f.deployment(
        "paused",
        &[
            AUTO,
            ("deployment.reloader.stakater.com/pause-period", &period),
        ],
        &["db"],
        &[],
    )
    .await;
    f.workload::<StatefulSet>(
        "store",
        &[AUTO, ("statefulset.kvsync.io/pause-period", &period)],
        &[],
        &["db"],
        &[],
    )
    .await;
    f.deployment("free", &[AUTO], &["db"], &[]).await;
    f.start_operator(&[]).await;
    for name in ["paused", "free"] {
        f.baselined::<Deployment>(name).await;
    }
    f.baselined::<StatefulSet>("store").await;

    // The first change starts the period: recorded on the objects, no
    // rollout; the workload without a period restarts at once. (Looked for
    // right away: paused-at lasts only as long as the period.)
    f.secret("db", &[("k", "2")], &[], &[]).await;
    let paused_at = eventually("paused-at on both paused workloads", WAIT, || async {
        let deployment = f.annotations::<Deployment>("paused").await;
        let store = f.annotations::<StatefulSet>("store").await;
        store.contains_key(PAUSED_AT_ANNOTATION).then_some(())?;
        parse_time(deployment.get(PAUSED_AT_ANNOTATION).map(String::as_str))
    })
    .await;
    eventually("the workload without a period restarted", WAIT, || async {
        restarts(&f).await.contains_key("free").then_some(())
    })
    .await;

    // The rest of the burst arrives while the operator is down: the period
    // lives on the object, not in a timer.
    f.stop_operator().await;
    f.secret("db", &[("k", "3")], &[], &[]).await;
    f.start_operator(&[]).await;
    f.secret("db", &[("k", "4")], &[], &[]).await;
    let burst = OffsetDateTime::now_utc() - paused_at;
    assert!(
        burst < PERIOD,
        "the burst took {burst}, longer than the period: the machine is too slow for this test"
    );
    let due = paused_at + PERIOD - OffsetDateTime::now_utc() - Duration::from_millis(500);
    always(
        "no rollout within the pause period",
        due.try_into().unwrap_or_default(),
        || async { f.replica_sets("paused").await == 1 && f.revisions("store").await == 1 },
    )
    .await;
    eventually("one rollout of each when the period ends", WAIT, || async {
        (f.replica_sets("paused").await == 2 && f.revisions("store").await == 2).then_some(())
    })
    .await;
    always("exactly one", QUIET, || async {
        f.replica_sets("paused").await == 2 && f.revisions("store").await == 2
    })
    .await;
    let waited = f.restarted_at("paused").await - paused_at;
    assert!(
        waited >= PERIOD,
        "rolled out {waited} after the first change"
    );
    assert!(
        !f.annotations::<Deployment>("paused")
            .await
            .contains_key(PAUSED_AT_ANNOTATION),
        "the period is over"
    );
    assert_eq!(
        f.event_notes("paused", "Reloaded").await.len(),
        1,
        "one Reloaded event for the burst"
    );
}

#[tokio::test]
async fn deployments_reloader_left_paused_are_resumed_when_their_period_is_over() {
    let mut f = Fixture::idle("reload-resume").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    let period = ("deployment.reloader.stakater.com/pause-period", "5s");
    for name in ["expired", "running", "by-user"] {
        f.deployment(name, &[AUTO, period], &["db"], &[]).await;
    }
    let now = OffsetDateTime::now_utc();
    pause_as_reloader(&f, "expired", Some(now - Duration::from_secs(3600))).await;
    pause_as_reloader(&f, "running", Some(now)).await;
    pause_as_reloader(&f, "by-user", None).await;
    f.start_operator(&[]).await;

    // Over: resumed on first sight, rolling out what Reloader left in the template.
    eventually("the expired pause resumed", WAIT, || async {
        (!is_paused(&f, "expired").await).then_some(())
    })
    .await;
    assert!(
        !f.annotations::<Deployment>("expired")
            .await
            .contains_key(RELOADER_PAUSED_AT)
    );
    f.expect_replica_sets("expired", 2).await;

    // Running: held until its end, then resumed.
    let due = now + Duration::from_secs(5) - OffsetDateTime::now_utc() - Duration::from_millis(500);
    always(
        "a running pause is left alone",
        due.try_into().unwrap_or_default(),
        || async { is_paused(&f, "running").await },
    )
    .await;
    eventually("the running pause resumed at its end", WAIT, || async {
        (!is_paused(&f, "running").await).then_some(())
    })
    .await;
    f.expect_replica_sets("running", 2).await;

    // Paused by a user (no paused-at): never kvsync's to resume.
    assert!(is_paused(&f, "by-user").await);
    assert_eq!(f.replica_sets("by-user").await, 1);
}

#[tokio::test]
async fn a_template_change_after_the_data_change_is_the_only_rollout() {
    let mut f = Fixture::idle("reload-template").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    f.config_map("app", &[("k", "1")], &[]).await;
    f.deployment("web", &[AUTO], &["db"], &["app"]).await;
    // The writes of one `helm upgrade` land within the default debounce,
    // however slowly (under load) this test makes them.
    f.start_operator_with_default_debounce(&[]).await;
    let debounce = humantime::parse_duration(kvsync::reload::DEFAULT_RELOAD_DEBOUNCE).unwrap();
    f.baselined::<Deployment>("web").await;

    // Data first, then the template (Helm's order): its rollout has the new data.
    let upgrade = std::time::Instant::now();
    f.secret("db", &[("k", "2")], &[], &[]).await;
    f.config_map("app", &[("k", "2")], &[]).await;
    change_template(&f, "web", "2").await;
    assert!(
        upgrade.elapsed() < debounce,
        "the three writes took {:?}, longer than the debounce: the machine is too slow for this test",
        upgrade.elapsed()
    );
    f.expect_replica_sets("web", 2).await;
    assert!(f.event_notes("web", "Reloaded").await.is_empty());
    let record = f.annotations::<Deployment>("web").await[DIGEST_ANNOTATION].clone();

    // The record has the new data: a later data change restarts as usual.
    f.secret("db", &[("k", "3")], &[], &[]).await;
    f.expect_replica_sets("web", 3).await;
    assert_ne!(
        f.annotations::<Deployment>("web").await[DIGEST_ANNOTATION],
        record
    );

    // Template first, then the data: pods of that rollout may have started
    // with the old data, so kvsync restarts once more.
    change_template(&f, "web", "3").await;
    f.secret("db", &[("k", "4")], &[], &[]).await;
    f.expect_replica_sets("web", 5).await;
    assert_eq!(f.event_notes("web", "Reloaded").await.len(), 2);
}

#[tokio::test]
async fn a_restart_stamped_in_the_future_delays_the_next_by_one_interval_at_most() {
    let mut f = Fixture::idle("reload-future").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    f.deployment("web", &[AUTO], &["db"], &[]).await;
    f.start_operator(&["--min-reload-interval", "3s"]).await;
    f.baselined::<Deployment>("web").await;

    let future = OffsetDateTime::now_utc() + Duration::from_secs(3600);
    let stamp = future
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: stamp}}}}});
    f.api::<Deployment>()
        .patch("web", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    f.expect_replica_sets("web", 2).await;

    let changed = OffsetDateTime::now_utc();
    f.secret("db", &[("k", "2")], &[], &[]).await;
    f.expect_replica_sets("web", 3).await;
    let restarted = f.restarted_at("web").await;
    assert!(restarted < future, "restamped with the present");
    // Held back by one interval (3 s) at most, after the debounce (0.3 s);
    // QUIET is the slack for watch delivery on a loaded machine. Taken at
    // face value, the future stamp would hold it back for an hour.
    let held = restarted - changed;
    assert!(
        held < Duration::from_millis(3_000 + 300) + QUIET,
        "restarted {held} after the change"
    );
    let operator = f.process();
    logged(operator, "the warning", "stamped in the future").await;
}
