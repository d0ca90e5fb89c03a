//! Admission of new event streams: at most `opening` streams reading their initial state at
//! once and `per_second` new streams a second (governor's token bucket, bursts up to a second's
//! worth). Beyond either, a stream is refused before any work with the wait to announce in
//! `Retry-After`, growing with the recent refusals: a fleet reconnecting after a restart is let
//! in at the rate the server sustains and told to spread out, instead of piling up or echoing.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits of [`Admission`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Streams reading their initial state (database reads, first frames) at once.
    pub opening: usize,
    /// New streams per second, with bursts up to this many.
    pub per_second: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            opening: 256,
            per_second: 2000,
        }
    }
}

/// Longest `Retry-After` announced.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The gate new event streams pass.
#[derive(Debug)]
pub struct Admission {
    opening: Arc<Semaphore>,
    rate: DefaultDirectRateLimiter,
    per_second: u64,
    started: Instant,
    /// Refusals in the current second (`window` is that second since `started`).
    refusals: AtomicU64,
    window: AtomicU64,
}

/// A stream let in: hold it while the stream reads its initial state.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    /// A gate with `config`'s limits (each at least 1).
    pub fn new(config: AdmissionConfig) -> Self {
        let per_second = NonZeroU32::new(config.per_second).unwrap_or(NonZeroU32::MIN);
        Self {
            opening: Arc::new(Semaphore::new(config.opening.max(1))),
            rate: RateLimiter::direct(Quota::per_second(per_second)),
            per_second: u64::from(per_second.get()),
            started: Instant::now(),
            refusals: AtomicU64::new(0),
            window: AtomicU64::new(0),
        }
    }

    /// Lets a new stream in, or refuses it with the wait to announce.
    pub fn admit(&self) -> Result<Admitted, Duration> {
        let Ok(permit) = self.opening.clone().try_acquire_owned() else {
            return Err(self.refused());
        };
        if self.rate.check().is_err() {
            return Err(self.refused());
        }
        Ok(Admitted { _permit: permit })
    }

    /// Counts a refusal; the wait is one second per second's worth of refusals in the current
    /// second (at least 1 s, at most 30 s), so the refused spread over as long as it takes to
    /// let them all in.
    fn refused(&self) -> Duration {
        let now = self.started.elapsed().as_secs();
        if self.window.swap(now, Ordering::AcqRel) != now {
            self.refusals.store(0, Ordering::Release);
        }
        let refused = self.refusals.fetch_add(1, Ordering::AcqRel) + 1;
        let seconds = 1 + refused / self.per_second;
        Duration::from_secs(seconds).min(MAX_RETRY_AFTER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_beyond_the_rate_are_refused_with_a_wait_that_grows_with_the_refusals() {
        let admission = Admission::new(AdmissionConfig {
            opening: 1000,
            per_second: 10,
        });
        let admitted: Vec<Admitted> = (0..10).map(|_| admission.admit().unwrap()).collect();
        let waits: Vec<u64> = (0..25)
            .map(|_| admission.admit().unwrap_err().as_secs())
            .collect();
        assert_eq!(admitted.len(), 10);
        // Refusals 1..=9 wait 1 s, 10..=19 wait 2 s, then 3 s.
        assert_eq!(&waits[..9], &[1; 9]);
        assert_eq!(&waits[9..19], &[2; 10]);
        assert_eq!(&waits[19..], &[3; 6]);
    }

    #[test]
    fn streams_beyond_the_opening_limit_wait_until_one_has_opened() {
        let admission = Admission::new(AdmissionConfig {
            opening: 2,
            per_second: 1000,
        });
        let first = admission.admit().unwrap();
        let _second = admission.admit().unwrap();
        assert_eq!(admission.admit().unwrap_err(), Duration::from_secs(1));
        drop(first);
        assert!(admission.admit().is_ok());
    }
}
