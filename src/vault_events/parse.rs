//! What an event asks of kvsync — the pure part: lenient about the form,
//! strict about what it lets through.
//!
//! ```text
//!  queue message text ── plain JSON, or base64 of it ──┐
//!  namespace receive ─── the CloudEvent object ────────┤
//!                                                      ▼
//!  CloudEvents 1.0 {type, source, subject, data | data_base64}   or
//!  Event Grid schema {eventType, topic, subject, data}
//!     type  SecretNewVersionCreated, CertificateNewVersionCreated ─▶ Hint {vault, Some(name)}
//!           VaultAccessPolicyChanged ──────────────────────────────▶ Hint {vault, None}
//!           anything else ─────────────────────────────────────────▶ Ignored::UnsupportedType
//!     vault from source/topic `/subscriptions/…/resourceGroups/…/providers/Microsoft.KeyVault/vaults/{vault}`,
//!           data.VaultName (if present) must agree ─▶ else Ignored::ForgedSource
//!     name  data.ObjectName, else subject (they must agree), a valid secret name
//! ```
//!
//! `data` keys are read in PascalCase (as Key Vault sends them) or camelCase;
//! `Id`, `Version`, `NBF`, `EXP` and every other field are never read, so
//! whatever form they take (numbers, strings, null) cannot matter: an event
//! is a hint to read the vault, never data. Names are checked against Key
//! Vault's own rules, so a hostile event cannot smuggle anything into a
//! label, a log line or a request path.

use std::sync::LazyLock;

use base64::Engine;
use serde_json::{Map, Value};

/// The largest event kvsync reads (Key Vault's are well under 1 KiB; a
/// storage queue message is at most 64 KiB).
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

static VAULT_NAME: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new("^[a-zA-Z](?:[a-zA-Z0-9]|-[a-zA-Z0-9]){2,23}$").expect("valid regex")
});
static SECRET_NAME: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new("^[0-9a-zA-Z-]{1,127}$").expect("valid regex"));

/// What an event asks: look at `name` (`None`: anything) in vault `vault`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Hint {
    /// The vault's name, lower case.
    pub vault: String,
    pub name: Option<String>,
}

/// Why an event leads to no read (also the `reason` label of
/// `kvsync_vault_events_ignored_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ignored {
    /// Not an event, or without what a Key Vault event always has.
    Malformed,
    TooLarge,
    /// An event kvsync does not act on (expiry notices, keys, …).
    UnsupportedType,
    /// Its source is not a vault, or disagrees with the vault its data names.
    ForgedSource,
    /// No KeyVaultSecret reads the vault it names.
    UnknownVault,
    /// The same event (source and id) again: at-least-once delivery.
    Duplicate,
    /// Folded into a read of the same name already due.
    Coalesced,
}

impl Ignored {
    pub fn reason(self) -> &'static str {
        match self {
            Ignored::Malformed => "malformed",
            Ignored::TooLarge => "too_large",
            Ignored::UnsupportedType => "unsupported_type",
            Ignored::ForgedSource => "forged_source",
            Ignored::UnknownVault => "unknown_vault",
            Ignored::Duplicate => "duplicate",
            Ignored::Coalesced => "coalesced",
        }
    }

    /// Whether the event should be rejected (dead-lettered, for someone to
    /// look at) rather than acknowledged: only what is not an event at all.
    pub fn rejected(self) -> bool {
        matches!(self, Ignored::Malformed | Ignored::TooLarge)
    }
}

/// An event read: its identity (for duplicates) and what it asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// `source` + `id`, when the event has an id.
    pub identity: Option<String>,
    pub hint: Hint,
}

/// The events in a storage queue message: JSON (one event or an array of
/// them), as is or base64-encoded.
pub fn queue_message(text: &str) -> Result<Vec<Value>, Ignored> {
    if text.len() > MAX_EVENT_BYTES {
        return Err(Ignored::TooLarge);
    }
    let trimmed = text.trim();
    let json = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        serde_json::from_str(trimmed).map_err(|_| Ignored::Malformed)?
    } else {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(trimmed)
            .map_err(|_| Ignored::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| Ignored::Malformed)?
    };
    match json {
        Value::Array(events) => Ok(events),
        event @ Value::Object(_) => Ok(vec![event]),
        _ => Err(Ignored::Malformed),
    }
}

