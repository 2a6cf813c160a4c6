//! API types: the `KeyVaultSecret` custom resource, and in [`contract`] every
//! annotation, label, finalizer and field-manager name kvsync reads and
//! writes. Kept apart from the controllers so that clients (tests, tools) can
//! use them without pulling in reconciler logic.

pub mod contract;
mod keys;
mod keyvaultsecret;
mod policies;
mod template;

pub use keys::*;
pub use keyvaultsecret::*;
pub use policies::*;
pub use template::*;

use kube::CustomResourceExt;

/// The CRD as YAML, exactly as `crds/keyvaultsecrets.kvsync.io.yaml` holds it.
pub fn crd_yaml() -> String {
    serde_norway::to_string(&KeyVaultSecret::crd()).expect("a CRD always serializes")
}
