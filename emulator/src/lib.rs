//! A Key Vault + Entra ID emulator that speaks the real wire protocol, so the
//! official Azure SDK works against it with configuration changes only (authority
//! host, vault URL, a trusted CA, and `verify_challenge_resource: false` because the
//! vault host is `localhost`, not `*.vault.azure.net`).
//!
//! ```text
//!  seed.yaml ──▶ Config ──▶ Emulator (shared state, one per start)
//!                             ├─ VaultStore   vault ─▶ secret ─▶ versions (oldest … latest)
//!                             ├─ Directory    client id ─▶ App {tenant, secret?, certificate?,
//!                             │                             federated credentials, access grants}
//!                             ├─ IssuerKeys   outside issuer ─▶ JWKS (file or OIDC discovery), cached
//!                             ├─ TokenAuthority  RSA key signing/verifying access tokens
//!                             ├─ ServiceLimits  per vault and operation class (429 past them)
//!                             └─ FaultPlan, Counters, IssuedCredentials   (for tests)
//!
//!  HTTPS, certificate from a CA made at start (<state-dir>/ca.pem):
//!    Entra   POST /{tenant}/oauth2/v2.0/token ── secret | certificate | federated assertion
//!              └─▶ access token (aud https://vault.azure.net, appid, tid)
//!            GET  /{tenant}/v2.0/.well-known/openid-configuration, /common/discovery/instance,
//!                 /{tenant}/discovery/v2.0/keys   (what MSAL reads first)
//!            GET  /metadata/identity/oauth2/token  (IMDS: managed identities, `Metadata: true`)
//!    vault   (one listener per vault, standing in for one host per vault)
//!              /secrets…, /certificates… ─▶ api-version ─▶ bearer token (401 challenge)
//!                                          ─▶ grants (403) ─▶ store ─▶ (new version) event
//!    Event Grid namespace (when seeded)  POST /topics/{t}/eventsubscriptions/{s}:receive|…
//!              the vaults' Key Vault events, pull delivery with locks (see eventgrid/);
//!              also pushed to storage queues (Azurite) as the seed says
//!  HTTP on 127.0.0.1:
//!    control  rotate/disable/delete secrets, upsert/remove apps, faults, counters, issued,
//!             event faults and injected events
//! ```
//!
//! Why this shape: the pure parts (store, directory, faults, counters, assertion
//! rules) hold every decision and are unit-tested without HTTP; the axum modules
//! only translate between the wire and those decisions. Every listener shares one
//! `Emulator`, so a change through the control API is what the next SDK call sees.
//!
//! [`start`] binds every listener and serves them on the caller's tokio runtime;
//! the [`Running`] it returns holds the [`Endpoints`] and stops the listeners on
//! [`Running::shutdown`] (graceful) or when dropped (at once). Tests run it
//! in-process that way; the `kvsync-emulator` binary is a thin wrapper that also
//! writes `<state-dir>/endpoints.json` for scripts and serves until SIGTERM or
//! SIGINT.
//!
//! ```text
//!  Options ──start──▶ Running { endpoints, listeners } ──shutdown / drop──▶ stopped
//!                        └─ (binary) endpoints.json written, removed on exit
//! ```
#![forbid(unsafe_code)]

mod assertion;
pub mod azurite;
mod certificate;
mod certificates_api;
mod clock;
mod config;
mod control;
mod directory;
mod discovery;
mod endpoints;
mod entra;
mod eventgrid;
mod faults;
mod imds;
mod issuers;
mod limits;
mod observed;
mod responses;
mod state;
mod store;
mod tls;
mod tokens;
mod traffic;
mod vault_api;

pub use endpoints::{ENDPOINTS_FILE, Endpoints};

use axum_server::tls_rustls::RustlsConfig;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use url::Url;

/// How long in-flight requests (a hang fault, say) may delay a graceful shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What to start: the seed, where the CA goes, and the ports (also the
/// `kvsync-emulator` command line).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Seed file (YAML): vaults and secrets, app registrations, token issuers.
    #[arg(long = "config", value_name = "FILE")]
    pub seed_file: PathBuf,
    /// Directory for ca.pem (and, from the binary, endpoints.json); created if missing.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// HTTPS port of the first vault; further vaults take the following ports, in
    /// seed order. 0 picks free ports.
    #[arg(long, default_value_t = 0)]
    pub vault_port: u16,
    /// HTTPS port of the Entra ID token endpoint. 0 picks a free port.
    #[arg(long, default_value_t = 0)]
    pub entra_port: u16,
    /// HTTP port of the control API (127.0.0.1 only). 0 picks a free port.
    #[arg(long, default_value_t = 0)]
    pub control_port: u16,
    /// HTTPS port of the Event Grid namespace (when the seed has one). 0 picks a free port.
    #[arg(long, default_value_t = 0)]
    pub eventgrid_port: u16,
}