/// The key of `object` in PascalCase or camelCase (`VaultName`, `vaultName`).
fn field<'a>(object: &'a Map<String, Value>, pascal: &str) -> Option<&'a Value> {
    object.get(pascal).or_else(|| {
        let mut camel = pascal.to_owned();
        camel[..1].make_ascii_lowercase();
        object.get(&camel)
    })
}

fn text<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    field(object, key).and_then(Value::as_str)
}

/// `data`, or the JSON in CloudEvents' `data_base64`.
fn data(event: &Map<String, Value>) -> Option<Map<String, Value>> {
    match event.get("data") {
        Some(Value::Object(data)) => Some(data.clone()),
        Some(_) => None,
        None => {
            let encoded = event.get("data_base64")?.as_str()?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()?;
            match serde_json::from_slice(&bytes).ok()? {
                Value::Object(data) => Some(data),
                _ => None,
            }
        }
    }
}

/// The vault named by a Key Vault resource id, if `source` is one.
fn vault_of_source(source: &str) -> Option<&str> {
    let segments: Vec<&str> = source.trim_start_matches('/').split('/').collect();
    let [
        subscriptions,
        _,
        resource_groups,
        _,
        providers,
        namespace,
        vaults,
        vault,
    ] = segments.as_slice()
    else {
        return None;
    };
    let fixed = [
        (subscriptions, "subscriptions"),
        (resource_groups, "resourceGroups"),
        (providers, "providers"),
        (namespace, "Microsoft.KeyVault"),
        (vaults, "vaults"),
    ];
    fixed
        .iter()
        .all(|(segment, expected)| segment.eq_ignore_ascii_case(expected))
        .then_some(*vault)
}

