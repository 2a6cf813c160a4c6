//! How recent an answer must be, and when to ask the vault again — the pure part.
//!
//! Every reader says how old an answer it accepts ([`Freshness`]). What was
//! last asked of the vault (a listing, or a pinned version) is kept as an
//! [`Attempt`]: when it started and what came back, success or failure.
//!
//! ```text
//!  reader ── Within(d) ──▶ not_before = asked − d ──┐
//!         ── Now ────────▶ not_before = asked ──────┤
//!         ── Any ────────▶ no not_before ───────────┤
//!                                                   ▼
//!  newest attempt succeeded and started ≥ not_before ─────────────────▶ its value, no request
//!  newest attempt failed, its retry window is still open, and
//!     it started ≥ not_before, or the reader is not Now ───────────────▶ its error, no request
//!  otherwise ──────────────────────────────────────────────────────────▶ one new request
//!                                                   (concurrent readers share it: single-flight)
//! ```
//!
//! So a failure never sticks: it answers readers only until the shortest
//! backoff after it has passed (and a `Now` reader only if it was made for
//! it), after which the next reader asks again; readers arriving within the
//! window share the failure instead of each hammering a failing vault. The poller of a
//! listing follows the same attempts ([`next_listing`]): one period after the
//! newest listing, whoever made it, or one backoff after a failure.

use std::time::{Duration, Instant};

use super::VaultError;
use crate::schedule::{backoff_delay, refresh_delay};

/// How recent a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// What the vault said at most this long ago: the listing (or pinned
    /// version) used to answer was requested no longer ago than that.
    Within(Duration),
    /// Read the vault as of now: the request started after this read was asked for.
    Now,
    /// Any answer read before, however old: for the value of a version
    /// chosen from a versions listing. Key Vault never changes a version's
    /// value, and the listing tells whether it is still enabled.
    Any,
}

/// What a reader needs of an attempt, fixed when it asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    /// The attempt must have started no earlier than this (`None`: any will do).
    pub not_before: Option<Instant>,
    /// Whether a recent failure answers it while its retry window is open.
    pub waits_out_failures: bool,
}

impl Freshness {
    /// The bound for an answer judged by its own age (a pinned version, or
    /// a read without a listing): nothing pushes a change of those, so a
    /// reader refreshing every interval ± 10 % must not reuse the read of
    /// its previous refresh — half the bound guarantees a new request each
    /// time, which keeps what it reports at most one interval (+ jitter) old.
    pub fn for_own_age(self) -> Self {
        match self {
            Freshness::Within(bound) => Freshness::Within(bound / 2),
            other => other,
        }
    }

    pub fn need(self, asked: Instant) -> Need {
        match self {
            Freshness::Within(bound) => Need {
                not_before: asked.checked_sub(bound),
                waits_out_failures: true,
            },
            Freshness::Now => Need {
                not_before: Some(asked),
                waits_out_failures: false,
            },
            Freshness::Any => Need {
                not_before: None,
                waits_out_failures: true,
            },
        }
    }
}

/// One request to the vault and what came of it.
#[derive(Clone, Debug)]
pub struct Attempt<T> {
    pub started: Instant,
    pub ended: Instant,
    pub outcome: Result<T, VaultError>,
    /// After a failure: until when readers share it instead of asking again.
    pub retry_from: Option<Instant>,
}

/// What a reader does.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<T> {
    /// The newest attempt answers (no request).
    Answer(Result<T, VaultError>),
    /// Ask the vault.
    Request,
}

/// Whether the newest attempt answers a reader with `need` at `now`.
pub fn decide<T: Clone>(newest: Option<&Attempt<T>>, need: Need, now: Instant) -> Decision<T> {
    let Some(attempt) = newest else {
        return Decision::Request;
    };
    let recent_enough = need.not_before.is_none_or(|at| attempt.started >= at);
    let answers = match &attempt.outcome {
        Ok(_) => recent_enough,
        Err(_) => {
            attempt.retry_from.is_some_and(|until| now < until)
                && (recent_enough || need.waits_out_failures)
        }
    };
    if answers {
        Decision::Answer(attempt.outcome.clone())
    } else {
        Decision::Request
    }
}

/// How long readers share the `failures`-th consecutive failure: the shortest
/// backoff the poller may wait after it (so readers never ask sooner than the
/// backoff allows, and the first request after it is not refused).
pub fn retry_window(failures: u32, retry_after: Option<Duration>, cap: Duration) -> Duration {
    backoff_delay(failures, retry_after, cap, 0.0)
}

/// What the poller knows about the newest listing attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastListing {
    pub started: Instant,
    pub ended: Instant,
    /// Consecutive failed attempts up to and including this one.
    pub failures: u32,
    pub retry_after: Option<Duration>,
}

