//! What every emulator test shares: the standard seed (vaults `shop` and
//! `other`, four apps, a cluster issuer), keys to sign tokens with, an
//! in-process emulator with SDK and raw HTTP clients for it, and helpers that
//! read the SDK's errors.
#![allow(dead_code)] // each test binary uses a different part

use azure_core::cloud::CustomConfiguration;
use azure_core::credentials::TokenCredential;
use azure_core::error::{ErrorKind, ErrorResponse};
use azure_core::http::{ClientOptions, StatusCode, Transport};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use azure_security_keyvault_secrets::models::{Secret, SecretClientGetSecretOptions};
use azure_security_keyvault_secrets::{ResourceExt, SecretClient, SecretClientOptions};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kvsync_emulator::{Endpoints, Options, Running};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, LazyLock};
use tempfile::TempDir;

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// Client-secret app that may read everything in `shop`.
pub const READER: &str = "11111111-1111-1111-1111-111111111111";
pub const READER_SECRET: &str = "reader-password";
/// Client-secret app that may read only `shop/api-key`.
pub const LIMITED: &str = "22222222-2222-2222-2222-222222222222";
pub const LIMITED_SECRET: &str = "limited-password";
/// Workload identity: federated credential for a service account of `cluster.test`.
pub const WORKLOAD: &str = "33333333-3333-3333-3333-333333333333";
pub const CLUSTER_ISSUER: &str = "https://cluster.test";
pub const SERVICE_ACCOUNT: &str = "system:serviceaccount:shop:kvsync";
pub const EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// App that authenticates with a certificate.
pub const CERT_APP: &str = "44444444-4444-4444-4444-444444444444";
pub const SCOPE: &str = "https://vault.azure.net/.default";

/// An RSA key with a self-signed certificate, as a cluster's service-account
/// issuer or an app's certificate.
pub struct TestKey {
    pub encoding: EncodingKey,
    pub kid: String,
    pub certificate_pem: String,
    pub certificate_der: Vec<u8>,
}

