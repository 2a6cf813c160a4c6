//! Vault contents: secrets, their versions, enable/disable and paging.
//!
//! Pure state with no HTTP and no clock: callers pass `now` (Unix seconds) and the
//! id of a new version, so every rule here is unit-tested deterministically.
//!
//! ```text
//! VaultStore ── vault name ──▶ Vault ── secret name ──▶ [SecretVersion, …]   (oldest first;
//!                                 (BTreeMap: listing      the last one is "latest")
//!                                  order is by name)
//! ```
//!
//! Key Vault keeps every version of a secret and addresses the newest one when no
//! version is given; a disabled version keeps its attributes but its value can no
//! longer be read. Deleting a secret removes all its versions at once (the emulator
//! purges immediately; it has no soft-delete state).
//!
//! Paging uses a cursor, not an offset: the skip token names the last item of the
//! previous page, so pages stay correct while secrets are added or removed.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// Key Vault's limits for secrets.
pub const MAX_VALUE_BYTES: usize = 25 * 1024;
pub const MAX_TAGS: usize = 15;
pub const MAX_CONTENT_TYPE_CHARS: usize = 255;
/// Largest (and default) page size of the list operations.
pub const MAX_PAGE_SIZE: usize = 25;

static SECRET_NAME: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new("^[0-9a-zA-Z-]{1,127}$").expect("valid regex"));

/// What can go wrong when reading or changing a vault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("vault {0} does not exist")]
    VaultNotFound(String),
    #[error("A secret with (name/id) {0} was not found in this key vault.")]
    SecretNotFound(String),
    #[error("A certificate with (name/id) {0} was not found in this key vault.")]
    CertificateNotFound(String),
    #[error("Secret {0} is not backed by a certificate, so a certificate cannot take its name.")]
    NameTaken(String),
    #[error("Operation get is not allowed on a disabled secret.")]
    SecretDisabled,
    #[error("Secret name '{0}' is invalid: it must match ^[0-9a-zA-Z-]{{1,127}}$.")]
    InvalidName(String),
    #[error("The secret value is {0} bytes long; the limit is {MAX_VALUE_BYTES} bytes.")]
    ValueTooLarge(usize),
    #[error("A secret may have at most {MAX_TAGS} tags; {0} were given.")]
    TooManyTags(usize),
    #[error("The content type may have at most {MAX_CONTENT_TYPE_CHARS} characters.")]
    ContentTypeTooLong,
    #[error("The value of the $skiptoken parameter is invalid.")]
    InvalidSkipToken,
    #[error("Invalid maxresults {0}: it must be between 1 and {MAX_PAGE_SIZE}.")]
    InvalidMaxResults(String),
}

/// A version id: 32 lowercase hexadecimal characters, as Key Vault uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct VersionId(String);

impl VersionId {
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Accepts only the canonical form, so a malformed version is simply "not found".
    pub fn parse(text: &str) -> Option<Self> {
        let canonical = text.len() == 32
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        canonical.then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A new version of a secret: the body of a control-API `PUT` and the seed's secrets.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewSecret {
    pub value: String,
    pub content_type: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub enabled: Option<bool>,
    /// Not-before, Unix seconds (informational, as in Key Vault).
    pub nbf: Option<i64>,
    /// Expiry, Unix seconds (informational, as in Key Vault).
    pub exp: Option<i64>,
}

/// Changes to one version's attributes; absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretUpdate {
    pub enabled: Option<bool>,
    pub tags: Option<BTreeMap<String, String>>,
    pub content_type: Option<String>,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
}

/// One version of one secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretVersion {
    pub name: String,
    pub version: VersionId,
    pub value: String,
    pub content_type: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub enabled: bool,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
    pub created: i64,
    pub updated: i64,
    /// Backs a certificate (Key Vault's `managed: true`): the value is the
    /// certificate with its key, PKCS#12 or PEM as `content_type` says.
    pub managed: bool,
}

/// Which page of a listing to return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub max_results: usize,
    /// Decoded skip token: the key of the last item already returned.
    pub after: Option<String>,
}

