//! The event subscriptions of one Event Grid namespace with pull delivery —
//! the pure part: no HTTP and no clock (callers pass `now`).
//!
//! ```text
//!  publish ──▶ available (FIFO) ──receive──▶ locked {lock token, deliveryCount += 1, until now + lock}
//!   (or delayed until a time)   ▲               │ acknowledge ──▶ gone
//!                               │               │ reject ───────▶ dead-lettered
//!                               ├── release ────┤ (after releaseDelayInSeconds)
//!                               └── lock expiry ┘ (a later settlement of that token: TokenLost)
//!                    more than maxDeliveryCount deliveries ──▶ dead-lettered
//! ```
//!
//! As in Event Grid: `deliveryCount` is 1 at the first delivery and grows by
//! one with each redelivery (after a release or an expired lock); a lock token
//! settles its event once, while its lock holds; a settlement that fails for
//! one token (lost, unknown) does not fail the others.

use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Event Grid's default lock duration (`receiveLockDurationInSeconds`).
pub const DEFAULT_LOCK_DURATION: Duration = Duration::from_secs(60);
/// Event Grid's default `maxDeliveryCount` of an event subscription.
pub const DEFAULT_MAX_DELIVERY_COUNT: u32 = 10;

/// One event subscription as configured (seed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionConfig {
    pub topic: String,
    pub name: String,
    /// The vaults whose events reach it (their system topics forward to its topic).
    pub vaults: BTreeSet<String>,
    pub lock_duration: Duration,
    pub max_delivery_count: u32,
}

/// An event as a subscription holds it.
#[derive(Debug, Clone)]
struct Entry {
    event: Arc<Value>,
    delivery_count: u32,
}

#[derive(Debug)]
struct Locked {
    entry: Entry,
    until: Instant,
}

/// What happened in one subscription so far (control API `GET /eventgrid`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStats {
    pub published: u64,
    /// Events handed out by receive calls (redeliveries included).
    pub delivered: u64,
    pub acknowledged: u64,
    pub released: u64,
    pub rejected: u64,
    /// Locks that expired before their event was settled.
    pub locks_expired: u64,
    /// Events given up after `maxDeliveryCount` deliveries.
    pub dead_lettered: u64,
    /// Receive calls answered (empty ones included).
    pub receive_calls: u64,
    /// Receive calls waiting for an event now.
    pub waiting: usize,
    pub available: usize,
    pub locked: usize,
    pub delayed: usize,
}

#[derive(Debug)]
struct Subscription {
    config: SubscriptionConfig,
    available: VecDeque<Entry>,
    /// Events released with a delay or published late, by the time they appear.
    delayed: Vec<(Instant, Entry)>,
    locked: HashMap<String, Locked>,
    stats: SubscriptionStats,
}

impl Subscription {
    /// Expired locks and due delays as of `now`.
    fn catch_up(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .locked
            .iter()
            .filter(|(_, locked)| locked.until <= now)
            .map(|(token, _)| token.clone())
            .collect();
        for token in expired {
            if let Some(locked) = self.locked.remove(&token) {
                self.stats.locks_expired += 1;
                self.requeue(locked.entry);
            }
        }
        self.delayed.sort_by_key(|(at, _)| *at);
        let due = self.delayed.partition_point(|(at, _)| *at <= now);
        for (_, entry) in self.delayed.drain(..due).collect::<Vec<_>>() {
            self.requeue(entry);
        }
    }

    /// Back to the available events, unless it was delivered too often.
    fn requeue(&mut self, entry: Entry) {
        if entry.delivery_count >= self.config.max_delivery_count {
            self.stats.dead_lettered += 1;
        } else {
            self.available.push_back(entry);
        }
    }

    fn next_due(&self) -> Option<Instant> {
        let locks = self.locked.values().map(|locked| locked.until);
        let delays = self.delayed.iter().map(|(at, _)| *at);
        locks.chain(delays).min()
    }
}

