//! Fan-outs: the rollout rate, no debt after cancelled restarts, fairness across namespaces, refused writes.

use super::*;

#[tokio::test]
async fn a_secret_used_by_200_workloads_restarts_each_once_at_the_throttled_rate() {
    const WORKLOADS: usize = 200;
    const PER_SECOND: usize = 50;
    let mut f = Fixture::idle("reload-throttle").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    let deployments = f.api::<Deployment>();
    // Paused (by a user, as far as kvsync knows: it restarts them as usual):
    // kube-controller-manager makes no ReplicaSets for them, so 400 restarts
    // do not hold up the tests running beside this one. The test reads
    // kvsync's restartedAt instead.
    for i in 0..WORKLOADS {
        Workload::deployment(&format!("w{i:03}"))
            .annotations(&[AUTO])
            .env_from(&["db"])
            .paused()
            .create(&f.client, &f.ns.name)
            .await;
    }
    let rate = PER_SECOND.to_string();
    f.start_operator(&["--max-rollouts-per-second", &rate])
        .await;
    eventually("every workload baselined", WAIT, || async {
        let list = deployments.list(&ListParams::default()).await.unwrap();
        list.items
            .iter()
            .all(|d| d.annotations().contains_key(DIGEST_ANNOTATION))
            .then_some(())
    })
    .await;

    let paced = fan_out(&f, WORKLOADS, "2", &rate).await;
    // The k-th restart is never ahead of its slot, however late (under load)
    // the ones before it came: never faster than the rate from the first on.
    let times = &paced.times;
    let spacing = Duration::from_secs(1) / PER_SECOND as u32;
    for (k, at) in times.iter().enumerate() {
        let earliest = times[0] + spacing * k as u32 - Duration::from_millis(20);
        assert!(
            *at >= earliest,
            "restart {k} at {at}, before its slot {earliest}"
        );
    }
    assert!(
        paced.peak_per_second <= PER_SECOND + 1,
        "{} restarts within one second (one more: the stamps' jitter)",
        paced.peak_per_second
    );
    assert!(
        paced.queued_peak > 0,
        "the queue metric showed the waiting workloads"
    );

    // Unlimited: the restarts are not issued one answer at a time.
    f.stop_operator().await;
    f.start_operator(&["--max-rollouts-per-second", "0"]).await;
    let unlimited = fan_out(&f, WORKLOADS, "3", "0").await;
    assert!(
        unlimited.in_flight_peak > 1,
        "writes were in flight concurrently"
    );
}

