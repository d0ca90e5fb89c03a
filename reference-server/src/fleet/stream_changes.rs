//! One numbered change of the store pushed to the open streams of its org: the rows it names
//! are read (a policy version, an agent's overrides, a block, an approval, a rollout, a shadow
//! run) and turned into the frames each stream gets. Streams whose initial state already included the
//! change ([`StreamView::since`]) are skipped.
//!
//! A policy version and a rollout's transition push to each stream the version its agent is
//! assigned ([`assign`]) when the stream does not have it yet: a newer version, or an older one
//! only as a rollback (`rollbackFrom`). The rollout is read when the change is pushed, so a
//! replica catching up on several changes sends each stream the version it is assigned now,
//! once, never a version in between that it was no longer to run.
//!
//! Reports are checked against what was sent to their agent, so who gets which version (with
//! which overrides) is recorded before its frame is queued; the frames do not wait for that
//! write's commit where the store can order it before every later call
//! ([`Store::begin_record_sent`]); a broadcast is one row however many agents it names
//! ([`crate::store::split_sent`]).

use std::collections::HashMap;
use std::sync::Arc;

use policy_engine::PolicyVersion;
use policy_engine::protocol::{ApprovalStatus, FleetEvent, ShadowEndEvent, UnblockEvent};

use super::assignment::{Target, target};
use super::overrides::{self, Override, stored_list};
use super::views::{approval_event, block_event, policy_event, shadow_event};
use crate::clock;
use crate::store::{Change, ChangeKind, Rollout, SentPolicy, Store, StoreError, StoredPolicy};
use crate::transport::{Delivery, Frame, Hub};

/// The overrides of the agent of one stream (empty: the org's policy as is).
pub type AgentOverrides = Arc<Vec<Override>>;

/// What the fleet keeps with each open stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamView {
    /// The agent's overrides.
    pub overrides: AgentOverrides,
    /// The policy version last queued to the stream (its overrides resolve against it).
    pub version: Option<PolicyVersion>,
    /// Set when that version was queued as the rollback of this one.
    pub rollback_from: Option<PolicyVersion>,
    /// The org's last change the stream's initial state included: it gets the later ones.
    pub since: u64,
}

/// The hub of the agents' event streams.
pub type EventHub = Hub<StreamView>;

/// The `policy` frame of `policy` for an agent with `overrides`.
pub fn policy_frame(policy: &StoredPolicy, agent_id: &str, overrides: &[Override]) -> Frame {
    Frame::policy(&policy_event(policy, agent_id, overrides))
}

/// The `policy` frame of `policy` as the rollback of `rollback_from` (if given).
fn assigned_frame(
    policy: &StoredPolicy,
    rollback_from: Option<PolicyVersion>,
    agent_id: &str,
    overrides: &[Override],
) -> Frame {
    let mut event = policy_event(policy, agent_id, overrides);
    event.rollback_from = rollback_from;
    Frame::policy(&event)
}

/// The fan-out metrics' name of a change's pushes.
pub fn event_name(kind: &ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Policy { .. } => "policy",
        ChangeKind::Overrides { .. } => "overrides",
        ChangeKind::Block { .. } => "block",
        ChangeKind::Unblock { .. } => "unblock",
        ChangeKind::Approved { .. } => "approval",
        ChangeKind::Rollout { .. } => "rollout",
        ChangeKind::ShadowStarted { .. } => "shadow",
        ChangeKind::ShadowEnded { .. } => "shadow_end",
    }
}

/// The record of `policy` sent to `agent_id` with `list`.
pub fn sent(agent_id: String, policy: &StoredPolicy, list: &[Override], now_ms: i64) -> SentPolicy {
    SentPolicy {
        org_id: policy.org_id.clone(),
        agent_id,
        version: policy.version,
        overrides: overrides::to_value(list),
        sent_ms: now_ms,
    }
}

/// Remembers who gets which policy version with which overrides, then queues the frames with
/// `queue` while the rows are written ([`Store::begin_record_sent`]: a report on a frame queued
/// here is checked against them), and waits for their commit. A failure is logged: the
/// versions are stored already, their push must not be lost.
async fn record_then_queue(
    store: &dyn Store,
    sent: Vec<SentPolicy>,
    queue: impl Future<Output = Delivery>,
) -> Delivery {
    if sent.is_empty() {
        return queue.await;
    }
    let recording = match store.begin_record_sent(sent).await {
        Ok(recording) => recording,
        Err(error) => {
            tracing::error!(%error, "cannot record the policy's recipients");
            return queue.await;
        }
    };
    let delivery = queue.await;
    if let Err(error) = recording.await {
        tracing::error!(%error, "cannot record the policy's recipients");
    }
    delivery
}

