//! End-to-end tests of `kvsync emulator`: the binary runs as a subprocess and the
//! official Azure SDK (azure_identity + azure_security_keyvault_secrets) talks to it
//! with configuration changes only — a custom authority host, a reqwest client that
//! trusts the emulator's CA, and `verify_challenge_resource: false`. Raw HTTP tests
//! pin the exact wire shapes the SDK relies on.

use azure_core::cloud::CustomConfiguration;
use azure_core::credentials::TokenCredential;
use azure_core::error::{ErrorKind, ErrorResponse};
use azure_core::http::{ClientOptions, StatusCode, Transport};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use azure_security_keyvault_secrets::models::{
    Secret, SecretAttributes, SecretClientGetSecretOptions,
    SecretClientListSecretPropertiesVersionsOptions, SetSecretParameters,
    UpdateSecretPropertiesParameters,
};
use azure_security_keyvault_secrets::{ResourceExt, SecretClient, SecretClientOptions};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::TryStreamExt;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kvsync::emulator::{ENDPOINTS_FILE, Endpoints};
use serde_json::{Value, json};
use sha1::{Digest, Sha1};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// Client-secret app that may read everything in `shop`.
const READER: &str = "11111111-1111-1111-1111-111111111111";
const READER_SECRET: &str = "reader-password";
/// Client-secret app that may read only `shop/api-key`.
const LIMITED: &str = "22222222-2222-2222-2222-222222222222";
const LIMITED_SECRET: &str = "limited-password";
/// Workload identity: federated credential for a service account of `cluster.test`.
const WORKLOAD: &str = "33333333-3333-3333-3333-333333333333";
const CLUSTER_ISSUER: &str = "https://cluster.test";
const SERVICE_ACCOUNT: &str = "system:serviceaccount:shop:kvsync";
const EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// App that authenticates with a certificate.
const CERT_APP: &str = "44444444-4444-4444-4444-444444444444";
const SCOPE: &str = "https://vault.azure.net/.default";
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// An RSA key with a self-signed certificate, as a cluster's service-account
/// issuer or an app's certificate.
struct TestKey {
    encoding: EncodingKey,
    kid: String,
    certificate_pem: String,
    certificate_der: Vec<u8>,
}

