//! The rate criteria of a rollout's gate, from the acks agents send in their heartbeats
//! (events evaluated, events with a condition error, actions, each since they applied their
//! version): the stage's condition error rate, and its actions per event against the previous
//! version's on the agents outside the stage. Pure: records in, a verdict out.

use policy_engine::PolicyVersion;
use policy_engine::protocol::AckStatus;

use super::assignment::in_stage;
use crate::store::{AgentRecord, Rollout};

/// Events, events with a condition error and actions, summed over the applied acks of one
/// version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sums {
    events: u64,
    condition_errors: u64,
    actions: u64,
}

fn sums<'a>(agents: impl Iterator<Item = &'a AgentRecord>, version: PolicyVersion) -> Sums {
    agents
        .filter_map(|a| {
            a.ack
                .as_ref()
                .filter(|k| k.version == version && k.status == AckStatus::Applied)
        })
        .fold(Sums::default(), |sum, ack| Sums {
            events: sum.events.saturating_add(ack.events),
            condition_errors: sum.condition_errors.saturating_add(ack.condition_errors),
            actions: sum
                .actions
                .saturating_add(ack.actions.values().fold(0u64, |a, n| a.saturating_add(*n))),
        })
}

/// The gate's rate criteria: `Err` with the reason when one fails; `Ok(false)` while one waits
/// for `minEvents` (the stage then does not advance on its own); `Ok(true)` otherwise.
///
/// - condition errors: the events of the stage's agents (their acks of the version) on which a
///   condition failed, at most `maxConditionErrorPercent` percent of their events;
/// - action rate: the stage's actions per event at most `maxActionRatePercent` percent of the
///   previous version's actions per event on the agents outside the stage that run it (a
///   version that emitted nothing allows nothing more). With no agent outside the stage
///   running the previous version (the last stage of a 100 % rollout) there is nothing to
///   compare with and it is not checked.
pub fn judge_rates(
    rollout: &Rollout,
    agents: &[AgentRecord],
    stage: &[&AgentRecord],
) -> Result<bool, String> {
    let gate = &rollout.gate;
    let stage_no = rollout.stage + 1;
    let new = sums(stage.iter().copied(), rollout.version);
    let mut judged = true;
    if let Some(max) = gate.max_condition_error_percent {
        if new.events < gate.min_events {
            judged = false;
        } else if u128::from(new.condition_errors) * 100 > u128::from(max) * u128::from(new.events)
        {
            return Err(format!(
                "a condition failed on {} of stage {stage_no}'s {} events ({}), above {max}%",
                new.condition_errors,
                new.events,
                percent(new.condition_errors, new.events)
            ));
        }
    }
    if let Some(max) = gate.max_action_rate_percent {
        let outside: Vec<&AgentRecord> = agents
            .iter()
            .filter(|a| !in_stage(rollout, rollout.stage, &a.id))
            .filter(|a| {
                a.ack
                    .as_ref()
                    .is_some_and(|k| k.version == rollout.previous)
            })
            .collect();
        let old = sums(outside.iter().copied(), rollout.previous);
        if outside.is_empty() {
            // Nothing runs the previous version any more: nothing to compare with.
        } else if new.events < gate.min_events || old.events < gate.min_events {
            judged = false;
        } else if u128::from(new.actions) * u128::from(old.events) * 100
            > u128::from(max) * u128::from(old.actions) * u128::from(new.events)
        {
            return Err(format!(
                "stage {stage_no} emitted {} actions on {} events ({} per event) against {} on {} \
                 events ({} per event) for {} outside it: above {max}% of {}'s rate",
                new.actions,
                new.events,
                per_event(new.actions, new.events),
                old.actions,
                old.events,
                per_event(old.actions, old.events),
                rollout.previous,
                rollout.previous
            ));
        }
    }
    Ok(judged)
}

/// `part` of `whole` as a percent with one decimal, for messages.
fn percent(part: u64, whole: u64) -> String {
    format!("{:.1}%", part as f64 * 100.0 / whole.max(1) as f64)
}

