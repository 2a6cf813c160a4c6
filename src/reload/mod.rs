//! Reload stage: rolls Deployments, StatefulSets and DaemonSets whose Secrets
//! or ConfigMaps changed (Stakater Reloader's annotation contract).
//!
//! (Skeleton: the interface the rest of the operator uses.)

use std::time::Duration;

use tokio::sync::mpsc;

/// Flags of the reload stage.
#[derive(clap::Args, Debug, Clone)]
pub struct ReloadArgs {
    /// Changes to one workload within this window are folded into one rollout.
    #[arg(long, env = "KVSYNC_RELOAD_DEBOUNCE", default_value = "2s", value_parser = humantime::parse_duration)]
    pub reload_debounce: Duration,
}

/// A Secret the sync stage just wrote (the in-process fast path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretWritten {
    pub namespace: String,
    pub name: String,
}

/// Sending side of the fast path, held by the sync stage.
#[derive(Clone)]
pub struct ReloadNotifier(mpsc::Sender<SecretWritten>);

impl ReloadNotifier {
    /// Tells the reload stage a Secret was written. Never blocks the sync
    /// stage: if the queue is full the watch event covers the change anyway.
    pub fn secret_written(&self, namespace: &str, name: &str) {
        let _ = self.0.try_send(SecretWritten {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
    }
}

/// Receiving side of the fast path.
pub struct ReloadInbox(pub mpsc::Receiver<SecretWritten>);

/// The fast-path channel between the stages.
pub fn channel() -> (ReloadNotifier, ReloadInbox) {
    let (tx, rx) = mpsc::channel(1024);
    (ReloadNotifier(tx), ReloadInbox(rx))
}

/// Runs the reload stage until the process stops.
pub async fn run(
    _client: kube::Client,
    _args: ReloadArgs,
    _scope: crate::scope::ScopeArgs,
    _operator_namespace: String,
    mut inbox: ReloadInbox,
) -> anyhow_like::Result {
    while inbox.0.recv().await.is_some() {}
    Ok(())
}

mod anyhow_like {
    pub type Result = std::result::Result<(), String>;
}
