//! One sync of one KeyVaultSecret: resolve the identity, read the vault,
//! render, write the Secret if it changed, record the status.
//!
//! Failures never touch the Secret: the last good data stays, the `Ready`
//! condition names the cause, and the object is retried with backoff.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use regex::{Regex, RegexBuilder};
use serde_json::json;

use super::Context;
use super::render::{self, RenderError};
use super::status::{Outcome, next_status, ready_reason};
use super::target::{DesiredSecret, WriteDecision};
use crate::api::{Auth, DataFrom, FIELD_MANAGER, KeyVaultSecret};
use crate::schedule;
use crate::vault::{Freshness, Identity, Interest, RemoteSecret, VaultError};

/// Service-account annotations set for Azure Workload Identity.
const SA_CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
const SA_TENANT_ID_ANNOTATION: &str = "azure.workload.identity/tenant-id";

/// Errors that are the cluster's, not the user's: the controller retries them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    /// Label for the error counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube_api",
        }
    }
}

/// Why a sync did not complete, for the status and the retry.
#[derive(Debug)]
struct Failure {
    reason: &'static str,
    message: String,
    /// Whether retrying can help without the user changing anything.
    transient: bool,
    retry_after: Option<Duration>,
}

impl Failure {
    fn invalid(message: impl Into<String>) -> Self {
        Failure {
            reason: "InvalidSpec",
            message: message.into(),
            transient: false,
            retry_after: None,
        }
    }

    fn vault(error: VaultError) -> Self {
        let retry_after = error.retry_after();
        Failure {
            reason: error.reason(),
            message: format!("{error}; {}", error.hint()),
            transient: true,
            retry_after,
        }
    }
}

impl From<RenderError> for Failure {
    fn from(error: RenderError) -> Self {
        Failure::invalid(error.to_string())
    }
}

/// What a successful sync produced.
struct Synced {
    secret_name: String,
    versions: BTreeMap<String, String>,
    wrote: bool,
}

/// The controller's reconcile function.
pub async fn reconcile(kvs: Arc<KeyVaultSecret>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let _in_flight = ctx.metrics.sync_started();
    let namespace = kvs.namespace().unwrap_or_default();
    if !in_scope(&ctx, &namespace).await? {
        return Ok(Action::await_change());
    }
    let key = format!("{namespace}/{}", kvs.name_any());
    let result = sync(&kvs, &ctx).await;
    let (outcome, action) = match result {
        Ok(synced) => {
            ctx.failures.lock().unwrap().remove(&key);
            let action = match kvs.spec.refresh_interval() {
                Ok(Some(interval)) => {
                    Action::requeue(schedule::refresh_delay(interval, rand::random()))
                }
                _ => Action::await_change(),
            };
            let outcome = Outcome::Synced {
                secret_name: synced.secret_name,
                versions: synced.versions,
                wrote: synced.wrote,
            };
            (outcome, action)
        }
        Err(Err(error)) => return Err(error),
        Err(Ok(failure)) => {
            let action = if failure.transient {
                let failures = {
                    let mut map = ctx.failures.lock().unwrap();
                    let count = map.entry(key.clone()).or_insert(0);
                    *count += 1;
                    *count
                };
                Action::requeue(schedule::backoff_delay(
                    failures,
                    failure.retry_after,
                    ctx.max_backoff,
                    rand::random(),
                ))
            } else {
                Action::await_change()
            };
            (
                Outcome::Failed {
                    reason: failure.reason,
                    message: failure.message,
                },
                action,
            )
        }
    };
    record(&kvs, &ctx, &outcome).await?;
    ctx.metrics
        .observe_sync(outcome_label(&outcome), started.elapsed());
    Ok(action)
}

fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Synced { wrote: true, .. } => "written",
        Outcome::Synced { wrote: false, .. } => "unchanged",
        Outcome::Failed { reason, .. } => reason,
    }
}

