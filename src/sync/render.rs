//! From fetched vault values to the Secret's `data` — pure, no I/O.
//!
//! Every `data`/`dataFrom` entry must resolve or nothing is written: the
//! reconciler only applies a complete rendering, so a Secret is never half
//! updated. Errors name the entry and what to fix, never a value.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use regex::Regex;

use crate::api::{DecodingStrategy, FindRef};
use crate::vault::{RemoteSecret, RemoteSecretInfo};

/// Why a rendering failed (shown as an `InvalidSpec` condition message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("remote secret {name}: value is not JSON, so property {property:?} cannot be read")]
    NotJson { name: String, property: String },
    #[error("remote secret {name}: property {property:?} does not exist in its JSON value")]
    NoSuchProperty { name: String, property: String },
    #[error("remote secret {name}: dataFrom.extract needs a JSON object value")]
    NotJsonObject { name: String },
    #[error("remote secret {name}: value is not valid {strategy:?}")]
    BadEncoding {
        name: String,
        strategy: DecodingStrategy,
    },
    #[error(
        "dataFrom[{entry}]: key {key:?} is not a valid Secret key ([-._a-zA-Z0-9]); use conversionStrategy: Unicode or a rewrite"
    )]
    BadKey { entry: usize, key: String },
    #[error(
        "remote secret {name}: certificate needs a PEM value with a CERTIFICATE and a PRIVATE KEY block"
    )]
    NotPemCertificate { name: String },
    #[error("remote secret {name}: it has no tag {tag:?}")]
    NoSuchTag { name: String, tag: String },
    #[error("Secret key {key:?} is produced by more than one entry")]
    DuplicateKey { key: String },
    #[error(
        "dataFrom[{entry}].rewrite[{rewrite}] makes a key longer than {} bytes",
        super::keys::MAX_INTERMEDIATE_KEY
    )]
    KeyTooLong { entry: usize, rewrite: usize },
    #[error(
        "dataFrom[{entry}].find matches {count} secrets, more than the limit of {MAX_FIND_MATCHES}; narrow it with nameRegex or tags"
    )]
    FindTooMany { entry: usize, count: usize },
    #[error(
        "dataFrom[{entry}].find matches more than {MAX_FIND_BYTES} bytes of values, more than a Secret holds; narrow it with nameRegex or tags"
    )]
    FindTooLarge { entry: usize },
}

/// The most secrets one `find` may match: checked on the listing, before
/// any value is read.
pub const MAX_FIND_MATCHES: usize = 1000;

/// The most value bytes one `find` may read: a Secret holds at most 1 MiB,
/// so more could never be written; checked as the values arrive.
pub const MAX_FIND_BYTES: usize = 1 << 20;

/// Reads a value at a dotted `property` path (`db.password`, `hosts.0`) of a
/// JSON document. Strings come out raw; other JSON values as compact JSON.
///
/// Hand-written on purpose: ESO's gjson syntax has no maintained Rust
/// equivalent, and the dotted subset covers the real uses (objects and
/// array indices). A literal dot in a key is written `\.`.
pub fn json_property(document: &str, property: &str) -> Result<Option<String>, serde_json::Error> {
    let mut value: &serde_json::Value = &serde_json::from_str(document)?;
    for segment in split_path(property) {
        let next = match value {
            serde_json::Value::Object(map) => map.get(&segment),
            serde_json::Value::Array(items) => {
                segment.parse::<usize>().ok().and_then(|i| items.get(i))
            }
            _ => None,
        };
        match next {
            Some(found) => value = found,
            None => return Ok(None),
        }
    }
    Ok(Some(match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }))
}

fn split_path(property: &str) -> Vec<String> {
    let mut segments = vec![String::new()];
    let mut chars = property.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => segments.last_mut().unwrap().extend(chars.next()),
            '.' => segments.push(String::new()),
            c => segments.last_mut().unwrap().push(c),
        }
    }
    segments
}

/// Applies a decoding strategy to a value.
pub fn decode(value: &str, strategy: DecodingStrategy) -> Option<Vec<u8>> {
    let trimmed = value.trim();
    match strategy {
        DecodingStrategy::None => Some(value.as_bytes().to_vec()),
        DecodingStrategy::Base64 => STANDARD.decode(trimmed).ok(),
        DecodingStrategy::Base64URL => URL_SAFE
            .decode(trimmed)
            .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
            .ok(),
        DecodingStrategy::Auto => Some(
            STANDARD
                .decode(trimmed)
                .or_else(|_| URL_SAFE.decode(trimmed))
                .unwrap_or_else(|_| value.as_bytes().to_vec()),
        ),
    }
}

