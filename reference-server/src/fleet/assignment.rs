//! Which version each agent of an org gets: the org's latest, or, while a staged rollout of
//! that version runs, the previous one for agents outside its stage (and for every agent after
//! a rollback, with `rollbackFrom`). Used by every path that sends an agent a policy, so that
//! streams, heartbeats and views agree; [`rollouts`](super::rollouts) moves the rollouts.

use policy_engine::PolicyVersion;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::store::{Rollout, RolloutState, Store, StoredPolicy};

/// Where an agent's hash puts it, 0 to 9999: the first 8 bytes of SHA-256 of its id. Stable,
/// so a stage of `p` percent always means the same agents (buckets below `p * 100`), and
/// growing the percent only adds agents.
pub fn bucket(agent_id: &str) -> u64 {
    let digest = Sha256::digest(agent_id.as_bytes());
    let mut bytes = [0u8; 8];
    for (to, from) in bytes.iter_mut().zip(digest.iter()) {
        *to = *from;
    }
    u64::from_be_bytes(bytes) % 10_000
}

/// Whether `agent_id` is among the agents of stages `0..=stage` of `rollout`.
pub fn in_stage(rollout: &Rollout, stage: usize, agent_id: &str) -> bool {
    let bucket = bucket(agent_id);
    rollout
        .stages
        .iter()
        .take(stage + 1)
        .any(|s| bucket < u64::from(s.percent) * 100 || s.agents.iter().any(|a| a == agent_id))
}

/// The version the server sends an agent, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The version.
    pub version: PolicyVersion,
    /// Set when it is the rollback of that version.
    pub rollback_from: Option<PolicyVersion>,
    /// Why, for the operator.
    pub reason: String,
}

/// The version an agent gets, without the why: what a broadcast decides for each stream of an
/// org (no allocation per agent; [`assign`] adds the reason for the operator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    /// The version.
    pub version: PolicyVersion,
    /// Set when it is the rollback of that version.
    pub rollback_from: Option<PolicyVersion>,
}

/// The version `agent_id` gets when `latest` is its org's latest version and `rollout` its
/// latest rollout: a rollout decides only while its version is the latest.
pub fn target(rollout: Option<&Rollout>, latest: PolicyVersion, agent_id: &str) -> Target {
    let latest_plain = Target {
        version: latest,
        rollback_from: None,
    };
    let Some(r) = rollout.filter(|r| r.version == latest) else {
        return latest_plain;
    };
    match r.state {
        RolloutState::Completed => latest_plain,
        RolloutState::RolledBack | RolloutState::Aborted => Target {
            version: r.previous,
            rollback_from: Some(r.version),
        },
        RolloutState::Running | RolloutState::Paused => {
            if in_stage(r, r.stage, agent_id) {
                latest_plain
            } else {
                Target {
                    version: r.previous,
                    rollback_from: None,
                }
            }
        }
    }
}

/// What `agent_id` gets ([`target`]) and why.
pub fn assign(rollout: Option<&Rollout>, latest: PolicyVersion, agent_id: &str) -> Assignment {
    let target = target(rollout, latest, agent_id);
    let reason = match rollout.filter(|r| r.version == latest) {
        None => "the org's latest version".to_owned(),
        Some(r) => match r.state {
            RolloutState::Completed => format!("rollout `{}` completed", r.id),
            RolloutState::RolledBack | RolloutState::Aborted => format!(
                "rollout `{}` of {} was {}: back to {}",
                r.id,
                r.version,
                state_name(r.state),
                r.previous
            ),
            RolloutState::Running | RolloutState::Paused if target.version == latest => {
                format!("in stage {} of rollout `{}`", r.stage + 1, r.id)
            }
            RolloutState::Running | RolloutState::Paused => format!(
                "not yet in rollout `{}` (stage {} of {})",
                r.id,
                r.stage + 1,
                r.stages.len()
            ),
        },
    };
    Assignment {
        version: target.version,
        rollback_from: target.rollback_from,
        reason,
    }
}

/// The policy `agent_id` of `org` is to run, and why; `None` when the org has no policy.
pub async fn assigned_policy(
    store: &dyn Store,
    org: &str,
    agent_id: &str,
) -> Result<Option<(StoredPolicy, Assignment)>, ApiError> {
    let Some(latest) = store.latest_policy(org.to_owned()).await? else {
        return Ok(None);
    };
    let rollout = store.latest_rollout(org.to_owned()).await?;
    let assignment = assign(rollout.as_ref(), latest.version, agent_id);
    if assignment.version == latest.version {
        return Ok(Some((latest, assignment)));
    }
    let policy = store
        .policy(org.to_owned(), assignment.version)
        .await?
        .ok_or_else(|| {
            ApiError::internal(format!("{} of org `{org}` is missing", assignment.version))
        })?;
    Ok(Some((policy, assignment)))
}

/// Refuses a plain post while a rollout of the org is running or paused.
pub async fn check_no_active(store: &dyn Store, org: &str) -> Result<(), ApiError> {
    let latest = store.latest_policy(org.to_owned()).await?;
    let rollout = store.latest_rollout(org.to_owned()).await?;
    if let (Some(latest), Some(r)) = (latest, rollout) {
        if r.version == latest.version && r.state.is_active() {
            return Err(ApiError::conflict(format!(
                "rollout `{}` of {} is {} in org `{org}`: abort it (`POST /api/rollouts/{}/abort`) or let it complete before posting a new version",
                r.id,
                r.version,
                state_name(r.state),
                r.id
            )));
        }
    }
    Ok(())
}

/// The wire name of a state.
pub fn state_name(state: RolloutState) -> &'static str {
    match state {
        RolloutState::Running => "running",
        RolloutState::Paused => "paused",
        RolloutState::Completed => "completed",
        RolloutState::RolledBack => "rolled_back",
        RolloutState::Aborted => "aborted",
    }
}
