//! The agent's shadow evaluation: a shadow run's engine beside the enforced one, and the
//! per-rule tallies (counts and latest targets) of both sides that heartbeats report.
//!
//! The shadow run has its own [`Engine`] with its own windows and counters, fed the events the
//! enforced engine saw, after it: the enforced engine's state and latency do not change, and
//! nothing the shadow emits reaches an executor.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};

use crate::action::{Action, ActionRecord};
use crate::engine::{ActionCounts, Engine, EngineConfig};
use crate::event::ThreatEvent;
use crate::policy::{Policy, PolicyVersion};
use crate::protocol::{
    ActionSample, CandidateTally, EnforcedTally, MAX_SHADOW_SAMPLES, MAX_SHADOW_SAMPLES_PER_RULE,
    RuleTally, ShadowReport, action_target,
};

/// Shadow state of a running agent: the shadow run (if any) and the tallies since `since`.
#[derive(Debug, Default)]
pub(crate) struct Shadows {
    candidate: Option<Candidate>,
    /// Whether the enforced policy has rules in shadow mode.
    shadow_rules: bool,
    /// Rules of the enforced policy (the size of its tally).
    enforced_rules: usize,
    since: Option<DateTime<Utc>>,
    enforced: Tally,
}

#[derive(Debug)]
struct Candidate {
    shadow: u64,
    engine: Engine,
    tally: Tally,
}

/// Per rule index: actions by type and the latest ones with their time. Kept cheap on the
/// event path (a counter, a move or clone of the action into a ring of
/// [`MAX_SHADOW_SAMPLES_PER_RULE`]); names and targets are written only for a report.
#[derive(Debug, Default)]
struct Tally(Vec<RuleCounts>);

#[derive(Debug, Default)]
struct RuleCounts {
    actions: ActionCounts,
    samples: VecDeque<(Action, DateTime<Utc>)>,
}

impl Shadows {
    /// Whether anything runs in shadow (a shadow run or a rule in shadow mode).
    pub(crate) fn active(&self) -> bool {
        self.candidate.is_some() || self.shadow_rules
    }

    /// The shadow run's number, if one runs.
    pub(crate) fn running(&self) -> Option<u64> {
        self.candidate.as_ref().map(|c| c.shadow)
    }

    /// A new enforced policy: its tallies start over.
    pub(crate) fn enforced_changed(&mut self, policy: &Policy, now: DateTime<Utc>) {
        self.shadow_rules = policy.rules.iter().any(|r| !r.mode.is_enforce());
        self.enforced_rules = policy.rules.len();
        self.restart(now);
    }

    /// Starts shadow run `shadow` of `policy` with a fresh engine; both sides' tallies start
    /// over so that they cover the same events.
    pub(crate) fn start(
        &mut self,
        shadow: u64,
        policy: Policy,
        config: EngineConfig,
        now: DateTime<Utc>,
    ) {
        self.candidate = Some(Candidate {
            shadow,
            tally: Tally::sized(policy.rules.len()),
            engine: Engine::new(policy, PolicyVersion::new(0), config),
        });
        self.restart(now);
    }

    /// Ends shadow run `shadow` (a newer or unknown number ends nothing); true if it ran.
    pub(crate) fn end(&mut self, shadow: u64, now: DateTime<Utc>) -> bool {
        if self.running() != Some(shadow) {
            return false;
        }
        self.candidate = None;
        self.restart(now);
        true
    }

    fn restart(&mut self, now: DateTime<Utc>) {
        self.since = Some(now);
        self.enforced = Tally::sized(self.enforced_rules);
        if let Some(candidate) = &mut self.candidate {
            candidate.tally = Tally::sized(candidate.engine.policy().rules.len());
        }
    }

    /// Counts what the enforced engine emitted for one event (executed and would-be; only the
    /// would-be actions while no shadow run needs the enforced side), then runs the event
    /// through the shadow run's engine and counts what it would have done.
    pub(crate) fn observe(
        &mut self,
        enforced: &[ActionRecord],
        would_be: &[ActionRecord],
        event: &ThreatEvent,
        now: DateTime<Utc>,
    ) {
        if self.candidate.is_some() {
            for record in enforced {
                self.enforced.count(record.rule, record.action.clone(), now);
            }
        }
        for record in would_be {
            self.enforced.count(record.rule, record.action.clone(), now);
        }
        if let Some(candidate) = &mut self.candidate {
            let evaluation = candidate.engine.process(event, now);
            for record in evaluation.actions.into_iter().chain(evaluation.shadow) {
                candidate.tally.count(record.rule, record.action, now);
            }
        }
    }

    /// The report for the next heartbeat, `None` when nothing runs in shadow. Samples are
    /// capped at [`MAX_SHADOW_SAMPLES`] in all, the shadow run's first.
    pub(crate) fn report(&self, enforced: Option<PolicyVersion>) -> Option<ShadowReport> {
        if !self.active() {
            return None;
        }
        let (version, since) = (enforced?, self.since?);
        let mut budget = MAX_SHADOW_SAMPLES;
        let candidate = self.candidate.as_ref().map(|c| CandidateTally {
            shadow: c.shadow,
            rules: c.tally.rules(&mut budget),
        });
        Some(ShadowReport {
            since,
            enforced: EnforcedTally {
                version,
                rules: self.enforced.rules(&mut budget),
            },
            candidate,
        })
    }
}

