//! Command line: `kvsync run` (the operator), `kvsync crd`, `kvsync convert`
//! (ESO manifests → KeyVaultSecrets) and `kvsync explain` (also as the kubectl
//! plugin `kubectl kvsync explain`: the binary installed as `kubectl-kvsync`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::scope::ScopeArgs;

#[derive(Parser, Debug)]
#[command(
    name = "kvsync",
    version,
    about = "Azure Key Vault → Kubernetes Secrets, with rolling restarts on change"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the operator.
    Run(Box<RunArgs>),
    /// Print the KeyVaultSecret CRD as YAML (or apply it to the cluster).
    Crd(CrdArgs),
    /// Convert ESO ExternalSecrets (+ their azurekv stores) into KeyVaultSecrets.
    /// Exit code 0: complete; 2: some fields not converted (listed on stderr).
    Convert(crate::convert::command::ConvertArgs),
    /// Explain a KeyVaultSecret (where each key comes from, its sync state,
    /// what restarts) or a workload (what restarts it, and why); never shows a value.
    Explain(crate::explain::ExplainArgs),
}

#[derive(clap::Args, Debug)]
pub struct CrdArgs {
    /// Apply the CRD to the current cluster (server-side apply) instead of printing it.
    #[arg(long)]
    pub apply: bool,
    /// With --apply: wait until the CRD is established.
    #[arg(long)]
    pub wait: bool,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,

    /// Entra ID authority host (sovereign clouds, the emulator).
    #[arg(
        long,
        env = "AZURE_AUTHORITY_HOST",
        default_value = "https://login.microsoftonline.com/"
    )]
    pub authority_host: String,

    /// Extra allowed vault hosts besides the Azure Key Vault domains: exact
    /// host names or `*.suffix`. Tokens are only ever sent to allowed hosts.
    #[arg(
        long = "allow-vault-host",
        env = "KVSYNC_ALLOW_VAULT_HOSTS",
        value_delimiter = ','
    )]
    pub allow_vault_hosts: Vec<String>,

    /// PEM file with extra CA certificates to trust for Key Vault and Entra ID.
    #[arg(long, env = "KVSYNC_EXTRA_CA_FILE")]
    pub extra_ca_file: Option<PathBuf>,

    /// Namespaces whose KeyVaultSecrets may use the operator's own identity
    /// (`workloadIdentity` without `serviceAccountName`). Default: none.
    #[arg(
        long,
        env = "KVSYNC_OPERATOR_IDENTITY_NAMESPACES",
        value_delimiter = ','
    )]
    pub operator_identity_namespaces: Vec<String>,

    /// Only ServiceAccounts annotated `kvsync.io/allow-token-exchange: "true"`
    /// may be used by KeyVaultSecrets for workload identity (the hardening
    /// switch for shared clusters; off by default, as in ESO).
    #[arg(long, env = "KVSYNC_REQUIRE_SERVICE_ACCOUNT_OPT_IN")]
    pub require_service_account_opt_in: bool,

    /// The operator's own client id (injected by the AKS Workload Identity webhook).
    #[arg(long, env = "AZURE_CLIENT_ID")]
    pub azure_client_id: Option<String>,
    /// The operator's own tenant id (injected by the AKS Workload Identity webhook).
    #[arg(long, env = "AZURE_TENANT_ID")]
    pub azure_tenant_id: Option<String>,
    /// Projected service-account token of the operator (injected by the AKS webhook).
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE")]
    pub azure_federated_token_file: Option<PathBuf>,

    /// Timeout of one Key Vault or Entra ID request.
    #[arg(long, env = "KVSYNC_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// How vault changes are noticed: `list` (one paged listing per vault and
    /// identity per refresh window; values read only when changed) or `get`
    /// (a GET per referenced secret per refresh, as ESO does).
    #[arg(
        long,
        env = "KVSYNC_CHANGE_DETECTION",
        value_enum,
        default_value = "list"
    )]
    pub change_detection: crate::vault::ChangeDetection,

    /// Concurrent requests per vault (Key Vault throttles per vault).
    #[arg(long, env = "KVSYNC_VAULT_CONCURRENCY", default_value_t = 8)]
    pub vault_concurrency: usize,

    /// KeyVaultSecrets synced at once. Bounds the operator's memory and the
    /// API-server requests in flight when thousands of objects sync together
    /// (a start, a mass apply); idle refreshes are far below it.
    #[arg(long, env = "KVSYNC_MAX_CONCURRENT_SYNCS", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_syncs: u16,

    /// Shortest `refreshInterval` a KeyVaultSecret may ask for; shorter ones
    /// are refused (`InvalidSpec`). The default is Key Vault's own throttling
    /// window: one listing per window is the most any (vault, identity) view
    /// costs, however many objects share it (docs: threat model, "Fairness").
    #[arg(long, env = "KVSYNC_MIN_REFRESH_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub min_refresh_interval: Duration,

    /// How long before a Key Vault version's `exp` its KeyVaultSecret is
    /// `Expiring` (condition, Warning event, `kvsync_secrets_expiring`). The
    /// default is Key Vault's own `SecretNearExpiry` notice: 30 days.
    #[arg(long, env = "KVSYNC_EXPIRY_WINDOW", default_value = "30d", value_parser = humantime::parse_duration)]
    pub expiry_window: Duration,

    /// Longest wait between retries after a failure.
    #[arg(long, env = "KVSYNC_MAX_BACKOFF", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_backoff: Duration,

    /// The namespace the operator runs in (holds its digest key).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kvsync-system")]
    pub operator_namespace: String,

    /// Address of the health (/healthz, /readyz) and metrics (/metrics) server.
    #[arg(long, env = "KVSYNC_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "KVSYNC_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    #[command(flatten)]
    pub reload: crate::reload::ReloadArgs,

    #[command(flatten)]
    pub leader: crate::leader::LeaderArgs,

    #[command(flatten)]
    pub events: crate::vault_events::EventArgs,
}
