//! Azurite's queue service as a child process, for tests of the storage-queue
//! event source: installed once by `scripts/azurite.sh`, started on a port of
//! the caller's choosing, serving this emulator's TLS certificate (so clients
//! trusting `ca.pem` trust it) and accepting the emulator's bearer tokens for
//! `https://storage.azure.com` (`--oauth basic` checks their shape, issuer,
//! audience and lifetime). In memory only (its scratch directory is a
//! temporary one); stopped when dropped.
//!
//! ```text
//!  free_port() ─▶ seed with queues: [{url: queue_url(port, name)}] ─▶ emulator start
//!      ─▶ Azurite::start(port, &endpoints) ─▶ deliveries and clients use https://127.0.0.1:<port>/devstoreaccount1/<queue>
//! ```

use crate::Endpoints;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Azurite's well-known development account.
pub const ACCOUNT: &str = "devstoreaccount1";

/// How long Azurite may take to listen once started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AzuriteError {
    #[error("scripts/azurite.sh install failed (Node.js and the npm registry are needed): {0}")]
    Install(String),
    #[error("cannot start {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "Azurite did not listen on port {port} (it gives up after {START_TIMEOUT:?}); its output: {output}"
    )]
    NotListening { port: u16, output: String },
}

/// A running Azurite queue service.
pub struct Azurite {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// A free port on 127.0.0.1 (free when asked: bind it soon).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// The URL of queue `name` in Azurite's account on `port` (path style).
pub fn queue_url(port: u16, name: &str) -> String {
    format!("https://127.0.0.1:{port}/{ACCOUNT}/{name}")
}

/// The path of `azurite-queue`, installing it first if needed.
pub fn install() -> Result<PathBuf, AzuriteError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/azurite.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg("install")
        .output()
        .map_err(|e| AzuriteError::Install(e.to_string()))?;
    if !output.status.success() {
        return Err(AzuriteError::Install(
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

impl Azurite {
    /// Starts the queue service on `port` with the emulator's certificate,
    /// and waits until it listens. Blocking: call it off an async runtime's
    /// thread (`spawn_blocking`) if the emulator serves on that runtime.
    pub fn start(port: u16, emulator: &Endpoints) -> Result<Self, AzuriteError> {
        let program = install()?;
        let dir = tempfile::tempdir().map_err(|source| AzuriteError::Spawn {
            program: program.clone(),
            source,
        })?;
        let log = dir.path().join("azurite.log");
        let spawn_error = |source| AzuriteError::Spawn {
            program: program.clone(),
            source,
        };
        let out = std::fs::File::create(&log).map_err(spawn_error)?;
        let child = Command::new(&program)
            .args(["--queueHost", "127.0.0.1", "--queuePort", &port.to_string()])
            .arg("--cert")
            .arg(&emulator.tls_cert_file)
            .arg("--key")
            .arg(&emulator.tls_key_file)
            .args([
                "--oauth",
                "basic",
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--disableProductStyleUrl",
                "--disableTelemetry",
                "--silent",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(spawn_error)?)
            .stderr(out)
            .spawn()
            .map_err(spawn_error)?;
        let mut azurite = Azurite {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            let exited = azurite.child.try_wait().ok().flatten().is_some();
            if exited || Instant::now() >= deadline {
                return Err(AzuriteError::NotListening {
                    port,
                    output: azurite.output(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(azurite)
    }

    /// What Azurite printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
