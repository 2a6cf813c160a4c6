//! Why a sync did not complete, and what happens next — the reconciler's
//! single error type.
//!
//! ```text
//!  SyncError ──reason()──▶ Ready=False condition reason (+ Warning event on a change of reason)
//!      └────retry()────▶ Retry::AfterChange   the user must change something; a watch brings it back
//!                        Retry::AtInterval    the vault's content is wrong; look again each refreshInterval
//!                        Retry::Backoff       transient (vault, write); exponential, Retry-After as a floor
//!  (SyncError::Kube, the cluster's own trouble, goes to the controller's error policy instead)
//! ```
//!
//! Every step of a sync returns `Result<_, SyncError>`, so the reconciler
//! composes them with plain `?`. Messages never contain a secret value.

use std::time::Duration;

use super::render::RenderError;
use super::template::TemplateError;
use crate::vault::VaultError;

/// A sync that did not complete. The Secret keeps its last good data.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The spec cannot work as written; the message says what to change.
    #[error("{0}")]
    InvalidSpec(String),
    /// A vault value cannot be rendered as the spec asks (bad JSON, property,
    /// encoding…): fixed in the vault, so it is looked at again every interval.
    #[error(transparent)]
    Content(#[from] RenderError),
    /// A `target.template` does not parse (`InvalidSpec`) or failed on the
    /// fetched values (`TemplateFailed`, looked at again every interval).
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The identity cannot be used as configured.
    #[error("{0}")]
    AuthConfig(String),
    /// Key Vault or Entra ID refused or failed.
    #[error("{error}; {}", error.hint())]
    Vault {
        #[from]
        error: VaultError,
    },
    /// The target Secret belongs to someone else.
    #[error("{0}")]
    Conflict(String),
    /// `creationPolicy: Merge` onto a Secret that does not exist (yet).
    #[error(
        "Secret {0} does not exist; creationPolicy Merge only adds keys to an existing Secret: create it, or use creationPolicy Owner"
    )]
    SecretMissing(String),
    /// `target.immutable`: the Secret was written once and the vault changed since.
    #[error(
        "Secret {0} is immutable (target.immutable) and Key Vault's content changed; delete the Secret to have it written again"
    )]
    Immutable(String),
    /// `deletionPolicy: Delete` and every remote secret is gone: the Secret was let go of.
    #[error(
        "every referenced remote secret is deleted; Secret {0} was removed (deletionPolicy: Delete) and comes back with them"
    )]
    RemoteDeleted(String),
    /// The API server found the Secret invalid (422: e.g. over 1 MiB, or an
    /// admission webhook's verdict): the spec's or the vault's to fix, or the
    /// webhook's to change its mind, so looked at again with backoff.
    #[error("the API server refused Secret {secret}: {message}")]
    WriteInvalid { secret: String, message: String },
    /// The API server refused to write the Secret (RBAC, admission webhook, quota, conflict).
    #[error("writing Secret {secret} failed: {message}")]
    WriteFailed { secret: String, message: String },
    /// The Kubernetes API failed for a reason of the cluster's, not the user's.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// What to do after a failed sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Wait for a change (spec, force-sync, a watched Secret or ServiceAccount).
    AfterChange,
    /// Look again after the object's refresh interval.
    AtInterval,
    /// Back off exponentially; `Some` is the server's Retry-After.
    Backoff(Option<Duration>),
}

impl SyncError {
    /// The reason of a failure on the Kubernetes side.
    pub const KUBE_REASON: &'static str = "KubernetesError";

