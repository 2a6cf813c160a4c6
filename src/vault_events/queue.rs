//! An Azure Storage queue that an event subscription delivers Key Vault
//! events to, read with the official `azure_storage_queue` crate (the same
//! `azure_core` as the Key Vault client).
//!
//! ```text
//!  GET  {queue}/messages?numofmessages=32&visibilitytimeout=60 ─▶ messages (hidden for 60 s)
//!  DELETE {queue}/messages/{id}?popreceipt=…                     once handled (or unreadable)
//! ```
//!
//! A storage queue cannot be long-polled: kvsync asks again at once after a
//! message and every [`POLL_EVERY`] while the queue is empty (one request a
//! second: a few cents a month). A message left undeleted (kvsync could not
//! hand it over) comes back after the visibility timeout.

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, Url};
use azure_storage_queue::models::QueueClientReceiveMessagesOptions;
use azure_storage_queue::{QueueClient, QueueClientOptions};

use super::SourceError;
use super::config::FlagError;

/// Wait between receive calls while the queue is empty.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// Messages per receive call (the service allows 1–32).
const MAX_MESSAGES: i32 = 32;
/// How long a received message stays hidden from other readers.
const VISIBILITY_TIMEOUT_SECONDS: i32 = 60;

/// One message received, with what deletes it.
#[derive(Debug)]
pub struct Message {
    pub id: String,
    pub pop_receipt: String,
    pub text: String,
}

pub struct QueueSource {
    pub url: Url,
    client: QueueClient,
    request_timeout: Duration,
}

/// Whether a queue URL can be read: https, a path naming the queue, no query.
pub fn check_url(text: &str) -> Result<Url, FlagError> {
    let url = super::config::url(text)?;
    if url.scheme() != "https" || url.query().is_some() || url.path().trim_matches('/').is_empty() {
        return Err(FlagError::QueuePath(text.to_owned()));
    }
    Ok(url)
}

impl QueueSource {
    pub fn new(
        url: Url,
        credential: Arc<dyn TokenCredential>,
        client_options: ClientOptions,
        request_timeout: Duration,
    ) -> Result<Self, SourceError> {
        let options = QueueClientOptions {
            client_options,
            ..Default::default()
        };
        let client = QueueClient::new(url.clone(), Some(credential), Some(options))?;
        Ok(QueueSource {
            url,
            client,
            request_timeout,
        })
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = azure_core::Result<T>>,
    ) -> Result<T, SourceError> {
        Ok(tokio::time::timeout(self.request_timeout, call)
            .await
            .map_err(|_| SourceError::Timeout(self.request_timeout))??)
    }

    /// The messages visible now (hidden from other readers for a while).
    pub async fn receive(&self) -> Result<Vec<Message>, SourceError> {
        let options = QueueClientReceiveMessagesOptions {
            number_of_messages: Some(MAX_MESSAGES),
            visibility_timeout: Some(VISIBILITY_TIMEOUT_SECONDS),
            ..Default::default()
        };
        let response = self
            .bounded(self.client.receive_messages(Some(options)))
            .await?;
        let messages = response.into_model()?.items.unwrap_or_default();
        Ok(messages
            .into_iter()
            .filter_map(|message| {
                Some(Message {
                    id: message.message_id?,
                    pop_receipt: message.pop_receipt?,
                    text: message.message_text.unwrap_or_default(),
                })
            })
            .collect())
    }

    pub async fn delete(&self, message: &Message) -> Result<(), SourceError> {
        self.bounded(
            self.client
                .delete_message(&message.id, &message.pop_receipt, None),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_url_is_https_and_names_a_queue() {
        assert!(check_url("https://acct.queue.core.windows.net/kv-events").is_ok());
        assert!(check_url("https://127.0.0.1:10001/devstoreaccount1/kv-events").is_ok());
        for wrong in [
            "http://acct.queue.core.windows.net/q",
            "https://acct.queue.core.windows.net/",
            "https://acct.queue.core.windows.net/q?sv=2020",
        ] {
            assert!(check_url(wrong).is_err(), "{wrong}");
        }
    }
}
