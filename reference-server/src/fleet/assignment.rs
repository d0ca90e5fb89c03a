//! Which version each agent of an org gets: the org's latest, or, while a staged rollout of
//! that version runs, the previous one for agents outside its stage (and for every agent after
//! a rollback, with `rollbackFrom`). Used by every path that sends an agent a policy, so that
//! streams, heartbeats and views agree; [`rollouts`](super::rollouts) moves the rollouts.
//!
//! The org's *effective* version ([`effective`]) is what an agent outside every stage gets:
//! what the org runs. It is the "active" version of the API (`GET /api/policy/active`, the
//! plan's `activeVersion`, the shadow's `enforcedVersion`) and the `previous` of a new
//! rollout, so that a version that was rolled back or aborted never comes back as a fallback.

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

/// Why an agent gets its version: the one decision [`target`] and [`assign`] share.
enum Why<'a> {
    /// No rollout of the latest version.
    Latest,
    /// The rollout of the latest version completed.
    Completed(&'a Rollout),
    /// The rollout was rolled back or aborted: the previous version, as a rollback.
    Back(&'a Rollout),
    /// The agent is in the running (or paused) rollout's stages so far.
    InStage(&'a Rollout),
    /// The agent is not yet in the running (or paused) rollout.
    NotYet(&'a Rollout),
}

/// The decision for an agent that `staged` says is (or is not) in a rollout's stages so far.
fn decide<'a>(
    rollout: Option<&'a Rollout>,
    latest: PolicyVersion,
    staged: impl Fn(&Rollout) -> bool,
) -> Why<'a> {
    let Some(r) = rollout.filter(|r| r.version == latest) else {
        return Why::Latest;
    };
    match r.state {
        RolloutState::Completed => Why::Completed(r),
        RolloutState::RolledBack | RolloutState::Aborted => Why::Back(r),
        RolloutState::Running | RolloutState::Paused if staged(r) => Why::InStage(r),
        RolloutState::Running | RolloutState::Paused => Why::NotYet(r),
    }
}

/// The decision for `agent_id`.
fn decide_for<'a>(rollout: Option<&'a Rollout>, latest: PolicyVersion, agent_id: &str) -> Why<'a> {
    decide(rollout, latest, |r| in_stage(r, r.stage, agent_id))
}

impl Why<'_> {
    /// The version this decision gives, `latest` being the org's latest.
    fn target(&self, latest: PolicyVersion) -> Target {
        let (version, rollback_from) = match self {
            Why::Latest | Why::Completed(_) | Why::InStage(_) => (latest, None),
            Why::Back(r) => (r.previous, Some(r.version)),
            Why::NotYet(r) => (r.previous, None),
        };
        Target {
            version,
            rollback_from,
        }
    }
}

/// The version `agent_id` gets when `latest` is its org's latest version and `rollout` its
/// latest rollout: a rollout decides only while its version is the latest.
pub fn target(rollout: Option<&Rollout>, latest: PolicyVersion, agent_id: &str) -> Target {
    decide_for(rollout, latest, agent_id).target(latest)
}

/// The org's effective version when `latest` is its latest version and `rollout` its latest
/// rollout: what an agent outside every stage gets. The latest, but the previous one while a
/// rollout of the latest runs or is paused, and after it was rolled back or aborted.
pub fn effective(rollout: Option<&Rollout>, latest: PolicyVersion) -> PolicyVersion {
    decide(rollout, latest, |_| false).target(latest).version
}

/// What `agent_id` gets ([`target`]) and why.
pub fn assign(rollout: Option<&Rollout>, latest: PolicyVersion, agent_id: &str) -> Assignment {
    let why = decide_for(rollout, latest, agent_id);
    let Target {
        version,
        rollback_from,
    } = why.target(latest);
    let reason = match why {
        Why::Latest => "the org's latest version".to_owned(),
        Why::Completed(r) => format!("rollout `{}` completed", r.id),
        Why::Back(r) => format!(
            "rollout `{}` of {} was {}: back to {}",
            r.id,
            r.version,
            state_name(r.state),
            r.previous
        ),
        Why::InStage(r) => format!("in stage {} of rollout `{}`", r.stage + 1, r.id),
        Why::NotYet(r) => format!(
            "not yet in rollout `{}` (stage {} of {})",
            r.id,
            r.stage + 1,
            r.stages.len()
        ),
    };
    Assignment {
        version,
        rollback_from,
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

/// The org's effective version ([`effective`]): the version an agent outside every stage
/// runs, which the API calls active; `None` when the org has no policy.
pub async fn effective_policy(
    store: &dyn Store,
    org: &str,
) -> Result<Option<StoredPolicy>, ApiError> {
    let Some(latest) = store.latest_policy(org.to_owned()).await? else {
        return Ok(None);
    };
    let rollout = store.latest_rollout(org.to_owned()).await?;
    let version = effective(rollout.as_ref(), latest.version);
    if version == latest.version {
        return Ok(Some(latest));
    }
    let policy = store
        .policy(org.to_owned(), version)
        .await?
        .ok_or_else(|| ApiError::internal(format!("{version} of org `{org}` is missing")))?;
    Ok(Some(policy))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RolloutGate, RolloutStage};

    fn rollout(version: u64, previous: u64, state: RolloutState) -> Rollout {
        Rollout {
            id: "ro_1".into(),
            org_id: "default".into(),
            version: PolicyVersion::new(version),
            previous: PolicyVersion::new(previous),
            state,
            stage: 0,
            stages: vec![RolloutStage {
                percent: 100,
                agents: vec![],
                soak_secs: 0,
            }],
            gate: RolloutGate::default(),
            stage_started_ms: 0,
            created_ms: 0,
            updated_ms: 0,
            reason: None,
        }
    }

    /// The effective version is what an agent outside every stage gets, whatever the stages
    /// (here 100 %: every agent is in the stage, and still the org runs the previous version
    /// until the rollout completes).
    #[test]
    fn the_effective_version_is_the_one_outside_every_stage() {
        let v = PolicyVersion::new;
        assert_eq!(effective(None, v(3)), v(3));
        // v3's rollout falls back to v1 (v2 was itself rolled back).
        for (state, expected) in [
            (RolloutState::Running, v(1)),
            (RolloutState::Paused, v(1)),
            (RolloutState::Completed, v(3)),
            (RolloutState::RolledBack, v(1)),
            (RolloutState::Aborted, v(1)),
        ] {
            let r = rollout(3, 1, state);
            assert_eq!(effective(Some(&r), v(3)), expected, "{state:?}");
            // A rollout decides only while its version is the latest.
            assert_eq!(effective(Some(&r), v(4)), v(4), "{state:?}");
        }
        // Agents in the stage of a running rollout get its version; the org still runs v2.
        let running = rollout(3, 2, RolloutState::Running);
        assert_eq!(target(Some(&running), v(3), "agent-a").version, v(3));
        assert_eq!(effective(Some(&running), v(3)), v(2));
    }
}
