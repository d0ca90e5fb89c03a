//! Keyed rate limits (governor's GCRA): a budget of cells per key that refills at a steady
//! rate, answering how long to wait when it is spent. Used for failed authentication per source
//! address and for reports and stored bytes per agent.
//!
//! Invariant: the keyed state is capped. Keys whose budget is full again carry no information
//! and are dropped (`retain_recent`) when the map passes its cap; if it is still full after
//! that, a new key is refused rather than let the map grow.

use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// The address a peer is counted under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by /64, the
/// block one host usually owns.
pub fn address_key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// A spent budget: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds, rounded up, at least 1 (the `Retry-After` header's unit).
    pub fn secs(self) -> u64 {
        let secs = self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0);
        secs.max(1)
    }
}

/// A budget of `burst` cells per key, all of it refilled over `per`.
#[derive(Debug)]
pub struct KeyedLimit<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    limiter: RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    burst: NonZeroU32,
    per: Duration,
    max_keys: usize,
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    /// `burst` cells per key, refilled over `per` (`None`: no limit is built, e.g. a zero
    /// burst), at most `max_keys` keys tracked, on the system clock.
    pub fn new(burst: u32, per: Duration, max_keys: usize) -> Option<Self> {
        Self::with_clock(burst, per, max_keys, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> KeyedLimit<K, C> {
    /// As [`KeyedLimit::new`], on `clock` (a fake clock in tests).
    pub fn with_clock(burst: u32, per: Duration, max_keys: usize, clock: C) -> Option<Self> {
        let burst = NonZeroU32::new(burst)?;
        let quota = Quota::with_period(per / burst.get())?.allow_burst(burst);
        Some(Self {
            limiter: RateLimiter::dashmap_with_clock(quota, clock.clone()),
            clock,
            burst,
            per,
            max_keys,
        })
    }

    /// The whole budget per key.
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// The time the whole budget takes to refill.
    pub fn period(&self) -> Duration {
        self.per
    }

    /// Takes one cell for `key`.
    pub fn check(&self, key: &K) -> Result<(), RetryAfter> {
        self.check_n(key, 1)
    }

    /// Takes `n` cells for `key` at once (all or none); more than the whole budget is refused
    /// with the time the whole budget takes to refill.
    pub fn check_n(&self, key: &K, n: u32) -> Result<(), RetryAfter> {
        if !self.make_room() {
            return Err(RetryAfter(self.per));
        }
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        match self.limiter.check_key_n(key, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(RetryAfter(not_until.wait_time_from(self.clock.now()))),
            Err(_) => Err(RetryAfter(self.per)),
        }
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }

    /// Whether a key may be added: past the cap, full budgets are forgotten first.
    fn make_room(&self) -> bool {
        if self.limiter.len() < self.max_keys {
            return true;
        }
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.limiter.len() < self.max_keys
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn a_spent_budget_refills_at_its_rate_and_says_when() {
        let clock = FakeRelativeClock::default();
        let limit = KeyedLimit::with_clock(3, Duration::from_secs(60), 100, clock.clone()).unwrap();
        for _ in 0..3 {
            assert_eq!(limit.check(&"a"), Ok(()));
        }
        assert_eq!(limit.check(&"a"), Err(RetryAfter(Duration::from_secs(20))));
        assert_eq!(limit.check(&"b"), Ok(()), "keys are independent");
        clock.advance(Duration::from_secs(19));
        assert_eq!(limit.check(&"a").map_err(RetryAfter::secs), Err(1));
        clock.advance(Duration::from_secs(1));
        assert_eq!(limit.check(&"a"), Ok(()));
        // All or nothing, and never more than the whole budget.
        clock.advance(Duration::from_secs(60));
        assert_eq!(limit.check_n(&"a", 2), Ok(()));
        assert!(limit.check_n(&"a", 2).is_err());
        assert_eq!(limit.check_n(&"a", 1), Ok(()));
        assert_eq!(
            limit.check_n(&"c", 4),
            Err(RetryAfter(Duration::from_secs(60)))
        );
    }

    #[test]
    fn the_key_map_stays_under_its_cap() {
        let clock = FakeRelativeClock::default();
        let limit = KeyedLimit::with_clock(2, Duration::from_secs(10), 4, clock.clone()).unwrap();
        for key in 0..4 {
            assert_eq!(limit.check(&key), Ok(()));
        }
        // Every budget is still partly spent: a fifth key is refused, the map does not grow.
        assert_eq!(limit.check(&4), Err(RetryAfter(Duration::from_secs(10))));
        assert_eq!(limit.len(), 4);
        // Once they refilled they are forgotten and new keys fit.
        clock.advance(Duration::from_secs(10));
        assert_eq!(limit.check(&4), Ok(()));
        assert!(limit.len() <= 4);
    }
}