/// When the poller lists next: one (jittered) `period` after the newest
/// listing started, or one backoff after it failed; at once if there was none.
pub fn next_listing(
    last: Option<LastListing>,
    period: Duration,
    max_backoff: Duration,
    unit_random: f64,
    now: Instant,
) -> Instant {
    match last {
        None => now,
        Some(last) if last.failures > 0 => {
            last.ended + backoff_delay(last.failures, last.retry_after, max_backoff, unit_random)
        }
        Some(last) => last.started + refresh_delay(period, unit_random),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn attempt(started: Instant, outcome: Result<u8, VaultError>) -> Attempt<u8> {
        let retry_from = outcome.is_err().then_some(started + 2 * S);
        Attempt {
            started,
            ended: started,
            outcome,
            retry_from,
        }
    }

    fn down() -> VaultError {
        VaultError::Unavailable("HTTP 500".into())
    }

    #[test]
    fn a_listing_answers_readers_whose_bound_it_meets() {
        let t0 = Instant::now();
        let listed = attempt(t0, Ok(1));
        let later = t0 + 10 * S;
        let within = |secs| Freshness::Within(secs * S).need(later);
        assert_eq!(
            decide(Some(&listed), within(30), later),
            Decision::Answer(Ok(1))
        );
        assert_eq!(
            decide(Some(&listed), within(10), later),
            Decision::Answer(Ok(1))
        );
        assert_eq!(
            decide(Some(&listed), within(5), later),
            Decision::Request,
            "too old for a 5 s reader, whoever else it satisfies"
        );
        assert_eq!(
            decide(Some(&listed), Freshness::Now.need(later), later),
            Decision::Request
        );
        assert_eq!(decide::<u8>(None, within(30), later), Decision::Request);
    }

    #[test]
    fn now_is_answered_only_by_an_attempt_started_after_it_asked() {
        let t0 = Instant::now();
        let need = Freshness::Now.need(t0);
        assert_eq!(
            decide(Some(&attempt(t0 + S, Ok(2))), need, t0 + S),
            Decision::Answer(Ok(2))
        );
        assert_eq!(
            decide(Some(&attempt(t0 + S, Err(down()))), need, t0 + S),
            Decision::Answer(Err(down())),
            "the failure of a request made for this reader is its answer"
        );
    }

    #[test]
    fn a_failure_is_shared_within_its_retry_window_and_never_sticks() {
        let t0 = Instant::now();
        let failed = attempt(t0, Err(down()));
        let within = |at| Freshness::Within(S / 2).need(at);
        assert_eq!(
            decide(Some(&failed), within(t0 + S), t0 + S),
            Decision::Answer(Err(down())),
            "inside the window: no request"
        );
        assert_eq!(
            decide(Some(&failed), within(t0 + 3 * S), t0 + 3 * S),
            Decision::Request,
            "after the window the next reader asks again"
        );
        let hour = |at| Freshness::Within(Duration::from_secs(3600)).need(at);
        assert_eq!(
            decide(Some(&failed), hour(t0 + S), t0 + S),
            Decision::Answer(Err(down())),
            "a failure is the newest news, whatever the reader's bound"
        );
        assert_eq!(
            decide(Some(&failed), hour(t0 + 3 * S), t0 + 3 * S),
            Decision::Request,
            "however long the reader's bound, a failure does not outlive its window"
        );
        assert_eq!(
            decide(Some(&failed), Freshness::Now.need(t0 + S), t0 + S),
            Decision::Request,
            "force-sync is never answered by an earlier failure"
        );
    }

    #[test]
    fn a_huge_bound_accepts_any_listing_without_overflow() {
        let now = Instant::now();
        let old = attempt(now.checked_sub(S).unwrap_or(now), Ok(1));
        for seconds in [u64::MAX, u64::MAX / 4, 180 * 86_400] {
            let need = Freshness::Within(Duration::from_secs(seconds)).need(now);
            assert_eq!(decide(Some(&old), need, now), Decision::Answer(Ok(1)));
        }
    }

    #[test]
    fn the_poller_lists_one_period_after_the_newest_listing_or_one_backoff_after_a_failure() {
        let t0 = Instant::now();
        let cap = Duration::from_secs(60);
        let ok = LastListing {
            started: t0,
            ended: t0 + S,
            failures: 0,
            retry_after: None,
        };
        assert_eq!(
            next_listing(Some(ok), 10 * S, cap, 0.5, t0 + S),
            t0 + 10 * S
        );
        // A shorter subscriber moves the next listing closer (or to now).
        assert_eq!(next_listing(Some(ok), 2 * S, cap, 0.5, t0 + S), t0 + 2 * S);
        let failed = LastListing { failures: 3, ..ok };
        assert_eq!(
            next_listing(Some(failed), 3600 * S, cap, 1.0, t0 + S),
            t0 + S + 4 * S,
            "an outage is retried with backoff, not after a long period"
        );
        assert_eq!(next_listing(None, 10 * S, cap, 0.5, t0), t0);
    }

    #[test]
    fn the_retry_window_is_the_shortest_backoff() {
        let cap = Duration::from_secs(4);
        for failures in 1..10 {
            for r in [0.0, 0.3, 1.0] {
                assert!(retry_window(failures, None, cap) <= backoff_delay(failures, None, cap, r));
            }
        }
        assert_eq!(retry_window(1, None, cap), S / 2);
        assert_eq!(retry_window(1, Some(3 * S), cap), 3 * S);
    }

    #[test]
    fn an_own_age_answer_is_not_reused_by_the_next_refresh() {
        let interval = Duration::from_secs(10);
        let read = Instant::now();
        let next_refresh = read + refresh_delay(interval, 0.0);
        let attempt = Attempt {
            started: read,
            ended: read,
            outcome: Ok(()),
            retry_from: None,
        };
        let need = Freshness::Within(interval).for_own_age().need(next_refresh);
        assert_eq!(
            decide(Some(&attempt), need, next_refresh),
            Decision::Request
        );
        assert_eq!(Freshness::Now.for_own_age(), Freshness::Now);
    }
}
