//! The namespace's data plane over HTTPS, as the `2024-06-01` REST spec
//! (`Microsoft.EventGrid` data plane) defines it:
//!
//! ```text
//!  POST /topics/{topic}/eventsubscriptions/{subscription}:receive?api-version&maxEvents=1..100 (1)&maxWaitTime=10..120 (60)
//!       ─▶ {"value": [{"brokerProperties": {"lockToken", "deliveryCount"}, "event": {CloudEvent}}]}
//!          at once when an event is there, else when one arrives or maxWaitTime ends (empty)
//!  POST …:acknowledge | …:reject | …:release?releaseDelayInSeconds=0|10|60|600|3600   {"lockTokens": […]}
//!       ─▶ {"failedLockTokens": [{"lockToken", "error": {"code": "TokenLost", "message"}}], "succeededLockTokens": […]}
//! ```
//!
//! Every request needs an `api-version` the service knows and a bearer token
//! this emulator signed for `https://eventgrid.azure.net` in the namespace's
//! tenant (401 otherwise). Errors have Azure's `{"error": {"code", "message"}}` shape.

use super::EventGrid;
use super::broker::{BrokerError, Settlement};
use crate::faults::FaultTarget;
use crate::responses::{ServiceError, bearer_token, json_response};
use crate::state::{Emulator, lock};
use crate::tokens::Resource;
use crate::traffic::{Surface, observe};
use crate::vault_api::query_param;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, Uri};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The data-plane versions of namespace topics (stable and the previews before them).
const API_VERSIONS: [&str; 4] = [
    "2023-06-01-preview",
    "2023-10-01-preview",
    "2023-11-01",
    "2024-06-01",
];
const RELEASE_DELAYS: [u64; 5] = [0, 10, 60, 600, 3600];
/// Most lock tokens one settlement call may carry.
const MAX_LOCK_TOKENS: usize = 100;

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> ServiceError {
    ServiceError::new(status, code, message)
}

/// The emulator's namespace, if it serves one.
fn namespace(emulator: &Emulator) -> Result<&EventGrid, ServiceError> {
    emulator.event_grid.as_ref().ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "No Event Grid namespace.",
        )
    })
}

fn bad_request(message: impl Into<String>) -> ServiceError {
    error(StatusCode::BAD_REQUEST, "BadRequest", message)
}

impl From<BrokerError> for ServiceError {
    fn from(broker: BrokerError) -> Self {
        error(StatusCode::NOT_FOUND, "NotFound", broker.to_string())
    }
}

pub fn router(emulator: Arc<Emulator>) -> Router {
    let surface = Surface {
        emulator: emulator.clone(),
        target: FaultTarget::EventGrid,
    };
    Router::new()
        .route(
            "/topics/{topic}/eventsubscriptions/{operation}",
            post(operation),
        )
        .fallback(not_found)
        .layer(from_fn_with_state(emulator.clone(), gate))
        .layer(from_fn_with_state(surface, observe))
        .with_state(emulator)
}

async fn not_found(uri: Uri) -> ServiceError {
    error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!(
            "The kvsync emulator's Event Grid namespace has no {}.",
            uri.path()
        ),
    )
}

/// `api-version`, then the bearer token.
async fn gate(
    State(emulator): State<Arc<Emulator>>,
    request: Request,
    next: Next,
) -> Result<Response, ServiceError> {
    match query_param(request.uri(), "api-version") {
        Some(version) if API_VERSIONS.contains(&version.as_str()) => {}
        Some(version) => {
            return Err(bad_request(format!(
                "The api-version '{version}' is invalid. The supported versions are '{}'.",
                API_VERSIONS.join(",")
            )));
        }
        None => return Err(bad_request("The api-version query parameter is required.")),
    }
    let grid = namespace(&emulator)?;
    let verified = match bearer_token(&request) {
        None => Err("the request carries no bearer token".to_owned()),
        Some(token) => lock(&emulator.tokens)
            .verify_for(Resource::EventGrid, token.trim(), &grid.tenant_id)
            .map_err(|rejection| format!("{rejection:?}")),
    };
    if let Err(reason) = verified {
        tracing::info!(%reason, "Event Grid request refused");
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            format!(
                "The request is not authorized ({reason}): present a token for {} of tenant {}.",
                Resource::EventGrid.audience(),
                grid.tenant_id
            ),
        ));
    }
    Ok(next.run(request).await)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LockTokens {
    lock_tokens: Vec<String>,
}

