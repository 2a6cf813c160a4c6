//! `target.template`: the Secret's data rendered from Jinja templates over
//! the fetched values — pure, no I/O.
//!
//! ```text
//!  fetched { key → bytes } ──▶ context: every key a variable (UTF-8, lossy),
//!                               `values` the whole map (for keys with dashes)
//!  templates (templateFrom items, then template.data: a later key wins)
//!     ──check (syntax; before any vault read)──▶ render each ──▶ { key → bytes }
//!  mergePolicy Merge: fetched ∪ rendered (rendered wins); Replace: rendered only
//!  no templates at all: the fetched data as it is (only type/metadata templated)
//! ```
//!
//! Engine: MiniJinja — maintained, small, no unsafe, sandboxed (no file or
//! network access), with a fuel limit so a template cannot spin the
//! operator. Undefined variables are errors, as in ESO. Go's whitespace
//! rules are kept (a trailing newline stays). The functions ESO users rely
//! on are filters with ESO's names: `b64enc`, `b64dec`, `toJson`, `fromJson`,
//! `quote`, `squote`, `filterPEM`, and `pkcs12key`/`pkcs12cert` (with
//! `…Pass(password)`: a PKCS#12 archive's key as PKCS#8 PEM, its
//! certificates as PEM, leaf first); Jinja has `upper`, `lower`, `trim`,
//! `replace`, `default` built in. A value that is not UTF-8 (a decoded
//! PFX) stays bytes, so that `pfx | pkcs12key` sees it whole.
//!
//! Messages name the Secret key and the template line, never a value: an
//! engine error's detail is kept only when it cannot hold one.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use minijinja::value::Serde;
use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};

use super::render::pem_blocks;
use crate::api::MergePolicy;

/// Instructions one template may run (MiniJinja fuel; ~64 bytes each).
const FUEL: u64 = 200_000;

/// Filters of ours, whose error details never hold a value.
const FILTERS: [&str; 11] = [
    "b64enc",
    "b64dec",
    "toJson",
    "fromJson",
    "quote",
    "squote",
    "filterPEM",
    "pkcs12key",
    "pkcs12keyPass",
    "pkcs12cert",
    "pkcs12certPass",
];

/// Why a template did not produce its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template text is not valid Jinja: the spec (or the ConfigMap/Secret
    /// holding it) must change.
    #[error("template for Secret key {key:?} is not valid (line {line}): {reason}")]
    Syntax {
        key: String,
        line: usize,
        reason: String,
    },
    /// The template failed on the fetched values (a missing key, a value that
    /// is not base64 or JSON…).
    #[error("template for Secret key {key:?} failed at line {line}: {reason}")]
    Render {
        key: String,
        line: usize,
        reason: String,
    },
}

/// Secret key → template text, in the order they apply.
pub type Templates = Vec<(String, String)>;

/// Checks that every template parses (no values needed).
pub fn check(templates: &Templates) -> Result<(), TemplateError> {
    let env = environment();
    for (key, source) in templates {
        env.template_from_str(source)
            .map_err(|error| TemplateError::Syntax {
                key: key.clone(),
                line: error.line().unwrap_or(0),
                reason: kind_and_detail(&error),
            })?;
    }
    Ok(())
}

/// The Secret's data: `templates` rendered over `fetched`, combined as `policy` says.
pub fn render(
    templates: &Templates,
    fetched: &BTreeMap<String, Vec<u8>>,
    policy: MergePolicy,
) -> Result<BTreeMap<String, Vec<u8>>, TemplateError> {
    if templates.is_empty() {
        return Ok(fetched.clone());
    }
    check(templates)?;
    let env = environment();
    let context = context(fetched);
    let mut data = match policy {
        MergePolicy::Merge => fetched.clone(),
        MergePolicy::Replace => BTreeMap::new(),
    };
    for (key, source) in templates {
        let rendered = env
            .render_str(source, &context)
            .map_err(|error| TemplateError::Render {
                key: key.clone(),
                line: error.line().unwrap_or(0),
                reason: safe_reason(&error),
            })?;
        data.insert(key.clone(), rendered.into_bytes());
    }
    Ok(data)
}