/// What the controller does with an infrastructure error.
pub fn error_policy(_kvs: Arc<KeyVaultSecret>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "reconcile failed");
    ctx.metrics.observe_error(error.metric_label());
    Action::requeue(schedule::backoff_delay(
        3,
        None,
        ctx.max_backoff,
        rand::random(),
    ))
}

async fn in_scope(ctx: &Context, namespace: &str) -> Result<bool, Error> {
    if !ctx.scope.name_in_scope(namespace) {
        return Ok(false);
    }
    if ctx.scope.namespace_selector.is_none() {
        return Ok(true);
    }
    let ns = Api::<Namespace>::all(ctx.client.clone())
        .get(namespace)
        .await?;
    Ok(ctx.scope.labels_in_scope(&ns.labels().clone()))
}

/// Writes the status (only when it changed) and emits events on transitions.
async fn record(kvs: &KeyVaultSecret, ctx: &Context, outcome: &Outcome) -> Result<(), Error> {
    let current = kvs.status.as_ref();
    let next = next_status(current, kvs.metadata.generation, outcome, Timestamp::now());
    if Some(&next) != current {
        let api: Api<KeyVaultSecret> =
            Api::namespaced(ctx.client.clone(), &kvs.namespace().unwrap_or_default());
        api.patch_status(
            &kvs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": next })),
        )
        .await?;
    }
    let reference = kvs.object_ref(&());
    let event = match outcome {
        Outcome::Synced {
            wrote: true,
            secret_name,
            ..
        } => Some(Event {
            type_: EventType::Normal,
            reason: "Synced".into(),
            note: Some(format!("Secret {secret_name} updated from Key Vault")),
            action: "Sync".into(),
            secondary: None,
        }),
        Outcome::Failed { reason, message } if ready_reason(current) != Some(reason) => {
            Some(Event {
                type_: EventType::Warning,
                reason: (*reason).into(),
                note: Some(message.chars().take(1000).collect()),
                action: "Sync".into(),
                secondary: None,
            })
        }
        _ => None,
    };
    if let Some(event) = event
        && let Err(error) = ctx.recorder.publish(&event, &reference).await
    {
        tracing::warn!(%error, "could not publish event");
    }
    Ok(())
}

type SyncResult = Result<Synced, Result<Failure, Error>>;

async fn sync(kvs: &KeyVaultSecret, ctx: &Context) -> SyncResult {
    let namespace = kvs.namespace().unwrap_or_default();
    let spec = &kvs.spec;
    validate(kvs, ctx).map_err(Ok)?;
    let find_patterns = compile_find_patterns(&spec.data_from).map_err(Ok)?;
    let identity = resolve_identity(kvs, ctx).await?;

    if let Ok(Some(interval)) = spec.refresh_interval() {
        let subscriber = format!("{namespace}/{}", kvs.name_any());
        ctx.vault.subscribe(
            &spec.vault_url,
            &identity,
            &subscriber,
            interest(kvs),
            interval,
        );
    }
    let mut fetcher = Fetcher {
        ctx,
        vault_url: &spec.vault_url,
        identity: &identity,
        freshness: ctx.freshness_for(kvs),
        seen: HashMap::new(),
        listing: None,
    };
    let mut parts = Vec::new();
    for entry in &spec.data {
        let remote = fetcher
            .get(
                &entry.remote_ref.name,
                entry.remote_ref.version.as_deref(),
                false,
            )
            .await?;
        let value = render::render_ref(
            &remote,
            entry.remote_ref.property.as_deref(),
            entry.remote_ref.decoding_strategy,
        )
        .map_err(|e| Ok(e.into()))?;
        parts.push(BTreeMap::from([(entry.secret_key.clone(), value)]));
    }
    for (index, entry) in spec.data_from.iter().enumerate() {
        if let Some(extract) = &entry.extract {
            let remote = fetcher
                .get(&extract.name, extract.version.as_deref(), false)
                .await?;
            parts.push(
                render::render_extract(&remote, extract.decoding_strategy)
                    .map_err(|e| Ok(e.into()))?,
            );
        } else if let Some(find) = &entry.find {
            let listing = fetcher.list().await?;
            let names = render::find_matches(find, find_patterns.get(&index), &listing);
            let mut found = BTreeMap::new();
            for name in names {
                let remote = fetcher.get(&name, None, false).await?;
                let value =
                    render::decode(&remote.value, find.decoding_strategy).ok_or_else(|| {
                        Ok(RenderError::BadEncoding {
                            name: name.clone(),
                            strategy: find.decoding_strategy,
                        }
                        .into())
                    })?;
                found.insert(name, value);
            }
            parts.push(found);
        } else if let Some(certificate) = &entry.certificate {
            let remote = fetcher
                .get(&certificate.name, certificate.version.as_deref(), true)
                .await?;
            parts.push(render::render_certificate(&remote).map_err(|e| Ok(e.into()))?);
        }
    }
    let data = render::merge(parts).map_err(|e| Ok(e.into()))?;
    let versions = fetcher
        .seen
        .values()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();

    let target = &spec.target;
    let desired = DesiredSecret {
        name: kvs.target_name(),
        namespace: namespace.clone(),
        owner_name: kvs.name_any(),
        owner_uid: kvs.uid().unwrap_or_default(),
        policy: target.creation_policy,
        type_: target.type_.clone().unwrap_or_else(|| "Opaque".into()),
        labels: target.labels.clone(),
        annotations: target.annotations.clone(),
        data,
    }
    .with_markers(target.reload);
    let wrote = write_target(&desired, ctx).await?;
    Ok(Synced {
        secret_name: desired.name,
        versions,
        wrote,
    })
}