/// Queues change `change` to the streams that do not have it yet.
pub async fn apply(
    store: &dyn Store,
    hub: &EventHub,
    change: &Change,
) -> Result<Delivery, StoreError> {
    let org_id = change.org_id.as_str();
    let seq = change.seq;
    let fresh = move |view: &StreamView| view.since < seq;
    Ok(match &change.kind {
        ChangeKind::Policy { version } => {
            let rollout = store.latest_rollout(org_id.to_owned()).await?;
            assigned(store, hub, change, *version, rollout.as_ref()).await?
        }
        ChangeKind::Rollout { .. } => {
            // The org's rollout now decides, while its version is the latest (a newer plain
            // version, or one never stored, leaves every agent on the latest).
            let rollout = store.latest_rollout(org_id.to_owned()).await?;
            let latest = store.latest_policy(org_id.to_owned()).await?;
            match (rollout, latest) {
                (Some(rollout), Some(latest)) if rollout.version == latest.version => {
                    assigned(store, hub, change, latest.version, Some(&rollout)).await?
                }
                _ => Delivery::default(),
            }
        }
        ChangeKind::Overrides { agent_id } => overrides(store, hub, change, agent_id).await?,
        ChangeKind::Block { ip, reporter } => {
            let block = store.block(org_id.to_owned(), *ip).await?;
            let Some(event) = block.and_then(|b| block_event(&b, clock::now_ms())) else {
                // Lifted or expired meanwhile: nothing to push.
                return Ok(Delivery::default());
            };
            let frame = Frame::fleet(&FleetEvent::Block(event));
            hub.visit_org(org_id, |agent_id, view| {
                (fresh(view) && agent_id != reporter).then(|| frame.clone())
            })
            .await
        }
        ChangeKind::Unblock { ip, by } => {
            let frame = Frame::fleet(&FleetEvent::Unblock(UnblockEvent {
                ip: *ip,
                by: by.clone(),
            }));
            hub.visit_org(org_id, |_, view| fresh(view).then(|| frame.clone()))
                .await
        }
        ChangeKind::Approved {
            approval_id,
            agent_id,
        } => {
            let approval = store.approval(approval_id.clone()).await?;
            let Some(approval) = approval
                .filter(|a| a.status == ApprovalStatus::Approved && a.expires_ms > clock::now_ms())
            else {
                // Executed, expired or gone meanwhile: nothing to execute.
                return Ok(Delivery::default());
            };
            let frame = Frame::fleet(&FleetEvent::Approval(approval_event(&approval)));
            hub.visit_org(org_id, |agent, view| {
                (fresh(view) && agent == agent_id).then(|| frame.clone())
            })
            .await
        }
        ChangeKind::ShadowStarted { shadow } => {
            let run = store.shadow_run(org_id.to_owned()).await?;
            let Some(run) = run.filter(|r| r.shadow == *shadow && r.ended_ms.is_none()) else {
                // Ended or replaced meanwhile: its own change pushes that.
                return Ok(Delivery::default());
            };
            let frame = Frame::shadow(&shadow_event(&run));
            hub.visit_org(org_id, |_, view| fresh(view).then(|| frame.clone()))
                .await
        }
        ChangeKind::ShadowEnded { shadow } => {
            let frame = Frame::shadow_end(&ShadowEndEvent { shadow: *shadow });
            hub.visit_org(org_id, |_, view| fresh(view).then(|| frame.clone()))
                .await
        }
    })
}

/// New overrides of `agent_id`: each of its streams gets them as its view and the policy
/// version it runs, resolved again.
async fn overrides(
    store: &dyn Store,
    hub: &EventHub,
    change: &Change,
    agent_id: &str,
) -> Result<Delivery, StoreError> {
    let org_id = change.org_id.as_str();
    let views = hub.views_of(org_id, agent_id);
    if views.iter().all(|view| view.since >= change.seq) {
        return Ok(Delivery::default());
    }
    let stored = store.overrides(agent_id.to_owned()).await?;
    let list = Arc::new(stored_list(stored.as_ref()));
    let mut policies: HashMap<PolicyVersion, StoredPolicy> = HashMap::new();
    for version in views.iter().filter_map(|view| view.version) {
        if policies.contains_key(&version) {
            continue;
        }
        if let Some(policy) = store.policy(org_id.to_owned(), version).await? {
            policies.insert(version, policy);
        }
    }
    let now = clock::now_ms();
    let recipients = policies
        .values()
        .map(|policy| sent(agent_id.to_owned(), policy, &list, now))
        .collect();
    Ok(record_then_queue(
        store,
        recipients,
        hub.visit_org(org_id, |agent, view| {
            if agent != agent_id || view.since >= change.seq {
                return None;
            }
            view.overrides = list.clone();
            let policy = view.version.and_then(|v| policies.get(&v))?;
            Some(assigned_frame(policy, view.rollback_from, agent_id, &list))
        }),
    )
    .await)
}

