//! The fleet's figures for the metrics, read at each scrape: per org, enrolled, online and
//! outdated agents (by the same rules as `GET /api/agents`: an agent is outdated when it
//! reports another version than the one it is assigned, which a rollout decides), the latest
//! policy version, open event streams and approval requests by status.

use std::time::Duration;

use policy_engine::protocol::ApprovalStatus;

use super::agents::Online;
use super::assignment;
use super::streams::EventHub;
use crate::metrics::OrgGauges;
use crate::store::{Store, StoreError};

/// Every org's gauges now.
pub async fn read(
    store: &dyn Store,
    hub: &EventHub,
    online_window: Duration,
) -> Result<Vec<OrgGauges>, StoreError> {
    let summary = store.fleet_summary().await?;
    let mut rollouts = Vec::with_capacity(summary.len());
    for org in &summary {
        rollouts.push(store.latest_rollout(org.org_id.clone()).await?);
    }
    Ok(summary
        .into_iter()
        .zip(rollouts)
        .map(|(org, rollout)| {
            let online = Online::now(hub, &org.org_id, online_window);
            let count = |f: &dyn Fn(&_) -> bool| org.agents.iter().filter(|a| f(a)).count() as u64;
            let outdated = |agent: &crate::store::AgentRecord| {
                org.latest_version.is_some_and(|latest| {
                    let assigned = assignment::target(rollout.as_ref(), latest, &agent.id);
                    agent.policy_version != Some(assigned.version)
                })
            };
            OrgGauges {
                agents: org.agents.len() as u64,
                online: count(&|a| online.is(a)),
                outdated: count(&|a| outdated(a)),
                policy_version: org.latest_version.map(|v| v.number()),
                streams: hub.stream_count(&org.org_id) as u64,
                approvals: ApprovalStatus::ALL
                    .iter()
                    .map(|status| {
                        let n = org
                            .approvals
                            .iter()
                            .find(|(s, _)| s == status)
                            .map_or(0, |(_, n)| *n);
                        (status.as_str(), n)
                    })
                    .collect(),
                org: org.org_id,
            }
        })
        .collect())
}
