//! The reload stage against a real kube-apiserver and kube-controller-manager:
//! each test gets its own namespace and its own `kvsync run` scoped to it.
//!
//! No kubelet runs, so pods never start; a restart is what a user would see in
//! the API: a new ReplicaSet for a Deployment, a new ControllerRevision for a
//! StatefulSet or DaemonSet. "Nothing happens" claims are checked over a
//! window several times the debounce, and most are followed by a change that
//! must restart, which proves the operator was listening all along. The
//! fixture is `tests/support/reload.rs`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kvsync::api::contract::reloader::PAUSED_AT as RELOADER_PAUSED_AT;
use kvsync::api::contract::{DIGEST_ANNOTATION, PAUSED_AT_ANNOTATION, RESTARTED_AT_ANNOTATION};
use kvsync::reload::record::parse_time;
use serde_json::{Value, json};
use support::reload::{
    AUTO, Fixture, QUIET, WAIT, create, generation, pairs, pod_using_db, rollout_api,
};
use support::*;
use time::OffsetDateTime;

#[tokio::test]
async fn data_changes_restart_once_and_nothing_else_does() {
    let mut f = Fixture::new("reload-data").await;
    f.secret("db", &[("password", "one")], &[], &[]).await;
    f.config_map("app", &[("mode", "blue")], &[]).await;
    f.deployment("web", &[AUTO], &["db"], &["app"]).await;
    f.deployment("plain", &[], &["db"], &["app"]).await;
    f.start_operator(&[]).await;

    // First sight: baselined, not restarted.
    f.baselined::<Deployment>("web").await;
    f.expect_replica_sets("web", 1).await;
    assert!(
        !f.annotations::<Deployment>("plain")
            .await
            .contains_key(DIGEST_ANNOTATION),
        "workloads without reload annotations are never written to"
    );

    // Metadata-only changes and identical rewrites restart nothing.
    f.secret(
        "db",
        &[("password", "one")],
        &[("note", "rotated-by-hand")],
        &[("team", "shop")],
    )
    .await;
    let unchanged = f.api::<Secret>().get("db").await.unwrap();
    f.api::<Secret>()
        .replace("db", &PostParams::default(), &unchanged)
        .await
        .unwrap();
    f.config_map("app", &[("mode", "blue")], &[("note", "touched")])
        .await;
    f.expect_replica_sets("web", 1).await;

    // A data change: exactly one rollout, and an Event naming the resource.
    f.secret("db", &[("password", "two")], &[], &[]).await;
    f.expect_replica_sets("web", 2).await;
    let notes = f.event_notes("web", "Reloaded").await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("Secret/db") && !notes[0].contains("two"),
        "names only, never values: {notes:?}"
    );
    let restarted_at = &f
        .api::<Deployment>()
        .get("web")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap()[RESTARTED_AT_ANNOTATION];
    assert!(!restarted_at.is_empty());

    // A ConfigMap's data counts the same way; a new key is a change too.
    f.config_map("app", &[("mode", "blue"), ("extra", "1")], &[])
        .await;
    f.expect_replica_sets("web", 3).await;
    assert_eq!(
        f.replica_sets("plain").await,
        1,
        "the unannotated workload never restarted"
    );
}

#[tokio::test]
async fn changes_made_together_roll_out_once() {
    let mut f = Fixture::new("reload-together").await;
    f.secret("a", &[("k", "1")], &[], &[]).await;
    f.secret("b", &[("k", "1")], &[], &[]).await;
    f.config_map("c", &[("k", "1")], &[]).await;
    f.deployment("web", &[AUTO], &["a", "b"], &["c"]).await;
    f.start_operator(&["--reload-debounce", "1s"]).await;
    f.baselined::<Deployment>("web").await;

    f.secret("a", &[("k", "2")], &[], &[]).await;
    f.secret("b", &[("k", "2")], &[], &[]).await;
    f.config_map("c", &[("k", "2")], &[]).await;
    f.expect_replica_sets("web", 2).await;
    let notes = f.event_notes("web", "Reloaded").await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    for name in ["Secret/a", "Secret/b", "ConfigMap/c"] {
        assert!(notes[0].contains(name), "{name} missing from {notes:?}");
    }
}

