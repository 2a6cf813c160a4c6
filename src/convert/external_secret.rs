//! One ESO `ExternalSecret` (v1/v1beta1, `azurekv` store) → one
//! KeyVaultSecret — pure. Every field is either mapped, or reported with
//! its path and the reason; fields this converter does not know are
//! reported as such (see docs/migrating.md for the whole map).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::gotemplate::translate;
use super::{Finding, Inputs, namespace_of, object_name, store};
use crate::api::{
    ConversionStrategy, CreationPolicy, DataFrom, DataRef, DecodingStrategy, DeletionPolicy,
    ExtractRef, FindRef, KeyVaultSecret, KeyVaultSecretSpec, MergePolicy, MetadataPolicy,
    RegexpRewrite, RemoteRef, Rewrite, Target, Template,
};

/// Annotations of tools, not of the user, left behind.
const TOOL_ANNOTATIONS: &[&str] = &[crate::api::contract::KUBECTL_LAST_APPLIED];

/// The findings of one ExternalSecret.
struct Report<'a> {
    object: String,
    findings: &'a mut Vec<Finding>,
}

impl Report<'_> {
    fn finding(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.findings.push(Finding {
            object: self.object.clone(),
            path: path.into(),
            reason: reason.into(),
        });
    }

    /// Reports every field of `value` (an object) not in `known`.
    fn unknown(&mut self, value: &Value, path: &str, known: &[&str]) {
        for key in value.as_object().into_iter().flat_map(Map::keys) {
            if !known.contains(&key.as_str()) {
                self.finding(
                    format!("{path}.{key}"),
                    "unknown to the converter: not converted",
                );
            }
        }
    }
}

pub fn convert(
    doc: &Value,
    inputs: &Inputs,
    findings: &mut Vec<Finding>,
) -> Option<KeyVaultSecret> {
    let store = store::resolve(doc, &doc["spec"]["secretStoreRef"], inputs, findings);
    let mut report = Report {
        object: object_name(doc),
        findings,
    };
    if doc["apiVersion"]
        .as_str()
        .is_some_and(|v| v.ends_with("v1alpha1"))
    {
        report.finding(
            "apiVersion",
            "v1alpha1 ExternalSecrets are not converted: upgrade them to v1 first",
        );
        return None;
    }
    let spec = &doc["spec"];
    report.unknown(
        spec,
        "spec",
        &[
            "secretStoreRef",
            "refreshInterval",
            "refreshPolicy",
            "target",
            "data",
            "dataFrom",
        ],
    );
    let refresh_interval = refresh_interval(spec, &mut report);
    let target = target(doc, &mut report, inputs);
    let data: Vec<DataRef> = spec["data"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, entry)| data_ref(entry, &format!("spec.data[{i}]"), &mut report))
        .collect();
    let data_from: Vec<DataFrom> = spec["dataFrom"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, entry)| data_from(entry, &format!("spec.dataFrom[{i}]"), &mut report))
        .collect();
    if data.is_empty() && data_from.is_empty() {
        report.finding(
            "spec",
            "nothing left to sync: kvsync needs at least one data or dataFrom entry",
        );
        return None;
    }
    let Some(store) = store else {
        report.finding(
            "spec.secretStoreRef",
            "its store cannot be converted (see the store's findings): not converted",
        );
        return None;
    };
    let mut resource = KeyVaultSecret::new(
        doc["metadata"]["name"].as_str().unwrap_or_default(),
        KeyVaultSecretSpec {
            vault_url: store.vault_url,
            auth: store.auth,
            refresh_interval,
            target,
            data,
            data_from,
        },
    );
    resource.metadata.namespace = doc["metadata"]["namespace"].as_str().map(str::to_owned);
    resource.metadata.labels = string_map(&doc["metadata"]["labels"]).filter(|m| !m.is_empty());
    resource.metadata.annotations = string_map(&doc["metadata"]["annotations"])
        .map(|mut m| {
            m.retain(|k, _| !TOOL_ANNOTATIONS.contains(&k.as_str()));
            m
        })
        .filter(|m| !m.is_empty());
    Some(resource)
}

fn string_map(value: &Value) -> Option<BTreeMap<String, String>> {
    value.as_object().map(|map| {
        map.iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect()
    })
}

/// `refreshInterval` (a Go duration) and `refreshPolicy`.
fn refresh_interval(spec: &Value, report: &mut Report) -> Option<String> {
    match spec["refreshPolicy"].as_str() {
        None | Some("Periodic") => {}
        Some("CreatedOnce" | "OnChange") => return Some("0".into()),
        Some(other) => report.finding("spec.refreshPolicy", format!("{other:?} is not known")),
    }
    let text = spec["refreshInterval"].as_str()?;
    let valid = regex::Regex::new(r"^(0|([0-9]+(ms|s|m|h|d))+)$").expect("a valid pattern");
    if valid.is_match(text) {
        Some(text.to_owned())
    } else {
        report.finding(
            "spec.refreshInterval",
            format!("{text:?} is not a whole number of ms/s/m/h/d: the default 1h is used; set it by hand"),
        );
        None
    }
}

