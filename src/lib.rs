//! kvsync keeps Kubernetes Secrets in step with Azure Key Vault and restarts the
//! workloads that use them when a value changes.
//!
//! ```text
//! Key Vault ──poll──▶ vault (fetch for an identity) ──▶ sync (reconciler, SSA) ──▶ Secret
//!                                                                                   │
//!                       Deployments / StatefulSets / DaemonSets ◀── reload (digest, rollout)
//! ```
//!
//! One module per stage of that flow, plus the Key Vault + Entra ID emulator used by
//! the tests and for local development.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod emulator;
pub mod leader;
pub mod metrics;
pub mod reload;
pub mod run;
pub mod schedule;
pub mod scope;
pub mod sync;
pub mod telemetry;
pub mod vault;
