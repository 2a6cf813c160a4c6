//! Change detection by listing — the pure part.
//!
//! One paged `GET /secrets` says, for every secret, whether it is enabled and
//! when its latest version was last `updated` (whole seconds). Comparing two
//! listings tells which secrets changed; comparing a listing with the
//! `updated` of a value read earlier tells whether that value is still the
//! latest — so a value is fetched only when it changed.
//!
//! `updated` has one-second resolution, so a value read in the same second as
//! its last update might have been superseded in that same second; such a
//! value is never trusted (it is read again at the next opportunity).
//!
//! "The same second" is judged on the vault's clock, never the operator's:
//! the read is stamped with the `Date` of the vault's own response, which
//! the same clock as `updated` wrote. The operator's clock may be off by
//! seconds either way without a second update in one second being missed.
//! Only when a response carries no `Date` is the operator's clock used, set
//! back by [`CLOCK_MARGIN`].

use std::collections::{BTreeSet, HashMap};

use super::RemoteSecretInfo;

/// A listing of one vault as seen by one identity, by secret name.
pub type Snapshot = HashMap<String, RemoteSecretInfo>;

/// Names whose listing entry differs between `before` and `after`
/// (new, removed, re-enabled/disabled, updated or re-tagged).
pub fn changed_names(before: &Snapshot, after: &Snapshot) -> BTreeSet<String> {
    let removed = before.keys().filter(|name| !after.contains_key(*name));
    let added_or_changed = after
        .iter()
        .filter(|(name, info)| before.get(*name) != Some(info))
        .map(|(name, _)| name);
    removed.chain(added_or_changed).cloned().collect()
}

/// A value read earlier, with what is needed to judge whether it is current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadStamp {
    /// The version's `updated` attribute (Unix seconds), if Key Vault sent one.
    pub updated: Option<i64>,
    /// A second of the vault's clock (Unix seconds) no later than the read.
    pub as_of: i64,
}

/// How far the operator's clock is assumed to run ahead of the vault's at
/// most, for the rare response without a `Date` header.
pub const CLOCK_MARGIN_SECONDS: i64 = 30;

/// The stamp's `as_of`: the vault's `Date` when it sent one, else the
/// operator's clock set back by [`CLOCK_MARGIN_SECONDS`].
pub fn as_of(vault_date: Option<i64>, operator_now: i64) -> i64 {
    vault_date.unwrap_or(operator_now - CLOCK_MARGIN_SECONDS)
}

/// Whether a value read with `stamp` is still the latest according to `info`:
/// unchanged since, and read in a later second (of the vault's clock) than
/// its update, so no second update can hide in the same second.
pub fn still_current(stamp: &ReadStamp, info: &RemoteSecretInfo) -> bool {
    match (stamp.updated, info.updated) {
        (Some(read), Some(listed)) => info.enabled && read == listed && stamp.as_of > read,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn info(name: &str, updated: i64, enabled: bool) -> RemoteSecretInfo {
        RemoteSecretInfo {
            name: name.into(),
            enabled,
            tags: BTreeMap::new(),
            updated: Some(updated),
        }
    }

    fn snapshot(items: &[RemoteSecretInfo]) -> Snapshot {
        items.iter().map(|i| (i.name.clone(), i.clone())).collect()
    }

    #[test]
    fn without_a_date_the_operators_clock_is_trusted_only_with_a_margin() {
        assert_eq!(as_of(Some(100), 500), 100, "the vault's Date wins");
        assert_eq!(as_of(None, 500), 500 - CLOCK_MARGIN_SECONDS);
        // Read 3 s after the update by the operator's clock, which runs 3 s
        // ahead: the read may be in the update's second, so it is not trusted.
        let stamp = ReadStamp {
            updated: Some(100),
            as_of: as_of(None, 103),
        };
        assert!(!still_current(&stamp, &info("a", 100, true)));
    }

    #[test]
    fn differences_are_new_removed_and_changed_entries() {
        let before = snapshot(&[info("a", 1, true), info("b", 1, true), info("c", 1, true)]);
        let after = snapshot(&[
            info("a", 1, true),
            info("b", 2, true),
            info("c", 1, false),
            info("d", 1, true),
        ]);
        let changed: Vec<_> = changed_names(&before, &after).into_iter().collect();
        assert_eq!(changed, ["b", "c", "d"]);
        assert_eq!(changed_names(&after, &before).len(), 3);
        assert!(changed_names(&before, &before).is_empty());
    }

    #[test]
    fn a_value_is_current_only_if_unchanged_and_read_after_its_update_second() {
        let listed = info("a", 100, true);
        assert!(still_current(
            &ReadStamp {
                updated: Some(100),
                as_of: 101
            },
            &listed
        ));
        assert!(
            !still_current(
                &ReadStamp {
                    updated: Some(100),
                    as_of: 100
                },
                &listed
            ),
            "same-second read"
        );
        assert!(
            !still_current(
                &ReadStamp {
                    updated: Some(99),
                    as_of: 150
                },
                &listed
            ),
            "a newer version exists"
        );
        assert!(!still_current(
            &ReadStamp {
                updated: Some(100),
                as_of: 101
            },
            &info("a", 100, false)
        ));
        assert!(!still_current(
            &ReadStamp {
                updated: None,
                as_of: 101
            },
            &listed
        ));
    }
}
