//! When to look at a KeyVaultSecret again — pure.
//!
//! Refreshes are spread with ±10 % jitter so that objects created (or
//! re-listed after a restart) together drift apart instead of hitting Key
//! Vault in waves. Failures back off exponentially from 1 s with equal
//! jitter (at least half of each step) up to a cap, and a `Retry-After`
//! from Key Vault is honoured as a floor.

use std::time::Duration;

/// Delay until the next refresh after a success.
pub fn refresh_delay(interval: Duration, unit_random: f64) -> Duration {
    interval.mul_f64(0.9 + 0.2 * unit_random.clamp(0.0, 1.0))
}

/// Delay before retry number `failures` (1 = first failure).
pub fn backoff_delay(
    failures: u32,
    retry_after: Option<Duration>,
    cap: Duration,
    unit_random: f64,
) -> Duration {
    let exponential =
        Duration::from_secs(1).saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let ceiling = exponential.min(cap);
    // "Equal jitter": at least half the step, so retries never bunch at zero.
    let jittered = ceiling.mul_f64(0.5 + 0.5 * unit_random.clamp(0.0, 1.0));
    jittered
        .max(retry_after.unwrap_or_default())
        .min(cap.max(retry_after.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_is_spread_within_ten_percent() {
        let hour = Duration::from_secs(3600);
        assert_eq!(refresh_delay(hour, 0.0), Duration::from_secs(3240));
        assert_eq!(refresh_delay(hour, 1.0), Duration::from_secs(3960));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(300);
        assert_eq!(backoff_delay(1, None, cap, 1.0), Duration::from_secs(1));
        assert_eq!(backoff_delay(4, None, cap, 1.0), Duration::from_secs(8));
        assert_eq!(backoff_delay(40, None, cap, 1.0), cap);
        assert!(backoff_delay(4, None, cap, 0.0) >= Duration::from_secs(4));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let cap = Duration::from_secs(300);
        assert_eq!(
            backoff_delay(1, Some(Duration::from_secs(30)), cap, 0.0),
            Duration::from_secs(30)
        );
    }
}
