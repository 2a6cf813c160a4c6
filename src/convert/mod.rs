//! `kvsync convert`: ESO manifests → KeyVaultSecrets — pure; the command's
//! I/O (files, stdin, the cluster) is in [`command`].
//!
//! ```text
//!  input documents ──┬─ SecretStore / ClusterSecretStore (azurekv) ──▶ store::StoreAuth (vault URL + auth)
//!                    ├─ Secret / ConfigMap (credentials' clientId, templateFrom sources)
//!                    └─ ExternalSecret ──external_secret::convert──▶ KeyVaultSecret
//!                                              │   (Go templates: gotemplate::translate)
//!                                              └─▶ Finding { object, path, reason } for every field
//!                                                  not mapped exactly — never dropped silently
//! ```
//!
//! A conversion is complete when it has no finding; the command's exit code
//! says so. Every other document kind is reported too.

pub mod command;
mod external_secret;
pub mod gotemplate;
mod store;

use serde_json::Value;

use crate::api::KeyVaultSecret;

/// A field that was not converted exactly, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `Kind namespace/name` of the input object.
    pub object: String,
    /// JSON path of the field in the input object (`spec.data[2].remoteRef.key`).
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.path, self.reason)
    }
}

/// What a conversion produced.
#[derive(Debug, Default)]
pub struct Conversion {
    pub resources: Vec<KeyVaultSecret>,
    pub findings: Vec<Finding>,
}

impl Conversion {
    pub fn is_complete(&self) -> bool {
        self.findings.is_empty()
    }
}

/// The input documents, by kind.
struct Inputs<'a> {
    docs: &'a [Value],
}

impl<'a> Inputs<'a> {
    fn of_kind(&self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.docs.iter().filter(move |d| d["kind"] == kind)
    }

    /// A ConfigMap's or Secret's string data (a Secret's `data` base64-decoded).
    fn string_data(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<serde_json::Map<String, Value>> {
        let doc = self.docs.iter().find(|d| {
            d["kind"] == kind && d["metadata"]["name"] == name && namespace_of(d) == namespace
        })?;
        let mut data = doc["stringData"].as_object().cloned().unwrap_or_default();
        for (key, value) in doc["data"].as_object().into_iter().flatten() {
            let text = match kind {
                "Secret" => {
                    use base64::Engine;
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(value.as_str().unwrap_or_default())
                        .ok()?;
                    Value::String(String::from_utf8(bytes).ok()?)
                }
                _ => value.clone(),
            };
            data.entry(key.clone()).or_insert(text);
        }
        Some(data)
    }
}

/// An object's namespace (`default` when the manifest has none).
fn namespace_of(doc: &Value) -> &str {
    doc["metadata"]["namespace"].as_str().unwrap_or("default")
}

/// `Kind namespace/name`, the way findings name an input object.
fn object_name(doc: &Value) -> String {
    let kind = doc["kind"].as_str().unwrap_or("?");
    let name = doc["metadata"]["name"].as_str().unwrap_or("?");
    match doc["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Kinds that are read as context, not converted.
const CONTEXT_KINDS: &[&str] = &["SecretStore", "ClusterSecretStore", "Secret", "ConfigMap"];

/// Converts every ExternalSecret among `docs` (other kinds are context).
pub fn convert(docs: &[Value]) -> Conversion {
    let inputs = Inputs { docs };
    let mut conversion = Conversion::default();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if kind == "ExternalSecret" {
            let mut findings = Vec::new();
            if let Some(resource) = external_secret::convert(doc, &inputs, &mut findings) {
                conversion.resources.push(resource);
            }
            // A store used by many ExternalSecrets is reported once.
            for finding in findings {
                if !conversion.findings.contains(&finding) {
                    conversion.findings.push(finding);
                }
            }
        } else if !CONTEXT_KINDS.contains(&kind) {
            conversion.findings.push(Finding {
                object: object_name(doc),
                path: "kind".into(),
                reason: format!("{kind:?} is not converted (ExternalSecret only; ClusterExternalSecret and PushSecret have no kvsync counterpart)"),
            });
        }
    }
    conversion
}

/// Reads YAML documents (`---`-separated, `kind: List` expanded).
pub fn parse_documents(text: &str) -> Result<Vec<Value>, serde_norway::Error> {
    let mut docs = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        match value {
            Value::Null => {}
            Value::Object(ref map) if map.get("kind") == Some(&Value::from("List")) => {
                docs.extend(
                    map.get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                );
            }
            other => docs.push(other),
        }
    }
    Ok(docs)
}

/// The KeyVaultSecrets as a YAML stream.
pub fn to_yaml(resources: &[KeyVaultSecret]) -> String {
    resources
        .iter()
        .map(|r| serde_norway::to_string(r).expect("a KeyVaultSecret serializes"))
        .collect::<Vec<_>>()
        .join("---\n")
}