/// Reads one event (CloudEvents 1.0 or Event Grid schema).
pub fn event(event: &Value) -> Result<Parsed, Ignored> {
    let Value::Object(event) = event else {
        return Err(Ignored::Malformed);
    };
    let cloud_event = event.contains_key("specversion");
    let (type_key, source_key) = if cloud_event {
        ("type", "source")
    } else {
        ("eventType", "topic")
    };
    let event_type = text(event, type_key).ok_or(Ignored::Malformed)?;
    let source = text(event, source_key).ok_or(Ignored::Malformed)?;
    let wants_name = match event_type.to_ascii_lowercase().as_str() {
        "microsoft.keyvault.secretnewversioncreated"
        | "microsoft.keyvault.certificatenewversioncreated" => true,
        "microsoft.keyvault.vaultaccesspolicychanged" => false,
        _ => return Err(Ignored::UnsupportedType),
    };
    let vault = vault_of_source(source).ok_or(Ignored::ForgedSource)?;
    if !VAULT_NAME.is_match(vault) {
        return Err(Ignored::ForgedSource);
    }
    let data = data(event).unwrap_or_default();
    if let Some(named) = field(&data, "VaultName")
        && named
            .as_str()
            .is_none_or(|named| !named.eq_ignore_ascii_case(vault))
    {
        return Err(Ignored::ForgedSource);
    }
    let name = if wants_name {
        let object = text(&data, "ObjectName");
        let subject = text(event, "subject");
        let name = match (object, subject) {
            (Some(object), Some(subject)) if object != subject => return Err(Ignored::Malformed),
            (Some(name), _) | (None, Some(name)) => name,
            (None, None) => return Err(Ignored::Malformed),
        };
        if !SECRET_NAME.is_match(name) {
            return Err(Ignored::Malformed);
        }
        Some(name.to_owned())
    } else {
        None
    };
    let identity = text(event, "id").map(|id| format!("{}\n{id}", source.to_ascii_lowercase()));
    Ok(Parsed {
        identity,
        hint: Hint {
            vault: vault.to_ascii_lowercase(),
            name,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SOURCE: &str =
        "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/Shop";

    fn cloud_event(data: Value) -> Value {
        json!({"id": "e1", "source": SOURCE, "specversion": "1.0",
               "type": "Microsoft.KeyVault.SecretNewVersionCreated", "subject": "db-password",
               "time": "2026-01-02T03:04:05.1234567Z", "data": data})
    }

    fn db_password() -> Hint {
        Hint {
            vault: "shop".into(),
            name: Some("db-password".into()),
        }
    }

    #[test]
    fn key_vault_events_read_in_either_schema_and_any_data_casing() {
        let pascal = json!({"Id": "https://shop.vault.azure.net/secrets/db-password/abc", "VaultName": "shop",
                            "ObjectType": "Secret", "ObjectName": "db-password", "Version": "abc",
                            "NBF": 1_700_000_000, "EXP": "1900000000"});
        let camel = json!({"id": "x", "vaultName": "SHOP", "objectType": "Secret",
                           "objectName": "db-password", "version": null, "nbf": null, "exp": null});
        for data in [pascal, camel, json!({})] {
            assert_eq!(event(&cloud_event(data)).unwrap().hint, db_password());
        }
        let grid = json!({"id": "e2", "topic": SOURCE, "subject": "db-password",
                          "eventType": "Microsoft.KeyVault.CertificateNewVersionCreated",
                          "eventTime": "2026-01-02T03:04:05Z", "data": {"ObjectName": "db-password"},
                          "dataVersion": "1", "metadataVersion": "1"});
        let parsed = event(&grid).unwrap();
        assert_eq!(parsed.hint, db_password());
        assert_eq!(
            parsed.identity.as_deref(),
            Some(format!("{}\ne2", SOURCE.to_lowercase()).as_str())
        );
        let encoded = base64::engine::general_purpose::STANDARD.encode(r#"{"VaultName":"shop"}"#);
        let mut binary = cloud_event(json!(null));
        binary.as_object_mut().unwrap().remove("data");
        binary["data_base64"] = json!(encoded);
        assert_eq!(event(&binary).unwrap().hint, db_password());
        let mut policy = cloud_event(json!({"ObjectType": "Vault"}));
        policy["type"] = json!("Microsoft.KeyVault.VaultAccessPolicyChanged");
        assert_eq!(
            event(&policy).unwrap().hint,
            Hint {
                vault: "shop".into(),
                name: None
            }
        );
    }

    #[test]
    fn what_is_not_a_key_vault_event_of_interest_is_ignored_with_its_reason() {
        let with = |key: &str, value: Value| {
            let mut e = cloud_event(json!({"VaultName": "shop"}));
            e[key] = value;
            e
        };
        let cases = [
            (json!("not an object"), Ignored::Malformed),
            (with("type", json!(null)), Ignored::Malformed),
            (
                with("type", json!("Microsoft.KeyVault.SecretNearExpiry")),
                Ignored::UnsupportedType,
            ),
            (
                with("type", json!("Microsoft.Storage.BlobCreated")),
                Ignored::UnsupportedType,
            ),
            (
                with(
                    "source",
                    json!(
                        "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/shop"
                    ),
                ),
                Ignored::ForgedSource,
            ),
            (
                with("source", json!("https://evil.example/")),
                Ignored::ForgedSource,
            ),
            (
                with(
                    "source",
                    json!(
                        "/subscriptions/0/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/a"
                    ),
                ),
                Ignored::ForgedSource,
            ),
            (
                with("data", json!({"VaultName": "other"})),
                Ignored::ForgedSource,
            ),
            (with("data", json!({"VaultName": 7})), Ignored::ForgedSource),
            (
                with("data", json!({"ObjectName": "other-name"})),
                Ignored::Malformed,
            ),
            (with("subject", json!("../../etc")), Ignored::Malformed),
        ];
        for (input, expected) in cases {
            assert_eq!(event(&input).map(|p| p.hint), Err(expected), "{input}");
        }
        let mut nameless = cloud_event(json!({}));
        nameless.as_object_mut().unwrap().remove("subject");
        assert_eq!(event(&nameless).map(|p| p.hint), Err(Ignored::Malformed));
    }

    #[test]
    fn queue_messages_are_json_or_base64_json_within_bounds() {
        let one = cloud_event(json!({})).to_string();
        let base64 = base64::engine::general_purpose::STANDARD.encode(&one);
        assert_eq!(queue_message(&one).unwrap().len(), 1);
        assert_eq!(queue_message(&base64).unwrap().len(), 1);
        assert_eq!(queue_message(&format!("[{one},{one}]")).unwrap().len(), 2);
        assert_eq!(queue_message("%%%"), Err(Ignored::Malformed));
        assert_eq!(queue_message("\"a string\""), Err(Ignored::Malformed));
        assert_eq!(
            queue_message(&"x".repeat(MAX_EVENT_BYTES + 1)),
            Err(Ignored::TooLarge)
        );
    }
}
