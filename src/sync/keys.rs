//! Key shaping of `dataFrom` entries — pure: the conversion strategy, then
//! the rewrites in order, then the check that every key can be a Secret key
//! (see [`crate::api::Rewrite`] for the data model).

use std::collections::BTreeMap;

use regex::{Regex, RegexBuilder};

use super::render::{RenderError, is_secret_key};
use crate::api::{ConversionStrategy, DataFrom};

/// A user-supplied regular expression, size-limited so that it cannot eat
/// the operator's memory.
pub fn user_regex(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).size_limit(1 << 20).build()
}

/// How one `dataFrom` entry's keys are shaped, compiled.
#[derive(Debug, Clone, Default)]
pub struct KeyShaping {
    conversion: ConversionStrategy,
    rewrites: Vec<(Regex, String)>,
}

/// The longest `rewrite[].regexp.target` accepted: a key ends at most 253
/// bytes long, so a longer target is no key's shape, only a multiplier.
pub const MAX_REWRITE_TARGET: usize = 1024;

/// The longest a key may grow to between two rewrites of a chain (the final
/// key is at most 253 bytes): a chain that doubles a key 40 times would
/// otherwise ask for a terabyte before the last check.
pub const MAX_INTERMEDIATE_KEY: usize = 4096;

/// A `dataFrom[…].rewrite[…]` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InvalidRewrite {
    #[error(
        "dataFrom[{entry}].rewrite[{rewrite}].regexp.source is not a valid regular expression: {source}"
    )]
    Regex {
        entry: usize,
        rewrite: usize,
        source: regex::Error,
    },
    #[error(
        "dataFrom[{entry}].rewrite[{rewrite}].regexp.target is longer than {MAX_REWRITE_TARGET} bytes"
    )]
    TargetTooLong { entry: usize, rewrite: usize },
}

/// One entry per `dataFrom` entry; a rewrite that does not compile is named
/// by its path.
pub fn compile(data_from: &[DataFrom]) -> Result<Vec<KeyShaping>, InvalidRewrite> {
    data_from
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let rewrites = entry
                .rewrite
                .iter()
                .enumerate()
                .map(|(r, rewrite)| {
                    let target = rewrite.regexp.target.clone().unwrap_or_default();
                    if target.len() > MAX_REWRITE_TARGET {
                        return Err(InvalidRewrite::TargetTooLong {
                            entry: index,
                            rewrite: r,
                        });
                    }
                    user_regex(&rewrite.regexp.source)
                        .map(|re| (re, target))
                        .map_err(|source| InvalidRewrite::Regex {
                            entry: index,
                            rewrite: r,
                            source,
                        })
                })
                .collect::<Result<_, _>>()?;
            Ok(KeyShaping {
                conversion: entry.conversion_strategy,
                rewrites,
            })
        })
        .collect()
}

impl KeyShaping {
    /// The keys of `dataFrom[entry]`'s output, shaped and checked.
    pub fn apply(
        &self,
        entry: usize,
        part: BTreeMap<String, Vec<u8>>,
    ) -> Result<BTreeMap<String, Vec<u8>>, RenderError> {
        let mut shaped = BTreeMap::new();
        for (key, value) in part {
            let mut key = convert(&key, self.conversion);
            for (rewrite, (source, target)) in self.rewrites.iter().enumerate() {
                key = source.replace_all(&key, target.as_str()).into_owned();
                if key.len() > MAX_INTERMEDIATE_KEY {
                    return Err(RenderError::KeyTooLong { entry, rewrite });
                }
            }
            if !is_secret_key(&key) {
                return Err(RenderError::BadKey { entry, key });
            }
            if shaped.insert(key.clone(), value).is_some() {
                return Err(RenderError::DuplicateKey { key });
            }
        }
        Ok(shaped)
    }
}

