//! Reads what one sync needs from the vault and renders the Secret's data.
//!
//! ```text
//!  spec.data[] / spec.dataFrom[] ──▶ Fetcher (each distinct ref read once per sync,
//!                                    │        at the sync's Freshness)
//!                                    └──▶ render (pure) ──▶ dataFrom keys shaped (keys.rs)
//!                                                       ──▶ Rendered { data, versions }
//! ```
//!
//! All or nothing: the first failure ends the sync and nothing is written.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use regex::Regex;

use super::context::Context;
use super::error::SyncError;
use super::keys::KeyShaping;
use super::render::{self, RenderError};
use crate::api::{DataFromSource, DeletionPolicy, KeyVaultSecretSpec, MetadataPolicy};
use crate::vault::{Freshness, Identity, Interest, RemoteSecret, RemoteSecretInfo, VaultError};

/// A vault secret as one sync asked for it: name, pinned version, as PEM.
type RefKey = (String, Option<String>, bool);

/// The Secret's data and where it came from.
pub struct Rendered {
    pub data: BTreeMap<String, Vec<u8>>,
    /// `syncedVersions`: the vault name for latest refs, `name@version` for
    /// pinned ones, so one secret referenced both ways is recorded
    /// deterministically.
    pub versions: BTreeMap<String, String>,
    /// The earliest `exp` (Unix seconds) among the versions read, if any has one.
    pub expires: Option<i64>,
}

/// The vault secrets a spec depends on (for change notifications).
pub fn interest(spec: &KeyVaultSecretSpec) -> Interest {
    let mut names = std::collections::BTreeSet::new();
    names.extend(spec.data.iter().map(|d| d.remote_ref.name.clone()));
    for source in spec.data_from.iter().filter_map(|entry| entry.source()) {
        match source {
            DataFromSource::Find(_) => return Interest::Everything,
            DataFromSource::Extract(extract) => names.insert(extract.name.clone()),
            DataFromSource::Certificate(certificate) => names.insert(certificate.name.clone()),
        };
    }
    Interest::Names(names.into_iter().collect())
}

/// Reads of one sync at most: a `find` whose listing turned out older than
/// the values read after it is read again, as of now.
const READS_PER_SYNC: usize = 3;

/// Reads and renders every entry of `spec`.
///
/// A `find` takes its members from a listing and their values from reads
/// made after it; when a value read shows the listing outdated (another
/// version, or the secret gone), the members and values would come from two
/// different vault states, so everything is read again as of now.
pub async fn fetch_and_render(
    ctx: &Context,
    spec: &KeyVaultSecretSpec,
    identity: &Identity,
    find_patterns: &HashMap<usize, Regex>,
    shaping: &[KeyShaping],
    freshness: Freshness,
) -> Result<Rendered, SyncError> {
    let (mut freshness, mut attempt) = (freshness, 1);
    loop {
        let mut fetcher = Fetcher {
            ctx,
            vault_url: &spec.vault_url,
            identity,
            freshness,
            absent_ok: spec.target.deletion_policy != DeletionPolicy::Retain,
            seen: BTreeMap::new(),
            listing: None,
            listing_outdated: false,
        };
        let rendered = render_all(&mut fetcher, spec, find_patterns, shaping).await;
        if !fetcher.listing_outdated || attempt == READS_PER_SYNC {
            return rendered;
        }
        (freshness, attempt) = (Freshness::Now, attempt + 1);
    }
}