impl PageRequest {
    /// Validates the raw `maxresults` and `$skiptoken` query parameters.
    pub fn from_query(
        max_results: Option<&str>,
        skip_token: Option<&str>,
    ) -> Result<Self, StoreError> {
        let max_results = match max_results {
            None => MAX_PAGE_SIZE,
            Some(raw) => raw
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
                .ok_or_else(|| StoreError::InvalidMaxResults(raw.to_owned()))?,
        };
        let after = skip_token.map(decode_skip_token).transpose()?;
        Ok(Self { max_results, after })
    }
}

/// One page of a listing; `next_skip_token` is `None` on the last page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_skip_token: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct SkipTokenBody {
    #[serde(rename = "NextMarker")]
    next_marker: String,
}

/// Skip tokens are opaque to clients: URL-safe base64 of a small JSON document,
/// shaped like Key Vault's own tokens.
pub fn encode_skip_token(last_key: &str) -> String {
    let body = serde_json::to_vec(&SkipTokenBody {
        next_marker: last_key.to_owned(),
    })
    .expect("a struct of strings always serializes");
    URL_SAFE_NO_PAD.encode(body)
}

pub fn decode_skip_token(token: &str) -> Result<String, StoreError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| StoreError::InvalidSkipToken)?;
    let body: SkipTokenBody =
        serde_json::from_slice(&bytes).map_err(|_| StoreError::InvalidSkipToken)?;
    Ok(body.next_marker)
}

/// Returns the items after the cursor, at most `max_results` of them.
fn paginate<'a, T: Clone + 'a>(
    items: impl Iterator<Item = (&'a str, &'a T)>,
    request: &PageRequest,
) -> Page<T> {
    let mut remaining =
        items.skip_while(|(key, _)| request.after.as_deref().is_some_and(|after| *key <= after));
    let page: Vec<(&str, &T)> = remaining.by_ref().take(request.max_results).collect();
    let next_skip_token = match (remaining.next(), page.last()) {
        (Some(_), Some((last_key, _))) => Some(encode_skip_token(last_key)),
        _ => None,
    };
    Page {
        items: page.into_iter().map(|(_, item)| item.clone()).collect(),
        next_skip_token,
    }
}

#[derive(Debug, Default)]
struct Vault {
    /// Versions oldest first; never empty.
    secrets: BTreeMap<String, Vec<SecretVersion>>,
}

/// Every vault's secrets.
#[derive(Debug, Default)]
pub struct VaultStore {
    vaults: BTreeMap<String, Vault>,
}

fn validate_name(name: &str) -> Result<(), StoreError> {
    if SECRET_NAME.is_match(name) {
        Ok(())
    } else {
        Err(StoreError::InvalidName(name.to_owned()))
    }
}

fn validate_content(
    tags: &BTreeMap<String, String>,
    content_type: Option<&str>,
) -> Result<(), StoreError> {
    if tags.len() > MAX_TAGS {
        return Err(StoreError::TooManyTags(tags.len()));
    }
    if content_type.is_some_and(|ct| ct.chars().count() > MAX_CONTENT_TYPE_CHARS) {
        return Err(StoreError::ContentTypeTooLong);
    }
    Ok(())
}

/// Checks a new secret against Key Vault's limits without storing it.
pub fn validate_new_secret(name: &str, secret: &NewSecret) -> Result<(), StoreError> {
    validate_name(name)?;
    if secret.value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::ValueTooLarge(secret.value.len()));
    }
    validate_content(&secret.tags, secret.content_type.as_deref())
}

impl VaultStore {
    pub fn add_vault(&mut self, name: &str) {
        self.vaults.entry(name.to_owned()).or_default();
    }

    fn vault(&self, vault: &str) -> Result<&Vault, StoreError> {
        self.vaults
            .get(vault)
            .ok_or_else(|| StoreError::VaultNotFound(vault.to_owned()))
    }

