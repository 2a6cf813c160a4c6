//! What a change restarts: data, not metadata; Reloader's auto, named, search, match, ignore and exclude rules.

use super::*;

#[tokio::test]
async fn data_changes_restart_once_and_nothing_else_does() {
    let mut f = Fixture::idle("reload-data").await;
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
    let mut f = Fixture::idle("reload-together").await;
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
    let mut f = Fixture::idle("reload-typed").await;
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
    let mut f = Fixture::idle("reload-named").await;
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
    let mut f = Fixture::idle("reload-search").await;
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
    let mut f = Fixture::idle("reload-template").await;
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
    let mut f = Fixture::idle("reload-invalid").await;
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
async fn a_pattern_over_many_secrets_keeps_the_record_small_and_still_restarts() {
    let mut f = Fixture::idle("reload-many").await;
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
