//! Which identity reads the vault for a KeyVaultSecret: its own
//! ServiceAccount (federated), the operator's or the node's managed identity
//! (only where allowed), or an app registration whose credential is in a
//! Secret of the namespace.
//!
//! The ServiceAccount and the credential are read as the watches saw them
//! (see [`super::observed`]): an idle refresh asks the API server nothing.
//!
//! Every failure here is the user's to fix ([`SyncError::AuthConfig`] or
//! [`SyncError::InvalidSpec`]); the ServiceAccount and Secret watches bring
//! the object back as soon as the fix is made.

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;
use kube::api::Api;

use super::context::Context;
use super::error::SyncError;
use super::key::ObjectKey;
use super::values;
use crate::api::contract::{
    SA_CLIENT_ID_ANNOTATION, SA_OPT_IN_ANNOTATION, SA_TENANT_ID_ANNOTATION,
};
use crate::api::{
    AuthMethod, ClientSecretAuth, KeyVaultSecret, ManagedIdentityAuth, TemplateSourceKind,
    WorkloadIdentityAuth,
};
use crate::vault::Identity;

pub async fn resolve(kvs: &KeyVaultSecret, ctx: &Context) -> Result<Identity, SyncError> {
    let namespace = kvs.namespace().unwrap_or_default();
    match kvs.spec.auth.method() {
        Some(AuthMethod::ManagedIdentity(managed)) => managed_identity(ctx, &namespace, managed),
        Some(AuthMethod::WorkloadIdentity(wi)) => match &wi.service_account_name {
            None => operator_identity(ctx, &namespace),
            Some(sa) => service_account_identity(ctx, &namespace, sa, wi).await,
        },
        Some(AuthMethod::ClientSecret(auth)) => {
            let secret = credential(ctx, &namespace, auth).await?;
            Ok(Identity::ClientSecret {
                tenant_id: auth.tenant_id.clone(),
                client_id: auth.client_id.clone(),
                secret: secret.trim().to_owned(),
            })
        }
        Some(AuthMethod::ClientCertificate(auth)) => Ok(Identity::ClientCertificate {
            tenant_id: auth.tenant_id.clone(),
            client_id: auth.client_id.clone(),
            pem: credential(ctx, &namespace, auth).await?,
        }),
        None => Err(SyncError::InvalidSpec(ONE_AUTH.into())),
    }
}

const ONE_AUTH: &str =
    "auth needs exactly one of workloadIdentity, clientSecret, clientCertificate, managedIdentity";

/// Whether this namespace may use identities of the operator's (its own, its node's).
fn may_use_operator_identity(ctx: &Context, namespace: &str) -> bool {
    ctx.operator_identity_namespaces
        .iter()
        .any(|n| n == namespace)
}

/// The node's managed identity, if this namespace may use it (it is the
/// operator's host identity, not the namespace's).
fn managed_identity(
    ctx: &Context,
    namespace: &str,
    managed: &ManagedIdentityAuth,
) -> Result<Identity, SyncError> {
    if !may_use_operator_identity(ctx, namespace) {
        return Err(SyncError::AuthConfig(format!(
            "the node's managed identity may not be used from namespace {namespace}; use a service account or an app credential of the namespace, or ask the kvsync admin to add {namespace} to --operator-identity-namespaces"
        )));
    }
    Ok(Identity::ManagedIdentity {
        client_id: managed.client_id.clone(),
    })
}

/// The operator's own identity, if this namespace may use it.
fn operator_identity(ctx: &Context, namespace: &str) -> Result<Identity, SyncError> {
    if may_use_operator_identity(ctx, namespace) {
        Ok(Identity::Operator)
    } else {
        Err(SyncError::AuthConfig(format!(
            "the operator's own identity may not be used from namespace {namespace}; set workloadIdentity.serviceAccountName, or ask the kvsync admin to add {namespace} to --operator-identity-namespaces"
        )))
    }
}