/// Every fetched key as a variable, and `values` holding them all.
fn context(fetched: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Value> {
    let values: BTreeMap<String, String> = fetched
        .iter()
        .map(|(key, bytes)| (key.clone(), String::from_utf8_lossy(bytes).into_owned()))
        .collect();
    let mut context: BTreeMap<String, Value> = fetched
        .iter()
        .map(|(key, bytes)| {
            let value = match std::str::from_utf8(bytes) {
                Ok(text) => Value::from(text),
                Err(_) => Value::from_bytes(bytes.clone()),
            };
            (key.clone(), value)
        })
        .collect();
    context
        .entry("values".into())
        .or_insert_with(|| Value::from(Serde(&values)));
    context
}

/// An engine error's kind and detail, without MiniJinja's ` (in <string>:N)`
/// suffix (the line is reported separately).
fn kind_and_detail(error: &minijinja::Error) -> String {
    match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    }
}

/// An engine error as a message that cannot hold a value: the kind always,
/// the detail only when it is ours or names something of the template.
fn safe_reason(error: &minijinja::Error) -> String {
    let detail_is_safe = match error.kind() {
        ErrorKind::UnknownFilter
        | ErrorKind::UnknownFunction
        | ErrorKind::UnknownTest
        | ErrorKind::MissingArgument
        | ErrorKind::TooManyArguments
        | ErrorKind::OutOfFuel => true,
        _ => error
            .detail()
            .is_some_and(|d| FILTERS.iter().any(|f| d.starts_with(&format!("{f}: ")))),
    };
    if detail_is_safe {
        kind_and_detail(error)
    } else {
        error.kind().to_string()
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .expect("the default delimiters are valid"),
    );
    env.add_filter("b64enc", b64enc);
    env.add_filter("b64dec", b64dec);
    env.add_filter("toJson", to_json);
    env.add_filter("fromJson", from_json);
    env.add_filter("quote", |value: &Value| quote(value, '"'));
    env.add_filter("squote", |value: &Value| quote(value, '\''));
    env.add_filter("filterPEM", filter_pem);
    env.add_filter("pkcs12key", |v: &Value| pkcs12(v, "", Pkcs12Part::Key));
    env.add_filter("pkcs12keyPass", |v: &Value, password: &str| {
        pkcs12(v, password, Pkcs12Part::Key)
    });
    env.add_filter("pkcs12cert", |v: &Value| {
        pkcs12(v, "", Pkcs12Part::Certificates)
    });
    env.add_filter("pkcs12certPass", |v: &Value, password: &str| {
        pkcs12(v, password, Pkcs12Part::Certificates)
    });
    env
}

fn failure(filter: &str, what: &str) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, format!("{filter}: {what}"))
}

/// The bytes of a string or bytes value; other values as they print.
fn bytes_of(value: &Value) -> Vec<u8> {
    match value.as_bytes() {
        Some(bytes) => bytes.to_vec(),
        None => value.to_string().into_bytes(),
    }
}

fn b64enc(value: &Value) -> String {
    STANDARD.encode(bytes_of(value))
}

fn b64dec(value: &Value) -> Result<Value, minijinja::Error> {
    let decoded = STANDARD
        .decode(bytes_of(value).trim_ascii())
        .map_err(|_| failure("b64dec", "the value is not valid base64"))?;
    Ok(match String::from_utf8(decoded) {
        Ok(text) => Value::from(text),
        Err(not_text) => Value::from_bytes(not_text.into_bytes()),
    })
}

fn to_json(value: &Value) -> Result<String, minijinja::Error> {
    serde_json::to_string(value)
        .map_err(|_| failure("toJson", "the value cannot be written as JSON"))
}

fn from_json(value: &Value) -> Result<Value, minijinja::Error> {
    let parsed: serde_json::Value = serde_json::from_slice(&bytes_of(value))
        .map_err(|_| failure("fromJson", "the value is not valid JSON"))?;
    Ok(Value::from(Serde(parsed)))
}

