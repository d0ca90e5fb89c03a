//! The agents' event streams as the fleet uses them: the hub with each stream's overrides, the
//! publish lock that puts every write and its push in one order, and what a new stream gets
//! first.
//!
//! Invariant: a write whose change is pushed to streams (a policy, overrides, a fleet block, an
//! unblock, an approval) and its push happen under the publish lock, and so does opening a
//! stream with its current state; so a stream never misses a change, sees one twice, or sees
//! versions out of order.

use std::sync::Arc;
use std::time::Instant;

use policy_engine::PolicyVersion;
use policy_engine::protocol::FleetEvent;
use tokio::sync::{Mutex, MutexGuard};

use super::changes::{Changes, Topic};
use super::overrides::{self, Override};
use super::views::{approval_event, block_event, policy_event, shadow_event};
use crate::clock;
use crate::error::ApiError;
use crate::metrics::ServerMetrics;
use crate::store::{SentPolicy, Store, StoredPolicy};
use crate::transport::{Delivery, Frame, Hub, Subscription};

/// The overrides of the agent of one stream (empty: the org's policy as is).
pub type AgentOverrides = Arc<Vec<Override>>;

/// The hub of the agents' event streams.
pub type EventHub = Hub<AgentOverrides>;

/// The `policy` frame of `policy` for an agent with `overrides`.
pub fn policy_frame(policy: &StoredPolicy, agent_id: &str, overrides: &[Override]) -> Frame {
    Frame::policy(&policy_event(policy, agent_id, overrides))
}

impl EventHub {
    /// Queues `policy` to every stream of its org: one shared payload for streams without
    /// overrides, a resolved one for each agent with overrides.
    pub fn broadcast(&self, policy: &StoredPolicy) -> Delivery {
        let shared = policy_frame(policy, "", &[]);
        self.send_org_each(&policy.org_id, |agent_id, overrides| {
            Some(if overrides.is_empty() {
                shared.clone()
            } else {
                policy_frame(policy, agent_id, overrides)
            })
        })
    }
}

/// The hub and the publish lock, and the admin streams told of every change.
#[derive(Debug)]
pub struct Publisher {
    hub: EventHub,
    lock: Mutex<()>,
    changes: Changes,
    metrics: Arc<ServerMetrics>,
}

/// Holding the publish lock: pushes made through it are in the order of the writes.
#[derive(Debug)]
pub struct Publishing<'a> {
    hub: &'a EventHub,
    metrics: &'a ServerMetrics,
    _guard: MutexGuard<'a, ()>,
}

impl Publisher {
    /// A publisher pushing to `hub`, timing each fan-out into `metrics`.
    pub fn new(hub: EventHub, metrics: Arc<ServerMetrics>) -> Self {
        Self {
            hub,
            lock: Mutex::new(()),
            changes: Changes::default(),
            metrics,
        }
    }

    /// The admin event streams.
    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    /// Tells the admin streams of `org` that `topics` changed.
    pub fn changed(&self, org: &str, topics: &[Topic]) {
        self.changes.changed(org, topics);
    }

    /// The hub, for reads (open streams, online agents).
    pub fn hub(&self) -> &EventHub {
        &self.hub
    }

    /// Takes the publish lock; do the write, then push through the guard.
    pub async fn begin(&self) -> Publishing<'_> {
        Publishing {
            hub: &self.hub,
            metrics: &self.metrics,
            _guard: self.lock.lock().await,
        }
    }
}

