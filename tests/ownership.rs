//! Ownership on the real control plane: kvsync deletes, freezes or rewrites
//! only Secrets it created, whatever the spec is changed to later
//! (docs/resource.md, "Lifecycle and ownership").
//!
//! The table runs every `creationPolicy` change — with and without a rename
//! of `target.name`, with `deletionPolicy` Retain and Delete — as rows of one
//! operator and one namespace, side by side. Each row has a foreign Secret
//! (cert-manager's, by its annotation): whatever happens, it never loses a
//! key, gains an ownerReference or becomes immutable; kvsync's own Secrets
//! go or stay as the documentation says.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{DeleteParams, PostParams};
use kvsync::api::KeyVaultSecret;
use reqwest::Method;
use serde_json::json;
use support::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Owner,
    Orphan,
    Merge,
}

/// One row: a policy change, with or without a rename, under a deletion policy.
#[derive(Debug, Clone, Copy)]
struct Row {
    from: Policy,
    to: Policy,
    rename: bool,
    delete: bool,
}

/// The foreign Secret's own data: what must never be lost.
fn certificate() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("tls.crt".into(), "certificate-bytes".into()),
        ("tls.key".into(), "key-bytes".into()),
    ])
}

/// Fails unless `secret` is the foreign Secret intact: its keys and values,
/// no ownerReference, not immutable.
fn assert_foreign_intact(secret: &Secret, what: &str) {
    let data = decoded(secret);
    for (key, value) in certificate() {
        assert_eq!(data.get(&key), Some(&value), "{what}: foreign key {key}");
    }
    assert!(
        secret.owner_references().is_empty(),
        "{what}: the foreign Secret gained an owner: {:?}",
        secret.owner_references()
    );
    assert_ne!(
        secret.immutable,
        Some(true),
        "{what}: the foreign Secret became immutable"
    );
    assert_eq!(
        secret.type_.as_deref(),
        Some("kubernetes.io/tls"),
        "{what}: type"
    );
}

/// Whether `secret` holds nothing of kvsync's: no key of its, no marker.
fn nothing_of_kvsyncs(secret: &Secret) -> bool {
    !decoded(secret).contains_key("pw")
        && !secret
            .annotations()
            .keys()
            .any(|k| k.starts_with("kvsync.io/"))
        && !secret.labels().contains_key("app.kubernetes.io/managed-by")
}

fn owned_by(secret: &Secret, kvs: &KeyVaultSecret) -> bool {
    secret
        .owner_references()
        .iter()
        .any(|r| Some(&r.uid) == kvs.metadata.uid.as_ref())
}

struct Table<'a> {
    f: &'a Fixture,
}

/// The app registration's client secret, as a Secret of the namespace.
const CREDENTIAL: &str = "kv-creds";

