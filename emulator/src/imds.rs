//! The Azure Instance Metadata Service token endpoint, through which a VM, a
//! scale set node or an AKS kubelet gets tokens for its managed identities:
//!
//! ```text
//!  GET /metadata/identity/oauth2/token?api-version=…&resource=https://vault.azure.net[&client_id=…]
//!      (or Event Grid's or Storage's resource)
//!      Metadata: true   (required — IMDS refuses requests without it, a guard against SSRF;
//!                        or App Service's X-IDENTITY-HEADER)
//!   └─▶ Directory::managed_identity(client_id) ─▶ {access_token, expires_on, resource, …}
//!                                                 (IMDS writes every number as a string)
//! ```
//!
//! Real IMDS listens on http://169.254.169.254; the emulator serves the same path
//! on its Entra listener. SDKs reach it through `IDENTITY_ENDPOINT` with
//! `IDENTITY_HEADER`, which they send as `X-IDENTITY-HEADER`: the App Service
//! flavour of the same protocol (and the only endpoint override azure_identity
//! offers). App Service's endpoint wants that header instead of `Metadata: true`
//! (MSAL for JavaScript sends only it), so either one admits a request; the
//! emulator does not check the header's value.

use super::directory::ManagedIdentityError;
use super::entra::EntraError;
use super::responses::json_response;
use super::state::{Emulator, lock, now};
use super::tokens::{Resource, TOKEN_LIFETIME_SECONDS};
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

pub const TOKEN_PATH: &str = "/metadata/identity/oauth2/token";

pub fn routes() -> Router<Arc<Emulator>> {
    Router::new().route(TOKEN_PATH, get(token))
}

/// IMDS's error body: `{"error", "error_description"}`, always 400 here.
fn refuse(error: &str, description: impl Into<String>) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"error": error, "error_description": description.into()}),
    )
}

async fn token(
    State(emulator): State<Arc<Emulator>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let metadata = header("metadata").is_some_and(|value| value.eq_ignore_ascii_case("true"));
    let app_service_secret = header("x-identity-header").is_some_and(|value| !value.is_empty());
    if !metadata && !app_service_secret {
        return refuse("invalid_request", "Required metadata header not specified");
    }
    if query.get("api-version").is_none_or(String::is_empty) {
        return refuse(
            "invalid_request",
            "Required api-version parameter not specified",
        );
    }
    let Some(resource) = query.get("resource").filter(|r| !r.is_empty()) else {
        return refuse(
            "invalid_request",
            "Required audience parameter not specified",
        );
    };
    let Some(granted) = Resource::from_resource(resource) else {
        return refuse(
            "invalid_resource",
            format!(
                "AADSTS500011: The resource principal named {resource} was not found in the tenant; the emulator serves only {}.",
                Resource::granted_scopes()
            ),
        );
    };
    if query.contains_key("object_id") || query.contains_key("msi_res_id") {
        return refuse(
            "invalid_request",
            ManagedIdentityError::NotFound.to_string(),
        );
    }
    let picked =
        lock(&emulator.directory).managed_identity(query.get("client_id").map(String::as_str));
    let app = match picked {
        Ok(app) => app,
        Err(error) => {
            tracing::info!(client_id = ?query.get("client_id"), %error, "IMDS token request refused");
            return refuse("invalid_request", error.to_string());
        }
    };
    let access_token = match emulator.issue_access_token(&app, granted) {
        Ok(token) => token,
        Err(error) => {
            tracing::error!(%error, "cannot sign an access token");
            return EntraError::injected(StatusCode::INTERNAL_SERVER_ERROR, None).into_response();
        }
    };
    tracing::info!(client_id = %app.client_id, "IMDS issued a managed identity token");
    let issued = now();
    json_response(
        StatusCode::OK,
        &json!({
            "access_token": access_token,
            "client_id": app.client_id,
            "expires_in": TOKEN_LIFETIME_SECONDS.to_string(),
            "expires_on": (issued + TOKEN_LIFETIME_SECONDS).to_string(),
            "ext_expires_in": TOKEN_LIFETIME_SECONDS.to_string(),
            "not_before": issued.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        }),
    )
}
