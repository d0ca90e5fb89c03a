//! Reconnect delays: exponential backoff with jitter and a cap.

use std::time::Duration;

use rand::Rng;

/// How reconnect delays grow.
///
/// The n-th consecutive failure waits a random time between half and all of
/// `min(initial * 2^n, max)` ("equal jitter"): never zero, so a server that accepts and
/// immediately drops connections cannot cause a tight loop, and spread out, so a fleet of agents
/// does not reconnect in lock step after a server restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Delay ceiling of the first retry.
    pub initial: Duration,
    /// Largest delay ceiling.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// The state of a series of retries.
///
/// ```
/// use std::time::Duration;
/// use policy_engine::sync::{Backoff, BackoffConfig};
/// let mut backoff = Backoff::new(BackoffConfig {
///     initial: Duration::from_millis(100),
///     max: Duration::from_millis(400),
/// });
/// let first = backoff.next_delay();
/// assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
/// for _ in 0..10 {
///     assert!(backoff.next_delay() <= Duration::from_millis(400));
/// }
/// backoff.reset();
/// assert!(backoff.next_delay() <= Duration::from_millis(100));
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    failures: u32,
}

impl Backoff {
    /// A series with no failure yet.
    pub fn new(config: BackoffConfig) -> Self {
        Self {
            config,
            failures: 0,
        }
    }

    /// The delay before the next attempt; each call counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        jitter(ceiling)
    }

    /// The delay before reconnecting after a connection that was up ended (the server
    /// restarted, or the replica it was on died): a random time between zero and
    /// `min(max, RECONNECT_SPREAD)` ("full jitter"), so that the agents that lost their streams
    /// at the same moment come back spread over seconds instead of in one burst. Starts a new
    /// series, as its first failure.
    ///
    /// ```
    /// use std::time::Duration;
    /// use policy_engine::sync::{Backoff, BackoffConfig};
    /// let mut backoff = Backoff::new(BackoffConfig::default());
    /// assert!(backoff.after_disconnect() <= Duration::from_secs(5));
    /// ```
    pub fn after_disconnect(&mut self) -> Duration {
        self.failures = 1;
        full_jitter(self.config.max.min(RECONNECT_SPREAD))
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.config
            .initial
            .checked_mul(factor)
            .unwrap_or(self.config.max)
            .min(self.config.max)
    }
}

/// The longest wait of [`Backoff::after_disconnect`].
pub const RECONNECT_SPREAD: Duration = Duration::from_secs(5);

/// A random duration between zero and `ceiling`.
fn full_jitter(ceiling: Duration) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

/// A random duration between half of `ceiling` and `ceiling`.
pub(crate) fn jitter(ceiling: Duration) -> Duration {
    let half = ceiling / 2;
    let spread = ceiling.saturating_sub(half).as_nanos();
    let offset = if spread == 0 {
        0
    } else {
        rand::rng().random_range(0..=spread)
    };
    half + Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let mut backoff = Backoff::new(BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        });
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(backoff.ceiling().as_millis());
            let delay = backoff.next_delay();
            assert!(delay.as_millis() * 2 >= *ceilings.last().unwrap());
            assert!(delay.as_millis() <= *ceilings.last().unwrap());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut backoff = Backoff::new(BackoffConfig::default());
        for _ in 0..1000 {
            assert!(backoff.next_delay() <= Duration::from_secs(30));
        }
        assert!(backoff.next_delay() >= Duration::from_secs(15));
    }

    #[test]
    fn reconnects_after_a_disconnect_spread_over_the_window_and_start_a_new_series() {
        let config = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        };
        let mut backoff = Backoff::new(config);
        for _ in 0..10 {
            backoff.next_delay();
        }
        let delays: Vec<Duration> = (0..200).map(|_| backoff.after_disconnect()).collect();
        assert!(delays.iter().all(|d| *d <= RECONNECT_SPREAD));
        // Spread over the whole window: some in its first fifth, some in its last.
        assert!(
            delays.iter().any(|d| *d < RECONNECT_SPREAD / 5),
            "{delays:?}"
        );
        assert!(
            delays.iter().any(|d| *d > RECONNECT_SPREAD * 4 / 5),
            "{delays:?}"
        );
        // The next failure continues from the first step of a new series.
        assert_eq!(backoff.ceiling(), Duration::from_millis(200));
        let short = Backoff::new(BackoffConfig {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
        })
        .after_disconnect();
        assert!(short <= Duration::from_millis(50), "{short:?}");
    }

    #[test]
    fn jitter_spreads_delays() {
        let delays: std::collections::HashSet<Duration> =
            (0..20).map(|_| jitter(Duration::from_secs(10))).collect();
        assert!(delays.len() > 1, "20 jittered delays were all equal");
    }
}
