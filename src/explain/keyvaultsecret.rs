//! Explains one KeyVaultSecret: where each Secret key comes from, what is in
//! the Secret now (versions, not values), when the vault is read again, the
//! `Ready` condition with what to do, and which workloads restart when the
//! Secret changes. Pure: takes the objects, returns the report.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::report::{
    ConditionView, KeySource, KeyVaultSecretReport, Refresh, TemplateUse, WorkloadReaction,
};
use super::template::{TemplateText, trace, variables};
use super::workload::verdict;
use crate::api::contract::{FORCE_SYNC_ANNOTATION, reloader};
use crate::api::{DataFromSource, DecodingStrategy, KeyVaultSecret, MergePolicy, SyncedVersions};
use crate::reload::annotations::ResourceFlags;
use crate::reload::index::WorkloadObservation;
use crate::reload::kinds::ResourceRef;

/// The target Secret as explain sees it: metadata and key names, no values.
#[derive(Clone, Debug, Default)]
pub struct TargetSecret {
    pub metadata: ObjectMeta,
    pub keys: Vec<String>,
}

/// Explains `kvs`, given its target Secret (`None`: absent or unreadable),
/// its templates (as the sync stage applies them) and the workloads of its
/// namespace.
pub fn explain(
    kvs: &KeyVaultSecret,
    secret: Option<&TargetSecret>,
    templates: &[TemplateText],
    workloads: &[WorkloadObservation],
    limits: Vec<String>,
) -> KeyVaultSecretReport {
    let status = kvs.status.clone().unwrap_or_default();
    let target = kvs.target_name();
    let annotations = secret
        .and_then(|s| s.metadata.annotations.clone())
        .unwrap_or_default();
    let flags = ResourceFlags::from_annotations(&annotations);
    let resource = ResourceRef::secret(target.clone());
    let restarts = workloads
        .iter()
        .filter_map(|workload| {
            let used = workload.state.uses.contains_key(&resource);
            let (reacts, why) = verdict(&workload.state.policy, &resource, used, flags);
            reacts.then(|| WorkloadReaction {
                workload: format!(
                    "{}/{}",
                    workload.workload.kind.as_str(),
                    workload.workload.name
                ),
                rule: why,
            })
        })
        .collect();
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| {
            let current = status.observed_generation == kvs.metadata.generation;
            ConditionView {
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                since: super::render::kube_time(&c.last_transition_time),
                current,
                what_to_do: what_to_do(&c.status, current),
            }
        });
    KeyVaultSecretReport {
        kind: "KeyVaultSecret",
        namespace: kvs.metadata.namespace.clone().unwrap_or_default(),
        name: kvs.metadata.name.clone().unwrap_or_default(),
        vault_url: kvs.spec.vault_url.clone(),
        secret: target,
        secret_exists: secret.is_some(),
        keys: match &kvs.spec.target.template {
            Some(template) => with_templates(
                key_sources(kvs, &status.synced_versions),
                templates,
                template.merge_policy,
                secret.map(|s| s.keys.as_slice()),
            ),
            None => per_key(
                key_sources(kvs, &status.synced_versions),
                secret.map(|s| s.keys.as_slice()),
            ),
        },
        merge_policy: kvs
            .spec
            .target
            .template
            .as_ref()
            .map(|t| format!("{:?}", t.merge_policy)),
        refresh: refresh(kvs),
        condition,
        last_sync_time: status.last_sync_time.as_ref().map(super::render::kube_time),
        reload_marked: annotations
            .get(reloader::MATCH)
            .is_some_and(|v| v == "true"),
        restarts,
        rollout: status.rollout.clone(),
        limits,
    }
}

/// Whether a source names the one Secret key it makes (a `data` entry and
/// its previous-value key).
fn names_its_key(source: &KeySource) -> bool {
    matches!(source.from, "data" | "data.previousSecretKey")
}

