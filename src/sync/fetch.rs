//! Reads what one sync needs from the vault and renders the Secret's data.
//!
//! ```text
//!  spec.data[] / spec.dataFrom[] ──▶ Fetcher (each distinct ref read once per sync,
//!                                    │        at the sync's Freshness)
//!                                    └──▶ render (pure) ──▶ Rendered { data, versions }
//! ```
//!
//! All or nothing: the first failure ends the sync and nothing is written.

use std::collections::{BTreeMap, HashMap};

use regex::Regex;

use super::Context;
use super::error::SyncError;
use super::render;
use crate::api::{DataFromSource, KeyVaultSecretSpec};
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
    Interest::Names(names)
}

/// Reads and renders every entry of `spec`.
pub async fn fetch_and_render(
    ctx: &Context,
    spec: &KeyVaultSecretSpec,
    identity: &Identity,
    find_patterns: &HashMap<usize, Regex>,
    freshness: Freshness,
) -> Result<Rendered, SyncError> {
    let mut fetcher = Fetcher {
        ctx,
        vault_url: &spec.vault_url,
        identity,
        freshness,
        seen: BTreeMap::new(),
        listing: None,
    };
    let mut parts = Vec::new();
    for entry in &spec.data {
        let remote_ref = &entry.remote_ref;
        let remote = fetcher
            .get(&remote_ref.name, remote_ref.version.as_deref(), false)
            .await?;
        let value = render::render_ref(
            &remote,
            remote_ref.property.as_deref(),
            remote_ref.decoding_strategy,
        )?;
        parts.push(BTreeMap::from([(entry.secret_key.clone(), value)]));
    }
    for (index, entry) in spec.data_from.iter().enumerate() {
        let part = match entry.source() {
            Some(DataFromSource::Extract(extract)) => {
                let remote = fetcher
                    .get(&extract.name, extract.version.as_deref(), false)
                    .await?;
                render::render_extract(&remote, extract.decoding_strategy)?
            }
            Some(DataFromSource::Find(find)) => {
                let listing = fetcher.list().await?;
                let mut found = BTreeMap::new();
                for name in render::find_matches(find, find_patterns.get(&index), &listing) {
                    let remote = fetcher.get(&name, None, false).await?;
                    found.insert(
                        name,
                        render::render_ref(&remote, None, find.decoding_strategy)?,
                    );
                }
                found
            }
            Some(DataFromSource::Certificate(certificate)) => {
                let remote = fetcher
                    .get(&certificate.name, certificate.version.as_deref(), true)
                    .await?;
                render::render_certificate(&remote)?
            }
            None => {
                return Err(SyncError::InvalidSpec(format!(
                    "dataFrom[{index}] needs exactly one of extract, find, certificate"
                )));
            }
        };
        parts.push(part);
    }
    Ok(Rendered {
        data: render::merge(parts)?,
        versions: fetcher.versions(),
    })
}

/// Reads the vault for one sync, asking for each distinct ref once.
struct Fetcher<'a> {
    ctx: &'a Context,
    vault_url: &'a str,
    identity: &'a Identity,
    freshness: Freshness,
    seen: BTreeMap<RefKey, RemoteSecret>,
    listing: Option<Vec<RemoteSecretInfo>>,
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

    async fn list(&mut self) -> Result<Vec<RemoteSecretInfo>, SyncError> {
        if let Some(listing) = &self.listing {
            return Ok(listing.clone());
        }
        let result = self
            .ctx
            .vault
            .list(self.vault_url, self.identity, self.freshness)
            .await;
        self.observe("list", &result);
        let listing = result?;
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
