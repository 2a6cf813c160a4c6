//! The Key Vault secrets data plane of one vault (one listener per vault).
//!
//! Every request first passes the gate: a supported `api-version`, then a valid
//! emulator access token for the vault's tenant (else the 401 challenge that sends
//! clients to the Entra listener). Each operation then checks the caller's access
//! grants: reading or writing a secret needs a grant on that secret, listing needs
//! any grant on the vault (`403 ForbiddenByRbac` otherwise).
//!
//! Certificate-backed secrets (`managed: true`, with a `kid`) come from
//! [`certificates_api`](super::certificates_api), which also converts them for
//! `outContentType`.
//!
//! Not implemented (answered with 501): backup/restore and the deleted-secrets
//! operations (`DELETE` purges at once).

use super::certificates_api;
use super::directory::App;
use super::eventgrid::schema::EventType;
use super::faults::FaultTarget;
use super::responses::{ServiceError, json_response};
use super::state::{Emulator, VaultSite, lock};
use super::store::{NewSecret, Page, PageRequest, SecretUpdate, SecretVersion, VersionId};
use super::tokens::{Caller, TokenRejection};
use super::traffic::{Surface, observe};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// API versions of the stable secrets API the emulator speaks: every version the
/// current official SDKs offer. Defaults (2026-11): Python `azure-keyvault-secrets`
/// 4.12.0 sends 2026-04-01, JavaScript `@azure/keyvault-secrets` 4.11.2 and Rust
/// `azure_security_keyvault_secrets` 1.0.1 send 2025-07-01.
const SUPPORTED_API_VERSIONS: [&str; 10] = [
    "7.0",
    "7.1",
    "7.2",
    "7.3",
    "7.4",
    "7.5",
    "7.6",
    "2025-06-01",
    "2025-07-01",
    LATEST_API_VERSION,
];
const LATEST_API_VERSION: &str = "2026-04-01";

/// Key Vault's values for a vault with soft delete (informational here).
const RECOVERABLE_DAYS: u32 = 90;
const RECOVERY_LEVEL: &str = "Recoverable+Purgeable";

#[derive(Clone)]
pub struct VaultContext {
    pub emulator: Arc<Emulator>,
    pub name: String,
    pub site: VaultSite,
}

/// The validated `api-version` of the request, kept for the `nextLink`s.
#[derive(Clone)]
struct ApiVersion(String);

pub fn router(emulator: Arc<Emulator>, vault: &str) -> Router {
    let context = VaultContext {
        site: emulator.vaults[vault].clone(),
        name: vault.to_owned(),
        emulator: emulator.clone(),
    };
    let surface = Surface {
        emulator,
        target: FaultTarget::Vault(vault.to_owned()),
    };
    Router::new()
        .route("/secrets", get(list_secrets))
        .route(
            "/secrets/{name}",
            get(get_latest)
                .put(set_secret)
                .patch(update_latest)
                .delete(delete_secret),
        )
        .route("/secrets/{name}/", get(get_latest).patch(update_latest))
        .route("/secrets/{name}/versions", get(list_versions))
        .route(
            "/secrets/{name}/{version}",
            get(get_version).patch(update_version),
        )
        .merge(certificates_api::routes())
        .fallback(not_implemented)
        .method_not_allowed_fallback(not_implemented)
        .layer(from_fn_with_state(context.clone(), gate))
        .layer(from_fn_with_state(surface, observe))
        .with_state(context)
}

async fn not_implemented(method: Method, uri: Uri) -> ServiceError {
    ServiceError::not_implemented(method.as_str(), uri.path())
}

pub fn query_param(uri: &Uri, name: &str) -> Option<String> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

fn check_api_version(uri: &Uri) -> Result<ApiVersion, ServiceError> {
    match query_param(uri, "api-version") {
        Some(version) if SUPPORTED_API_VERSIONS.contains(&version.as_str()) => {
            Ok(ApiVersion(version))
        }
        Some(version) => Err(ServiceError::bad_parameter(format!(
            "The specified version ({version}) is not recognized. Consider using the latest supported version ({LATEST_API_VERSION})."
        ))),
        None => Err(ServiceError::bad_parameter(format!(
            "The api-version query parameter is required. Consider using the latest supported version ({LATEST_API_VERSION})."
        ))),
    }
}

impl VaultContext {
    fn authenticate(&self, request: &Request) -> Result<Caller, ServiceError> {
        let verified = match crate::responses::bearer_token(request) {
            None => Err(TokenRejection::Missing),
            Some(token) => lock(&self.emulator.tokens).verify(token.trim(), &self.site.tenant_id),
        };
        verified.map_err(|rejection| {
            let challenge = match rejection {
                TokenRejection::Revoked { since } => self.emulator.claims_challenge(since),
                _ => self.emulator.challenge(&self.site.tenant_id),
            };
            ServiceError::unauthorized(rejection.to_string(), challenge)
        })
    }

