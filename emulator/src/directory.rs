//! The Entra ID directory: app registrations (or managed identities), how each may
//! authenticate, and what each may read. Pure decisions, no I/O.
//!
//! ```text
//! Directory ── client id ──▶ App { tenant,
//!                                  client secret?            ─┐ ways to get a token
//!                                  certificate?              ─┤ (Entra token endpoint)
//!                                  federated credentials[]   ─┤
//!                                  managed identity kind?    ─┘ (IMDS, the host's identity)
//!                                  access[] ── vault ──▶ secret names or "*" }
//! ```
//!
//! Access grants stand in for an RBAC role assignment of "Key Vault Secrets User"
//! scoped to the listed secrets (or to the whole vault with `"*"`). Listing a vault
//! needs any grant on it. To keep the model small a grant also allows writes through
//! the data plane (set, update, delete), which in Azure would need "Key Vault
//! Secrets Officer".

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use sha1::{Digest, Sha1};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Grant on every secret of a vault.
pub const ALL_SECRETS: &str = "*";

/// An app registration as written in the seed file and in control-API `PUT /apps/…`.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppRegistration {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// PEM certificate whose key signs the app's client assertions.
    pub certificate: Option<String>,
    #[serde(default)]
    pub federated_credentials: Vec<FederatedCredential>,
    #[serde(default)]
    pub access: Vec<AccessGrant>,
    /// The app is a managed identity of the (emulated) host, served by IMDS.
    pub managed_identity: Option<ManagedIdentityKind>,
}

/// How a managed identity is attached to the host IMDS serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ManagedIdentityKind {
    /// The host's own identity: what IMDS returns when no identity is named.
    SystemAssigned,
    /// Named by its client id (or the only one when the host has no system-assigned identity).
    UserAssigned,
}

/// Why IMDS cannot pick an identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManagedIdentityError {
    #[error("Identity not found")]
    NotFound,
    #[error(
        "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"
    )]
    Ambiguous,
}

/// Trust in tokens of an outside issuer (e.g. a cluster's service-account issuer).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FederatedCredential {
    pub issuer: String,
    pub subject: String,
    pub audience: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessGrant {
    pub vault: String,
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    #[error(
        "app {client_id}: tenantId must be a non-empty GUID or domain (letters, digits, '.', '-')"
    )]
    InvalidTenant { client_id: String },
    #[error("an app has an empty clientId")]
    EmptyClientId,
    #[error("app {client_id}: certificate is not a PEM certificate with an RSA or EC key")]
    InvalidCertificate { client_id: String },
    #[error("app {client_id}: clientSecret is empty")]
    EmptySecret { client_id: String },
    #[error("app {client_id}: access grant on vault {vault} lists no secrets (use \"*\" for all)")]
    EmptyGrant { client_id: String, vault: String },
}

/// The registered certificate, parsed once.
pub struct RegisteredCertificate {
    /// SHA-1 of the DER certificate: what the `x5t` header of an assertion names.
    pub sha1_thumbprint: [u8; 20],
    /// SHA-256 of the DER certificate: what an `x5t#S256` header names.
    pub sha256_thumbprint: [u8; 32],
    pub key: jsonwebtoken::DecodingKey,
}

/// A validated app registration.
pub struct App {
    pub tenant_id: String,
    pub client_id: String,
    /// Stable object id of the service principal, derived from the client id.
    pub object_id: String,
    client_secret: Option<String>,
    pub certificate: Option<RegisteredCertificate>,
    pub federated_credentials: Vec<FederatedCredential>,
    access: Vec<AccessGrant>,
    pub managed_identity: Option<ManagedIdentityKind>,
}

impl fmt::Debug for App {
    /// Leaves out the client secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("federated_credentials", &self.federated_credentials)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

/// Tenant ids as azure_identity accepts them.
pub fn is_valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
}