/// The vault secrets a KeyVaultSecret depends on (for change notifications).
fn interest(kvs: &KeyVaultSecret) -> Interest {
    let spec = &kvs.spec;
    if spec.data_from.iter().any(|entry| entry.find.is_some()) {
        return Interest::Everything;
    }
    let refs = spec.data.iter().map(|d| d.remote_ref.name.clone());
    let from = spec.data_from.iter().filter_map(|entry| {
        entry
            .extract
            .as_ref()
            .map(|e| e.name.clone())
            .or_else(|| entry.certificate.as_ref().map(|c| c.name.clone()))
    });
    Interest::Names(refs.chain(from).collect())
}

/// Checks what the schema cannot (it cannot reach the operator's flags).
fn validate(kvs: &KeyVaultSecret, ctx: &Context) -> Result<(), Failure> {
    let spec = &kvs.spec;
    ctx.vault
        .check_vault_url(&spec.vault_url)
        .map_err(|e| Failure::invalid(e.to_string()))?;
    spec.refresh_interval()
        .map_err(|e| Failure::invalid(format!("refreshInterval: {e}")))?;
    if spec.data.is_empty() && spec.data_from.is_empty() {
        return Err(Failure::invalid(
            "nothing to sync: add at least one entry to data or dataFrom",
        ));
    }
    let auth_count = [
        spec.auth.workload_identity.is_some(),
        spec.auth.client_secret.is_some(),
        spec.auth.client_certificate.is_some(),
    ]
    .into_iter()
    .filter(|set| *set)
    .count();
    if auth_count != 1 {
        return Err(Failure::invalid(
            "auth needs exactly one of workloadIdentity, clientSecret, clientCertificate",
        ));
    }
    for entry in &spec.data_from {
        let set = [
            entry.extract.is_some(),
            entry.find.is_some(),
            entry.certificate.is_some(),
        ]
        .into_iter()
        .filter(|s| *s)
        .count();
        if set != 1 {
            return Err(Failure::invalid(
                "each dataFrom entry needs exactly one of extract, find, certificate",
            ));
        }
    }
    Ok(())
}

