//! API types: the `KeyVaultSecret` custom resource and the annotation names
//! kvsync reads and writes. Kept apart from the controllers so that clients
//! (tests, tools) can use them without pulling in reconciler logic.

mod keys;
mod keyvaultsecret;
mod policies;
mod template;

pub use keys::*;
pub use keyvaultsecret::*;
pub use policies::*;
pub use template::*;

use kube::CustomResourceExt;

/// Label on every Secret kvsync writes.
pub const MANAGED_BY_LABEL: (&str, &str) = ("app.kubernetes.io/managed-by", "kvsync");
/// Annotation whose new value forces an immediate sync.
pub const FORCE_SYNC_ANNOTATION: &str = "kvsync.io/force-sync";
/// Reloader's opt-in marker on a Secret, honoured by `reloader.stakater.com/search`.
pub const RELOADER_MATCH_ANNOTATION: &str = "reloader.stakater.com/match";
/// Field manager of every write kvsync makes.
pub const FIELD_MANAGER: &str = "kvsync";

/// The CRD as YAML, exactly as `crds/keyvaultsecrets.kvsync.io.yaml` holds it.
pub fn crd_yaml() -> String {
    serde_norway::to_string(&KeyVaultSecret::crd()).expect("a CRD always serializes")
}
