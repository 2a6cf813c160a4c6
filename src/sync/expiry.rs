//! Expiry of the Key Vault versions in a Secret — pure.
//!
//! Key Vault treats `exp` as informational: it keeps serving an expired
//! version. kvsync does the same (the Secret stays, `Ready` stays True) and
//! says when the credential runs out instead:
//!
//! ```text
//!  earliest exp of the versions in the Secret ──▶ status.expiresAt
//!      now < exp − window          Expiring False (NotExpiring)   Expired False (NotExpired)
//!      exp − window ≤ now < exp    Expiring True  (ExpiresSoon)   Expired False (NotExpired)
//!      exp ≤ now                   Expiring False (Expired)       Expired True  (Expired)
//!  no exp                          neither condition, no expiresAt
//! ```
//!
//! The window is the operator's `--expiry-window` (30 days by default, as
//! Key Vault's own `SecretNearExpiry` event). [`warning`] names the Warning
//! event of a sync that moved the object into the window or past `exp`, so
//! each transition is told once.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::key::ObjectKey;
use super::status::set_condition;
use crate::api::KeyVaultSecretStatus;

/// Condition types.
pub const EXPIRING: &str = "Expiring";
pub const EXPIRED: &str = "Expired";

/// Default `--expiry-window`: Key Vault's `SecretNearExpiry` fires 30 days ahead.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30 * 86_400);

/// Where an expiry stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Outside the window.
    Valid,
    /// Inside the window, not yet expired.
    Expiring,
    /// Past `exp`.
    Expired,
}

/// Where `expires` (Unix seconds) stands at `now` with this window.
pub fn standing(expires: i64, now: i64, window: Duration) -> Standing {
    let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
    if now >= expires {
        Standing::Expired
    } else if now >= expires.saturating_sub(window) {
        Standing::Expiring
    } else {
        Standing::Valid
    }
}

/// Each object's earliest `exp` with the window it is judged by (kept by
/// the metrics, summarised per namespace at scrape time).
pub type Expiries = HashMap<ObjectKey, (i64, Duration)>;

/// One namespace's expiry, as the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceExpiry {
    /// The earliest `exp` among its objects (Unix seconds).
    pub earliest: i64,
    /// Objects inside their window or past `exp`.
    pub expiring: i64,
}

/// Per namespace: the earliest `exp` and how many objects need a new version.
pub fn summary(expiries: &Expiries, now: i64) -> BTreeMap<String, NamespaceExpiry> {
    let mut namespaces: BTreeMap<String, NamespaceExpiry> = BTreeMap::new();
    for (object, &(expires, window)) in expiries {
        let entry = namespaces
            .entry(object.namespace().to_owned())
            .or_insert(NamespaceExpiry {
                earliest: expires,
                expiring: 0,
            });
        entry.earliest = entry.earliest.min(expires);
        if standing(expires, now, window) != Standing::Valid {
            entry.expiring += 1;
        }
    }
    namespaces
}

/// Sets `expiresAt` and the `Expiring`/`Expired` conditions for the
/// earliest `exp` among the versions now in the Secret (`None`: no version
/// has one — both conditions go).
pub fn apply(
    status: &mut KeyVaultSecretStatus,
    expires: Option<i64>,
    window: Duration,
    generation: Option<i64>,
    now: Timestamp,
) {
    let Some(at) = expires.and_then(|exp| Timestamp::from_second(exp).ok()) else {
        status.expires_at = None;
        status
            .conditions
            .retain(|c| c.type_ != EXPIRING && c.type_ != EXPIRED);
        return;
    };
    status.expires_at = Some(Time(at));
    let date = at.strftime("%Y-%m-%dT%H:%M:%SZ");
    let (expiring, expired) = match standing(at.as_second(), now.as_second(), window) {
        Standing::Valid => (
            (
                "False",
                "NotExpiring",
                format!("The earliest Key Vault version in the Secret expires at {date}"),
            ),
            ("False", "NotExpired", format!("Expires at {date}")),
        ),
        Standing::Expiring => {
            // Whole days left, rounded up: 9 days and 23 hours is "in 10 days".
            let days = (at.as_second() - now.as_second() + 86_399) / 86_400;
            (
                (
                    "True",
                    "ExpiresSoon",
                    format!(
                        "A Key Vault version in the Secret expires at {date} (in {days} days): add a new version in Key Vault"
                    ),
                ),
                ("False", "NotExpired", format!("Expires at {date}")),
            )
        }
        Standing::Expired => {
            let message = format!(
                "A Key Vault version in the Secret expired at {date}; Key Vault still serves it, the Secret keeps it: add a new version in Key Vault"
            );
            (
                ("False", "Expired", message.clone()),
                ("True", "Expired", message),
            )
        }
    };
    for (type_, (condition_status, reason, message)) in [(EXPIRING, expiring), (EXPIRED, expired)] {
        set_condition(
            &mut status.conditions,
            type_,
            condition_status,
            reason,
            &message,
            generation,
            now,
        );
    }
}

