//! The digest key's home: Secret `kvsync-digest-key` (entry `key`) in the
//! operator's namespace, created with a random key on first start.
//!
//! The key must outlive the process — digests recorded on workloads are only
//! comparable under the same key — so it lives in the cluster, next to the
//! operator, readable by as few as the operator's own Secrets.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::core::ObjectMeta;

use super::ReloadError;
use super::digest::DigestKey;
use crate::api::contract::MANAGED_BY_LABEL;

pub const KEY_SECRET_NAME: &str = "kvsync-digest-key";
const KEY_ENTRY: &str = "key";

/// Reads the key, or creates it when there is none yet.
pub async fn load_or_create(
    client: &kube::Client,
    namespace: &str,
) -> Result<DigestKey, ReloadError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let access = |source| ReloadError::DigestKeyAccess {
        namespace: namespace.to_owned(),
        source,
    };
    if let Some(existing) = api.get_opt(KEY_SECRET_NAME).await.map_err(access)? {
        return key_of(&existing, namespace);
    }
    let key = DigestKey::generate();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(KEY_SECRET_NAME.to_owned()),
            labels: Some([(MANAGED_BY_LABEL.0.to_owned(), MANAGED_BY_LABEL.1.to_owned())].into()),
            ..ObjectMeta::default()
        },
        data: Some([(KEY_ENTRY.to_owned(), ByteString(key.as_bytes().to_vec()))].into()),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(
                namespace,
                name = KEY_SECRET_NAME,
                "created the reload digest key"
            );
            Ok(key)
        }
        // Another replica was first: use its key.
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            let existing = api.get(KEY_SECRET_NAME).await.map_err(access)?;
            key_of(&existing, namespace)
        }
        Err(kube::Error::Api(status)) if status.is_not_found() => {
            Err(ReloadError::OperatorNamespaceMissing(namespace.to_owned()))
        }
        Err(error) => Err(access(error)),
    }
}

/// The key held by `secret` (the key Secret, read from `namespace`).
pub fn key_of(secret: &Secret, namespace: &str) -> Result<DigestKey, ReloadError> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KEY_ENTRY))
        .map_or(&[][..], |b| b.0.as_slice());
    DigestKey::from_bytes(bytes).map_err(|source| ReloadError::DigestKeyMalformed {
        namespace: namespace.to_owned(),
        source,
    })
}
