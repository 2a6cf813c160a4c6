//! Scheduled rotations, free of I/O: Key Vault's `nbf` (not before) as a
//! schedule. Key Vault serves a version before its `nbf`; kvsync keeps the
//! newest version that is valid now and switches when the next one starts.
//!
//! ```text
//!  newest version: nbf absent or ≤ now ─────────────────▶ it (no versions listed)
//!  newest version: nbf > now ── list its versions once ──▶ the newest enabled version with
//!       (per newest version)                               nbf ≤ now, and the newest one as
//!                                                          pending (switch at its nbf)
//!  no version valid yet ────────────────────────────────▶ the newest (as Key Vault serves it)
//! ```

/// One version of a secret, as its versions listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: String,
    pub enabled: bool,
    /// Unix seconds.
    pub not_before: Option<i64>,
    /// Unix seconds: the listing's order of versions.
    pub created: Option<i64>,
}

/// A version not valid yet, and when it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub version: String,
    /// Unix seconds.
    pub not_before: i64,
}

/// Whether a version with this `nbf` is valid at `now`.
pub fn valid(not_before: Option<i64>, now: i64) -> bool {
    not_before.is_none_or(|nbf| nbf <= now)
}

/// The newest enabled version valid at `now`, if any.
pub fn current(versions: &[VersionInfo], now: i64) -> Option<&VersionInfo> {
    versions
        .iter()
        .filter(|v| v.enabled && valid(v.not_before, now))
        .max_by(|a, b| (a.created, &a.version).cmp(&(b.created, &b.version)))
}

/// The enabled version before `version` (by creation), for a previous-value key.
pub fn previous<'a>(versions: &'a [VersionInfo], version: &str) -> Option<&'a VersionInfo> {
    let this = versions.iter().find(|v| v.version == version)?;
    versions
        .iter()
        .filter(|v| v.enabled && v.version != version)
        .filter(|v| (v.created, &v.version) < (this.created, &this.version))
        .max_by(|a, b| (a.created, &a.version).cmp(&(b.created, &b.version)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(name: &str, created: i64, not_before: Option<i64>, enabled: bool) -> VersionInfo {
        VersionInfo {
            version: name.into(),
            enabled,
            not_before,
            created: Some(created),
        }
    }

    #[test]
    fn the_newest_valid_enabled_version_is_current() {
        let versions = [
            version("v1", 100, None, true),
            version("v2", 200, Some(150), true),
            version("v3", 300, Some(1_000), true),
            version("v4", 400, None, false),
        ];
        assert_eq!(current(&versions, 500).unwrap().version, "v2");
        assert_eq!(current(&versions, 1_000).unwrap().version, "v3");
        assert_eq!(current(&versions, 120).unwrap().version, "v1");
        assert!(current(&versions[2..], 500).is_none(), "nothing valid yet");
    }

    #[test]
    fn the_previous_value_is_the_enabled_version_before() {
        let versions = [
            version("v1", 100, None, true),
            version("v2", 200, None, false),
            version("v3", 300, None, true),
        ];
        assert_eq!(previous(&versions, "v3").unwrap().version, "v1");
        assert!(previous(&versions, "v1").is_none());
        assert!(valid(None, 0) && valid(Some(5), 5) && !valid(Some(6), 5));
    }
}
