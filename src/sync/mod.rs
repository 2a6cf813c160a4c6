//! Sync stage: the `KeyVaultSecret` controller — Key Vault values into
//! Secrets, applied server-side, with the reload stage told at once.
//!
//! ```text
//!  watches (KeyVaultSecrets; Secret, ServiceAccount, ConfigMap metadata), vault change feed
//!     │  controller: wiring, mappers ───────────────▶ Context (context: settings, clients,
//!     ▼                                                indexes keyed by ObjectKey)
//!  reconciler: validate ─▶ identity ─▶ fetch + render ─▶ write target ─▶ status, event
//!     │                        │           │                 └─▶ reload fast path
//!     └─ error: SyncError ─▶ Ready reason, retry           metrics: SyncMetrics (+ staleness)
//! ```
//!
//! Its face: [`run`] (the controllers, [`controller`]), [`Context`] (the
//! shared state, [`context`]), [`SyncMetrics`] (injected by [`crate::run`]),
//! [`ObjectKey`] (what every per-object index is keyed by) and [`SyncError`].
//!
//! Decisions are pure and live in [`render`], [`target`], [`status`], [`expiry`],
//! [`memory`], [`observed`], [`references`], [`staleness`], [`key`],
//! [`shares`] (each namespace's share of the sync slots) and
//! [`crate::schedule`]; [`reconciler`] runs the steps, with [`identity`],
//! [`values`], [`fetch`], [`write`] and [`events`] doing the I/O around
//! them, and [`error`] saying what each failure means for the status and
//! the retry.

mod context;
mod controller;
mod error;
mod events;
pub mod expiry;
mod fetch;
mod identity;
mod key;
pub mod keys;
pub mod memory;
mod metrics;
pub mod observed;
mod reconciler;
pub mod references;
pub mod render;
pub mod rollout;
mod shares;
pub mod staleness;
pub mod status;
pub mod target;
pub mod template;
mod template_from;
mod values;
mod write;

pub use context::Context;
pub use controller::run;
pub use error::{Retry, SyncError};
pub use events::ObjectEvents;
pub use key::ObjectKey;
pub use metrics::SyncMetrics;
