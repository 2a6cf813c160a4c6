//! The control API: plain HTTP on 127.0.0.1, not an Azure surface. Tests and demos
//! use it to change the world behind the SDK's back and to look at what happened.
//!
//! | request | effect |
//! |---------|--------|
//! | `PUT /vaults/{vault}/secrets/{name}` `{value, contentType?, tags?, enabled?, nbf?, exp?}` | new version (a rotation); returns the bundle |
//! | `PATCH /vaults/{vault}/secrets/{name}` `{enabled?, tags?, contentType?, nbf?, exp?}` | changes the latest version; returns it without value |
//! | `DELETE /vaults/{vault}/secrets/{name}` | removes the secret with all versions |
//! | `PUT /vaults/{vault}/certificates/{name}` `{value, password?, contentType?, tags?, enabled?}` | imports a certificate (PEM text, or base64 PKCS#12 — `contentType` `application/x-pem-file` or `application/x-pkcs12`, the default); returns its secret's bundle |
//! | `PUT /apps/{clientId}` (seed shape) / `DELETE /apps/{clientId}` | adds, replaces or removes an app registration |
//! | `POST /faults` / `DELETE /faults` | queues an injected fault / clears all |
//! | `POST /tokens/rollover` | new token signing key: every access token issued so far is revoked (401 with a claims challenge, `error="insufficient_claims"`) |
//! | `GET /counters` / `POST /counters/reset` | request counters of the Azure surfaces |
//! | `POST /clock` `{skewSeconds}` | sets the vaults' clock off by that many seconds (`updated`, `created`, `Date`) |
//! | `GET /issued` | every access token issued, client assertion presented and token scope asked for |
//! | `GET /eventgrid` | per event subscription (`topic/subscription`): published, delivered, acknowledged, released, rejected, locks expired, dead-lettered, receive calls; available, locked, delayed and receive calls waiting now |
//! | `POST /eventgrid/events` `{event, vault?}` | delivers `event` (any JSON: a forged `source`, say) as it is to every subscription and queue (those bound to `vault`, if given) |
//! | `POST /eventgrid/faults` `{kind, count, delayMs?}` / `DELETE /eventgrid/faults` | drop, duplicate, delay or reorder the next `count` published events (see `eventgrid/faults.rs`) / clears all |
//! | `GET /healthz` | `ok` |
//!
//! A new secret version (here or through a vault), a certificate import and a
//! change of an app's grants publish the vault's Key Vault event to the Event
//! Grid namespace, when the seed has one.
//!
//! Errors use Key Vault's error shape.

use super::certificates_api::{Import, import_certificate};
use super::config::validate_app;
use super::directory::AppRegistration;
use super::eventgrid::faults::EventFaultRequest;
use super::eventgrid::schema::EventType;
use super::faults::FaultRequest;
use super::observed::Counters;
use super::responses::{ServiceError, json_response};
use super::state::{Emulator, lock};
use super::store::{NewSecret, SecretUpdate, StoreError, VersionId};
use super::vault_api::{SecretView, secret_json};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post, put};
use serde::Deserialize;
use std::sync::Arc;

pub fn router(emulator: Arc<Emulator>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/vaults/{vault}/secrets/{name}",
            put(set_secret).patch(update_secret).delete(delete_secret),
        )
        .route("/vaults/{vault}/certificates/{name}", put(import))
        .route("/apps/{client_id}", put(upsert_app).delete(delete_app))
        .route("/faults", post(add_fault).delete(clear_faults))
        .route("/tokens/rollover", post(rollover_tokens))
        .route("/counters", get(counters))
        .route("/counters/reset", post(reset_counters))
        .route("/issued", get(issued))
        .route("/clock", post(set_clock))
        .route("/eventgrid", get(event_grid_stats))
        .route("/eventgrid/events", post(inject_event))
        .route(
            "/eventgrid/faults",
            post(add_event_fault).delete(clear_event_faults),
        )
        .with_state(emulator)
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ServiceError> {
    serde_json::from_slice(body).map_err(|error| {
        ServiceError::bad_parameter(format!("The request body is not valid: {error}"))
    })
}