#[tokio::test]
async fn typed_auto_reacts_to_its_own_kind_only() {
    let mut f = Fixture::new("reload-typed").await;
    f.secret("s", &[("k", "1")], &[], &[]).await;
    f.config_map("c", &[("k", "1")], &[]).await;
    f.deployment(
        "secrets-only",
        &[("secret.reloader.stakater.com/auto", "true")],
        &["s"],
        &["c"],
    )
    .await;
    f.deployment(
        "config-only",
        &[("configmap.reloader.stakater.com/auto", "true")],
        &["s"],
        &["c"],
    )
    .await;
    f.start_operator(&[]).await;
    f.baselined::<Deployment>("secrets-only").await;
    f.baselined::<Deployment>("config-only").await;

    f.config_map("c", &[("k", "2")], &[]).await;
    f.expect_replica_sets("config-only", 2).await;
    assert_eq!(f.replica_sets("secrets-only").await, 1);

    f.secret("s", &[("k", "2")], &[], &[]).await;
    f.expect_replica_sets("secrets-only", 2).await;
    assert_eq!(f.replica_sets("config-only").await, 2);
}

#[tokio::test]
async fn named_lists_fire_without_use_and_excludes_win() {
    let mut f = Fixture::new("reload-named").await;
    for name in ["named", "pre-1", "other", "excluded", "included"] {
        f.secret(name, &[("k", "1")], &[], &[]).await;
    }
    f.config_map("settings", &[("k", "1")], &[]).await;
    // Uses nothing, names secrets by list and regex, and a ConfigMap.
    f.deployment(
        "listed",
        &[
            ("secret.reloader.stakater.com/reload", "named, pre-.*"),
            ("configmap.reloader.stakater.com/reload", "settings"),
        ],
        &[],
        &[],
    )
    .await;
    f.deployment(
        "auto",
        &[
            AUTO,
            ("secrets.exclude.reloader.stakater.com/reload", "excluded"),
        ],
        &["excluded", "included"],
        &[],
    )
    .await;
    f.start_operator(&[]).await;
    f.baselined::<Deployment>("listed").await;
    f.baselined::<Deployment>("auto").await;

    f.secret("other", &[("k", "2")], &[], &[]).await;
    f.secret("excluded", &[("k", "2")], &[], &[]).await;
    f.expect_replica_sets("listed", 1).await;
    assert_eq!(
        f.replica_sets("auto").await,
        1,
        "an excluded secret never restarts"
    );

    f.secret("named", &[("k", "2")], &[], &[]).await;
    f.expect_replica_sets("listed", 2).await;
    f.secret("pre-1", &[("k", "2")], &[], &[]).await;
    f.expect_replica_sets("listed", 3).await;
    f.config_map("settings", &[("k", "2")], &[]).await;
    f.expect_replica_sets("listed", 4).await;
    f.secret("included", &[("k", "2")], &[], &[]).await;
    f.expect_replica_sets("auto", 2).await;
}

