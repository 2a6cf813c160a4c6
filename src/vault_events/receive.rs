//! The receivers: one task per source, each taking events in, handing their
//! hints to the dispatcher and settling them (acknowledge, release, reject;
//! for a queue, delete or leave).

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;

use super::eventgrid::{EventGridSource, Settle};
use super::parse::{self, Ignored};
use super::queue::{self, QueueSource};
use super::{SourceKind, VaultEventMetrics};
use crate::schedule::backoff_delay;

/// One event handed to the dispatcher.
pub(super) struct Arrival {
    pub(super) parsed: parse::Parsed,
    pub(super) arrived: Instant,
}

/// What every receiver does with an event it got.
#[derive(Clone)]
pub(super) struct Intake {
    pub(super) inbox: mpsc::Sender<Arrival>,
    pub(super) metrics: VaultEventMetrics,
}

impl Intake {
    /// Reads `event` and hands its hint over; how to settle it.
    fn take(&self, kind: SourceKind, event: &Value, arrived: Instant) -> Settle {
        self.metrics.received(kind);
        match parse::event(event) {
            Err(why) => self.ignore(why),
            Ok(parsed) => {
                tracing::debug!(vault = %parsed.hint.vault, name = ?parsed.hint.name, "Key Vault event");
                match self.inbox.try_send(Arrival { parsed, arrived }) {
                    Ok(()) => Settle::Acknowledge,
                    Err(_) => Settle::Release,
                }
            }
        }
    }

    fn ignore(&self, why: Ignored) -> Settle {
        self.metrics.ignored(why);
        tracing::debug!(reason = why.reason(), "Key Vault event ignored");
        if why.rejected() {
            Settle::Reject
        } else {
            Settle::Acknowledge
        }
    }
}

/// Waits out a backoff after the `failures`-th failed call in a row.
async fn back_off(failures: u32, max_backoff: Duration) {
    tokio::time::sleep(backoff_delay(failures, None, max_backoff, rand::random())).await;
}

pub(super) async fn receive_event_grid(
    source: EventGridSource,
    intake: Intake,
    max_backoff: Duration,
) {
    let mut failures = 0;
    loop {
        let deliveries = match source.receive().await {
            Ok(deliveries) => deliveries,
            Err(error) => {
                failures += 1;
                intake.metrics.source_error(SourceKind::EventGrid);
                tracing::warn!(subscription = %source.url.subscription, %error, "receiving events failed; retrying with backoff");
                back_off(failures, max_backoff).await;
                continue;
            }
        };
        let arrived = Instant::now();
        let mut settle: [(Settle, Vec<String>); 3] = [
            (Settle::Acknowledge, Vec::new()),
            (Settle::Reject, Vec::new()),
            (Settle::Release, Vec::new()),
        ];
        for delivery in deliveries {
            let how = intake.take(SourceKind::EventGrid, &delivery.event, arrived);
            if let Some((_, tokens)) = settle.iter_mut().find(|(h, _)| *h == how) {
                tokens.push(delivery.lock_token);
            }
        }
        let mut failed_call = false;
        for (how, tokens) in settle.iter().filter(|(_, t)| !t.is_empty()) {
            match source.settle(*how, tokens).await {
                Ok(0) => {}
                Ok(lost) => {
                    tracing::debug!(
                        lost,
                        ?how,
                        "some locks were lost before settling; those events come again"
                    )
                }
                Err(error) => {
                    failed_call = true;
                    intake.metrics.source_error(SourceKind::EventGrid);
                    tracing::warn!(?how, %error, "settling events failed; they come again when their locks expire");
                }
            }
        }
        if failed_call {
            failures += 1;
            back_off(failures, max_backoff).await;
        } else {
            failures = 0;
        }
    }
}

pub(super) async fn receive_queue(source: QueueSource, intake: Intake, max_backoff: Duration) {
    let mut failures = 0;
    loop {
        let messages = match source.receive().await {
            Ok(messages) => messages,
            Err(error) => {
                failures += 1;
                intake.metrics.source_error(SourceKind::Queue);
                tracing::warn!(queue = %source.url, %error, "receiving queue messages failed; retrying with backoff");
                back_off(failures, max_backoff).await;
                continue;
            }
        };
        failures = 0;
        if messages.is_empty() {
            tokio::time::sleep(queue::POLL_EVERY).await;
            continue;
        }
        let arrived = Instant::now();
        for message in messages {
            let settled = match parse::queue_message(&message.text) {
                Err(why) => {
                    intake.metrics.received(SourceKind::Queue);
                    intake.ignore(why)
                }
                Ok(events) => events
                    .iter()
                    .map(|event| intake.take(SourceKind::Queue, event, arrived))
                    .fold(Settle::Acknowledge, |all, one| {
                        if one == Settle::Release { one } else { all }
                    }),
            };
            // A message kvsync cannot read will never become readable: it is
            // deleted too (queues have no dead-letter of their own).
            if settled == Settle::Release {
                continue;
            }
            if let Err(error) = source.delete(&message).await {
                intake.metrics.source_error(SourceKind::Queue);
                tracing::warn!(queue = %source.url, %error, "deleting a handled message failed; it comes again");
            }
        }
    }
}
