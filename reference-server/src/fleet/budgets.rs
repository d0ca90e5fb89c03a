//! The fleet-block budget: how many new fleet blocks the server pushes per org and window
//! (the policy's `budgets.fleet_block`, default 100 per hour). Beyond it a reported fleet
//! block stays on the host that executed it: it is recorded in the audit
//! (`fleet_budget_exceeded`) and not stored or pushed, so one bad `scope: fleet` rule cannot
//! block half the internet on every host.
//!
//! An address counts once per window: agents reporting the same attacker again (or extending
//! its block) spend nothing. The windows are in the database (`Store::admit_fleet_block`):
//! one per org for every replica on it, decided under the org's lock, so several replicas admit
//! `max` addresses in all (probe 5 found each replica's own window in memory admitting `max`
//! each), and a restart keeps them. Each holds at most `max` addresses (at most 10,000).

use std::net::IpAddr;

use policy_engine::policy::Limit;

use crate::clock;
use crate::store::{Store, StoreError};

/// A new fleet block beyond its org's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    /// The budget in force.
    pub limit: Limit,
}

/// Admits a fleet block on `ip` for `org` now under `limit`: an address already admitted
/// within the window passes and spends nothing; a new one passes while fewer than `max`
/// addresses were admitted within the window.
pub async fn admit(
    store: &dyn Store,
    org: &str,
    ip: IpAddr,
    limit: Limit,
) -> Result<Result<(), Exceeded>, StoreError> {
    let admitted = store
        .admit_fleet_block(org.to_owned(), ip, limit, clock::now_ms())
        .await?;
    Ok(if admitted {
        Ok(())
    } else {
        Err(Exceeded { limit })
    })
}
