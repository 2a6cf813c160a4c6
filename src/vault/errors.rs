//! What went wrong talking to Key Vault, in the terms a user acts on.
//!
//! The SDK reports failures as `azure_core::Error`; this turns them into the
//! few cases the reconciler distinguishes (and shows as a condition reason).
//! Messages carry Key Vault's and Entra's own explanations, which never
//! contain a secret value. [`SetupError`] and [`VaultUrlError`] are the
//! start-up and `vaultUrl` problems found before any request.

use std::time::Duration;

use azure_core::error::ErrorKind;

use super::scoped::ForeignScope;

/// A failed Key Vault or Entra ID call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    /// No token could be obtained (bad client secret, federated credential mismatch…).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The identity lacks permission (`ForbiddenByRbac` or an access policy).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The secret exists but is disabled.
    #[error("secret {0} is disabled")]
    Disabled(String),
    /// The secret (or version) does not exist.
    #[error("secret {0} was not found in the vault")]
    NotFound(String),
    /// Every enabled version of the secret has an `nbf` (not before) still
    /// to come, and the ref respects it: nothing may be written yet.
    #[error(
        "secret {name} has no version valid yet: its first version starts at {starts} (its notBefore)"
    )]
    NotYetValid {
        name: String,
        /// The first `nbf`, as RFC 3339.
        starts: String,
        /// How long until then (when to look again).
        wait: Duration,
    },
    /// Key Vault throttled the caller; `retry_after` when it said how long.
    #[error("throttled by Key Vault")]
    Throttled { retry_after: Option<Duration> },
    /// 5xx, timeouts, connection failures.
    #[error("vault unavailable: {0}")]
    Unavailable(String),
    /// The server did what Key Vault never does: asked for a token for
    /// another resource, or redirected kvsync elsewhere.
    #[error("refused to follow the vault: {0}")]
    NotKeyVault(String),
}

/// Why kvsync cannot talk to Key Vault at all (a start-up problem).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("extra CA file: {0}")]
    ExtraCa(#[source] reqwest::Error),
    #[error("HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("reading {path}: {source}")]
    ReadCaFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Why a KeyVaultSecret's `vaultUrl` may not be used (no token is sent to it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultUrlError {
    #[error("vaultUrl {url:?} is not a URL: {reason}")]
    NotAUrl {
        url: String,
        reason: url::ParseError,
    },
    #[error("vaultUrl {0:?} must use https")]
    NotHttps(String),
    #[error(
        "vault host {host:?} is not an allowed Key Vault host (allowed: {allowed}, plus --allow-vault-host)"
    )]
    HostNotAllowed { host: String, allowed: String },
}

impl VaultError {
    /// Classifies an SDK error; `name` is the secret asked for (for messages).
    pub fn from_sdk(error: &azure_core::Error, name: &str) -> Self {
        if let Some(foreign) = error.downcast_ref::<ForeignScope>() {
            return VaultError::NotKeyVault(foreign.to_string());
        }
        match error.kind() {
            ErrorKind::HttpResponse {
                status,
                error_code,
                raw_response,
            } => {
                let status = u16::from(*status);
                let body = raw_response
                    .as_ref()
                    .map(|r| String::from_utf8_lossy(r.body()).into_owned());
                let inner = body.as_deref().and_then(inner_error_code);
                let message = body.as_deref().and_then(error_message).unwrap_or_else(|| {
                    error_code
                        .clone()
                        .unwrap_or_else(|| format!("HTTP {status}"))
                });
                let retry_after = raw_response.as_ref().and_then(|r| {
                    r.headers()
                        .get_optional_str(&azure_core::http::headers::RETRY_AFTER)
                        .and_then(parse_retry_after)
                });
                classify(status, inner.as_deref(), message, retry_after, name)
            }
            ErrorKind::Credential => VaultError::Auth(credential_message(error)),
            _ => VaultError::Unavailable(with_causes(error)),
        }
    }

    /// How long until asking again can help, if known: the vault's
    /// `Retry-After`, or the wait until a secret's first version is valid.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            VaultError::Throttled { retry_after } => *retry_after,
            VaultError::NotYetValid { wait, .. } => Some(*wait),
            _ => None,
        }
    }

    /// The condition reason shown on the KeyVaultSecret.
    pub fn reason(&self) -> &'static str {
        match self {
            VaultError::Auth(_) => "AuthFailed",
            VaultError::Forbidden(_) => "Forbidden",
            VaultError::Disabled(_) => "RemoteDisabled",
            VaultError::NotFound(_) => "RemoteNotFound",
            VaultError::NotYetValid { .. } => "RemoteNotYetValid",
            VaultError::Throttled { .. } => "Throttled",
            VaultError::Unavailable(_) => "VaultUnavailable",
            VaultError::NotKeyVault(_) => "NotKeyVault",
        }
    }

    /// What the user should do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            VaultError::Auth(_) => {
                "check the client id, tenant id and credential (or the federated credential's issuer and subject); without an AADSTS code above, Entra ID itself failed and kvsync retries"
            }
            VaultError::Forbidden(_) => {
                "grant the identity the \"Key Vault Secrets User\" role on the vault"
            }
            VaultError::Disabled(_) => {
                "enable the secret in Key Vault or reference another version"
            }
            VaultError::NotFound(_) => "create the secret in Key Vault or fix the name/version",
            VaultError::NotYetValid { .. } => {
                "kvsync writes it then; to have it now, move its notBefore in Key Vault or set notBeforePolicy: Ignore"
            }
            VaultError::Throttled { .. } => {
                "kvsync backs off and retries; lower the request rate if it persists"
            }
            VaultError::Unavailable(_) => {
                "kvsync retries with backoff; check the vault URL and network"
            }
            VaultError::NotKeyVault(_) => {
                "kvsync sends only Key Vault tokens, to the vault URL itself; check that vaultUrl is the vault's own URL"
            }
        }
    }
}

