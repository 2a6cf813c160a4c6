//! Which Secrets and ConfigMaps a pod spec uses — the set `auto` and
//! `search` react to — and whether a pod can start without each.
//!
//! As in Reloader, a volume counts only when some container or init container
//! mounts it (a declared but unmounted volume cannot change what runs), while
//! `env[].valueFrom` and `envFrom` references always count. Projected volume
//! sources count like plain volumes.
//!
//! Key-level uses ([`key_uses`]): a resource read only through some of its
//! keys — `env[].valueFrom.secretKeyRef`/`configMapKeyRef`, a volume or
//! projected source with `items` — restarts the workload only when one of
//! those keys changes; any whole-object use of the same resource (`envFrom`,
//! a volume without `items`) makes every key count.
//!
//! A reference is *required* unless marked `optional: true`; one required
//! reference makes the resource required. A pod cannot start while a
//! required resource is missing — the kubelet keeps retrying and starts it
//! with the data once it appears — so its appearance needs no restart.

use litemap::LiteMap;

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, KeyToPath, PodSpec, Volume};

use super::kinds::ResourceRef;

/// Whether pods can start without a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Required,
    Optional,
}

/// The resources a pod spec uses, sorted.
pub type Uses = LiteMap<ResourceRef, Need>;

/// The resources `spec` uses.
pub fn uses(spec: &PodSpec) -> Uses {
    let containers = || {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
    };
    let mounted = |volume: &Volume| {
        containers().any(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == volume.name)
        })
    };
    let mut used = Uses::new();
    for volume in spec.volumes.iter().flatten().filter(|v| mounted(v)) {
        volume_sources(volume, &mut used);
    }
    for container in containers() {
        env_sources(container, &mut used);
    }
    used
}

/// The resources used only through some of their keys, with those keys
/// (sorted, each once); a resource absent here is used whole.
pub type KeyUses = LiteMap<ResourceRef, Box<[String]>>;

/// The keys of a resource one reference reads (`None`: all of them).
type Read = Option<BTreeSet<String>>;

/// What `spec` reads of each resource, key by key where it can tell.
pub fn key_uses(spec: &PodSpec) -> KeyUses {
    let containers = || {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
    };
    let mut read: LiteMap<ResourceRef, Read> = LiteMap::new();
    let mut note = |resource: ResourceRef, keys: Read| {
        let entry = read
            .entry(resource)
            .or_insert_with(|| Some(BTreeSet::new()));
        match (entry.as_mut(), keys) {
            (Some(known), Some(keys)) => known.extend(keys),
            _ => *entry = None,
        }
    };
    let items = |items: Option<&Vec<KeyToPath>>| -> Read {
        items.map(|items| items.iter().map(|i| i.key.clone()).collect())
    };
    for volume in spec.volumes.iter().flatten() {
        let mounted = containers().any(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == volume.name)
        });
        if !mounted {
            continue;
        }
        if let Some(secret) = &volume.secret
            && let Some(name) = &secret.secret_name
        {
            note(ResourceRef::secret(name), items(secret.items.as_ref()));
        }
        if let Some(config_map) = &volume.config_map {
            note(
                ResourceRef::config_map(&config_map.name),
                items(config_map.items.as_ref()),
            );
        }
        for projection in volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
        {
            if let Some(secret) = &projection.secret {
                note(
                    ResourceRef::secret(&secret.name),
                    items(secret.items.as_ref()),
                );
            }
            if let Some(config_map) = &projection.config_map {
                note(
                    ResourceRef::config_map(&config_map.name),
                    items(config_map.items.as_ref()),
                );
            }
        }
    }
    for container in containers() {
        for source in container
            .env
            .iter()
            .flatten()
            .filter_map(|e| e.value_from.as_ref())
        {
            if let Some(key) = &source.secret_key_ref {
                note(
                    ResourceRef::secret(&key.name),
                    Some([key.key.clone()].into()),
                );
            }
            if let Some(key) = &source.config_map_key_ref {
                note(
                    ResourceRef::config_map(&key.name),
                    Some([key.key.clone()].into()),
                );
            }
        }
        for source in container.env_from.iter().flatten() {
            if let Some(secret) = &source.secret_ref {
                note(ResourceRef::secret(&secret.name), None);
            }
            if let Some(config_map) = &source.config_map_ref {
                note(ResourceRef::config_map(&config_map.name), None);
            }
        }
    }
    read.into_iter()
        .filter_map(|(resource, keys)| Some((resource, keys?.into_iter().collect())))
        .collect()
}

/// Records a reference; `Required` wins over `Optional`.
fn add(used: &mut Uses, resource: ResourceRef, optional: Option<bool>) {
    let need = if optional == Some(true) {
        Need::Optional
    } else {
        Need::Required
    };
    let entry = used.entry(resource).or_insert(need);
    if need == Need::Required {
        *entry = Need::Required;
    }
}

fn volume_sources(volume: &Volume, used: &mut Uses) {
    if let Some(secret) = &volume.secret
        && let Some(name) = &secret.secret_name
    {
        add(used, ResourceRef::secret(name), secret.optional);
    }
    if let Some(config_map) = &volume.config_map {
        add(
            used,
            ResourceRef::config_map(&config_map.name),
            config_map.optional,
        );
    }
    let projections = volume
        .projected
        .iter()
        .flat_map(|p| p.sources.iter().flatten());
    for projection in projections {
        if let Some(secret) = &projection.secret {
            add(used, ResourceRef::secret(&secret.name), secret.optional);
        }
        if let Some(config_map) = &projection.config_map {
            add(
                used,
                ResourceRef::config_map(&config_map.name),
                config_map.optional,
            );
        }
    }
}

