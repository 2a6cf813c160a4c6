//! Entra ID through the official SDK (azure_identity): client secrets, workload
//! identity (federated service-account tokens, keys from a JWKS file or OIDC
//! discovery), certificate assertions, and changes at runtime through the control API.

mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Value, json};
use sha1::{Digest, Sha1};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use support::*;

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
            700212,
        ),
        (
            "wrong subject",
            CLUSTER_KEY.sign(&with("sub", json!("system:serviceaccount:shop:intruder"))),
            700213,
        ),
        (
            "wrong issuer",
            CLUSTER_KEY.sign(&with("iss", json!("https://other-cluster.test"))),
            700211,
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
    assert_refused_with(&error, 700211);
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
    assert_refused_with(&error, 700211);
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
    // Key Vault's continuous-access-evaluation answer: a claims challenge, the
    // signal for an SDK to bypass its token cache.
    let challenge = refused.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains(r#"error="insufficient_claims""#),
        "{challenge}"
    );
    let claims = challenge
        .split("claims=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no claims in {challenge}"));
    let claims: Value = serde_json::from_slice(&STANDARD.decode(claims).unwrap()).unwrap();
    let since: i64 = claims["access_token"]["nbf"]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(claims["access_token"]["nbf"]["essential"], true);
    assert!((since - unix_now()).abs() < 60, "{claims}");
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