/// The spec's sources attributed to the Secret's actual keys (`None`: the
/// Secret could not be read, so the sources are listed as the spec has them).
/// A `data` entry names its key, a certificate makes `tls.crt`/`tls.key`,
/// `find` names a key after the vault secret it read, and `extract` makes the
/// rest; a key none of them made is someone else's (`creationPolicy: Merge`).
/// Sources whose key is not in the Secret follow, marked so.
fn per_key(sources: Vec<KeySource>, keys: Option<&[String]>) -> Vec<KeySource> {
    let Some(keys) = keys else {
        return sources;
    };
    let source_of = |key: &str| -> Option<KeySource> {
        let by_from = |from: &str| sources.iter().find(|s| s.from == from);
        let found = sources
            .iter()
            .find(|s| names_its_key(s) && s.key == key)
            .or_else(|| {
                by_from("dataFrom.certificate").filter(|_| key == "tls.crt" || key == "tls.key")
            })
            .or_else(|| {
                by_from("dataFrom.find").filter(|s| s.synced.keys().any(|name| name == key))
            })
            .or_else(|| by_from("dataFrom.extract"))?;
        let mut source = found.clone();
        if source.from == "dataFrom.find" {
            source.synced.retain(|name, _| name == key);
        }
        source.key = key.to_owned();
        Some(source)
    };
    let mut attributed: Vec<KeySource> = keys
        .iter()
        .map(|key| {
            source_of(key).unwrap_or_else(|| KeySource {
                key: key.clone(),
                from: "another writer",
                vault_secret: "-".to_owned(),
                version: "-".to_owned(),
                property: None,
                decoding: "-".to_owned(),
                synced: BTreeMap::new(),
                in_secret: true,
                template: None,
            })
        })
        .collect();
    let made = |source: &KeySource| {
        attributed
            .iter()
            .any(|a| a.from == source.from && a.vault_secret == source.vault_secret)
    };
    let missing: Vec<KeySource> = sources
        .iter()
        .filter(|s| {
            let produced = if names_its_key(s) {
                keys.contains(&s.key)
            } else {
                made(s)
            };
            !produced
        })
        .map(|s| KeySource {
            in_secret: false,
            ..s.clone()
        })
        .collect();
    attributed.extend(missing);
    attributed
}

/// With `target.template`: each rendered key (the last template for a key
/// wins, as in the sync stage) with the variables it reads, then the
/// fetched keys — in the Secret too under `Merge` (unless rendered over),
/// read by the templates only under `Replace`.
fn with_templates(
    sources: Vec<KeySource>,
    templates: &[TemplateText],
    policy: MergePolicy,
    keys: Option<&[String]>,
) -> Vec<KeySource> {
    let last: BTreeMap<&str, &TemplateText> =
        templates.iter().map(|t| (t.key.as_str(), t)).collect();
    let mut out: Vec<KeySource> = last
        .values()
        .map(|template| rendered(template, &sources, keys))
        .collect();
    match policy {
        MergePolicy::Merge => {
            let fetched: Option<Vec<String>> = keys.map(|keys| {
                keys.iter()
                    .filter(|k| !last.contains_key(k.as_str()))
                    .cloned()
                    .collect()
            });
            let fetched_sources = sources
                .into_iter()
                .filter(|s| !(s.from == "data" && last.contains_key(s.key.as_str())))
                .collect();
            out.extend(per_key(fetched_sources, fetched.as_deref()));
        }
        MergePolicy::Replace => out.extend(sources.into_iter().map(|s| KeySource {
            in_secret: false,
            ..s
        })),
    }
    out
}

/// The Secret key `template` renders, traced through its variables.
fn rendered(template: &TemplateText, sources: &[KeySource], keys: Option<&[String]>) -> KeySource {
    let parsed = template.text.clone().and_then(|text| variables(&text));
    let (variables, unknown) = match parsed {
        Ok(names) => (names.iter().map(|v| trace(v, sources)).collect(), None),
        Err(why) => (Vec::new(), Some(why.to_string())),
    };
    let vault_secrets: std::collections::BTreeSet<String> = variables
        .iter()
        .filter_map(|v: &super::report::TemplateVariable| v.vault_secret.clone())
        .collect();
    let synced = sources
        .iter()
        .flat_map(|s| &s.synced)
        .filter(|(name, _)| vault_secrets.contains(name.split('@').next().unwrap_or_default()))
        .map(|(name, version)| (name.clone(), version.clone()))
        .collect();
    let names: Vec<&str> = vault_secrets.iter().map(String::as_str).collect();
    KeySource {
        key: template.key.clone(),
        from: "target.template",
        vault_secret: if names.is_empty() {
            "-".to_owned()
        } else {
            names.join(", ")
        },
        version: "-".to_owned(),
        property: None,
        decoding: "-".to_owned(),
        synced,
        in_secret: keys.is_none_or(|keys| keys.contains(&template.key)),
        template: Some(TemplateUse {
            origin: template.origin.clone(),
            variables,
            unknown,
        }),
    }
}