/// One event handed out by a receive call.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub lock_token: String,
    pub delivery_count: u32,
    pub event: Arc<Value>,
}

/// How a lock token is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    Acknowledge,
    /// Available again after this delay.
    Release(Duration),
    Reject,
}

/// A lock token that could not be settled, with Event Grid's error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedLockToken {
    pub lock_token: String,
    pub error: LockTokenError,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockTokenError {
    pub code: &'static str,
    pub message: &'static str,
}

/// The answer of acknowledge, release and reject.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleResult {
    pub failed_lock_tokens: Vec<FailedLockToken>,
    pub succeeded_lock_tokens: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    #[error("The event subscription '{subscription}' of topic '{topic}' was not found.")]
    SubscriptionNotFound { topic: String, subscription: String },
}

/// Every event subscription of the namespace, by (topic, subscription).
#[derive(Debug, Default)]
pub struct Broker {
    subscriptions: BTreeMap<(String, String), Subscription>,
    next_token: u64,
}

impl Broker {
    pub fn new(configs: impl IntoIterator<Item = SubscriptionConfig>) -> Self {
        let subscriptions = configs
            .into_iter()
            .map(|config| {
                let key = (config.topic.clone(), config.name.clone());
                let subscription = Subscription {
                    config,
                    available: VecDeque::new(),
                    delayed: Vec::new(),
                    locked: HashMap::new(),
                    stats: SubscriptionStats::default(),
                };
                (key, subscription)
            })
            .collect();
        Broker {
            subscriptions,
            next_token: 0,
        }
    }

    fn subscription(
        &mut self,
        topic: &str,
        subscription: &str,
    ) -> Result<&mut Subscription, BrokerError> {
        self.subscriptions
            .get_mut(&(topic.to_owned(), subscription.to_owned()))
            .ok_or_else(|| BrokerError::SubscriptionNotFound {
                topic: topic.to_owned(),
                subscription: subscription.to_owned(),
            })
    }

    /// Hands `event` to every subscription bound to `vault` (every
    /// subscription with `None`), available at once or from `at`. Returns
    /// how many subscriptions got it.
    pub fn publish(
        &mut self,
        vault: Option<&str>,
        event: Arc<Value>,
        at: Option<Instant>,
    ) -> usize {
        let mut reached = 0;
        for subscription in self.subscriptions.values_mut() {
            if vault.is_some_and(|vault| !subscription.config.vaults.contains(vault)) {
                continue;
            }
            reached += 1;
            subscription.stats.published += 1;
            let entry = Entry {
                event: event.clone(),
                delivery_count: 0,
            };
            match at {
                Some(at) => subscription.delayed.push((at, entry)),
                None => subscription.available.push_back(entry),
            }
        }
        reached
    }

    /// Up to `max_events` available events, each locked for the
    /// subscription's lock duration from `now`.
    pub fn receive(
        &mut self,
        topic: &str,
        subscription: &str,
        max_events: usize,
        now: Instant,
    ) -> Result<Vec<Received>, BrokerError> {
        let first_token = self.next_token;
        let subscription = self.subscription(topic, subscription)?;
        subscription.catch_up(now);
        let until = now + subscription.config.lock_duration;
        let mut received = Vec::new();
        while received.len() < max_events {
            let Some(mut entry) = subscription.available.pop_front() else {
                break;
            };
            entry.delivery_count += 1;
            let lock_token = lock_token(first_token + received.len() as u64);
            received.push(Received {
                lock_token: lock_token.clone(),
                delivery_count: entry.delivery_count,
                event: entry.event.clone(),
            });
            subscription
                .locked
                .insert(lock_token, Locked { entry, until });
        }
        subscription.stats.delivered += received.len() as u64;
        self.next_token += received.len() as u64;
        Ok(received)
    }