impl TestKey {
    fn generate(kid: &str) -> Self {
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

    fn jwks(&self) -> Value {
        let mut jwk =
            serde_json::to_value(Jwk::from_encoding_key(&self.encoding, Algorithm::RS256).unwrap())
                .unwrap();
        jwk["kid"] = json!(self.kid);
        jwk["use"] = json!("sig");
        json!({"keys": [jwk]})
    }

    /// A JWT like a projected service-account token (or any assertion) with these claims.
    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

static CLUSTER_KEY: LazyLock<TestKey> = LazyLock::new(|| TestKey::generate("cluster-key-1"));
static ATTACKER_KEY: LazyLock<TestKey> = LazyLock::new(|| TestKey::generate("cluster-key-1"));
static APP_CERTIFICATE: LazyLock<TestKey> = LazyLock::new(|| TestKey::generate("unused"));

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn service_account_claims() -> Value {
    let now = unix_now();
    json!({"iss": CLUSTER_ISSUER, "sub": SERVICE_ACCOUNT, "aud": [EXCHANGE_AUDIENCE],
           "iat": now, "nbf": now, "exp": now + 3600})
}

/// The standard seed: vault `shop` (and `other`), the four apps, the cluster issuer.
fn standard_seed(dir: &Path, extra_shop_secrets: &str) -> String {
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

fn indent(text: &str, spaces: usize) -> String {
    text.lines()
        .map(|line| format!("{}{line}", " ".repeat(spaces)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A running `kvsync emulator`, killed on drop.
struct Emulator {
    child: Child,
    endpoints: Endpoints,
    dir: TempDir,
    /// Trusts the emulator's CA.
    http: reqwest::Client,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_emulator(dir: &Path, seed: &str) -> Child {
    let seed_path = dir.join("seed.yaml");
    std::fs::write(&seed_path, seed).unwrap();
    let log = std::fs::File::create(dir.join("emulator.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_kvsync"))
        .arg("emulator")
        .arg("--config")
        .arg(&seed_path)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("the kvsync binary starts")
}

fn trusting_client(ca_file: &Path) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca_file).unwrap()).unwrap();
    reqwest::Client::builder()
        .tls_certs_merge([ca])
        .build()
        .unwrap()
}

impl Emulator {
    async fn start(seed: impl FnOnce(&Path) -> String) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_emulator(dir.path(), &seed(dir.path()));
        let endpoints_file = dir.path().join("state").join(ENDPOINTS_FILE);
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let endpoints: Endpoints = loop {
            if let Ok(text) = std::fs::read_to_string(&endpoints_file) {
                break serde_json::from_str(&text).expect("endpoints.json parses");
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the emulator exited with {status}:\n{}", log_of(dir.path()));
            }
            assert!(
                Instant::now() < deadline,
                "no endpoints.json in time:\n{}",
                log_of(dir.path())
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        let http = trusting_client(&endpoints.ca_file);
        Self {
            child,
            endpoints,
            dir,
            http,
        }
    }

    async fn start_standard() -> Self {
        Self::start(|dir| standard_seed(dir, "")).await
    }

    fn vault(&self, name: &str) -> &str {
        &self.endpoints.vaults[name]
    }

    fn control(&self, path: &str) -> String {
        format!("{}{path}", self.endpoints.control_url)
    }

    fn client_options(&self) -> ClientOptions {
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

    fn secret_credential(&self, client_id: &str, secret: &str) -> Arc<dyn TokenCredential> {
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
    fn workload_credential(&self, client_id: &str, assertion: &str) -> Arc<dyn TokenCredential> {
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

    fn secret_client(&self, vault: &str, credential: Arc<dyn TokenCredential>) -> SecretClient {
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

    fn reader_client(&self) -> SecretClient {
        self.secret_client("shop", self.secret_credential(READER, READER_SECRET))
    }

    async fn control_request(
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
    async fn control_ok(
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

    async fn token(&self, client_id: &str, secret: &str) -> String {
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

    async fn token_request(&self, form: &[(&str, &str)]) -> reqwest::Response {
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

    async fn counters(&self) -> Value {
        self.control_ok(reqwest::Method::GET, "counters", None)
            .await
            .json()
            .await
            .unwrap()
    }
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("emulator.log")).unwrap_or_default()
}

/// The HTTP status and error code of a Key Vault error returned by the SDK.
fn service_error(error: &azure_core::Error) -> (StatusCode, String) {
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
fn assert_refused_with(error: &azure_core::Error, aadsts_code: u32) {
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
fn inner_error_code(error: azure_core::Error) -> String {
    ErrorResponse::try_from(error)
        .unwrap()
        .error
        .and_then(|detail| detail.inner_error)
        .and_then(|inner| inner.code)
        .unwrap_or_default()
}

async fn get_secret(
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

fn version_of(secret: &Secret) -> String {
    secret.resource_id().unwrap().version.unwrap()
}

#[tokio::test]
async fn sdk_reads_latest_and_older_versions_and_sees_rotations() {
    let emulator = Emulator::start_standard().await;
    let client = emulator.reader_client();

    let first = get_secret(&client, "db-password", None).await.unwrap();
    assert_eq!(first.value.as_deref(), Some("s3cr3t"));
    assert_eq!(first.content_type.as_deref(), Some("text/plain"));
    assert_eq!(first.tags.as_ref().unwrap()["env"], "prod");
    assert_eq!(first.attributes.as_ref().unwrap().enabled, Some(true));
    let first_version = version_of(&first);

    let rotated: Value = emulator
        .control_ok(
            reqwest::Method::PUT,
            "vaults/shop/secrets/db-password",
            Some(json!({"value": "n3w"})),
        )
        .await
        .json()
        .await
        .unwrap();
    let latest = get_secret(&client, "db-password", None).await.unwrap();
    assert_eq!(latest.value.as_deref(), Some("n3w"));
    assert_eq!(latest.id.as_deref(), rotated["id"].as_str());
    assert_ne!(version_of(&latest), first_version);

    let old = get_secret(&client, "db-password", Some(&first_version))
        .await
        .unwrap();
    assert_eq!(old.value.as_deref(), Some("s3cr3t"));
}

#[tokio::test]
async fn sdk_pages_through_more_than_25_secrets_and_all_versions() {
    let extra: String = (0..30)
        .map(|i| format!("  - {{name: bulk-{i:02}, value: v{i}}}\n"))
        .collect();
    let emulator = Emulator::start(|dir| standard_seed(dir, &extra)).await;
    let client = emulator.reader_client();

    let pages: Vec<_> = client
        .list_secret_properties(None)
        .unwrap()
        .into_pages()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(pages.len(), 2, "32 secrets make a page of 25 and one of 7");
    let names: Vec<String> = client
        .list_secret_properties(None)
        .unwrap()
        .map_ok(|item| item.resource_id().unwrap().name)
        .try_collect()
        .await
        .unwrap();
    let mut expected: Vec<String> = (0..30).map(|i| format!("bulk-{i:02}")).collect();
    expected.extend(["api-key".to_owned(), "db-password".to_owned()]);
    expected.sort();
    assert_eq!(names, expected);

    for value in ["two", "three"] {
        emulator
            .control_ok(
                reqwest::Method::PUT,
                "vaults/shop/secrets/db-password",
                Some(json!({"value": value})),
            )
            .await;
    }
    let options = SecretClientListSecretPropertiesVersionsOptions {
        maxresults: Some(2),
        ..SecretClientListSecretPropertiesVersionsOptions::default()
    };
    let versions: Vec<String> = client
        .list_secret_properties_versions("db-password", Some(options))
        .unwrap()
        .map_ok(|item| item.resource_id().unwrap().version.unwrap())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(versions.len(), 3);
    let latest = get_secret(&client, "db-password", None).await.unwrap();
    assert_eq!(versions.last(), Some(&version_of(&latest)));
}

#[tokio::test]
async fn sdk_surfaces_disabled_forbidden_and_missing_secrets_as_key_vault_errors() {
    let emulator = Emulator::start_standard().await;
    let reader = emulator.reader_client();

    let missing = get_secret(&reader, "no-such-secret", None)
        .await
        .unwrap_err();
    assert_eq!(
        service_error(&missing),
        (StatusCode::NotFound, "SecretNotFound".to_owned())
    );

    emulator
        .control_ok(
            reqwest::Method::PATCH,
            "vaults/shop/secrets/db-password",
            Some(json!({"enabled": false})),
        )
        .await;
    let disabled = get_secret(&reader, "db-password", None).await.unwrap_err();
    assert_eq!(
        service_error(&disabled),
        (StatusCode::Forbidden, "Forbidden".to_owned())
    );
    assert_eq!(inner_error_code(disabled), "SecretDisabled");

    let limited =
        emulator.secret_client("shop", emulator.secret_credential(LIMITED, LIMITED_SECRET));
    assert_eq!(
        get_secret(&limited, "api-key", None)
            .await
            .unwrap()
            .value
            .as_deref(),
        Some("k3y")
    );
    // A real RBAC message spans lines (`\r\n`), which azure_core cannot borrow while
    // parsing, so its `error_code` falls back to "403"; the inner code still reads.
    let denied = get_secret(&limited, "db-password", None).await.unwrap_err();
    assert_eq!(service_error(&denied).0, StatusCode::Forbidden);
    assert_eq!(inner_error_code(denied), "ForbiddenByRbac");

    // No grant on the vault `other` at all: listing it is refused too.
    let elsewhere =
        emulator.secret_client("other", emulator.secret_credential(READER, READER_SECRET));
    let listing = elsewhere
        .list_secret_properties(None)
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert_eq!(inner_error_code(listing), "ForbiddenByRbac");

    // Revoking access at runtime takes effect on the next call.
    emulator
        .control_ok(
            reqwest::Method::PUT,
            &format!("apps/{LIMITED}"),
            Some(json!({"tenantId": TENANT, "clientId": LIMITED, "clientSecret": LIMITED_SECRET, "access": []})),
        )
        .await;
    let revoked = get_secret(&limited, "api-key", None).await.unwrap_err();
    assert_eq!(inner_error_code(revoked), "ForbiddenByRbac");
}

#[tokio::test]
async fn sdk_writes_through_the_data_plane() {
    let emulator = Emulator::start_standard().await;
    let client = emulator.reader_client();

    let parameters = SetSecretParameters {
        value: Some("from-sdk".to_owned()),
        content_type: Some("text/plain".to_owned()),
        ..SetSecretParameters::default()
    };
    let created = client
        .set_secret("new-secret", parameters.try_into().unwrap(), None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    assert_eq!(created.value.as_deref(), Some("from-sdk"));

    let disable = UpdateSecretPropertiesParameters {
        secret_attributes: Some(SecretAttributes {
            enabled: Some(false),
            ..SecretAttributes::default()
        }),
        ..UpdateSecretPropertiesParameters::default()
    };
    let updated = client
        .update_secret_properties("new-secret", disable.try_into().unwrap(), None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    assert_eq!(updated.value, None, "updates do not echo the value");
    assert_eq!(updated.attributes.unwrap().enabled, Some(false));
    let disabled = get_secret(&client, "new-secret", None).await.unwrap_err();
    assert_eq!(inner_error_code(disabled), "SecretDisabled");

    client.delete_secret("new-secret", None).await.unwrap();
    let gone = get_secret(&client, "new-secret", None).await.unwrap_err();
    assert_eq!(service_error(&gone).1, "SecretNotFound");

    // The limited app may not write where it may not read.
    let limited =
        emulator.secret_client("shop", emulator.secret_credential(LIMITED, LIMITED_SECRET));
    let parameters = SetSecretParameters {
        value: Some("nope".to_owned()),
        ..SetSecretParameters::default()
    };
    let refused = limited
        .set_secret("db-password", parameters.try_into().unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(inner_error_code(refused), "ForbiddenByRbac");
}

#[tokio::test]
async fn a_wrong_client_secret_or_unknown_client_is_refused_with_its_aadsts_code() {
    let emulator = Emulator::start_standard().await;
    let wrong = emulator.secret_credential(READER, "not-the-password");
    let error = wrong.get_token(&[SCOPE], None).await.unwrap_err();
    assert_refused_with(&error, 7000215);

    let unknown = emulator.secret_credential("99999999-9999-9999-9999-999999999999", "x");
    let error = unknown.get_token(&[SCOPE], None).await.unwrap_err();
    assert_refused_with(&error, 700016);

    // The vault call through a failing credential fails with the same code.
    let client = emulator.secret_client(
        "shop",
        emulator.secret_credential(READER, "not-the-password"),
    );
    let error = get_secret(&client, "db-password", None).await.unwrap_err();
    assert_refused_with(&error, 7000215);
}

#[tokio::test]
async fn a_service_account_token_gets_a_workload_identity_in() {
    let emulator = Emulator::start_standard().await;
    let assertion = CLUSTER_KEY.sign(&service_account_claims());
    let client = emulator.secret_client("shop", emulator.workload_credential(WORKLOAD, &assertion));
    let secret = get_secret(&client, "db-password", None).await.unwrap();
    assert_eq!(secret.value.as_deref(), Some("s3cr3t"));

    let issued: Value = emulator
        .control_ok(reqwest::Method::GET, "issued", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(issued["clientAssertions"], json!([assertion]));
    assert_eq!(issued["accessTokens"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_service_account_tokens_are_refused_with_the_aadsts_code_entra_gives() {
    let emulator = Emulator::start_standard().await;
    let claims = service_account_claims;
    let with = |key: &str, value: Value| {
        let mut claims = claims();
        claims[key] = value;
        claims
    };
    let cases = [
        (
            "forged: right kid, other key",
            ATTACKER_KEY.sign(&claims()),
            700027,
        ),
        (
            "expired",
            CLUSTER_KEY.sign(&with("exp", json!(unix_now() - 600))),
            700024,
        ),
        (
            "wrong audience",
            CLUSTER_KEY.sign(&with("aud", json!(["api://other"]))),
            70021,
        ),
        (
            "wrong subject",
            CLUSTER_KEY.sign(&with("sub", json!("system:serviceaccount:shop:intruder"))),
            70021,
        ),
        (
            "wrong issuer",
            CLUSTER_KEY.sign(&with("iss", json!("https://other-cluster.test"))),
            70021,
        ),
        ("not a JWT", "not-a-jwt".to_owned(), 50027),
    ];
    for (case, assertion, expected_code) in cases {
        let credential = emulator.workload_credential(WORKLOAD, &assertion);
        let error = credential.get_token(&[SCOPE], None).await.unwrap_err();
        assert_refused_with(&error, expected_code);
        println!("{case}: refused as expected");
    }
    // A correct token for another app's federated credential does not open this one.
    let credential = emulator.workload_credential(READER, &CLUSTER_KEY.sign(&claims()));
    let error = credential.get_token(&[SCOPE], None).await.unwrap_err();
    assert_refused_with(&error, 70021);
}

#[tokio::test]
async fn revoking_a_federated_credential_at_runtime_refuses_the_next_token_request() {
    let emulator = Emulator::start_standard().await;
    let assertion = CLUSTER_KEY.sign(&service_account_claims());
    assert!(
        emulator
            .workload_credential(WORKLOAD, &assertion)
            .get_token(&[SCOPE], None)
            .await
            .is_ok()
    );
    emulator
        .control_ok(
            reqwest::Method::PUT,
            &format!("apps/{WORKLOAD}"),
            Some(json!({"tenantId": TENANT, "clientId": WORKLOAD, "access": [{"vault": "shop", "secrets": ["*"]}]})),
        )
        .await;
    let error = emulator
        .workload_credential(WORKLOAD, &assertion)
        .get_token(&[SCOPE], None)
        .await
        .unwrap_err();
    assert_refused_with(&error, 70021);
}

#[tokio::test]
async fn a_signing_key_rollover_refuses_every_token_issued_before_it() {
    let emulator = Emulator::start_standard().await;
    let url = format!(
        "{}secrets/db-password?api-version=2025-07-01",
        emulator.vault("shop")
    );
    let read = |token: String| {
        let request = emulator.http.get(&url).bearer_auth(token);
        async move { request.send().await.unwrap() }
    };
    let before = emulator.token(READER, READER_SECRET).await;
    assert_eq!(read(before.clone()).await.status(), 200);

    emulator
        .control_ok(reqwest::Method::POST, "tokens/rollover", None)
        .await;
    let refused = read(before).await;
    assert_eq!(refused.status(), 401);
    assert!(
        refused.headers().contains_key("www-authenticate"),
        "a challenge tells the client where to get a new token"
    );
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("AKV10022"),
        "{body}"
    );
    let after = emulator.token(READER, READER_SECRET).await;
    assert_eq!(read(after).await.status(), 200);
}

/// A client assertion exactly as azure_identity's ClientCertificateCredential
/// builds it (that credential needs OpenSSL, so its assertion is made here and
/// sent through the SDK's assertion path).
fn certificate_assertion(signer: &TestKey, certificate_der: &[u8], audience: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("JWT".to_owned());
    header.x5t = Some(STANDARD.encode(Sha1::digest(certificate_der)));
    let now = unix_now();
    let claims = json!({"aud": audience, "exp": now + 300, "iss": CERT_APP, "jti": "0f8fad5b-d9cb-469f-a165-70867728950e",
                        "nbf": now, "sub": CERT_APP});
    jsonwebtoken::encode(&header, &claims, &signer.encoding).unwrap()
}

#[tokio::test]
async fn certificate_assertions_are_checked_against_the_registered_certificate() {
    let emulator = Emulator::start_standard().await;
    let endpoint = format!(
        "{}{TENANT}/oauth2/v2.0/token",
        emulator.endpoints.authority_host
    );
    let certificate = &APP_CERTIFICATE.certificate_der;

    let good = certificate_assertion(&APP_CERTIFICATE, certificate, &endpoint);
    let client = emulator.secret_client("shop", emulator.workload_credential(CERT_APP, &good));
    assert_eq!(
        get_secret(&client, "api-key", None)
            .await
            .unwrap()
            .value
            .as_deref(),
        Some("k3y")
    );

    let cases = [
        (
            "signed by another key",
            certificate_assertion(&ATTACKER_KEY, certificate, &endpoint),
            700027,
        ),
        (
            "another certificate",
            certificate_assertion(&ATTACKER_KEY, &ATTACKER_KEY.certificate_der, &endpoint),
            700027,
        ),
        (
            "for another token endpoint",
            certificate_assertion(
                &APP_CERTIFICATE,
                certificate,
                &format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"),
            ),
            700023,
        ),
    ];
    for (case, assertion, expected_code) in cases {
        let error = emulator
            .workload_credential(CERT_APP, &assertion)
            .get_token(&[SCOPE], None)
            .await
            .unwrap_err();
        assert_refused_with(&error, expected_code);
        println!("{case}: refused as expected");
    }
}

/// Object keys of a JSON object, sorted.
fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

#[tokio::test]
async fn wire_shapes_match_key_vault() {
    let emulator = Emulator::start_standard().await;
    let vault = emulator.vault("shop");
    let http = &emulator.http;

    // 401 challenge before any token.
    let response = http
        .get(format!("{vault}secrets/db-password?api-version=2025-07-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        format!(
            r#"Bearer authorization="{}{TENANT}", resource="https://vault.azure.net""#,
            emulator.endpoints.authority_host
        )
        .as_str()
    );
    assert!(response.headers().contains_key("x-ms-request-id"));
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "Unauthorized"
    );

    let token = emulator.token(READER, READER_SECRET).await;
    let get = |path: &str| {
        http.get(format!("{vault}{path}"))
            .bearer_auth(&token)
            .send()
    };

    // 400 for an unsupported or missing api-version.
    for (query, named) in [
        ("?api-version=2016-10-01", "2016-10-01"),
        ("", "api-version"),
    ] {
        let response = get(&format!("secrets/db-password{query}")).await.unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "BadParameter");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(named),
            "{body}"
        );
    }

    // The bundle.
    let response = get("secrets/db-password/?api-version=7.6").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert!(response.headers().contains_key("x-ms-request-id"));
    let bundle: Value = response.json().await.unwrap();
    assert_eq!(
        keys(&bundle),
        ["attributes", "contentType", "id", "tags", "value"]
    );
    assert_eq!(bundle["value"], "s3cr3t");
    assert_eq!(bundle["tags"], json!({"env": "prod"}));
    let id = bundle["id"].as_str().unwrap();
    let version = id
        .strip_prefix(&format!("{vault}secrets/db-password/"))
        .unwrap();
    assert!(
        version.len() == 32
            && version
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{id}"
    );
    let attributes = &bundle["attributes"];
    assert_eq!(
        keys(attributes),
        [
            "created",
            "enabled",
            "recoverableDays",
            "recoveryLevel",
            "updated"
        ]
    );
    assert!(attributes["created"].is_i64() && attributes["updated"].is_i64());
    assert_eq!(attributes["enabled"], true);
    assert_eq!(attributes["recoverableDays"], 90);
    assert_eq!(attributes["recoveryLevel"], "Recoverable+Purgeable");
    // Absent fields are omitted, not null.
    let api_key: Value = get("secrets/api-key?api-version=7.5")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys(&api_key), ["attributes", "id", "value"]);

    // 404.
    let response = get("secrets/nope?api-version=7.6").await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.headers().contains_key("x-ms-request-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(keys(&body), ["error"]);
    assert_eq!(body["error"]["code"], "SecretNotFound");
    assert!(body["error"]["message"].as_str().unwrap().contains("nope"));

    // A list page: no values, unversioned ids, absolute nextLink with $skiptoken.
    let page: Value = get("secrets?api-version=2025-06-01&maxresults=1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys(&page), ["nextLink", "value"]);
    let item = &page["value"][0];
    assert_eq!(keys(item), ["attributes", "id"]);
    assert_eq!(item["id"], format!("{vault}secrets/api-key"));
    let next = page["nextLink"].as_str().unwrap();
    assert!(
        next.starts_with(&format!(
            "{vault}secrets?api-version=2025-06-01&$skiptoken="
        )),
        "{next}"
    );
    assert!(next.ends_with("&maxresults=1"), "{next}");
    let last: Value = http
        .get(next)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        last["value"][0]["id"],
        format!("{vault}secrets/db-password")
    );
    assert_eq!(last["nextLink"], Value::Null);

    // 429 from a fault, with and without Retry-After.
    for retry_after in [Some(3), None] {
        let mut kind = json!({"status": 429});
        if let Some(seconds) = retry_after {
            kind["retryAfterSeconds"] = json!(seconds);
        }
        emulator
            .control_ok(reqwest::Method::POST, "faults",
                Some(json!({"target": "vault:shop", "pathPrefix": "/secrets/db", "count": 1, "kind": kind})))
            .await;
        let response = get("secrets/db-password?api-version=7.6").await.unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
            retry_after.map(|s: u64| s.to_string())
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "Throttled");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("VaultRequestTypeLimitReached")
        );
    }
    assert_eq!(
        get("secrets/db-password?api-version=7.6")
            .await
            .unwrap()
            .status(),
        200,
        "faults are used up"
    );

    // Counters by route template.
    let counters = emulator.counters().await;
    assert_eq!(counters["byEndpoint"]["vault:shop GET /secrets/{name}"], 8);
    assert_eq!(counters["byEndpoint"]["vault:shop GET /secrets/{name}/"], 1);
    assert_eq!(counters["byEndpoint"]["vault:shop GET /secrets"], 2);
    assert_eq!(
        counters["byEndpoint"]["entra POST /{tenant}/oauth2/v2.0/token"],
        1
    );
    assert_eq!(counters["byStatus"]["429"], 2);
    assert_eq!(counters["byStatus"]["401"], 1);
    assert_eq!(counters["total"], 12);
    assert_eq!(counters["withBearerToken"], 10);
    emulator
        .control_ok(reqwest::Method::POST, "counters/reset", None)
        .await;
    assert_eq!(emulator.counters().await["total"], 0);
}

#[tokio::test]
async fn entra_errors_have_entras_shape() {
    let emulator = Emulator::start_standard().await;
    let response = emulator
        .token_request(&[
            ("client_id", READER),
            ("client_secret", "wrong"),
            ("grant_type", "client_credentials"),
            ("scope", SCOPE),
        ])
        .await;
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        keys(&body),
        [
            "correlation_id",
            "error",
            "error_codes",
            "error_description",
            "timestamp",
            "trace_id"
        ]
    );
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(body["error_codes"], json!([7000215]));
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS7000215: Invalid client secret provided.")
    );

    let wrong_scope = emulator
        .token_request(&[
            ("client_id", READER),
            ("client_secret", READER_SECRET),
            ("grant_type", "client_credentials"),
            ("scope", "https://management.azure.com/.default"),
        ])
        .await;
    assert_eq!(
        wrong_scope.json::<Value>().await.unwrap()["error_codes"],
        json!([70011])
    );

    let ok = emulator
        .token_request(&[
            ("client_id", READER),
            ("client_secret", READER_SECRET),
            ("grant_type", "client_credentials"),
            ("scope", SCOPE),
        ])
        .await;
    let body: Value = ok.json().await.unwrap();
    assert_eq!(
        keys(&body),
        ["access_token", "expires_in", "ext_expires_in", "token_type"]
    );
    assert_eq!(
        (&body["token_type"], &body["expires_in"]),
        (&json!("Bearer"), &json!(3599))
    );
}

#[tokio::test]
async fn a_hang_fault_times_a_client_out_and_a_500_fault_clears_after_its_count() {
    let emulator = Emulator::start_standard().await;
    let token = emulator.token(READER, READER_SECRET).await;
    let url = format!("{}secrets/api-key?api-version=7.6", emulator.vault("shop"));

    emulator
        .control_ok(reqwest::Method::POST, "faults",
            Some(json!({"target": "vault:shop", "method": "GET", "count": 1, "kind": {"hangMs": 30000}})))
        .await;
    let impatient = emulator
        .http
        .get(&url)
        .bearer_auth(&token)
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(impatient.unwrap_err().is_timeout());

    emulator
        .control_ok(reqwest::Method::POST, "faults",
            Some(json!({"target": "vault:shop", "pathPrefix": "/secrets/api", "count": 2, "kind": {"status": 500}})))
        .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            emulator
                .http
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [500, 500, 200]);
}

#[tokio::test]
async fn the_control_api_refuses_bad_requests_clearly() {
    let emulator = Emulator::start_standard().await;
    let cases = [
        (
            reqwest::Method::PUT,
            "vaults/nope/secrets/x",
            json!({"value": "v"}),
            404,
            "VaultNotFound",
        ),
        (
            reqwest::Method::PUT,
            "vaults/shop/secrets/bad_name",
            json!({"value": "v"}),
            400,
            "BadParameter",
        ),
        (
            reqwest::Method::PATCH,
            "vaults/shop/secrets/nope",
            json!({"enabled": false}),
            404,
            "SecretNotFound",
        ),
        (
            reqwest::Method::POST,
            "faults",
            json!({"target": "vault:nope", "count": 1, "kind": {"status": 500}}),
            400,
            "BadParameter",
        ),
        (
            reqwest::Method::PUT,
            &format!("apps/{READER}"),
            json!({"tenantId": TENANT, "clientId": "someone-else"}),
            400,
            "BadParameter",
        ),
        (
            reqwest::Method::PUT,
            "apps/x",
            json!({"tenantId": TENANT, "clientId": "x", "access": [{"vault": "nope", "secrets": ["*"]}]}),
            400,
            "BadParameter",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let response = emulator.control_request(method, path, Some(body)).await;
        assert_eq!(response.status().as_u16(), status, "{path}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["error"]["code"],
            code,
            "{path}"
        );
    }
    let garbage = emulator
        .http
        .post(emulator.control("faults"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    assert_eq!(
        emulator
            .http
            .get(emulator.control("healthz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
}

/// A minimal OIDC issuer like a kube-apiserver: discovery and JWKS over HTTPS,
/// only for callers with the right bearer token.
struct OidcIssuer {
    issuer: String,
    ca_file: PathBuf,
    token_file: PathBuf,
    requests: Arc<std::sync::atomic::AtomicUsize>,
    handle: axum_server::Handle,
}

impl Drop for OidcIssuer {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

async fn start_oidc_issuer(dir: &Path, key: &TestKey) -> OidcIssuer {
    use axum::http::{HeaderMap, StatusCode as HttpStatus};
    use axum::routing::get;
    const BEARER: &str = "Bearer issuer-discovery-token";

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let issuer = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let ca_file = dir.join("issuer-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let token_file = dir.join("issuer-token");
    std::fs::write(&token_file, "issuer-discovery-token\n").unwrap();

    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let authorized = {
        let requests = requests.clone();
        move |headers: &HeaderMap| {
            requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            headers.get("authorization").is_some_and(|v| v == BEARER)
        }
    };
    let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/openid/v1/jwks"),
                           "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                           "id_token_signing_alg_values_supported": ["RS256"]});
    let jwks = key.jwks();
    let router = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get({
                let authorized = authorized.clone();
                move |headers: HeaderMap| async move {
                    if authorized(&headers) {
                        Ok(axum::Json(discovery))
                    } else {
                        Err(HttpStatus::UNAUTHORIZED)
                    }
                }
            }),
        )
        .route(
            "/openid/v1/jwks",
            get(move |headers: HeaderMap| async move {
                if authorized(&headers) {
                    Ok(axum::Json(jwks))
                } else {
                    Err(HttpStatus::UNAUTHORIZED)
                }
            }),
        );
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .unwrap();
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls)),
    )
    .handle(handle.clone())
    .serve(router.into_make_service());
    tokio::spawn(server);
    OidcIssuer {
        issuer,
        ca_file,
        token_file,
        requests,
        handle,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_keys_come_from_oidc_discovery_with_a_ca_and_bearer_token() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let key = TestKey::generate("apiserver-key");
    let scratch = tempfile::tempdir().unwrap();
    let oidc = start_oidc_issuer(scratch.path(), &key).await;
    let issuer = oidc.issuer.clone();
    let seed = format!(
        r#"
vaults:
- name: shop
  secrets: [{{name: db-password, value: "s3cr3t"}}]
apps:
- tenantId: {TENANT}
  clientId: {WORKLOAD}
  federatedCredentials: [{{issuer: "{issuer}", subject: "{SERVICE_ACCOUNT}", audience: "{EXCHANGE_AUDIENCE}"}}]
  access: [{{vault: shop, secrets: ["*"]}}]
issuers:
- issuer: "{issuer}"
  caFile: {ca}
  bearerTokenFile: {token}
"#,
        ca = oidc.ca_file.display(),
        token = oidc.token_file.display(),
    );
    let emulator = Emulator::start(|_| seed).await;
    let mut claims = service_account_claims();
    claims["iss"] = json!(issuer);
    let sign = |key: &TestKey| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("apiserver-key".to_owned());
        jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap()
    };

    let client =
        emulator.secret_client("shop", emulator.workload_credential(WORKLOAD, &sign(&key)));
    assert_eq!(
        get_secret(&client, "db-password", None)
            .await
            .unwrap()
            .value
            .as_deref(),
        Some("s3cr3t")
    );
    assert_eq!(
        oidc.requests.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "discovery, then the JWKS"
    );

    let forged = emulator
        .workload_credential(WORKLOAD, &sign(&ATTACKER_KEY))
        .get_token(&[SCOPE], None)
        .await
        .unwrap_err();
    assert_refused_with(&forged, 700027);
}

#[tokio::test]
async fn the_emulator_exits_cleanly_on_sigterm_and_refuses_a_bad_seed() {
    let mut emulator = Emulator::start_standard().await;
    let state = emulator.dir.path().join("state");
    assert!(
        std::fs::read_to_string(state.join("ca.pem"))
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    let terminated = Command::new("kill")
        .arg("-TERM")
        .arg(emulator.child.id().to_string())
        .status()
        .unwrap();
    assert!(terminated.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = emulator.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(status.success(), "{status}");
    assert!(
        !state.join(ENDPOINTS_FILE).exists(),
        "endpoints.json is removed on exit"
    );

    let dir = tempfile::tempdir().unwrap();
    let seed_path = dir.path().join("seed.yaml");
    std::fs::write(
        &seed_path,
        "vaults: [{name: shop, tenantId: t, secrets: [{name: db, valu: x}]}]",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kvsync"))
        .args(["emulator", "--config"])
        .arg(&seed_path)
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr) + String::from_utf8_lossy(&output.stdout);
    assert!(stderr.contains("unknown field `valu`"), "{stderr}");
}
