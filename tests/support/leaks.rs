//! The leak scan: no secret may show, in any form, where a user or a log
//! collector can read it. Every [`super::Fixture`] (and the reload tests'
//! own) runs it when its test ends (from `Drop` through [`scan_when_dropped`],
//! unless the test already failed), so no test has to remember.
//!
//! ```text
//!  secrets: the seed's values, every value set through the control API,
//!           client secrets, PEM private keys (each body line), and every
//!           access token and client assertion the emulator issued or saw
//!     └─ forms: raw, base64 (both alphabets, padded or not), JSON-escaped,
//!               and for a base64 value what it decodes to (Base64/Auto decoding)
//!  places:  the operator's log (RUST_LOG=trace), the namespace's events, every
//!           KeyVaultSecret status (conditions included), and the annotations
//!           of Deployments, StatefulSets and DaemonSets and their pod templates
//! ```
//!
//! Derived forms and values the tests set shorter than [`MIN_DERIVED`]
//! characters are left out: a 1-character value is in every log by chance.
//! Values the tests set are plain words (`app-alpha-6`), so they count only
//! as a whole word: not inside a generated name like `web-app-alpha-6b7c9`.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::{Api, ListParams};
use kvsync::api::KeyVaultSecret;
use serde_json::Value;

/// Shortest value (or derived form) searched for, apart from values named explicitly.
pub const MIN_DERIVED: usize = 8;

/// One scan, with everything it needs owned (it runs on a runtime of its own).
pub struct LeakScan {
    pub namespace: String,
    pub operator_log: String,
    /// The emulator's control API (its `issued` record), if the test ran one.
    pub control_url: Option<String>,
    /// Values named as secret: searched for raw whatever their length.
    pub named: Vec<String>,
    /// Values the test handled (vault values set): searched for if long enough.
    pub handled: Vec<String>,
    /// PEM private keys.
    pub private_keys: Vec<String>,
}

/// The forms `value` can leak in, besides itself.
pub fn derived_forms(value: &str) -> Vec<String> {
    let bytes = value.as_bytes();
    let mut forms: Vec<String> = [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .map(|engine| engine.encode(bytes))
        .collect();
    let escaped = serde_json::to_string(value).unwrap();
    forms.push(escaped[1..escaped.len() - 1].to_owned());
    forms.extend(
        [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
            .iter()
            .filter_map(|engine| engine.decode(value.trim()).ok())
            .filter_map(|decoded| String::from_utf8(decoded).ok()),
    );
    forms.retain(|form| form.len() >= MIN_DERIVED && form != value);
    forms
}

/// A PEM private key's body lines (any one is part of the key) and its forms.
fn pem_forms(pem: &str) -> Vec<String> {
    let mut forms: Vec<String> = pem
        .lines()
        .filter(|line| !line.starts_with("-----") && line.len() >= MIN_DERIVED)
        .map(str::to_owned)
        .collect();
    forms.extend(derived_forms(pem));
    forms
}

/// Whether `word` occurs in `text` not flanked by a letter or digit.
fn contains_word(text: &str, word: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    text.match_indices(word).any(|(start, _)| {
        !alnum(text[..start].chars().next_back())
            && !alnum(text[start + word.len()..].chars().next())
    })
}

/// Runs the scan `scan` makes, for a fixture's `Drop`: on a runtime of its
/// own (the test's may be gone), and not when the test already failed.
pub fn scan_when_dropped(scan: impl FnOnce() -> LeakScan) {
    if std::thread::panicking() {
        return;
    }
    if let Err(panic) = super::on_own_runtime(scan().run()) {
        std::panic::resume_unwind(panic);
    }
}

impl LeakScan {
    /// Panics naming the place and the kind of secret found, never the secret.
    pub async fn run(self) {
        let issued: Value = match &self.control_url {
            Some(url) => reqwest::get(format!("{url}issued"))
                .await
                .expect("the emulator's issued record")
                .json()
                .await
                .unwrap(),
            None => Value::Null,
        };
        let credentials: Vec<String> = ["accessTokens", "clientAssertions"]
            .iter()
            .flat_map(|k| issued[k].as_array().cloned().unwrap_or_default())
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect();
        let mut needles: Vec<(&str, String)> = Vec::new();
        for value in self.named.iter().chain(&credentials) {
            needles.push(("a secret value or credential", value.clone()));
        }
        let words: Vec<&String> = self
            .handled
            .iter()
            .filter(|v| v.len() >= MIN_DERIVED)
            .collect();
        for value in self.named.iter().chain(&self.handled).chain(&credentials) {
            for form in derived_forms(value) {
                needles.push(("an encoded or decoded secret value", form));
            }
        }
        for pem in &self.private_keys {
            for form in pem_forms(pem) {
                needles.push(("a private key", form));
            }
        }

        let haystacks = [
            ("operator log", self.operator_log.clone()),
            ("events", self.events().await),
            ("KeyVaultSecret statuses", self.statuses().await),
            ("workload annotations", self.workload_annotations().await),
        ];
        // All literals: one pass (the regex crate runs it as Aho-Corasick).
        let pattern = needles
            .iter()
            .map(|(_, needle)| regex::escape(needle))
            .collect::<Vec<_>>()
            .join("|");
        // (No needles: no pattern, which would match everywhere.)
        let literals = (!needles.is_empty()).then(|| {
            regex::RegexBuilder::new(&pattern)
                .size_limit(1 << 28)
                .build()
                .unwrap()
        });
        for (place, text) in &haystacks {
            let found = literals
                .as_ref()
                .and_then(|literals| literals.find(text))
                .map(|m| {
                    let kind = needles.iter().find(|(_, n)| n == m.as_str());
                    (kind.map_or("a secret", |(kind, _)| *kind), m.len())
                })
                .or_else(|| {
                    words
                        .iter()
                        .find(|word| contains_word(text, word))
                        .map(|word| ("a vault value set by the test", word.len()))
                });
            if let Some((kind, len)) = found {
                panic!(
                    "leak scan: the {place} of namespace {} contains {kind} ({len} chars)",
                    self.namespace
                );
            }
        }
    }

    async fn events(&self) -> String {
        let client = super::client().await;
        let events: Value = client
            .request(
                http::Request::get(format!("/api/v1/namespaces/{}/events", self.namespace))
                    .body(vec![])
                    .unwrap(),
            )
            .await
            .unwrap();
        events.to_string()
    }

    async fn statuses(&self) -> String {
        let api: Api<KeyVaultSecret> = Api::namespaced(super::client().await, &self.namespace);
        let list = api.list(&ListParams::default()).await.unwrap();
        serde_json::to_string(&list.items.iter().map(|k| &k.status).collect::<Vec<_>>()).unwrap()
    }

    async fn workload_annotations(&self) -> String {
        let client = super::client().await;
        let ns = &self.namespace;
        let mut annotations = Vec::new();
        for d in Api::<Deployment>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            annotations.push(d.metadata.annotations);
            annotations.push(d.spec.and_then(|s| s.template.metadata?.annotations));
        }
        for s in Api::<StatefulSet>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            annotations.push(s.metadata.annotations);
            annotations.push(s.spec.and_then(|s| s.template.metadata?.annotations));
        }
        for d in Api::<DaemonSet>::namespaced(client, ns)
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            annotations.push(d.metadata.annotations);
            annotations.push(d.spec.and_then(|s| s.template.metadata?.annotations));
        }
        serde_json::to_string(&annotations).unwrap()
    }
}