    fn vault_mut(&mut self, vault: &str) -> Result<&mut Vault, StoreError> {
        self.vaults
            .get_mut(vault)
            .ok_or_else(|| StoreError::VaultNotFound(vault.to_owned()))
    }

    fn versions(&self, vault: &str, name: &str) -> Result<&[SecretVersion], StoreError> {
        self.vault(vault)?
            .secrets
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| StoreError::SecretNotFound(name.to_owned()))
    }

    /// Adds a new version, which becomes the latest (a rotation when the secret exists).
    pub fn set_secret(
        &mut self,
        vault: &str,
        name: &str,
        secret: NewSecret,
        version: VersionId,
        now: i64,
    ) -> Result<SecretVersion, StoreError> {
        self.add_version(vault, name, secret, false, version, now)
    }

    /// Adds a new version of a certificate's secret (an import); the name must not
    /// be taken by a plain secret.
    pub fn set_certificate_secret(
        &mut self,
        vault: &str,
        name: &str,
        secret: NewSecret,
        version: VersionId,
        now: i64,
    ) -> Result<SecretVersion, StoreError> {
        let existing = self.vault(vault)?.secrets.get(name).and_then(|v| v.last());
        if existing.is_some_and(|latest| !latest.managed) {
            return Err(StoreError::NameTaken(name.to_owned()));
        }
        self.add_version(vault, name, secret, true, version, now)
    }

    /// A version of a certificate (the latest when `version` is `None`), even a
    /// disabled one: a certificate's public part stays readable.
    pub fn get_certificate(
        &self,
        vault: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<&SecretVersion, StoreError> {
        let not_found = || StoreError::CertificateNotFound(name.to_owned());
        match self.find(vault, name, version) {
            Ok(found) if found.managed => Ok(found),
            Ok(_) | Err(StoreError::SecretNotFound(_)) => Err(not_found()),
            Err(other) => Err(other),
        }
    }

    fn add_version(
        &mut self,
        vault: &str,
        name: &str,
        secret: NewSecret,
        managed: bool,
        version: VersionId,
        now: i64,
    ) -> Result<SecretVersion, StoreError> {
        validate_new_secret(name, &secret)?;
        let stored = SecretVersion {
            name: name.to_owned(),
            version,
            value: secret.value,
            content_type: secret.content_type,
            tags: secret.tags,
            enabled: secret.enabled.unwrap_or(true),
            nbf: secret.nbf,
            exp: secret.exp,
            created: now,
            updated: now,
            managed,
        };
        self.vault_mut(vault)?
            .secrets
            .entry(name.to_owned())
            .or_default()
            .push(stored.clone());
        Ok(stored)
    }

    /// Finds a version (the latest when `version` is `None`) whatever its state.
    fn find(
        &self,
        vault: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<&SecretVersion, StoreError> {
        let versions = self.versions(vault, name)?;
        let not_found = || StoreError::SecretNotFound(format!("{name}/{}", version.unwrap_or("")));
        match version {
            None => versions.last().ok_or_else(not_found),
            Some(wanted) => {
                let wanted = VersionId::parse(wanted).ok_or_else(not_found)?;
                versions
                    .iter()
                    .find(|v| v.version == wanted)
                    .ok_or_else(not_found)
            }
        }
    }

    /// Reads a version's value; a disabled version is refused.
    pub fn get_secret(
        &self,
        vault: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<&SecretVersion, StoreError> {
        let found = self.find(vault, name, version)?;
        if found.enabled {
            Ok(found)
        } else {
            Err(StoreError::SecretDisabled)
        }
    }

    /// Changes one version's attributes (works on disabled versions, to re-enable them).
    pub fn update_secret(
        &mut self,
        vault: &str,
        name: &str,
        version: Option<&str>,
        update: SecretUpdate,
        now: i64,
    ) -> Result<SecretVersion, StoreError> {
        let target = self.find(vault, name, version)?.version.clone();
        validate_content(
            update.tags.as_ref().unwrap_or(&BTreeMap::new()),
            update.content_type.as_deref(),
        )?;
        let stored = self
            .vault_mut(vault)?
            .secrets
            .get_mut(name)
            .and_then(|versions| versions.iter_mut().find(|v| v.version == target))
            .expect("the version was found above and nothing removed it");
        if let Some(enabled) = update.enabled {
            stored.enabled = enabled;
        }
        if let Some(tags) = update.tags {
            stored.tags = tags;
        }
        if let Some(content_type) = update.content_type {
            stored.content_type = Some(content_type);
        }
        if let Some(nbf) = update.nbf {
            stored.nbf = Some(nbf);
        }
        if let Some(exp) = update.exp {
            stored.exp = Some(exp);
        }
        stored.updated = now;
        Ok(stored.clone())
    }

    /// Removes a secret with all its versions; returns what was the latest version.
    pub fn delete_secret(&mut self, vault: &str, name: &str) -> Result<SecretVersion, StoreError> {
        let mut versions = self
            .vault_mut(vault)?
            .secrets
            .remove(name)
            .ok_or_else(|| StoreError::SecretNotFound(name.to_owned()))?;
        Ok(versions
            .pop()
            .expect("a stored secret always has a version"))
    }

    /// The latest version of every secret (enabled or not), ordered by name.
    pub fn list_secrets(
        &self,
        vault: &str,
        request: &PageRequest,
    ) -> Result<Page<SecretVersion>, StoreError> {
        let vault = self.vault(vault)?;
        let latest = vault
            .secrets
            .iter()
            .filter_map(|(name, versions)| versions.last().map(|latest| (name.as_str(), latest)));
        Ok(paginate(latest, request))
    }

    /// Every version of one secret, oldest first.
    pub fn list_versions(
        &self,
        vault: &str,
        name: &str,
        request: &PageRequest,
    ) -> Result<Page<SecretVersion>, StoreError> {
        let versions = self.versions(vault, name)?;
        // Versions are ordered by creation, not by id: the cursor is the position
        // after the named version.
        let start = match &request.after {
            None => 0,
            Some(after) => {
                versions
                    .iter()
                    .position(|v| v.version.as_str() == after)
                    .ok_or(StoreError::InvalidSkipToken)?
                    + 1
            }
        };
        let rest = versions[start..].iter().map(|v| (v.version.as_str(), v));
        Ok(paginate(
            rest,
            &PageRequest {
                max_results: request.max_results,
                after: None,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn secret(value: &str) -> NewSecret {
        NewSecret {
            value: value.to_owned(),
            ..NewSecret::default()
        }
    }

    fn version(n: u8) -> VersionId {
        VersionId::parse(&format!("{n:032x}")).unwrap()
    }

    fn store_with_vault() -> VaultStore {
        let mut store = VaultStore::default();
        store.add_vault("shop");
        store
    }

    fn first_page(max_results: usize) -> PageRequest {
        PageRequest {
            max_results,
            after: None,
        }
    }

    #[test]
    fn version_ids_are_32_lowercase_hex() {
        let random = VersionId::random();
        assert_eq!(VersionId::parse(random.as_str()), Some(random));
        assert!(VersionId::parse("4387E9F3D6E14C459867679A90FD0F79").is_none());
        assert!(VersionId::parse("4387e9f3").is_none());
        assert!(VersionId::parse("versions").is_none());
    }

    #[test]
    fn rotation_makes_the_new_version_latest_and_keeps_the_old_one() {
        let mut store = store_with_vault();
        store
            .set_secret("shop", "db", secret("one"), version(1), NOW)
            .unwrap();
        store
            .set_secret("shop", "db", secret("two"), version(2), NOW + 5)
            .unwrap();
        assert_eq!(store.get_secret("shop", "db", None).unwrap().value, "two");
        let old = store
            .get_secret("shop", "db", Some(version(1).as_str()))
            .unwrap();
        assert_eq!((old.value.as_str(), old.created), ("one", NOW));
    }

    #[test]
    fn unknown_secret_version_or_vault_is_reported_as_such() {
        let mut store = store_with_vault();
        store
            .set_secret("shop", "db", secret("one"), version(1), NOW)
            .unwrap();
        assert_eq!(
            store.get_secret("shop", "nope", None),
            Err(StoreError::SecretNotFound("nope".into()))
        );
        assert!(matches!(
            store.get_secret("shop", "db", Some(version(9).as_str())),
            Err(StoreError::SecretNotFound(_))
        ));
        assert!(matches!(
            store.get_secret("shop", "db", Some("not-a-version")),
            Err(StoreError::SecretNotFound(_))
        ));
        assert_eq!(
            store.get_secret("other", "db", None),
            Err(StoreError::VaultNotFound("other".into()))
        );
    }

    #[test]
    fn a_disabled_version_cannot_be_read_until_enabled_again() {
        let mut store = store_with_vault();
        store
            .set_secret("shop", "db", secret("one"), version(1), NOW)
            .unwrap();
        let disable = SecretUpdate {
            enabled: Some(false),
            ..SecretUpdate::default()
        };
        let updated = store
            .update_secret("shop", "db", None, disable, NOW + 10)
            .unwrap();
        assert_eq!((updated.enabled, updated.updated), (false, NOW + 10));
        assert_eq!(
            store.get_secret("shop", "db", None),
            Err(StoreError::SecretDisabled)
        );
        let enable = SecretUpdate {
            enabled: Some(true),
            ..SecretUpdate::default()
        };
        store
            .update_secret("shop", "db", Some(version(1).as_str()), enable, NOW + 20)
            .unwrap();
        assert_eq!(store.get_secret("shop", "db", None).unwrap().value, "one");
    }

    #[test]
    fn update_changes_only_the_given_fields() {
        let mut store = store_with_vault();
        let mut original = secret("v");
        original.content_type = Some("text/plain".into());
        original.tags.insert("env".into(), "prod".into());
        store
            .set_secret("shop", "db", original, version(1), NOW)
            .unwrap();
        let update = SecretUpdate {
            tags: Some(BTreeMap::from([("env".into(), "dev".into())])),
            ..SecretUpdate::default()
        };
        let updated = store
            .update_secret("shop", "db", None, update, NOW + 1)
            .unwrap();
        assert_eq!(updated.content_type.as_deref(), Some("text/plain"));
        assert_eq!(updated.tags["env"], "dev");
        assert!(updated.enabled);
    }

    #[test]
    fn limits_of_key_vault_are_enforced() {
        let mut store = store_with_vault();
        assert_eq!(
            store.set_secret("shop", "bad_name", secret("v"), version(1), NOW),
            Err(StoreError::InvalidName("bad_name".into()))
        );
        assert!(
            store
                .set_secret("shop", &"a".repeat(128), secret("v"), version(1), NOW)
                .is_err()
        );
        let big = "x".repeat(MAX_VALUE_BYTES + 1);
        assert_eq!(
            store.set_secret("shop", "big", secret(&big), version(1), NOW),
            Err(StoreError::ValueTooLarge(MAX_VALUE_BYTES + 1))
        );
        let mut tagged = secret("v");
        tagged.tags = (0..16).map(|i| (format!("t{i}"), "x".into())).collect();
        assert_eq!(
            store.set_secret("shop", "tagged", tagged, version(1), NOW),
            Err(StoreError::TooManyTags(16))
        );
        assert!(
            store
                .set_secret("shop", &"a".repeat(127), secret("v"), version(1), NOW)
                .is_ok()
        );
    }

    #[test]
    fn delete_removes_every_version() {
        let mut store = store_with_vault();
        store
            .set_secret("shop", "db", secret("one"), version(1), NOW)
            .unwrap();
        store
            .set_secret("shop", "db", secret("two"), version(2), NOW)
            .unwrap();
        assert_eq!(
            store.delete_secret("shop", "db").unwrap().version,
            version(2)
        );
        assert!(matches!(
            store.get_secret("shop", "db", Some(version(1).as_str())),
            Err(StoreError::SecretNotFound(_))
        ));
        assert!(store.delete_secret("shop", "db").is_err());
    }

    #[test]
    fn listing_pages_through_every_secret_once_in_name_order() {
        let mut store = store_with_vault();
        for i in (0..30).rev() {
            store
                .set_secret("shop", &format!("s{i:02}"), secret("v"), version(1), NOW)
                .unwrap();
        }
        let mut seen = Vec::new();
        let mut request = first_page(MAX_PAGE_SIZE);
        let mut pages = 0;
        loop {
            let page = store.list_secrets("shop", &request).unwrap();
            pages += 1;
            seen.extend(page.items.into_iter().map(|s| s.name));
            match page.next_skip_token {
                Some(token) => request = PageRequest::from_query(None, Some(&token)).unwrap(),
                None => break,
            }
        }
        assert_eq!(pages, 2);
        let expected: Vec<String> = (0..30).map(|i| format!("s{i:02}")).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_page_that_ends_exactly_at_the_last_item_has_no_next_link() {
        let mut store = store_with_vault();
        for name in ["a", "b"] {
            store
                .set_secret("shop", name, secret("v"), version(1), NOW)
                .unwrap();
        }
        let page = store.list_secrets("shop", &first_page(2)).unwrap();
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.next_skip_token, None);
    }

    #[test]
    fn paging_survives_a_secret_added_between_pages() {
        let mut store = store_with_vault();
        for name in ["a", "c", "e"] {
            store
                .set_secret("shop", name, secret("v"), version(1), NOW)
                .unwrap();
        }
        let first = store.list_secrets("shop", &first_page(2)).unwrap();
        store
            .set_secret("shop", "b", secret("v"), version(1), NOW)
            .unwrap();
        let token = first.next_skip_token.unwrap();
        let second = store
            .list_secrets(
                "shop",
                &PageRequest::from_query(None, Some(&token)).unwrap(),
            )
            .unwrap();
        let names: Vec<_> = second.items.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["e"]);
    }

    #[test]
    fn listing_shows_the_latest_version_of_disabled_secrets_too() {
        let mut store = store_with_vault();
        store
            .set_secret("shop", "db", secret("one"), version(1), NOW)
            .unwrap();
        let mut disabled = secret("two");
        disabled.enabled = Some(false);
        store
            .set_secret("shop", "db", disabled, version(2), NOW)
            .unwrap();
        let page = store.list_secrets("shop", &first_page(25)).unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(
            (page.items[0].version.clone(), page.items[0].enabled),
            (version(2), false)
        );
    }

    #[test]
    fn versions_are_listed_oldest_first_across_pages() {
        let mut store = store_with_vault();
        // Ids deliberately out of lexical order: paging must follow creation order.
        for n in [9, 3, 7] {
            store
                .set_secret("shop", "db", secret("v"), version(n), NOW)
                .unwrap();
        }
        let first = store.list_versions("shop", "db", &first_page(2)).unwrap();
        let token = first.next_skip_token.clone().unwrap();
        let second = store
            .list_versions(
                "shop",
                "db",
                &PageRequest::from_query(Some("2"), Some(&token)).unwrap(),
            )
            .unwrap();
        let ids: Vec<_> = first
            .items
            .iter()
            .chain(&second.items)
            .map(|v| v.version.clone())
            .collect();
        assert_eq!(ids, [version(9), version(3), version(7)]);
        assert_eq!(second.next_skip_token, None);
    }

    #[test]
    fn page_parameters_are_validated() {
        assert_eq!(
            PageRequest::from_query(None, None).unwrap(),
            first_page(MAX_PAGE_SIZE)
        );
        for bad in ["0", "26", "-1", "ten"] {
            assert_eq!(
                PageRequest::from_query(Some(bad), None),
                Err(StoreError::InvalidMaxResults(bad.into()))
            );
        }
        assert_eq!(
            PageRequest::from_query(None, Some("%%%")),
            Err(StoreError::InvalidSkipToken)
        );
        assert_eq!(
            decode_skip_token(&encode_skip_token("db-password")).unwrap(),
            "db-password"
        );
    }
}
