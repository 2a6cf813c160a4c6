//! `dataFrom[].conversionStrategy` and `dataFrom[].rewrite`: how the keys a
//! `dataFrom` entry produces are shaped before they become Secret keys.
//!
//! ```text
//!  entry's keys (JSON fields, vault names) ──conversionStrategy──▶ ──rewrite[0]──▶ … ──rewrite[n]──▶ Secret keys
//!                                             Default: as they are   regexp source → target, in order
//!                                             Unicode: _UXXXX_ for    (`$1`, `${name}` expand groups;
//!                                             what a key can't hold   source `^` + target `APP_` prefixes)
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What happens to characters a Secret key cannot hold (`[-._a-zA-Z0-9]` only).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConversionStrategy {
    /// Keys stay as they are; one that is not a valid Secret key is an error.
    #[default]
    Default,
    /// Each such character becomes `_U<4 hex digits>_` (a space: `_U0020_`), as in ESO.
    Unicode,
}

/// One rewrite of every key of a `dataFrom` entry.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    pub regexp: RegexpRewrite,
}

/// Replaces every match of `source` in a key with `target`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexpRewrite {
    /// A regular expression (Rust `regex` syntax, which accepts Go's RE2 forms).
    #[schemars(length(min = 1))]
    pub source: String,
    /// The replacement; `$1` / `${name}` insert capture groups. Omitted: remove the match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}
