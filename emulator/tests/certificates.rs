//! Raw HTTP: the certificates surface and certificate-backed secrets — the wire
//! shapes (managed, kid, content types, CertificateBundle) and Key Vault's errors.
//! The official Python SDK exercises the happy paths in python_sdk.rs.

mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use support::*;

/// A self-signed certificate with its key, as PEM (key first).
fn self_signed_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let certificate = rcgen::CertificateParams::new(vec!["wire.example".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    format!("{}{}", key.serialize_pem(), certificate.pem())
}

#[tokio::test]
async fn certificates_and_their_secrets_read_like_key_vault() {
    let emulator = Emulator::start_standard().await;
    let vault = emulator.vault("shop");
    let token = emulator.token(READER, READER_SECRET).await;
    let http = &emulator.http;
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = http
            .request(method, format!("{vault}{path}"))
            .bearer_auth(&token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let pem = self_signed_pem();

    // Import (base64 of PEM, as the SDKs send it), stored as PKCS#12.
    let (status, bundle) = call(
        reqwest::Method::POST,
        "certificates/wire-cert/import?api-version=7.6",
        Some(json!({"value": STANDARD.encode(&pem), "policy": {"secret_props": {"contentType": "application/x-pkcs12"}}})),
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    let id = bundle["id"].as_str().unwrap();
    let version = id.rsplit('/').next().unwrap();
    assert_eq!(id, format!("{vault}certificates/wire-cert/{version}"));
    assert_eq!(bundle["kid"], format!("{vault}keys/wire-cert/{version}"));
    assert_eq!(bundle["sid"], format!("{vault}secrets/wire-cert/{version}"));
    assert_eq!(bundle["policy"]["key_props"]["kty"], "EC");
    assert!(bundle["x5t"].is_string() && bundle["cer"].is_string());

    // Its secret: managed, with the key id, PKCS#12 unless asked otherwise.
    let (status, secret) = call(
        reqwest::Method::GET,
        "secrets/wire-cert?api-version=2026-04-01",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (&secret["managed"], &secret["kid"], &secret["contentType"]),
        (&json!(true), &bundle["kid"], &json!("application/x-pkcs12"))
    );
    let (_, as_pem) = call(
        reqwest::Method::GET,
        &format!("secrets/wire-cert/{version}?api-version=2025-07-01&outContentType=application/x-pem-file"),
        None,
    )
    .await;
    assert_eq!(as_pem["contentType"], "application/x-pem-file");
    assert_eq!(as_pem["value"].as_str().unwrap(), pem.replace("\r\n", "\n"));
    let (_, listing) = call(reqwest::Method::GET, "secrets?api-version=7.6", None).await;
    let item = listing["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["id"] == format!("{vault}secrets/wire-cert"))
        .unwrap();
    assert_eq!(item["managed"], true);
    assert!(item.get("kid").is_none(), "list items carry no kid: {item}");
    let (_, plain) = call(
        reqwest::Method::GET,
        "secrets/db-password?api-version=7.6",
        None,
    )
    .await;
    assert!(plain.get("managed").is_none() && plain.get("kid").is_none());

    // Key Vault's errors.
    let errors = [
        (
            "unknown outContentType",
            reqwest::Method::GET,
            "secrets/wire-cert?api-version=7.6&outContentType=text/plain",
            None,
            (400, "BadParameter"),
        ),
        (
            "not a certificate",
            reqwest::Method::GET,
            "certificates/db-password?api-version=7.6",
            None,
            (404, "CertificateNotFound"),
        ),
        (
            "name of a plain secret",
            reqwest::Method::POST,
            "certificates/db-password/import?api-version=7.6",
            Some(json!({"value": pem})),
            (409, "Conflict"),
        ),
        (
            "not a certificate value",
            reqwest::Method::POST,
            "certificates/other/import?api-version=7.6",
            Some(json!({"value": "bm90IGEgY2VydGlmaWNhdGU="})),
            (400, "BadParameter"),
        ),
    ];
    for (case, method, path, body, (status, code)) in errors {
        let (got, error) = call(method, path, body).await;
        assert_eq!(
            (got, error["error"]["code"].as_str()),
            (status, Some(code)),
            "{case}: {error}"
        );
    }
}
