//! Leader election on a `coordination.k8s.io/v1` Lease, so that two replicas
//! never both sync or restart anything. Uses the maintained
//! `kube-lease-manager` crate rather than hand-written lease logic.
//!
//! A replica waits as a standby until it holds the Lease, then starts the
//! stages. If it ever loses the Lease it stops (and is restarted as a
//! standby by its Deployment) rather than risk acting beside a new leader.
//! On a graceful shutdown it releases the Lease so a standby takes over at
//! once instead of after the lease duration.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Leader-election flags.
#[derive(clap::Args, Debug, Clone)]
pub struct LeaderArgs {
    /// Elect a leader among replicas through a Lease in the operator's namespace.
    #[arg(long, env = "KVSYNC_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the Lease.
    #[arg(long, env = "KVSYNC_LEASE_NAME", default_value = "kvsync")]
    pub lease_name: String,

    /// How long a Lease stays held without renewal (at least 3s).
    #[arg(long, env = "KVSYNC_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,

    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub leader_identity: Option<String>,
}

/// How often a waiting standby reports who holds the Lease.
const STANDBY_REPORT_EVERY: Duration = Duration::from_secs(30);

/// Why this replica could not become the leader.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease {namespace}/{name}: {source}")]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    #[error("the lease manager stopped")]
    ManagerStopped,
}

/// A held Lease.
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

/// Waits until this replica holds the Lease.
pub async fn acquire(
    client: kube::Client,
    args: &LeaderArgs,
    namespace: &str,
) -> Result<Leadership, LeaderError> {
    let duration = args.lease_duration.as_secs().max(3);
    let identity = args
        .leader_identity
        .clone()
        .unwrap_or_else(default_identity);
    let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(namespace)
        .with_identity(&identity)
        .with_duration(duration)
        .with_grace((duration / 3).max(1))
        .build()
        .await
        .map_err(|source| LeaderError::Lease {
            namespace: namespace.to_owned(),
            name: args.lease_name.clone(),
            source,
        })?;
    let (mut state, task) = manager.watch().await;
    tracing::info!(lease = %args.lease_name, %namespace, %identity, "waiting to become the leader");
    let leases: Api<Lease> = Api::namespaced(client, namespace);
    loop {
        match tokio::time::timeout(STANDBY_REPORT_EVERY, state.wait_for(|leader| *leader)).await {
            Ok(Ok(_)) => break,
            Ok(Err(_)) => return Err(LeaderError::ManagerStopped),
            // The lease manager keeps its errors to itself: say who holds the
            // Lease, or why it cannot even be read, so a stuck standby is visible.
            Err(_) => match leases.get_opt(&args.lease_name).await {
                Ok(lease) => {
                    let holder = lease
                        .and_then(|l| l.spec)
                        .and_then(|s| s.holder_identity)
                        .unwrap_or_default();
                    tracing::info!(lease = %args.lease_name, %holder, "standby: the lease is held by another replica");
                }
                Err(error) => {
                    tracing::warn!(lease = %args.lease_name, %error, "standby: cannot read the lease")
                }
            },
        }
    }
    tracing::info!(%identity, "became the leader");
    Ok(Leadership { state, task })
}

impl Leadership {
    /// Resolves if the Lease is lost.
    pub async fn lost(&mut self) {
        let _ = self.state.wait_for(|leader| !*leader).await;
    }

    /// Gives the Lease up for a standby.
    pub async fn release(self) {
        drop(self.state);
        if let Ok(Ok(manager)) = self.task.await
            && let Err(error) = manager.release().await
        {
            tracing::warn!(%error, "could not release the lease");
        }
    }
}

/// Host name, else a random id: unique enough outside a pod.
fn default_identity() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("kvsync-{}", hex::encode(rand::random::<[u8; 6]>())))
}
