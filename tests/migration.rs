//! What an ESO user migrating to kvsync relies on, end to end against the
//! control plane and the emulator: templates (inline and from a ConfigMap),
//! key shaping, tag metadata, immutability and what happens when the remote
//! secret is deleted.

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::*;

fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn apply_config_map(f: &Fixture, name: &str, data: serde_json::Value) {
    let body =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data});
    Api::<ConfigMap>::namespaced(f.client.clone(), &f.ns.name)
        .patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn templates_render_from_spec_and_config_map_and_fail_safely() {
    let f = Fixture::new("templates").await;
    // The ConfigMap appears after the object: the sync waits for it (InvalidSpec), then renders.
    f.apply(
        "app",
        json!({
            "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}],
            "dataFrom": [{"extract": {"name": "app-config"}}],
            "target": {"template": {
                "mergePolicy": "Merge",
                "data": {"url": "postgres://{{ user }}:{{ pw }}@db:{{ port }}/shop"},
                "templateFrom": [{"configMap": {"name": "app-templates", "items": [{"key": "app.conf"}]}}]
            }}
        }),
    )
    .await;
    let waiting = f.wait_reason("app", "InvalidSpec").await;
    assert!(
        ready(&waiting)
            .unwrap()
            .message
            .contains("ConfigMap app-templates does not exist"),
        "{:?}",
        ready(&waiting)
    );
    apply_config_map(
        &f,
        "app-templates",
        json!({"app.conf": "user={{ user | upper }}\npw={{ pw | b64enc }}\n"}),
    )
    .await;
    f.wait_reason("app", "Synced").await;
    let expected = strings(&[
        ("url", "postgres://app:s3cr3t-db-value@db:5432/shop"),
        ("app.conf", "user=APP\npw=czNjcjN0LWRiLXZhbHVl\n"),
        ("pw", "s3cr3t-db-value"),
        ("user", "app"),
        ("port", "5432"),
    ]);
    assert_eq!(
        f.secret_data("app").await.unwrap(),
        expected,
        "Merge: rendered and fetched keys"
    );

    // Editing the ConfigMap re-renders (the source is watched).
    apply_config_map(
        &f,
        "app-templates",
        json!({"app.conf": "user={{ user }}\n"}),
    )
    .await;
    eventually("the edited template to be rendered", WAIT, || async {
        (f.secret_data("app").await?.get("app.conf")? == "user=app\n").then_some(())
    })
    .await;
    let good = f.secret_data("app").await.unwrap();

    // A template that fails on the values: TemplateFailed, the Secret keeps its data, no value shown.
    apply_config_map(
        &f,
        "app-templates",
        json!({"app.conf": "line one\n{{ pw | b64dec }}"}),
    )
    .await;
    let failed = f.wait_reason("app", "TemplateFailed").await;
    let message = &ready(&failed).unwrap().message;
    assert!(
        message.contains("\"app.conf\"") && message.contains("line 2"),
        "{message}"
    );
    assert_eq!(
        f.secret_data("app").await.unwrap(),
        good,
        "the last good Secret stays"
    );

    // A syntax error in the spec: InvalidSpec before any vault read.
    f.apply(
        "app",
        json!({
            "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}],
            "target": {"template": {"data": {"broken": "{{ pw | }}"}}}
        }),
    )
    .await;
    let invalid = f.wait_reason("app", "InvalidSpec").await;
    assert!(
        ready(&invalid).unwrap().message.contains("\"broken\""),
        "{:?}",
        ready(&invalid)
    );
    assert_eq!(f.secret_data("app").await.unwrap(), good);
    f.assert_nothing_leaked(&["czNjcjN0LWRiLXZhbHVl"]).await;
}

#[tokio::test]
async fn keys_are_shaped_tags_fetched_and_deletion_policies_followed() {
    let f = Fixture::new("shaping").await;
    f.emulator
        .control(
            reqwest::Method::PUT,
            "vaults/shop/secrets/app-config",
            Some(
                json!({"value": r#"{"user name":"app","port":5432}"#, "tags": {"owner": "team-a"}}),
            ),
        )
        .await;
    f.apply(
        "shaped",
        json!({
            "refreshInterval": "1s",
            "target": {"deletionPolicy": "Merge"},
            "data": [
                {"secretKey": "owner", "remoteRef": {"name": "app-config", "metadataPolicy": "Fetch", "property": "owner"}},
                {"secretKey": "tags", "remoteRef": {"name": "app-config", "metadataPolicy": "Fetch"}}
            ],
            "dataFrom": [
                {"extract": {"name": "json-blob", "property": "db"}, "rewrite": [{"regexp": {"source": "^(.*)$", "target": "DB_$1"}}]},
                {"find": {"nameRegex": "^app-(alpha|beta)$"}, "rewrite": [
                    {"regexp": {"source": "^app-", "target": "x-"}},
                    {"regexp": {"source": "^x-", "target": "X_"}}
                ]},
                {"extract": {"name": "app-config"}, "conversionStrategy": "Unicode"}
            ]
        }),
    )
    .await;
    f.wait_reason("shaped", "Synced").await;
    let expected = strings(&[
        ("owner", "team-a"),
        ("tags", r#"{"owner":"team-a"}"#),
        ("DB_password", "nested-pw"),
        ("X_alpha", "alpha-val"),
        ("X_beta", "beta-val"),
        ("user_U0020_name", "app"),
        ("port", "5432"),
    ]);
    assert_eq!(f.secret_data("shaped").await.unwrap(), expected);

    // An immutable target with deletionPolicy Delete.
    f.apply(
        "frozen",
        json!({
            "refreshInterval": "1s",
            "target": {"immutable": true, "deletionPolicy": "Delete"},
            "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]
        }),
    )
    .await;
    f.wait_reason("frozen", "Synced").await;
    let frozen = f.secrets().get("frozen").await.unwrap();
    assert_eq!(frozen.immutable, Some(true));

    // Merge: a deleted remote secret's keys leave, the rest stays, still Synced.
    f.emulator
        .control(
            reqwest::Method::DELETE,
            "vaults/shop/secrets/json-blob",
            None,
        )
        .await;
    eventually("DB_password to leave the Secret", WAIT, || async {
        let data = f.secret_data("shaped").await?;
        (!data.contains_key("DB_password") && data.len() == expected.len() - 1).then_some(())
    })
    .await;
    f.wait_reason("shaped", "Synced").await;

    // Immutable: a rotation is reported, not written.
    f.emulator
        .set_secret("shop", "db-password", "rotated-value")
        .await;
    f.wait_reason("frozen", "SecretImmutable").await;
    assert_eq!(f.secrets().get("frozen").await.unwrap().data, frozen.data);

    // Delete: with its only remote secret gone, the Secret goes too.
    f.emulator
        .control(
            reqwest::Method::DELETE,
            "vaults/shop/secrets/db-password",
            None,
        )
        .await;
    f.wait_reason("frozen", "RemoteDeleted").await;
    eventually("the frozen Secret to be deleted", WAIT, || async {
        f.secrets()
            .get_opt("frozen")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    f.assert_nothing_leaked(&["rotated-value", "team-a"]).await;
}
