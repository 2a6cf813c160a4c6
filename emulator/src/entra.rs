//! The Entra ID token endpoint: `POST /{tenant}/oauth2/v2.0/token` with the client
//! credentials grant, authenticated by a client secret or a client assertion.
//!
//! azure_identity 1.0 (Rust) builds the token URL from the authority host; the
//! MSAL-based SDKs of other languages first read the discovery documents that
//! [`discovery`] serves on the same listener.
//!
//! Errors carry Entra's AADSTS codes, which the SDK surfaces as the error code:
//!
//! | code    | when |
//! |---------|------|
//! | 900144  | a required form field is missing |
//! | 70003   | grant type other than `client_credentials` |
//! | 70011   | scope other than Key Vault's, Event Grid's or Storage's `…/.default` |
//! | 90002   | no app or vault lives in the tenant |
//! | 700016  | no such client id in the tenant |
//! | 7000215 | wrong (or no registered) client secret |
//! | 7000218 | neither secret nor assertion |
//! | 70002   | unsupported `client_assertion_type` |
//! | 50027   | the assertion is not a well-formed JWT |
//! | 700027  | the assertion's signature does not verify, or its key cannot be found |
//! | 700024  | the assertion is expired or not yet valid |
//! | 700211  | no federated credential of the app has the assertion's issuer |
//! | 700213  | … with that issuer has the assertion's subject |
//! | 700212  | … with that issuer and subject has one of the assertion's audiences |
//! | 700023  | a certificate assertion's audience is not the token endpoint |
//! | 700021  | a certificate assertion's subject is not the client id |

use super::assertion::{self, AssertionError};
use super::directory::{App, FederatedMismatch, PresentedIdentity};
use super::discovery;
use super::faults::FaultTarget;
use super::imds;
use super::issuers::KeyLookupError;
use super::responses::json_response;
use super::state::{Emulator, lock};
use super::tokens::{Resource, TOKEN_LIFETIME_SECONDS};
use super::traffic::{Surface, observe};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use time::macros::format_description;

const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An Entra error response (`error`, `error_description` with the AADSTS code, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraError {
    status: StatusCode,
    error: &'static str,
    code: Option<u32>,
    description: String,
    retry_after_seconds: Option<u64>,
}

impl EntraError {
    fn new(status: StatusCode, error: &'static str, code: u32, description: String) -> Self {
        Self {
            status,
            error,
            code: Some(code),
            description,
            retry_after_seconds: None,
        }
    }

    fn invalid_request(code: u32, description: String) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            code,
            description,
        )
    }

    fn invalid_client(code: u32, description: String) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            code,
            description,
        )
    }

    fn missing_parameter(name: &str) -> Self {
        Self::invalid_request(
            900144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    }

    fn tenant_description(tenant: &str) -> String {
        format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are \
             signing into the correct cloud. Check with your subscription administrator, this may \
             happen if there are no active subscriptions for the tenant."
        )
    }

    /// What discovery answers for an unknown tenant.
    pub fn tenant_not_found(tenant: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90002,
            Self::tenant_description(tenant),
        )
    }

    /// A required query field is missing (discovery endpoints).
    pub fn missing_field(name: &str) -> Self {
        Self::invalid_request(90014, format!("The required field '{name}' is missing."))
    }

    /// Instance discovery for a host that is not this authority.
    pub fn invalid_instance(authorization_endpoint: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_instance",
            50049,
            format!("Unknown or invalid instance: '{authorization_endpoint}'."),
        )
    }

    /// An error for which the emulator has no AADSTS code to offer.
    fn without_code(
        status: StatusCode,
        error: &'static str,
        description: String,
        retry_after_seconds: Option<u64>,
    ) -> Self {
        Self {
            status,
            error,
            code: None,
            description,
            retry_after_seconds,
        }
    }

    /// An injected failure.
    pub fn injected(status: StatusCode, retry_after_seconds: Option<u64>) -> Self {
        let error = if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            "server_error"
        } else {
            "temporarily_unavailable"
        };
        let description = format!("Injected fault: HTTP {}.", status.as_u16());
        Self::without_code(status, error, description, retry_after_seconds)
    }

    /// Entra names the claim no federated credential matched, each with its own
    /// code (the older catch-all AADSTS70021 is no longer returned).
    fn federated_mismatch(mismatch: FederatedMismatch, presented: PresentedIdentity<'_>) -> Self {
        const CHECK: &str = "Check your federated identity credential Subject, Audience and Issuer \
             against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation";
        const CASE_SENSITIVE: &str =
            "Please note that the matching is done using a case-sensitive comparison.";
        let (code, description) = match mismatch {
            FederatedMismatch::Issuer => (
                700211,
                format!(
                    "No matching federated identity record found for presented assertion issuer '{}'. {CASE_SENSITIVE} {CHECK}",
                    presented.issuer
                ),
            ),
            FederatedMismatch::Audience => (
                700212,
                format!(
                    "No matching federated identity record found for presented assertion audience '{}'. {CASE_SENSITIVE} {CHECK}",
                    presented.audiences.join(",")
                ),
            ),
            FederatedMismatch::Subject => (
                700213,
                format!(
                    "No matching federated identity record found for presented assertion subject '{}'. {CHECK}",
                    presented.subject
                ),
            ),
        };
        Self::invalid_client(code, description)
    }

    pub fn code(&self) -> Option<u32> {
        self.code
    }
}

