//! Reads what one sync needs from the vault and renders the Secret's data.
//!
//! ```text
//!  spec.data[] / spec.dataFrom[] ──▶ Fetcher (each distinct ref read once per sync,
//!                                    │        at the sync's Freshness)
//!                                    │   latest version not valid yet (nbf > now, Respect),
//!                                    │   or a previousSecretKey ──▶ the secret's versions
//!                                    │        (listed once per new version) ──▶ vault::choose:
//!                                    │        current · pending (status, wake at nbf) · previous
//!                                    └──▶ render (pure) ──▶ dataFrom keys shaped (keys.rs)
//!                                                       ──▶ Rendered { data, versions, expires, pending }
//! ```
//!
//! All or nothing: the first failure ends the sync and nothing is written.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use regex::Regex;

use super::context::Context;
use super::error::SyncError;
use super::keys::KeyShaping;
use super::render::{self, RenderError};
use crate::api::{
    DataFromSource, DeletionPolicy, KeyVaultSecretSpec, MAX_REFRESH_INTERVAL, MetadataPolicy,
    NotBeforePolicy, PendingVersion,
};
use crate::vault::{
    Freshness, Identity, Interest, RemoteSecret, RemoteSecretInfo, VaultError, VersionInfo, choose,
    previous_of, valid,
};

/// A vault secret as one sync asked for it: name, pinned version, as PEM.
type RefKey = (String, Option<String>, bool);

/// The Secret's data and where it came from.
pub struct Rendered {
    pub data: BTreeMap<String, Vec<u8>>,
    /// `syncedVersions`: the vault name for latest refs, `name@version` for
    /// pinned ones, so one secret referenced both ways is recorded
    /// deterministically.
    pub versions: BTreeMap<String, String>,
    /// The earliest `exp` (Unix seconds) among the versions in `secretKey`s
    /// (not previous values: their expiry is why they were replaced).
    pub expires: Option<i64>,
    /// Newer versions not valid yet, earliest first: the Secret changes at
    /// their `notBefore`.
    pub pending: Vec<PendingVersion>,
}

impl Rendered {
    /// How long from `now` until the first pending version is valid (at
    /// most the longest refresh interval, so that a far `nbf` never
    /// overflows a timer).
    pub fn until_next_switch(&self, now: Timestamp) -> Option<Duration> {
        let first = self.pending.iter().map(|p| p.not_before.0).min()?;
        Some(until(first, now))
    }
}

/// The wait from `now` until `at`: none if passed, at most [`MAX_REFRESH_INTERVAL`].
fn until(at: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now))
        .unwrap_or_default()
        .min(MAX_REFRESH_INTERVAL)
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
            now: Timestamp::now(),
            absent_ok: spec.target.deletion_policy != DeletionPolicy::Retain,
            seen: BTreeMap::new(),
            versions: BTreeMap::new(),
            used: BTreeMap::new(),
            expires: None,
            pending: BTreeMap::new(),
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
                let asked = Ref {
                    name: &remote_ref.name,
                    version: remote_ref.version.as_deref(),
                    as_pem: false,
                    not_before: remote_ref.not_before_policy,
                };
                let with_previous = entry.previous_secret_key.is_some();
                let Some(resolved) = fetcher.resolve(asked, with_previous).await? else {
                    continue;
                };
                let render = |remote: &RemoteSecret| {
                    render::render_ref(
                        remote,
                        remote_ref.property.as_deref(),
                        remote_ref.decoding_strategy,
                    )
                };
                if let (Some(key), Some(previous)) =
                    (&entry.previous_secret_key, &resolved.previous)
                {
                    parts.push(BTreeMap::from([(key.clone(), render(previous)?)]));
                }
                render(&resolved.current)?
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
                let asked = Ref {
                    name: &extract.name,
                    version: extract.version.as_deref(),
                    as_pem: false,
                    not_before: extract.not_before_policy,
                };
                match fetcher.resolve(asked, false).await? {
                    Some(resolved) => render::render_extract(
                        &resolved.current,
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
                    let Some(remote) = fetcher
                        .get_listed(&name, &listing, find.not_before_policy)
                        .await?
                    else {
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
                let asked = Ref {
                    name: &certificate.name,
                    version: certificate.version.as_deref(),
                    as_pem: true,
                    not_before: certificate.not_before_policy,
                };
                match fetcher.resolve(asked, false).await? {
                    Some(resolved) => render::render_certificate(&resolved.current)?,
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
        versions: std::mem::take(&mut fetcher.used),
        expires: fetcher.expires,
        pending: fetcher.pending(),
    })
}

/// One ref to a vault secret, as a spec entry asks for it.
#[derive(Clone, Copy)]
struct Ref<'a> {
    name: &'a str,
    /// A pinned version (read as asked, whatever its `nbf`).
    version: Option<&'a str>,
    as_pem: bool,
    not_before: NotBeforePolicy,
}

