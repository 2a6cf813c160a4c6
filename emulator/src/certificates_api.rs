//! Key Vault certificates: the part of the certificates surface SDKs use to import
//! and read a certificate, and the certificate-backed secret behind it.
//!
//! ```text
//!  POST /certificates/{name}/import {value, pwd?, policy.secret_props.contentType?, tags?, attributes?}
//!  PUT  (control) /vaults/{vault}/certificates/{name} {value, password?, contentType?, tags?, enabled?}
//!     └─▶ CertificateWithKey ──▶ new version of secret {name}: managed, value in the content type
//!                                  (application/x-pkcs12: base64 PKCS#12 without password — the default;
//!                                   application/x-pem-file: key + chain), nbf/exp from the certificate
//!  GET  /certificates/{name}[/{version}]   ─▶ CertificateBundle {id, kid, sid, x5t, cer, attributes, policy}
//!  GET  /secrets/{name}[/{version}]?outContentType=… ─▶ the secret converted to the other format
//! ```
//!
//! A certificate version *is* its secret version (same name and version id), as
//! in Key Vault; the certificate's details are read from the stored secret value,
//! so the store keeps one copy. The key behind `kid` is not served (no keys
//! surface). Not implemented: creating certificates with an issuer, policies as
//! objects of their own, listing certificates, deleting them through this surface.

use super::certificate::{CertificateError, CertificateWithKey, KeyType, SecretFormat};
use super::eventgrid::schema::EventType;
use super::responses::{ServiceError, json_response};
use super::state::{Emulator, lock};
use super::store::{NewSecret, SecretVersion, VersionId};
use super::tokens::Caller;
use super::vault_api::{VaultContext, parse_body};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub fn routes() -> Router<VaultContext> {
    Router::new()
        .route("/certificates/{name}/import", post(import))
        .route("/certificates/{name}", get(get_latest))
        .route("/certificates/{name}/", get(get_latest))
        .route("/certificates/{name}/{version}", get(get_version))
}

impl From<CertificateError> for ServiceError {
    fn from(error: CertificateError) -> Self {
        ServiceError::bad_parameter(error.to_string())
    }
}

fn format_of(content_type: Option<&str>) -> Result<SecretFormat, ServiceError> {
    match content_type {
        None => Ok(SecretFormat::Pkcs12),
        Some(content_type) => SecretFormat::from_content_type(content_type).ok_or_else(|| {
            ServiceError::bad_parameter(format!(
                "The content type '{content_type}' is not supported; use application/x-pkcs12 or application/x-pem-file."
            ))
        }),
    }
}

/// A certificate to import, from either surface (the control API's body).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Import {
    /// PEM text, base64 of PEM text, or base64 PKCS#12.
    pub value: String,
    pub password: Option<String>,
    /// The format of the secret (Key Vault's policy `secret_props.contentType`).
    pub content_type: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub enabled: Option<bool>,
}

/// Stores a new version of certificate `name`; returns its secret.
pub fn import_certificate(
    emulator: &Emulator,
    vault: &str,
    name: &str,
    import: Import,
) -> Result<SecretVersion, ServiceError> {
    let format = format_of(import.content_type.as_deref())?;
    // Either input can be stored in either format (Key Vault insists they agree;
    // the emulator converts).
    let certificate = CertificateWithKey::from_import(&import.value, import.password.as_deref())?;
    let details = certificate.details()?;
    let secret = NewSecret {
        value: certificate.secret_value(format)?,
        content_type: Some(format.content_type().to_owned()),
        tags: import.tags,
        enabled: import.enabled,
        nbf: Some(details.not_before),
        exp: Some(details.expires),
    };
    let stored = lock(&emulator.store).set_certificate_secret(
        vault,
        name,
        secret,
        VersionId::random(),
        emulator.vault_clock.now(),
    )?;
    tracing::info!(%vault, certificate = %name, version = stored.version.as_str(), "certificate imported");
    emulator.version_created(vault, &stored, EventType::CertificateNewVersionCreated);
    Ok(stored)
}

/// The certificate in a certificate-backed secret, and the secret's format.
fn stored_certificate(
    secret: &SecretVersion,
) -> Result<(CertificateWithKey, SecretFormat), ServiceError> {
    let format = format_of(secret.content_type.as_deref())?;
    Ok((
        CertificateWithKey::from_secret(&secret.value, format)?,
        format,
    ))
}

