//! Fair shares of the sync slots across namespaces — pure, no I/O.
//!
//! ```text
//!  reconcile(ns/name) ── enter(ns): ns holds fewer than `share` slots? ── yes ─▶ sync; the slot
//!                                                                   │           is held until the
//!                                                                   │           guard is dropped
//!                                                                   └─ no ──▶ requeued after
//!                                                                              SHARE_RETRY ± jitter
//!  share = max(1, --max-concurrent-syncs / 2)
//! ```
//!
//! kube-runtime's controller runs at most `--max-concurrent-syncs`
//! reconciles at once, first come, first served. Without shares, one
//! namespace whose objects all ask to sync at once (a mass apply, a
//! force-sync loop) would hold every slot, and another namespace's refresh
//! would wait behind all of them. With shares, half the slots stay open to
//! the other namespaces whatever one namespace does; one namespace alone
//! still syncs with half the slots, which is more than the API server's
//! write rate needs (docs/benchmark.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long an object whose namespace holds its whole share waits before it
/// asks again (plus up to as much again of jitter).
pub const SHARE_RETRY: Duration = Duration::from_millis(500);

/// Slots held per namespace, and how many one namespace may hold.
#[derive(Debug)]
pub struct Shares {
    share: usize,
    held: Arc<Mutex<HashMap<Box<str>, usize>>>,
}

/// One slot held by a namespace; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    namespace: Box<str>,
    held: Arc<Mutex<HashMap<Box<str>, usize>>>,
}

impl Shares {
    /// Shares of `slots` concurrent syncs: half for any one namespace.
    pub fn new(slots: u16) -> Self {
        Shares {
            share: usize::from(slots / 2).max(1),
            held: Arc::default(),
        }
    }

    /// A slot for `namespace`, unless it already holds its share.
    pub fn enter(&self, namespace: &str) -> Option<Slot> {
        let mut held = self.held.lock().unwrap();
        let count = held.entry(namespace.into()).or_default();
        if *count >= self.share {
            return None;
        }
        *count += 1;
        Some(Slot {
            namespace: namespace.into(),
            held: self.held.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap();
        if let Some(count) = held.get_mut(&self.namespace) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.namespace);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_namespace_holds_at_most_half_the_slots_and_gives_them_back() {
        let shares = Shares::new(4);
        let busy: Vec<Slot> = (0..2).map(|_| shares.enter("busy").unwrap()).collect();
        assert!(shares.enter("busy").is_none(), "its share is full");
        let other = shares.enter("quiet");
        assert!(other.is_some(), "another namespace still gets a slot");
        drop(busy);
        let again = shares.enter("busy");
        assert!(again.is_some(), "slots come back when dropped");
        assert_eq!(shares.held.lock().unwrap().get("busy"), Some(&1));
        drop(other);
        assert!(
            !shares.held.lock().unwrap().contains_key("quiet"),
            "no entry left behind"
        );
    }

    #[test]
    fn with_one_slot_a_namespace_may_still_use_it() {
        let shares = Shares::new(1);
        let only = shares.enter("a");
        assert!(only.is_some());
        assert!(shares.enter("a").is_none());
    }
}