/// What a ref puts in the Secret.
struct Resolved {
    current: RemoteSecret,
    /// The previous enabled version, if asked for and there is one.
    previous: Option<RemoteSecret>,
}

/// A ref of the latest version at this sync's time (see [`choose`]).
enum Scheduled {
    /// This version now, and the one before it if asked for.
    Current(Box<Resolved>),
    /// No version is valid yet: the first one starts at this `nbf`.
    NotYet { starts: i64 },
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
    /// The sync's time: which versions are valid (`nbf` ≤ now).
    now: Timestamp,
    /// `deletionPolicy` Merge/Delete: a deleted remote secret is absent, not an error.
    absent_ok: bool,
    /// Every value read in this sync.
    seen: BTreeMap<RefKey, RemoteSecret>,
    /// Every secret's versions listed in this sync.
    versions: BTreeMap<String, Arc<[VersionInfo]>>,
    /// `syncedVersions`: what the Secret gets — the vault name for latest
    /// refs, `name@version` for pinned ones (so one secret referenced both
    /// ways is recorded deterministically), `…@previous` for previous values.
    used: BTreeMap<String, String>,
    /// The earliest `exp` among the versions in `secretKey`s.
    expires: Option<i64>,
    /// Versions not valid yet: (name, version) → `nbf`.
    pending: BTreeMap<(String, String), i64>,
    listing: Option<Arc<Listing>>,
    /// A value read showed the listing used by a `find` outdated.
    listing_outdated: bool,
}

