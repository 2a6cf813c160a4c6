//! Where a running emulator can be reached: [`Running::endpoints`](crate::Running)
//! in-process, and `<state-dir>/endpoints.json` from the `kvsync-emulator`
//! binary, written once every listener is bound, atomically (temporary file +
//! rename), so a reader that sees the file may connect at once; removed on a
//! clean exit.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

pub const ENDPOINTS_FILE: &str = "endpoints.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// Entra stand-in, `https://localhost:<port>/`: a client's authority host.
    pub authority_host: String,
    /// IMDS token endpoint (managed identities), `https://localhost:<port>/metadata/identity/oauth2/token`:
    /// a client's `IDENTITY_ENDPOINT`.
    pub identity_endpoint: String,
    /// Vault name to vault URL, `https://localhost:<port>/`.
    pub vaults: BTreeMap<String, String>,
    /// Control API, `http://127.0.0.1:<port>/`.
    pub control_url: String,
    /// PEM CA certificate that signed the HTTPS listeners' certificate.
    pub ca_file: PathBuf,
    /// The listeners' certificate (with the CA's) and its key, PEM: for a
    /// local service that should serve HTTPS under the same CA (Azurite).
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
    /// The Event Grid namespace, `https://localhost:<port>/`, when the seed has one
    /// (it stands in for `https://<namespace>.<region>-1.eventgrid.azure.net/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_grid: Option<String>,
    /// The process serving these listeners.
    pub pid: u32,
}

impl Endpoints {
    pub fn write_atomically(&self, state_dir: &Path) -> io::Result<()> {
        let temporary = state_dir.join(format!(".{ENDPOINTS_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        std::fs::write(&temporary, json)?;
        std::fs::rename(&temporary, state_dir.join(ENDPOINTS_FILE))
    }
}