    /// Refuses with `ForbiddenByRbac` unless the caller's app (still) exists and
    /// `permitted` says yes.
    fn authorize(
        &self,
        caller: &Caller,
        permitted: impl FnOnce(&App) -> bool,
        action: &str,
        resource: &str,
    ) -> Result<(), ServiceError> {
        let app = lock(&self.emulator.directory).app(&caller.tenant_id, &caller.client_id);
        if app.is_some_and(|app| permitted(&app)) {
            return Ok(());
        }
        Err(ServiceError::forbidden_by_rbac(format!(
            "Caller is not authorized to perform action on resource.\r\n\
             Caller: appid={};tid={}\r\nAction: 'Microsoft.KeyVault/vaults/secrets/{action}'\r\n\
             Resource: '{resource}'\r\nAssignment: (not found)\r\nVault: {}",
            caller.client_id, caller.tenant_id, self.name
        )))
    }

    /// Reading or writing one secret (or the certificate of that name) needs a grant on it.
    pub fn authorize_secret(
        &self,
        caller: &Caller,
        secret: &str,
        action: &str,
    ) -> Result<(), ServiceError> {
        let resource = format!("{}secrets/{secret}", self.site.url);
        self.authorize(
            caller,
            |app| app.may_access_secret(&self.name, secret),
            action,
            &resource,
        )
    }

    /// Listing needs a grant on the vault (on any of its secrets).
    fn authorize_list(&self, caller: &Caller) -> Result<(), ServiceError> {
        self.authorize(
            caller,
            |app| app.may_list(&self.name),
            "readMetadata/action",
            self.site.url.as_str(),
        )
    }
}

/// api-version, then authentication; the caller goes on as a request extension.
async fn gate(
    State(context): State<VaultContext>,
    mut request: Request,
    next: Next,
) -> Result<Response, ServiceError> {
    let api_version = check_api_version(request.uri())?;
    let caller = context.authenticate(&request)?;
    request.extensions_mut().insert(api_version);
    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    if let Ok(date) = header::HeaderValue::from_str(&context.emulator.vault_clock.http_date()) {
        response.headers_mut().insert(header::DATE, date);
    }
    Ok(response)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Attributes {
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    created: i64,
    updated: i64,
    recoverable_days: u32,
    recovery_level: &'static str,
}

/// A secret bundle, list item or deleted-secret bundle: they differ only in which
/// fields are present.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tags: BTreeMap<String, String>,
    attributes: Attributes,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_date: Option<i64>,
    /// The certificate's key, on versioned views of a certificate-backed secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    managed: bool,
}

/// Which view of a secret a response shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretView {
    /// GET/PUT: everything, value included.
    Bundle,
    /// PATCH: everything but the value.
    Properties,
    /// `GET /secrets`: no value, id without version.
    ListItem,
    /// DELETE: no value, with the deletion time.
    Deleted { at: i64 },
}

pub fn secret_json(vault_url: &url::Url, secret: SecretVersion, view: SecretView) -> SecretJson {
    let versioned = view != SecretView::ListItem;
    let id = if versioned {
        format!(
            "{vault_url}secrets/{}/{}",
            secret.name,
            secret.version.as_str()
        )
    } else {
        format!("{vault_url}secrets/{}", secret.name)
    };
    let kid = (secret.managed && versioned).then(|| {
        format!(
            "{vault_url}keys/{}/{}",
            secret.name,
            secret.version.as_str()
        )
    });
    SecretJson {
        kid,
        managed: secret.managed,
        value: (view == SecretView::Bundle).then_some(secret.value),
        id,
        content_type: secret.content_type,
        tags: secret.tags,
        attributes: Attributes {
            enabled: secret.enabled,
            nbf: secret.nbf,
            exp: secret.exp,
            created: secret.created,
            updated: secret.updated,
            recoverable_days: RECOVERABLE_DAYS,
            recovery_level: RECOVERY_LEVEL,
        },
        deleted_date: match view {
            SecretView::Deleted { at } => Some(at),
            _ => None,
        },
    }
}