impl TestKey {
    pub fn generate(kid: &str) -> Self {
        let key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap();
        let certificate = rcgen::CertificateParams::new(vec!["test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Self {
            encoding: EncodingKey::from_rsa_pem(key.serialize_pem().as_bytes()).unwrap(),
            kid: kid.to_owned(),
            certificate_pem: certificate.pem(),
            certificate_der: certificate.der().to_vec(),
        }
    }

    pub fn jwks(&self) -> Value {
        let mut jwk =
            serde_json::to_value(Jwk::from_encoding_key(&self.encoding, Algorithm::RS256).unwrap())
                .unwrap();
        jwk["kid"] = json!(self.kid);
        jwk["use"] = json!("sig");
        json!({"keys": [jwk]})
    }

    /// A JWT like a projected service-account token (or any assertion) with these claims.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

pub static CLUSTER_KEY: LazyLock<TestKey> = LazyLock::new(|| TestKey::generate("cluster-key-1"));
pub static ATTACKER_KEY: LazyLock<TestKey> = LazyLock::new(|| TestKey::generate("cluster-key-1"));
pub static APP_CERTIFICATE: LazyLock<TestKey> = LazyLock::new(|| TestKey::generate("unused"));

pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub fn service_account_claims() -> Value {
    let now = unix_now();
    json!({"iss": CLUSTER_ISSUER, "sub": SERVICE_ACCOUNT, "aud": [EXCHANGE_AUDIENCE],
           "iat": now, "nbf": now, "exp": now + 3600})
}

/// The standard seed: vault `shop` (and `other`), the four apps, the cluster issuer.
pub fn standard_seed(dir: &Path, extra_shop_secrets: &str) -> String {
    let jwks = dir.join("cluster-jwks.json");
    std::fs::write(&jwks, CLUSTER_KEY.jwks().to_string()).unwrap();
    format!(
        r#"
vaults:
- name: shop
  secrets:
  - {{name: db-password, value: "s3cr3t", contentType: text/plain, tags: {{env: prod}}}}
  - {{name: api-key, value: "k3y"}}
{extra_shop_secrets}
- name: other
  secrets:
  - {{name: elsewhere, value: "x"}}
apps:
- tenantId: {TENANT}
  clientId: {READER}
  clientSecret: {READER_SECRET}
  access: [{{vault: shop, secrets: ["*"]}}]
- tenantId: {TENANT}
  clientId: {LIMITED}
  clientSecret: {LIMITED_SECRET}
  access: [{{vault: shop, secrets: [api-key]}}]
- tenantId: {TENANT}
  clientId: {WORKLOAD}
  federatedCredentials:
  - {{issuer: "{CLUSTER_ISSUER}", subject: "{SERVICE_ACCOUNT}", audience: "{EXCHANGE_AUDIENCE}"}}
  access: [{{vault: shop, secrets: ["*"]}}]
- tenantId: {TENANT}
  clientId: {CERT_APP}
  certificate: |
{certificate}
  access: [{{vault: shop, secrets: ["*"]}}]
issuers:
- issuer: "{CLUSTER_ISSUER}"
  jwksFile: {jwks}
"#,
        certificate = indent(&APP_CERTIFICATE.certificate_pem, 4),
        jwks = jwks.display(),
    )
}

pub fn indent(text: &str, spaces: usize) -> String {
    text.lines()
        .map(|line| format!("{}{line}", " ".repeat(spaces)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A Key Vault + Entra ID emulator running in-process (stopped when dropped).
pub struct Emulator {
    pub running: Running,
    pub endpoints: Endpoints,
    /// Scratch space: the seed, the state directory, token files.
    pub dir: TempDir,
    /// Trusts the emulator's CA.
    pub http: reqwest::Client,
}

pub fn trusting_client(ca_file: &Path) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca_file).unwrap()).unwrap();
    reqwest::Client::builder()
        .tls_certs_merge([ca])
        .build()
        .unwrap()
}

impl Emulator {
    /// Starts an emulator in-process, on the test's runtime, with the seed
    /// `seed` writes (given the emulator's scratch directory).
    pub async fn start(seed: impl FnOnce(&Path) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let seed_path = dir.path().join("seed.yaml");
        std::fs::write(&seed_path, seed(dir.path())).unwrap();
        let running = kvsync_emulator::start(Options::new(seed_path, dir.path().join("state")))
            .await
            .unwrap_or_else(|error| panic!("the emulator did not start: {error}"));
        let endpoints = running.endpoints.clone();
        let http = trusting_client(&endpoints.ca_file);
        Self {
            running,
            endpoints,
            dir,
            http,
        }
    }

    pub async fn start_standard() -> Self {
        Self::start(|dir| standard_seed(dir, "")).await
    }

    pub fn vault(&self, name: &str) -> &str {
        &self.endpoints.vaults[name]
    }

    pub fn control(&self, path: &str) -> String {
        format!("{}{path}", self.endpoints.control_url)
    }

    pub fn client_options(&self) -> ClientOptions {
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = self.endpoints.authority_host.clone();
        ClientOptions {
            transport: Some(Transport::new(Arc::new(trusting_client(
                &self.endpoints.ca_file,
            )))),
            cloud: Some(Arc::new(cloud.into())),
            ..ClientOptions::default()
        }
    }

    pub fn secret_credential(&self, client_id: &str, secret: &str) -> Arc<dyn TokenCredential> {
        ClientSecretCredential::new(
            TENANT,
            client_id.to_owned(),
            secret.to_owned().into(),
            Some(ClientSecretCredentialOptions {
                client_options: self.client_options(),
            }),
        )
        .unwrap()
    }

    /// A workload identity credential reading its assertion from a token file, as
    /// in a pod with Azure Workload Identity.
    pub fn workload_credential(
        &self,
        client_id: &str,
        assertion: &str,
    ) -> Arc<dyn TokenCredential> {
        let token_file = tempfile::NamedTempFile::new_in(self.dir.path()).unwrap();
        std::fs::write(token_file.path(), assertion).unwrap();
        let (_, path) = token_file.keep().unwrap();
        WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
            credential_options: ClientAssertionCredentialOptions {
                client_options: self.client_options(),
            },
            client_id: Some(client_id.to_owned()),
            tenant_id: Some(TENANT.to_owned()),
            token_file_path: Some(path),
        }))
        .unwrap()
    }

    pub fn secret_client(&self, vault: &str, credential: Arc<dyn TokenCredential>) -> SecretClient {
        SecretClient::new(
            self.vault(vault),
            credential,
            Some(SecretClientOptions {
                client_options: self.client_options(),
                verify_challenge_resource: Some(false),
                ..SecretClientOptions::default()
            }),
        )
        .unwrap()
    }

    pub fn reader_client(&self) -> SecretClient {
        self.secret_client("shop", self.secret_credential(READER, READER_SECRET))
    }

    pub async fn control_request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self.http.request(method, self.control(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    /// Calls the control API and insists on success.
    pub async fn control_ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let response = self.control_request(method, path, body).await;
        assert!(
            response.status().is_success(),
            "control {path}: {}",
            response.status()
        );
        response
    }

    pub async fn token(&self, client_id: &str, secret: &str) -> String {
        let response = self
            .token_request(&[
                ("client_id", client_id),
                ("client_secret", secret),
                ("grant_type", "client_credentials"),
                ("scope", SCOPE),
            ])
            .await;
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn token_request(&self, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(format!(
                "{}{TENANT}/oauth2/v2.0/token",
                self.endpoints.authority_host
            ))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    pub async fn counters(&self) -> Value {
        self.control_ok(reqwest::Method::GET, "counters", None)
            .await
            .json()
            .await
            .unwrap()
    }
}

/// The HTTP status and error code of a Key Vault error returned by the SDK.
pub fn service_error(error: &azure_core::Error) -> (StatusCode, String) {
    match error.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => (*status, error_code.clone().unwrap_or_default()),
        other => panic!("not an HTTP error ({other:?}): {error}"),
    }
}

/// Asserts that an SDK error is (or wraps) a credential error: Entra's refusal with
/// this AADSTS code.
///
/// azure_identity 1.0 deserializes `error_description` as a borrowed `&str`, which
/// fails on the `\r\n` escapes real Entra descriptions carry; it then reports a
/// data-conversion error quoting the description. The code is therefore looked for
/// in the error texts, which holds whether or not the SDK parses the body.
pub fn assert_refused_with(error: &azure_core::Error, aadsts_code: u32) {
    let chain: Vec<&(dyn std::error::Error + 'static)> =
        std::iter::successors(Some(error as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        })
        .collect();
    let is_credential_error = chain.iter().any(|e| {
        e.downcast_ref::<azure_core::Error>()
            .is_some_and(|e| matches!(e.kind(), ErrorKind::Credential))
    });
    let text: String = chain.iter().map(|e| format!("{e}\n")).collect();
    assert!(is_credential_error, "not a credential error: {text}");
    assert!(
        text.contains(&format!("AADSTS{aadsts_code}:")),
        "expected AADSTS{aadsts_code} in {text}"
    );
}

/// The `innererror.code` of a Key Vault error the SDK returned.
pub fn inner_error_code(error: azure_core::Error) -> String {
    ErrorResponse::try_from(error)
        .unwrap()
        .error
        .and_then(|detail| detail.inner_error)
        .and_then(|inner| inner.code)
        .unwrap_or_default()
}

pub async fn get_secret(
    client: &SecretClient,
    name: &str,
    version: Option<&str>,
) -> azure_core::Result<Secret> {
    let options = SecretClientGetSecretOptions {
        secret_version: version.map(str::to_owned),
        ..SecretClientGetSecretOptions::default()
    };
    client.get_secret(name, Some(options)).await?.into_model()
}

pub fn version_of(secret: &Secret) -> String {
    secret.resource_id().unwrap().version.unwrap()
}