/// Applies a conversion strategy to one key.
fn convert(key: &str, strategy: ConversionStrategy) -> String {
    match strategy {
        ConversionStrategy::Default => key.to_owned(),
        ConversionStrategy::Unicode => key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-._".contains(c) {
                    c.to_string()
                } else {
                    format!("_U{:04x}_", c as u32)
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(conversion: &str, rewrites: serde_json::Value) -> DataFrom {
        serde_json::from_value(serde_json::json!({
            "extract": {"name": "x"},
            "conversionStrategy": conversion,
            "rewrite": rewrites,
        }))
        .unwrap()
    }

    fn keys(names: &[&str]) -> BTreeMap<String, Vec<u8>> {
        names
            .iter()
            .map(|n| (n.to_string(), b"v".to_vec()))
            .collect()
    }

    fn shaped(entry: &DataFrom, names: &[&str]) -> Result<Vec<String>, RenderError> {
        let shaping = compile(std::slice::from_ref(entry)).unwrap();
        Ok(shaping[0].apply(0, keys(names))?.into_keys().collect())
    }

    #[test]
    fn rewrites_apply_in_order_with_groups_and_prefixes() {
        let rewrites = serde_json::json!([
            {"regexp": {"source": "^db-(.*)$", "target": "DATABASE_$1"}},
            {"regexp": {"source": "-", "target": "_"}},
            {"regexp": {"source": "^", "target": "APP_"}},
        ]);
        assert_eq!(
            shaped(&entry("Default", rewrites), &["db-pass-word", "api-key"]).unwrap(),
            vec!["APP_DATABASE_pass_word", "APP_api_key"]
        );
    }

    #[test]
    fn invalid_keys_are_converted_or_refused() {
        assert_eq!(
            shaped(&entry("Unicode", serde_json::json!([])), &["a b", "é"]).unwrap(),
            vec!["_U00e9_", "a_U0020_b"]
        );
        assert_eq!(
            shaped(&entry("Default", serde_json::json!([])), &["a b"]).unwrap_err(),
            RenderError::BadKey {
                entry: 0,
                key: "a b".into()
            }
        );
        let collapse = serde_json::json!([{"regexp": {"source": ".*", "target": "same"}}]);
        assert!(matches!(
            shaped(&entry("Default", collapse), &["a", "b"]),
            Err(RenderError::DuplicateKey { .. })
        ));
        let bad = entry(
            "Default",
            serde_json::json!([{"regexp": {"source": "(", "target": ""}}]),
        );
        assert!(
            compile(&[bad])
                .unwrap_err()
                .to_string()
                .contains("dataFrom[0].rewrite[0]")
        );
    }

    #[test]
    fn a_rewrite_chain_cannot_grow_a_key_without_bound() {
        let doubling: Vec<serde_json::Value> = (0..40)
            .map(|_| serde_json::json!({"regexp": {"source": "^(.*)$", "target": "$1$1"}}))
            .collect();
        let started = std::time::Instant::now();
        let refused = shaped(&entry("Default", serde_json::json!(doubling)), &["key"]);
        assert_eq!(
            refused.unwrap_err(),
            RenderError::KeyTooLong {
                entry: 0,
                rewrite: 10
            },
            "3 bytes doubled 11 times is over 4,096"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let long_target = "$0".repeat(MAX_REWRITE_TARGET);
        let multiplier = entry(
            "Default",
            serde_json::json!([{"regexp": {"source": "", "target": long_target}}]),
        );
        assert!(matches!(
            compile(&[multiplier]),
            Err(InvalidRewrite::TargetTooLong {
                entry: 0,
                rewrite: 0
            })
        ));
    }

    proptest! {
        /// Unicode conversion always yields a valid key from a non-empty name of modest length.
        #[test]
        fn unicode_conversion_yields_valid_keys(name in "\\PC{1,30}") {
            let key = convert(&name, ConversionStrategy::Unicode);
            prop_assert!(key == "." || key == ".." || is_secret_key(&key), "{key}");
        }
    }
}