    /// The `Ready` condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            SyncError::InvalidSpec(_) | SyncError::Content(_) | SyncError::WriteInvalid { .. } => {
                "InvalidSpec"
            }
            SyncError::Template(TemplateError::Syntax { .. }) => "InvalidSpec",
            SyncError::Template(TemplateError::Render { .. }) => "TemplateFailed",
            SyncError::AuthConfig(_) => "AuthFailed",
            SyncError::Vault { error } => error.reason(),
            SyncError::Conflict(_) => "SecretConflict",
            SyncError::SecretMissing(_) => "SecretMissing",
            SyncError::Immutable(_) => "SecretImmutable",
            SyncError::RemoteDeleted(_) => "RemoteDeleted",
            SyncError::WriteFailed { .. } => "WriteFailed",
            SyncError::Kube(_) => Self::KUBE_REASON,
        }
    }

    pub fn retry(&self) -> Retry {
        match self {
            SyncError::InvalidSpec(_)
            | SyncError::AuthConfig(_)
            | SyncError::Conflict(_)
            | SyncError::SecretMissing(_)
            | SyncError::Template(TemplateError::Syntax { .. }) => Retry::AfterChange,
            SyncError::Content(_)
            | SyncError::Template(TemplateError::Render { .. })
            | SyncError::Immutable(_)
            | SyncError::RemoteDeleted(_) => Retry::AtInterval,
            SyncError::Vault { error } => Retry::Backoff(error.retry_after()),
            SyncError::WriteInvalid { .. } | SyncError::WriteFailed { .. } | SyncError::Kube(_) => {
                Retry::Backoff(None)
            }
        }
    }

    /// Whether the vault's values could not be rendered into the Secret:
    /// without a refresh interval nothing looks at it again by the clock, so
    /// the reconciler retries it with backoff instead.
    pub fn unrendered(&self) -> bool {
        matches!(
            self,
            SyncError::Content(_) | SyncError::Template(TemplateError::Render { .. })
        )
    }

    /// An API server's refusal to write `secret`: a 422 is the spec's fault
    /// (e.g. a Secret over 1 MiB), any other answer is a write failure the
    /// user or an admin must look at; no answer at all is the cluster's.
    pub fn write_refused(secret: &str, error: kube::Error) -> Self {
        match error {
            kube::Error::Api(status) if status.code == 422 => SyncError::WriteInvalid {
                secret: secret.to_owned(),
                message: status.message,
            },
            kube::Error::Api(status) => SyncError::WriteFailed {
                secret: secret.to_owned(),
                message: format!("{} ({})", status.message, status.code),
            },
            other => SyncError::Kube(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, "Forbidden")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn write_refusals_are_told_apart_by_status_code() {
        let too_big = SyncError::write_refused("db", api_error(422, "Secret too long"));
        assert_eq!(too_big.reason(), "InvalidSpec");
        assert_eq!(
            too_big.retry(),
            Retry::Backoff(None),
            "the vault's value or a webhook's verdict may change: not only the spec"
        );
        assert_eq!(
            too_big.to_string(),
            "the API server refused Secret db: Secret too long"
        );

        let denied = SyncError::write_refused("db", api_error(403, "denied by webhook"));
        assert_eq!(denied.reason(), "WriteFailed");
        assert_eq!(denied.retry(), Retry::Backoff(None));
        assert_eq!(
            denied.to_string(),
            "writing Secret db failed: denied by webhook (403)"
        );
    }

    #[test]
    fn content_errors_are_retried_at_the_interval() {
        let error = SyncError::from(RenderError::NotJsonObject { name: "a".into() });
        assert_eq!(error.reason(), "InvalidSpec");
        assert_eq!(error.retry(), Retry::AtInterval);
        assert!(error.unrendered());
        assert!(!SyncError::Immutable("db".into()).unrendered());
    }

    #[test]
    fn vault_errors_carry_the_hint_and_retry_after() {
        let error = SyncError::from(VaultError::Throttled {
            retry_after: Some(Duration::from_secs(7)),
        });
        assert_eq!(error.reason(), "Throttled");
        assert_eq!(error.retry(), Retry::Backoff(Some(Duration::from_secs(7))));
        assert!(error.to_string().starts_with("throttled by Key Vault; "));
    }
}