impl Tally {
    fn sized(rules: usize) -> Self {
        Self(
            std::iter::repeat_with(RuleCounts::default)
                .take(rules)
                .collect(),
        )
    }

    fn count(&mut self, rule: usize, action: Action, now: DateTime<Utc>) {
        let Some(counts) = self.0.get_mut(rule) else {
            return;
        };
        counts.actions.record(&action);
        if counts.samples.len() == MAX_SHADOW_SAMPLES_PER_RULE {
            counts.samples.pop_front();
        }
        counts.samples.push_back((action, now));
    }

    /// The rules that counted something, with their latest samples within `budget`.
    fn rules(&self, budget: &mut usize) -> Vec<RuleTally> {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, counts)| !counts.actions.is_zero())
            .map(|(rule, counts)| {
                let take = counts.samples.len().min(*budget);
                *budget -= take;
                let skip = counts.samples.len() - take;
                RuleTally {
                    rule,
                    actions: counts
                        .actions
                        .by_type()
                        .iter()
                        .filter(|(_, n)| *n > 0)
                        .map(|(name, n)| ((*name).to_owned(), *n))
                        .collect(),
                    samples: counts
                        .samples
                        .iter()
                        .skip(skip)
                        .map(|(action, at)| ActionSample {
                            action: action.name().to_owned(),
                            target: action_target(action),
                            at: *at,
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Policy {
        Policy::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn the_shadow_run_keeps_its_own_windows_and_reports_per_rule() {
        let enforced = policy(
            r#"{"name":"e","rules":[{"type":"block_ip","config":{"trigger":"bf","threshold":3,"duration":"1h","scope":"host"}}]}"#,
        );
        let candidate = policy(
            r#"{"name":"c","rules":[{"type":"block_ip","config":{"trigger":"bf","threshold":2,"duration":"1h","scope":"host"}}]}"#,
        );
        let mut engine = Engine::new(
            enforced.clone(),
            PolicyVersion::new(4),
            EngineConfig::default(),
        );
        let mut shadows = Shadows::default();
        let now: DateTime<Utc> = "2026-03-07T12:00:00Z".parse().unwrap();
        shadows.enforced_changed(&enforced, now);
        assert!(
            shadows.report(Some(PolicyVersion::new(4))).is_none(),
            "nothing in shadow"
        );
        shadows.start(7, candidate, EngineConfig::default(), now);
        let event = ThreatEvent::from_json(br#"{"type":"bf","srcIp":"203.0.113.7"}"#).unwrap();
        for _ in 0..3 {
            let evaluation = engine.process(&event, now);
            shadows.observe(&evaluation.actions, &evaluation.shadow, &event, now);
        }
        let report = shadows.report(Some(PolicyVersion::new(4))).unwrap();
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "since": "2026-03-07T12:00:00.000Z",
                "enforced": {"version": "v4", "rules": [{"rule": 0, "actions": {"block_ip": 1},
                    "samples": [{"action": "block_ip", "target": "203.0.113.7", "at": "2026-03-07T12:00:00.000Z"}]}]},
                "candidate": {"shadow": 7, "rules": [{"rule": 0, "actions": {"block_ip": 1},
                    "samples": [{"action": "block_ip", "target": "203.0.113.7", "at": "2026-03-07T12:00:00.000Z"}]}]},
            })
        );
        // The enforced engine blocked on the third event, the shadow one on the second: its
        // count is its own, the enforced engine's stats saw only its own action.
        assert_eq!(engine.stats().actions.block_ip, 1);
        assert!(!shadows.end(8, now), "another run's end ends nothing");
        assert!(shadows.end(7, now));
        assert!(shadows.report(Some(PolicyVersion::new(4))).is_none());
    }

    #[test]
    fn samples_keep_the_latest_per_rule() {
        let mut tally = Tally::sized(3);
        let now: DateTime<Utc> = "2026-03-07T12:00:00Z".parse().unwrap();
        for pid in 0..(MAX_SHADOW_SAMPLES_PER_RULE as u32 + 3) {
            tally.count(2, Action::KillProcess { pid, process: None }, now);
        }
        tally.count(
            7,
            Action::KillProcess {
                pid: 1,
                process: None,
            },
            now,
        );
        let mut budget = 3;
        let rules = tally.rules(&mut budget);
        assert_eq!(
            rules.len(),
            1,
            "only rules that counted, none past the policy's"
        );
        assert_eq!(rules[0].rule, 2);
        assert_eq!(rules[0].actions["kill_process"], 8);
        let targets: Vec<&str> = rules[0].samples.iter().map(|s| s.target.as_str()).collect();
        assert_eq!(
            targets,
            ["5", "6", "7"],
            "the latest, within the report's budget"
        );
        assert_eq!(budget, 0);
    }
}