/// `outContentType` of a secret read: converts a certificate-backed secret to the
/// requested format; other secrets are returned as stored.
pub fn convert(
    secret: SecretVersion,
    out_content_type: Option<&str>,
) -> Result<SecretVersion, ServiceError> {
    let Some(out_content_type) = out_content_type else {
        return Ok(secret);
    };
    let target = SecretFormat::from_content_type(out_content_type).ok_or_else(|| {
        ServiceError::bad_parameter(format!(
            "Invalid outContentType '{out_content_type}': use application/x-pkcs12 or application/x-pem-file."
        ))
    })?;
    if !secret.managed {
        return Ok(secret);
    }
    let (certificate, stored) = stored_certificate(&secret)?;
    if stored == target {
        return Ok(secret);
    }
    Ok(SecretVersion {
        value: certificate.secret_value(target)?,
        content_type: Some(target.content_type().to_owned()),
        ..secret
    })
}

/// Key Vault's `CertificateBundle` of a certificate version.
fn certificate_json(vault_url: &url::Url, secret: &SecretVersion) -> Result<Value, ServiceError> {
    let (certificate, format) = stored_certificate(secret)?;
    let details = certificate.details()?;
    let (name, version) = (&secret.name, secret.version.as_str());
    let key_props = match details.key_type {
        KeyType::Rsa { bits } => {
            json!({"exportable": true, "kty": "RSA", "key_size": bits, "reuse_key": false})
        }
        KeyType::Ec { curve, bits } => {
            json!({"exportable": true, "kty": "EC", "key_size": bits, "crv": curve, "reuse_key": false})
        }
    };
    let mut bundle = json!({
        "id": format!("{vault_url}certificates/{name}/{version}"),
        "kid": format!("{vault_url}keys/{name}/{version}"),
        "sid": format!("{vault_url}secrets/{name}/{version}"),
        "x5t": details.x5t,
        "cer": details.cer,
        "contentType": format.content_type(),
        "attributes": {
            "enabled": secret.enabled,
            "nbf": details.not_before,
            "exp": details.expires,
            "created": secret.created,
            "updated": secret.updated,
            "recoveryLevel": "Recoverable+Purgeable",
            "recoverableDays": 90,
        },
        "policy": {
            "id": format!("{vault_url}certificates/{name}/policy"),
            "key_props": key_props,
            "secret_props": {"contentType": format.content_type()},
            "x509_props": {"subject": details.subject, "key_usage": [], "validity_months": 12},
            "lifetime_actions": [{"trigger": {"lifetime_percentage": 80}, "action": {"action_type": "EmailContacts"}}],
            "issuer": {"name": "Unknown"},
            "attributes": {"enabled": true, "created": secret.created, "updated": secret.updated},
        },
    });
    if !secret.tags.is_empty() {
        bundle["tags"] = json!(secret.tags);
    }
    Ok(bundle)
}

#[derive(Deserialize, Default)]
struct WireSecretProps {
    #[serde(rename = "contentType")]
    content_type: Option<String>,
}

#[derive(Deserialize, Default)]
struct WirePolicy {
    #[serde(default)]
    secret_props: WireSecretProps,
}

#[derive(Deserialize, Default)]
struct WireAttributes {
    enabled: Option<bool>,
}

/// Key Vault's `CertificateImportParameters`.
#[derive(Deserialize)]
struct ImportBody {
    value: String,
    pwd: Option<String>,
    #[serde(default)]
    policy: WirePolicy,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    attributes: WireAttributes,
}

async fn import(
    State(context): State<VaultContext>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ServiceError> {
    context.authorize_secret(&caller, &name, "certificates/import/action")?;
    let body: ImportBody = parse_body(&body)?;
    let stored = import_certificate(
        &context.emulator,
        &context.name,
        &name,
        Import {
            value: body.value,
            password: body.pwd,
            content_type: body.policy.secret_props.content_type,
            tags: body.tags,
            enabled: body.attributes.enabled,
        },
    )?;
    Ok(json_response(
        StatusCode::OK,
        &certificate_json(&context.site.url, &stored)?,
    ))
}

fn read_certificate(
    context: &VaultContext,
    caller: &Caller,
    name: &str,
    version: Option<&str>,
) -> Result<Response, ServiceError> {
    context.authorize_secret(caller, name, "certificates/read")?;
    let secret = lock(&context.emulator.store)
        .get_certificate(&context.name, name, version)?
        .clone();
    Ok(json_response(
        StatusCode::OK,
        &certificate_json(&context.site.url, &secret)?,
    ))
}

async fn get_latest(
    State(context): State<VaultContext>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ServiceError> {
    read_certificate(&context, &caller, &name, None)
}

async fn get_version(
    State(context): State<VaultContext>,
    Extension(caller): Extension<Caller>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ServiceError> {
    read_certificate(&context, &caller, &name, Some(&version))
}