/// The Warning event (reason, message) for a status that entered the window
/// or expired since `before`; `None` when nothing entered.
pub fn warning(
    before: Option<&KeyVaultSecretStatus>,
    after: &KeyVaultSecretStatus,
) -> Option<(&'static str, String)> {
    let is_true = |status: Option<&KeyVaultSecretStatus>, type_: &str| {
        status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == "True")
        })
    };
    let message = |type_: &str| {
        after
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    if is_true(Some(after), EXPIRED) && !is_true(before, EXPIRED) {
        Some((EXPIRED, message(EXPIRED)))
    } else if is_true(Some(after), EXPIRING) && !is_true(before, EXPIRING) {
        Some((EXPIRING, message(EXPIRING)))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_800_000_000;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn condition<'a>(status: &'a KeyVaultSecretStatus, type_: &str) -> (&'a str, &'a str) {
        let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn the_window_decides_the_standing() {
        let window = DEFAULT_WINDOW;
        assert_eq!(standing(NOW + 31 * DAY, NOW, window), Standing::Valid);
        assert_eq!(standing(NOW + 30 * DAY, NOW, window), Standing::Expiring);
        assert_eq!(standing(NOW + 1, NOW, window), Standing::Expiring);
        assert_eq!(standing(NOW, NOW, window), Standing::Expired);
        assert_eq!(standing(i64::MIN, NOW, Duration::MAX), Standing::Expired);
        assert_eq!(standing(i64::MAX, NOW, Duration::MAX), Standing::Expiring);
    }

    #[test]
    fn ten_days_ahead_is_expiring_with_the_date_and_warns_once() {
        let mut status = KeyVaultSecretStatus::default();
        apply(
            &mut status,
            Some(NOW + 10 * DAY),
            DEFAULT_WINDOW,
            Some(1),
            at(NOW),
        );
        assert_eq!(status.expires_at, Some(Time(at(NOW + 10 * DAY))));
        assert_eq!(condition(&status, EXPIRING), ("True", "ExpiresSoon"));
        assert_eq!(condition(&status, EXPIRED), ("False", "NotExpired"));
        let (reason, message) = warning(None, &status).unwrap();
        assert_eq!(reason, EXPIRING);
        assert!(
            message.contains("2027-01-25T08:00:00Z") && message.contains("in 10 days"),
            "{message}"
        );

        let mut later = status.clone();
        apply(
            &mut later,
            Some(NOW + 10 * DAY),
            DEFAULT_WINDOW,
            Some(1),
            at(NOW + 60),
        );
        assert_eq!(warning(Some(&status), &later), None, "told once");
    }

    #[test]
    fn past_exp_is_expired_and_warns_again() {
        let mut expiring = KeyVaultSecretStatus::default();
        apply(
            &mut expiring,
            Some(NOW + DAY),
            DEFAULT_WINDOW,
            Some(1),
            at(NOW),
        );
        let mut expired = expiring.clone();
        apply(
            &mut expired,
            Some(NOW + DAY),
            DEFAULT_WINDOW,
            Some(1),
            at(NOW + DAY),
        );
        assert_eq!(condition(&expired, EXPIRING), ("False", "Expired"));
        assert_eq!(condition(&expired, EXPIRED), ("True", "Expired"));
        assert_eq!(warning(Some(&expiring), &expired).unwrap().0, EXPIRED);
    }

    #[test]
    fn namespaces_are_summarised_not_objects() {
        let expiries = Expiries::from([
            (
                ObjectKey::new("shop", "db"),
                (NOW + 10 * DAY, DEFAULT_WINDOW),
            ),
            (
                ObjectKey::new("shop", "api"),
                (NOW + 90 * DAY, DEFAULT_WINDOW),
            ),
            (ObjectKey::new("shop", "old"), (NOW - DAY, DEFAULT_WINDOW)),
            (
                ObjectKey::new("bank", "db"),
                (NOW + 90 * DAY, DEFAULT_WINDOW),
            ),
        ]);
        let summary = summary(&expiries, NOW);
        assert_eq!(
            summary["shop"],
            NamespaceExpiry {
                earliest: NOW - DAY,
                expiring: 2
            }
        );
        assert_eq!(
            summary["bank"],
            NamespaceExpiry {
                earliest: NOW + 90 * DAY,
                expiring: 0
            }
        );
    }

    #[test]
    fn far_or_no_expiry_warns_nothing_and_no_exp_removes_the_conditions() {
        let mut status = KeyVaultSecretStatus::default();
        apply(
            &mut status,
            Some(NOW + 90 * DAY),
            DEFAULT_WINDOW,
            Some(1),
            at(NOW),
        );
        assert_eq!(condition(&status, EXPIRING), ("False", "NotExpiring"));
        assert_eq!(warning(None, &status), None);
        apply(&mut status, None, DEFAULT_WINDOW, Some(1), at(NOW));
        assert!(status.conditions.is_empty() && status.expires_at.is_none());
    }
}