pub fn secret_response(
    context: &VaultContext,
    secret: SecretVersion,
    view: SecretView,
) -> Response {
    json_response(
        StatusCode::OK,
        &secret_json(&context.site.url, secret, view),
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListResult {
    value: Vec<SecretJson>,
    next_link: Option<String>,
}

fn list_response(
    context: &VaultContext,
    page: Page<SecretVersion>,
    view: SecretView,
    list_path: &str,
    api_version: &ApiVersion,
    max_results: usize,
) -> Response {
    let next_link = page.next_skip_token.map(|token| {
        format!(
            "{}{list_path}?api-version={}&$skiptoken={token}&maxresults={max_results}",
            context.site.url, api_version.0
        )
    });
    let value = page
        .items
        .into_iter()
        .map(|secret| secret_json(&context.site.url, secret, view))
        .collect();
    json_response(StatusCode::OK, &ListResult { value, next_link })
}

fn page_request(uri: &Uri) -> Result<PageRequest, ServiceError> {
    Ok(PageRequest::from_query(
        query_param(uri, "maxresults").as_deref(),
        query_param(uri, "$skiptoken").as_deref(),
    )?)
}

pub fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ServiceError> {
    serde_json::from_slice(body).map_err(|error| {
        ServiceError::bad_parameter(format!("The request body is not valid: {error}"))
    })
}

async fn list_secrets(
    State(context): State<VaultContext>,
    Extension(caller): Extension<Caller>,
    Extension(api_version): Extension<ApiVersion>,
    uri: Uri,
) -> Result<Response, ServiceError> {
    let request = page_request(&uri)?;
    context.authorize_list(&caller)?;
    let page = lock(&context.emulator.store).list_secrets(&context.name, &request)?;
    Ok(list_response(
        &context,
        page,
        SecretView::ListItem,
        "secrets",
        &api_version,
        request.max_results,
    ))
}

async fn list_versions(
    State(context): State<VaultContext>,
    Extension(caller): Extension<Caller>,
    Extension(api_version): Extension<ApiVersion>,
    Path(name): Path<String>,
    uri: Uri,
) -> Result<Response, ServiceError> {
    let request = page_request(&uri)?;
    context.authorize_secret(&caller, &name, "readMetadata/action")?;
    let page = lock(&context.emulator.store).list_versions(&context.name, &name, &request)?;
    Ok(list_response(
        &context,
        page,
        SecretView::Properties,
        &format!("secrets/{name}/versions"),
        &api_version,
        request.max_results,
    ))
}

/// Reads a version; `outContentType` converts a certificate-backed secret.
fn read_secret(
    context: &VaultContext,
    caller: &Caller,
    name: &str,
    version: Option<&str>,
    uri: &Uri,
) -> Result<Response, ServiceError> {
    context.authorize_secret(caller, name, "getSecret/action")?;
    let secret = lock(&context.emulator.store)
        .get_secret(&context.name, name, version)?
        .clone();
    let out_content_type = query_param(uri, "outContentType");
    let secret = certificates_api::convert(secret, out_content_type.as_deref())?;
    Ok(secret_response(context, secret, SecretView::Bundle))
}

async fn get_latest(
    State(context): State<VaultContext>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    uri: Uri,
) -> Result<Response, ServiceError> {
    read_secret(&context, &caller, &name, None, &uri)
}

async fn get_version(
    State(context): State<VaultContext>,
    Extension(caller): Extension<Caller>,
    Path((name, version)): Path<(String, String)>,
    uri: Uri,
) -> Result<Response, ServiceError> {
    read_secret(&context, &caller, &name, Some(&version), &uri)
}

/// `attributes` of set and update bodies; read-only attributes are ignored.
#[derive(Deserialize, Default)]
struct WireAttributes {
    enabled: Option<bool>,
    nbf: Option<i64>,
    exp: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SetSecretBody {
    value: Option<String>,
    content_type: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    attributes: WireAttributes,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateSecretBody {
    content_type: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    attributes: WireAttributes,
}

async fn set_secret(
    State(context): State<VaultContext>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ServiceError> {
    context.authorize_secret(&caller, &name, "setSecret/action")?;
    let body: SetSecretBody = parse_body(&body)?;
    let value = body
        .value
        .ok_or_else(|| ServiceError::bad_parameter("Property 'value' is required."))?;
    let secret = NewSecret {
        value,
        content_type: body.content_type,
        tags: body.tags,
        enabled: body.attributes.enabled,
        nbf: body.attributes.nbf,
        exp: body.attributes.exp,
    };
    let stored = lock(&context.emulator.store).set_secret(
        &context.name,
        &name,
        secret,
        VersionId::random(),
        context.emulator.vault_clock.now(),
    )?;
    context
        .emulator
        .version_created(&context.name, &stored, EventType::SecretNewVersionCreated);
    Ok(secret_response(&context, stored, SecretView::Bundle))
}

fn update_secret(
    context: &VaultContext,
    caller: &Caller,
    name: &str,
    version: Option<&str>,
    body: &[u8],
) -> Result<Response, ServiceError> {
    context.authorize_secret(caller, name, "write/action")?;
    let body: UpdateSecretBody = parse_body(body)?;
    let update = SecretUpdate {
        enabled: body.attributes.enabled,
        tags: body.tags,
        content_type: body.content_type,
        nbf: body.attributes.nbf,
        exp: body.attributes.exp,
    };
    let updated = lock(&context.emulator.store).update_secret(
        &context.name,
        name,
        version,
        update,
        context.emulator.vault_clock.now(),
    )?;
    Ok(secret_response(context, updated, SecretView::Properties))
}

async fn update_latest(
    State(context): State<VaultContext>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ServiceError> {
    update_secret(&context, &caller, &name, None, &body)
}

async fn update_version(
    State(context): State<VaultContext>,
    Extension(caller): Extension<Caller>,
    Path((name, version)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ServiceError> {
    update_secret(&context, &caller, &name, Some(&version), &body)
}

async fn delete_secret(
    State(context): State<VaultContext>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ServiceError> {
    context.authorize_secret(&caller, &name, "delete/action")?;
    let deleted = lock(&context.emulator.store).delete_secret(&context.name, &name)?;
    Ok(secret_response(
        &context,
        deleted,
        SecretView::Deleted {
            at: context.emulator.vault_clock.now(),
        },
    ))
}