/// Pure classification of an HTTP failure.
fn classify(
    status: u16,
    inner: Option<&str>,
    message: String,
    retry_after: Option<Duration>,
    name: &str,
) -> VaultError {
    match (status, inner) {
        (403, Some("SecretDisabled")) => VaultError::Disabled(name.to_owned()),
        (401, _) => VaultError::Auth(message),
        (403, _) => VaultError::Forbidden(message),
        (404, _) => VaultError::NotFound(name.to_owned()),
        (429, _) => VaultError::Throttled { retry_after },
        (300..=399, _) => VaultError::NotKeyVault(format!(
            "the vault answered HTTP {status} (a redirect); kvsync does not follow redirects"
        )),
        _ => VaultError::Unavailable(message),
    }
}

fn inner_error_code(body: &str) -> Option<String> {
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    json["error"]["innererror"]["code"]
        .as_str()
        .map(str::to_owned)
}

fn error_message(body: &str) -> Option<String> {
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    json["error"]["message"].as_str().map(str::to_owned)
}

/// Entra's answer (e.g. `AADSTS7000215: Invalid client secret provided.`) is
/// in the error chain; keep its first line, which names the problem and
/// carries no credential.
fn credential_message(error: &azure_core::Error) -> String {
    let text = format!("{error}");
    let start = text.find("AADSTS").unwrap_or(0);
    text[start..]
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

/// An error and its causes (`failed to execute request: … : operation timed
/// out`): the SDK's own text alone does not say what went wrong on the wire.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// Longest `Retry-After` honoured. Key Vault asks for seconds; a larger value
/// (from a misbehaving proxy, say) would stall syncing, and an absurd one
/// overflowed the backoff's `Instant` arithmetic and panicked.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` as delta-seconds (Key Vault's form when it sends one), at
/// most [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .map(|seconds| Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn disabled_is_told_apart_from_rbac() {
        let disabled = classify(403, Some("SecretDisabled"), "m".into(), None, "db");
        assert_eq!(disabled, VaultError::Disabled("db".into()));
        assert_eq!(
            classify(403, Some("ForbiddenByRbac"), "no".into(), None, "db").reason(),
            "Forbidden"
        );
    }

    #[test]
    fn throttling_keeps_retry_after() {
        let err = classify(429, None, "t".into(), parse_retry_after("7"), "db");
        assert_eq!(
            err,
            VaultError::Throttled {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            classify(503, None, "x".into(), None, "db").reason(),
            "VaultUnavailable"
        );
        assert_eq!(
            classify(404, None, "x".into(), None, "db").reason(),
            "RemoteNotFound"
        );
    }

    #[test]
    fn a_secret_not_valid_yet_is_retried_at_its_start_however_far() {
        let wait = Duration::from_secs(90 * 86_400);
        let error = VaultError::NotYetValid {
            name: "db".into(),
            starts: "2026-12-13T02:00:00Z".into(),
            wait,
        };
        assert_eq!(error.reason(), "RemoteNotYetValid");
        assert!(error.to_string().contains("2026-12-13T02:00:00Z"));
        let cap = Duration::from_secs(300);
        let delay = crate::schedule::backoff_delay(1, error.retry_after(), cap, 0.5);
        assert_eq!(delay, wait, "not before its start, and not later");
    }

    #[test]
    fn inner_code_is_read_from_the_body() {
        let body = r#"{"error":{"code":"Forbidden","message":"no","innererror":{"code":"SecretDisabled"}}}"#;
        assert_eq!(inner_error_code(body).as_deref(), Some("SecretDisabled"));
        assert_eq!(error_message(body).as_deref(), Some("no"));
        assert_eq!(inner_error_code("not json"), None);
    }

    proptest! {
        #[test]
        fn retry_after_parsing_never_panics(value in any::<String>()) {
            let _ = parse_retry_after(&value);
        }

        #[test]
        fn retry_after_seconds_are_read_exactly(seconds in any::<u64>(), pad in " {0,2}") {
            prop_assert_eq!(
                parse_retry_after(&format!("{pad}{seconds}{pad}")),
                Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
            );
        }

        /// Whatever a server answers (body, status, Retry-After), classifying
        /// it and scheduling the retry cannot panic, and the retry honours
        /// Retry-After as a floor.
        #[test]
        fn any_error_response_is_classified_and_scheduled(
            body in prop_oneof![
                any::<String>(),
                ".{0,20}".prop_map(|code| format!(r#"{{"error":{{"code":"x","message":"m","innererror":{{"code":{code:?}}}}}}}"#)),
                Just(r#"{"error":{"innererror":[]}}"#.to_string()),
            ],
            status in 400u16..600,
            retry_after in any::<String>(),
            failures in any::<u32>(),
            unit_random in 0.0f64..=1.0,
        ) {
            let _ = error_message(&body);
            let inner = inner_error_code(&body);
            let retry_after = parse_retry_after(&retry_after);
            let error = classify(status, inner.as_deref(), "m".into(), retry_after, "db");
            let cap = Duration::from_secs(300);
            if let VaultError::Throttled { retry_after } = error {
                let delay = crate::schedule::backoff_delay(failures, retry_after, cap, unit_random);
                prop_assert!(delay >= retry_after.unwrap_or_default());
                prop_assert!(delay <= cap.max(retry_after.unwrap_or_default()));
            }
        }
    }
}
