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

pub mod dispatch;
pub mod eventgrid;
pub mod metrics;
pub mod parse;
pub mod queue;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_identity::{
    ClientAssertionCredentialOptions, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::api::contract::{MERGED_BY_ANNOTATION, OWNER_ANNOTATION};
use crate::reload::{ReloadInbox, ReloadNotifier};
use crate::schedule::backoff_delay;
use crate::vault::{ChangeDetection, VaultConfig};
use dispatch::{Debounce, Offer, Pending, Recent, VaultNames};
use eventgrid::{EventGridSource, Settle, SubscriptionUrl};
pub use metrics::VaultEventMetrics;
use parse::{Hint, Ignored};
use queue::QueueSource;

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

/// Where events come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventSource {
    EventGrid(SubscriptionUrl),
    Queue(url::Url),
}

impl EventSource {
    /// `eventgrid:https://…/topics/T/eventsubscriptions/S` or `queue:https://…/QUEUE`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            Some(("eventgrid", url)) => Ok(EventSource::EventGrid(SubscriptionUrl::parse(url)?)),
            Some(("queue", url)) => Ok(EventSource::Queue(queue::check_url(url)?)),
            _ => Err(format!(
                "{text:?}: an event source is eventgrid:https://<namespace>/topics/<topic>/eventsubscriptions/<subscription> or queue:https://<account>.queue.core.windows.net/<queue>"
            )),
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
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, url) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not NAME=URL"))?;
        url::Url::parse(url).map_err(|e| format!("{text:?}: {url:?} is not a URL: {e}"))?;
        Ok(VaultAlias {
            name: name.trim().to_owned(),
            url: url.to_owned(),
        })
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
    /// leader with the operator's own workload identity (docs/events.md).
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
}

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
    #[error(
        "event sources are read with the operator's own workload identity (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE): {0}"
    )]
    Identity(#[source] azure_core::Error),
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

impl VaultEvents {
    /// Checks the flags and builds the clients; `None` without sources.
    pub fn new(
        args: &EventArgs,
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
        let credential: Arc<dyn TokenCredential> =
            WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions {
                    client_options: short.clone(),
                },
                client_id: config.operator.client_id.clone(),
                tenant_id: config.operator.tenant_id.clone(),
                token_file_path: config.operator.token_file.clone(),
            }))
            .map_err(EventsError::Identity)?;
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

/// Turns written Secrets into event→Secret latencies.
struct WrittenObserver {
    pending: Arc<Mutex<Pending>>,
    metrics: VaultEventMetrics,
}

impl WrittenObserver {
    /// Passes every Secret written on to the reload stage, observing it first.
    async fn tee(self, mut from_sync: ReloadInbox, to_reload: ReloadNotifier) {
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

/// One event handed to the dispatcher.
struct Arrival {
    parsed: parse::Parsed,
    arrived: Instant,
}

/// What every receiver does with an event it got.
#[derive(Clone)]
struct Intake {
    inbox: mpsc::Sender<Arrival>,
    metrics: VaultEventMetrics,
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

async fn receive_event_grid(source: EventGridSource, intake: Intake, max_backoff: Duration) {
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

async fn receive_queue(source: QueueSource, intake: Intake, max_backoff: Duration) {
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

/// Turns hints into reads: drops repeats, folds bursts, asks the vault views.
struct Dispatcher {
    /// The sync stage's context: its vault access is what hints go to.
    ctx: Arc<crate::sync::Context>,
    names: Arc<VaultNames>,
    metrics: VaultEventMetrics,
    pending: Arc<Mutex<Pending>>,
    recent: Recent,
    debounce: Debounce<Hint>,
}

impl Dispatcher {
    async fn run(mut self, mut arrivals: mpsc::Receiver<Arrival>) {
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
