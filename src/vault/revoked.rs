//! A revoked token, as Key Vault says it: with continuous access evaluation
//! the vault answers a token revoked before it expired (a signing-key
//! rollover, a disabled app) with 401 and a *claims challenge*
//! (`WWW-Authenticate: Bearer … error="insufficient_claims", claims="…"`), no
//! `resource`. The Rust SDK's challenge handler needs a `resource` and fails
//! on it with a parse error, which would hide that the token was refused.
//!
//! [`RevokedToken`] sits between the SDK's authorization policy and the
//! transport: it turns that answer into the plain 401 error it is, so the
//! caller ([`super::sdk`]) drops the credential and the next attempt asks
//! Entra ID for a new token. No I/O of its own.

use std::sync::Arc;

use azure_core::error::{Error, ErrorKind};
use azure_core::http::headers::HeaderName;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request, StatusCode};

const WWW_AUTHENTICATE: HeaderName = HeaderName::from_static("www-authenticate");

/// Whether a `WWW-Authenticate` value is a claims challenge.
pub fn is_claims_challenge(challenge: &str) -> bool {
    challenge
        .split(',')
        .filter_map(|parameter| parameter.split_once('='))
        .any(|(key, value)| {
            key.trim().rsplit(' ').next() == Some("error")
                && value.trim().trim_matches('"') == "insufficient_claims"
        })
}

/// Turns a claims challenge into a 401 error before the SDK's challenge handler sees it.
#[derive(Debug, Default)]
pub struct RevokedToken;

#[async_trait::async_trait]
impl Policy for RevokedToken {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let response = next[0].send(ctx, request, &next[1..]).await?;
        let claims_challenge = response.status() == StatusCode::Unauthorized
            && response
                .headers()
                .get_optional_str(&WWW_AUTHENTICATE)
                .is_some_and(is_claims_challenge);
        if !claims_challenge {
            return Ok(response);
        }
        let raw = response.try_into_raw_response().await?;
        Err(Error::with_message(
            ErrorKind::HttpResponse {
                status: StatusCode::Unauthorized,
                error_code: Some("insufficient_claims".to_owned()),
                raw_response: Some(Box::new(raw)),
            },
            "the vault revoked the token (claims challenge)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::is_claims_challenge;

    #[test]
    fn claims_challenges_are_told_from_plain_ones() {
        assert!(is_claims_challenge(
            r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnt9fQ==""#
        ));
        assert!(is_claims_challenge(r#"Bearer error="insufficient_claims""#));
        assert!(!is_claims_challenge(
            r#"Bearer authorization="https://login.microsoftonline.com/t", resource="https://vault.azure.net""#
        ));
        assert!(!is_claims_challenge(
            r#"Bearer error="invalid_token", error_description="insufficient_claims""#
        ));
    }
}
