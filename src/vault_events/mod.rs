//! Event-driven refresh: Key Vault events (through Event Grid) make kvsync
//! read a changed secret at once instead of at the object's next refresh.
//! Polling stays: events cover new versions only (not disabling, deleting
//! or tags), arrive at least once, and may be late or lost.
//!
//! ```text
//!  vault's system topic ──▶ Event Grid ──▶ namespace subscription (pull) ──┐  eventgrid.rs
//!                                    └───▶ storage queue ─────────────────┤  queue.rs
//!                                                                         ▼  (the leader only;
//!  receive ─▶ parse (lenient form, strict content) ─▶ Ignored{reason} ─▶ ack │ reject   the operator's
//!                 │ Hint {vault name, secret name | whole vault}               own identity)
//!                 ▼ handed over (bounded channel) ─▶ acknowledge / delete
//!  dispatcher: duplicate? ─▶ debounce per (vault, name) ─▶ VaultNames (vault name → configured URLs)
//!      ─▶ VaultAccess::hint: cached value forgotten, subscribers told to sync ─▶ the usual read
//!         (as of now, through the vault's limiter and backoff; nothing when no
//!          KeyVaultSecret reads that vault)
//!  sync ─▶ Secret written ─▶ (tee of the reload fast path) ─▶ event→Secret latency
//! ```
//!
//! An event is a hint, never data: only the vault's name and the secret's
//! name are taken from it, and only to find KeyVaultSecrets whose own
//! configured vault URL and references match; the URL, version and
//! attributes it carries are never used, so a forged or foreign event costs
//! at most one read of something kvsync reads anyway. [`parse`] and
//! [`dispatch`] hold every decision and are tested without I/O.
//!
//! Only the leader receives ([`crate::run`] starts this stage with the
//! others): a queue has competing consumers, and a standby's
//! acknowledgement would swallow an event.

mod config;
pub mod dispatch;
mod dispatcher;
pub mod eventgrid;
pub mod metrics;
pub mod parse;
pub mod queue;
mod receive;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::reload::{ReloadInbox, ReloadNotifier};
use crate::vault::{ChangeDetection, Credentials, Identity, VaultConfig};
pub use config::{EventArgs, EventIdentity, EventSource, FlagError, VaultAlias};
use dispatch::{Debounce, Pending, Recent, VaultNames};
use dispatcher::{Dispatcher, WrittenObserver};
use eventgrid::EventGridSource;
pub use metrics::VaultEventMetrics;
use queue::QueueSource;
use receive::{Intake, receive_event_grid, receive_queue};

/// Hints for one (vault, name) within this window fold into one more read.
const DEBOUNCE: Duration = Duration::from_secs(1);
/// Event identities remembered to recognise redeliveries.
const RECENT_EVENTS: usize = 4096;
const RECENT_FOR: Duration = Duration::from_secs(600);
/// Objects whose Secret write is awaited, and for how long.
const PENDING_OBJECTS: usize = 10_000;
const PENDING_FOR: Duration = Duration::from_secs(300);
/// Hints waiting for the dispatcher; a full channel sends events back to
/// the source (released, or left in the queue) instead of growing.
const INBOX: usize = 1024;

/// What `kvsync explain` adds to an object's "next read" about events: for
/// a vault URL that Key Vault events can name (Azure's Key Vault domains),
/// that a new version reaches it at once where the operator receives that
/// vault's events; nothing otherwise (an emulator's vault is named only by
/// the operator's own `--event-vault`, which explain does not read).
pub fn explain_next_read(next: String, vault_url: &str) -> String {
    match VaultNames::default().name_of(&dispatch::vault_key(vault_url)) {
        Some(vault) => format!(
            "{next}; at once on a new version when the operator receives vault {vault}'s Key Vault events (--event-source, docs/events.md)"
        ),
        None => next,
    }
}

/// The kind of a source (the `source` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    EventGrid,
    Queue,
}

impl SourceKind {
    pub fn label(self) -> &'static str {
        match self {
            SourceKind::EventGrid => "eventgrid",
            SourceKind::Queue => "queue",
        }
    }
}

/// A failed call to an event source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Azure(#[from] azure_core::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the answer is not what the API defines: {0}")]
    Json(#[from] serde_json::Error),
}

