//! `kvsync-emulator`: the Key Vault + Entra ID emulator as a process, for local
//! development and scripts (see [`kvsync_emulator`]). It starts the emulator,
//! writes `<state-dir>/endpoints.json` (atomically, once every listener is
//! bound) and serves until SIGTERM or SIGINT, then removes the file.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use kvsync_emulator::{ENDPOINTS_FILE, EmulatorError, Endpoints, Options};

#[derive(Parser, Debug)]
#[command(
    name = "kvsync-emulator",
    version,
    about = "Key Vault + Entra ID emulator for kvsync's tests and local development"
)]
struct Cli {
    #[command(flatten)]
    options: Options,
}

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Emulator(#[from] EmulatorError),
    #[error("cannot watch for termination signals: {0}")]
    Signals(std::io::Error),
    #[error("{action} {}: {source}", path.display())]
    EndpointsFile {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match serve(Cli::parse().options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the emulator until SIGTERM or SIGINT, publishing its endpoints meanwhile.
async fn serve(options: Options) -> Result<(), ServeError> {
    let termination = termination()?;
    let endpoints_path = options.state_dir.join(ENDPOINTS_FILE);
    remove_endpoints(&endpoints_path, "cannot remove stale")?;
    let state_dir = options.state_dir.clone();
    let mut running = kvsync_emulator::start(options).await?;
    publish(&running.endpoints, &state_dir, &endpoints_path)?;
    let outcome = tokio::select! {
        signal = termination => {
            tracing::info!(signal, "shutting down");
            Ok(())
        }
        error = running.listener_stopped() => Err(error.into()),
    };
    running.shutdown().await;
    remove_endpoints(&endpoints_path, "cannot remove")?;
    outcome
}

fn publish(endpoints: &Endpoints, state_dir: &Path, path: &Path) -> Result<(), ServeError> {
    endpoints
        .write_atomically(state_dir)
        .map_err(|source| ServeError::EndpointsFile {
            action: "cannot write",
            path: path.to_owned(),
            source,
        })
}

/// Removes `endpoints.json` if it is there.
fn remove_endpoints(path: &Path, action: &'static str) -> Result<(), ServeError> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(ServeError::EndpointsFile {
                action,
                path: path.to_owned(),
                source: error,
            })
        }
        _ => Ok(()),
    }
}

/// Resolves on SIGTERM or SIGINT; the handlers are installed when this is called.
fn termination() -> Result<impl Future<Output = &'static str>, ServeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    })
}