/// Whether a stream that has `view` must be sent `assignment`: a version it does not have,
/// newer than its own, or older only as a rollback.
fn needs(view: &StreamView, assignment: &Target) -> bool {
    match view.version {
        None => true,
        Some(current) if current == assignment.version => false,
        Some(current) => current < assignment.version || assignment.rollback_from.is_some(),
    }
}

/// Queues to each stream (without change `change` yet) the version its agent is assigned when
/// `latest` is its org's latest version and `rollout` its latest rollout, if the stream lacks
/// it ([`needs`]), recording who gets which version first ([`record_then_queue`]).
async fn assigned(
    store: &dyn Store,
    hub: &EventHub,
    change: &Change,
    latest: PolicyVersion,
    rollout: Option<&Rollout>,
) -> Result<Delivery, StoreError> {
    let org_id = change.org_id.as_str();
    let seq = change.seq;
    let fresh = move |view: &StreamView| view.since < seq;
    // One pass over the streams, cloning only what the record needs of each.
    let targets: Vec<(String, AgentOverrides, Target)> =
        hub.collect_org(org_id, |agent_id, view| {
            if !fresh(view) {
                return None;
            }
            let assignment = target(rollout, latest, agent_id);
            needs(view, &assignment)
                .then(|| (agent_id.to_owned(), view.overrides.clone(), assignment))
        });
    let mut policies: HashMap<PolicyVersion, StoredPolicy> = HashMap::new();
    for (_, _, assignment) in &targets {
        if policies.contains_key(&assignment.version) {
            continue;
        }
        match store.policy(org_id.to_owned(), assignment.version).await? {
            Some(policy) => {
                policies.insert(assignment.version, policy);
            }
            None => {
                tracing::warn!(org = org_id, version = %assignment.version, "an assigned policy version is gone")
            }
        }
    }
    let now = clock::now_ms();
    let recipients: Vec<SentPolicy> = targets
        .into_iter()
        .filter_map(|(agent_id, list, assignment)| {
            let policy = policies.get(&assignment.version)?;
            Some(sent(agent_id, policy, &list, now))
        })
        .collect();
    // One serialized frame per (version, rollback) for the streams without overrides.
    let mut shared: HashMap<(PolicyVersion, Option<PolicyVersion>), Frame> = HashMap::new();
    Ok(record_then_queue(
        store,
        recipients,
        hub.visit_org(org_id, |agent_id, view| {
            if !fresh(view) {
                return None;
            }
            let assignment = target(rollout, latest, agent_id);
            if !needs(view, &assignment) {
                return None;
            }
            let policy = policies.get(&assignment.version)?;
            view.version = Some(assignment.version);
            view.rollback_from = assignment.rollback_from;
            Some(if view.overrides.is_empty() {
                shared
                    .entry((assignment.version, assignment.rollback_from))
                    .or_insert_with(|| assigned_frame(policy, assignment.rollback_from, "", &[]))
                    .clone()
            } else {
                assigned_frame(policy, assignment.rollback_from, agent_id, &view.overrides)
            })
        }),
    )
    .await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(version: u64) -> StreamView {
        StreamView {
            version: Some(PolicyVersion::new(version)),
            ..StreamView::default()
        }
    }

    fn assigned(version: u64, rollback_from: Option<u64>) -> Target {
        Target {
            version: PolicyVersion::new(version),
            rollback_from: rollback_from.map(PolicyVersion::new),
        }
    }

    #[test]
    fn a_stream_gets_a_newer_version_and_an_older_one_only_as_a_rollback() {
        assert!(needs(&StreamView::default(), &assigned(1, None)));
        assert!(needs(&view(1), &assigned(2, None)));
        assert!(!needs(&view(2), &assigned(2, None)));
        // Already rolled back to it: not again.
        assert!(!needs(&view(1), &assigned(1, Some(2))));
        // A version older than the stream's, but not a rollback (a replica catching up on a
        // change whose version the stream already passed): never sent.
        assert!(!needs(&view(3), &assigned(2, None)));
        assert!(needs(&view(2), &assigned(1, Some(2))));
    }
}
