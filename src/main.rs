//! The `kvsync` command line; see [`kvsync::cli`].

use clap::Parser;
use kvsync::cli::{Cli, Command};

/// jemalloc, so that memory freed when KeyVaultSecrets go away goes back to
/// the system: glibc's malloc kept ~80 MiB after 5,000 objects were created
/// and deleted (docs/benchmark.md, "Memory under churn").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options, read by jemalloc through this symbol
/// (`_RJEM_MALLOC_CONF` in the environment still overrides them): a background
/// thread returns freed pages after one second, and one arena instead of four
/// per core keeps what a mass delete frees in fewer, emptier pages.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 53] = b"background_thread:true,narenas:1,dirty_decay_ms:1000\0";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One rustls provider for kube and the Azure SDK alike.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let log_format = match &cli.command {
        Command::Run(args) => args.log_format.as_str(),
        _ => "text",
    };
    kvsync::telemetry::init(log_format);
    // A command a person types (also as `kubectl kvsync`): a plain message.
    let interactive = matches!(cli.command, Command::Explain(_) | Command::Convert(_));
    let result = match cli.command {
        Command::Run(args) => kvsync::run::run(*args).await.map_err(|e| e.to_string()),
        Command::Crd(args) => kvsync::run::crd(args).await.map_err(|e| e.to_string()),
        Command::Convert(args) => match kvsync::convert::command::run(args).await {
            Ok(true) => Ok(()),
            Ok(false) => return std::process::ExitCode::from(2),
            Err(error) => Err(error.to_string()),
        },
        Command::Explain(args) => kvsync::explain::run(args).await.map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) if interactive => {
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
        Err(message) => {
            tracing::error!("{message}");
            std::process::ExitCode::FAILURE
        }
    }
}
