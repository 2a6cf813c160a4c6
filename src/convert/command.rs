//! The `kvsync convert` command: reads ESO manifests from files, stdin or
//! the cluster, writes KeyVaultSecret YAML to stdout and every finding to
//! stderr. Exit code: 0 complete, 2 converted with findings, 1 failed.

use std::io::Read;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_json::Value;

use super::{Conversion, convert, parse_documents, to_yaml};

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// Manifest files (YAML, multi-document or `kind: List`); `-` or none: stdin.
    pub files: Vec<PathBuf>,
    /// Read ExternalSecrets, their stores, credentials' client ids and
    /// templateFrom sources from the current cluster instead.
    #[arg(long)]
    pub from_cluster: bool,
    /// With --from-cluster: this namespace only (default: every namespace).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not YAML: {source}")]
    Parse {
        path: String,
        source: serde_norway::Error,
    },
    #[error("cluster: {0}")]
    Cluster(#[from] kube::Error),
}

/// Runs the conversion; `Ok(true)` when it is complete.
pub async fn run(args: ConvertArgs) -> Result<bool, ConvertError> {
    let docs = if args.from_cluster {
        from_cluster(args.namespace.as_deref()).await?
    } else {
        from_files(&args.files)?
    };
    let conversion: Conversion = convert(&docs);
    print!("{}", to_yaml(&conversion.resources));
    for finding in &conversion.findings {
        eprintln!("NOT CONVERTED {finding}");
    }
    eprintln!(
        "{} KeyVaultSecret(s) written; {}",
        conversion.resources.len(),
        match conversion.findings.len() {
            0 => "the conversion is complete".to_owned(),
            n => format!("{n} field(s) not converted (listed above)"),
        }
    );
    Ok(conversion.is_complete())
}

fn from_files(files: &[PathBuf]) -> Result<Vec<Value>, ConvertError> {
    let stdin = [PathBuf::from("-")];
    let files = if files.is_empty() { &stdin[..] } else { files };
    let mut docs = Vec::new();
    for file in files {
        let path = file.display().to_string();
        let mut text = String::new();
        let read = if path == "-" {
            std::io::stdin().read_to_string(&mut text).map(|_| ())
        } else {
            std::fs::read_to_string(file).map(|t| text = t)
        };
        read.map_err(|source| ConvertError::Read {
            path: path.clone(),
            source,
        })?;
        docs.extend(parse_documents(&text).map_err(|source| ConvertError::Parse { path, source })?);
    }
    Ok(docs)
}

/// ExternalSecrets, SecretStores, ClusterSecretStores and the Secrets and
/// ConfigMaps they name, as manifests.
async fn from_cluster(namespace: Option<&str>) -> Result<Vec<Value>, ConvertError> {
    let client = crate::cluster::client().await?;
    let mut docs = Vec::new();
    for (kind, namespaced) in [
        ("ExternalSecret", true),
        ("SecretStore", true),
        ("ClusterSecretStore", false),
    ] {
        let resource =
            ApiResource::from_gvk(&GroupVersionKind::gvk("external-secrets.io", "v1", kind));
        let api: Api<DynamicObject> = match (namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
            _ => Api::all_with(client.clone(), &resource),
        };
        for object in api.list(&ListParams::default()).await?.items {
            let mut doc = serde_json::to_value(&object).expect("an object serializes");
            doc["apiVersion"] = "external-secrets.io/v1".into();
            doc["kind"] = kind.into();
            docs.push(doc);
        }
    }
    let referenced = referenced_objects(&docs);
    for (kind, ns, name) in referenced {
        let doc = match kind {
            "ConfigMap" => Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .get_opt(&name)
                .await?
                .map(|o| with_kind(serde_json::to_value(o), "ConfigMap")),
            _ => Api::<Secret>::namespaced(client.clone(), &ns)
                .get_opt(&name)
                .await?
                .map(|o| with_kind(serde_json::to_value(o), "Secret")),
        };
        docs.extend(doc);
    }
    Ok(docs)
}

fn with_kind(value: Result<Value, serde_json::Error>, kind: &str) -> Value {
    let mut value = value.expect("an object serializes");
    value["kind"] = kind.into();
    value
}

/// The Secrets holding stores' client/tenant ids and the templateFrom
/// sources, as (kind, namespace, name). Credential Secrets are read for
/// their `clientId`/`tenantId` keys only.
fn referenced_objects(docs: &[Value]) -> Vec<(&'static str, String, String)> {
    let mut found = Vec::new();
    for doc in docs {
        let namespace = super::namespace_of(doc).to_owned();
        let azure = &doc["spec"]["provider"]["azurekv"]["authSecretRef"];
        for field in ["clientId", "tenantId"] {
            if let Some(name) = azure[field]["name"].as_str() {
                let ns = azure[field]["namespace"].as_str().unwrap_or(&namespace);
                found.push(("Secret", ns.to_owned(), name.to_owned()));
            }
        }
        let template_from = doc["spec"]["target"]["template"]["templateFrom"].as_array();
        for entry in template_from.into_iter().flatten() {
            for (field, kind) in [("configMap", "ConfigMap"), ("secret", "Secret")] {
                if let Some(name) = entry[field]["name"].as_str() {
                    found.push((kind, namespace.clone(), name.to_owned()));
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}