    /// A receive call begins (`true`) or ends, answered or abandoned (`false`).
    pub fn receive_call(&mut self, topic: &str, subscription: &str, begins: bool) {
        if let Ok(subscription) = self.subscription(topic, subscription) {
            let stats = &mut subscription.stats;
            if begins {
                stats.waiting += 1;
            } else {
                stats.waiting = stats.waiting.saturating_sub(1);
                stats.receive_calls += 1;
            }
        }
    }

    /// Settles each lock token whose lock still holds at `now`.
    pub fn settle(
        &mut self,
        topic: &str,
        subscription: &str,
        lock_tokens: &[String],
        settlement: Settlement,
        now: Instant,
    ) -> Result<SettleResult, BrokerError> {
        let subscription = self.subscription(topic, subscription)?;
        subscription.catch_up(now);
        let mut result = SettleResult::default();
        for token in lock_tokens {
            let Some(locked) = subscription.locked.remove(token) else {
                result.failed_lock_tokens.push(FailedLockToken {
                    lock_token: token.clone(),
                    error: LockTokenError {
                        code: "TokenLost",
                        message: "Token has expired.",
                    },
                });
                continue;
            };
            match settlement {
                Settlement::Acknowledge => subscription.stats.acknowledged += 1,
                Settlement::Reject => subscription.stats.rejected += 1,
                Settlement::Release(delay) => {
                    subscription.stats.released += 1;
                    if delay.is_zero() {
                        subscription.requeue(locked.entry);
                    } else {
                        subscription.delayed.push((now + delay, locked.entry));
                    }
                }
            }
            result.succeeded_lock_tokens.push(token.clone());
        }
        Ok(result)
    }

    /// When something may next become available in the subscription without
    /// a publish: a lock expiring or a delay ending.
    pub fn next_due(&self, topic: &str, subscription: &str) -> Option<Instant> {
        self.subscriptions
            .get(&(topic.to_owned(), subscription.to_owned()))
            .and_then(Subscription::next_due)
    }

    /// Statistics of every subscription, keyed `topic/subscription`.
    pub fn stats(&mut self, now: Instant) -> BTreeMap<String, SubscriptionStats> {
        self.subscriptions
            .iter_mut()
            .map(|((topic, name), subscription)| {
                subscription.catch_up(now);
                let mut stats = subscription.stats.clone();
                stats.available = subscription.available.len();
                stats.locked = subscription.locked.len();
                stats.delayed = subscription.delayed.len();
                (format!("{topic}/{name}"), stats)
            })
            .collect()
    }
}