/// Issue "pacing keeps no debt": 150 Deployments share a Secret that flaps
/// (changed, and changed back 1.5 s later) under --max-rollouts-per-second 5.
/// The restarts still queued when it flaps back are cancelled and give their
/// turns back, and namespaces take turns: another namespace's Deployment,
/// whose Secret changes right then, is rolled out within 2 s — not behind
/// 142 reserved slots (29.4 s before the fix), nor behind the flapped
/// workloads that must restart back.
#[tokio::test]
async fn a_cancelled_fan_out_leaves_no_debt_for_other_restarts() {
    const WORKLOADS: usize = 150;
    let mut f = Fixture::idle("reload-nodebt").await;
    let other = TestNamespace::new(&f.client, "reload-nodebt-other").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    // Paused with no replicas, as in the throttle test: restarts are read
    // from kvsync's restartedAt, and no ReplicaSets are made.
    let paused = |name: &str, secret: &str| {
        Workload::deployment(name)
            .annotations(&[AUTO])
            .env_from(&[secret])
            .paused()
    };
    let deployments = f.api::<Deployment>();
    for i in 0..WORKLOADS {
        paused(&format!("w{i:03}"), "db")
            .create(&f.client, &f.ns.name)
            .await;
    }
    let own_secret = |value: &str| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": "own"}, "stringData": {"k": value}}))
            .unwrap()
    };
    let other_secrets: Api<Secret> = Api::namespaced(f.client.clone(), &other.name);
    let other_deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &other.name);
    other_secrets
        .create(&PostParams::default(), &own_secret("1"))
        .await
        .unwrap();
    paused("solo", "own").create(&f.client, &other.name).await;
    let both = format!("{},{}", f.ns.name, other.name);
    f.start_operator(&["--max-rollouts-per-second", "5", "--namespaces", &both])
        .await;
    let recorded = |list: Vec<Deployment>| {
        list.iter()
            .all(|d| d.annotations().contains_key(DIGEST_ANNOTATION))
    };
    eventually("every workload baselined", WAIT, || async {
        let here = deployments.list(&ListParams::default()).await.ok()?.items;
        let there = other_deployments
            .list(&ListParams::default())
            .await
            .ok()?
            .items;
        (here.len() == WORKLOADS && recorded(here) && recorded(there)).then_some(())
    })
    .await;
    let base = metrics_url(&f.process().output()).unwrap();
    let queued = || async {
        let page = reqwest::get(format!("{base}/metrics")).await.unwrap();
        gauge(&page.text().await.unwrap(), "kvsync_reload_rollouts_queued")
    };

    // The flap: the fan-out starts, then its cause is gone.
    f.secret("db", &[("k", "2")], &[], &[]).await;
    eventually("the fan-out queued", WAIT, || async {
        (queued().await > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    // At once, as in the issue: another team's Secret changes.
    let changed = OffsetDateTime::now_utc();
    other_secrets
        .replace("own", &PostParams::default(), &own_secret("2"))
        .await
        .unwrap();
    let solo_restarted = || async {
        let solo = other_deployments.get("solo").await.ok()?;
        let at = solo
            .spec?
            .template
            .metadata?
            .annotations?
            .get(RESTARTED_AT_ANNOTATION)?
            .clone();
        parse_time(Some(&at))
    };
    let restarted = eventually("solo restarted", WAIT, solo_restarted).await;
    let late = restarted - changed;
    eventually("the cancelled restarts leave the queue", WAIT, || async {
        (queued().await == 0).then_some(())
    })
    .await;
    let flapped = restarts(&f).await.len();
    println!(
        "no debt: {flapped} of {WORKLOADS} restarted for the reverted change; the other namespace's restart came {:.2}s after its change",
        late.as_seconds_f64()
    );
    assert!(
        flapped < WORKLOADS / 2,
        "{flapped} of {WORKLOADS} restarted for a change that was reverted 1.5 s later"
    );
    assert!(
        late < Duration::from_secs(2),
        "the other namespace's restart waited {late} behind cancelled ones"
    );
}

#[tokio::test]
async fn a_refused_update_backs_off_with_one_warning_event() {
    let mut f = Fixture::idle("reload-refused").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    // Annotations this close to Kubernetes' 256 KiB limit leave no room for
    // kvsync's record: every update of the workload is refused with a 422.
    let filler = "x".repeat(262_144 - 100);
    // (A StatefulSet: the Deployment controller would copy them to its ReplicaSet.)
    f.workload::<StatefulSet>("full", &[AUTO, ("filler", &filler)], &[], &["db"], &[])
        .await;
    f.deployment("fine", &[AUTO], &["db"], &[]).await;
    f.start_operator(&[]).await;
    f.baselined::<Deployment>("fine").await;
    // The backoff doubles: the second attempt 10 s after the first, the
    // third 20 s after the second.
    eventually("a retry after the first refusal", WAIT, || async {
        (reload_errors(&f, "refused").await >= 2).then_some(())
    })
    .await;
    let second_seen = std::time::Instant::now();
    assert_eq!(
        f.event_notes("full", "ReloadRefused").await.len(),
        1,
        "one Warning event, not one per retry"
    );
    // The second attempt came at or before it was seen, so this window
    // closes before the third is due, however late it opened.
    let third_due = second_seen + Duration::from_secs(20) - Duration::from_millis(500);
    always(
        "backing off: no third attempt within 20 s of the second",
        third_due.saturating_duration_since(std::time::Instant::now()),
        || async { reload_errors(&f, "refused").await == 2 },
    )
    .await;
    eventually(
        "the third attempt, after the doubled backoff",
        WAIT,
        || async { (reload_errors(&f, "refused").await >= 3).then_some(()) },
    )
    .await;
    // The other workloads are not held up.
    f.secret("db", &[("k", "2")], &[], &[]).await;
    f.expect_replica_sets("fine", 2).await;
}
