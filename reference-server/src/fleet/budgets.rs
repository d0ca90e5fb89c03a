//! The fleet-block budget: how many new fleet blocks the server pushes per org and window
//! (the policy's `budgets.fleet_block`, default 100 per hour). Beyond it a reported fleet
//! block stays on the host that executed it: it is recorded in the audit
//! (`fleet_budget_exceeded`) and not stored or pushed, so one bad `scope: fleet` rule cannot
//! block half the internet on every host.
//!
//! An address counts once per window: agents reporting the same attacker again (or extending
//! its block) spend nothing. The windows live in memory (a restart starts them afresh); each
//! holds at most `max` addresses, so memory is capped by the policy (at most 10,000 per org).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use policy_engine::policy::Limit;

/// The fleet-block windows of every org.
#[derive(Debug, Default)]
pub struct FleetBudgets {
    orgs: Mutex<HashMap<String, VecDeque<(Instant, IpAddr)>>>,
}

/// A new fleet block beyond its org's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    /// The budget in force.
    pub limit: Limit,
}

impl FleetBudgets {
    /// Admits a fleet block on `ip` for `org` at `now` under `limit`: an address already
    /// admitted within the window passes and spends nothing; a new one passes while fewer
    /// than `max` addresses were admitted within the window.
    pub fn admit(&self, org: &str, ip: IpAddr, limit: Limit, now: Instant) -> Result<(), Exceeded> {
        let mut orgs = self.orgs.lock().unwrap_or_else(|p| p.into_inner());
        let window = orgs.entry(org.to_owned()).or_default();
        let now = window.back().map_or(now, |(last, _)| now.max(*last));
        while window
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= limit.window)
        {
            window.pop_front();
        }
        let ip = ip.to_canonical();
        if window.iter().any(|(_, seen)| *seen == ip) {
            return Ok(());
        }
        let max = usize::try_from(limit.max).unwrap_or(usize::MAX);
        if window.len() >= max {
            while window.len() > max {
                window.pop_front();
            }
            return Err(Exceeded { limit });
        }
        window.push_back((now, ip));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use policy_engine::policy::OnExceed;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn new_addresses_spend_the_budget_repeats_do_not_and_the_window_slides() {
        let budgets = FleetBudgets::default();
        let limit = Limit {
            max: 2,
            window: Duration::from_secs(3600),
            on_exceed: OnExceed::Drop,
        };
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        assert_eq!(
            budgets.admit("acme", ip("203.0.113.1"), limit, at(0)),
            Ok(())
        );
        assert_eq!(
            budgets.admit("acme", ip("203.0.113.2"), limit, at(10)),
            Ok(())
        );
        // The same attacker again (as an IPv4-mapped address too) spends nothing.
        assert_eq!(
            budgets.admit("acme", ip("203.0.113.1"), limit, at(20)),
            Ok(())
        );
        assert_eq!(
            budgets.admit("acme", ip("::ffff:203.0.113.2"), limit, at(20)),
            Ok(())
        );
        assert_eq!(
            budgets.admit("acme", ip("203.0.113.3"), limit, at(30)),
            Err(Exceeded { limit })
        );
        // Another org has its own window.
        assert_eq!(
            budgets.admit("other", ip("203.0.113.3"), limit, at(30)),
            Ok(())
        );
        // An hour after the first: room for one more.
        assert_eq!(
            budgets.admit("acme", ip("203.0.113.3"), limit, at(3600)),
            Ok(())
        );
        assert_eq!(
            budgets.admit("acme", ip("203.0.113.4"), limit, at(3600)),
            Err(Exceeded { limit })
        );
    }
}