/// One `data[]` entry: the value (or a property of it), decoded.
pub fn render_ref(
    remote: &RemoteSecret,
    property: Option<&str>,
    strategy: DecodingStrategy,
) -> Result<Vec<u8>, RenderError> {
    let text = match property.filter(|p| !p.is_empty()) {
        None => remote.value.clone(),
        Some(property) => match json_property(&remote.value, property) {
            Err(_) => {
                return Err(RenderError::NotJson {
                    name: remote.name.clone(),
                    property: property.into(),
                });
            }
            Ok(None) => {
                return Err(RenderError::NoSuchProperty {
                    name: remote.name.clone(),
                    property: property.into(),
                });
            }
            Ok(Some(text)) => text,
        },
    };
    decode(&text, strategy).ok_or(RenderError::BadEncoding {
        name: remote.name.clone(),
        strategy,
    })
}

/// `metadataPolicy: Fetch`: one tag's value (`property` names it), or all
/// tags as a JSON object (keys sorted, as ESO writes them), decoded.
pub fn render_tags(
    info: &RemoteSecretInfo,
    property: Option<&str>,
    strategy: DecodingStrategy,
) -> Result<Vec<u8>, RenderError> {
    let text = match property.filter(|p| !p.is_empty()) {
        None => serde_json::to_string(&info.tags).expect("a string map serializes"),
        Some(tag) => info
            .tags
            .get(tag)
            .cloned()
            .ok_or_else(|| RenderError::NoSuchTag {
                name: info.name.clone(),
                tag: tag.to_owned(),
            })?,
    };
    decode(&text, strategy).ok_or(RenderError::BadEncoding {
        name: info.name.clone(),
        strategy,
    })
}

/// `dataFrom.extract`: one key per top-level field of a JSON object value
/// (or of the object at `property`). Keys are checked after shaping.
pub fn render_extract(
    remote: &RemoteSecret,
    property: Option<&str>,
    strategy: DecodingStrategy,
) -> Result<BTreeMap<String, Vec<u8>>, RenderError> {
    let document = match property.filter(|p| !p.is_empty()) {
        None => remote.value.clone(),
        Some(_) => String::from_utf8_lossy(&render_ref(remote, property, DecodingStrategy::None)?)
            .into_owned(),
    };
    let object = match serde_json::from_str::<serde_json::Value>(&document) {
        Ok(serde_json::Value::Object(object)) => object,
        _ => {
            return Err(RenderError::NotJsonObject {
                name: remote.name.clone(),
            });
        }
    };
    object
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            let bytes = decode(&text, strategy).ok_or(RenderError::BadEncoding {
                name: remote.name.clone(),
                strategy,
            })?;
            Ok((key, bytes))
        })
        .collect()
}

/// `dataFrom.certificate`: splits a PEM bundle into `tls.crt` (every
/// certificate, leaf first as stored) and `tls.key` (the private key).
pub fn render_certificate(remote: &RemoteSecret) -> Result<BTreeMap<String, Vec<u8>>, RenderError> {
    let mut certs = String::new();
    let mut key = String::new();
    for (label, block) in pem_blocks(&remote.value) {
        if label.contains("PRIVATE KEY") {
            key.push_str(&block);
        } else if label.contains("CERTIFICATE") {
            certs.push_str(&block);
        }
    }
    if certs.is_empty() || key.is_empty() {
        return Err(RenderError::NotPemCertificate {
            name: remote.name.clone(),
        });
    }
    Ok(BTreeMap::from([
        ("tls.crt".to_owned(), certs.into_bytes()),
        ("tls.key".to_owned(), key.into_bytes()),
    ]))
}

/// The PEM blocks of a text, in order: (label, the block's lines with `\n`
/// endings). A block runs from its `-----BEGIN <label>-----` line to the
/// next `-----END ` line (or the next BEGIN, or the end of the text).
pub fn pem_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut open = false;
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("-----BEGIN ") {
            let label = rest.split("-----").next().unwrap_or_default();
            blocks.push((label.to_owned(), String::new()));
            open = true;
        }
        if open && let Some((_, block)) = blocks.last_mut() {
            block.push_str(line);
            block.push('\n');
        }
        if line.starts_with("-----END ") {
            open = false;
        }
    }
    blocks
}

