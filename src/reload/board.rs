//! What the reload stage tells the sync stage about the rollout of each
//! kvsync Secret's data: the sync stage writes it into its KeyVaultSecret's
//! status (`status.rollout`, the `RolledOut` condition) — one writer of the
//! status, fed from here.
//!
//! ```text
//!  reload stage ── publish(ns, Secret, summary as of the Secret's resourceVersion) ──▶ board
//!        │                                                                              │
//!        └── changed? ──▶ feed: (ns, KeyVaultSecret) ──▶ sync controller reconciles ──get┘
//!                                                          (no vault read: within its interval)
//! ```
//!
//! A summary is for one state of the Secret (its resourceVersion): the sync
//! stage ignores one older than the data it wrote itself, so `RolledOut`
//! never reports the previous data's rollout as the current one's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::api::RolloutStatus;

/// The rollout of one Secret's data, as of one of its resourceVersions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The Secret's `metadata.resourceVersion` the summary describes.
    pub secret_version: u64,
    pub status: RolloutStatus,
}

/// (namespace, Secret name).
type SecretKey = (String, String);

/// Shared between the stages (cheap to clone).
#[derive(Clone)]
pub struct RolloutBoard {
    summaries: Arc<Mutex<HashMap<SecretKey, Summary>>>,
    feed: UnboundedSender<(String, String)>,
}

impl RolloutBoard {
    /// The board, and the feed of KeyVaultSecrets (namespace, name) whose
    /// Secret's summary changed.
    pub fn new() -> (Self, UnboundedReceiver<(String, String)>) {
        let (feed, changes) = unbounded_channel();
        let board = RolloutBoard {
            summaries: Arc::default(),
            feed,
        };
        (board, changes)
    }

    /// Records `summary` for Secret `secret`, written by KeyVaultSecret
    /// `writer`; tells the sync stage when it differs from the last one (a
    /// newer resourceVersion too: the sync stage may wait for it).
    pub fn publish(&self, namespace: &str, secret: &str, writer: &str, summary: Summary) {
        let key = (namespace.to_owned(), secret.to_owned());
        let mut summaries = self.summaries.lock().unwrap_or_else(|e| e.into_inner());
        if summaries.get(&key) == Some(&summary) {
            return;
        }
        summaries.insert(key, summary);
        let _ = self.feed.send((namespace.to_owned(), writer.to_owned()));
    }

    /// Forgets a deleted Secret.
    pub fn remove(&self, namespace: &str, secret: &str) {
        let mut summaries = self.summaries.lock().unwrap_or_else(|e| e.into_inner());
        summaries.remove(&(namespace.to_owned(), secret.to_owned()));
    }

    pub fn get(&self, namespace: &str, secret: &str) -> Option<Summary> {
        let summaries = self.summaries.lock().unwrap_or_else(|e| e.into_inner());
        summaries
            .get(&(namespace.to_owned(), secret.to_owned()))
            .cloned()
    }
}