fn target(doc: &Value, report: &mut Report, inputs: &Inputs) -> Target {
    let target = &doc["spec"]["target"];
    report.unknown(
        target,
        "spec.target",
        &[
            "name",
            "creationPolicy",
            "deletionPolicy",
            "immutable",
            "template",
        ],
    );
    let mut converted = Target {
        name: target["name"].as_str().map(str::to_owned),
        immutable: target["immutable"].as_bool().unwrap_or(false),
        ..Target::default()
    };
    converted.creation_policy = match target["creationPolicy"].as_str() {
        None | Some("Owner") => CreationPolicy::Owner,
        Some("Orphan") => CreationPolicy::Orphan,
        Some("Merge") => CreationPolicy::Merge,
        Some(other) => {
            report.finding(
                "spec.target.creationPolicy",
                format!("{other:?}: kvsync always writes a Secret (Owner, Orphan or Merge); Owner is used"),
            );
            CreationPolicy::Owner
        }
    };
    converted.deletion_policy = match target["deletionPolicy"].as_str() {
        None | Some("Retain") => DeletionPolicy::Retain,
        Some("Merge") => DeletionPolicy::Merge,
        Some("Delete") => DeletionPolicy::Delete,
        Some(other) => {
            report.finding(
                "spec.target.deletionPolicy",
                format!("{other:?} is not known; Retain is used"),
            );
            DeletionPolicy::Retain
        }
    };
    if let Some(template) = target.get("template") {
        converted.template = self::template(template, &mut converted, report, doc, inputs);
    }
    if let Err(refused) = crate::sync::target::check_target(&converted) {
        report.finding(
            "spec.target",
            format!("{refused} (kvsync reports it as InvalidSpec)"),
        );
    }
    converted
}

/// `target.template`: type and metadata go to the target; data and
/// templateFrom are translated into one Jinja `template.data`.
fn template(
    template: &Value,
    target: &mut Target,
    report: &mut Report,
    doc: &Value,
    inputs: &Inputs,
) -> Option<Template> {
    let base = "spec.target.template";
    report.unknown(
        template,
        base,
        &[
            "type",
            "engineVersion",
            "metadata",
            "data",
            "templateFrom",
            "mergePolicy",
        ],
    );
    target.type_ = template["type"].as_str().map(str::to_owned);
    if template["engineVersion"].as_str() == Some("v1") {
        report.finding(
            format!("{base}.engineVersion"),
            "engine v1 (deprecated in ESO) is translated as v2: check the rendered keys",
        );
    }
    let metadata = &template["metadata"];
    report.unknown(
        metadata,
        &format!("{base}.metadata"),
        &["labels", "annotations"],
    );
    for (field, into) in [
        ("labels", &mut target.labels),
        ("annotations", &mut target.annotations),
    ] {
        for (key, value) in string_map(&metadata[field]).unwrap_or_default() {
            if value.contains("{{") {
                report.finding(
                    format!("{base}.metadata.{field}.{key}"),
                    "a templated value: kvsync's labels and annotations are literal; set it by hand",
                );
            } else {
                into.insert(key, value);
            }
        }
    }
    let mut data = BTreeMap::new();
    for (i, entry) in template["templateFrom"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        template_from(
            entry,
            &format!("{base}.templateFrom[{i}]"),
            &mut data,
            report,
            doc,
            inputs,
        );
    }
    for (key, go) in string_map(&template["data"]).unwrap_or_default() {
        match translate(&go) {
            Ok(jinja) => {
                data.insert(key, jinja);
            }
            Err(error) => report.finding(format!("{base}.data.{key}"), error.to_string()),
        }
    }
    let merge_policy = match template["mergePolicy"].as_str() {
        Some("Merge") => MergePolicy::Merge,
        _ => MergePolicy::Replace,
    };
    (!data.is_empty()).then_some(Template {
        data,
        template_from: Vec::new(),
        merge_policy,
    })
}

