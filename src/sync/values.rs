//! Reading some keys of a Secret or ConfigMap of the namespace — a
//! credential, or template sources — through the watches' index (see
//! [`super::observed`]):
//!
//! ```text
//!  every wanted key known at the version the watch sees ──▶ those values, no request
//!  else GET ──▶ the values there are, kept while the watch sees that version
//! ```
//!
//! Only the keys asked for are kept, for objects someone reads: an index
//! entry of an unrelated Secret holds its resourceVersion and nothing else.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::Api;

use super::context::Context;
use super::key::ObjectKey;
use crate::api::TemplateSourceKind;

/// Values of keys of one object, as bytes.
pub type Values = BTreeMap<String, Vec<u8>>;

/// What the index of Secrets or ConfigMaps keeps of one object's values:
/// nothing until kvsync reads it (most are never read — 8 bytes each instead
/// of an empty map's 24, for every Secret of the cluster).
pub type Known = Option<Box<Values>>;

/// The values of `keys` in Secret or ConfigMap `name` of `namespace` (those
/// of them it has), or `None` when it does not exist.
pub async fn read(
    ctx: &Context,
    kind: TemplateSourceKind,
    namespace: &str,
    name: &str,
    keys: &[&str],
) -> Result<Option<Values>, kube::Error> {
    let index = match kind {
        TemplateSourceKind::Secret => &ctx.secrets,
        TemplateSourceKind::ConfigMap => &ctx.config_maps,
    };
    let key = ObjectKey::new(namespace, name);
    let known: Option<Values> = index.lock().unwrap().known(&key).and_then(|known| {
        let known = known.as_deref()?;
        keys.iter()
            .map(|k| Some((k.to_string(), known.get(*k)?.clone())))
            .collect()
    });
    if known.is_some() {
        return Ok(known);
    }
    let Some((version, mut all)) = get(ctx, kind, namespace, name).await? else {
        return Ok(None);
    };
    all.retain(|k, _| keys.contains(&k.as_str()));
    if let Some(version) = version {
        index.lock().unwrap().learn(&key, &version, |known| {
            known
                .get_or_insert_default()
                .extend(all.iter().map(|(k, v)| (k.clone(), v.clone())));
        });
    }
    Ok(Some(all))
}

/// Every value of the object as the API server has it now, with its version.
async fn get(
    ctx: &Context,
    kind: TemplateSourceKind,
    namespace: &str,
    name: &str,
) -> Result<Option<(Option<String>, Values)>, kube::Error> {
    Ok(match kind {
        TemplateSourceKind::Secret => Api::<Secret>::namespaced(ctx.client.clone(), namespace)
            .get_opt(name)
            .await?
            .map(|secret| {
                let data = secret.data.clone().unwrap_or_default();
                let values = data.into_iter().map(|(k, v)| (k, v.0)).collect();
                (secret.resource_version(), values)
            }),
        TemplateSourceKind::ConfigMap => {
            Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace)
                .get_opt(name)
                .await?
                .map(|map| {
                    let data = map.data.clone().unwrap_or_default();
                    let values = data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
                    (map.resource_version(), values)
                })
        }
    })
}
