//! Delivery to Azure Storage queues, as an event subscription with a
//! storage-queue destination does: one message per event, its text the
//! event's JSON (Event Grid or CloudEvents schema), base64-encoded unless
//! the seed says otherwise. Tests point it at Azurite, Microsoft's storage
//! emulator.
//!
//! ```text
//!  publish ──(text, delay)──▶ channel ──▶ one task per queue ──▶ QueueClient::send_message
//!                                          (official azure_storage_queue crate; bearer token
//!                                           for https://storage.azure.com signed by this emulator;
//!                                           the queue is created on first use; a delay is the
//!                                           message's visibility timeout)
//! ```
//!
//! Azurite checks a bearer token's shape, issuer and audience, not its
//! signature (`--oauth basic`), and needs HTTPS for bearer tokens: it serves
//! the emulator's own certificate (`<state-dir>/tls-cert.pem`).

use super::schema::{KeyVaultEvent, ResourceGroup};
use crate::state::{Emulator, lock};
use crate::tokens::{Resource, TOKEN_LIFETIME_SECONDS};
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::http::{ClientOptions, RetryOptions, StatusCode, Transport};
use azure_storage_queue::models::{QueueClientSendMessageOptions, QueueMessage};
use azure_storage_queue::{QueueClient, QueueClientOptions};
use base64::Engine;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use url::Url;

/// The app id the emulator's deliveries present (Event Grid's own identity).
const DELIVERY_CLIENT_ID: &str = "4962773b-9cdb-44cf-a8bf-237846a00ab7";
/// Attempts per message (Azurite may still be starting).
const ATTEMPTS: u32 = 20;
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// The event schema of a subscription's deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EventSchema {
    /// Event Grid's own schema (`eventType`, `topic`, …): the default of a subscription.
    #[default]
    EventGrid,
    CloudEvents,
}

/// A storage queue as a destination (seed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    pub url: Url,
    pub vaults: BTreeSet<String>,
    pub schema: EventSchema,
    pub base64: bool,
}

type Message = (String, Duration);

/// One destination queue: its settings and the channel to its delivery task.
pub struct QueueDelivery {
    pub config: QueueConfig,
    sender: mpsc::UnboundedSender<Message>,
    /// Taken by [`QueueDelivery::start`].
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Message>>>,
}

impl QueueDelivery {
    pub fn new(config: QueueConfig) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        QueueDelivery {
            config,
            sender,
            receiver: Mutex::new(Some(receiver)),
        }
    }

    /// The message text for a Key Vault event, or `None` when this queue does
    /// not get the vault's events.
    pub fn message_for(&self, event: &KeyVaultEvent, group: &ResourceGroup) -> Option<String> {
        if !self.config.vaults.contains(&event.vault) {
            return None;
        }
        let json = match self.config.schema {
            EventSchema::EventGrid => event.event_grid_event(group),
            EventSchema::CloudEvents => event.cloud_event(group),
        };
        Some(self.encode(&json.to_string()))
    }

    /// The text as this queue's subscription writes it.
    pub fn encode(&self, text: &str) -> String {
        if self.config.base64 {
            base64::engine::general_purpose::STANDARD.encode(text)
        } else {
            text.to_owned()
        }
    }

    /// Queues a message, visible after `delay`.
    pub fn send(&self, text: String, delay: Duration) {
        let _ = self.sender.send((text, delay));
    }

    /// Starts the delivery task (once), trusting `ca_pem` for the queue's HTTPS.
    pub fn start(&self, emulator: Weak<Emulator>, ca_pem: &str) {
        let Some(receiver) = self
            .receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let client = match queue_client(&self.config.url, emulator, ca_pem) {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(queue = %self.config.url, %error, "cannot deliver to this queue");
                return;
            }
        };
        tokio::spawn(deliver(client, receiver, self.config.url.clone()));
    }
}

fn queue_client(
    url: &Url,
    emulator: Weak<Emulator>,
    ca_pem: &str,
) -> azure_core::Result<Arc<QueueClient>> {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).map_err(|e| {
        azure_core::Error::with_message(azure_core::error::ErrorKind::Other, e.to_string())
    })?;
    let http = reqwest::Client::builder()
        .tls_certs_merge([ca])
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| {
            azure_core::Error::with_message(azure_core::error::ErrorKind::Other, e.to_string())
        })?;
    let options = QueueClientOptions {
        client_options: ClientOptions {
            transport: Some(Transport::new(Arc::new(http))),
            retry: RetryOptions::none(),
            ..Default::default()
        },
        ..Default::default()
    };
    let credential = Arc::new(DeliveryIdentity { emulator });
    Ok(Arc::new(QueueClient::new(
        url.clone(),
        Some(credential),
        Some(options),
    )?))
}