/// A `templateFrom` entry whose source is among the inputs: its items are
/// translated and inlined into `template.data` (the Go source cannot be
/// used by kvsync as it stands).
fn template_from(
    entry: &Value,
    path: &str,
    data: &mut BTreeMap<String, String>,
    report: &mut Report,
    doc: &Value,
    inputs: &Inputs,
) {
    report.unknown(entry, path, &["configMap", "secret", "target", "literal"]);
    if entry.get("literal").is_some() {
        report.finding(
            format!("{path}.literal"),
            "literal KeysAndValues templates are not supported",
        );
        return;
    }
    if entry["target"].as_str().is_some_and(|t| t != "Data") {
        report.finding(
            format!("{path}.target"),
            "only templates of the Secret's data are supported",
        );
        return;
    }
    let (kind, field) = match (entry.get("configMap"), entry.get("secret")) {
        (Some(_), None) => ("ConfigMap", "configMap"),
        (None, Some(_)) => ("Secret", "secret"),
        _ => {
            report.finding(path, "needs exactly one of configMap, secret");
            return;
        }
    };
    let source = &entry[field];
    let name = source["name"].as_str().unwrap_or_default();
    let Some(content) = inputs.string_data(kind, namespace_of(doc), name) else {
        report.finding(
            format!("{path}.{field}"),
            format!("{kind} {name} is not among the inputs: its Go templates cannot be translated (add it, or use --from-cluster)"),
        );
        return;
    };
    for (i, item) in source["items"].as_array().into_iter().flatten().enumerate() {
        let item_path = format!("{path}.{field}.items[{i}]");
        let key = item["key"].as_str().unwrap_or_default();
        if item["templateAs"].as_str().is_some_and(|t| t != "Values") {
            report.finding(
                format!("{item_path}.templateAs"),
                "only templateAs: Values is supported",
            );
            continue;
        }
        match content.get(key).and_then(Value::as_str).map(translate) {
            Some(Ok(jinja)) => {
                data.insert(key.to_owned(), jinja);
            }
            Some(Err(error)) => report.finding(item_path, error.to_string()),
            None => report.finding(item_path, format!("{kind} {name} has no key {key:?}")),
        }
    }
}

/// An azurekv `key`: `secret/<name>` or `<name>`; certificates and keys are
/// other Key Vault objects.
fn vault_name(key: &str, path: &str, report: &mut Report) -> Option<String> {
    if key.starts_with("cert/") || key.starts_with("key/") {
        report.finding(
            path,
            format!("{key:?}: Key Vault certificate and key objects are not read; use the certificate's secret (dataFrom.certificate) instead"),
        );
        return None;
    }
    let name = key.strip_prefix("secret/").unwrap_or(key);
    let valid = !name.is_empty()
        && name.len() <= 127
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !valid {
        report.finding(path, format!("{name:?} is not a Key Vault secret name"));
        return None;
    }
    Some(name.to_owned())
}

fn decoding(value: &Value, path: &str, report: &mut Report) -> DecodingStrategy {
    match value.as_str() {
        None | Some("None") => DecodingStrategy::None,
        Some("Base64") => DecodingStrategy::Base64,
        Some("Base64URL") => DecodingStrategy::Base64URL,
        Some("Auto") => DecodingStrategy::Auto,
        Some(other) => {
            report.finding(path, format!("{other:?} is not known; None is used"));
            DecodingStrategy::None
        }
    }
}

fn conversion(value: &Value, path: &str, report: &mut Report) -> ConversionStrategy {
    match value.as_str() {
        None | Some("Default") => ConversionStrategy::Default,
        Some("Unicode") => ConversionStrategy::Unicode,
        Some(other) => {
            report.finding(path, format!("{other:?} is not known; Default is used"));
            ConversionStrategy::Default
        }
    }
}

/// A `property` in gjson syntax beyond kvsync's dotted paths is reported.
fn property(value: &Value, path: &str, report: &mut Report) -> Option<String> {
    let property = value.as_str()?.to_owned();
    if property.contains(['#', '*', '?', '|', '@', '!', '=']) {
        report.finding(
            path,
            format!("{property:?} uses gjson queries; kvsync reads dotted paths (a.b.0) only"),
        );
    }
    Some(property)
}