/// Why event sources cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("event sources hint the listing's change detection: they need --change-detection=list")]
    NeedsListing,
    #[error("the identity that reads event sources (--event-identity, docs/events.md): {0}")]
    Identity(#[source] azure_core::Error),
    #[error("--event-identity=client-secret needs {0} in the environment")]
    MissingEnv(&'static str),
    #[error("--extra-ca-file: {0}")]
    ExtraCa(#[source] reqwest::Error),
    #[error("HTTP client for event sources: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("event source {source_url}: {error}")]
    Source {
        source_url: String,
        #[source]
        error: SourceError,
    },
}

enum Source {
    EventGrid(EventGridSource),
    Queue(QueueSource),
}

/// The stage, set up (sources checked, clients built) but not started.
pub struct VaultEvents {
    sources: Vec<Source>,
    names: Arc<VaultNames>,
    metrics: VaultEventMetrics,
    pending: Arc<Mutex<Pending>>,
    max_backoff: Duration,
}

/// An HTTP client for the event sources: trusting the extra CA, following
/// no redirect, with `timeout` per request if given.
fn http_client(
    config: &VaultConfig,
    timeout: Option<Duration>,
) -> Result<reqwest::Client, EventsError> {
    let mut http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(timeout) = timeout {
        http = http.timeout(timeout);
    }
    if let Some(pem) = &config.extra_ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(EventsError::ExtraCa)?;
        http = http.tls_certs_merge(certs);
    }
    http.build().map_err(EventsError::HttpClient)
}

fn client_options(config: &VaultConfig, http: reqwest::Client) -> ClientOptions {
    let mut cloud = CustomConfiguration::default();
    cloud.authority_host = config.authority_host.clone();
    ClientOptions {
        transport: Some(Transport::new(Arc::new(http))),
        retry: RetryOptions::none(),
        cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
        ..Default::default()
    }
}

/// The credential of the operator's own identity that reads the sources.
fn credential(
    identity: &EventIdentity,
    client: &kube::Client,
    config: &VaultConfig,
    options: ClientOptions,
) -> Result<Arc<dyn TokenCredential>, EventsError> {
    let identity = match identity {
        EventIdentity::Workload => Identity::Operator,
        EventIdentity::Managed { client_id } => Identity::ManagedIdentity {
            client_id: client_id.clone(),
        },
        EventIdentity::ClientSecret => {
            let from_env = |name: &'static str| {
                std::env::var(name)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .ok_or(EventsError::MissingEnv(name))
            };
            Identity::ClientSecret {
                tenant_id: from_env("AZURE_TENANT_ID")?,
                client_id: from_env("AZURE_CLIENT_ID")?,
                secret: from_env("AZURE_CLIENT_SECRET")?,
            }
        }
    };
    Credentials::new(
        client.clone(),
        options,
        config.operator.clone(),
        config.authority_host.clone(),
    )
    .get(&identity)
    .map_err(EventsError::Identity)
}

impl VaultEvents {
    /// Checks the flags and builds the clients; `None` without sources.
    pub fn new(
        args: &EventArgs,
        client: &kube::Client,
        config: &VaultConfig,
        metrics: VaultEventMetrics,
    ) -> Result<Option<Self>, EventsError> {
        if args.sources.is_empty() {
            return Ok(None);
        }
        if config.change_detection != ChangeDetection::List {
            return Err(EventsError::NeedsListing);
        }
        // Token requests are bounded by the request timeout; a receive call
        // by its own wait plus that (eventgrid.rs), so its client has none.
        let short = client_options(config, http_client(config, Some(config.request_timeout))?);
        let long = client_options(config, http_client(config, None)?);
        let credential = credential(&args.identity, client, config, short.clone())?;
        let sources = args
            .sources
            .iter()
            .map(|source| match source {
                EventSource::EventGrid(url) => Ok(Source::EventGrid(EventGridSource::new(
                    url.clone(),
                    credential.clone(),
                    long.clone(),
                    config.request_timeout,
                ))),
                EventSource::Queue(url) => QueueSource::new(
                    url.clone(),
                    credential.clone(),
                    short.clone(),
                    config.request_timeout,
                )
                .map(Source::Queue)
                .map_err(|error| EventsError::Source {
                    source_url: url.to_string(),
                    error,
                }),
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(VaultEvents {
            sources,
            names: Arc::new(VaultNames::new(
                args.vaults.iter().map(|a| (a.name.clone(), a.url.clone())),
            )),
            metrics,
            pending: Arc::new(Mutex::new(Pending::new(PENDING_OBJECTS, PENDING_FOR))),
            max_backoff: config.max_backoff,
        }))
    }

    /// Starts the receivers, the dispatcher, and the tee of the fast path
    /// from the sync stage (`from_sync`) to the reload stage (`to_reload`)
    /// that turns written Secrets into event→Secret latencies. They run
    /// until aborted (the tee until the sync stage's notifier is dropped).
    pub fn start(
        self,
        ctx: Arc<crate::sync::Context>,
        from_sync: ReloadInbox,
        to_reload: ReloadNotifier,
    ) -> JoinSet<()> {
        let (inbox, arrivals) = mpsc::channel(INBOX);
        let intake = Intake {
            inbox,
            metrics: self.metrics.clone(),
        };
        let mut tasks = JoinSet::new();
        let written = WrittenObserver {
            pending: self.pending.clone(),
            metrics: self.metrics.clone(),
        };
        tasks.spawn(written.tee(from_sync, to_reload));
        let dispatcher = Dispatcher {
            ctx,
            names: self.names,
            metrics: self.metrics,
            pending: self.pending,
            recent: Recent::new(RECENT_EVENTS, RECENT_FOR),
            debounce: Debounce::new(DEBOUNCE),
        };
        tasks.spawn(dispatcher.run(arrivals));
        for source in self.sources {
            let intake = intake.clone();
            match source {
                Source::EventGrid(source) => {
                    tracing::info!(endpoint = %source.url.endpoint, topic = %source.url.topic, subscription = %source.url.subscription, "receiving Key Vault events from an Event Grid namespace");
                    tasks.spawn(receive_event_grid(source, intake, self.max_backoff));
                }
                Source::Queue(source) => {
                    tracing::info!(queue = %source.url, "receiving Key Vault events from a storage queue");
                    tasks.spawn(receive_queue(source, intake, self.max_backoff));
                }
            }
        }
        tasks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_mentions_events_only_for_vaults_events_can_name() {
        let next = "about 1h".to_owned();
        assert!(
            explain_next_read(next.clone(), "https://shop.vault.azure.net/")
                .ends_with("when the operator receives vault shop's Key Vault events (--event-source, docs/events.md)")
        );
        assert_eq!(
            explain_next_read(next.clone(), "https://localhost:8443/"),
            next
        );
    }
}