/// `quote`/`squote`: the value in quotes; `quote` escapes as a JSON string
/// (what Go's `%q` does for text).
fn quote(value: &Value, mark: char) -> String {
    let text = String::from_utf8_lossy(&bytes_of(value)).into_owned();
    match mark {
        '"' => serde_json::Value::String(text).to_string(),
        _ => format!("'{text}'"),
    }
}

/// `filterPEM("CERTIFICATE")`: only the PEM blocks of that type, in order.
fn filter_pem(value: &Value, kind: &str) -> Result<String, minijinja::Error> {
    let text = String::from_utf8_lossy(&bytes_of(value)).into_owned();
    let blocks: String = pem_blocks(&text)
        .into_iter()
        .filter(|(label, _)| label == kind)
        .map(|(_, block)| block)
        .collect();
    if blocks.is_empty() {
        return Err(failure(
            "filterPEM",
            &format!("no {kind} block in the value"),
        ));
    }
    Ok(blocks)
}

#[derive(Clone, Copy, PartialEq)]
enum Pkcs12Part {
    Key,
    Certificates,
}

/// A PKCS#12 archive's private key (PKCS#8 PEM) or certificates (PEM, leaf first).
fn pkcs12(value: &Value, password: &str, part: Pkcs12Part) -> Result<String, minijinja::Error> {
    let name = match part {
        Pkcs12Part::Key => "pkcs12key",
        Pkcs12Part::Certificates => "pkcs12cert",
    };
    let store = p12_keystore::KeyStore::from_pkcs12(
        &bytes_of(value),
        password,
        p12_keystore::Pkcs12ImportPolicy::Relaxed,
    )
    .map_err(|_| {
        failure(
            name,
            "the value is not a PKCS#12 archive this password opens",
        )
    })?;
    let chain = store.private_key_chain().map(|(_, chain)| chain);
    let pem = match (part, chain) {
        (Pkcs12Part::Key, Some(chain)) => pem("PRIVATE KEY", chain.key().as_der()),
        (Pkcs12Part::Certificates, Some(chain)) if !chain.certs().is_empty() => chain
            .certs()
            .iter()
            .map(|cert| pem("CERTIFICATE", cert.as_der()))
            .collect(),
        (Pkcs12Part::Certificates, _) => store
            .entries()
            .filter_map(|(_, entry)| match entry {
                p12_keystore::KeyStoreEntry::Certificate(cert) => {
                    Some(pem("CERTIFICATE", cert.as_der()))
                }
                _ => None,
            })
            .collect(),
        (Pkcs12Part::Key, None) => String::new(),
    };
    if pem.is_empty() {
        return Err(failure(name, "the archive holds no such entry"));
    }
    Ok(pem)
}