impl From<AssertionError> for EntraError {
    fn from(error: AssertionError) -> Self {
        let reason = error.to_string();
        match error {
            AssertionError::Malformed(_) | AssertionError::UnsupportedAlgorithm(_) => {
                Self::invalid_request(
                    50027,
                    format!("JWT token is invalid or malformed: {reason}."),
                )
            }
            AssertionError::BadSignature | AssertionError::UnknownCertificate => {
                Self::invalid_client(
                    700027,
                    format!("Client assertion failed signature validation. (Reason - {reason}.)"),
                )
            }
            AssertionError::OutsideValidity => Self::invalid_client(
                700024,
                "Client assertion is not within its valid time range.".to_owned(),
            ),
            AssertionError::WrongAudience => Self::invalid_client(
                700023,
                "Client assertion audience claim does not match Realm issuer.".to_owned(),
            ),
            AssertionError::WrongSubject => Self::invalid_client(
                700021,
                "Client assertion application identifier doesn't match 'client_id' parameter."
                    .to_owned(),
            ),
        }
    }
}

impl From<KeyLookupError> for EntraError {
    fn from(error: KeyLookupError) -> Self {
        Self::invalid_client(
            700027,
            format!("Client assertion failed signature validation. (Reason - {error}.)"),
        )
    }
}

