//! Which version of a secret is current, which are pending, which came
//! before — the pure part of a rotation scheduled with Key Vault's `nbf`.
//!
//! Key Vault serves the newest version of a secret whatever its `nbf` (not
//! before): `nbf` is informational there. Read with a time, a secret's
//! versions (from `GET /secrets/{name}/versions`, oldest first by `created`)
//! say:
//!
//! ```text
//!   created ──▶   v1 (nbf ≤ now)   v2 (disabled)   v3 (nbf ≤ now)   v4 (nbf Sun 02:00)   v5 (nbf Sun 03:00)
//!                                                   ▲ current         ▲ pending           ▲ pending
//!                 ▲ previous (v2 is skipped: disabled)
//! ```
//!
//! - **current**: the newest enabled version valid now (`nbf` ≤ now or none);
//! - **pending**: newer enabled versions that will each be current at their
//!   `nbf`, earliest first — a version whose `nbf` comes no earlier than a
//!   newer version's is never current (the newer one is valid by then) and is
//!   left out;
//! - **previous**: the enabled version valid now created before the current one.
//!
//! With `nbf` ignored every enabled version counts as valid: the newest one is
//! current and nothing is pending. Versions created in the same second keep
//! the listing's order, except that the one Key Vault serves as the latest is
//! always the newest.

/// One version as a versions listing shows it (no value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    /// The version id (32 hex characters).
    pub version: String,
    pub enabled: bool,
    /// The version's `created` attribute (Unix seconds).
    pub created: Option<i64>,
    /// The version's `updated` attribute (Unix seconds): changes with its
    /// attributes (`enabled`, `nbf`…).
    pub updated: Option<i64>,
    /// The version's `nbf` attribute (Unix seconds).
    pub not_before: Option<i64>,
}

/// What a secret's versions say at one time.
#[derive(Debug, PartialEq, Eq)]
pub struct Choice<'a> {
    /// The version to use; `None` when no enabled version is valid yet.
    pub current: Option<&'a VersionInfo>,
    /// Versions that become current at their `nbf`, earliest first.
    pub pending: Vec<&'a VersionInfo>,
    /// The enabled, valid version created before `current`.
    pub previous: Option<&'a VersionInfo>,
}

/// Chooses among `versions` (any order); `latest` is the version Key Vault
/// serves as the latest (the newest, whatever the times say); `valid_at`
/// is now in Unix seconds, or `None` to ignore `nbf`.
pub fn choose<'a>(versions: &'a [VersionInfo], latest: &str, valid_at: Option<i64>) -> Choice<'a> {
    let ordered = oldest_first(versions, Some(latest));
    let valid = |v: &VersionInfo| valid(v.not_before, valid_at);
    let Some(at) = ordered.iter().rposition(|v| valid(v)) else {
        return Choice {
            current: None,
            pending: becoming_current(&ordered),
            previous: None,
        };
    };
    Choice {
        current: Some(ordered[at]),
        pending: becoming_current(&ordered[at + 1..]),
        previous: ordered[..at].iter().rev().find(|v| valid(v)).copied(),
    }
}

/// The enabled, valid version created before `version` (the previous value
/// of a pinned ref), with `nbf` judged as in [`choose`].
pub fn previous_of<'a>(
    versions: &'a [VersionInfo],
    version: &str,
    valid_at: Option<i64>,
) -> Option<&'a VersionInfo> {
    let ordered = oldest_first(versions, None);
    let at = ordered.iter().position(|v| v.version == version)?;
    ordered[..at]
        .iter()
        .rev()
        .find(|v| valid(v.not_before, valid_at))
        .copied()
}

/// The enabled versions, oldest first by `created`, `latest` last; versions
/// of the same second keep the listing's order (the sort is stable).
fn oldest_first<'a>(versions: &'a [VersionInfo], latest: Option<&str>) -> Vec<&'a VersionInfo> {
    let mut ordered: Vec<&VersionInfo> = versions.iter().filter(|v| v.enabled).collect();
    ordered.sort_by_key(|v| (Some(v.version.as_str()) == latest, v.created));
    ordered
}

/// Whether a version with this `nbf` is valid at `valid_at` (`None`: `nbf` ignored).
pub fn valid(not_before: Option<i64>, valid_at: Option<i64>) -> bool {
    match (valid_at, not_before) {
        (Some(now), Some(nbf)) => nbf <= now,
        _ => true,
    }
}