/// Sends each message in turn (delayed ones as invisible until their time),
/// creating the queue when it is missing, retrying while the queue service
/// does not answer.
async fn deliver(
    client: Arc<QueueClient>,
    mut receiver: mpsc::UnboundedReceiver<Message>,
    url: Url,
) {
    while let Some((text, delay)) = receiver.recv().await {
        let mut delivered = false;
        for _ in 0..ATTEMPTS {
            match send_once(&client, &text, delay).await {
                Ok(()) => {
                    delivered = true;
                    break;
                }
                Err(error) => {
                    tracing::debug!(queue = %url, %error, "queue delivery failed; retrying");
                    tokio::time::sleep(RETRY_EVERY).await;
                }
            }
        }
        if delivered {
            tracing::info!(queue = %url, delay_ms = delay.as_millis() as u64, "event delivered to the storage queue");
        } else {
            tracing::error!(queue = %url, "event not delivered to the storage queue");
        }
    }
}

async fn send_once(client: &QueueClient, text: &str, delay: Duration) -> azure_core::Result<()> {
    let options = QueueClientSendMessageOptions {
        visibility_timeout: (!delay.is_zero()).then(|| delay.as_secs_f64().ceil() as i32),
        ..Default::default()
    };
    let message = QueueMessage {
        message_text: Some(text.to_owned()),
    };
    match client
        .send_message(message.clone().try_into()?, Some(options.clone()))
        .await
    {
        Err(error) if error.http_status() == Some(StatusCode::NotFound) => {
            client.create(None).await?;
            client
                .send_message(message.try_into()?, Some(options))
                .await?;
        }
        other => {
            other?;
        }
    }
    Ok(())
}

/// Event Grid's identity delivering to the queue: tokens for Storage signed
/// by this emulator (weakly held: the delivery task must not keep a stopped
/// emulator alive).
struct DeliveryIdentity {
    emulator: Weak<Emulator>,
}

impl std::fmt::Debug for DeliveryIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeliveryIdentity")
    }
}

#[async_trait::async_trait]
impl TokenCredential for DeliveryIdentity {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let unavailable = |message: String| {
            azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, message)
        };
        let emulator = self
            .emulator
            .upgrade()
            .ok_or_else(|| unavailable("the emulator stopped".to_owned()))?;
        let tenant = emulator
            .vaults
            .values()
            .next()
            .map(|site| site.tenant_id.clone())
            .unwrap_or_default();
        let now = crate::state::now();
        let token = lock(&emulator.tokens)
            .issue(
                Resource::Storage,
                &tenant,
                DELIVERY_CLIENT_ID,
                DELIVERY_CLIENT_ID,
                now,
            )
            .map_err(|e| unavailable(e.to_string()))?;
        let expires_on = time::OffsetDateTime::from_unix_timestamp(now + TOKEN_LIFETIME_SECONDS)
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(AccessToken::new(token, expires_on))
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema::EventType;
    use super::*;

    fn delivery(schema: EventSchema, base64: bool) -> QueueDelivery {
        QueueDelivery::new(QueueConfig {
            url: "https://127.0.0.1:10001/devstoreaccount1/q"
                .parse()
                .unwrap(),
            vaults: ["shop".to_owned()].into(),
            schema,
            base64,
        })
    }

    #[test]
    fn messages_carry_the_event_in_the_queues_schema_and_encoding() {
        let group = ResourceGroup {
            subscription_id: "s".into(),
            name: "rg".into(),
        };
        let event = KeyVaultEvent::now(
            EventType::SecretNewVersionCreated,
            "shop",
            "https://localhost:1/",
            "db",
            Some("v1"),
            None,
            None,
        );
        let text = delivery(EventSchema::EventGrid, true)
            .message_for(&event, &group)
            .unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(
            json["eventType"],
            "Microsoft.KeyVault.SecretNewVersionCreated"
        );
        let plain = delivery(EventSchema::CloudEvents, false)
            .message_for(&event, &group)
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(&plain).unwrap();
        assert_eq!(json["specversion"], "1.0");
        let elsewhere = KeyVaultEvent {
            vault: "other".into(),
            ..event
        };
        assert_eq!(
            delivery(EventSchema::EventGrid, true).message_for(&elsewhere, &group),
            None
        );
    }
}
