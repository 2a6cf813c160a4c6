//! `dataFrom.certificate` end to end: certificates imported into the emulator
//! (stored as PKCS#12 or PEM, as Key Vault's certificate-backed secrets are)
//! arrive in a `kubernetes.io/tls` Secret as the full chain and the leaf's key.

mod support;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
    PKCS_RSA_SHA256,
};
use reqwest::Method;
use rustls_pki_types::pem::{PemObject, SectionKind};
use serde_json::json;
use support::*;

/// A leaf for `name` signed by an intermediate signed by a root.
struct Chain {
    leaf_key: KeyPair,
    /// DER, leaf first.
    certificates: Vec<Vec<u8>>,
    /// Private key, then the certificates (PEM).
    pem: String,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
}

fn chain(name: &str, leaf_key: KeyPair) -> Chain {
    let root_key = KeyPair::generate().unwrap();
    let root = ca_params("test root").self_signed(&root_key).unwrap();
    let intermediate_key = KeyPair::generate().unwrap();
    let intermediate = ca_params("test intermediate")
        .signed_by(
            &intermediate_key,
            &Issuer::new(ca_params("test root"), root_key),
        )
        .unwrap();
    let leaf = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(
            &leaf_key,
            &Issuer::new(ca_params("test intermediate"), intermediate_key),
        )
        .unwrap();
    let pem = format!(
        "{}{}{}{}",
        leaf_key.serialize_pem(),
        leaf.pem(),
        intermediate.pem(),
        root.pem()
    );
    Chain {
        certificates: [&leaf, &intermediate, &root]
            .map(|c| c.der().to_vec())
            .to_vec(),
        leaf_key,
        pem,
    }
}

/// The DER of every PEM section of `kind` in `text`.
fn sections(text: &str, kind: SectionKind) -> Vec<Vec<u8>> {
    <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes())
        .map(Result::unwrap)
        .filter(|(found, _)| *found == kind)
        .map(|(_, der)| der)
        .collect()
}

fn assert_tls_secret_holds(data: &std::collections::BTreeMap<String, String>, chain: &Chain) {
    assert_eq!(
        sections(&data["tls.crt"], SectionKind::Certificate),
        chain.certificates,
        "tls.crt is the whole chain, leaf first"
    );
    assert_eq!(
        sections(&data["tls.key"], SectionKind::PrivateKey),
        vec![chain.leaf_key.serialize_der()],
        "tls.key is the leaf's key"
    );
    assert!(!data["tls.key"].contains("CERTIFICATE"));
}

/// Imports `chain` as certificate `name` of vault `shop`, stored as `content_type`.
async fn import(
    emulator: &Emulator,
    name: &str,
    chain: &Chain,
    content_type: &str,
) -> serde_json::Value {
    emulator
        .control(
            Method::PUT,
            &format!("vaults/shop/certificates/{name}"),
            Some(json!({"value": chain.pem, "contentType": content_type})),
        )
        .await
}

#[tokio::test]
async fn imported_certificates_sync_as_tls_chain_and_key_from_pkcs12_and_pem() {
    let f = Fixture::new("certs").await;
    // The service account's app may read the certificates too.
    let mut registration = sa_app_registration(&f.issuer, &f.ns.name, true);
    registration["access"] = json!([{"vault": "shop", "secrets": ["*"]}]);
    f.emulator
        .control(Method::PUT, &format!("apps/{SA_APP}"), Some(registration))
        .await;

    let ec = chain(
        "ec.shop.example",
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
    );
    let rsa = chain(
        "rsa.shop.example",
        KeyPair::generate_for(&PKCS_RSA_SHA256).unwrap(),
    );
    let emulator = &f.emulator;
    let stored = import(emulator, "ec-cert", &ec, "application/x-pkcs12").await;
    assert_eq!(
        (&stored["contentType"], &stored["managed"]),
        (&json!("application/x-pkcs12"), &json!(true))
    );
    let stored = import(emulator, "rsa-cert", &rsa, "application/x-pem-file").await;
    assert_eq!(stored["contentType"], "application/x-pem-file");

    for (name, certificate) in [("ec-tls", "ec-cert"), ("rsa-tls", "rsa-cert")] {
        f.apply(
            name,
            json!({"refreshInterval": "2s", "target": {"type": "kubernetes.io/tls"},
                   "dataFrom": [{"certificate": {"name": certificate}}]}),
        )
        .await;
    }
    f.wait_reason("ec-tls", "Synced").await;
    f.wait_reason("rsa-tls", "Synced").await;
    assert_tls_secret_holds(&f.secret_data("ec-tls").await.unwrap(), &ec);
    assert_tls_secret_holds(&f.secret_data("rsa-tls").await.unwrap(), &rsa);
    let secret = f.secrets().get("ec-tls").await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));

    // A renewed certificate (a new version of the same name) reaches the Secret.
    let renewed = chain(
        "ec.shop.example",
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
    );
    import(emulator, "ec-cert", &renewed, "application/x-pkcs12").await;
    let (fixture, expected) = (&f, &renewed.certificates);
    eventually(
        "the renewed certificate in ec-tls",
        WAIT,
        move || async move {
            let data = fixture.secret_data("ec-tls").await?;
            (sections(&data["tls.crt"], SectionKind::Certificate) == *expected).then_some(data)
        },
    )
    .await;
    assert_tls_secret_holds(&f.secret_data("ec-tls").await.unwrap(), &renewed);
    // No private key material in logs, events or statuses.
    let key_lines: Vec<String> = [&ec, &rsa, &renewed]
        .iter()
        .map(|chain| {
            chain
                .leaf_key
                .serialize_pem()
                .lines()
                .nth(1)
                .unwrap()
                .to_owned()
        })
        .collect();
    f.assert_nothing_leaked(&key_lines.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
}
