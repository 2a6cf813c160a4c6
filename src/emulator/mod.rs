//! A Key Vault + Entra ID emulator that speaks the real wire protocol, so the
//! official Azure SDK works against it with configuration changes only (authority
//! host, vault URL, a trusted CA, and `verify_challenge_resource: false` because the
//! vault host is `localhost`, not `*.vault.azure.net`).
//!
//! ```text
//!  seed.yaml ──▶ Config ──▶ Emulator (shared state, one per process)
//!                             ├─ VaultStore   vault ─▶ secret ─▶ versions (oldest … latest)
//!                             ├─ Directory    client id ─▶ App {tenant, secret?, certificate?,
//!                             │                             federated credentials, access grants}
//!                             ├─ IssuerKeys   outside issuer ─▶ JWKS (file or OIDC discovery), cached
//!                             ├─ TokenAuthority  RSA key signing/verifying access tokens
//!                             └─ FaultPlan, Counters, IssuedCredentials   (for tests)
//!
//!  HTTPS, certificate from a CA made at start (<state-dir>/ca.pem):
//!    Entra   POST /{tenant}/oauth2/v2.0/token ── secret | certificate | federated assertion
//!              └─▶ access token (aud https://vault.azure.net, appid, tid)
//!    vault   (one listener per vault, standing in for one host per vault)
//!              /secrets… ─▶ api-version ─▶ bearer token (401 challenge) ─▶ grants (403) ─▶ store
//!  HTTP on 127.0.0.1:
//!    control  rotate/disable/delete secrets, upsert/remove apps, faults, counters, issued
//! ```
//!
//! Why this shape: the pure parts (store, directory, faults, counters, assertion
//! rules) hold every decision and are unit-tested without HTTP; the axum modules
//! only translate between the wire and those decisions. Every listener shares one
//! `Emulator`, so a change through the control API is what the next SDK call sees.
//!
//! `run` binds every listener, then writes `<state-dir>/endpoints.json` (see
//! [`Endpoints`]) for scripts and tests to wait on, and serves until SIGTERM or
//! SIGINT.

mod assertion;
mod clock;
mod config;
mod control;
mod directory;
mod endpoints;
mod entra;
mod faults;
mod issuers;
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

/// How long in-flight requests (a hang fault, say) may delay shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// `kvsync emulator`: run the Key Vault + Entra ID emulator.
#[derive(Debug, Clone, clap::Args)]
pub struct EmulatorArgs {
    /// Seed file (YAML): vaults and secrets, app registrations, token issuers.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Directory for ca.pem and endpoints.json (created if missing).
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
    #[error("cannot watch for termination signals: {0}")]
    Signals(std::io::Error),
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

/// Resolves on SIGTERM or SIGINT; the handlers are installed when this is called.
fn termination() -> Result<impl Future<Output = &'static str>, EmulatorError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(EmulatorError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(EmulatorError::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    })
}

/// Runs the emulator until SIGTERM or SIGINT.
pub async fn run(args: EmulatorArgs) -> Result<(), EmulatorError> {
    // The process-wide provider may already be installed (by the operator's own
    // start-up); either way it is aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let termination = termination()?;
    let config = config::load(&args.config)?;

    let state_dir = &args.state_dir;
    std::fs::create_dir_all(state_dir).map_err(file_error("cannot create", state_dir))?;
    let endpoints_path = state_dir.join(ENDPOINTS_FILE);
    match std::fs::remove_file(&endpoints_path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(file_error("cannot remove stale", &endpoints_path)(error));
        }
        _ => {}
    }
    let tls = tls::generate()?;
    let ca_file = std::path::absolute(state_dir.join("ca.pem"))
        .map_err(file_error("cannot resolve", state_dir))?;
    std::fs::write(&ca_file, &tls.ca_pem).map_err(file_error("cannot write", &ca_file))?;

    let entra_listener = bind("Entra ID", args.entra_port)?;
    let mut vault_listeners = Vec::with_capacity(config.vaults.len());
    for (offset, vault) in config.vaults.iter().enumerate() {
        let port = match args.vault_port {
            0 => 0,
            first => u16::try_from(offset)
                .ok()
                .and_then(|offset| first.checked_add(offset))
                .ok_or(EmulatorError::PortOverflow(first))?,
        };
        vault_listeners.push((
            vault.name.clone(),
            bind(&format!("vault {}", vault.name), port)?,
        ));
    }
    let control_listener = bind("the control API", args.control_port)?;
    let control_port = control_listener
        .local_addr()
        .map_err(EmulatorError::Serve)?
        .port();

    let authority_host = https_url(&entra_listener)?;
    let vault_urls = vault_listeners
        .iter()
        .map(|(name, listener)| Ok((name.clone(), https_url(listener)?)))
        .collect::<Result<BTreeMap<_, _>, EmulatorError>>()?;
    let issuers = issuers::IssuerKeys::new(&config.issuers)?;
    let emulator = Arc::new(state::Emulator::new(
        config,
        authority_host.clone(),
        &vault_urls,
        tokens::TokenAuthority::generate()?,
        issuers,
    ));

    let https = RustlsConfig::from_config(tls.server_config);
    let handle = axum_server::Handle::new();
    let (stop_control, mut control_stopped) = tokio::sync::watch::channel(false);
    let mut servers = JoinSet::new();
    servers.spawn(
        axum_server::from_tcp_rustls(entra_listener, https.clone())
            .handle(handle.clone())
            .serve(entra::router(emulator.clone()).into_make_service()),
    );
    for (name, listener) in vault_listeners {
        servers.spawn(
            axum_server::from_tcp_rustls(listener, https.clone())
                .handle(handle.clone())
                .serve(vault_api::router(emulator.clone(), &name).into_make_service()),
        );
    }
    let control_listener =
        tokio::net::TcpListener::from_std(control_listener).map_err(EmulatorError::Serve)?;
    let control_router = control::router(emulator.clone());
    servers.spawn(async move {
        axum::serve(control_listener, control_router)
            .with_graceful_shutdown(async move {
                let _ = control_stopped.changed().await;
            })
            .await
    });

    let endpoints = Endpoints {
        authority_host: authority_host.to_string(),
        vaults: vault_urls
            .iter()
            .map(|(name, url)| (name.clone(), url.to_string()))
            .collect(),
        control_url: format!("http://127.0.0.1:{control_port}/"),
        ca_file,
        pid: std::process::id(),
    };
    endpoints
        .write_atomically(state_dir)
        .map_err(file_error("cannot write", &endpoints_path))?;
    tracing::info!(
        authority_host = %endpoints.authority_host,
        vaults = ?endpoints.vaults,
        control_url = %endpoints.control_url,
        "emulator ready"
    );

    let outcome = tokio::select! {
        signal = termination => {
            tracing::info!(signal, "shutting down");
            Ok(())
        }
        Some(stopped) = servers.join_next() => Err(EmulatorError::Serve(match stopped {
            Ok(Ok(())) => std::io::Error::other("a listener exited unexpectedly"),
            Ok(Err(error)) => error,
            Err(panic) => std::io::Error::other(panic),
        })),
    };
    handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
    let _ = stop_control.send(true);
    while servers.join_next().await.is_some() {}
    let _ = std::fs::remove_file(&endpoints_path);
    outcome
}
