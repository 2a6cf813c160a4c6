//! Which Secrets and ConfigMaps a pod spec uses — the set `auto` and
//! `search` react to — and whether a pod can start without each.
//!
//! As in Reloader, a volume counts only when some container or init container
//! mounts it (a declared but unmounted volume cannot change what runs), while
//! `env[].valueFrom` and `envFrom` references always count. Projected volume
//! sources count like plain volumes.
//!
//! A reference is *required* unless marked `optional: true`; one required
//! reference makes the resource required. A pod cannot start while a
//! required resource is missing — the kubelet keeps retrying and starts it
//! with the data once it appears — so its appearance needs no restart.

use litemap::LiteMap;

use k8s_openapi::api::core::v1::{Container, PodSpec, Volume};

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
