//! kvsync keeps Kubernetes Secrets in step with Azure Key Vault and restarts the
//! workloads that use them when a value changes.
//!
//! ```text
//! Key Vault ──poll──▶ vault (fetch for an identity) ──▶ sync (reconciler, SSA) ──▶ Secret
//!                                                                                   │
//!                       Deployments / StatefulSets / DaemonSets ◀── reload (digest, rollout)
//! ```
//!
//! One module per stage of that flow — [`api`] (the custom resource, and
//! [`api::contract`]: every annotation, label, finalizer and field manager
//! kvsync reads or writes on objects), [`vault`]
//! (Key Vault access, change detection by listing), [`sync`] (the reconciler),
//! [`reload`] (rolling restarts), [`vault_events`] (Key Vault events through
//! Event Grid: a changed secret read at once) — plus [`run`] and [`cli`] (wiring and flags),
//! [`convert`] (`kvsync convert`: ESO manifests → KeyVaultSecrets),
//! [`explain`] (`kvsync explain`, the answers to "what does this resolve to"
//! and "why did this restart"), [`cluster`] (the API client and watch timeouts), [`events`]
//! (Kubernetes Events as both stages write them), [`leader`] (Lease-based
//! election), [`scope`] (which namespaces), [`schedule`]
//! (refresh and backoff timing), [`metrics`] and [`telemetry`].
//!
//! The Key Vault + Entra ID emulator the tests and the demo run against is a
//! crate of its own in this workspace (`emulator/`, package `kvsync-emulator`);
//! the operator neither contains nor depends on it.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod cluster;
pub mod convert;
pub mod events;
pub mod explain;
pub mod leader;
pub mod metrics;
pub mod reload;
pub mod run;
pub mod schedule;
pub mod scope;
pub mod sync;
pub mod telemetry;
pub mod vault;
pub mod vault_events;