/// `dataFrom.find`: the names of enabled secrets that match the filter.
pub fn find_matches(
    find: &FindRef,
    name_regex: Option<&Regex>,
    listing: &[RemoteSecretInfo],
) -> Vec<String> {
    listing
        .iter()
        .filter(|info| info.enabled)
        .filter(|info| name_regex.is_none_or(|re| re.is_match(&info.name)))
        .filter(|info| find.tags.iter().all(|(k, v)| info.tags.get(k) == Some(v)))
        .map(|info| info.name.clone())
        .collect()
}

/// Whether a string may be a key of a Secret's `data`.
pub fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

/// Merges the entries' outputs; a key produced twice is an error rather
/// than a silent last-one-wins.
pub fn merge(
    parts: Vec<BTreeMap<String, Vec<u8>>>,
) -> Result<BTreeMap<String, Vec<u8>>, RenderError> {
    let mut data = BTreeMap::new();
    for part in parts {
        for (key, value) in part {
            if data.insert(key.clone(), value).is_some() {
                return Err(RenderError::DuplicateKey { key });
            }
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn remote(value: &str) -> RemoteSecret {
        RemoteSecret {
            name: "s".into(),
            version: "v".into(),
            value: value.into(),
            content_type: None,
            updated: None,
            not_before: None,
            expires: None,
        }
    }

    #[test]
    fn properties_walk_objects_and_arrays() {
        let doc = r#"{"db":{"password":"pw","port":5432},"hosts":["a","b"],"a.b":"dotted"}"#;
        assert_eq!(
            json_property(doc, "db.password").unwrap().as_deref(),
            Some("pw")
        );
        assert_eq!(
            json_property(doc, "db.port").unwrap().as_deref(),
            Some("5432")
        );
        assert_eq!(json_property(doc, "hosts.1").unwrap().as_deref(), Some("b"));
        assert_eq!(
            json_property(doc, r"a\.b").unwrap().as_deref(),
            Some("dotted")
        );
        assert_eq!(json_property(doc, "db.user").unwrap(), None);
        assert!(json_property("not json", "x").is_err());
    }

    #[test]
    fn property_errors_do_not_reveal_the_value() {
        let err =
            render_ref(&remote("hunter2"), Some("password"), DecodingStrategy::None).unwrap_err();
        assert!(matches!(err, RenderError::NotJson { .. }));
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn decoding_strategies() {
        assert_eq!(decode("aGk=", DecodingStrategy::Base64).unwrap(), b"hi");
        assert_eq!(decode("aGk", DecodingStrategy::Base64URL).unwrap(), b"hi");
        assert_eq!(
            decode("not base64!", DecodingStrategy::Auto).unwrap(),
            b"not base64!"
        );
        assert!(decode("not base64!", DecodingStrategy::Base64).is_none());
    }

    #[test]
    fn extract_needs_an_object() {
        let none = DecodingStrategy::None;
        let data = render_extract(&remote(r#"{"user":"u","port":1}"#), None, none).unwrap();
        assert_eq!(data["user"], b"u");
        assert_eq!(data["port"], b"1");
        assert!(render_extract(&remote("[1]"), None, none).is_err());
        let nested = remote(r#"{"db":{"user":"u"},"n":1}"#);
        let data = render_extract(&nested, Some("db"), none).unwrap();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["user"],
            "property: that object only"
        );
        assert!(matches!(
            render_extract(&nested, Some("n"), none),
            Err(RenderError::NotJsonObject { .. })
        ));
        assert!(matches!(
            render_extract(&nested, Some("nope"), none),
            Err(RenderError::NoSuchProperty { .. })
        ));
    }

    #[test]
    fn certificate_splits_into_tls_keys() {
        let pem = "-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nLEAF\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n";
        let data = render_certificate(&remote(pem)).unwrap();
        let crt = String::from_utf8(data["tls.crt"].clone()).unwrap();
        assert!(crt.contains("LEAF") && crt.contains("CA") && !crt.contains("KEY"));
        assert!(
            String::from_utf8(data["tls.key"].clone())
                .unwrap()
                .contains("KEY")
        );
        assert!(render_certificate(&remote("plain")).is_err());
    }

    #[test]
    fn find_filters_on_name_tags_and_enabled() {
        let info = |name: &str, enabled: bool, env: &str| RemoteSecretInfo {
            name: name.into(),
            enabled,
            tags: BTreeMap::from([("env".to_string(), env.to_string())]),
            updated: None,
        };
        let listing = vec![
            info("app-a", true, "prod"),
            info("app-b", false, "prod"),
            info("app-c", true, "dev"),
            info("db", true, "prod"),
        ];
        let find = FindRef {
            tags: BTreeMap::from([("env".into(), "prod".into())]),
            ..Default::default()
        };
        let re = Regex::new("^app-").unwrap();
        assert_eq!(find_matches(&find, Some(&re), &listing), vec!["app-a"]);
    }

    #[test]
    fn tags_one_or_all() {
        let info = RemoteSecretInfo {
            name: "s".into(),
            enabled: true,
            tags: BTreeMap::from([
                ("owner".into(), "team-a".into()),
                ("env".into(), "prod".into()),
            ]),
            updated: None,
        };
        let none = DecodingStrategy::None;
        assert_eq!(render_tags(&info, Some("owner"), none).unwrap(), b"team-a");
        assert_eq!(
            render_tags(&info, None, none).unwrap(),
            br#"{"env":"prod","owner":"team-a"}"#
        );
        assert_eq!(
            render_tags(&info, Some("cost"), none).unwrap_err(),
            RenderError::NoSuchTag {
                name: "s".into(),
                tag: "cost".into()
            }
        );
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let a = BTreeMap::from([("k".to_string(), b"1".to_vec())]);
        assert_eq!(
            merge(vec![a.clone(), a]).unwrap_err(),
            RenderError::DuplicateKey { key: "k".into() }
        );
    }

    proptest! {
        #[test]
        fn property_lookup_never_panics(doc in ".{0,64}", path in "[a-z0-9.\\\\]{0,16}") {
            let _ = json_property(&doc, &path);
        }

        #[test]
        fn decoding_and_extraction_never_panic(value in any::<String>()) {
            for strategy in [DecodingStrategy::None, DecodingStrategy::Base64, DecodingStrategy::Base64URL, DecodingStrategy::Auto] {
                let _ = decode(&value, strategy);
                let _ = render_extract(&remote(&value), None, strategy);
            }
        }

        #[test]
        fn pem_splitting_never_panics(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just("-----BEGIN CERTIFICATE-----".to_string()),
                    Just("-----END CERTIFICATE-----".to_string()),
                    Just("-----BEGIN RSA PRIVATE KEY-----".to_string()),
                    Just("-----END RSA PRIVATE KEY-----".to_string()),
                    Just("-----BEGIN ".to_string()),
                    any::<String>(),
                ],
                0..12,
            ),
            separator in prop_oneof![Just("\n"), Just("\r\n"), Just("")],
        ) {
            let _ = render_certificate(&remote(&lines.join(separator)));
        }

        #[test]
        fn pem_bundles_split_into_every_certificate_and_the_key(
            bodies in proptest::collection::vec("[A-Za-z0-9+/]{1,64}", 1..5),
            key_body in "[A-Za-z0-9+/]{1,64}",
            key_position in 0usize..5,
            crlf in any::<bool>(),
        ) {
            let block = |label: &str, body: &str| format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n");
            let mut blocks: Vec<String> = bodies.iter().map(|b| block("CERTIFICATE", b)).collect();
            let key = block("PRIVATE KEY", &key_body);
            blocks.insert(key_position.min(blocks.len()), key.clone());
            let mut pem = blocks.concat();
            if crlf {
                pem = pem.replace('\n', "\r\n");
            }
            let data = render_certificate(&remote(&pem)).unwrap();
            let certificates: String = bodies.iter().map(|b| block("CERTIFICATE", b)).collect();
            prop_assert_eq!(String::from_utf8(data["tls.crt"].clone()).unwrap(), certificates);
            prop_assert_eq!(String::from_utf8(data["tls.key"].clone()).unwrap(), key);
        }

        #[test]
        fn properties_of_generated_documents_are_found(
            key in "[a-z.]{1,8}",
            inner in "[a-z]{1,8}",
            value in any::<String>(),
            index in 0usize..3,
        ) {
            let mut items = vec![serde_json::json!(null); 3];
            items[index] = serde_json::json!({ inner.clone(): value.clone() });
            let document = serde_json::json!({ key.clone(): items }).to_string();
            let path = format!("{}.{index}.{inner}", key.replace('.', "\\."));
            prop_assert_eq!(json_property(&document, &path).unwrap(), Some(value));
        }

        #[test]
        fn base64_roundtrips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let encoded = STANDARD.encode(&bytes);
            prop_assert_eq!(decode(&encoded, DecodingStrategy::Base64).unwrap(), bytes.clone());
            prop_assert_eq!(decode(&encoded, DecodingStrategy::Auto).unwrap(), bytes);
        }
    }
}