fn object_id_for(client_id: &str) -> String {
    let digest = Sha1::digest(format!("kvsync-emulator/object-id/{client_id}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

fn parse_certificate(pem: &str) -> Option<RegisteredCertificate> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes())
        .or_else(|_| jsonwebtoken::DecodingKey::from_ec_pem(pem.as_bytes()))
        .ok()?;
    Some(RegisteredCertificate {
        sha1_thumbprint: Sha1::digest(der.as_ref()).into(),
        sha256_thumbprint: Sha256::digest(der.as_ref()).into(),
        key,
    })
}

impl TryFrom<AppRegistration> for App {
    type Error = RegistrationError;

    fn try_from(registration: AppRegistration) -> Result<Self, Self::Error> {
        let client_id = registration.client_id;
        if client_id.trim().is_empty() {
            return Err(RegistrationError::EmptyClientId);
        }
        if !is_valid_tenant(&registration.tenant_id) {
            return Err(RegistrationError::InvalidTenant { client_id });
        }
        if registration.client_secret.as_deref() == Some("") {
            return Err(RegistrationError::EmptySecret { client_id });
        }
        if let Some(grant) = registration.access.iter().find(|g| g.secrets.is_empty()) {
            return Err(RegistrationError::EmptyGrant {
                vault: grant.vault.clone(),
                client_id,
            });
        }
        let certificate = match registration.certificate.as_deref() {
            None => None,
            Some(pem) => Some(parse_certificate(pem).ok_or_else(|| {
                RegistrationError::InvalidCertificate {
                    client_id: client_id.clone(),
                }
            })?),
        };
        Ok(App {
            tenant_id: registration.tenant_id,
            object_id: object_id_for(&client_id),
            client_id,
            client_secret: registration.client_secret,
            certificate,
            federated_credentials: registration.federated_credentials,
            access: registration.access,
            managed_identity: registration.managed_identity,
        })
    }
}

/// Which part of a federated assertion matched no credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FederatedMismatch {
    Issuer,
    Subject,
    Audience,
}

/// The claims of an assertion that a federated credential is matched against.
#[derive(Debug, Clone, Copy)]
pub struct PresentedIdentity<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    pub audiences: &'a [String],
}

impl App {
    /// A missing registered secret and a wrong one look the same to the caller.
    pub fn secret_matches(&self, presented: &str) -> bool {
        self.client_secret.as_deref() == Some(presented)
    }

    pub fn trusts_issuer(&self, issuer: &str) -> bool {
        self.federated_credentials
            .iter()
            .any(|c| c.issuer == issuer)
    }

    /// Entra accepts an assertion when one credential matches issuer, subject and
    /// audience exactly. On failure, names the first part no credential matched.
    pub fn match_federated(
        &self,
        presented: PresentedIdentity<'_>,
    ) -> Result<&FederatedCredential, FederatedMismatch> {
        let same_issuer = || {
            self.federated_credentials
                .iter()
                .filter(|c| c.issuer == presented.issuer)
        };
        if same_issuer().next().is_none() {
            return Err(FederatedMismatch::Issuer);
        }
        let mut same_subject = same_issuer()
            .filter(|c| c.subject == presented.subject)
            .peekable();
        if same_subject.peek().is_none() {
            return Err(FederatedMismatch::Subject);
        }
        same_subject
            .find(|c| presented.audiences.contains(&c.audience))
            .ok_or(FederatedMismatch::Audience)
    }

    pub fn may_list(&self, vault: &str) -> bool {
        self.access.iter().any(|grant| grant.vault == vault)
    }

    /// The vaults this app has a grant on (their access policies name it).
    pub fn granted_vaults(&self) -> std::collections::BTreeSet<String> {
        self.access
            .iter()
            .map(|grant| grant.vault.clone())
            .collect()
    }

    pub fn may_access_secret(&self, vault: &str, secret: &str) -> bool {
        self.access
            .iter()
            .filter(|grant| grant.vault == vault)
            .flat_map(|grant| &grant.secrets)
            .any(|granted| granted == ALL_SECRETS || granted == secret)
    }
}

/// Every registered app, by client id (client ids are unique across tenants).
#[derive(Debug, Default)]
pub struct Directory {
    apps: BTreeMap<String, Arc<App>>,
}

impl Directory {
    /// Adds or replaces an app; returns whether it replaced one.
    /// Adds or replaces an app; returns the one it replaced.
    pub fn upsert(&mut self, app: App) -> Option<Arc<App>> {
        self.apps.insert(app.client_id.clone(), Arc::new(app))
    }