/// Compiles `find.nameRegex` patterns (size-limited: a user-supplied regex must not eat the operator's memory).
fn compile_find_patterns(data_from: &[DataFrom]) -> Result<HashMap<usize, Regex>, Failure> {
    let mut patterns = HashMap::new();
    for (index, entry) in data_from.iter().enumerate() {
        if let Some(pattern) = entry.find.as_ref().and_then(|f| f.name_regex.as_deref()) {
            let regex = RegexBuilder::new(pattern)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| {
                    Failure::invalid(format!(
                        "dataFrom[{index}].find.nameRegex is not a valid regular expression: {e}"
                    ))
                })?;
            patterns.insert(index, regex);
        }
    }
    Ok(patterns)
}

async fn resolve_identity(
    kvs: &KeyVaultSecret,
    ctx: &Context,
) -> Result<Identity, Result<Failure, Error>> {
    let namespace = kvs.namespace().unwrap_or_default();
    let Auth {
        workload_identity,
        client_secret,
        client_certificate,
    } = &kvs.spec.auth;
    if let Some(wi) = workload_identity {
        let Some(sa_name) = &wi.service_account_name else {
            if !ctx
                .operator_identity_namespaces
                .iter()
                .any(|n| n == &namespace)
            {
                return Err(Ok(Failure {
                    reason: "AuthFailed",
                    message: format!(
                        "the operator's own identity may not be used from namespace {namespace}; set workloadIdentity.serviceAccountName, or ask the kvsync admin to add {namespace} to --operator-identity-namespaces"
                    ),
                    transient: false,
                    retry_after: None,
                }));
            }
            return Ok(Identity::Operator);
        };
        let sa = Api::<ServiceAccount>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(sa_name)
            .await
            .map_err(|e| Err(e.into()))?
            .ok_or_else(|| {
                // Service accounts are not watched: look again later instead of waiting for a spec change.
                Ok(Failure {
                    transient: true,
                    ..Failure::invalid(format!(
                        "service account {sa_name} does not exist in namespace {namespace}"
                    ))
                })
            })?;
        let annotation = |key: &str| sa.annotations().get(key).cloned();
        let client_id = wi.client_id.clone().or_else(|| annotation(SA_CLIENT_ID_ANNOTATION)).ok_or_else(|| {
            Ok(Failure::invalid(format!(
                "no client id: set workloadIdentity.clientId or annotate service account {sa_name} with {SA_CLIENT_ID_ANNOTATION}"
            )))
        })?;
        let tenant_id = wi
            .tenant_id
            .clone()
            .or_else(|| annotation(SA_TENANT_ID_ANNOTATION))
            .or_else(|| ctx.default_tenant_id.clone())
            .ok_or_else(|| {
                Ok(Failure::invalid(format!(
                    "no tenant id: set workloadIdentity.tenantId or annotate service account {sa_name} with {SA_TENANT_ID_ANNOTATION}"
                )))
            })?;
        return Ok(Identity::ServiceAccount {
            namespace,
            name: sa_name.clone(),
            tenant_id,
            client_id,
        });
    }
    let (auth, is_certificate) = match (client_secret, client_certificate) {
        (Some(auth), _) => (auth, false),
        (None, Some(auth)) => (auth, true),
        (None, None) => return Err(Ok(Failure::invalid("auth is empty"))),
    };
    let reference = &auth.secret_ref;
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&reference.name)
        .await
        .map_err(|e| Err(e.into()))?
        .ok_or_else(|| {
            Ok(Failure::invalid(format!(
                "credential Secret {} does not exist in namespace {namespace}",
                reference.name
            )))
        })?;
    let material = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&reference.key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| {
            Ok(Failure::invalid(format!(
                "credential Secret {} has no key {}",
                reference.name, reference.key
            )))
        })?;
    let (tenant_id, client_id) = (auth.tenant_id.clone(), auth.client_id.clone());
    Ok(if is_certificate {
        Identity::ClientCertificate {
            tenant_id,
            client_id,
            pem: material,
        }
    } else {
        Identity::ClientSecret {
            tenant_id,
            client_id,
            secret: material.trim().to_owned(),
        }
    })
}