/// Of versions not valid yet (oldest first), those that will be current at
/// their `nbf`: no newer one is valid by then.
fn becoming_current<'a>(newer: &[&'a VersionInfo]) -> Vec<&'a VersionInfo> {
    let mut pending = Vec::new();
    let mut next_start = i64::MAX;
    for version in newer.iter().rev() {
        let start = version.not_before.unwrap_or(i64::MIN);
        if start < next_start {
            pending.push(*version);
            next_start = start;
        }
    }
    pending.reverse();
    pending
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn version(id: &str, created: i64, nbf: Option<i64>, enabled: bool) -> VersionInfo {
        VersionInfo {
            version: id.into(),
            enabled,
            created: Some(created),
            updated: Some(created),
            not_before: nbf,
        }
    }

    fn ids(versions: &[&VersionInfo]) -> Vec<String> {
        versions.iter().map(|v| v.version.clone()).collect()
    }

    fn id(version: Option<&VersionInfo>) -> Option<&str> {
        version.map(|v| v.version.as_str())
    }

    #[test]
    fn the_newest_valid_version_is_current_and_newer_ones_pend() {
        let versions = [
            version("v1", 100, None, true),
            version("v2", 200, Some(NOW - 10), true),
            version("v3", 300, Some(NOW + 20), true),
        ];
        let choice = choose(&versions, "v3", Some(NOW));
        assert_eq!(id(choice.current), Some("v2"));
        assert_eq!(ids(&choice.pending), ["v3"]);
        assert_eq!(id(choice.previous), Some("v1"));

        let at_nbf = choose(&versions, "v3", Some(NOW + 20));
        assert_eq!(id(at_nbf.current), Some("v3"), "switched at nbf");
        assert!(at_nbf.pending.is_empty());
        assert_eq!(id(at_nbf.previous), Some("v2"));
    }

    #[test]
    fn disabled_versions_are_skipped_everywhere() {
        let versions = [
            version("v1", 100, None, true),
            version("v2", 200, None, false),
            version("v3", 300, None, true),
            version("v4", 400, Some(NOW + 60), false),
        ];
        let choice = choose(&versions, "v4", Some(NOW));
        assert_eq!(id(choice.current), Some("v3"));
        assert_eq!(id(choice.previous), Some("v1"), "not the disabled v2");
        assert!(choice.pending.is_empty(), "a disabled version never starts");
    }

    #[test]
    fn ignoring_nbf_takes_the_newest_and_nothing_pends() {
        let versions = [
            version("v1", 100, None, true),
            version("v2", 200, Some(NOW + 3600), true),
        ];
        let choice = choose(&versions, "v2", None);
        assert_eq!(id(choice.current), Some("v2"));
        assert!(choice.pending.is_empty());
        assert_eq!(id(choice.previous), Some("v1"));
    }

    #[test]
    fn a_version_overtaken_by_a_newer_one_never_pends() {
        // v3 starts Sunday, v4 (created later) already Saturday: v3 is never current.
        let versions = [
            version("v2", 200, None, true),
            version("v3", 300, Some(NOW + 2 * 86_400), true),
            version("v4", 400, Some(NOW + 86_400), true),
            version("v5", 500, Some(NOW + 3 * 86_400), true),
        ];
        let choice = choose(&versions, "v5", Some(NOW));
        assert_eq!(id(choice.current), Some("v2"));
        assert_eq!(ids(&choice.pending), ["v4", "v5"]);
    }

    #[test]
    fn with_no_valid_version_nothing_is_current_and_the_first_start_pends() {
        let versions = [version("v1", 100, Some(NOW + 30), true)];
        let choice = choose(&versions, "v1", Some(NOW));
        assert_eq!(choice.current, None);
        assert_eq!(ids(&choice.pending), ["v1"]);
        assert_eq!(choice.previous, None);
    }

    #[test]
    fn a_single_version_has_no_previous_and_a_not_yet_valid_one_is_no_previous() {
        let only = [version("v1", 100, None, true)];
        assert_eq!(choose(&only, "v1", Some(NOW)).previous, None);
        // v2 pending, v3 current (created after v2 with an nbf already passed).
        let versions = [
            version("v1", 100, None, true),
            version("v2", 200, Some(NOW + 60), true),
            version("v3", 300, Some(NOW - 60), true),
        ];
        let choice = choose(&versions, "v3", Some(NOW));
        assert_eq!(id(choice.current), Some("v3"));
        assert_eq!(
            id(choice.previous),
            Some("v1"),
            "v2 is not valid yet: no credential to fall back on"
        );
        assert!(
            choice.pending.is_empty(),
            "v2 is older than the current one"
        );
    }

    #[test]
    fn a_pinned_version_has_the_enabled_valid_one_before_it_as_previous() {
        let versions = [
            version("v1", 100, None, true),
            version("v2", 200, None, false),
            version("v3", 300, None, true),
            version("v4", 400, None, true),
        ];
        assert_eq!(id(previous_of(&versions, "v3", Some(NOW))), Some("v1"));
        assert_eq!(previous_of(&versions, "v1", Some(NOW)), None);
        assert_eq!(previous_of(&versions, "gone", Some(NOW)), None);
    }

    #[test]
    fn the_latest_is_the_newest_within_a_second_and_the_listing_orders_the_rest() {
        let versions = [
            version("b", 100, None, true),
            version("c", 100, None, true),
            version("a", 100, None, true),
        ];
        let choice = choose(&versions, "a", Some(NOW));
        assert_eq!(id(choice.current), Some("a"));
        assert_eq!(id(choice.previous), Some("c"));
        let choice = choose(&versions, "c", Some(NOW));
        assert_eq!(id(choice.current), Some("c"));
        assert_eq!(id(choice.previous), Some("a"));
    }
}