/// Opaque lock tokens, base64 like Event Grid's, unique per broker.
fn lock_token(sequence: u64) -> String {
    use base64::Engine;
    let random = uuid::Uuid::new_v4();
    let mut bytes = sequence.to_be_bytes().to_vec();
    bytes.extend_from_slice(random.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LOCK: Duration = Duration::from_secs(60);

    fn broker() -> Broker {
        let config = |name: &str, vaults: &[&str]| SubscriptionConfig {
            topic: "kv".into(),
            name: name.into(),
            vaults: vaults.iter().map(|v| v.to_string()).collect(),
            lock_duration: LOCK,
            max_delivery_count: 3,
        };
        Broker::new([config("a", &["shop"]), config("b", &["other"])])
    }

    fn event(id: &str) -> Arc<Value> {
        Arc::new(json!({"id": id}))
    }

    fn ids(received: &[Received]) -> Vec<String> {
        received
            .iter()
            .map(|r| r.event["id"].as_str().unwrap().to_owned())
            .collect()
    }

    fn tokens(received: &[Received]) -> Vec<String> {
        received.iter().map(|r| r.lock_token.clone()).collect()
    }

    #[test]
    fn events_reach_the_subscriptions_of_their_vault_in_order() {
        let mut broker = broker();
        let now = Instant::now();
        assert_eq!(broker.publish(Some("shop"), event("1"), None), 1);
        assert_eq!(broker.publish(Some("shop"), event("2"), None), 1);
        assert_eq!(broker.publish(None, event("forged"), None), 2);
        let first = broker.receive("kv", "a", 2, now).unwrap();
        assert_eq!(ids(&first), ["1", "2"]);
        assert!(first.iter().all(|r| r.delivery_count == 1));
        assert_eq!(
            ids(&broker.receive("kv", "b", 10, now).unwrap()),
            ["forged"]
        );
        assert_eq!(
            broker.receive("kv", "nope", 1, now),
            Err(BrokerError::SubscriptionNotFound {
                topic: "kv".into(),
                subscription: "nope".into()
            })
        );
    }

    #[test]
    fn acknowledged_events_are_gone_and_a_token_settles_once() {
        let mut broker = broker();
        let now = Instant::now();
        broker.publish(Some("shop"), event("1"), None);
        let received = broker.receive("kv", "a", 1, now).unwrap();
        let ack = broker
            .settle("kv", "a", &tokens(&received), Settlement::Acknowledge, now)
            .unwrap();
        assert_eq!(ack.succeeded_lock_tokens, tokens(&received));
        let again = broker
            .settle("kv", "a", &tokens(&received), Settlement::Reject, now)
            .unwrap();
        assert!(again.succeeded_lock_tokens.is_empty());
        assert_eq!(again.failed_lock_tokens[0].error.code, "TokenLost");
        assert!(
            broker
                .receive("kv", "a", 1, now + 2 * LOCK)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn an_expired_lock_redelivers_with_a_higher_count_and_loses_its_token() {
        let mut broker = broker();
        let now = Instant::now();
        broker.publish(Some("shop"), event("1"), None);
        let first = broker.receive("kv", "a", 1, now).unwrap();
        assert!(
            broker
                .receive("kv", "a", 1, now + LOCK / 2)
                .unwrap()
                .is_empty()
        );
        assert_eq!(broker.next_due("kv", "a"), Some(now + LOCK));
        let second = broker.receive("kv", "a", 1, now + LOCK).unwrap();
        assert_eq!(ids(&second), ["1"]);
        assert_eq!(second[0].delivery_count, 2);
        let late = broker
            .settle(
                "kv",
                "a",
                &tokens(&first),
                Settlement::Acknowledge,
                now + LOCK,
            )
            .unwrap();
        assert_eq!(late.failed_lock_tokens.len(), 1, "the first lock was lost");
        // A third expiry reaches maxDeliveryCount (3): dead-lettered.
        broker.receive("kv", "a", 1, now + 2 * LOCK).unwrap();
        assert!(
            broker
                .receive("kv", "a", 1, now + 3 * LOCK)
                .unwrap()
                .is_empty()
        );
        assert_eq!(broker.stats(now + 3 * LOCK)["kv/a"].dead_lettered, 1);
    }

    #[test]
    fn release_returns_an_event_after_its_delay_and_reject_drops_it() {
        let mut broker = broker();
        let now = Instant::now();
        broker.publish(Some("shop"), event("1"), None);
        broker.publish(Some("shop"), event("2"), None);
        let received = broker.receive("kv", "a", 2, now).unwrap();
        let delay = Duration::from_secs(10);
        broker
            .settle(
                "kv",
                "a",
                &tokens(&received)[..1],
                Settlement::Release(delay),
                now,
            )
            .unwrap();
        broker
            .settle("kv", "a", &tokens(&received)[1..], Settlement::Reject, now)
            .unwrap();
        assert!(broker.receive("kv", "a", 5, now).unwrap().is_empty());
        let again = broker.receive("kv", "a", 5, now + delay).unwrap();
        assert_eq!(ids(&again), ["1"]);
        assert_eq!(again[0].delivery_count, 2);
        let stats = &broker.stats(now + delay)["kv/a"];
        assert_eq!((stats.released, stats.rejected, stats.delivered), (1, 1, 3));
    }
}