/// Reads the vault for one sync, asking for each distinct (name, version) once.
struct Fetcher<'a> {
    ctx: &'a Context,
    vault_url: &'a str,
    identity: &'a Identity,
    freshness: Freshness,
    seen: HashMap<(String, Option<String>, bool), RemoteSecret>,
    listing: Option<Vec<crate::vault::RemoteSecretInfo>>,
}

impl Fetcher<'_> {
    async fn get(
        &mut self,
        name: &str,
        version: Option<&str>,
        as_pem: bool,
    ) -> Result<RemoteSecret, Result<Failure, Error>> {
        let version = version.filter(|v| !v.is_empty()).map(str::to_owned);
        let key = (name.to_owned(), version.clone(), as_pem);
        if let Some(found) = self.seen.get(&key) {
            return Ok(found.clone());
        }
        let result = self
            .ctx
            .vault
            .get(
                self.vault_url,
                self.identity,
                name,
                version.as_deref(),
                as_pem,
                self.freshness,
            )
            .await;
        self.ctx.metrics.observe_vault_call(
            "get",
            result.as_ref().err().map_or("ok", VaultError::reason),
        );
        let remote = result.map_err(|e| Ok(Failure::vault(e)))?;
        self.seen.insert(key, remote.clone());
        Ok(remote)
    }

    async fn list(
        &mut self,
    ) -> Result<Vec<crate::vault::RemoteSecretInfo>, Result<Failure, Error>> {
        if let Some(listing) = &self.listing {
            return Ok(listing.clone());
        }
        let result = self
            .ctx
            .vault
            .list(self.vault_url, self.identity, self.freshness)
            .await;
        self.ctx.metrics.observe_vault_call(
            "list",
            result.as_ref().err().map_or("ok", VaultError::reason),
        );
        let listing = result.map_err(|e| Ok(Failure::vault(e)))?;
        self.listing = Some(listing.clone());
        Ok(listing)
    }
}

/// Writes the target if it differs; returns whether it wrote.
async fn write_target(
    desired: &DesiredSecret,
    ctx: &Context,
) -> Result<bool, Result<Failure, Error>> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &desired.namespace);
    let existing = api
        .get_opt(&desired.name)
        .await
        .map_err(|e| Err(e.into()))?;
    match desired.decide(existing.as_ref()) {
        WriteDecision::UpToDate => Ok(false),
        WriteDecision::Conflict(message) => Err(Ok(Failure {
            reason: "SecretConflict",
            message,
            transient: false,
            retry_after: None,
        })),
        WriteDecision::Apply => {
            let refused = |e| match e {
                kube::Error::Api(status) if status.code == 422 => Ok(Failure::invalid(format!(
                    "the API server refused Secret {}: {}",
                    desired.name, status.message
                ))),
                other => Err(other.into()),
            };
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let mut written = api
                .patch(&desired.name, &params, &Patch::Apply(desired.apply_body()))
                .await
                .map_err(refused)?;
            let foreign = desired.foreign_keys(&written);
            if !foreign.is_empty() {
                // Guarded by the resourceVersion just written: a concurrent
                // change makes this fail (409) and the sync is retried.
                let removal: serde_json::Map<String, serde_json::Value> = foreign
                    .iter()
                    .map(|key| (key.clone(), serde_json::Value::Null))
                    .collect();
                let patch = json!({
                    "metadata": {"resourceVersion": written.resource_version()},
                    "data": removal,
                });
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                };
                written = api
                    .patch(&desired.name, &params, &Patch::Merge(patch))
                    .await
                    .map_err(refused)?;
            }
            if written.resource_version() == existing.as_ref().and_then(|s| s.resource_version()) {
                // The apply changed nothing (e.g. only fields kvsync does not
                // own differed): not a write, so no event, reload or status.
                return Ok(false);
            }
            ctx.remember_own_write(
                &desired.namespace,
                &desired.name,
                written.resource_version(),
            );
            ctx.notifier
                .secret_written(&desired.namespace, &desired.name);
            tracing::info!(namespace = %desired.namespace, secret = %desired.name, keys = desired.data.len(), "wrote Secret");
            Ok(true)
        }
    }
}