#[tokio::test]
async fn search_needs_match_unless_auto_and_ignore_always_wins() {
    let mut f = Fixture::new("reload-search").await;
    let matched = [("reloader.stakater.com/match", "true")];
    f.secret("matched", &[("k", "1")], &matched, &[]).await;
    f.secret("unmatched", &[("k", "1")], &[], &[]).await;
    f.secret(
        "ignored",
        &[("k", "1")],
        &[("reloader.stakater.com/ignore", "true")],
        &[],
    )
    .await;
    let search = ("reloader.stakater.com/search", "true");
    f.deployment("searching", &[search], &["matched", "unmatched"], &[])
        .await;
    f.deployment("both", &[search, AUTO], &["unmatched", "ignored"], &[])
        .await;
    f.start_operator(&[]).await;
    f.baselined::<Deployment>("searching").await;
    f.baselined::<Deployment>("both").await;

    f.secret(
        "ignored",
        &[("k", "2")],
        &[("reloader.stakater.com/ignore", "true")],
        &[],
    )
    .await;
    f.expect_replica_sets("both", 1).await;

    f.secret("unmatched", &[("k", "2")], &[], &[]).await;
    f.expect_replica_sets("both", 2).await;
    assert_eq!(
        f.replica_sets("searching").await,
        1,
        "search without match does not react"
    );

    f.secret("matched", &[("k", "2")], &matched, &[]).await;
    f.expect_replica_sets("searching", 2).await;
}

#[tokio::test]
async fn pod_template_annotations_count_when_the_workload_has_none() {
    let mut f = Fixture::new("reload-template").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    f.workload::<Deployment>("web", &[], &[AUTO], &["db"], &[])
        .await;
    // The workload's own (false) auto hides the template's.
    f.workload::<Deployment>(
        "off",
        &[("reloader.stakater.com/auto", "false")],
        &[AUTO],
        &["db"],
        &[],
    )
    .await;
    f.start_operator(&[]).await;
    f.baselined::<Deployment>("web").await;

    f.secret("db", &[("k", "2")], &[], &[]).await;
    f.expect_replica_sets("web", 2).await;
    assert_eq!(f.replica_sets("off").await, 1);
    assert!(
        !f.annotations::<Deployment>("off")
            .await
            .contains_key(DIGEST_ANNOTATION)
    );
}

#[tokio::test]
async fn an_invalid_expression_is_reported_and_everything_else_keeps_working() {
    let mut f = Fixture::new("reload-invalid").await;
    f.secret("ok", &[("k", "1")], &[], &[]).await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    f.deployment(
        "broken",
        &[("secret.reloader.stakater.com/reload", "ok,bad-[")],
        &[],
        &[],
    )
    .await;
    f.deployment("healthy", &[AUTO], &["db"], &[]).await;
    f.start_operator(&[]).await;

    let notes = eventually(
        "a Warning event about the broken annotation",
        WAIT,
        || async {
            let notes = f.event_notes("broken", "InvalidReloadAnnotation").await;
            (!notes.is_empty()).then_some(notes)
        },
    )
    .await;
    assert!(
        notes[0].contains("bad-[") && notes[0].contains("secret.reloader.stakater.com/reload"),
        "{notes:?}"
    );
    f.baselined::<Deployment>("broken").await;
    f.baselined::<Deployment>("healthy").await;

    f.secret("db", &[("k", "2")], &[], &[]).await;
    f.expect_replica_sets("healthy", 2).await;
    f.secret("ok", &[("k", "2")], &[], &[]).await;
    f.expect_replica_sets("broken", 2).await;
    assert_eq!(
        f.event_notes("broken", "InvalidReloadAnnotation")
            .await
            .len(),
        1,
        "reported once, not on every update"
    );
}

#[tokio::test]
async fn operator_restarts_restart_nothing_and_changes_made_meanwhile_apply_once() {
    let mut f = Fixture::new("reload-restart").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    f.deployment("web", &[AUTO], &["db"], &[]).await;
    f.start_operator(&[]).await;
    f.baselined::<Deployment>("web").await;

    f.stop_operator();
    f.start_operator(&[]).await;
    f.expect_replica_sets("web", 1).await;

    f.stop_operator();
    f.secret("db", &[("k", "2")], &[], &[]).await;
    f.secret("db", &[("k", "3")], &[], &[]).await;
    f.expect_replica_sets("web", 1).await;
    f.start_operator(&[]).await;
    f.expect_replica_sets("web", 2).await;
}