fn what_to_do(status: &str, current: bool) -> String {
    match (status, current) {
        (_, false) => "wait: the spec changed and kvsync has not synced it yet".to_owned(),
        ("True", true) => "nothing: the Secret holds the vault's current values".to_owned(),
        _ => "fix what the message names (docs/operating.md, \"Troubleshooting by condition reason\"); \
              kvsync notices spec, credential and service-account fixes at once and retries vault errors with backoff"
            .to_owned(),
    }
}

fn refresh(kvs: &KeyVaultSecret) -> Refresh {
    let interval = kvs
        .spec
        .refresh_interval
        .clone()
        .unwrap_or_else(|| "1h".to_owned());
    let next = match kvs.spec.refresh_interval() {
        Ok(Some(every)) => crate::vault_events::explain_next_read(
            format!(
                "about {} (±10%) after each check; at once on a spec change, a new {FORCE_SYNC_ANNOTATION} value or a vault change seen by the listing",
                humantime::format_duration(every)
            ),
            &kvs.spec.vault_url,
        ),
        Ok(None) => format!(
            "never: refreshInterval 0 syncs once (again on a spec change or a new {FORCE_SYNC_ANNOTATION} value)"
        ),
        Err(error) => format!("never: {error}"),
    };
    Refresh { interval, next }
}

fn decoding(strategy: DecodingStrategy) -> String {
    format!("{strategy:?}")
}

fn version(pinned: &Option<String>) -> String {
    match pinned.as_deref() {
        None | Some("") => "latest".to_owned(),
        Some(version) => format!("pinned {version}"),
    }
}

/// `status.syncedVersions` entries of vault secret `name` (`name` or `name@version`).
fn synced(synced: &SyncedVersions, name: &str) -> BTreeMap<String, String> {
    synced
        .iter()
        .filter(|(key, _)| key.split('@').next() == Some(name))
        .map(|(key, version)| (key.clone(), version.clone()))
        .collect()
}