impl Fetcher<'_> {
    /// Reads a value at `freshness` (the sync's, or [`Freshness::Any`] for
    /// a version chosen from a versions listing).
    async fn get(
        &mut self,
        name: &str,
        version: Option<&str>,
        as_pem: bool,
        freshness: Freshness,
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
                freshness,
            )
            .await;
        self.observe("get", &result);
        let remote = result?;
        self.seen.insert(key, remote.clone());
        Ok(remote)
    }

    /// What `asked` puts in the Secret now (and the previous version with
    /// `with_previous`), recorded in `syncedVersions`; `None` for a deleted
    /// secret when the deletion policy allows. A latest ref whose versions
    /// are all still to come fails ([`VaultError::NotYetValid`]).
    async fn resolve(
        &mut self,
        asked: Ref<'_>,
        with_previous: bool,
    ) -> Result<Option<Resolved>, SyncError> {
        let (name, as_pem) = (asked.name, asked.as_pem);
        let version = asked.version.filter(|v| !v.is_empty());
        let read = self.get(name, version, as_pem, self.freshness).await;
        let read = match read {
            Err(SyncError::Vault {
                error: VaultError::NotFound(_),
            }) if self.absent_ok => return Ok(None),
            read => read?,
        };
        let resolved = match version {
            Some(pinned) => {
                let previous = match with_previous {
                    true => self.previous_of(asked, &read).await?,
                    false => None,
                };
                self.record(format!("{name}@{pinned}"), &read);
                Resolved {
                    current: read,
                    previous,
                }
            }
            None => match self.schedule(asked, read, with_previous).await? {
                Scheduled::Current(resolved) => {
                    self.record(name.to_owned(), &resolved.current);
                    *resolved
                }
                Scheduled::NotYet { starts } => return Err(self.not_yet_valid(name, starts)),
            },
        };
        if let Some(previous) = &resolved.previous {
            let key = match version {
                Some(pinned) => format!("{name}@{pinned}@previous"),
                None => format!("{name}@previous"),
            };
            self.used.insert(key, previous.version.clone());
        }
        Ok(Some(resolved))
    }

    /// The version of a latest ref at this sync's time: `latest` itself
    /// unless it is not valid yet (`nbf` in the future, `Respect`) or the
    /// previous one is asked for; else the secret's versions decide.
    async fn schedule(
        &mut self,
        asked: Ref<'_>,
        latest: RemoteSecret,
        with_previous: bool,
    ) -> Result<Scheduled, SyncError> {
        let now = self.now.as_second();
        let valid_at = (asked.not_before == NotBeforePolicy::Respect).then_some(now);
        if valid(latest.not_before, valid_at) && !with_previous {
            return Ok(Scheduled::Current(Box::new(Resolved {
                current: latest,
                previous: None,
            })));
        }
        // A version the listing vouched for may be disabled or gone since
        // it was listed: then it is listed again, as of now.
        let mut freshness = self.freshness;
        loop {
            let versions = self.list_versions(&latest, freshness).await?;
            let choice = choose(&versions, &latest.version, valid_at);
            for pending in &choice.pending {
                let key = (asked.name.to_owned(), pending.version.clone());
                self.pending.insert(key, pending.not_before.unwrap_or(now));
            }
            let Some(current) = choice.current else {
                let starts = choice.pending.first().and_then(|v| v.not_before);
                return match starts {
                    Some(starts) => Ok(Scheduled::NotYet { starts }),
                    None => Err(VaultError::Disabled(asked.name.to_owned()).into()),
                };
            };
            let previous = choice.previous.filter(|_| with_previous);
            let outcome = async {
                let current = self.read_chosen(asked, &latest, current).await?;
                let previous = match previous {
                    Some(previous) => Some(self.read_chosen(asked, &latest, previous).await?),
                    None => None,
                };
                Ok::<_, SyncError>(Scheduled::Current(Box::new(Resolved { current, previous })))
            }
            .await;
            match outcome {
                Ok(scheduled) => return Ok(scheduled),
                Err(SyncError::Vault {
                    error: VaultError::Disabled(_) | VaultError::NotFound(_),
                }) if freshness != Freshness::Now => {
                    self.versions.remove(asked.name);
                    freshness = Freshness::Now;
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// The version before `pinned` (the previous value of a pinned ref).
    async fn previous_of(
        &mut self,
        asked: Ref<'_>,
        pinned: &RemoteSecret,
    ) -> Result<Option<RemoteSecret>, SyncError> {
        let versions = self.list_versions(pinned, self.freshness).await?;
        let valid_at =
            (asked.not_before == NotBeforePolicy::Respect).then_some(self.now.as_second());
        match previous_of(&versions, &pinned.version, valid_at) {
            Some(previous) => {
                let version = previous.version.clone();
                self.get_chosen(asked, &version).await.map(Some)
            }
            None => Ok(None),
        }
    }

    /// The value of a version chosen from a versions listing: `latest`'s
    /// own when it is that one, else read by version.
    async fn read_chosen(
        &mut self,
        asked: Ref<'_>,
        latest: &RemoteSecret,
        chosen: &VersionInfo,
    ) -> Result<RemoteSecret, SyncError> {
        if chosen.version == latest.version {
            return Ok(latest.clone());
        }
        self.get_chosen(asked, &chosen.version).await
    }

    /// A version chosen from a versions listing: any earlier read of it will
    /// do (Key Vault never changes a version's value).
    async fn get_chosen(
        &mut self,
        asked: Ref<'_>,
        version: &str,
    ) -> Result<RemoteSecret, SyncError> {
        self.get(asked.name, Some(version), asked.as_pem, Freshness::Any)
            .await
    }

    /// Records what a ref puts in `secretKey`: its version under `key` in
    /// `syncedVersions`, its `exp` in the earliest expiry.
    fn record(&mut self, key: String, current: &RemoteSecret) {
        self.used.insert(key, current.version.clone());
        self.expires = self.expires.into_iter().chain(current.expires).min();
    }

    /// The versions of the secret `read` is a version of, listed at most
    /// once per sync (and by the vault access once per new version).
    async fn list_versions(
        &mut self,
        read: &RemoteSecret,
        freshness: Freshness,
    ) -> Result<Arc<[VersionInfo]>, SyncError> {
        if let Some(found) = self.versions.get(&read.name) {
            return Ok(found.clone());
        }
        let result = self
            .ctx
            .vault
            .versions(self.vault_url, self.identity, read, freshness)
            .await;
        self.observe("versions", &result);
        let versions = result?;
        self.versions.insert(read.name.clone(), versions.clone());
        Ok(versions)
    }

    fn not_yet_valid(&self, name: &str, starts: i64) -> SyncError {
        let at = Timestamp::from_second(starts).unwrap_or(Timestamp::MAX);
        VaultError::NotYetValid {
            name: name.to_owned(),
            starts: at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            wait: until(at, self.now),
        }
        .into()
    }

    /// Versions not valid yet, earliest first.
    fn pending(&self) -> Vec<PendingVersion> {
        let mut pending: Vec<PendingVersion> = self
            .pending
            .iter()
            .map(|((name, version), &nbf)| PendingVersion {
                name: name.clone(),
                version: version.clone(),
                not_before: Time(Timestamp::from_second(nbf).unwrap_or(Timestamp::MAX)),
            })
            .collect();
        pending.sort_by(|a, b| (a.not_before.0, &a.name).cmp(&(b.not_before.0, &b.name)));
        pending
    }

    /// The value a `find` member puts in the Secret now; `None` (and the
    /// listing marked outdated) when it is gone or disabled since, `None`
    /// too while none of its versions is valid yet (it is pending), and the
    /// listing marked outdated when the value read is of another version
    /// than listed.
    async fn get_listed(
        &mut self,
        name: &str,
        listing: &Listing,
        not_before: NotBeforePolicy,
    ) -> Result<Option<RemoteSecret>, SyncError> {
        match self.get(name, None, false, self.freshness).await {
            Ok(remote) => {
                let listed = listing.get(name);
                self.listing_outdated |= !listed.is_some_and(|info| listed_as(info, &remote));
                let asked = Ref {
                    name,
                    version: None,
                    as_pem: false,
                    not_before,
                };
                match self.schedule(asked, remote, false).await? {
                    Scheduled::Current(resolved) => {
                        self.record(name.to_owned(), &resolved.current);
                        Ok(Some(resolved.current))
                    }
                    Scheduled::NotYet { .. } => Ok(None),
                }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_switch_is_the_earliest_start_and_never_overflows_a_timer() {
        let now: Timestamp = "2026-12-13T01:59:40Z".parse().unwrap();
        let pending = |at: &str| PendingVersion {
            name: "db-password".into(),
            version: "v".into(),
            not_before: Time(at.parse().unwrap()),
        };
        let rendered = |pending| Rendered {
            data: BTreeMap::new(),
            versions: BTreeMap::new(),
            expires: None,
            pending,
        };
        assert_eq!(rendered(Vec::new()).until_next_switch(now), None);
        let two = rendered(vec![
            pending("2026-12-20T02:00:00Z"),
            pending("2026-12-13T02:00:00Z"),
        ]);
        assert_eq!(two.until_next_switch(now), Some(Duration::from_secs(20)));
        let passed = rendered(vec![pending("2026-12-13T01:00:00Z")]);
        assert_eq!(passed.until_next_switch(now), Some(Duration::ZERO));
        let far = rendered(vec![pending("2999-01-01T00:00:00Z")]);
        assert_eq!(far.until_next_switch(now), Some(MAX_REFRESH_INTERVAL));
    }

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