#[tokio::test]
async fn statefulsets_and_daemonsets_roll_to_a_new_revision() {
    let mut f = Fixture::new("reload-kinds").await;
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
async fn min_reload_interval_folds_later_changes_into_one_restart() {
    let mut f = Fixture::new("reload-interval").await;
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
    let window = f.quiet_before_due("web", Duration::from_secs(8)).await;
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
    let mut f = Fixture::new("reload-pause").await;
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
    f.stop_operator();
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

/// Pauses Deployment `name` the way Reloader does (and, with a template
/// change, the way it restarts while paused); `None`: paused by a user.
async fn pause_as_reloader(f: &Fixture, name: &str, paused_at: Option<OffsetDateTime>) {
    let paused_at = paused_at.map(|at| {
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    });
    let patch = json!({
        "metadata": {"annotations": {RELOADER_PAUSED_AT: paused_at}},
        "spec": {"paused": true, "template": {"metadata": {"annotations": {"reloader.stakater.com/last-reloaded-from": "db"}}}},
    });
    f.api::<Deployment>()
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

async fn is_paused(f: &Fixture, name: &str) -> bool {
    let deployment = f.api::<Deployment>().get(name).await.unwrap();
    deployment.spec.unwrap().paused == Some(true)
}

#[tokio::test]
async fn deployments_reloader_left_paused_are_resumed_when_their_period_is_over() {
    let mut f = Fixture::new("reload-resume").await;
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

/// What `helm upgrade` or `kubectl apply` does to a Deployment along with its data.
async fn change_template(f: &Fixture, name: &str, version: &str) {
    let patch =
        json!({"spec": {"template": {"metadata": {"annotations": {"app-version": version}}}}});
    f.api::<Deployment>()
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_template_change_after_the_data_change_is_the_only_rollout() {
    let mut f = Fixture::new("reload-template").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    f.config_map("app", &[("k", "1")], &[]).await;
    f.deployment("web", &[AUTO], &["db"], &["app"]).await;
    // The writes of one `helm upgrade` land within the debounce, however
    // slowly (under load) this test makes them.
    const DEBOUNCE: Duration = Duration::from_secs(3);
    f.start_operator(&["--reload-debounce", "3s"]).await;
    f.baselined::<Deployment>("web").await;

    // Data first, then the template (Helm's order): its rollout has the new data.
    let upgrade = std::time::Instant::now();
    f.secret("db", &[("k", "2")], &[], &[]).await;
    f.config_map("app", &[("k", "2")], &[]).await;
    change_template(&f, "web", "2").await;
    assert!(
        upgrade.elapsed() < DEBOUNCE,
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
async fn resource_label_selector_limits_which_resources_count() {
    let mut f = Fixture::new("reload-selector").await;
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
    let f = Fixture::new("reload-no-op-ns").await;
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
    let mut f = Fixture::new("reload-nssel").await;
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
async fn a_key_vault_rotation_rolls_the_workload_using_the_synced_secret() {
    let mut f = Fixture::new("reload-e2e").await;
    let emulator = Emulator::start(json!({
        "vaults": [{"name": "shop", "secrets": [{"name": "db-password", "value": "first-value"}]}],
        "apps": [{"tenantId": TENANT, "clientId": SECRET_APP, "clientSecret": SECRET_APP_PASSWORD,
                  "access": [{"vault": "shop", "secrets": ["*"]}]}]
    }))
    .await;
    f.named = vec!["first-value".into(), SECRET_APP_PASSWORD.into()];
    let credentials = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kv-creds"},
        "data": {"clientSecret": ByteString(SECRET_APP_PASSWORD.as_bytes().to_vec())},
    });
    f.apply::<Secret>("kv-creds", credentials).await;
    let kvs = json!({
        "apiVersion": "kvsync.io/v1alpha1", "kind": "KeyVaultSecret", "metadata": {"name": "db"},
        "spec": {
            "vaultUrl": emulator.vault_url("shop"),
            "refreshInterval": "1s",
            "auth": {"clientSecret": {"tenantId": TENANT, "clientId": SECRET_APP,
                                      "secretRef": {"name": "kv-creds", "key": "clientSecret"}}},
            "data": [{"secretKey": "password", "remoteRef": {"name": "db-password"}}]
        }
    });
    f.apply::<kvsync::api::KeyVaultSecret>("db", kvs).await;
    f.deployment("web", &[AUTO], &["db"], &[]).await;
    let operator = Operator::start(
        &emulator,
        &f.ns.name,
        &["--reload-debounce", "300ms", "--min-reload-interval", "1s"],
    );
    f.operator = Some(operator.process);
    f.emulator = Some(emulator);

    eventually("the synced Secret", WAIT, || async {
        f.api::<Secret>().get_opt("db").await.ok().flatten()
    })
    .await;
    f.baselined::<Deployment>("web").await;
    f.expect_replica_sets("web", 1).await;

    f.emulator
        .as_ref()
        .unwrap()
        .set_secret("shop", "db-password", "second-value")
        .await;
    f.expect_replica_sets("web", 2).await;
    let notes = f.event_notes("web", "Reloaded").await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    // The fixture scans for the values and the credential in every form in
    // the log, events, status and the restarted workload's annotations.
}

/// Pod specs using Secret `db` in every way a pod can, and one that
/// declares it as a volume no container mounts: (name, spec, restarts).
fn ways_to_use_db() -> Vec<(&'static str, Value, bool)> {
    let image = "example.invalid/app";
    let volume = json!({"name": "creds", "secret": {"secretName": "db"}});
    let mounted = json!({"name": "app", "image": image, "volumeMounts": [{"name": "creds", "mountPath": "/creds"}]});
    let plain = json!({"name": "app", "image": image});
    let key = |optional: bool| {
        json!({"name": "app", "image": image, "env": [{"name": "K", "valueFrom":
            {"secretKeyRef": {"name": "db", "key": "k", "optional": optional}}}]})
    };
    vec![
        (
            "mounted",
            json!({"containers": [mounted], "volumes": [volume]}),
            true,
        ),
        (
            "projected",
            json!({"containers": [mounted], "volumes": [{"name": "creds",
                   "projected": {"sources": [{"secret": {"name": "db"}}]}}]}),
            true,
        ),
        ("key", json!({"containers": [key(false)]}), true),
        ("optional-key", json!({"containers": [key(true)]}), true),
        (
            "init-only",
            json!({"initContainers": [{"name": "init", "image": image,
                   "volumeMounts": [{"name": "creds", "mountPath": "/creds"}]}],
                   "containers": [plain], "volumes": [volume]}),
            true,
        ),
        // As Reloader: a volume no container mounts changes nothing that runs.
        (
            "unmounted",
            json!({"containers": [plain], "volumes": [volume]}),
            false,
        ),
    ]
}

#[tokio::test]
async fn every_way_a_pod_uses_a_secret_counts_but_a_volume_no_container_mounts() {
    let mut f = Fixture::new("reload-uses").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    let cases = ways_to_use_db();
    for (name, spec, _) in &cases {
        let body = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "annotations": pairs(&[AUTO])},
            "spec": {"selector": {"matchLabels": {"app": name}}, "template": {
                "metadata": {"labels": {"app": name}}, "spec": spec}}
        });
        f.apply::<Deployment>(name, body).await;
        first_rollout_made::<ReplicaSet>(&f.client, &f.ns.name, name).await;
    }
    f.start_operator(&[]).await;
    for (name, _, _) in &cases {
        f.baselined::<Deployment>(name).await;
    }

    f.secret("db", &[("k", "2")], &[], &[]).await;
    let expected = || async {
        for (name, _, restarts) in &cases {
            if f.replica_sets(name).await != 1 + usize::from(*restarts) {
                return false;
            }
        }
        true
    };
    eventually("each using Deployment restarted", WAIT, || async {
        expected().await.then_some(())
    })
    .await;
    always("each once, the unmounted one never", QUIET, expected).await;
    for (name, _, restarts) in &cases {
        let events = f.event_notes(name, "Reloaded").await.len();
        assert_eq!(events, usize::from(*restarts), "{name}");
    }
}

#[tokio::test]
async fn deletions_restart_nothing_and_appearances_only_what_could_run_without() {
    let mut f = Fixture::new("reload-absent").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    f.deployment("web", &[AUTO], &["db", "not-yet"], &[]).await;
    // The same, but its pods can start without `extra` (an optional reference).
    let optional = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "tolerant", "annotations": pairs(&[AUTO])},
        "spec": {
            "selector": {"matchLabels": {"app": "tolerant"}},
            "template": {
                "metadata": {"labels": {"app": "tolerant"}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app",
                         "envFrom": [{"secretRef": {"name": "extra", "optional": true}}]}]}
            }
        }
    });
    f.apply::<Deployment>("tolerant", optional).await;
    f.start_operator(&[]).await;
    f.baselined::<Deployment>("web").await;
    f.baselined::<Deployment>("tolerant").await;

    // A required Secret appearing: the pods were waiting for it, no restart.
    // An optional one appearing: the pods run without it, so they restart.
    f.secret("not-yet", &[("k", "1")], &[], &[]).await;
    f.secret("extra", &[("k", "1")], &[], &[]).await;
    f.expect_replica_sets("tolerant", 2).await;
    assert_eq!(f.replica_sets("web").await, 1);

    // Deleting a Secret restarts nothing; re-creating it with the same data
    // neither; with other data, once.
    let secrets = f.api::<Secret>();
    secrets.delete("db", &Default::default()).await.unwrap();
    f.expect_replica_sets("web", 1).await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    f.expect_replica_sets("web", 1).await;
    secrets.delete("db", &Default::default()).await.unwrap();
    f.secret("db", &[("k", "2")], &[], &[]).await;
    f.expect_replica_sets("web", 2).await;
}

