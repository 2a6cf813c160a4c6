//! TLS for the Azure surfaces: a CA generated at every start, and one server
//! certificate it signs for `localhost` and `127.0.0.1`, shared by all listeners.
//! Clients trust the emulator by trusting `<state-dir>/ca.pem`; nothing is written
//! to the system trust store.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate the emulator's certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("cannot build the TLS server configuration: {0}")]
    Config(#[from] rustls::Error),
}

pub struct TlsMaterial {
    /// The CA certificate clients must trust, PEM.
    pub ca_pem: String,
    /// The server certificate followed by the CA's, PEM: for other local
    /// services (Azurite) to serve HTTPS under the same CA.
    pub server_chain_pem: String,
    /// The server certificate's private key, PEM (PKCS#8).
    pub server_key_pem: String,
    pub server_config: Arc<ServerConfig>,
}

/// Host names clients use to reach the emulator.
const SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

pub fn generate() -> Result<TlsMaterial, TlsError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kvsync emulator CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server_params = CertificateParams::new(SERVER_NAMES.map(str::to_owned).to_vec())?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "kvsync emulator");
    let server_cert = server_params.signed_by(&server_key, &ca)?;

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut server_config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone(), ca_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )?;
    server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsMaterial {
        ca_pem: ca_cert.pem(),
        server_chain_pem: format!("{}{}", server_cert.pem(), ca_cert.pem()),
        server_key_pem: server_key.serialize_pem(),
        server_config: Arc::new(server_config),
    })
}
