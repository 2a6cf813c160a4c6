//! Per-vault admission: a concurrency limit, and one shared backoff after a 429.
//!
//! Key Vault throttles per vault. When it says 429, every caller of that
//! vault waits out the same backoff instead of each object retrying on its
//! own schedule (which is what turns one 429 into a storm). While a vault is
//! backing off, calls fail fast with `Throttled` and send nothing.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::VaultError;
use crate::schedule::backoff_delay;

/// Admission state of one vault.
pub struct VaultGate {
    permits: Semaphore,
    throttle: Mutex<Throttle>,
    max_backoff: Duration,
}

#[derive(Default)]
struct Throttle {
    until: Option<Instant>,
    consecutive: u32,
}

impl VaultGate {
    pub fn new(concurrency: usize, max_backoff: Duration) -> Self {
        VaultGate {
            permits: Semaphore::new(concurrency.max(1)),
            throttle: Mutex::default(),
            max_backoff,
        }
    }

    /// Runs `call` when the vault admits it; records a 429 for everyone.
    pub async fn run<T, F>(&self, call: F) -> Result<T, VaultError>
    where
        F: Future<Output = Result<T, VaultError>>,
    {
        self.admit()?;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| VaultError::Unavailable("shutting down".into()))?;
        // A 429 may have come while this call waited for a permit.
        self.admit()?;
        let result = call.await;
        let mut throttle = self.throttle.lock().unwrap();
        match &result {
            Err(VaultError::Throttled { retry_after }) => {
                throttle.consecutive += 1;
                let wait = backoff_delay(
                    throttle.consecutive,
                    *retry_after,
                    self.max_backoff,
                    rand::random(),
                );
                throttle.until = Some(Instant::now() + wait);
            }
            Ok(_) => throttle.consecutive = 0,
            Err(_) => {}
        }
        result
    }

    /// `Throttled` (and nothing is sent) while the vault backs off after a 429.
    pub fn admit(&self) -> Result<(), VaultError> {
        match self.remaining_backoff() {
            Some(wait) => Err(VaultError::Throttled {
                retry_after: Some(wait),
            }),
            None => Ok(()),
        }
    }

    /// How long the vault still backs off after a 429, if it does.
    pub fn remaining_backoff(&self) -> Option<Duration> {
        let throttle = self.throttle.lock().unwrap();
        throttle
            .until
            .and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_429_holds_back_every_caller_of_the_vault() {
        let gate = VaultGate::new(4, Duration::from_secs(60));
        let first: Result<(), _> = gate
            .run(async {
                Err(VaultError::Throttled {
                    retry_after: Some(Duration::from_secs(5)),
                })
            })
            .await;
        assert!(first.is_err());
        let mut sent = false;
        let second = gate
            .run(async {
                sent = true;
                Ok(())
            })
            .await;
        assert!(!sent, "no request while the vault backs off");
        assert!(
            matches!(second, Err(VaultError::Throttled { retry_after: Some(wait) }) if wait > Duration::from_secs(4))
        );
    }

    #[tokio::test]
    async fn a_call_waiting_for_a_permit_is_not_sent_after_a_429() {
        let gate = VaultGate::new(1, Duration::from_secs(60));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let first = gate.run(async {
            released.await.unwrap();
            Err::<(), _>(VaultError::Throttled {
                retry_after: Some(Duration::from_secs(5)),
            })
        });
        let mut sent = false;
        let second = async {
            tokio::task::yield_now().await;
            gate.run(async {
                sent = true;
                Ok(())
            })
            .await
        };
        let waiting = async {
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            release.send(()).unwrap();
        };
        let (first, second, ()) = tokio::join!(first, second, waiting);
        assert!(first.is_err());
        assert!(
            !sent,
            "the waiting call went out although the vault said 429"
        );
        assert!(matches!(second, Err(VaultError::Throttled { .. })));
    }

    #[tokio::test]
    async fn any_retry_after_a_server_sends_is_waited_out_without_overflow() {
        let gate = VaultGate::new(4, Duration::from_secs(60));
        let huge = super::super::errors::parse_retry_after("18446744073709551615");
        let first: Result<(), _> = gate
            .run(async { Err(VaultError::Throttled { retry_after: huge }) })
            .await;
        assert!(first.is_err());
        assert!(gate.remaining_backoff().is_some());
    }
}
