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
/// The most bytes of template text one KeyVaultSecret may use, from
/// `templateFrom` sources and `template.data` together: its output is one
/// Secret of at most 1 MiB, and each source (a ConfigMap or Secret) may hold
/// as much again.
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;

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
        within_limit(&templates)?;
    }
    templates.extend(
        template
            .data
            .iter()
            .map(|(key, source)| (key.clone(), source.clone())),
    );
    within_limit(&templates)?;
    Ok(templates)
}

/// Refuses template text beyond [`MAX_TEMPLATE_BYTES`] before any of it is rendered.
fn within_limit(templates: &Templates) -> Result<(), SyncError> {
    let bytes: usize = templates
        .iter()
        .map(|(key, text)| key.len() + text.len())
        .sum();
    if bytes > MAX_TEMPLATE_BYTES {
        return Err(SyncError::InvalidSpec(format!(
            "target.template: templateFrom sources and data hold {bytes} bytes of templates, more than the limit of {MAX_TEMPLATE_BYTES}"
        )));
    }
    Ok(())
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
