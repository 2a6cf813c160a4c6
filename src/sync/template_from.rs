//! Collects a KeyVaultSecret's templates: the items of the ConfigMaps and
//! Secrets named in `target.template.templateFrom` (read from its own
//! namespace), then `target.template.data` — a later key wins, as in ESO.
//!
//! The sources are watched (metadata only, see [`super::run`]), so editing
//! or creating one re-renders the Secrets that use it.

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::Api;

use super::Context;
use super::error::SyncError;
use super::template::Templates;
use crate::api::{KeyVaultSecret, TemplateSource, TemplateSourceKind};

/// Every template of `kvs`, in the order they apply (empty without `target.template`).
pub async fn load(ctx: &Context, kvs: &KeyVaultSecret) -> Result<Templates, SyncError> {
    let Some(template) = &kvs.spec.target.template else {
        return Ok(Vec::new());
    };
    let namespace = kvs.namespace().unwrap_or_default();
    let mut templates = Templates::new();
    for (index, entry) in template.template_from.iter().enumerate() {
        let Some((kind, source)) = entry.source() else {
            return Err(SyncError::InvalidSpec(format!(
                "target.template.templateFrom[{index}] needs exactly one of configMap, secret"
            )));
        };
        let items = read_items(ctx, &namespace, kind, source).await?;
        templates.extend(items);
    }
    templates.extend(
        template
            .data
            .iter()
            .map(|(key, source)| (key.clone(), source.clone())),
    );
    Ok(templates)
}

/// The named items of one source, as (Secret key, template text).
async fn read_items(
    ctx: &Context,
    namespace: &str,
    kind: TemplateSourceKind,
    source: &TemplateSource,
) -> Result<Templates, SyncError> {
    let content = match kind {
        TemplateSourceKind::ConfigMap => {
            Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace)
                .get_opt(&source.name)
                .await?
                .map(|map| map.data.unwrap_or_default())
        }
        TemplateSourceKind::Secret => Api::<Secret>::namespaced(ctx.client.clone(), namespace)
            .get_opt(&source.name)
            .await?
            .map(|secret| {
                secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(key, bytes)| (key, String::from_utf8_lossy(&bytes.0).into_owned()))
                    .collect()
            }),
    };
    let what = format!("{kind:?} {}", source.name);
    let Some(content) = content else {
        return Err(SyncError::InvalidSpec(format!(
            "target.template.templateFrom: {what} does not exist in namespace {namespace}"
        )));
    };
    source
        .items
        .iter()
        .map(|item| match content.get(&item.key) {
            Some(text) => Ok((item.key.clone(), text.clone())),
            None => Err(SyncError::InvalidSpec(format!(
                "target.template.templateFrom: {what} has no key {:?}",
                item.key
            ))),
        })
        .collect()
}