/// One PEM block, base64 in 64-character lines.
fn pem(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn one(key: &str, source: &str) -> Templates {
        vec![(key.into(), source.into())]
    }

    fn text(data: &BTreeMap<String, Vec<u8>>, key: &str) -> String {
        String::from_utf8(data[key].clone()).unwrap()
    }

    #[test]
    fn templates_build_connection_strings_and_config_files() {
        let values = fetched(&[
            ("user", "app"),
            ("password", "s3cr3t"),
            ("db-host", "db.local"),
        ]);
        let templates = vec![
            (
                "url".to_string(),
                "postgres://{{ user }}:{{ password }}@{{ values[\"db-host\"] }}/app".to_string(),
            ),
            (
                "config.yaml".to_string(),
                "user: {{ user | upper }}\npassword: {{ password | quote }}\n".to_string(),
            ),
        ];
        let data = render(&templates, &values, MergePolicy::Replace).unwrap();
        assert_eq!(text(&data, "url"), "postgres://app:s3cr3t@db.local/app");
        assert_eq!(
            text(&data, "config.yaml"),
            "user: APP\npassword: \"s3cr3t\"\n",
            "a trailing newline stays, as in Go"
        );
        assert_eq!(data.len(), 2, "Replace keeps only the rendered keys");

        let merged = render(
            &one("password", "{{ password | b64enc }}"),
            &values,
            MergePolicy::Merge,
        )
        .unwrap();
        assert_eq!(text(&merged, "password"), "czNjcjN0", "a rendered key wins");
        assert_eq!(text(&merged, "user"), "app", "Merge keeps the fetched keys");

        assert_eq!(
            render(&Vec::new(), &values, MergePolicy::Replace).unwrap(),
            values,
            "no templates: the fetched data as it is"
        );
    }

    #[test]
    fn eso_functions() {
        let values = fetched(&[
            ("json", r#"{"a":{"b":"deep"},"n":[1,2]}"#),
            ("encoded", "aGVsbG8="),
            ("spaced", "  x  "),
            ("empty", ""),
            (
                "bundle",
                "-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nC\n-----END CERTIFICATE-----\n",
            ),
        ]);
        let cases = [
            ("{{ (json | fromJson).a.b }}", "deep"),
            ("{{ (json | fromJson).n | toJson }}", "[1,2]"),
            ("{{ encoded | b64dec }}", "hello"),
            ("{{ spaced | trim | replace('x', 'y') | squote }}", "'y'"),
            ("{{ empty | default('fallback', true) }}", "fallback"),
            ("{{ 'A' | lower }}", "a"),
            (
                "{{ bundle | filterPEM('CERTIFICATE') }}",
                "-----BEGIN CERTIFICATE-----\nC\n-----END CERTIFICATE-----\n",
            ),
        ];
        for (source, expected) in cases {
            let data = render(&one("k", source), &values, MergePolicy::Replace).unwrap();
            assert_eq!(text(&data, "k"), expected, "{source}");
        }
    }

    /// A self-signed certificate and a key store holding it with its key.
    fn key_store() -> (rcgen::CertifiedKey<rcgen::KeyPair>, p12_keystore::KeyStore) {
        let issued = rcgen::generate_simple_self_signed(vec!["shop.example".into()]).unwrap();
        let key = p12_keystore::PrivateKey::from_der(&issued.signing_key.serialize_der()).unwrap();
        let cert = p12_keystore::Certificate::from_der(issued.cert.der()).unwrap();
        let mut store = p12_keystore::KeyStore::new();
        store.add_entry(
            "shop",
            p12_keystore::KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(
                b"0123456789abcdef0123".to_vec(),
                key,
                [cert],
            )),
        );
        (issued, store)
    }

    #[test]
    fn pkcs12_archives_give_their_key_and_certificate_as_pem() {
        let (issued, store) = key_store();
        let pfx = STANDARD.encode(store.writer("s3cret").write().unwrap());
        let values = fetched(&[("pfx", &pfx)]);
        let templates = vec![
            (
                "tls.key".to_string(),
                "{{ pfx | b64dec | pkcs12keyPass('s3cret') }}".to_string(),
            ),
            (
                "tls.crt".to_string(),
                "{{ pfx | b64dec | pkcs12certPass('s3cret') }}".to_string(),
            ),
        ];
        let data = render(&templates, &values, MergePolicy::Replace).unwrap();
        assert_eq!(text(&data, "tls.crt").trim(), issued.cert.pem().trim());
        assert_eq!(
            text(&data, "tls.key").trim(),
            issued.signing_key.serialize_pem().trim()
        );
        let wrong = render(
            &one("k", "{{ pfx | b64dec | pkcs12key }}"),
            &values,
            MergePolicy::Replace,
        );
        assert!(
            wrong.unwrap_err().to_string().contains("pkcs12key: "),
            "a wrong password is named"
        );
    }

    #[test]
    fn pkcs12_iteration_counts_beyond_a_million_are_refused_before_deriving() {
        let (_, store) = key_store();
        // 65,536 iterations (DER INTEGER 02 03 01 00 00) for every key
        // derivation and the MAC, then raised to 8,388,607 in place: deriving
        // that many would take the operator's CPU for minutes.
        let archive = store
            .writer("s3cret")
            .encryption_iterations(65_536)
            .mac_iterations(65_536)
            .write()
            .unwrap();
        let (count, raised) = (
            [0x02, 0x03, 0x01, 0x00, 0x00],
            [0x02, 0x03, 0x7f, 0xff, 0xff],
        );
        let mut bomb = archive.clone();
        let mut raised_at = 0;
        for at in 0..bomb.len().saturating_sub(count.len()) {
            if bomb[at..at + count.len()] == count {
                bomb[at..at + count.len()].copy_from_slice(&raised);
                raised_at += 1;
            }
        }
        assert!(raised_at >= 2, "the MAC's and a key derivation's counts");
        let values = fetched(&[("pfx", &STANDARD.encode(&bomb))]);
        let started = std::time::Instant::now();
        let refused = render(
            &one("k", "{{ pfx | b64dec | pkcs12keyPass('s3cret') }}"),
            &values,
            MergePolicy::Replace,
        );
        assert!(refused.is_err(), "8,388,607 iterations refused");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "refused before deriving ({:?})",
            started.elapsed()
        );
    }

    /// Template text a tenant may write: anything, and pieces of Jinja
    /// (filters, loops, arithmetic on huge numbers) strung together.
    fn template_source() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop::sample::select(vec![
            "{{ password }}",
            "{{ password | b64dec | pkcs12key }}",
            "{{ 'x' * 400000000 }}",
            "{{ password | indent(100000000000) }}",
            "{% for i in range(1000000000) %}{{ i }}{% endfor %}",
            "{{ values | toJson | fromJson | toJson }}",
            "{{ 9999999999999999999 * 9999999999999999999 }}",
            "{{ password[::-1] | replace('', 'xx') }}",
            "{% if %}",
            "{{",
            "}}",
            "{{ n | int + 1 }}",
        ]);
        prop_oneof![
            "\\PC{0,60}",
            prop::collection::vec(piece, 1..6).prop_map(|pieces| pieces.concat()),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn no_template_panics_or_runs_away(source in template_source()) {
            let values = fetched(&[("password", "hunter2"), ("n", "41")]);
            let started = std::time::Instant::now();
            if check(&one("k", &source)).is_ok() {
                let _ = render(&one("k", &source), &values, MergePolicy::Replace);
            }
            proptest::prop_assert!(started.elapsed() < std::time::Duration::from_secs(5));
        }
    }

    #[test]
    fn errors_name_key_and_line_but_never_a_value() {
        let values = fetched(&[("password", "hunter2"), ("n", "41")]);
        let syntax = check(&one("conf", "line one\n{{ password | }}")).unwrap_err();
        assert!(
            matches!(syntax, TemplateError::Syntax { line: 2, .. }),
            "{syntax:?}"
        );
        assert!(syntax.to_string().contains("\"conf\""), "{syntax}");

        for source in [
            "{{ password | b64dec }}",
            "{{ password | fromJson }}",
            "{{ password + 1 }}",
            "{{ -password }}",
            "{{ password | filterPEM('CERTIFICATE') }}",
            "\n\n{{ missing }}",
            "{{ password | nosuchfilter }}",
            "{% for i in range(100000) %}{{ password }}{% endfor %}",
        ] {
            let error = render(&one("k", source), &values, MergePolicy::Replace).unwrap_err();
            let message = error.to_string();
            assert!(!message.contains("hunter2"), "{source}: {message}");
            assert!(
                matches!(error, TemplateError::Render { .. }),
                "{source}: {message}"
            );
            assert!(message.contains("\"k\""), "{message}");
        }
        let error = render(
            &one("k", "\n\n{{ missing }}"),
            &values,
            MergePolicy::Replace,
        )
        .unwrap_err();
        assert!(
            matches!(error, TemplateError::Render { line: 3, .. }),
            "{error:?}"
        );
        let error = render(
            &one("k", "{{ n | nosuchfilter }}"),
            &values,
            MergePolicy::Replace,
        )
        .unwrap_err();
        assert!(error.to_string().contains("nosuchfilter"), "{error}");
    }
}