fn key_sources(kvs: &KeyVaultSecret, versions: &SyncedVersions) -> Vec<KeySource> {
    let mut named = Vec::new();
    let mut sources: Vec<KeySource> = Vec::new();
    for entry in &kvs.spec.data {
        let remote = &entry.remote_ref;
        named.push(remote.name.clone());
        let source = KeySource {
            key: entry.secret_key.clone(),
            from: "data",
            vault_secret: remote.name.clone(),
            version: version(&remote.version),
            property: remote.property.clone(),
            decoding: decoding(remote.decoding_strategy),
            synced: synced(versions, &remote.name),
            in_secret: true,
            template: None,
        };
        // The previous enabled version, beside the current one.
        let previous = entry.previous_secret_key.as_ref().map(|key| KeySource {
            key: key.clone(),
            from: "data.previousSecretKey",
            version: "the enabled version before the current one".to_owned(),
            ..source.clone()
        });
        sources.push(source);
        sources.extend(previous);
    }
    let mut finds = Vec::new();
    for entry in &kvs.spec.data_from {
        match entry.source() {
            Some(DataFromSource::Extract(extract)) => {
                named.push(extract.name.clone());
                sources.push(KeySource {
                    key: format!("<each top-level field of {}>", extract.name),
                    from: "dataFrom.extract",
                    vault_secret: extract.name.clone(),
                    version: version(&extract.version),
                    property: None,
                    decoding: decoding(extract.decoding_strategy),
                    synced: synced(versions, &extract.name),
                    in_secret: true,
                    template: None,
                });
            }
            Some(DataFromSource::Certificate(certificate)) => {
                named.push(certificate.name.clone());
                sources.push(KeySource {
                    key: "tls.crt, tls.key".to_owned(),
                    from: "dataFrom.certificate",
                    vault_secret: certificate.name.clone(),
                    version: version(&certificate.version),
                    property: None,
                    decoding: "certificate (PEM or PKCS#12)".to_owned(),
                    synced: synced(versions, &certificate.name),
                    in_secret: true,
                    template: None,
                });
            }
            Some(DataFromSource::Find(find)) => finds.push(find),
            None => {}
        }
    }
    // What `find` read is whatever the other entries did not name.
    let found: BTreeMap<String, String> = versions
        .iter()
        .filter(|(key, _)| !named.iter().any(|n| key.split('@').next() == Some(n)))
        .map(|(key, version)| (key.clone(), version.clone()))
        .collect();
    for find in finds {
        let mut filter = Vec::new();
        if let Some(regex) = &find.name_regex {
            filter.push(format!("name ~ /{regex}/"));
        }
        filter.extend(find.tags.iter().map(|(k, v)| format!("tag {k}={v}")));
        if filter.is_empty() {
            filter.push("every enabled secret".to_owned());
        }
        sources.push(KeySource {
            key: "<one key per matching secret, named like it>".to_owned(),
            from: "dataFrom.find",
            vault_secret: filter.join(", "),
            version: version(&None),
            property: None,
            decoding: decoding(find.decoding_strategy),
            synced: found.clone(),
            in_secret: true,
            template: None,
        });
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::template::TemplateProblem;
    use crate::reload::observe::observe_workload;
    use k8s_openapi::api::apps::v1::Deployment;
    use serde_json::json;

    fn kvs() -> KeyVaultSecret {
        serde_json::from_value(json!({
            "apiVersion": "kvsync.io/v1alpha1", "kind": "KeyVaultSecret",
            "metadata": {"name": "db", "namespace": "shop", "generation": 2},
            "spec": {
                "vaultUrl": "https://shop.vault.azure.net/",
                "auth": {"workloadIdentity": {}},
                "refreshInterval": "15m",
                "data": [{"secretKey": "password", "remoteRef": {"name": "db-password"}},
                         {"secretKey": "user", "remoteRef": {"name": "app-config", "property": "user",
                                                             "version": "0123456789abcdef0123456789abcdef"}}],
                "dataFrom": [{"find": {"tags": {"env": "prod"}, "decodingStrategy": "Auto"}}]
            },
            "status": {
                "observedGeneration": 2,
                "syncedVersions": {"db-password": "v1", "app-config@0123456789abcdef0123456789abcdef": "0123456789abcdef0123456789abcdef", "app-alpha": "v7"},
                "lastSyncTime": "2026-11-29T10:00:00Z",
                "conditions": [{"type": "Ready", "status": "False", "reason": "RemoteNotFound",
                                "message": "secret x not found; create the secret in Key Vault or fix the name/version",
                                "lastTransitionTime": "2026-11-29T11:00:00Z"}]
            }
        }))
        .unwrap()
    }

    fn workload(name: &str, annotations: serde_json::Value) -> WorkloadObservation {
        let object: Deployment = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "annotations": annotations},
            "spec": {"selector": {}, "template": {"spec": {"containers": [{
                "name": "app", "envFrom": [{"secretRef": {"name": "db"}}]}]}}}
        }))
        .unwrap();
        observe_workload(&object).unwrap()
    }

    #[test]
    fn keys_name_their_sources_and_the_versions_synced() {
        let report = explain(&kvs(), None, &[], &[], Vec::new());
        let keys: Vec<(&str, &str, &str, BTreeMap<String, String>)> = report
            .keys
            .iter()
            .map(|k| {
                (
                    k.key.as_str(),
                    k.vault_secret.as_str(),
                    k.version.as_str(),
                    k.synced.clone(),
                )
            })
            .collect();
        assert_eq!(
            keys[0],
            (
                "password",
                "db-password",
                "latest",
                [("db-password".into(), "v1".into())].into()
            )
        );
        assert_eq!(keys[1].2, "pinned 0123456789abcdef0123456789abcdef");
        assert_eq!(report.keys[1].property.as_deref(), Some("user"));
        assert_eq!(keys[2].1, "tag env=prod");
        assert_eq!(
            keys[2].3,
            [("app-alpha".to_owned(), "v7".to_owned())].into(),
            "find read what the others did not name"
        );
        let condition = report.condition.unwrap();
        assert_eq!(condition.reason, "RemoteNotFound");
        assert!(
            condition
                .what_to_do
                .starts_with("fix what the message names")
        );
        assert!(!report.secret_exists);
        assert!(report.refresh.next.starts_with("about 15m (±10%)"));
    }

    #[test]
    fn workloads_that_restart_are_listed_with_their_rule() {
        let secret = TargetSecret {
            metadata: ObjectMeta {
                annotations: Some([(reloader::MATCH.to_owned(), "true".to_owned())].into()),
                ..Default::default()
            },
            keys: vec!["password".into()],
        };
        let workloads = [
            workload("auto", json!({"reloader.stakater.com/auto": "true"})),
            workload("search", json!({"reloader.stakater.com/search": "true"})),
            workload("plain", json!({})),
            workload(
                "excluded",
                json!({"reloader.stakater.com/auto": "true",
                                        "secrets.exclude.reloader.stakater.com/reload": "db"}),
            ),
        ];
        let report = explain(&kvs(), Some(&secret), &[], &workloads, Vec::new());
        let names: Vec<&str> = report
            .restarts
            .iter()
            .map(|r| r.workload.as_str())
            .collect();
        assert_eq!(names, ["Deployment/auto", "Deployment/search"]);
        assert!(report.reload_marked);
        assert!(report.secret_exists);
    }

    #[test]
    fn the_secret_keys_are_attributed_to_their_sources() {
        let secret = TargetSecret {
            metadata: ObjectMeta::default(),
            keys: ["app-alpha", "foreign", "password"]
                .map(String::from)
                .to_vec(),
        };
        let report = explain(&kvs(), Some(&secret), &[], &[], Vec::new());
        let keys: Vec<(&str, &str, bool)> = report
            .keys
            .iter()
            .map(|k| (k.key.as_str(), k.from, k.in_secret))
            .collect();
        assert_eq!(
            keys,
            [
                ("app-alpha", "dataFrom.find", true),
                ("foreign", "another writer", true),
                ("password", "data", true),
                ("user", "data", false),
            ]
        );
        assert_eq!(
            report.keys[0].synced,
            [("app-alpha".to_owned(), "v7".to_owned())].into()
        );
    }

    #[test]
    fn a_previous_value_key_is_attributed_to_its_data_entry() {
        let mut kvs = kvs();
        kvs.spec.data[0].previous_secret_key = Some("password-previous".into());
        let secret = TargetSecret {
            metadata: ObjectMeta::default(),
            keys: ["password", "password-previous"].map(String::from).to_vec(),
        };
        let report = explain(&kvs, Some(&secret), &[], &[], Vec::new());
        let previous = report
            .keys
            .iter()
            .find(|k| k.key == "password-previous")
            .expect("listed");
        assert_eq!(
            (
                previous.from,
                previous.vault_secret.as_str(),
                previous.in_secret
            ),
            ("data.previousSecretKey", "db-password", true)
        );
    }

    #[test]
    fn rendered_keys_name_their_template_and_the_vault_secrets_it_reads() {
        let mut kvs = kvs();
        kvs.spec.target.template = Some(
            serde_json::from_value(json!({
                "data": {"dsn": "{{ user }}:{{ password | b64enc }}@{{ host }}"},
                "templateFrom": [{"configMap": {"name": "tpl", "items": [{"key": "dsn"}, {"key": "all"}]}}]
            }))
            .unwrap(),
        );
        let templates = [
            TemplateText {
                key: "dsn".into(),
                origin: "templateFrom ConfigMap/tpl".into(),
                text: Ok("overridden by data".into()),
            },
            TemplateText {
                key: "all".into(),
                origin: "templateFrom ConfigMap/tpl".into(),
                text: Err(TemplateProblem::SourceUnreadable {
                    origin: "templateFrom ConfigMap/tpl".into(),
                }),
            },
            TemplateText {
                key: "dsn".into(),
                origin: "target.template.data".into(),
                text: Ok("{{ user }}:{{ password | b64enc }}@{{ host }}".into()),
            },
        ];
        let secret = TargetSecret {
            metadata: ObjectMeta::default(),
            keys: vec!["dsn".into()],
        };
        let report = explain(&kvs, Some(&secret), &templates, &[], Vec::new());
        assert_eq!(report.merge_policy.as_deref(), Some("Replace"));
        let keys: Vec<(&str, &str, bool)> = report
            .keys
            .iter()
            .map(|k| (k.key.as_str(), k.from, k.in_secret))
            .collect();
        assert_eq!(
            keys,
            [
                ("all", "target.template", false),
                ("dsn", "target.template", true),
                ("password", "data", false),
                ("user", "data", false),
                (
                    "<one key per matching secret, named like it>",
                    "dataFrom.find",
                    false
                ),
            ]
        );
        let dsn = report.keys[1].template.as_ref().unwrap();
        assert_eq!(dsn.origin, "target.template.data");
        let traced: Vec<(&str, Option<&str>)> = dsn
            .variables
            .iter()
            .map(|v| (v.variable.as_str(), v.vault_secret.as_deref()))
            .collect();
        assert_eq!(
            traced,
            [
                ("host", None),
                ("password", Some("db-password")),
                ("user", Some("app-config"))
            ]
        );
        assert_eq!(report.keys[1].vault_secret, "app-config, db-password");
        assert_eq!(
            report.keys[1]
                .synced
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["app-config@0123456789abcdef0123456789abcdef", "db-password"]
        );
        assert!(report.keys[0].template.as_ref().unwrap().unknown.is_some());
    }
}