/// What kvsync reads of a ServiceAccount: its Workload Identity annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadAnnotations {
    client_id: Option<String>,
    tenant_id: Option<String>,
    opted_in: bool,
}

impl WorkloadAnnotations {
    pub fn of(sa: &impl ResourceExt) -> Self {
        let annotation = |key: &str| sa.annotations().get(key).cloned();
        WorkloadAnnotations {
            client_id: annotation(SA_CLIENT_ID_ANNOTATION),
            tenant_id: annotation(SA_TENANT_ID_ANNOTATION),
            opted_in: annotation(SA_OPT_IN_ANNOTATION).as_deref() == Some("true"),
        }
    }
}

/// The annotations of a ServiceAccount of the namespace: as the watch saw
/// them, or (not seen yet) as the API server has them.
async fn service_account(
    ctx: &Context,
    namespace: &str,
    sa_name: &str,
) -> Result<WorkloadAnnotations, SyncError> {
    let key = ObjectKey::new(namespace, sa_name);
    if let Some(seen) = ctx.service_accounts.lock().unwrap().known(&key) {
        return Ok(seen.clone());
    }
    let sa = Api::<ServiceAccount>::namespaced(ctx.client.clone(), namespace)
        .get_opt(sa_name)
        .await?
        .ok_or_else(|| {
            SyncError::InvalidSpec(format!(
                "service account {sa_name} does not exist in namespace {namespace}"
            ))
        })?;
    Ok(WorkloadAnnotations::of(&sa))
}

/// A ServiceAccount of the namespace, with client and tenant id from the
/// spec or the ServiceAccount's Workload Identity annotations.
async fn service_account_identity(
    ctx: &Context,
    namespace: &str,
    sa_name: &str,
    wi: &WorkloadIdentityAuth,
) -> Result<Identity, SyncError> {
    let sa = service_account(ctx, namespace, sa_name).await?;
    if ctx.require_service_account_opt_in && !sa.opted_in {
        return Err(SyncError::AuthConfig(format!(
            "service account {sa_name} has not opted in to token exchange by kvsync: annotate it {SA_OPT_IN_ANNOTATION}=\"true\" (this cluster runs kvsync with --require-service-account-opt-in)"
        )));
    }
    let client_id = wi
        .client_id
        .clone()
        .or(sa.client_id)
        .ok_or_else(|| {
            SyncError::InvalidSpec(format!(
                "no client id: set workloadIdentity.clientId or annotate service account {sa_name} with {SA_CLIENT_ID_ANNOTATION}"
            ))
        })?;
    let tenant_id = wi
        .tenant_id
        .clone()
        .or(sa.tenant_id)
        .or_else(|| ctx.default_tenant_id.clone())
        .ok_or_else(|| {
            SyncError::InvalidSpec(format!(
                "no tenant id: set workloadIdentity.tenantId or annotate service account {sa_name} with {SA_TENANT_ID_ANNOTATION}"
            ))
        })?;
    Ok(Identity::ServiceAccount {
        namespace: namespace.to_owned(),
        name: sa_name.to_owned(),
        tenant_id,
        client_id,
    })
}

/// The credential (client secret or certificate PEM) an app registration's
/// `secretRef` points at (read as in [`super::values`]).
async fn credential(
    ctx: &Context,
    namespace: &str,
    auth: &ClientSecretAuth,
) -> Result<String, SyncError> {
    let reference = &auth.secret_ref;
    let key = reference.key.as_str();
    let values = values::read(
        ctx,
        TemplateSourceKind::Secret,
        namespace,
        &reference.name,
        &[key],
    )
    .await?
    .ok_or_else(|| {
        SyncError::InvalidSpec(format!(
            "credential Secret {} does not exist in namespace {namespace}",
            reference.name
        ))
    })?;
    values
        .get(key)
        .and_then(|v| String::from_utf8(v.clone()).ok())
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| {
            SyncError::InvalidSpec(format!(
                "credential Secret {} has no key {}",
                reference.name, reference.key
            ))
        })
}
