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
