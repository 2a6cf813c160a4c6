//! The sync stage against a real kube-apiserver and the Key Vault emulator:
//! each test gets its own namespace, emulator and operator.

mod data;
mod identity;
mod lifecycle;
mod operator;
mod refresh;
#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kvsync::api::KeyVaultSecret;
use reqwest::Method;
use serde_json::{Value, json};
use support::*;

/// Sum of the emulator's counters for one route (`/secrets/{name}` also
/// counts its trailing-slash form, which the SDK uses for the latest version).
fn count(counters: &Value, route: &str) -> u64 {
    counters["byEndpoint"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.trim_end_matches('/').ends_with(route))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum()
}

/// The operator's API-server requests that are not watches, by method.
async fn api_requests(f: &Fixture) -> BTreeMap<String, u64> {
    f.metrics()
        .await
        .lines()
        .filter_map(|line| line.strip_prefix("kvsync_kubernetes_requests_total{method=\""))
        .filter_map(|rest| {
            let (method, rest) = rest.split_once('"')?;
            let count = rest.strip_prefix(",watch=\"false\"} ")?;
            Some((method.to_owned(), count.trim().parse().ok()?))
        })
        .collect()
}

/// Resource versions of every Secret and KeyVaultSecret of the namespace.
async fn all_versions(f: &Fixture) -> BTreeMap<String, String> {
    let secrets = f.secrets().list(&Default::default()).await.unwrap();
    let objects = f.kvs_api().list(&Default::default()).await.unwrap();
    let secrets = secrets
        .items
        .iter()
        .map(|s| (format!("secret/{}", s.name_any()), s.resource_version()));
    let objects = objects
        .items
        .iter()
        .map(|k| (format!("kvs/{}", k.name_any()), k.resource_version()));
    secrets
        .chain(objects)
        .map(|(key, rv)| (key, rv.unwrap_or_default()))
        .collect()
}