impl Table<'_> {
    /// Rows read vault secrets of their own, which only the app registration
    /// `SECRET_APP` may read (the federated service account reads the seed's).
    async fn new(f: &Fixture) -> Table<'_> {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": CREDENTIAL},
            "stringData": {"clientSecret": SECRET_APP_PASSWORD},
        }))
        .unwrap();
        f.secrets()
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        Table { f }
    }

    fn app_credential(&self) -> serde_json::Value {
        json!({"clientSecret": {"tenantId": TENANT, "clientId": SECRET_APP,
            "secretRef": {"name": CREDENTIAL, "key": "clientSecret"}}})
    }

    async fn secret(&self, name: &str) -> Option<Secret> {
        self.f.secrets().get_opt(name).await.unwrap()
    }

    async fn create_foreign(&self, name: &str) {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {"cert-manager.io/certificate-name": name}},
            "type": "kubernetes.io/tls",
            "stringData": certificate(),
        }))
        .unwrap();
        self.f
            .secrets()
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }

    /// Waits until the object's status describes its current spec with
    /// Ready `reason`; returns the object.
    async fn settled(&self, name: &str, reason: &str) -> KeyVaultSecret {
        let api = self.f.kvs_api();
        eventually(&format!("{name} to settle as {reason}"), WAIT, || async {
            let kvs = api.get(name).await.ok()?;
            let status = kvs.status.as_ref()?;
            (status.observed_generation == kvs.metadata.generation
                && ready(&kvs).map(|c| c.reason.as_str()) == Some(reason))
            .then_some(kvs)
        })
        .await
    }

    async fn gone(&self, name: &str, what: &str) {
        eventually(what, WAIT, || async {
            self.secret(name).await.is_none().then_some(())
        })
        .await;
    }

    async fn run(&self, index: usize, row: Row) {
        let p = format!("r{index}");
        let what = format!("{row:?}");
        let (kvs, foreign, own, new) = (
            p.clone(),
            format!("{p}-cert"),
            format!("{p}-own"),
            format!("{p}-new"),
        );
        let value = format!("{p}-vault-value");
        self.f
            .emulator
            .set_secret("shop", &format!("{p}-pw"), &value)
            .await;
        self.create_foreign(&foreign).await;
        let first = if row.from == Policy::Merge {
            &foreign
        } else {
            &own
        };
        let second = match (row.rename, row.to) {
            (false, _) => first,
            (true, Policy::Merge) => &foreign,
            (true, _) => &new,
        };
        let spec = |target: &str, policy: Policy| {
            json!({
                "target": {
                    "name": target,
                    "creationPolicy": format!("{policy:?}"),
                    "deletionPolicy": if row.delete { "Delete" } else { "Retain" },
                },
                "data": [{"secretKey": "pw", "remoteRef": {"name": format!("{p}-pw")}}],
                "auth": self.app_credential(),
            })
        };
        self.f.apply(&kvs, spec(first, row.from)).await;
        self.settled(&kvs, "Synced").await;
        assert_eq!(
            decoded(&self.secret(first).await.unwrap())["pw"],
            value,
            "{what}: first target"
        );

        // The change. Owner or Orphan onto the Secret it merged into is
        // refused: kvsync does not take over what it did not create.
        self.f.apply(&kvs, spec(second, row.to)).await;
        let refused = !row.rename && row.from == Policy::Merge;
        let object = if refused {
            let object = self.settled(&kvs, "SecretConflict").await;
            let message = &ready(&object).unwrap().message;
            assert!(
                message.contains(&foreign) && message.contains("not created by kvsync"),
                "{what}: {message}"
            );
            object
        } else {
            self.settled(&kvs, "Synced").await
        };
        let foreign_now = self.secret(&foreign).await.unwrap();
        assert_foreign_intact(&foreign_now, &format!("{what}, after the change"));
        let target = self.secret(second).await.unwrap();
        assert_eq!(
            decoded(&target)["pw"],
            value,
            "{what}: the target holds the data"
        );
        assert_eq!(
            owned_by(&target, &object),
            row.to == Policy::Owner && second != &foreign && !refused,
            "{what}: an ownerReference only on a Secret kvsync created, under Owner"
        );
        if row.rename {
            // The old target, let go of as kvsync came by it.
            match row.from {
                Policy::Owner => {
                    self.gone(first, &format!("{what}: old target deleted"))
                        .await
                }
                Policy::Orphan => {
                    let kept = self.secret(first).await.unwrap();
                    assert_eq!(decoded(&kept)["pw"], value, "{what}: released, data kept");
                    assert!(nothing_of_kvsyncs(&Secret { data: None, ..kept }));
                }
                Policy::Merge => assert!(
                    nothing_of_kvsyncs(&foreign_now),
                    "{what}: kvsync's key and markers withdrawn from the foreign Secret"
                ),
            }
        }
        if row.delete {
            self.f
                .emulator
                .control(Method::DELETE, &format!("vaults/shop/secrets/{p}-pw"), None)
                .await;
            self.f.force_sync(&kvs, "remote-deleted").await;
            self.f.wait_reason(&kvs, "RemoteDeleted").await;
            if second == &foreign {
                let foreign_now = self.secret(&foreign).await.unwrap();
                assert_foreign_intact(&foreign_now, &format!("{what}, remote deleted"));
                assert!(
                    nothing_of_kvsyncs(&foreign_now),
                    "{what}: only kvsync's key left the foreign Secret"
                );
            } else {
                self.gone(second, &format!("{what}: kvsync's own target deleted"))
                    .await;
            }
        }

        // The object deleted: what it merged into is given back, what it
        // created under Owner goes with it, anything else of its stays.
        self.f
            .kvs_api()
            .delete(&kvs, &DeleteParams::default())
            .await
            .unwrap();
        eventually(&format!("{what}: {kvs} deleted"), WAIT, || async {
            self.f
                .kvs_api()
                .get_opt(&kvs)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
        let foreign_now = self.secret(&foreign).await.unwrap();
        assert_foreign_intact(&foreign_now, &format!("{what}, object deleted"));
        assert!(
            nothing_of_kvsyncs(&foreign_now),
            "{what}: nothing of kvsync's left in the foreign Secret"
        );
        if second != &foreign && !row.delete {
            if row.to == Policy::Owner {
                self.gone(second, &format!("{what}: collected with its owner"))
                    .await;
            } else {
                assert!(
                    self.secret(second).await.is_some(),
                    "{what}: a Secret kvsync created without an ownerReference stays"
                );
            }
        }
    }
}

fn rows() -> Vec<Row> {
    use Policy::*;
    let changes = [
        (Merge, Owner),
        (Orphan, Owner),
        (Owner, Merge),
        (Owner, Orphan),
        (Merge, Orphan),
    ];
    let mut rows = Vec::new();
    for (from, to) in changes {
        for rename in [false, true] {
            for delete in [false, true] {
                rows.push(Row {
                    from,
                    to,
                    rename,
                    delete,
                });
            }
        }
    }
    rows
}

#[tokio::test]
async fn every_policy_change_keeps_foreign_secrets_whole_and_cleans_up_kvsyncs_own() {
    let f = Fixture::new("ownership").await;
    let table = Table::new(&f).await;
    join_all(
        rows()
            .into_iter()
            .enumerate()
            .map(|(index, row)| table.run(index, row)),
    )
    .await;
}

#[tokio::test]
async fn the_issues_scenarios() {
    let f = Fixture::new("ownership-issue").await;
    let t = Table::new(&f).await;
    let pw = json!([{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]);

    // Merge into cert-manager's Secret, then renamed with Owner in one patch:
    // the certificate stays, only kvsync's key leaves it.
    t.create_foreign("web-tls").await;
    f.apply(
        "merger",
        json!({"target": {"name": "web-tls", "creationPolicy": "Merge"}, "data": pw}),
    )
    .await;
    t.settled("merger", "Synced").await;
    f.apply(
        "merger",
        json!({"target": {"name": "merger-own", "creationPolicy": "Owner"}, "data": pw}),
    )
    .await;
    t.settled("merger", "Synced").await;
    let cert = t.secret("web-tls").await.unwrap();
    assert_foreign_intact(&cert, "merged, then renamed with Owner");
    assert!(nothing_of_kvsyncs(&cert));

    // Merge with immutable: refused, the foreign Secret not frozen.
    t.create_foreign("api-tls").await;
    f.apply(
        "freezer",
        json!({"target": {"name": "api-tls", "creationPolicy": "Merge", "immutable": true}, "data": pw}),
    )
    .await;
    t.settled("freezer", "InvalidSpec").await;
    let cert = t.secret("api-tls").await.unwrap();
    assert_foreign_intact(&cert, "Merge with immutable");
    assert!(nothing_of_kvsyncs(&cert));

    // An Owner object renamed onto a name a foreign Secret holds: the old
    // Secret keeps the data, the condition names the new one and the reason.
    f.apply("mover", json!({"target": {"name": "mover-a"}, "data": pw}))
        .await;
    t.settled("mover", "Synced").await;
    t.create_foreign("taken-tls").await;
    f.apply(
        "mover",
        json!({"target": {"name": "taken-tls"}, "data": pw}),
    )
    .await;
    let refused = t.settled("mover", "SecretConflict").await;
    let message = &ready(&refused).unwrap().message;
    assert!(message.contains("taken-tls"), "{message}");
    assert_eq!(
        decoded(&t.secret("mover-a").await.unwrap())["pw"],
        "s3cr3t-db-value",
        "the old Secret still holds the data"
    );
    let taken = t.secret("taken-tls").await.unwrap();
    assert_foreign_intact(&taken, "rename onto a taken name");
    assert!(nothing_of_kvsyncs(&taken));
    // The name freed, the rename completes: new first, then the old goes.
    f.secrets()
        .delete("taken-tls", &DeleteParams::default())
        .await
        .unwrap();
    t.settled("mover", "Synced").await;
    assert_eq!(
        decoded(&t.secret("taken-tls").await.unwrap())["pw"],
        "s3cr3t-db-value"
    );
    t.gone("mover-a", "the old target deleted after the rename")
        .await;
}

/// Someone with RBAC on keyvaultsecrets/status forges the ownership record
/// ("kvsync created the foreign Secret"), then asks for Owner on it: kvsync
/// still refuses, and gives back only its own key when the object goes.
#[tokio::test]
async fn a_forged_ownership_record_gains_nothing() {
    let f = Fixture::new("ownership-forged").await;
    let t = Table::new(&f).await;
    let pw = json!([{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]);
    t.create_foreign("forged-tls").await;
    let merging = |policy: &str| json!({"target": {"name": "forged-tls", "creationPolicy": policy, "deletionPolicy": "Delete"}, "data": pw});
    f.apply("forger", merging("Merge")).await;
    let merged = t.settled("forger", "Synced").await;
    let record = &merged.status.as_ref().unwrap().targets;
    let uid = t.secret("forged-tls").await.unwrap().uid().unwrap();
    assert_eq!(
        serde_json::to_value(record).unwrap(),
        json!([{"secretName": "forged-tls", "uid": uid, "how": "Merged"}]),
        "the record says kvsync merged into it"
    );

    let forged = json!({"status": {"targets": [{"secretName": "forged-tls", "uid": uid, "how": "Created"}]}});
    f.kvs_api()
        .patch_status(
            "forger",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&forged),
        )
        .await
        .unwrap();
    f.apply("forger", merging("Owner")).await;
    let refused = t.settled("forger", "SecretConflict").await;
    assert!(
        ready(&refused)
            .unwrap()
            .message
            .contains("not created by kvsync"),
        "{:?}",
        ready(&refused)
    );
    let cert = t.secret("forged-tls").await.unwrap();
    assert_foreign_intact(&cert, "a forged record");
    assert_eq!(decoded(&cert)["pw"], "s3cr3t-db-value", "nothing rewritten");

    f.kvs_api()
        .delete("forger", &DeleteParams::default())
        .await
        .unwrap();
    eventually("forger deleted", WAIT, || async {
        f.kvs_api()
            .get_opt("forger")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let cert = t.secret("forged-tls").await.unwrap();
    assert_foreign_intact(&cert, "a forged record, object deleted");
    assert!(nothing_of_kvsyncs(&cert), "only kvsync's key given back");
}