impl Publishing<'_> {
    /// Runs one fan-out of `event` and records its time and deliveries.
    fn timed(&self, event: &'static str, fan_out: impl FnOnce() -> Delivery) -> Delivery {
        let started = Instant::now();
        let delivery = fan_out();
        self.metrics
            .broadcast(event, started.elapsed(), delivery.queued, delivery.dropped);
        delivery
    }

    /// Queues a new policy version to every stream of its org, after recording who gets it
    /// with which overrides (reports are checked against what was sent). A failure to record
    /// is logged: the version is stored already, its push must not be lost.
    pub async fn broadcast(&self, store: &dyn Store, policy: &StoredPolicy) -> Delivery {
        let now = clock::now_ms();
        let sent = self
            .hub
            .views(&policy.org_id)
            .into_iter()
            .map(|(agent_id, list)| sent(agent_id, policy, &list, now))
            .collect();
        if let Err(error) = store.record_sent(sent).await {
            tracing::error!(%error, version = %policy.version, "cannot record the policy's recipients");
        }
        self.timed("policy", || self.hub.broadcast(policy))
    }

    /// Queues `policy` (as the rollback of `rollback_from`, if given) to the streams of its
    /// org whose agent `to` picks, each with its overrides, after recording who gets it (as
    /// [`Publishing::broadcast`] does).
    pub async fn push_to(
        &self,
        store: &dyn Store,
        policy: &StoredPolicy,
        rollback_from: Option<PolicyVersion>,
        to: impl Fn(&str) -> bool,
    ) -> Delivery {
        let now = clock::now_ms();
        let sent = self
            .hub
            .views(&policy.org_id)
            .into_iter()
            .filter(|(agent_id, _)| to(agent_id))
            .map(|(agent_id, list)| sent(agent_id, policy, &list, now))
            .collect();
        if let Err(error) = store.record_sent(sent).await {
            tracing::error!(%error, version = %policy.version, "cannot record the policy's recipients");
        }
        self.hub
            .send_org_each(&policy.org_id, |agent_id, overrides| {
                if !to(agent_id) {
                    return None;
                }
                let mut event = policy_event(policy, agent_id, overrides);
                event.rollback_from = rollback_from;
                Some(Frame::policy(&event))
            })
    }

    /// Replaces an agent's overrides on its open streams and queues its resolved policy.
    pub fn update_agent(
        &self,
        org_id: &str,
        agent_id: &str,
        overrides: AgentOverrides,
        frame: Frame,
    ) -> Delivery {
        self.timed("overrides", || {
            self.hub
                .update_agent(org_id, agent_id, overrides, Some(frame))
        })
    }

    /// Queues a fleet event to every stream of `org_id` except those of `except`.
    pub fn send_org(&self, org_id: &str, event: &FleetEvent, except: Option<&str>) -> Delivery {
        self.timed(event.name(), || {
            self.hub.send_org(org_id, &Frame::fleet(event), except)
        })
    }

    /// Queues a frame (a shadow run's start or end) to every stream of `org_id`.
    pub fn send_frame(&self, org_id: &str, frame: &Frame) -> Delivery {
        self.timed(frame.event, || self.hub.send_org(org_id, frame, None))
    }

    /// Queues a fleet event to the open streams of one agent.
    pub fn send_agent(&self, org_id: &str, agent_id: &str, event: &FleetEvent) -> Delivery {
        self.timed(event.name(), || {
            self.hub.send_agent(org_id, agent_id, &Frame::fleet(event))
        })
    }
}

/// The record of `policy` sent to `agent_id` with `list`.
pub fn sent(agent_id: String, policy: &StoredPolicy, list: &[Override], now_ms: i64) -> SentPolicy {
    SentPolicy {
        agent_id,
        version: policy.version,
        overrides: overrides::to_value(list),
        sent_ms: now_ms,
    }
}

/// Opens the event stream of an agent. It gets, first, its current resolved policy (if any: the
/// version assigned to it, see [`assignment::assign`](super::assignment::assign)),
/// then one `block` per fleet block of its org in force (reported by anyone, the agent itself
/// included: a restarted reporter needs them too), then one `approval` per approved request of
/// its own not yet executed, then the org's shadow run if one runs; then every change as it
/// happens. 503 once the server is stopping.
pub async fn open(
    store: &dyn Store,
    publisher: &Publisher,
    org_id: &str,
    agent_id: &str,
) -> Result<(Subscription<AgentOverrides>, Option<StoredPolicy>), ApiError> {
    let publishing = publisher.begin().await;
    let assigned = super::assignment::assigned_policy(store, org_id, agent_id).await?;
    let stored = store.overrides(agent_id.to_owned()).await?;
    let list = super::overrides::stored_list(stored.as_ref());
    let mut initial: Vec<Frame> = assigned
        .as_ref()
        .map(|(p, assignment)| {
            let mut event = policy_event(p, agent_id, &list);
            event.rollback_from = assignment.rollback_from;
            Frame::policy(&event)
        })
        .into_iter()
        .collect();
    let policy = assigned.map(|(p, _)| p);
    let now = clock::now_ms();
    if let Some(policy) = &policy {
        store
            .record_sent(vec![sent(agent_id.to_owned(), policy, &list, now)])
            .await?;
    }
    for block in store.active_blocks(org_id.to_owned(), now).await? {
        if let Some(event) = block_event(&block, now) {
            initial.push(Frame::fleet(&FleetEvent::Block(event)));
        }
    }
    for approval in store.approved_for(agent_id.to_owned(), now).await? {
        initial.push(Frame::fleet(&FleetEvent::Approval(approval_event(
            &approval,
        ))));
    }
    if let Some(run) = store
        .shadow_run(org_id.to_owned())
        .await?
        .filter(|r| r.ended_ms.is_none())
    {
        initial.push(Frame::shadow(&shadow_event(&run)));
    }
    let subscription = publishing
        .hub
        .subscribe(org_id, agent_id, Arc::new(list), initial)
        .ok_or_else(ApiError::unavailable)?;
    drop(publishing);
    Ok((subscription, policy))
}