impl Options {
    /// The seed file and state directory, every port picked freely.
    pub fn new(seed_file: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        Options {
            seed_file: seed_file.into(),
            state_dir: state_dir.into(),
            vault_port: 0,
            entra_port: 0,
            control_port: 0,
            eventgrid_port: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    TokenKey(#[from] tokens::TokenKeyError),
    #[error(transparent)]
    Issuer(#[from] issuers::IssuerSetupError),
    #[error("{action} {}: {source}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on 127.0.0.1:{port} for {listener}: {source}")]
    Bind {
        listener: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("the vault ports starting at {0} run past 65535")]
    PortOverflow(u16),
    #[error("a listener stopped: {0}")]
    Serve(std::io::Error),
}

fn file_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EmulatorError {
    let path = path.to_owned();
    move |source| EmulatorError::File {
        action,
        path,
        source,
    }
}

/// Binds 127.0.0.1:`port`, ready for tokio.
fn bind(listener: &str, port: u16) -> Result<TcpListener, EmulatorError> {
    let bind_error = |source| EmulatorError::Bind {
        listener: listener.to_owned(),
        port,
        source,
    };
    let socket =
        TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).map_err(bind_error)?;
    socket.set_nonblocking(true).map_err(bind_error)?;
    Ok(socket)
}

fn https_url(listener: &TcpListener) -> Result<Url, EmulatorError> {
    let port = listener.local_addr().map_err(EmulatorError::Serve)?.port();
    Ok(Url::parse(&format!("https://localhost:{port}/")).expect("a valid URL"))
}

/// The bound but not yet serving sockets: Entra, one per vault (seed order),
/// control, and the Event Grid namespace if seeded.
struct Listeners {
    entra: TcpListener,
    vaults: Vec<(String, TcpListener)>,
    control: TcpListener,
    event_grid: Option<TcpListener>,
}

impl Listeners {
    fn bind(options: &Options, seed: &config::Config) -> Result<Self, EmulatorError> {
        let entra = bind("Entra ID", options.entra_port)?;
        let mut vaults = Vec::with_capacity(seed.vaults.len());
        for (offset, vault) in seed.vaults.iter().enumerate() {
            let port = match options.vault_port {
                0 => 0,
                first => u16::try_from(offset)
                    .ok()
                    .and_then(|offset| first.checked_add(offset))
                    .ok_or(EmulatorError::PortOverflow(first))?,
            };
            vaults.push((
                vault.name.clone(),
                bind(&format!("vault {}", vault.name), port)?,
            ));
        }
        let control = bind("the control API", options.control_port)?;
        let event_grid = seed
            .event_grid
            .as_ref()
            .map(|_| bind("the Event Grid namespace", options.eventgrid_port))
            .transpose()?;
        Ok(Listeners {
            entra,
            vaults,
            control,
            event_grid,
        })
    }
}

/// Writes a PEM file `name` into the state directory; returns its absolute path.
fn write_pem(state_dir: &Path, name: &str, pem: &str) -> Result<PathBuf, EmulatorError> {
    std::fs::create_dir_all(state_dir).map_err(file_error("cannot create", state_dir))?;
    let file = std::path::absolute(state_dir.join(name))
        .map_err(file_error("cannot resolve", state_dir))?;
    std::fs::write(&file, pem).map_err(file_error("cannot write", &file))?;
    Ok(file)
}

/// Loads the seed, binds every listener and serves them on the current tokio
/// runtime until the returned [`Running`] is shut down or dropped.
pub async fn start(options: Options) -> Result<Running, EmulatorError> {
    // The process-wide provider may already be installed (by a test harness,
    // say); either way it is aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let seed = config::load(&options.seed_file)?;
    let tls = tls::generate()?;
    // The CA clients must trust; the listeners' certificate and key for a
    // local service serving HTTPS under the same CA (Azurite).
    let ca_file = write_pem(&options.state_dir, "ca.pem", &tls.ca_pem)?;
    let tls_cert_file = write_pem(&options.state_dir, "tls-cert.pem", &tls.server_chain_pem)?;
    let tls_key_file = write_pem(&options.state_dir, "tls-key.pem", &tls.server_key_pem)?;
    let listeners = Listeners::bind(&options, &seed)?;

    let authority_host = https_url(&listeners.entra)?;
    let vault_urls = listeners
        .vaults
        .iter()
        .map(|(name, listener)| Ok((name.clone(), https_url(listener)?)))
        .collect::<Result<BTreeMap<_, _>, EmulatorError>>()?;
    let control_port = listeners
        .control
        .local_addr()
        .map_err(EmulatorError::Serve)?
        .port();
    let event_grid_url = listeners.event_grid.as_ref().map(https_url).transpose()?;
    let issuers = issuers::IssuerKeys::new(&seed.issuers)?;
    let emulator = Arc::new(state::Emulator::new(
        seed,
        authority_host.clone(),
        &vault_urls,
        tokens::TokenAuthority::generate()?,
        issuers,
    ));
    if let Some(grid) = &emulator.event_grid {
        grid.start_queues(Arc::downgrade(&emulator), &tls.ca_pem);
    }
    let endpoints = Endpoints {
        identity_endpoint: format!(
            "{}{}",
            authority_host.as_str().trim_end_matches('/'),
            imds::TOKEN_PATH
        ),
        authority_host: authority_host.to_string(),
        vaults: vault_urls
            .iter()
            .map(|(name, url)| (name.clone(), url.to_string()))
            .collect(),
        control_url: format!("http://127.0.0.1:{control_port}/"),
        ca_file,
        tls_cert_file,
        tls_key_file,
        event_grid: event_grid_url.map(|url| url.to_string()),
        pid: std::process::id(),
    };
    let running = Running::serve(
        emulator,
        listeners,
        RustlsConfig::from_config(tls.server_config),
        endpoints,
    )?;
    tracing::info!(
        authority_host = %running.endpoints.authority_host,
        vaults = ?running.endpoints.vaults,
        event_grid = ?running.endpoints.event_grid,
        control_url = %running.endpoints.control_url,
        "emulator ready"
    );
    Ok(running)
}

/// A started emulator: its listeners serve on the runtime [`start`] ran on.
/// Dropping it stops them at once; [`Running::shutdown`] lets in-flight
/// requests finish first.
pub struct Running {
    /// Where each surface can be reached.
    pub endpoints: Endpoints,
    /// Stops the HTTPS (Entra and vault) listeners.
    https: axum_server::Handle,
    /// Stops the control API listener.
    stop_control: tokio::sync::watch::Sender<bool>,
    /// One task per listener; dropping the set aborts them.
    servers: JoinSet<std::io::Result<()>>,
}

impl Running {
    fn serve(
        emulator: Arc<state::Emulator>,
        listeners: Listeners,
        https: RustlsConfig,
        endpoints: Endpoints,
    ) -> Result<Self, EmulatorError> {
        let handle = axum_server::Handle::new();
        let (stop_control, mut control_stopped) = tokio::sync::watch::channel(false);
        let mut servers = JoinSet::new();
        servers.spawn(
            axum_server::from_tcp_rustls(listeners.entra, https.clone())
                .handle(handle.clone())
                .serve(entra::router(emulator.clone()).into_make_service()),
        );
        if let Some(listener) = listeners.event_grid {
            servers.spawn(
                axum_server::from_tcp_rustls(listener, https.clone())
                    .handle(handle.clone())
                    .serve(eventgrid::api::router(emulator.clone()).into_make_service()),
            );
        }
        for (name, listener) in listeners.vaults {
            servers.spawn(
                axum_server::from_tcp_rustls(listener, https.clone())
                    .handle(handle.clone())
                    .serve(vault_api::router(emulator.clone(), &name).into_make_service()),
            );
        }
        let control_listener =
            tokio::net::TcpListener::from_std(listeners.control).map_err(EmulatorError::Serve)?;
        let control_router = control::router(emulator);
        servers.spawn(async move {
            axum::serve(control_listener, control_router)
                .with_graceful_shutdown(async move {
                    let _ = control_stopped.changed().await;
                })
                .await
        });
        Ok(Running {
            endpoints,
            https: handle,
            stop_control,
            servers,
        })
    }

    /// Resolves only if a listener stops on its own (it should not): why it stopped.
    pub async fn listener_stopped(&mut self) -> EmulatorError {
        EmulatorError::Serve(match self.servers.join_next().await {
            None | Some(Ok(Ok(()))) => std::io::Error::other("a listener exited unexpectedly"),
            Some(Ok(Err(error))) => error,
            Some(Err(panic)) => std::io::Error::other(panic),
        })
    }

    /// Stops accepting, lets in-flight requests finish (for at most
    /// `SHUTDOWN_GRACE`, 2 s) and waits until every listener has stopped.
    pub async fn shutdown(mut self) {
        self.https.graceful_shutdown(Some(SHUTDOWN_GRACE));
        let _ = self.stop_control.send(true);
        while self.servers.join_next().await.is_some() {}
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Dropping `servers` aborts the listener tasks, but not the connection
        // tasks they spawned: these signals close those too.
        self.https.shutdown();
        let _ = self.stop_control.send(true);
    }
}
