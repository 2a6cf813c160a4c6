//! An Event Grid namespace with pull delivery, fed by the vaults' system
//! topics: what a vault publishes when a secret gets a new version, and how a
//! client receives and settles it.
//!
//! ```text
//!  new version (control API or vault API) ──▶ KeyVaultEvent ──▶ EventFaults (drop, duplicate,
//!  certificate import, app grants changed                         delay, reorder)
//!                                                                    │
//!            ┌───────────────────────────────────────────────────────┤ per delivery
//!            ▼                                                       ▼
//!  Broker: subscriptions bound to the vault            storage queues bound to the vault
//!   (CloudEvents 1.0)                                    (Event Grid or CloudEvents schema,
//!            │                                            base64 or plain; Azurite in tests)
//!   HTTPS  POST /topics/{t}/eventsubscriptions/{s}:receive      (long poll, up to maxWaitTime)
//!          POST …:acknowledge | :release | :reject  {"lockTokens": […]}
//!          bearer token for https://eventgrid.azure.net from this emulator's Entra, or 401
//!  control POST /eventgrid/events (any event, e.g. a forged source), POST|DELETE /eventgrid/faults,
//!          GET /eventgrid (per subscription: published, delivered, acknowledged, …)
//! ```
//!
//! [`broker`], [`schema`] and [`faults`] decide everything and are tested
//! without HTTP; [`api`] translates the wire, [`queue`] sends to queues.

pub mod api;
pub mod broker;
pub mod faults;
pub mod queue;
pub mod schema;

use broker::{Broker, SubscriptionConfig};
use faults::{EventFaultError, EventFaultRequest, EventFaults};
use queue::QueueDelivery;
use schema::{KeyVaultEvent, ResourceGroup};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The Event Grid side of the seed, validated.
#[derive(Debug, Clone)]
pub struct EventGridConfig {
    /// Tokens must come from this tenant.
    pub tenant_id: String,
    pub resource_group: ResourceGroup,
    pub subscriptions: Vec<SubscriptionConfig>,
    pub queues: Vec<queue::QueueConfig>,
}

/// One event on its way to the destinations: a vault's event, or one
/// injected as it is (a forged one, say).
#[derive(Debug, Clone)]
enum Publication {
    Vault(KeyVaultEvent),
    Injected { vault: Option<String>, event: Value },
}

/// The namespace: its subscriptions, the queues it delivers to, pending faults.
pub struct EventGrid {
    pub tenant_id: String,
    group: ResourceGroup,
    broker: Mutex<Broker>,
    faults: Mutex<EventFaults<Publication>>,
    /// Wakes receive calls waiting for events.
    arrived: Notify,
    queues: Vec<QueueDelivery>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EventGrid {
    pub fn new(config: EventGridConfig) -> Self {
        EventGrid {
            tenant_id: config.tenant_id,
            group: config.resource_group,
            broker: Mutex::new(Broker::new(config.subscriptions)),
            faults: Mutex::default(),
            arrived: Notify::new(),
            queues: config.queues.into_iter().map(QueueDelivery::new).collect(),
        }
    }

    /// Starts delivering to the storage queues.
    pub fn start_queues(&self, emulator: Weak<crate::state::Emulator>, ca_pem: &str) {
        for queue in &self.queues {
            queue.start(emulator.clone(), ca_pem);
        }
    }

    /// What a vault's system topic does with one of its events: through the
    /// pending faults, to every destination bound to the vault.
    pub fn publish(&self, event: KeyVaultEvent) {
        tracing::info!(vault = %event.vault, event_type = event.event_type.name(), object = %event.object, id = %event.id, "event published");
        let deliveries = lock(&self.faults).route(Publication::Vault(event));
        for (publication, delay) in deliveries {
            self.deliver(publication, delay);
        }
    }

    /// Delivers `event` as it is (no faults) to the destinations bound to
    /// `vault`, or to all of them.
    pub fn inject(&self, vault: Option<String>, event: Value) {
        tracing::info!(?vault, "event injected");
        self.deliver(Publication::Injected { vault, event }, Duration::ZERO);
    }

    fn deliver(&self, publication: Publication, delay: Duration) {
        let at = (!delay.is_zero()).then(|| Instant::now() + delay);
        let (vault, cloud_event) = match &publication {
            Publication::Vault(event) => {
                (Some(event.vault.as_str()), event.cloud_event(&self.group))
            }
            Publication::Injected { vault, event } => (vault.as_deref(), event.clone()),
        };
        lock(&self.broker).publish(vault, Arc::new(cloud_event), at);
        self.arrived.notify_waiters();
        for queue in &self.queues {
            let text = match &publication {
                Publication::Vault(event) => queue.message_for(event, &self.group),
                Publication::Injected { vault, event } => vault
                    .as_ref()
                    .is_none_or(|vault| queue.config.vaults.contains(vault))
                    .then(|| queue.encode(&event.to_string())),
            };
            if let Some(text) = text {
                queue.send(text, delay);
            }
        }
    }

    pub fn add_fault(&self, request: EventFaultRequest) -> Result<(), EventFaultError> {
        lock(&self.faults).add(request)
    }

    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    /// Per subscription (`topic/subscription`): what happened so far.
    pub fn stats(&self) -> BTreeMap<String, broker::SubscriptionStats> {
        lock(&self.broker).stats(Instant::now())
    }
}
