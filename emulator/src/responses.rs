//! Response bodies of the Key Vault surface, built in one place: JSON with Key
//! Vault's content type, and Key Vault's error shape
//! `{"error":{"code":…,"message":…,"innererror":{"code":…}}}`, which the control
//! API reuses so that every error a test sees reads the same way.

use super::store::StoreError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// A JSON response with the content type Azure services send.
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).expect("response bodies always serialize");
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(JSON_CONTENT_TYPE),
        )],
        bytes,
    )
        .into_response()
}

/// A Key Vault error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub inner_code: Option<&'static str>,
    /// `WWW-Authenticate` challenge of a 401.
    pub challenge: Option<String>,
    pub retry_after_seconds: Option<u64>,
}

impl ServiceError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
            inner_code: None,
            challenge: None,
            retry_after_seconds: None,
        }
    }

    pub fn bad_parameter(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadParameter", message)
    }

    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 401 with the challenge that tells clients where to get a token.
    pub fn unauthorized(message: impl Into<String>, challenge: String) -> Self {
        Self {
            challenge: Some(challenge),
            ..Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
        }
    }

    pub fn forbidden_by_rbac(message: impl Into<String>) -> Self {
        Self {
            inner_code: Some("ForbiddenByRbac"),
            ..Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
        }
    }

    pub fn throttled(retry_after_seconds: Option<u64>) -> Self {
        Self {
            retry_after_seconds,
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Throttled",
                "Operations per second rate limit reached. Reason: VaultRequestTypeLimitReached",
            )
        }
    }

    /// An injected failure with any status; 429 gets Key Vault's real throttling body.
    pub fn injected(status: StatusCode, retry_after_seconds: Option<u64>) -> Self {
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Self::throttled(retry_after_seconds);
        }
        let code: String = status
            .canonical_reason()
            .unwrap_or("Error")
            .split_whitespace()
            .collect();
        Self {
            retry_after_seconds,
            ..Self::new(
                status,
                &code,
                format!("Injected fault: HTTP {}.", status.as_u16()),
            )
        }
    }

    pub fn not_implemented(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            format!("The kvsync emulator does not implement {method} {path}."),
        )
    }
}

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> Self {
        let message = error.to_string();
        match error {
            StoreError::VaultNotFound(_) => Self::not_found("VaultNotFound", message),
            StoreError::SecretNotFound(_) => Self::not_found("SecretNotFound", message),
            StoreError::CertificateNotFound(_) => Self::not_found("CertificateNotFound", message),
            StoreError::NameTaken(_) => Self::new(StatusCode::CONFLICT, "Conflict", message),
            StoreError::SecretDisabled => Self {
                inner_code: Some("SecretDisabled"),
                ..Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
            },
            StoreError::InvalidName(_)
            | StoreError::ValueTooLarge(_)
            | StoreError::TooManyTags(_)
            | StoreError::ContentTypeTooLong
            | StoreError::InvalidSkipToken
            | StoreError::InvalidMaxResults(_) => Self::bad_parameter(message),
        }
    }
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(inner) = self.inner_code {
            error["innererror"] = json!({"code": inner});
        }
        let mut response = json_response(self.status, &json!({"error": error}));
        let headers = response.headers_mut();
        if let Some(value) = self
            .challenge
            .and_then(|challenge| HeaderValue::from_str(&challenge).ok())
        {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        if let Some(seconds) = self.retry_after_seconds {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The bearer token of `request`'s Authorization header, if it has one.
pub fn bearer_token(request: &axum::extract::Request) -> Option<&str> {
    request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_disabled_secret_is_a_forbidden_with_its_inner_code() {
        let response = ServiceError::from(StoreError::SecretDisabled).into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/json; charset=utf-8"
        );
        assert_eq!(
            body_of(response).await,
            json!({"error": {"code": "Forbidden",
                             "message": "Operation get is not allowed on a disabled secret.",
                             "innererror": {"code": "SecretDisabled"}}})
        );
    }

    #[tokio::test]
    async fn injected_faults_read_like_the_service() {
        let throttled = ServiceError::injected(StatusCode::TOO_MANY_REQUESTS, Some(3));
        assert_eq!(throttled.code, "Throttled");
        let response = throttled.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let unavailable = ServiceError::injected(StatusCode::SERVICE_UNAVAILABLE, None);
        assert_eq!(unavailable.code, "ServiceUnavailable");
        let response = unavailable.into_response();
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
        assert!(body_of(response).await["error"].get("innererror").is_none());
    }
}
