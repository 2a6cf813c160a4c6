//! What happens to every request of an Azure surface (a vault, Entra or the
//! Event Grid namespace) around its
//! handler: it is counted, it may be failed or held by an injected fault or (a
//! vault's) refused past the service limits, and the response gets an
//! `x-ms-request-id` as Azure's do.

use super::entra::EntraError;
use super::faults::{FaultKind, FaultTarget, StatusFault};
use super::limits::OperationClass;
use super::responses::ServiceError;
use super::state::{Emulator, lock};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::{Duration, Instant};

static REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-request-id");

/// One Azure surface, as the middleware sees it.
#[derive(Clone)]
pub struct Surface {
    pub emulator: Arc<Emulator>,
    pub target: FaultTarget,
}

impl Surface {
    fn fault_response(&self, fault: StatusFault) -> Response {
        let status =
            StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match self.target {
            FaultTarget::Vault(_) | FaultTarget::EventGrid => {
                ServiceError::injected(status, fault.retry_after_seconds).into_response()
            }
            FaultTarget::Entra => {
                EntraError::injected(status, fault.retry_after_seconds).into_response()
            }
        }
    }

    /// Key Vault's 429 when a vault's service limit refuses the request.
    fn throttled(&self, method: &str, route: &str) -> Option<Response> {
        let FaultTarget::Vault(vault) = &self.target else {
            return None;
        };
        let class = OperationClass::of(method, route);
        let refused = lock(&self.emulator.limits)
            .admit(vault, class, Instant::now())
            .err()?;
        Some(ServiceError::throttled(refused.retry_after_seconds).into_response())
    }

    /// A 401 whose challenge names `resource` (in the vault's tenant).
    fn foreign_challenge(&self, resource: &str) -> Response {
        let tenant = match &self.target {
            FaultTarget::Vault(vault) => self.emulator.vaults[vault].tenant_id.as_str(),
            FaultTarget::EventGrid => self
                .emulator
                .event_grid
                .as_ref()
                .map_or("common", |grid| grid.tenant_id.as_str()),
            FaultTarget::Entra => "common",
        };
        ServiceError::unauthorized(
            "Injected fault: a challenge for another resource.",
            self.emulator.challenge_for(tenant, resource),
        )
        .into_response()
    }
}

fn redirect(location: &str) -> Response {
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, location.to_owned())],
    )
        .into_response()
}

fn carries_bearer_token(request: &Request) -> bool {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("Bearer "))
}

/// The middleware: counts the request, applies a pending fault, stamps a request id.
pub async fn observe(
    State(surface): State<Surface>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let route = matched.as_ref().map_or("<unmatched>", MatchedPath::as_str);
    let emulator = &surface.emulator;
    lock(&emulator.counters).record_request(
        format!("{} {method} {route}", surface.target),
        carries_bearer_token(&request),
    );
    let fault = lock(&emulator.faults).take(&surface.target, &method, &path);
    let mut response = match &fault {
        Some(FaultKind::Status(fault)) => surface.fault_response(*fault),
        Some(FaultKind::Challenge(challenge)) => {
            surface.foreign_challenge(&challenge.challenge_resource)
        }
        Some(FaultKind::Redirect(to)) => redirect(&to.redirect_to),
        Some(FaultKind::Hang(hang)) => {
            tokio::time::sleep(Duration::from_millis(hang.hang_ms)).await;
            next.run(request).await
        }
        None => match surface.throttled(&method, route) {
            Some(throttled) => throttled,
            None => next.run(request).await,
        },
    };
    let request_id = uuid::Uuid::new_v4().hyphenated().to_string();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .entry(REQUEST_ID.clone())
            .or_insert(value);
    }
    let status = response.status().as_u16();
    lock(&emulator.counters).record_status(status);
    tracing::info!(surface = %surface.target, %method, %path, status, injected = fault.is_some(), "request");
    response
}