/// A dynamic API of `kind` in the fixture's namespace, as the server serves it.
async fn served_api(f: &Fixture, versions: &[&str], kind: &str) -> (Api<DynamicObject>, String) {
    for api_version in versions {
        let (group, version) = api_version.split_once('/').unwrap();
        let gvk = GroupVersionKind::gvk(group, version, kind);
        if let Ok((resource, _)) = kube::discovery::pinned_kind(&f.client, &gvk).await {
            return (
                Api::namespaced_with(f.client.clone(), &f.ns.name, &resource),
                api_version.to_string(),
            );
        }
    }
    panic!("{kind} is not served as any of {versions:?}");
}

/// Jobs made from CronJob `owner`.
async fn jobs_of(f: &Fixture, owner: &str) -> Vec<Job> {
    let jobs = f.api::<Job>().list(&ListParams::default()).await.unwrap();
    jobs.items
        .into_iter()
        .filter(|job| {
            job.owner_references()
                .iter()
                .any(|o| o.kind == "CronJob" && o.name == owner)
        })
        .collect()
}

#[tokio::test]
async fn cron_jobs_get_one_job_per_change_and_suspended_ones_none() {
    let mut f = Fixture::new("reload-cron").await;
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
    f.stop_operator();
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

#[tokio::test]
async fn argo_rollouts_restart_once_by_template_or_by_restart_at() {
    let mut f = Fixture::new("reload-rollout").await;
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

/// The `kvsync.io/restartedAt` of each Deployment in the namespace that has one.
async fn restarts(f: &Fixture) -> BTreeMap<String, OffsetDateTime> {
    let list = f
        .api::<Deployment>()
        .list(&ListParams::default())
        .await
        .unwrap();
    list.items
        .into_iter()
        .filter_map(|d| {
            let template = d.spec.as_ref()?.template.metadata.as_ref()?;
            let at = template
                .annotations
                .as_ref()?
                .get(RESTARTED_AT_ANNOTATION)?;
            Some((d.name_any(), parse_time(Some(at))?))
        })
        .collect()
}

/// The value of an unlabelled gauge on a metrics page (0 when absent).
fn gauge(metrics: &str, name: &str) -> usize {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_default()
}

/// One change of Secret `db` rolled out to every Deployment of the namespace.
struct Fanout {
    /// When each was restarted (its new `kvsync.io/restartedAt`), in order.
    times: Vec<OffsetDateTime>,
    /// The most restarts within any one second.
    peak_per_second: usize,
    /// Peaks of `kvsync_reload_rollouts_queued` and `_writes_in_flight`.
    queued_peak: usize,
    in_flight_peak: usize,
}

/// Writes `value` into Secret `db` and waits until each of the `workloads`
/// Deployments has restarted since, exactly once, sampling the operator's
/// queue and writes in flight meanwhile; prints the numbers.
async fn fan_out(f: &Fixture, workloads: usize, value: &str, rate: &str) -> Fanout {
    let before = restarts(f).await;
    let changed = OffsetDateTime::now_utc();
    f.secret("db", &[("k", value)], &[], &[]).await;
    // Sampled as often as the operator answers.
    let (mut queued_peak, mut in_flight_peak) = (0, 0);
    let base = metrics_url(&f.operator.as_ref().unwrap().output()).unwrap();
    let sampling = async {
        loop {
            let page = reqwest::get(format!("{base}/metrics")).await.unwrap();
            let metrics = page.text().await.unwrap();
            queued_peak = queued_peak.max(gauge(&metrics, "kvsync_reload_rollouts_queued"));
            in_flight_peak = in_flight_peak.max(gauge(&metrics, "kvsync_reload_writes_in_flight"));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let restarted = || async {
        let mut all = restarts(f).await;
        all.retain(|name, at| before.get(name) != Some(at));
        all
    };
    let all = tokio::select! {
        all = eventually("every workload restarted", WAIT, || async {
            let all = restarted().await;
            (all.len() == workloads).then_some(all)
        }) => all,
        _ = sampling => unreachable!("sampling never ends"),
    };
    always("each restarted exactly once", QUIET, || async {
        restarted().await == all
    })
    .await;

    let mut times: Vec<OffsetDateTime> = all.into_values().collect();
    times.sort();
    let last = *times.last().unwrap();
    let peak_per_second = times
        .iter()
        .map(|start| {
            times
                .iter()
                .filter(|t| **t >= *start && **t - *start < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    println!(
        "throttle: {workloads} workloads at --max-rollouts-per-second {rate}: all restarted {:.2}s after the change \
         (first to last {:.2}s), peak {peak_per_second} restarts in any one second, peak queue {queued_peak}, \
         peak writes in flight {in_flight_peak}",
        (last - changed).as_seconds_f64(),
        (last - times[0]).as_seconds_f64(),
    );
    Fanout {
        times,
        peak_per_second,
        queued_peak,
        in_flight_peak,
    }
}

#[tokio::test]
async fn a_secret_used_by_200_workloads_restarts_each_once_at_the_throttled_rate() {
    const WORKLOADS: usize = 200;
    const PER_SECOND: usize = 50;
    let mut f = Fixture::new("reload-throttle").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    let deployments = f.api::<Deployment>();
    // Paused (by a user, as far as kvsync knows: it restarts them as usual):
    // kube-controller-manager makes no ReplicaSets for them, so 400 restarts
    // do not hold up the tests running beside this one. The test reads
    // kvsync's restartedAt instead.
    for i in 0..WORKLOADS {
        let name = format!("w{i:03}");
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
    f.stop_operator();
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
    let mut f = Fixture::new("reload-nodebt").await;
    let other = TestNamespace::new(&f.client, "reload-nodebt-other").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    // Paused with no replicas, as in the throttle test: restarts are read
    // from kvsync's restartedAt, and no ReplicaSets are made.
    let paused = |name: &str, secret: &str| -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": pairs(&[AUTO])},
            "spec": {"replicas": 0, "paused": true, "selector": {"matchLabels": {"app": name}}, "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app", "envFrom": [{"secretRef": {"name": secret}}]}]}}}
        }))
        .unwrap()
    };
    let deployments = f.api::<Deployment>();
    for i in 0..WORKLOADS {
        deployments
            .create(&PostParams::default(), &paused(&format!("w{i:03}"), "db"))
            .await
            .unwrap();
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
    other_deployments
        .create(&PostParams::default(), &paused("solo", "own"))
        .await
        .unwrap();
    f.start_operator(&[
        "--max-rollouts-per-second",
        "5",
        "--namespaces",
        &other.name,
    ])
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
    let base = metrics_url(&f.operator.as_ref().unwrap().output()).unwrap();
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
async fn a_restart_stamped_in_the_future_delays_the_next_by_one_interval_at_most() {
    let mut f = Fixture::new("reload-future").await;
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

    f.secret("db", &[("k", "2")], &[], &[]).await;
    f.expect_replica_sets("web", 3).await;
    assert!(
        f.restarted_at("web").await < future,
        "restamped with the present"
    );
    let operator = f.operator.as_ref().unwrap();
    logged(operator, "the warning", "stamped in the future").await;
}

/// `kvsync_reload_errors_total{reason}` (0 before the first).
async fn reload_errors(f: &Fixture, reason: &str) -> u64 {
    let line = format!("kvsync_reload_errors_total{{reason=\"{reason}\"}} ");
    f.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_refused_update_backs_off_with_one_warning_event() {
    let mut f = Fixture::new("reload-refused").await;
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
    eventually("a retry after the first refusal", WAIT, || async {
        (reload_errors(&f, "refused").await >= 2).then_some(())
    })
    .await;
    assert_eq!(
        f.event_notes("full", "ReloadRefused").await.len(),
        1,
        "one Warning event, not one per retry"
    );
    always(
        "backing off: no third attempt within 20 s of the first",
        Duration::from_secs(5),
        || async { reload_errors(&f, "refused").await == 2 },
    )
    .await;
    // The other workloads are not held up.
    f.secret("db", &[("k", "2")], &[], &[]).await;
    f.expect_replica_sets("fine", 2).await;
}

#[tokio::test]
async fn a_pattern_over_many_secrets_keeps_the_record_small_and_still_restarts() {
    let mut f = Fixture::new("reload-many").await;
    // 150 Secrets with long names: a record per Secret would be ~37 KiB.
    let name = |i: usize| format!("many-{}-{i:03}", "n".repeat(200));
    for i in 0..150 {
        f.secret(&name(i), &[("k", "1")], &[], &[]).await;
    }
    f.deployment(
        "web",
        &[("secret.reloader.stakater.com/reload", "many-.*")],
        &[],
        &[],
    )
    .await;
    f.start_operator(&[]).await;
    f.baselined::<Deployment>("web").await;
    let record = f.annotations::<Deployment>("web").await[DIGEST_ANNOTATION].clone();
    assert!(record.len() <= 32 * 1024, "{} bytes", record.len());
    f.expect_replica_sets("web", 1).await;

    f.secret(&name(77), &[("k", "2")], &[], &[]).await;
    f.expect_replica_sets("web", 2).await;
}

#[tokio::test]
async fn a_kind_the_operator_may_not_list_is_reported_not_waited_for() {
    let mut f = Fixture::new("reload-forbidden").await;
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
    let base = metrics_url(&f.operator.as_ref().unwrap().output()).unwrap();
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
