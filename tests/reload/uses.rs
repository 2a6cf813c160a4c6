//! How pods use a Secret, what appearing and disappearing resources do, and the whole path from a Key Vault rotation.

use super::*;

#[tokio::test]
async fn a_key_vault_rotation_rolls_the_workload_using_the_synced_secret() {
    let mut f = Fixture::idle("reload-e2e").await;
    let credentials = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kv-creds"},
        "data": {"clientSecret": ByteString(SECRET_APP_PASSWORD.as_bytes().to_vec())},
    });
    f.apply_object::<Secret>("kv-creds", credentials).await;
    f.apply(
        "db",
        json!({
            "refreshInterval": "1s",
            "auth": {"clientSecret": {"tenantId": TENANT, "clientId": SECRET_APP,
                                      "secretRef": {"name": "kv-creds", "key": "clientSecret"}}},
            "data": [{"secretKey": "password", "remoteRef": {"name": "db-password"}}]
        }),
    )
    .await;
    f.deployment("web", &[AUTO], &["db"], &[]).await;
    f.start_operator(&[]).await;

    eventually("the synced Secret", WAIT, || async {
        f.api::<Secret>().get_opt("db").await.ok().flatten()
    })
    .await;
    f.baselined::<Deployment>("web").await;
    f.expect_replica_sets("web", 1).await;

    f.emulator
        .set_secret("shop", "db-password", "second-value")
        .await;
    f.expect_replica_sets("web", 2).await;
    let notes = f.event_notes("web", "Reloaded").await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    // The fixture scans for the values and the credential in every form in
    // the log, events, status and the restarted workload's annotations.
}

#[tokio::test]
async fn every_way_a_pod_uses_a_secret_counts_but_a_volume_no_container_mounts() {
    let mut f = Fixture::idle("reload-uses").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    let cases = ways_to_use_db();
    for (name, spec, _) in &cases {
        Workload::deployment(name)
            .annotations(&[AUTO])
            .pod_spec(spec.clone())
            .create(&f.client, &f.ns.name)
            .await;
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
    let mut f = Fixture::idle("reload-absent").await;
    f.secret("db", &[("k", "1")], &[], &[]).await;
    f.deployment("web", &[AUTO], &["db", "not-yet"], &[]).await;
    // The same, but its pods can start without `extra` (an optional reference).
    Workload::deployment("tolerant")
        .annotations(&[AUTO])
        .pod_spec(
            json!({"containers": [{"name": "app", "image": "example.invalid/app",
                         "envFrom": [{"secretRef": {"name": "extra", "optional": true}}]}]}),
        )
        .create(&f.client, &f.ns.name)
        .await;
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

/// A Deployment reading Secret `db` key by key: `env` entries for `keys`,
/// and a volume with `items` for `volume_keys` (none: no volume).
async fn reads_keys(
    f: &Fixture,
    name: &str,
    annotations: &[(&str, &str)],
    keys: &[&str],
    volume_keys: &[&str],
) {
    let env: Vec<Value> = keys
        .iter()
        .map(|k| json!({"name": k.to_uppercase(), "valueFrom": {"secretKeyRef": {"name": "db", "key": k}}}))
        .collect();
    let items: Vec<Value> = volume_keys
        .iter()
        .map(|k| json!({"key": k, "path": k}))
        .collect();
    let (volumes, mounts) = if items.is_empty() {
        (json!([]), json!([]))
    } else {
        (
            json!([{"name": "db", "secret": {"secretName": "db", "items": items}}]),
            json!([{"name": "db", "mountPath": "/etc/db"}]),
        )
    };
    Workload::deployment(name)
        .annotations(annotations)
        .pod_spec(json!({
            "containers": [{"name": "app", "image": "example.invalid/app", "env": env, "volumeMounts": mounts}],
            "volumes": volumes,
        }))
        .create(&f.client, &f.ns.name)
        .await;
}

#[tokio::test]
async fn a_workload_reading_some_keys_restarts_only_when_one_of_them_changes() {
    let f = Fixture::new("reload-keys").await;
    f.secret(
        "db",
        &[("password", "p1"), ("user", "u1"), ("tls", "t1")],
        &[],
        &[],
    )
    .await;
    reads_keys(&f, "by-env", &[AUTO], &["password"], &[]).await;
    reads_keys(&f, "by-items", &[AUTO], &[], &["tls"]).await;
    reads_keys(
        &f,
        "any-key",
        &[AUTO, (RELOAD_KEYS_ANNOTATION, "any")],
        &["password"],
        &[],
    )
    .await;
    f.deployment("whole", &[AUTO], &["db"], &[]).await;
    for name in ["by-env", "by-items", "any-key", "whole"] {
        f.baselined::<Deployment>(name).await;
    }

    // `user` changes: read whole by `whole`, and by `any-key` (the annotation).
    f.secret(
        "db",
        &[("password", "p1"), ("user", "u2"), ("tls", "t1")],
        &[],
        &[],
    )
    .await;
    f.expect_replica_sets("whole", 2).await;
    f.expect_replica_sets("any-key", 2).await;
    // The change was seen (both restarted); the key-level readers stay.
    assert_eq!(f.replica_sets("by-env").await, 1);
    assert_eq!(f.replica_sets("by-items").await, 1);

    // `password` changes: the env reader restarts, the volume reader does not.
    f.secret(
        "db",
        &[("password", "p2"), ("user", "u2"), ("tls", "t1")],
        &[],
        &[],
    )
    .await;
    f.expect_replica_sets("by-env", 2).await;
    assert_eq!(f.replica_sets("by-items").await, 1);

    // `tls` removed: the volume reader restarts (a key it reads went away).
    f.secret("db", &[("password", "p2"), ("user", "u2")], &[], &[])
        .await;
    f.expect_replica_sets("by-items", 2).await;
    assert_eq!(f.replica_sets("by-env").await, 2);
}