    /// Removes an app; returns it, if it was there.
    pub fn remove(&mut self, client_id: &str) -> Option<Arc<App>> {
        self.apps.remove(client_id)
    }

    /// The app with this client id in this tenant.
    pub fn app(&self, tenant: &str, client_id: &str) -> Option<Arc<App>> {
        self.apps
            .get(client_id)
            .filter(|app| app.tenant_id == tenant)
            .cloned()
    }

    pub fn has_tenant(&self, tenant: &str) -> bool {
        self.apps.values().any(|app| app.tenant_id == tenant)
    }

    /// The managed identity IMDS answers for: the one named by `client_id`, else
    /// the system-assigned one, else the only user-assigned one.
    pub fn managed_identity(
        &self,
        client_id: Option<&str>,
    ) -> Result<Arc<App>, ManagedIdentityError> {
        let managed = || {
            self.apps
                .values()
                .filter(|app| app.managed_identity.is_some())
        };
        if let Some(client_id) = client_id {
            return managed()
                .find(|app| app.client_id == client_id)
                .cloned()
                .ok_or(ManagedIdentityError::NotFound);
        }
        if let Some(system) =
            managed().find(|app| app.managed_identity == Some(ManagedIdentityKind::SystemAssigned))
        {
            return Ok(system.clone());
        }
        let mut user_assigned = managed();
        match (user_assigned.next(), user_assigned.next()) {
            (Some(only), None) => Ok(only.clone()),
            (None, _) => Err(ManagedIdentityError::NotFound),
            (Some(_), Some(_)) => Err(ManagedIdentityError::Ambiguous),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

    fn registration(yaml: &str) -> AppRegistration {
        serde_norway::from_str(yaml).unwrap()
    }

    fn workload_app() -> App {
        App::try_from(registration(&format!(
            r#"
tenantId: {TENANT}
clientId: app-1
federatedCredentials:
- {{issuer: "https://issuer.test", subject: "system:serviceaccount:ns:sa", audience: "api://AzureADTokenExchange"}}
- {{issuer: "https://issuer.test", subject: "system:serviceaccount:ns:other", audience: "custom"}}
access:
- {{vault: shop, secrets: [db-password, api-key]}}
- {{vault: all, secrets: ["*"]}}
"#
        )))
        .unwrap()
    }

    fn identity<'a>(
        issuer: &'a str,
        subject: &'a str,
        audiences: &'a [String],
    ) -> PresentedIdentity<'a> {
        PresentedIdentity {
            issuer,
            subject,
            audiences,
        }
    }

    fn managed(client_id: &str, kind: &str) -> App {
        App::try_from(registration(&format!(
            "{{tenantId: {TENANT}, clientId: {client_id}, managedIdentity: {kind}}}"
        )))
        .unwrap()
    }

    #[test]
    fn imds_picks_the_named_then_the_system_then_the_only_user_assigned_identity() {
        let mut directory = Directory::default();
        directory.upsert(workload_app());
        let pick = |directory: &Directory, client_id: Option<&str>| {
            directory
                .managed_identity(client_id)
                .map(|app| app.client_id.clone())
        };
        assert_eq!(pick(&directory, None), Err(ManagedIdentityError::NotFound));
        directory.upsert(managed("user-1", "userAssigned"));
        assert_eq!(pick(&directory, None).as_deref(), Ok("user-1"));
        directory.upsert(managed("user-2", "userAssigned"));
        assert_eq!(pick(&directory, None), Err(ManagedIdentityError::Ambiguous));
        assert_eq!(pick(&directory, Some("user-2")).as_deref(), Ok("user-2"));
        directory.upsert(managed("system", "systemAssigned"));
        assert_eq!(pick(&directory, None).as_deref(), Ok("system"));
        // An app registration is not a managed identity of the host.
        assert_eq!(
            pick(&directory, Some("app-1")),
            Err(ManagedIdentityError::NotFound)
        );
    }