fn data_ref(entry: &Value, path: &str, report: &mut Report) -> Option<DataRef> {
    report.unknown(entry, path, &["secretKey", "remoteRef", "sourceRef"]);
    if entry.get("sourceRef").is_some() {
        report.finding(
            format!("{path}.sourceRef"),
            "per-entry stores and generators are not supported: entry left out",
        );
        return None;
    }
    let remote = &entry["remoteRef"];
    let remote_path = format!("{path}.remoteRef");
    report.unknown(
        remote,
        &remote_path,
        &[
            "key",
            "property",
            "version",
            "conversionStrategy",
            "decodingStrategy",
            "metadataPolicy",
        ],
    );
    let name = vault_name(
        remote["key"].as_str().unwrap_or_default(),
        &format!("{remote_path}.key"),
        report,
    )?;
    if conversion(
        &remote["conversionStrategy"],
        &format!("{remote_path}.conversionStrategy"),
        report,
    ) != ConversionStrategy::Default
    {
        report.finding(
            format!("{remote_path}.conversionStrategy"),
            "applies to dataFrom keys only in kvsync: ignored",
        );
    }
    let metadata_policy = match remote["metadataPolicy"].as_str() {
        Some("Fetch") => MetadataPolicy::Fetch,
        _ => MetadataPolicy::None,
    };
    Some(DataRef {
        secret_key: entry["secretKey"].as_str().unwrap_or_default().to_owned(),
        remote_ref: RemoteRef {
            name,
            version: remote["version"].as_str().map(str::to_owned),
            property: property(
                &remote["property"],
                &format!("{remote_path}.property"),
                report,
            ),
            decoding_strategy: decoding(
                &remote["decodingStrategy"],
                &format!("{remote_path}.decodingStrategy"),
                report,
            ),
            metadata_policy,
            not_before_policy: Default::default(),
        },
        previous_secret_key: None,
    })
}

fn data_from(entry: &Value, path: &str, report: &mut Report) -> Option<DataFrom> {
    report.unknown(entry, path, &["extract", "find", "rewrite", "sourceRef"]);
    if entry.get("sourceRef").is_some() {
        report.finding(
            format!("{path}.sourceRef"),
            "per-entry stores and generators are not supported: entry left out",
        );
        return None;
    }
    let mut converted = DataFrom {
        extract: None,
        find: None,
        certificate: None,
        conversion_strategy: ConversionStrategy::Default,
        rewrite: rewrites(&entry["rewrite"], &format!("{path}.rewrite"), report),
    };
    if let Some(extract) = entry.get("extract") {
        let base = format!("{path}.extract");
        report.unknown(
            extract,
            &base,
            &[
                "key",
                "property",
                "version",
                "conversionStrategy",
                "decodingStrategy",
                "metadataPolicy",
            ],
        );
        if extract["metadataPolicy"].as_str() == Some("Fetch") {
            report.finding(format!("{base}.metadataPolicy"), "tags as keys (extract with Fetch) are not supported: read them with data[].remoteRef.metadataPolicy: Fetch");
            return None;
        }
        converted.conversion_strategy = conversion(
            &extract["conversionStrategy"],
            &format!("{base}.conversionStrategy"),
            report,
        );
        converted.extract = Some(ExtractRef {
            name: vault_name(
                extract["key"].as_str().unwrap_or_default(),
                &format!("{base}.key"),
                report,
            )?,
            version: extract["version"].as_str().map(str::to_owned),
            property: property(&extract["property"], &format!("{base}.property"), report),
            decoding_strategy: decoding(
                &extract["decodingStrategy"],
                &format!("{base}.decodingStrategy"),
                report,
            ),
            not_before_policy: Default::default(),
        });
    } else if let Some(find) = entry.get("find") {
        let base = format!("{path}.find");
        report.unknown(
            find,
            &base,
            &[
                "name",
                "tags",
                "path",
                "conversionStrategy",
                "decodingStrategy",
            ],
        );
        if find.get("path").is_some() {
            report.finding(format!("{base}.path"), "Key Vault has no paths: ignored");
        }
        report.unknown(&find["name"], &format!("{base}.name"), &["regexp"]);
        converted.conversion_strategy = conversion(
            &find["conversionStrategy"],
            &format!("{base}.conversionStrategy"),
            report,
        );
        converted.find = Some(FindRef {
            name_regex: find["name"]["regexp"].as_str().map(str::to_owned),
            tags: string_map(&find["tags"]).unwrap_or_default(),
            decoding_strategy: decoding(
                &find["decodingStrategy"],
                &format!("{base}.decodingStrategy"),
                report,
            ),
            not_before_policy: Default::default(),
        });
    } else {
        report.finding(path, "needs extract or find");
        return None;
    }
    Some(converted)
}

fn rewrites(value: &Value, path: &str, report: &mut Report) -> Vec<Rewrite> {
    let mut converted = Vec::new();
    for (i, rewrite) in value.as_array().into_iter().flatten().enumerate() {
        let item = format!("{path}[{i}]");
        report.unknown(rewrite, &item, &["regexp", "transform", "merge"]);
        if let Some(regexp) = rewrite.get("regexp") {
            converted.push(Rewrite {
                regexp: RegexpRewrite {
                    source: regexp["source"].as_str().unwrap_or_default().to_owned(),
                    target: regexp["target"]
                        .as_str()
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned),
                },
            });
        } else {
            report.finding(item, "only regexp rewrites are supported (transform and merge are not): keys left as they are");
        }
    }
    converted
}
