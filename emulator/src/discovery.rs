//! Entra's discovery documents, which MSAL-based credentials (Python, .NET, Java,
//! JavaScript, Go) read before their first token request:
//!
//! ```text
//!  GET /common/discovery/instance?api-version=1.1&authorization_endpoint=…/{tenant}/oauth2/v2.0/authorize
//!        └─▶ tenant_discovery_endpoint ─┐   (instance discovery; MSAL sends it to the
//!                                       │    authority host only when told to)
//!  GET /{tenant}/v2.0/.well-known/openid-configuration ◀─┘
//!        └─▶ issuer, token_endpoint, authorization_endpoint, jwks_uri, …
//!  GET /{tenant}/discovery/v2.0/keys  (and /{tenant}/discovery/keys)
//!        └─▶ the JWKS of the key that signs the emulator's access tokens
//! ```
//!
//! Every URL in the documents is built from the emulator's authority host, port
//! included: MSAL takes the token endpoint from the document. A tenant is known
//! when a vault or an app lives in it; `common`, `organizations` and `consumers`
//! answer with Entra's multi-tenant document (issuer `…/{tenantid}/v2.0`). Other
//! tenants get Entra's `400 invalid_tenant` (AADSTS90002), which MSAL reports as a
//! failed OIDC discovery.

use super::entra::EntraError;
use super::state::{Emulator, lock};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// Tenant names that stand for "any tenant" in Entra's multi-tenant endpoints.
const MULTI_TENANT: [&str; 3] = ["common", "organizations", "consumers"];

pub fn routes() -> Router<Arc<Emulator>> {
    Router::new()
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/common/discovery/instance", get(instance_discovery))
        .route("/{tenant}/discovery/v2.0/keys", get(keys))
        .route("/{tenant}/discovery/keys", get(keys))
}

/// The tenant exists, or is one of the multi-tenant names.
fn check_tenant(emulator: &Emulator, tenant: &str) -> Result<(), EntraError> {
    if MULTI_TENANT.contains(&tenant) || emulator.knows_tenant(tenant) {
        Ok(())
    } else {
        Err(EntraError::tenant_not_found(tenant))
    }
}

/// Entra's v2.0 OpenID configuration of `tenant`, served from `authority` (with
/// its trailing slash).
fn openid_document(authority: &str, tenant: &str) -> Value {
    let issuer_tenant = if MULTI_TENANT.contains(&tenant) {
        "{tenantid}"
    } else {
        tenant
    };
    let base = format!("{authority}{tenant}");
    json!({
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{authority}{issuer_tenant}/v2.0"),
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
            "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr",
            "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
        "kerberos_endpoint": format!("{base}/kerberos"),
        "tenant_region_scope": "NA",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    })
}

async fn openid_configuration(
    State(emulator): State<Arc<Emulator>>,
    Path(tenant): Path<String>,
) -> Result<Response, EntraError> {
    check_tenant(&emulator, &tenant)?;
    let document = openid_document(emulator.authority_host.as_str(), &tenant);
    Ok((StatusCode::OK, axum::Json(document)).into_response())
}

/// Instance discovery: Entra validates the instance (host) of the
/// `authorization_endpoint` and points at its tenant's OpenID configuration; it
/// does not check the tenant (the OpenID configuration does). MSAL may drop the
/// port from the endpoint, so only the host name is compared.
async fn instance_discovery(
    State(emulator): State<Arc<Emulator>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, EntraError> {
    let endpoint = query
        .get("authorization_endpoint")
        .ok_or_else(|| EntraError::missing_field("authorization_endpoint"))?;
    let instance = emulator.authority_host.host_str().unwrap_or("localhost");
    let parsed = url::Url::parse(endpoint)
        .ok()
        .filter(|url| url.host_str() == Some(instance));
    let tenant = parsed
        .as_ref()
        .and_then(|url| url.path_segments()?.next().map(str::to_owned))
        .filter(|tenant| !tenant.is_empty())
        .ok_or_else(|| EntraError::invalid_instance(endpoint))?;
    let authority = emulator.authority_host.as_str();
    let network = authority
        .trim_start_matches("https://")
        .trim_end_matches('/');
    Ok(axum::Json(json!({
        "tenant_discovery_endpoint": format!("{authority}{tenant}/v2.0/.well-known/openid-configuration"),
        "api-version": query.get("api-version").map_or("1.1", String::as_str),
        "metadata": [{
            "preferred_network": network,
            "preferred_cache": network,
            "aliases": [network],
        }],
    }))
    .into_response())
}

/// The JWKS of the emulator's token signing key (the current one: a rollover
/// through the control API replaces it).
async fn keys(
    State(emulator): State<Arc<Emulator>>,
    Path(tenant): Path<String>,
) -> Result<Response, EntraError> {
    check_tenant(&emulator, &tenant)?;
    let jwk = lock(&emulator.tokens).jwk();
    Ok(axum::Json(json!({ "keys": [jwk] })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_points_every_endpoint_at_the_emulator_and_its_tenant() {
        let document = openid_document("https://localhost:8443/", "tenant-a");
        assert_eq!(
            document["token_endpoint"],
            "https://localhost:8443/tenant-a/oauth2/v2.0/token"
        );
        assert_eq!(document["issuer"], "https://localhost:8443/tenant-a/v2.0");
        assert_eq!(
            document["jwks_uri"],
            "https://localhost:8443/tenant-a/discovery/v2.0/keys"
        );
        assert_eq!(
            document["authorization_endpoint"],
            "https://localhost:8443/tenant-a/oauth2/v2.0/authorize"
        );
    }

    #[test]
    fn the_multi_tenant_document_has_a_placeholder_issuer() {
        let document = openid_document("https://localhost:8443/", "organizations");
        assert_eq!(document["issuer"], "https://localhost:8443/{tenantid}/v2.0");
        assert_eq!(
            document["token_endpoint"],
            "https://localhost:8443/organizations/oauth2/v2.0/token"
        );
    }
}