/// Actions per event with three decimals, for messages.
fn per_event(actions: u64, events: u64) -> String {
    format!("{:.3}", actions as f64 / events.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{TimeZone, Utc};
    use policy_engine::protocol::VersionAck;

    use super::*;
    use crate::store::{RolloutGate, RolloutStage, RolloutState};

    const V1: PolicyVersion = PolicyVersion::new(1);
    const V2: PolicyVersion = PolicyVersion::new(2);

    /// Stage 1 is `in-1` and `in-2` (named; 0 percent), everyone else is outside.
    fn rollout(gate: RolloutGate) -> Rollout {
        Rollout {
            id: "ro_1".into(),
            org_id: "default".into(),
            version: V2,
            previous: V1,
            state: RolloutState::Running,
            stage: 0,
            stages: vec![RolloutStage {
                percent: 0,
                agents: vec!["in-1".into(), "in-2".into()],
                soak_secs: 0,
            }],
            gate,
            stage_started_ms: 0,
            created_ms: 0,
            updated_ms: 0,
            reason: None,
        }
    }

    fn agent(
        id: &str,
        version: PolicyVersion,
        events: u64,
        errors: u64,
        kills: u64,
    ) -> AgentRecord {
        AgentRecord {
            id: id.into(),
            org_id: "default".into(),
            hostname: id.into(),
            enrolled_at: Utc.with_ymd_and_hms(2026, 3, 7, 12, 0, 0).unwrap(),
            last_seen: None,
            policy_version: Some(version),
            last_error: None,
            ack: Some(VersionAck {
                version,
                status: AckStatus::Applied,
                error: None,
                at: Utc.with_ymd_and_hms(2026, 3, 7, 12, 0, 0).unwrap(),
                actions: BTreeMap::from([("kill_process".to_owned(), kills)]),
                events,
                condition_errors: errors,
            }),
            shadow: None,
        }
    }

    fn judge(gate: RolloutGate, agents: &[AgentRecord]) -> Result<bool, String> {
        let rollout = rollout(gate);
        let stage: Vec<&AgentRecord> = agents
            .iter()
            .filter(|a| in_stage(&rollout, 0, &a.id))
            .collect();
        judge_rates(&rollout, agents, &stage)
    }

    fn gate(errors: Option<u32>, rate: Option<u32>) -> RolloutGate {
        RolloutGate {
            max_condition_error_percent: errors,
            max_action_rate_percent: rate,
            ..RolloutGate::default()
        }
    }

    #[test]
    fn the_condition_error_rate_fails_above_its_percent_and_waits_for_min_events() {
        let gate = gate(Some(5), None);
        // 10 of 200 events: exactly 5 %, allowed.
        let fleet = [agent("in-1", V2, 100, 4, 0), agent("in-2", V2, 100, 6, 0)];
        assert_eq!(judge(gate.clone(), &fleet), Ok(true));
        let fleet = [agent("in-1", V2, 100, 4, 0), agent("in-2", V2, 100, 7, 0)];
        assert_eq!(
            judge(gate.clone(), &fleet),
            Err("a condition failed on 11 of stage 1's 200 events (5.5%), above 5%".into())
        );
        // Under 100 events: not judged yet, and acks of another version do not count.
        let fleet = [
            agent("in-1", V2, 60, 60, 0),
            agent("in-2", V1, 1000, 1000, 0),
        ];
        assert_eq!(judge(gate, &fleet), Ok(false));
        // Not configured: not checked.
        assert_eq!(judge(RolloutGate::default(), &fleet), Ok(true));
    }

    #[test]
    fn the_action_rate_is_compared_with_the_previous_version_outside_the_stage() {
        let gate = gate(None, Some(200));
        // Outside: 10 kills on 1000 events (0.01 per event); stage: 4 on 200 (0.02): 200 %.
        let outside = [agent("out-1", V1, 500, 0, 5), agent("out-2", V1, 500, 0, 5)];
        let mut fleet = vec![agent("in-1", V2, 100, 0, 2), agent("in-2", V2, 100, 0, 2)];
        fleet.extend(outside.iter().cloned());
        assert_eq!(judge(gate.clone(), &fleet), Ok(true));
        fleet[0] = agent("in-1", V2, 100, 0, 3);
        assert_eq!(
            judge(gate.clone(), &fleet),
            Err(
                "stage 1 emitted 5 actions on 200 events (0.025 per event) against 10 on 1000 \
                 events (0.010 per event) for v1 outside it: above 200% of v1's rate"
                    .into()
            )
        );
        // A previous version that emitted nothing allows nothing more.
        let quiet = [
            agent("in-1", V2, 100, 0, 1),
            agent("in-2", V2, 100, 0, 0),
            agent("out-1", V1, 1000, 0, 0),
        ];
        assert!(judge(gate.clone(), &quiet).is_err());
        // Too few events on either side: waiting.
        let few = [agent("in-1", V2, 100, 0, 50), agent("out-1", V1, 99, 0, 0)];
        assert_eq!(judge(gate.clone(), &few), Ok(false));
        // Nobody outside runs v1 any more: nothing to compare with.
        let alone = [agent("in-1", V2, 100, 0, 50), agent("out-1", V2, 100, 0, 0)];
        assert_eq!(judge(gate, &alone), Ok(true));
    }
}
