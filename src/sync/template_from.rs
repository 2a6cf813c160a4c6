//! Collects a KeyVaultSecret's templates: the items of the ConfigMaps and
//! Secrets named in `target.template.templateFrom` (read from its own
//! namespace), then `target.template.data` — a later key wins, as in ESO.
//!
//! The sources are watched (metadata only, see [`super::run`]), so editing
//! or creating one re-renders the Secrets that use it; an idle refresh reads
//! them as of the version the watch sees (see [`super::values`]).

use kube::ResourceExt;

use super::context::Context;
use super::error::SyncError;
use super::template::Templates;
use super::values;
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
    let keys: Vec<&str> = source.items.iter().map(|item| item.key.as_str()).collect();
    let what = format!("{kind:?} {}", source.name);
    let Some(content) = values::read(ctx, kind, namespace, &source.name, &keys).await? else {
        return Err(SyncError::InvalidSpec(format!(
            "target.template.templateFrom: {what} does not exist in namespace {namespace}"
        )));
    };
    source
        .items
        .iter()
        .map(|item| match content.get(&item.key) {
            Some(text) => Ok((item.key.clone(), String::from_utf8_lossy(text).into_owned())),
            None => Err(SyncError::InvalidSpec(format!(
                "target.template.templateFrom: {what} has no key {:?}",
                item.key
            ))),
        })
        .collect()
}
