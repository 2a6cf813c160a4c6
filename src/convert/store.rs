//! An ESO `SecretStore`/`ClusterSecretStore` with the `azurekv` provider →
//! kvsync's `vaultUrl` + `auth` — pure.
//!
//! | ESO `authType` | kvsync `auth` |
//! |---|---|
//! | `WorkloadIdentity` + `serviceAccountRef` | `workloadIdentity.serviceAccountName` (same namespace only) |
//! | `WorkloadIdentity`, no `serviceAccountRef` | `workloadIdentity: {}` (the operator's identity) |
//! | `ServicePrincipal` + `clientSecret` | `clientSecret` |
//! | `ServicePrincipal` + `clientCertificate` | `clientCertificate` |
//! | `ManagedIdentity` (+ `identityId` as a client id) | `managedIdentity` (`clientId`; the operator's node identity, allowed namespaces only) |
//!
//! ESO keeps the client id (and possibly the tenant id) in a Secret; kvsync
//! takes them literally, so they are read from a Secret among the inputs
//! (`--from-cluster` reads it from the cluster) or reported.

use serde_json::Value;

use super::{Finding, Inputs, namespace_of, object_name};
use crate::api::{Auth, ClientSecretAuth, ManagedIdentityAuth, SecretKeyRef, WorkloadIdentityAuth};

/// What a store gives a KeyVaultSecret.
pub struct StoreAuth {
    pub vault_url: String,
    pub auth: Auth,
}