/// One reading of every entry of `spec`.
async fn render_all(
    fetcher: &mut Fetcher<'_>,
    spec: &KeyVaultSecretSpec,
    find_patterns: &HashMap<usize, Regex>,
    shaping: &[KeyShaping],
) -> Result<Rendered, SyncError> {
    let mut parts = Vec::new();
    for entry in &spec.data {
        let remote_ref = &entry.remote_ref;
        let value = match remote_ref.metadata_policy {
            MetadataPolicy::None => {
                let version = remote_ref.version.as_deref();
                let Some(remote) = fetcher
                    .get_present(&remote_ref.name, version, false)
                    .await?
                else {
                    continue;
                };
                render::render_ref(
                    &remote,
                    remote_ref.property.as_deref(),
                    remote_ref.decoding_strategy,
                )?
            }
            MetadataPolicy::Fetch => {
                let Some(info) = fetcher.info(&remote_ref.name).await? else {
                    continue;
                };
                render::render_tags(
                    &info,
                    remote_ref.property.as_deref(),
                    remote_ref.decoding_strategy,
                )?
            }
        };
        parts.push(BTreeMap::from([(entry.secret_key.clone(), value)]));
    }
    for (index, entry) in spec.data_from.iter().enumerate() {
        let part = match entry.source() {
            Some(DataFromSource::Extract(extract)) => {
                let version = extract.version.as_deref();
                match fetcher.get_present(&extract.name, version, false).await? {
                    Some(remote) => render::render_extract(
                        &remote,
                        extract.property.as_deref(),
                        extract.decoding_strategy,
                    )?,
                    None => BTreeMap::new(),
                }
            }
            Some(DataFromSource::Find(find)) => {
                let listing = fetcher.list().await?;
                let names = render::find_matches(find, find_patterns.get(&index), &listing.infos);
                if names.len() > render::MAX_FIND_MATCHES {
                    let count = names.len();
                    return Err(RenderError::FindTooMany {
                        entry: index,
                        count,
                    }
                    .into());
                }
                let (mut found, mut bytes) = (BTreeMap::new(), 0);
                for name in names {
                    let Some(remote) = fetcher.get_listed(&name, &listing).await? else {
                        continue;
                    };
                    let value = render::render_ref(&remote, None, find.decoding_strategy)?;
                    bytes += value.len();
                    if bytes > render::MAX_FIND_BYTES {
                        return Err(RenderError::FindTooLarge { entry: index }.into());
                    }
                    found.insert(name, value);
                }
                found
            }
            Some(DataFromSource::Certificate(certificate)) => {
                let version = certificate.version.as_deref();
                match fetcher
                    .get_present(&certificate.name, version, true)
                    .await?
                {
                    Some(remote) => render::render_certificate(&remote)?,
                    None => BTreeMap::new(),
                }
            }
            None => {
                return Err(SyncError::InvalidSpec(format!(
                    "dataFrom[{index}] needs exactly one of extract, find, certificate"
                )));
            }
        };
        let part = match shaping.get(index) {
            Some(shaping) => shaping.apply(index, part)?,
            None => part,
        };
        parts.push(part);
    }
    Ok(Rendered {
        data: render::merge(parts)?,
        versions: fetcher.versions(),
        expires: fetcher.seen.values().filter_map(|read| read.expires).min(),
    })
}

/// Whether a value read is the version `info` listed (by its `updated`
/// time; unknown times count as the same).
fn listed_as(info: &RemoteSecretInfo, remote: &RemoteSecret) -> bool {
    match (info.updated, remote.updated) {
        (Some(listed), Some(read)) => listed == read,
        _ => true,
    }
}

/// The vault's listing as one sync uses it: in the vault's order (for a
/// `find`) and by name (for each member's and each tag lookup).
struct Listing {
    infos: Vec<RemoteSecretInfo>,
    by_name: HashMap<String, usize>,
}

impl Listing {
    fn new(infos: Vec<RemoteSecretInfo>) -> Self {
        let by_name = infos
            .iter()
            .enumerate()
            .map(|(at, info)| (info.name.clone(), at))
            .collect();
        Listing { infos, by_name }
    }

    fn get(&self, name: &str) -> Option<&RemoteSecretInfo> {
        self.by_name.get(name).map(|&at| &self.infos[at])
    }
}

/// Reads the vault for one sync, asking for each distinct ref once.
struct Fetcher<'a> {
    ctx: &'a Context,
    vault_url: &'a str,
    identity: &'a Identity,
    freshness: Freshness,
    /// `deletionPolicy` Merge/Delete: a deleted remote secret is absent, not an error.
    absent_ok: bool,
    seen: BTreeMap<RefKey, RemoteSecret>,
    listing: Option<Arc<Listing>>,
    /// A value read showed the listing used by a `find` outdated.
    listing_outdated: bool,
}