impl IntoResponse for EntraError {
    fn into_response(self) -> Response {
        let trace_id = uuid::Uuid::new_v4().hyphenated().to_string();
        let correlation_id = uuid::Uuid::new_v4().hyphenated().to_string();
        let timestamp = time::OffsetDateTime::now_utc()
            .format(format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]Z"
            ))
            .unwrap_or_default();
        let prefix = self
            .code
            .map(|c| format!("AADSTS{c}: "))
            .unwrap_or_default();
        let body = json!({
            "error": self.error,
            "error_description": format!(
                "{prefix}{}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
                self.description
            ),
            "error_codes": self.code.into_iter().collect::<Vec<_>>(),
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
        });
        let mut response = json_response(self.status, &body);
        if let Some(seconds) = self.retry_after_seconds {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

pub fn router(emulator: Arc<Emulator>) -> Router {
    let surface = Surface {
        emulator: emulator.clone(),
        target: FaultTarget::Entra,
    };
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .merge(discovery::routes())
        .merge(imds::routes())
        .fallback(not_implemented)
        .layer(from_fn_with_state(surface, observe))
        .with_state(emulator)
}

async fn not_implemented() -> EntraError {
    EntraError::without_code(
        StatusCode::NOT_FOUND,
        "invalid_request",
        "The kvsync emulator implements only the token endpoint and discovery (see its docs)."
            .to_owned(),
        None,
    )
}

/// How the client proved who it is.
#[derive(Debug, Clone, Copy)]
enum CredentialKind {
    Secret,
    Certificate,
    Federated,
}

async fn token(
    State(emulator): State<Arc<Emulator>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    match grant(&emulator, &tenant, &form).await {
        Ok((app, kind, resource)) => issue(&emulator, &app, kind, resource),
        Err(error) => {
            tracing::info!(%tenant, %client_id, code = ?error.code(), reason = %error.description, "token request refused");
            error.into_response()
        }
    }
}

/// Decides whether the form authenticates an app of `tenant`, and for which resource.
async fn grant(
    emulator: &Emulator,
    tenant: &str,
    form: &HashMap<String, String>,
) -> Result<(Arc<App>, CredentialKind, Resource), EntraError> {
    let field = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let required = |name: &str| field(name).ok_or_else(|| EntraError::missing_parameter(name));
    let grant_type = required("grant_type")?;
    if grant_type != "client_credentials" {
        return Err(EntraError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let client_id = required("client_id")?;
    let scope = required("scope")?;
    lock(&emulator.issued)
        .requested_scopes
        .push(scope.to_owned());
    let Some(resource) = Resource::from_scope(scope) else {
        return Err(EntraError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70011,
            format!(
                "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid; this emulator grants only {}.",
                Resource::granted_scopes()
            ),
        ));
    };
    if !emulator.knows_tenant(tenant) {
        return Err(EntraError::invalid_request(
            90002,
            EntraError::tenant_description(tenant),
        ));
    }
    let app = lock(&emulator.directory)
        .app(tenant, client_id)
        .ok_or_else(|| {
            EntraError::new(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700016,
                format!(
                    "Application with identifier '{client_id}' was not found in the directory '{tenant}'."
                ),
            )
        })?;
    let kind = match (field("client_secret"), field("client_assertion")) {
        (Some(secret), _) => {
            if !app.secret_matches(secret) {
                return Err(EntraError::invalid_client(
                    7000215,
                    format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                    ),
                ));
            }
            CredentialKind::Secret
        }
        (None, Some(client_assertion)) => {
            lock(&emulator.issued)
                .client_assertions
                .push(client_assertion.to_owned());
            let assertion_type = required("client_assertion_type")?;
            if assertion_type != JWT_BEARER_ASSERTION {
                return Err(EntraError::invalid_client(
                    70002,
                    format!(
                        "Error validating credentials. client_assertion_type must be {JWT_BEARER_ASSERTION}."
                    ),
                ));
            }
            verify_assertion(emulator, tenant, &app, client_assertion).await?
        }
        (None, None) => {
            return Err(EntraError::invalid_client(
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".to_owned(),
            ));
        }
    };
    Ok((app, kind, resource))
}

/// Verifies a client assertion of `app`: a certificate assertion when the app has a
/// certificate and the assertion is self-issued (`iss` = client id), otherwise a
/// federated one.
async fn verify_assertion(
    emulator: &Emulator,
    tenant: &str,
    app: &App,
    token: &str,
) -> Result<CredentialKind, EntraError> {
    let unverified = assertion::peek(token)?;
    if let Some(certificate) = &app.certificate
        && unverified.claims.issuer == app.client_id
    {
        assertion::verify_certificate_assertion(
            token,
            &unverified.header,
            certificate,
            &app.client_id,
            &emulator.token_endpoint(tenant),
        )?;
        return Ok(CredentialKind::Certificate);
    }
    let issuer = &unverified.claims.issuer;
    if !app.trusts_issuer(issuer) {
        let claims = &unverified.claims;
        return Err(EntraError::federated_mismatch(
            FederatedMismatch::Issuer,
            PresentedIdentity {
                issuer,
                subject: &claims.subject,
                audiences: &claims.audiences,
            },
        ));
    }
    let key = emulator
        .issuers
        .key(issuer, unverified.header.kid.as_deref())
        .await?;
    let claims = assertion::verify(token, &key)?;
    let presented = PresentedIdentity {
        issuer: &claims.issuer,
        subject: &claims.subject,
        audiences: &claims.audiences,
    };
    app.match_federated(presented)
        .map_err(|mismatch| EntraError::federated_mismatch(mismatch, presented))?;
    Ok(CredentialKind::Federated)
}

fn issue(emulator: &Emulator, app: &App, kind: CredentialKind, resource: Resource) -> Response {
    let access_token = match emulator.issue_access_token(app, resource) {
        Ok(token) => token,
        Err(error) => {
            tracing::error!(%error, "cannot sign an access token");
            return EntraError::without_code(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "The emulator could not sign an access token.".to_owned(),
                None,
            )
            .into_response();
        }
    };
    tracing::info!(tenant = %app.tenant_id, client_id = %app.client_id, credential = ?kind, ?resource, "issued an access token");
    let mut response = json_response(
        StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME_SECONDS,
            "ext_expires_in": TOKEN_LIFETIME_SECONDS,
            "access_token": access_token,
        }),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    response
}
