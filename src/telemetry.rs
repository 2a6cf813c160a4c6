//! Logging: `RUST_LOG`-style filtering (default `info`), text or JSON, to stderr.

use std::io::IsTerminal;

/// Installs the global subscriber. Colours only on a terminal: escape codes
/// in a collected log file or pipeline are noise.
pub fn init(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