/// `{subscription}:{verb}`: the spec's custom actions.
async fn operation(
    State(emulator): State<Arc<Emulator>>,
    Path((topic, operation)): Path<(String, String)>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ServiceError> {
    let grid = namespace(&emulator)?;
    let Some((subscription, verb)) = operation.rsplit_once(':') else {
        return Err(not_found(uri).await);
    };
    let settlement = match verb {
        "receive" => return receive(grid, &topic, subscription, &uri).await,
        "acknowledge" => Settlement::Acknowledge,
        "reject" => Settlement::Reject,
        "release" => Settlement::Release(release_delay(&uri)?),
        _ => return Err(not_found(uri).await),
    };
    let tokens: LockTokens = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("The request body is not valid: {e}")))?;
    if tokens.lock_tokens.len() > MAX_LOCK_TOKENS {
        return Err(bad_request(format!(
            "At most {MAX_LOCK_TOKENS} lock tokens may be settled at once."
        )));
    }
    let result = lock(&grid.broker).settle(
        &topic,
        subscription,
        &tokens.lock_tokens,
        settlement,
        Instant::now(),
    )?;
    if matches!(settlement, Settlement::Release(_)) {
        grid.arrived.notify_waiters();
    }
    tracing::info!(%topic, %subscription, verb, succeeded = result.succeeded_lock_tokens.len(), failed = result.failed_lock_tokens.len(), "events settled");
    Ok(json_response(StatusCode::OK, &result))
}

fn release_delay(uri: &Uri) -> Result<Duration, ServiceError> {
    match query_param(uri, "releaseDelayInSeconds") {
        None => Ok(Duration::ZERO),
        Some(raw) => raw
            .parse::<u64>()
            .ok()
            .filter(|seconds| RELEASE_DELAYS.contains(seconds))
            .map(Duration::from_secs)
            .ok_or_else(|| {
                bad_request(format!(
                    "releaseDelayInSeconds {raw:?} is not one of 0, 10, 60, 600, 3600."
                ))
            }),
    }
}

/// A query number within `range`, `default` when absent.
fn bounded(
    uri: &Uri,
    name: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ServiceError> {
    let Some(raw) = query_param(uri, name) else {
        return Ok(default);
    };
    raw.parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            bad_request(format!(
                "{name} {raw:?} is out of range: it must be between {} and {}.",
                range.start(),
                range.end()
            ))
        })
}

/// Answers with the events available now, else waits for one until
/// `maxWaitTime` (waking when an event is published or released, a lock
/// expires or a delay ends).
async fn receive(
    grid: &super::EventGrid,
    topic: &str,
    subscription: &str,
    uri: &Uri,
) -> Result<Response, ServiceError> {
    let max_events = bounded(uri, "maxEvents", 1, 1..=100)? as usize;
    let max_wait = Duration::from_secs(bounded(uri, "maxWaitTime", 60, 10..=120)?);
    let deadline = Instant::now() + max_wait;
    let _counted = ReceiveCall::begin(grid, topic, subscription);
    let received = loop {
        let arrived = grid.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        let now = Instant::now();
        let (received, next_due) = {
            let mut broker = lock(&grid.broker);
            let received = broker.receive(topic, subscription, max_events, now)?;
            (received, broker.next_due(topic, subscription))
        };
        if !received.is_empty() || now >= deadline {
            break received;
        }
        let wake = next_due.map_or(deadline, |due| due.min(deadline));
        tokio::select! {
            () = arrived => {}
            () = tokio::time::sleep_until(wake.into()) => {}
        }
    };
    let value: Vec<_> = received
        .iter()
        .map(|r| {
            json!({
                "brokerProperties": {"lockToken": r.lock_token, "deliveryCount": r.delivery_count},
                "event": *r.event,
            })
        })
        .collect();
    tracing::info!(%topic, %subscription, events = value.len(), "events received");
    Ok(json_response(StatusCode::OK, &json!({"value": value})))
}

/// Counts a receive call as waiting while it lasts, whether it is answered
/// or the client gives up (its future dropped).
struct ReceiveCall<'a> {
    grid: &'a super::EventGrid,
    topic: &'a str,
    subscription: &'a str,
}

impl<'a> ReceiveCall<'a> {
    fn begin(grid: &'a super::EventGrid, topic: &'a str, subscription: &'a str) -> Self {
        lock(&grid.broker).receive_call(topic, subscription, true);
        ReceiveCall {
            grid,
            topic,
            subscription,
        }
    }
}

impl Drop for ReceiveCall<'_> {
    fn drop(&mut self) {
        lock(&self.grid.broker).receive_call(self.topic, self.subscription, false);
    }
}