fn env_sources(container: &Container, used: &mut Uses) {
    for source in container
        .env
        .iter()
        .flatten()
        .filter_map(|e| e.value_from.as_ref())
    {
        if let Some(key) = &source.secret_key_ref {
            add(used, ResourceRef::secret(&key.name), key.optional);
        }
        if let Some(key) = &source.config_map_key_ref {
            add(used, ResourceRef::config_map(&key.name), key.optional);
        }
    }
    for source in container.env_from.iter().flatten() {
        if let Some(secret) = &source.secret_ref {
            add(used, ResourceRef::secret(&secret.name), secret.optional);
        }
        if let Some(config_map) = &source.config_map_ref {
            add(
                used,
                ResourceRef::config_map(&config_map.name),
                config_map.optional,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> PodSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn finds_every_reference_form() {
        let spec = spec(json!({
            "containers": [{
                "name": "app",
                "env": [
                    {"name": "A", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}},
                    {"name": "C", "value": "literal"},
                    {"name": "D", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                ],
                "envFrom": [{"secretRef": {"name": "from-secret"}}, {"configMapRef": {"name": "from-cm"}}],
                "volumeMounts": [{"name": "sv", "mountPath": "/s"}, {"name": "pv", "mountPath": "/p"}]
            }],
            "initContainers": [{
                "name": "init",
                "env": [{"name": "E", "valueFrom": {"secretKeyRef": {"name": "init-secret", "key": "k"}}}],
                "volumeMounts": [{"name": "cv", "mountPath": "/c"}]
            }],
            "volumes": [
                {"name": "sv", "secret": {"secretName": "vol-secret"}},
                {"name": "cv", "configMap": {"name": "vol-cm"}},
                {"name": "pv", "projected": {"sources": [
                    {"secret": {"name": "proj-secret"}},
                    {"configMap": {"name": "proj-cm"}},
                    {"serviceAccountToken": {"path": "token"}}
                ]}}
            ]
        }));
        let expected: Vec<_> = [
            ResourceRef::config_map("env-cm"),
            ResourceRef::config_map("from-cm"),
            ResourceRef::config_map("proj-cm"),
            ResourceRef::config_map("vol-cm"),
            ResourceRef::secret("env-secret"),
            ResourceRef::secret("from-secret"),
            ResourceRef::secret("init-secret"),
            ResourceRef::secret("proj-secret"),
            ResourceRef::secret("vol-secret"),
        ]
        .into();
        assert_eq!(uses(&spec).keys().cloned().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn keys_read_one_by_one_are_known_and_a_whole_use_wins() {
        let spec = spec(json!({
            "containers": [{
                "name": "app",
                "env": [
                    {"name": "A", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                    {"name": "B", "valueFrom": {"secretKeyRef": {"name": "db", "key": "user"}}},
                    {"name": "C", "valueFrom": {"secretKeyRef": {"name": "mixed", "key": "k"}}},
                    {"name": "D", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "port"}}}
                ],
                "envFrom": [{"secretRef": {"name": "mixed"}}],
                "volumeMounts": [{"name": "v", "mountPath": "/v"}, {"name": "p", "mountPath": "/p"}, {"name": "w", "mountPath": "/w"}]
            }],
            "volumes": [
                {"name": "v", "secret": {"secretName": "tls", "items": [{"key": "tls.crt", "path": "crt"}]}},
                {"name": "w", "secret": {"secretName": "whole"}},
                {"name": "p", "projected": {"sources": [
                    {"configMap": {"name": "proj", "items": [{"key": "a", "path": "a"}]}}
                ]}}
            ]
        }));
        let keys = key_uses(&spec);
        let listed = |k: &[&str]| -> Box<[String]> { k.iter().map(|s| s.to_string()).collect() };
        let expected: KeyUses = [
            (ResourceRef::config_map("cm"), listed(&["port"])),
            (ResourceRef::config_map("proj"), listed(&["a"])),
            (ResourceRef::secret("db"), listed(&["password", "user"])),
            (ResourceRef::secret("tls"), listed(&["tls.crt"])),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            keys, expected,
            "mixed (envFrom too) and whole are used whole"
        );
    }

    #[test]
    fn unmounted_volumes_do_not_count() {
        let spec = spec(json!({
            "containers": [{"name": "app", "volumeMounts": [{"name": "mounted", "mountPath": "/m"}]}],
            "volumes": [
                {"name": "mounted", "secret": {"secretName": "a"}},
                {"name": "declared-only", "secret": {"secretName": "b"}}
            ]
        }));
        assert_eq!(
            uses(&spec),
            [(ResourceRef::secret("a"), Need::Required)]
                .into_iter()
                .collect()
        );
    }

    #[test]
    fn one_required_reference_makes_a_resource_required() {
        let spec = spec(json!({
            "containers": [
                {"name": "a", "envFrom": [{"secretRef": {"name": "both", "optional": true}},
                                          {"secretRef": {"name": "optional", "optional": true}}]},
                {"name": "b", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "both", "key": "k", "optional": false}}}],
                 "volumeMounts": [{"name": "v", "mountPath": "/v"}]}
            ],
            "volumes": [{"name": "v", "configMap": {"name": "cm", "optional": true}}]
        }));
        let expected: Uses = [
            (ResourceRef::config_map("cm"), Need::Optional),
            (ResourceRef::secret("both"), Need::Required),
            (ResourceRef::secret("optional"), Need::Optional),
        ]
        .into_iter()
        .collect();
        assert_eq!(uses(&spec), expected);
    }
}
