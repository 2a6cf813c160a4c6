//! How kvsync talks to the API server: the client and every watch.
//!
//! ```text
//!  watch ── timeoutSeconds=WATCH_TIMEOUT ──▶ the server ends it; the watcher resumes
//!           from its last resourceVersion (one cheap request per watch per period)
//!  any connection silent for READ_TIMEOUT ──▶ the client gives up and the watcher retries
//!  a failed watch or list ──▶ retried after 0.8 s, 1.6 s, … at most WATCH_BACKOFF_MAX
//! ```
//!
//! The retry cap is lower than client-go's 30 s: after an API server restart
//! a watcher that failed a few times while the server was away would otherwise
//! sleep up to 30 s more after it is back (on top of a request that can take
//! READ_TIMEOUT); one request per watch every 10 s is no burden to a server.
//!
//! Without a read timeout, a watch request an API server accepted while it
//! was restarting can wait for its answer forever, and the stage that owns
//! it stops seeing changes (seen in `tests/apiserver_restart.rs`: a new
//! KeyVaultSecret unnoticed for over 20 s after a kube-apiserver restart).
//! kube-runtime's own idle timeout covers only a stream that already
//! answered, not a request still waiting for its response.

use std::time::Duration;

use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::{self, ExponentialBackoff};

/// How long the server keeps one watch open.
pub const WATCH_TIMEOUT_SECS: u32 = 25;
/// How long the client waits on a silent connection: longer than a watch
/// may legitimately stay quiet.
pub const READ_TIMEOUT: Duration = Duration::from_secs(WATCH_TIMEOUT_SECS as u64 + 10);

/// The longest a watcher waits before it retries a failed watch or list.
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A client from the environment (in-cluster or kubeconfig), with the read timeout.
pub async fn client() -> Result<kube::Client, kube::Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    config.read_timeout = Some(READ_TIMEOUT);
    kube::Client::try_from(config)
}

/// The configuration every watch of kvsync starts from.
pub fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECS)
}

/// The retry schedule of every watch of kvsync (see the module docs): jittered
/// doubling from 0.8 s up to [`WATCH_BACKOFF_MAX`], reset after two quiet minutes.
pub fn watch_backoff() -> ResetTimerBackoff<ExponentialBackoff> {
    let schedule = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(800))
        .with_max_delay(WATCH_BACKOFF_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(schedule.into(), Duration::from_secs(120))
}
