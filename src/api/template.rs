//! `spec.target.template`: the Secret's data built from templates over the
//! fetched values, as ESO's `target.template` does.
//!
//! ```text
//!  data[] + dataFrom[] ──▶ fetched { key → value } ──▶ template.data       { key → Jinja template }
//!                                                 └─▶ template.templateFrom (ConfigMap/Secret items of this namespace)
//!                                                          │
//!  mergePolicy Replace: the Secret holds the rendered keys only
//!              Merge:   the fetched keys, then the rendered ones (a rendered key wins)
//! ```
//!
//! Templates are [MiniJinja](https://docs.rs/minijinja) (Jinja2 syntax):
//! `{{ password | b64enc }}`; `kvsync convert` translates ESO's Go templates.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::keyvaultsecret::exactly_one_of;

/// Templates for the target Secret's data.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Template {
    /// Secret key → Jinja template over the fetched values (each fetched key
    /// is a variable; `values["key-with-dashes"]` reaches any of them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Templates kept in ConfigMaps or Secrets of this namespace: each item's
    /// key becomes a Secret key, its content the template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub template_from: Vec<TemplateFrom>,
    /// `Replace` (default): the Secret holds the rendered keys only;
    /// `Merge`: the fetched keys plus the rendered ones.
    #[serde(default)]
    pub merge_policy: MergePolicy,
}

impl Template {
    /// The objects whose items are templates.
    pub fn sources(&self) -> impl Iterator<Item = (TemplateSourceKind, &TemplateSource)> {
        self.template_from.iter().filter_map(TemplateFrom::source)
    }
}

/// What the Secret holds besides the rendered keys.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MergePolicy {
    /// The rendered keys only.
    #[default]
    Replace,
    /// The fetched keys, then the rendered ones (a rendered key wins).
    Merge,
}

/// One source of templates: exactly one of `configMap`, `secret`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = exactly_one_template_source)]
pub struct TemplateFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<TemplateSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<TemplateSource>,
}

fn exactly_one_template_source(schema: &mut schemars::Schema) {
    exactly_one_of(schema, &["configMap", "secret"]);
}

/// Which kind of object holds a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateSourceKind {
    ConfigMap,
    Secret,
}

impl TemplateFrom {
    /// The source; `None` unless exactly one is set.
    pub fn source(&self) -> Option<(TemplateSourceKind, &TemplateSource)> {
        match (&self.config_map, &self.secret) {
            (Some(source), None) => Some((TemplateSourceKind::ConfigMap, source)),
            (None, Some(source)) => Some((TemplateSourceKind::Secret, source)),
            _ => None,
        }
    }
}

/// A ConfigMap or Secret of this namespace and the items used as templates.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateSource {
    /// The ConfigMap's or Secret's name (in the KeyVaultSecret's namespace).
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
    /// Its keys that hold templates.
    #[schemars(length(min = 1))]
    pub items: Vec<TemplateItem>,
}

/// One item: its key is both where the template is read and the Secret key written.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateItem {
    /// The key holding the template; the rendered value is written under the same key.
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]{1,253}$"))]
    pub key: String,
}