/// Finds the store an ExternalSecret names and maps it for the
/// ExternalSecret's namespace; what cannot be mapped is reported.
pub fn resolve(
    external_secret: &Value,
    store_ref: &Value,
    inputs: &Inputs,
    findings: &mut Vec<Finding>,
) -> Option<StoreAuth> {
    let object = object_name(external_secret);
    let namespace = namespace_of(external_secret);
    let kind = store_ref["kind"].as_str().unwrap_or("SecretStore");
    let name = store_ref["name"].as_str().unwrap_or_default();
    let store = inputs.of_kind(kind).find(|s| {
        s["metadata"]["name"] == name
            && (kind == "ClusterSecretStore" || namespace_of(s) == namespace)
    });
    let Some(store) = store else {
        findings.push(Finding {
            object,
            path: "spec.secretStoreRef".into(),
            reason: format!(
                "{kind} {name:?} is not among the inputs: add its manifest (or use --from-cluster)"
            ),
        });
        return None;
    };
    let store_object = object_name(store);
    let mut report = |path: &str, reason: String| {
        findings.push(Finding {
            object: store_object.clone(),
            path: path.into(),
            reason,
        })
    };
    let provider = &store["spec"]["provider"];
    let Some(azure) = provider.get("azurekv") else {
        let names: Vec<&String> = provider
            .as_object()
            .into_iter()
            .flat_map(|p| p.keys())
            .collect();
        report(
            "spec.provider",
            format!("provider {names:?} is not Azure Key Vault"),
        );
        return None;
    };
    let base = "spec.provider.azurekv";
    for (field, reason) in [
        (
            "environmentType",
            "kvsync takes the cloud from the vault URL and the operator's --authority-host",
        ),
        (
            "customCloudConfig",
            "kvsync takes the cloud from the vault URL and the operator's --authority-host",
        ),
    ] {
        if let Some(value) = azure.get(field).filter(|v| !v.is_null())
            && !(field == "environmentType" && value == "PublicCloud")
        {
            report(&format!("{base}.{field}"), reason.into());
        }
    }
    let known = [
        "authType",
        "vaultUrl",
        "tenantId",
        "environmentType",
        "authSecretRef",
        "serviceAccountRef",
        "identityId",
        "useAzureSDK",
        "customCloudConfig",
    ];
    for field in azure.as_object().into_iter().flat_map(|a| a.keys()) {
        if !known.contains(&field.as_str()) {
            report(
                &format!("{base}.{field}"),
                "unknown to the converter: not converted".into(),
            );
        }
    }
    if store["spec"].get("conditions").is_some() {
        report("spec.conditions", "a ClusterSecretStore's namespace conditions have no counterpart: KeyVaultSecrets are namespaced and use the operator's --namespaces/--namespace-selector".into());
    }
    let vault_url = azure["vaultUrl"].as_str().unwrap_or_default().to_owned();
    let literal = |field: &str, findings: &mut dyn FnMut(&str, String)| -> Option<String> {
        if let Some(value) = azure[field].as_str() {
            return Some(value.to_owned());
        }
        let selector = &azure["authSecretRef"][field];
        let secret_namespace = selector["namespace"].as_str().unwrap_or(namespace);
        let (secret, key) = (selector["name"].as_str()?, selector["key"].as_str()?);
        match inputs
            .string_data("Secret", secret_namespace, secret)
            .and_then(|data| data.get(key).and_then(Value::as_str).map(str::to_owned))
        {
            Some(value) => Some(value.trim().to_owned()),
            None => {
                findings(
                    &format!("{base}.authSecretRef.{field}"),
                    format!(
                        "kvsync needs the {field} itself; Secret {secret_namespace}/{secret} (key {key}) is not among the inputs (use --from-cluster, or fill in spec.auth by hand)"
                    ),
                );
                None
            }
        }
    };
    let auth_type = azure["authType"].as_str().unwrap_or("ServicePrincipal");
    let auth = match auth_type {
        "WorkloadIdentity" => {
            let account = &azure["serviceAccountRef"];
            if let Some(other) = account["namespace"].as_str().filter(|n| *n != namespace) {
                report(
                    &format!("{base}.serviceAccountRef.namespace"),
                    format!(
                        "a service account of namespace {other}; kvsync uses only service accounts of the KeyVaultSecret's own namespace ({namespace})"
                    ),
                );
            }
            if account.get("audiences").is_some() {
                report(
                    &format!("{base}.serviceAccountRef.audiences"),
                    "kvsync requests tokens for Entra's audience (api://AzureADTokenExchange)"
                        .into(),
                );
            }
            Auth {
                workload_identity: Some(WorkloadIdentityAuth {
                    service_account_name: account["name"].as_str().map(str::to_owned),
                    client_id: azure["authSecretRef"]
                        .get("clientId")
                        .and_then(|_| literal("clientId", &mut report)),
                    tenant_id: literal("tenantId", &mut report),
                }),
                client_secret: None,
                client_certificate: None,
                managed_identity: None,
            }
        }
        "ManagedIdentity" => {
            let identity = azure["identityId"].as_str();
            if identity.is_some_and(|id| !is_guid(id)) {
                report(
                    &format!("{base}.identityId"),
                    "kvsync selects a user-assigned identity by its client id (a GUID), not by resource or object id: set spec.auth.managedIdentity.clientId by hand".into(),
                );
                return None;
            }
            Auth {
                workload_identity: None,
                client_secret: None,
                client_certificate: None,
                managed_identity: Some(ManagedIdentityAuth {
                    client_id: identity.map(str::to_owned),
                }),
            }
        }
        "ServicePrincipal" => {
            let auth_ref = &azure["authSecretRef"];
            let (field, selector) = match (
                auth_ref.get("clientSecret"),
                auth_ref.get("clientCertificate"),
            ) {
                (Some(secret), _) => ("clientSecret", secret),
                (None, Some(certificate)) => ("clientCertificate", certificate),
                (None, None) => {
                    report(
                        &format!("{base}.authSecretRef"),
                        "ServicePrincipal needs clientSecret or clientCertificate".into(),
                    );
                    return None;
                }
            };
            if let Some(other) = selector["namespace"].as_str().filter(|n| *n != namespace) {
                report(
                    &format!("{base}.authSecretRef.{field}.namespace"),
                    format!(
                        "a Secret of namespace {other}; kvsync reads credentials only from the KeyVaultSecret's own namespace ({namespace}): copy it there"
                    ),
                );
            }
            let credential = ClientSecretAuth {
                tenant_id: literal("tenantId", &mut report).unwrap_or_default(),
                client_id: literal("clientId", &mut report).unwrap_or_default(),
                secret_ref: SecretKeyRef {
                    name: selector["name"].as_str().unwrap_or_default().into(),
                    key: selector["key"].as_str().unwrap_or_default().into(),
                },
            };
            let complete = !credential.tenant_id.is_empty() && !credential.client_id.is_empty();
            if !complete {
                return None;
            }
            Auth {
                workload_identity: None,
                client_secret: (field == "clientSecret").then(|| credential.clone()),
                client_certificate: (field == "clientCertificate").then_some(credential),
                managed_identity: None,
            }
        }
        other => {
            report(
                &format!("{base}.authType"),
                format!(
                    "{other} is not supported: use WorkloadIdentity (AKS) or a service principal"
                ),
            );
            return None;
        }
    };
    Some(StoreAuth { vault_url, auth })
}

/// Whether `id` is a GUID (a client id), not a resource or object path.
fn is_guid(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
}
