//! The flags of event-driven refresh: where events come from, which vault
//! an event's vault name means, and who reads the sources.

use super::eventgrid::SubscriptionUrl;
use super::queue;

/// Why the value of an event flag is refused (the message says what to write).
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error(
        "{0:?}: an event source is eventgrid:https://<namespace>/topics/<topic>/eventsubscriptions/<subscription> or queue:https://<account>.queue.core.windows.net/<queue>"
    )]
    SourceKind(String),
    #[error("{text:?} is not a URL: {error}")]
    NotUrl {
        text: String,
        #[source]
        error: url::ParseError,
    },
    #[error("{0:?} must be an https URL without a query")]
    NotHttps(String),
    #[error(
        "{0:?} must look like https://<namespace>/topics/<topic>/eventsubscriptions/<subscription>"
    )]
    SubscriptionPath(String),
    #[error("{0:?}: topic and subscription names are letters, digits and hyphens")]
    SubscriptionName(String),
    #[error("{0:?} must look like https://<account>.queue.core.windows.net/<queue>")]
    QueuePath(String),
    #[error("{0:?} is not NAME=URL")]
    Alias(String),
    #[error("{0:?}: an event identity is workload, managed, managed:<client id> or client-secret")]
    Identity(String),
}

/// `text` as a URL.
pub(super) fn url(text: &str) -> Result<url::Url, FlagError> {
    url::Url::parse(text).map_err(|error| FlagError::NotUrl {
        text: text.to_owned(),
        error,
    })
}

/// Where events come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventSource {
    EventGrid(SubscriptionUrl),
    Queue(url::Url),
}

impl EventSource {
    /// `eventgrid:https://…/topics/T/eventsubscriptions/S` or `queue:https://…/QUEUE`.
    pub fn parse(text: &str) -> Result<Self, FlagError> {
        match text.split_once(':') {
            Some(("eventgrid", url)) => Ok(EventSource::EventGrid(SubscriptionUrl::parse(url)?)),
            Some(("queue", url)) => Ok(EventSource::Queue(queue::check_url(url)?)),
            _ => Err(FlagError::SourceKind(text.to_owned())),
        }
    }
}

/// `NAME=URL`: the vault an event's vault name means, for a vault URL
/// outside Azure's Key Vault domains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultAlias {
    pub name: String,
    pub url: String,
}

impl VaultAlias {
    pub fn parse(text: &str) -> Result<Self, FlagError> {
        let (name, vault_url) = text
            .split_once('=')
            .ok_or_else(|| FlagError::Alias(text.to_owned()))?;
        url(vault_url)?;
        Ok(VaultAlias {
            name: name.trim().to_owned(),
            url: vault_url.to_owned(),
        })
    }
}

/// Who reads the event sources: always an identity of the operator's own
/// (never a tenant's), granted the receiver role on the sources only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum EventIdentity {
    /// The operator's federated workload identity: `AZURE_CLIENT_ID`,
    /// `AZURE_TENANT_ID` and `AZURE_FEDERATED_TOKEN_FILE`, as the AKS
    /// webhook injects them.
    #[default]
    Workload,
    /// The node's managed identity (IMDS): system-assigned, or the
    /// user-assigned one with this client id.
    Managed { client_id: Option<String> },
    /// An app registration's client secret: `AZURE_TENANT_ID`,
    /// `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET` (from a Secret).
    ClientSecret,
}

impl EventIdentity {
    /// `workload`, `managed`, `managed:<client id>` or `client-secret`.
    pub fn parse(text: &str) -> Result<Self, FlagError> {
        match text.split_once(':') {
            None if text == "workload" => Ok(EventIdentity::Workload),
            None if text == "managed" => Ok(EventIdentity::Managed { client_id: None }),
            None if text == "client-secret" => Ok(EventIdentity::ClientSecret),
            Some(("managed", id)) if !id.trim().is_empty() => Ok(EventIdentity::Managed {
                client_id: Some(id.trim().to_owned()),
            }),
            _ => Err(FlagError::Identity(text.to_owned())),
        }
    }
}

/// The flags of event-driven refresh.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EventArgs {
    /// Key Vault events that make kvsync read a changed secret at once
    /// (polling stays): `eventgrid:https://<namespace>/topics/<topic>/eventsubscriptions/<subscription>`
    /// (a namespace subscription with pull delivery) or
    /// `queue:https://<account>.queue.core.windows.net/<queue>` (a storage
    /// queue an event subscription delivers to). Repeatable; read by the
    /// leader with `--event-identity` (docs/events.md).
    #[arg(
        long = "event-source",
        env = "KVSYNC_EVENT_SOURCES",
        value_delimiter = ',',
        value_parser = EventSource::parse
    )]
    pub sources: Vec<EventSource>,

    /// `NAME=URL`: events name vaults, and a vault URL of Azure's Key Vault
    /// domains is `https://NAME.vault.azure.net/` (or a sovereign cloud's);
    /// a vault URL outside them (an emulator) is matched to vault NAME's
    /// events only through this. Repeatable.
    #[arg(
        long = "event-vault",
        env = "KVSYNC_EVENT_VAULTS",
        value_delimiter = ',',
        value_parser = VaultAlias::parse
    )]
    pub vaults: Vec<VaultAlias>,

    /// Who reads the event sources: `workload` (the operator's federated
    /// workload identity), `managed` or `managed:<client id>` (the node's
    /// managed identity), or `client-secret` (`AZURE_TENANT_ID`,
    /// `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`).
    #[arg(
        long = "event-identity",
        env = "KVSYNC_EVENT_IDENTITY",
        default_value = "workload",
        value_parser = EventIdentity::parse
    )]
    pub identity: EventIdentity,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_aliases_parse_from_their_flags() {
        assert!(matches!(
            EventSource::parse("eventgrid:https://ns/topics/t/eventsubscriptions/s"),
            Ok(EventSource::EventGrid(_))
        ));
        assert!(matches!(
            EventSource::parse("queue:https://acct.queue.core.windows.net/q"),
            Ok(EventSource::Queue(_))
        ));
        for wrong in [
            "webhook:https://x/",
            "https://ns/topics/t/eventsubscriptions/s",
            "queue:http://a/q",
        ] {
            assert!(EventSource::parse(wrong).is_err(), "{wrong}");
        }
        let alias = VaultAlias::parse("shop=https://localhost:8443/").unwrap();
        assert_eq!(
            (alias.name.as_str(), alias.url.as_str()),
            ("shop", "https://localhost:8443/")
        );
        assert!(VaultAlias::parse("shop").is_err());
    }

    #[test]
    fn identities_parse_from_their_flag() {
        assert_eq!(
            EventIdentity::parse("workload").unwrap(),
            EventIdentity::Workload
        );
        assert_eq!(
            EventIdentity::parse("managed").unwrap(),
            EventIdentity::Managed { client_id: None }
        );
        assert_eq!(
            EventIdentity::parse("managed:1234").unwrap(),
            EventIdentity::Managed {
                client_id: Some("1234".into())
            }
        );
        assert_eq!(
            EventIdentity::parse("client-secret").unwrap(),
            EventIdentity::ClientSecret
        );
        for wrong in ["", "managed:", "secret", "workload:x"] {
            let error = EventIdentity::parse(wrong).unwrap_err().to_string();
            assert!(error.contains("workload, managed"), "{wrong}: {error}");
        }
    }
}
