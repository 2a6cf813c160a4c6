//! Which Secrets and ConfigMaps a pod spec uses — the set `auto` and
//! `search` react to.
//!
//! As in Reloader, a volume counts only when some container or init container
//! mounts it (a declared but unmounted volume cannot change what runs), while
//! `env[].valueFrom` and `envFrom` references always count. Projected volume
//! sources count like plain volumes.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, PodSpec, Volume};

use super::kinds::ResourceRef;

/// The resources `spec` uses, sorted.
pub fn uses(spec: &PodSpec) -> BTreeSet<ResourceRef> {
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
    let mut used = BTreeSet::new();
    for volume in spec.volumes.iter().flatten().filter(|v| mounted(v)) {
        volume_sources(volume, &mut used);
    }
    for container in containers() {
        env_sources(container, &mut used);
    }
    used
}

fn volume_sources(volume: &Volume, used: &mut BTreeSet<ResourceRef>) {
    if let Some(name) = volume.secret.as_ref().and_then(|s| s.secret_name.as_ref()) {
        used.insert(ResourceRef::secret(name));
    }
    if let Some(config_map) = &volume.config_map {
        used.insert(ResourceRef::config_map(&config_map.name));
    }
    let projections = volume
        .projected
        .iter()
        .flat_map(|p| p.sources.iter().flatten());
    for projection in projections {
        if let Some(secret) = &projection.secret {
            used.insert(ResourceRef::secret(&secret.name));
        }
        if let Some(config_map) = &projection.config_map {
            used.insert(ResourceRef::config_map(&config_map.name));
        }
    }
}

fn env_sources(container: &Container, used: &mut BTreeSet<ResourceRef>) {
    for source in container
        .env
        .iter()
        .flatten()
        .filter_map(|e| e.value_from.as_ref())
    {
        if let Some(key) = &source.secret_key_ref {
            used.insert(ResourceRef::secret(&key.name));
        }
        if let Some(key) = &source.config_map_key_ref {
            used.insert(ResourceRef::config_map(&key.name));
        }
    }
    for source in container.env_from.iter().flatten() {
        if let Some(secret) = &source.secret_ref {
            used.insert(ResourceRef::secret(&secret.name));
        }
        if let Some(config_map) = &source.config_map_ref {
            used.insert(ResourceRef::config_map(&config_map.name));
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
        let expected: BTreeSet<_> = [
            ResourceRef::secret("env-secret"),
            ResourceRef::config_map("env-cm"),
            ResourceRef::secret("from-secret"),
            ResourceRef::config_map("from-cm"),
            ResourceRef::secret("init-secret"),
            ResourceRef::secret("vol-secret"),
            ResourceRef::config_map("vol-cm"),
            ResourceRef::secret("proj-secret"),
            ResourceRef::config_map("proj-cm"),
        ]
        .into();
        assert_eq!(uses(&spec), expected);
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
        assert_eq!(uses(&spec), [ResourceRef::secret("a")].into());
    }
}