impl Fetcher<'_> {
    async fn get(
        &mut self,
        name: &str,
        version: Option<&str>,
        as_pem: bool,
    ) -> Result<RemoteSecret, SyncError> {
        let version = version.filter(|v| !v.is_empty()).map(str::to_owned);
        let key = (name.to_owned(), version.clone(), as_pem);
        if let Some(found) = self.seen.get(&key) {
            return Ok(found.clone());
        }
        let result = self
            .ctx
            .vault
            .get(
                self.vault_url,
                self.identity,
                name,
                version.as_deref(),
                as_pem,
                self.freshness,
            )
            .await;
        self.observe("get", &result);
        let remote = result?;
        self.seen.insert(key, remote.clone());
        Ok(remote)
    }

    /// [`Self::get`], with a deleted secret as `None` when the deletion policy allows.
    async fn get_present(
        &mut self,
        name: &str,
        version: Option<&str>,
        as_pem: bool,
    ) -> Result<Option<RemoteSecret>, SyncError> {
        match self.get(name, version, as_pem).await {
            Err(SyncError::Vault {
                error: VaultError::NotFound(_),
            }) if self.absent_ok => Ok(None),
            other => other.map(Some),
        }
    }

    /// The latest value of a secret `listing` names; `None` (and the listing
    /// marked outdated) when it is gone or disabled since, and the listing
    /// marked outdated when the value read is of another version than listed.
    async fn get_listed(
        &mut self,
        name: &str,
        listing: &Listing,
    ) -> Result<Option<RemoteSecret>, SyncError> {
        match self.get(name, None, false).await {
            Ok(remote) => {
                let listed = listing.get(name);
                self.listing_outdated |= !listed.is_some_and(|info| listed_as(info, &remote));
                Ok(Some(remote))
            }
            Err(SyncError::Vault {
                error: VaultError::NotFound(_) | VaultError::Disabled(_),
            }) => {
                self.listing_outdated = true;
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }

    /// What the listing says about one secret (its tags), `None` when it is
    /// gone and the deletion policy allows.
    async fn info(&mut self, name: &str) -> Result<Option<RemoteSecretInfo>, SyncError> {
        let found = self.list().await?.get(name).cloned();
        match found {
            None if !self.absent_ok => Err(VaultError::NotFound(name.to_owned()).into()),
            found => Ok(found),
        }
    }

    async fn list(&mut self) -> Result<Arc<Listing>, SyncError> {
        if let Some(listing) = &self.listing {
            return Ok(listing.clone());
        }
        let result = self
            .ctx
            .vault
            .list(self.vault_url, self.identity, self.freshness)
            .await;
        self.observe("list", &result);
        let listing = Arc::new(Listing::new(result?));
        self.listing = Some(listing.clone());
        Ok(listing)
    }

    /// The vault's host, the `vault` label of the request metrics.
    fn vault_host(&self) -> String {
        url::Url::parse(self.vault_url)
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned))
            .unwrap_or_default()
    }

    fn observe<T>(&self, operation: &'static str, result: &Result<T, VaultError>) {
        self.ctx.metrics.observe_vault_call(
            &self.vault_host(),
            operation,
            result.as_ref().err().map_or("ok", VaultError::reason),
        );
    }

    /// `syncedVersions` of what was read, in a deterministic order.
    fn versions(&self) -> BTreeMap<String, String> {
        self.seen
            .iter()
            .map(|((name, pinned, _), remote)| {
                let key = match pinned {
                    Some(version) => format!("{name}@{version}"),
                    None => name.clone(),
                };
                (key, remote.version.clone())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_of_another_version_than_listed_shows_the_listing_outdated() {
        let info = |updated| RemoteSecretInfo {
            name: "p1".into(),
            enabled: true,
            tags: BTreeMap::new(),
            updated,
        };
        let remote = |updated| RemoteSecret {
            name: "p1".into(),
            version: "v".into(),
            value: String::new(),
            content_type: None,
            updated,
            not_before: None,
            expires: None,
        };
        assert!(listed_as(&info(Some(10)), &remote(Some(10))));
        assert!(
            !listed_as(&info(Some(10)), &remote(Some(12))),
            "rotated since"
        );
        assert!(
            !listed_as(&info(Some(12)), &remote(Some(10))),
            "a cached older read"
        );
        assert!(
            listed_as(&info(None), &remote(Some(10))),
            "unknown: the same"
        );
    }
}