fn vault_url<'a>(emulator: &'a Emulator, vault: &str) -> Result<&'a url::Url, ServiceError> {
    emulator
        .vaults
        .get(vault)
        .map(|site| &site.url)
        .ok_or_else(|| StoreError::VaultNotFound(vault.to_owned()).into())
}

async fn set_secret(
    State(emulator): State<Arc<Emulator>>,
    Path((vault, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ServiceError> {
    let secret: NewSecret = parse_body(&body)?;
    let url = vault_url(&emulator, &vault)?;
    let stored = lock(&emulator.store).set_secret(
        &vault,
        &name,
        secret,
        VersionId::random(),
        emulator.vault_clock.now(),
    )?;
    tracing::info!(%vault, secret = %name, version = stored.version.as_str(), "control: new secret version");
    emulator.version_created(&vault, &stored, EventType::SecretNewVersionCreated);
    Ok(json_response(
        StatusCode::OK,
        &secret_json(url, stored, SecretView::Bundle),
    ))
}

async fn import(
    State(emulator): State<Arc<Emulator>>,
    Path((vault, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ServiceError> {
    let request: Import = parse_body(&body)?;
    let url = vault_url(&emulator, &vault)?;
    let stored = import_certificate(&emulator, &vault, &name, request)?;
    Ok(json_response(
        StatusCode::OK,
        &secret_json(url, stored, SecretView::Bundle),
    ))
}

async fn update_secret(
    State(emulator): State<Arc<Emulator>>,
    Path((vault, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ServiceError> {
    let update: SecretUpdate = parse_body(&body)?;
    let url = vault_url(&emulator, &vault)?;
    let updated = lock(&emulator.store).update_secret(
        &vault,
        &name,
        None,
        update,
        emulator.vault_clock.now(),
    )?;
    tracing::info!(%vault, secret = %name, enabled = updated.enabled, "control: secret updated");
    Ok(json_response(
        StatusCode::OK,
        &secret_json(url, updated, SecretView::Properties),
    ))
}

async fn delete_secret(
    State(emulator): State<Arc<Emulator>>,
    Path((vault, name)): Path<(String, String)>,
) -> Result<StatusCode, ServiceError> {
    lock(&emulator.store).delete_secret(&vault, &name)?;
    tracing::info!(%vault, secret = %name, "control: secret deleted");
    Ok(StatusCode::NO_CONTENT)
}

async fn upsert_app(
    State(emulator): State<Arc<Emulator>>,
    Path(client_id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ServiceError> {
    let registration: AppRegistration = parse_body(&body)?;
    if registration.client_id != client_id {
        return Err(ServiceError::bad_parameter(format!(
            "The body's clientId {:?} differs from the path's {client_id:?}.",
            registration.client_id
        )));
    }
    let app = validate_app(registration, &emulator.known_names)
        .map_err(|error| ServiceError::bad_parameter(error.to_string()))?;
    let granted = app.granted_vaults();
    let before = lock(&emulator.directory).upsert(app);
    let replaced = before.is_some();
    tracing::info!(%client_id, replaced, "control: app registration stored");
    emulator.access_changed(
        before
            .iter()
            .flat_map(|app| app.granted_vaults())
            .chain(granted),
    );
    Ok(if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    })
}

async fn delete_app(
    State(emulator): State<Arc<Emulator>>,
    Path(client_id): Path<String>,
) -> Result<StatusCode, ServiceError> {
    let removed = lock(&emulator.directory).remove(&client_id);
    if let Some(removed) = removed {
        tracing::info!(%client_id, "control: app registration removed");
        emulator.access_changed(removed.granted_vaults());
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ServiceError::not_found(
            "AppNotFound",
            format!("No app with client id {client_id} is registered."),
        ))
    }
}

async fn add_fault(
    State(emulator): State<Arc<Emulator>>,
    body: Bytes,
) -> Result<StatusCode, ServiceError> {
    let request: FaultRequest = parse_body(&body)?;
    let description = format!(
        "{} {} {}* x{}",
        request.target,
        request.method.as_deref().unwrap_or("*"),
        request.path_prefix,
        request.count
    );
    lock(&emulator.faults)
        .add(request, |vault| emulator.vaults.contains_key(vault))
        .map_err(|error| ServiceError::bad_parameter(error.to_string()))?;
    tracing::info!(fault = %description, "control: fault queued");
    Ok(StatusCode::NO_CONTENT)
}

async fn rollover_tokens(
    State(emulator): State<Arc<Emulator>>,
) -> Result<StatusCode, ServiceError> {
    lock(&emulator.tokens)
        .rollover(emulator.vault_clock.now())
        .map_err(|error| ServiceError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            ..ServiceError::bad_parameter(error.to_string())
        })?;
    tracing::info!("control: token signing key rolled over");
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_faults(State(emulator): State<Arc<Emulator>>) -> StatusCode {
    lock(&emulator.faults).clear();
    StatusCode::NO_CONTENT
}

async fn counters(State(emulator): State<Arc<Emulator>>) -> Response {
    let counters = lock(&emulator.counters).clone();
    json_response(StatusCode::OK, &counters)
}

async fn reset_counters(State(emulator): State<Arc<Emulator>>) -> StatusCode {
    *lock(&emulator.counters) = Counters::default();
    StatusCode::NO_CONTENT
}

async fn issued(State(emulator): State<Arc<Emulator>>) -> Response {
    let issued = lock(&emulator.issued).clone();
    json_response(StatusCode::OK, &issued)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClockBody {
    skew_seconds: i64,
}

async fn set_clock(
    State(emulator): State<Arc<Emulator>>,
    body: Bytes,
) -> Result<Response, ServiceError> {
    let body: ClockBody = parse_body(&body)?;
    emulator.vault_clock.set_skew(body.skew_seconds);
    tracing::info!(skew_seconds = body.skew_seconds, "control: vault clock set");
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"skewSeconds": body.skew_seconds}),
    ))
}

fn event_grid(emulator: &Emulator) -> Result<&super::eventgrid::EventGrid, ServiceError> {
    emulator.event_grid.as_ref().ok_or_else(|| {
        ServiceError::not_found(
            "EventGridNotConfigured",
            "The seed has no eventGrid section.",
        )
    })
}

async fn event_grid_stats(State(emulator): State<Arc<Emulator>>) -> Result<Response, ServiceError> {
    Ok(json_response(
        StatusCode::OK,
        &event_grid(&emulator)?.stats(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectBody {
    event: serde_json::Value,
    vault: Option<String>,
}

async fn inject_event(
    State(emulator): State<Arc<Emulator>>,
    body: Bytes,
) -> Result<StatusCode, ServiceError> {
    let body: InjectBody = parse_body(&body)?;
    event_grid(&emulator)?.inject(body.vault, body.event);
    Ok(StatusCode::NO_CONTENT)
}

async fn add_event_fault(
    State(emulator): State<Arc<Emulator>>,
    body: Bytes,
) -> Result<StatusCode, ServiceError> {
    let request: EventFaultRequest = parse_body(&body)?;
    tracing::info!(?request, "control: event fault queued");
    event_grid(&emulator)?
        .add_fault(request)
        .map_err(|error| ServiceError::bad_parameter(error.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_event_faults(
    State(emulator): State<Arc<Emulator>>,
) -> Result<StatusCode, ServiceError> {
    event_grid(&emulator)?.clear_faults();
    Ok(StatusCode::NO_CONTENT)
}
