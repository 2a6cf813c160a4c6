//! Key Vault's documented service limits, enforced per vault and operation
//! class over a sliding window, so that a client's behaviour at scale (and an
//! ESO-style reader's) meets the `429` it would meet in Azure.
//!
//! ```text
//!  seed `serviceLimits:` (absent = no limits)
//!     └─▶ ServiceLimits ── (vault, OperationClass) ─▶ SlidingWindow {limit, admitted instants}
//!  request ─▶ class (PUT /secrets/{name} = create, anything else = other)
//!          ─▶ admitted: counted in its window, served
//!          └▶ refused:  429 Throttled (not counted: Key Vault does not count
//!                       failed 429s), Retry-After = whole seconds until the
//!                       oldest admitted request leaves the window
//! ```
//!
//! The documented numbers (learn.microsoft.com, "Azure Key Vault service
//! limits", secrets and vault transactions, per vault per region): 300
//! `CREATE secret` and 4,000 of all other transactions per 10 seconds. The
//! subscription-wide limit (five times the vault's) is not modelled: the
//! emulator has no subscriptions. Real Key Vault's 429 was captured without
//! `Retry-After` (see the wire reference); `retryAfter: false` reproduces
//! that, the default sends it as the throttling guidance tells clients to
//! honour it when present.
//!
//! ```yaml
//! serviceLimits: {}                     # the documented limits
//! serviceLimits: {windowSeconds: 1, other: 3, secretCreate: 1, retryAfter: false}
//! ```

use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

const DOCUMENTED_WINDOW_SECONDS: u64 = 10;
const DOCUMENTED_SECRET_CREATE: usize = 300;
const DOCUMENTED_OTHER: usize = 4_000;

/// The seed's `serviceLimits`: every field defaults to Key Vault's documented value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "documented_window")]
    pub window_seconds: u64,
    #[serde(default = "documented_secret_create")]
    pub secret_create: usize,
    #[serde(default = "documented_other")]
    pub other: usize,
    #[serde(default = "send_retry_after")]
    pub retry_after: bool,
}

fn documented_window() -> u64 {
    DOCUMENTED_WINDOW_SECONDS
}
fn documented_secret_create() -> usize {
    DOCUMENTED_SECRET_CREATE
}
fn documented_other() -> usize {
    DOCUMENTED_OTHER
}
fn send_retry_after() -> bool {
    true
}

/// The transaction classes Key Vault limits separately for secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OperationClass {
    /// `PUT /secrets/{name}`: a new secret or version.
    SecretCreate,
    /// Every other request (reads, lists, updates, deletes).
    Other,
}

impl OperationClass {
    /// The class of a request by method and route template.
    pub fn of(method: &str, route: &str) -> Self {
        if method == "PUT" && route == "/secrets/{name}" {
            Self::SecretCreate
        } else {
            Self::Other
        }
    }
}

/// At most `limit` requests admitted in any `window`.
#[derive(Debug)]
struct SlidingWindow {
    window: Duration,
    limit: usize,
    /// Instants of the admitted requests still inside the window, oldest first.
    admitted: VecDeque<Instant>,
}

impl SlidingWindow {
    fn new(window: Duration, limit: usize) -> Self {
        Self {
            window,
            limit,
            admitted: VecDeque::new(),
        }
    }

    /// Admits a request at `now`, or says how long until one would be admitted.
    fn admit(&mut self, now: Instant) -> Result<(), Duration> {
        while self
            .admitted
            .front()
            .is_some_and(|&at| now.saturating_duration_since(at) >= self.window)
        {
            self.admitted.pop_front();
        }
        if self.admitted.len() < self.limit {
            self.admitted.push_back(now);
            return Ok(());
        }
        let oldest = self.admitted.front().copied().unwrap_or(now);
        Err((oldest + self.window).saturating_duration_since(now))
    }
}

/// A refused request: when to retry, if the 429 should say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after_seconds: Option<u64>,
}

/// Every vault's windows (created on first use).
#[derive(Debug, Default)]
pub struct ServiceLimits {
    config: Option<LimitsConfig>,
    windows: BTreeMap<(String, OperationClass), SlidingWindow>,
}

