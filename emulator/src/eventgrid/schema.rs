//! The events a vault's system topic publishes, in the two schemas Event
//! Grid delivers them in — the pure part.
//!
//! ```text
//!  KeyVaultEvent {type, vault, object, version, nbf, exp}
//!     ├─ cloud_event()       CloudEvents 1.0: {id, source, specversion, type, subject, time, data}
//!     └─ event_grid_event()  Event Grid schema: {id, topic, subject, eventType, eventTime, data,
//!                                                dataVersion, metadataVersion}
//!  data (both): {Id, VaultName, ObjectType, ObjectName, Version, NBF, EXP}   (PascalCase, as Key Vault sends it)
//! ```
//!
//! `source`/`topic` is the vault's resource id
//! (`/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{vault}`),
//! `subject` the object's name; `NBF`/`EXP` are Unix seconds or null.

use serde_json::{Value, json};

/// The Key Vault event types the emulator publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    SecretNewVersionCreated,
    CertificateNewVersionCreated,
    VaultAccessPolicyChanged,
}

impl EventType {
    pub fn name(self) -> &'static str {
        match self {
            EventType::SecretNewVersionCreated => "Microsoft.KeyVault.SecretNewVersionCreated",
            EventType::CertificateNewVersionCreated => {
                "Microsoft.KeyVault.CertificateNewVersionCreated"
            }
            EventType::VaultAccessPolicyChanged => "Microsoft.KeyVault.VaultAccessPolicyChanged",
        }
    }

    fn object_type(self) -> &'static str {
        match self {
            EventType::SecretNewVersionCreated => "Secret",
            EventType::CertificateNewVersionCreated => "Certificate",
            EventType::VaultAccessPolicyChanged => "Vault",
        }
    }

    /// The collection in the object's URL (`Id`).
    fn collection(self) -> Option<&'static str> {
        match self {
            EventType::SecretNewVersionCreated => Some("secrets"),
            EventType::CertificateNewVersionCreated => Some("certificates"),
            EventType::VaultAccessPolicyChanged => None,
        }
    }
}

/// Where the vault lives in Azure Resource Manager (the events' `source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceGroup {
    pub subscription_id: String,
    pub name: String,
}

/// One event about one vault object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVaultEvent {
    pub event_type: EventType,
    pub vault: String,
    /// The vault's URL (`https://localhost:<port>/` here, `https://<vault>.vault.azure.net/` in Azure).
    pub vault_url: String,
    /// The secret or certificate (for a vault event: the vault's name).
    pub object: String,
    pub version: Option<String>,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
    /// RFC 3339 with 7 fractional digits, as Event Grid writes `time`.
    pub time: String,
    pub id: String,
}

impl KeyVaultEvent {
    /// An event happening now, with a fresh id.
    pub fn now(
        event_type: EventType,
        vault: &str,
        vault_url: &str,
        object: &str,
        version: Option<&str>,
        nbf: Option<i64>,
        exp: Option<i64>,
    ) -> Self {
        KeyVaultEvent {
            event_type,
            vault: vault.to_owned(),
            vault_url: vault_url.to_owned(),
            object: object.to_owned(),
            version: version.map(str::to_owned),
            nbf,
            exp,
            time: event_time(time::OffsetDateTime::now_utc()),
            id: uuid::Uuid::new_v4().hyphenated().to_string(),
        }
    }

    fn source(&self, group: &ResourceGroup) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.KeyVault/vaults/{}",
            group.subscription_id, group.name, self.vault
        )
    }

    fn data(&self) -> Value {
        let id = match (self.event_type.collection(), &self.version) {
            (Some(collection), Some(version)) => format!(
                "{}/{collection}/{}/{version}",
                self.vault_url.trim_end_matches('/'),
                self.object
            ),
            _ => self.vault_url.clone(),
        };
        json!({
            "Id": id,
            "VaultName": self.vault,
            "ObjectType": self.event_type.object_type(),
            "ObjectName": self.object,
            "Version": self.version,
            "NBF": self.nbf,
            "EXP": self.exp,
        })
    }

    /// The CloudEvents 1.0 form (namespace topics, and subscriptions with the
    /// CloudEvent schema).
    pub fn cloud_event(&self, group: &ResourceGroup) -> Value {
        json!({
            "id": self.id,
            "source": self.source(group),
            "specversion": "1.0",
            "type": self.event_type.name(),
            "subject": self.object,
            "time": self.time,
            "data": self.data(),
        })
    }

    /// The Event Grid schema form (subscriptions with the default schema).
    pub fn event_grid_event(&self, group: &ResourceGroup) -> Value {
        json!({
            "id": self.id,
            "topic": self.source(group),
            "subject": self.object,
            "eventType": self.event_type.name(),
            "eventTime": self.time,
            "data": self.data(),
            "dataVersion": "1",
            "metadataVersion": "1",
        })
    }
}

/// `2026-01-02T03:04:05.1234567Z`.
fn event_time(at: time::OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:7]Z"
    );
    at.format(FORMAT).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> ResourceGroup {
        ResourceGroup {
            subscription_id: "00000000-0000-0000-0000-000000000001".into(),
            name: "rg".into(),
        }
    }

    fn rotation() -> KeyVaultEvent {
        KeyVaultEvent {
            event_type: EventType::SecretNewVersionCreated,
            vault: "shop".into(),
            vault_url: "https://localhost:8443/".into(),
            object: "db-password".into(),
            version: Some("0123456789abcdef0123456789abcdef".into()),
            nbf: None,
            exp: Some(1_900_000_000),
            time: "2026-01-02T03:04:05.1234567Z".into(),
            id: "e1".into(),
        }
    }

    #[test]
    fn a_rotation_reads_as_key_vault_sends_it_in_both_schemas() {
        let source = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/shop";
        let data = json!({
            "Id": "https://localhost:8443/secrets/db-password/0123456789abcdef0123456789abcdef",
            "VaultName": "shop", "ObjectType": "Secret", "ObjectName": "db-password",
            "Version": "0123456789abcdef0123456789abcdef", "NBF": null, "EXP": 1_900_000_000,
        });
        assert_eq!(
            rotation().cloud_event(&group()),
            json!({"id": "e1", "source": source, "specversion": "1.0",
                   "type": "Microsoft.KeyVault.SecretNewVersionCreated", "subject": "db-password",
                   "time": "2026-01-02T03:04:05.1234567Z", "data": data})
        );
        assert_eq!(
            rotation().event_grid_event(&group()),
            json!({"id": "e1", "topic": source, "subject": "db-password",
                   "eventType": "Microsoft.KeyVault.SecretNewVersionCreated",
                   "eventTime": "2026-01-02T03:04:05.1234567Z", "data": data,
                   "dataVersion": "1", "metadataVersion": "1"})
        );
    }

    #[test]
    fn a_vault_event_names_the_vault() {
        let event = KeyVaultEvent {
            event_type: EventType::VaultAccessPolicyChanged,
            object: "shop".into(),
            version: None,
            exp: None,
            ..rotation()
        };
        let data = &event.cloud_event(&group())["data"];
        assert_eq!(data["ObjectType"], "Vault");
        assert_eq!(data["Id"], "https://localhost:8443/");
        assert!(
            event_time(time::OffsetDateTime::UNIX_EPOCH)
                .starts_with("1970-01-01T00:00:00.0000000Z")
        );
    }
}