    #[test]
    fn access_follows_the_grants() {
        let app = workload_app();
        assert!(app.may_access_secret("shop", "db-password"));
        assert!(!app.may_access_secret("shop", "other"));
        assert!(app.may_access_secret("all", "anything"));
        assert!(!app.may_access_secret("elsewhere", "db-password"));
        assert!(app.may_list("shop"));
        assert!(!app.may_list("elsewhere"));
    }

    #[test]
    fn a_federated_assertion_must_match_one_credential_exactly() {
        let app = workload_app();
        let exchange = vec!["api://AzureADTokenExchange".to_owned()];
        let custom = vec!["custom".to_owned()];
        let sa = "system:serviceaccount:ns:sa";
        assert!(
            app.match_federated(identity("https://issuer.test", sa, &exchange))
                .is_ok()
        );
        assert_eq!(
            app.match_federated(identity("https://other.test", sa, &exchange)),
            Err(FederatedMismatch::Issuer)
        );
        assert_eq!(
            app.match_federated(identity(
                "https://issuer.test",
                "system:serviceaccount:ns:x",
                &exchange
            )),
            Err(FederatedMismatch::Subject)
        );
        // The audience of one credential does not combine with the subject of another.
        assert_eq!(
            app.match_federated(identity("https://issuer.test", sa, &custom)),
            Err(FederatedMismatch::Audience)
        );
        let several = vec!["x".to_owned(), "api://AzureADTokenExchange".to_owned()];
        assert!(
            app.match_federated(identity("https://issuer.test", sa, &several))
                .is_ok()
        );
    }

    #[test]
    fn apps_are_found_only_in_their_own_tenant() {
        let mut directory = Directory::default();
        assert!(directory.upsert(workload_app()).is_none());
        assert!(directory.app(TENANT, "app-1").is_some());
        assert!(directory.app("other-tenant", "app-1").is_none());
        assert!(directory.has_tenant(TENANT));
        assert!(directory.upsert(workload_app()).is_some());
        assert!(directory.remove("app-1").is_some());
        assert!(directory.app(TENANT, "app-1").is_none());
    }

    #[test]
    fn client_secrets_are_compared_exactly_and_absent_ones_never_match() {
        let mut with_secret = registration(&format!(
            "{{tenantId: {TENANT}, clientId: a, clientSecret: s3cr3t}}"
        ));
        let app = App::try_from(with_secret.clone()).unwrap();
        assert!(app.secret_matches("s3cr3t"));
        assert!(!app.secret_matches("s3cr3t "));
        with_secret.client_secret = None;
        assert!(!App::try_from(with_secret).unwrap().secret_matches(""));
    }

    #[test]
    fn invalid_registrations_are_refused_with_the_reason() {
        let bad_tenant = registration("{tenantId: 'a b', clientId: a}");
        assert!(matches!(
            App::try_from(bad_tenant),
            Err(RegistrationError::InvalidTenant { .. })
        ));
        let bad_cert = registration(&format!(
            "{{tenantId: {TENANT}, clientId: a, certificate: nope}}"
        ));
        assert!(matches!(
            App::try_from(bad_cert),
            Err(RegistrationError::InvalidCertificate { .. })
        ));
        let empty_grant = registration(&format!(
            "{{tenantId: {TENANT}, clientId: a, access: [{{vault: shop, secrets: []}}]}}"
        ));
        assert!(matches!(
            App::try_from(empty_grant),
            Err(RegistrationError::EmptyGrant { .. })
        ));
    }

    #[test]
    fn a_registered_certificate_is_parsed_with_its_thumbprint() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["app".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut with_cert = registration(&format!("{{tenantId: {TENANT}, clientId: a}}"));
        with_cert.certificate = Some(cert.pem());
        let app = App::try_from(with_cert).unwrap();
        let expected: [u8; 20] = Sha1::digest(cert.der().as_ref()).into();
        assert_eq!(app.certificate.unwrap().sha1_thumbprint, expected);
    }

    #[test]
    fn the_object_id_is_a_stable_guid_distinct_from_the_client_id() {
        let oid = object_id_for("app-1");
        assert_eq!(oid, object_id_for("app-1"));
        assert_ne!(oid, object_id_for("app-2"));
        assert!(uuid::Uuid::parse_str(&oid).is_ok());
    }
}