impl ServiceLimits {
    /// Limits as the seed configures them (`None`: every request admitted).
    pub fn new(config: Option<LimitsConfig>) -> Self {
        Self {
            config,
            windows: BTreeMap::new(),
        }
    }

    /// Admits one request of `class` to `vault` at `now`.
    pub fn admit(
        &mut self,
        vault: &str,
        class: OperationClass,
        now: Instant,
    ) -> Result<(), Throttled> {
        let Some(config) = self.config else {
            return Ok(());
        };
        let limit = match class {
            OperationClass::SecretCreate => config.secret_create,
            OperationClass::Other => config.other,
        };
        let window = Duration::from_secs(config.window_seconds);
        self.windows
            .entry((vault.to_owned(), class))
            .or_insert_with(|| SlidingWindow::new(window, limit))
            .admit(now)
            .map_err(|wait| Throttled {
                retry_after_seconds: config
                    .retry_after
                    .then(|| wait.as_secs() + u64::from(wait.subsec_nanos() > 0)),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(other: usize, secret_create: usize) -> Option<LimitsConfig> {
        Some(LimitsConfig {
            window_seconds: 10,
            secret_create,
            other,
            retry_after: true,
        })
    }

    #[test]
    fn the_seed_defaults_are_the_documented_limits() {
        let config: LimitsConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(
            config,
            LimitsConfig {
                window_seconds: 10,
                secret_create: 300,
                other: 4_000,
                retry_after: true
            }
        );
        assert!(serde_json::from_str::<LimitsConfig>(r#"{"get": 1}"#).is_err());
    }

    #[test]
    fn a_full_window_refuses_until_its_oldest_request_leaves() {
        let mut limits = ServiceLimits::new(config(3, 1));
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        for ms in [0, 4_000, 4_500] {
            assert_eq!(limits.admit("shop", OperationClass::Other, at(ms)), Ok(()));
        }
        assert_eq!(
            limits.admit("shop", OperationClass::Other, at(5_000)),
            Err(Throttled {
                retry_after_seconds: Some(5)
            })
        );
        // Refusals are not counted: the slot frees when the first request leaves.
        assert_eq!(
            limits.admit("shop", OperationClass::Other, at(9_999)),
            Err(Throttled {
                retry_after_seconds: Some(1)
            })
        );
        assert_eq!(
            limits.admit("shop", OperationClass::Other, at(10_000)),
            Ok(())
        );
        assert!(
            limits
                .admit("shop", OperationClass::Other, at(10_001))
                .is_err()
        );
        assert_eq!(
            limits.admit("shop", OperationClass::Other, at(14_000)),
            Ok(())
        );
    }

    #[test]
    fn vaults_and_classes_have_windows_of_their_own() {
        let mut limits = ServiceLimits::new(config(1, 1));
        let now = Instant::now();
        assert_eq!(limits.admit("shop", OperationClass::Other, now), Ok(()));
        assert_eq!(
            limits.admit("shop", OperationClass::SecretCreate, now),
            Ok(())
        );
        assert_eq!(limits.admit("hr", OperationClass::Other, now), Ok(()));
        assert!(
            limits
                .admit("shop", OperationClass::SecretCreate, now)
                .is_err()
        );
        assert!(limits.admit("hr", OperationClass::Other, now).is_err());
    }

    #[test]
    fn without_limits_everything_is_admitted_and_retry_after_is_optional() {
        let mut open = ServiceLimits::new(None);
        let now = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(open.admit("shop", OperationClass::Other, now), Ok(()));
        }
        let mut silent = ServiceLimits::new(config(0, 0).map(|c| LimitsConfig {
            retry_after: false,
            ..c
        }));
        assert_eq!(
            silent.admit("shop", OperationClass::Other, now),
            Err(Throttled {
                retry_after_seconds: None
            })
        );
    }

    #[test]
    fn only_setting_a_secret_is_a_create() {
        assert_eq!(
            OperationClass::of("PUT", "/secrets/{name}"),
            OperationClass::SecretCreate
        );
        for (method, route) in [
            ("GET", "/secrets/{name}"),
            ("GET", "/secrets"),
            ("PATCH", "/secrets/{name}/{version}"),
            ("DELETE", "/secrets/{name}"),
        ] {
            assert_eq!(OperationClass::of(method, route), OperationClass::Other);
        }
    }
}
