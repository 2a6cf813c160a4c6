//! What `/readyz` says about the reload stage: the watches that have not
//! listed yet (a restart decision before that would judge workloads against
//! a half-loaded cluster, so the stage evaluates nothing until then).
//!
//! Not started (a standby replica, or before the stage starts) counts as
//! ready: there is nothing to wait for. A watch the operator is forbidden to
//! run is not waited for (the stage reports it and goes on without it).

use std::sync::{Arc, RwLock};

#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<RwLock<Vec<String>>>);

impl Readiness {
    /// The watches still to list, if any.
    pub fn waiting_for(&self) -> Option<Vec<String>> {
        let pending = self.0.read().map(|p| p.clone()).unwrap_or_default();
        (!pending.is_empty()).then_some(pending)
    }

    pub(super) fn set_waiting_for(&self, pending: Vec<String>) {
        if let Ok(mut held) = self.0.write() {
            *held = pending;
        }
    }
}
