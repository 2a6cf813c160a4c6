//! The dispatcher task, which turns hints into reads, and the tee of the
//! reload fast path, which turns the Secrets those reads made kvsync write
//! into event→Secret latencies.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use tokio::sync::mpsc;

use super::VaultEventMetrics;
use super::dispatch::{Debounce, Offer, Pending, Recent, VaultNames};
use super::parse::{Hint, Ignored};
use super::receive::Arrival;
use crate::api::contract::{MERGED_BY_ANNOTATION, OWNER_ANNOTATION};
use crate::reload::{ReloadInbox, ReloadNotifier};

/// Turns written Secrets into event→Secret latencies.
pub(super) struct WrittenObserver {
    pub(super) pending: Arc<Mutex<Pending>>,
    pub(super) metrics: VaultEventMetrics,
}

impl WrittenObserver {
    /// Passes every Secret written on to the reload stage, observing it first.
    pub(super) async fn tee(self, mut from_sync: ReloadInbox, to_reload: ReloadNotifier) {
        while let Some(written) = from_sync.0.recv().await {
            self.secret_written(&written.0);
            to_reload.secret_written(&written.0);
        }
    }

    fn secret_written(&self, secret: &Secret) {
        let annotations = secret.annotations();
        let Some(owner) = annotations
            .get(OWNER_ANNOTATION)
            .or_else(|| annotations.get(MERGED_BY_ANNOTATION))
        else {
            return;
        };
        let object = format!("{}/{owner}", secret.namespace().unwrap_or_default());
        let now = Instant::now();
        let took = {
            let mut pending = self.pending.lock().unwrap();
            pending.prune(now);
            pending.written(&object, now)
        };
        if let Some(took) = took {
            self.metrics.event_to_secret(took);
        }
    }
}

/// Turns hints into reads: drops repeats, folds bursts, asks the vault views.
pub(super) struct Dispatcher {
    /// The sync stage's context: its vault access is what hints go to.
    pub(super) ctx: Arc<crate::sync::Context>,
    pub(super) names: Arc<VaultNames>,
    pub(super) metrics: VaultEventMetrics,
    pub(super) pending: Arc<Mutex<Pending>>,
    pub(super) recent: Recent,
    pub(super) debounce: Debounce<Hint>,
}

impl Dispatcher {
    pub(super) async fn run(mut self, mut arrivals: mpsc::Receiver<Arrival>) {
        loop {
            let due = self.debounce.next_due();
            tokio::select! {
                arrival = arrivals.recv() => match arrival {
                    Some(arrival) => self.arrive(arrival),
                    None => return,
                },
                () = sleep_until(due) => self.act_on_due(Instant::now()),
            }
        }
    }

    fn arrive(&mut self, arrival: Arrival) {
        let now = Instant::now();
        // Windows that ended act (or close) first: the debounce keeps only
        // the keys of the last window, however many names events bring.
        self.act_on_due(now);
        let Arrival { parsed, arrived } = arrival;
        if let Some(identity) = &parsed.identity
            && self.recent.repeat(identity, now)
        {
            self.metrics.ignored(Ignored::Duplicate);
            return;
        }
        match self.debounce.offer(&parsed.hint, arrived, now) {
            Offer::Now => self.read_now(parsed.hint, arrived, true),
            Offer::Folded => self.metrics.ignored(Ignored::Coalesced),
        }
    }

    /// The reads owed to hints folded into windows that ended by `now`.
    fn act_on_due(&mut self, now: Instant) {
        for (hint, since) in self.debounce.due(now) {
            self.read_now(hint, since, false);
        }
    }

    /// Asks every view of the hinted vault to read the name as of now;
    /// `count`: whether this is the event's own outcome (not a folded one's).
    fn read_now(&self, hint: Hint, since: Instant, count: bool) {
        let (ctx, names) = (self.ctx.clone(), self.names.clone());
        let (metrics, pending) = (self.metrics.clone(), self.pending.clone());
        tokio::spawn(async move {
            let matches = |key: &str| names.name_of(key).as_deref() == Some(hint.vault.as_str());
            let told = ctx.vault.hint(matches, hint.name.as_deref()).await;
            tracing::info!(vault = %hint.vault, name = ?hint.name, told = told.len(), "Key Vault event: reading now");
            if count {
                if told.is_empty() {
                    metrics.ignored(Ignored::UnknownVault);
                } else {
                    metrics.matched();
                }
            }
            pending.lock().unwrap().hinted(told, since);
        });
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}
