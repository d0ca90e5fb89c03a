//! The rule engine: threat events and the current time in, typed actions out.
//!
//! Invariant: nothing under `engine` does I/O or reads a clock; time is an argument.
//! Invariant: per-rule key state never exceeds [`EngineConfig::max_keys_per_rule`] keys.

mod keystore;
mod report;
mod rules;
mod targets;
mod window;

use chrono::{DateTime, Utc};

use crate::action::ActionRecord;
use crate::event::ThreatEvent;
use crate::policy::{Policy, PolicyDuration, PolicyVersion, Scope};

pub use report::{ActionCounts, Diagnostic, EngineStats};

use keystore::IpKey;
use rules::{CompiledRule, Sink};
use targets::BlockDefaults;

// Agents move the engine into their event task: it must stay `Send`.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<Engine>();
};

/// Default [`EngineConfig::max_keys_per_rule`].
pub const DEFAULT_MAX_KEYS_PER_RULE: usize = 100_000;

/// Engine settings that are not part of the policy.
///
/// ```
/// use policy_engine::EngineConfig;
/// let config = EngineConfig { max_keys_per_rule: 1_000_000, ..EngineConfig::default() };
/// assert_eq!(config.default_block_duration.to_string(), "24h");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Most source IPs a `block_ip` rule tracks (counting or blocked); at the cap the least
    /// recently seen counting key is evicted (blocked keys only when no counting key is left).
    pub max_keys_per_rule: usize,
    /// Block duration of `block_ip` actions from `auto_respond` rules and `custom` rules without
    /// a `duration` param (those rule types state none).
    pub default_block_duration: PolicyDuration,
    /// Block scope for the same actions.
    pub default_block_scope: Scope,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_keys_per_rule: DEFAULT_MAX_KEYS_PER_RULE,
            default_block_duration: PolicyDuration::Finite {
                amount: 24,
                unit: crate::policy::DurationUnit::Hours,
            },
            default_block_scope: Scope::Host,
        }
    }
}

/// What one event caused: actions in rule order, and what went wrong on the way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluation {
    /// Actions to execute, in rule order.
    pub actions: Vec<ActionRecord>,
    /// Condition errors, missing targets and bad params, in rule order.
    pub diagnostics: Vec<Diagnostic>,
}

/// A policy at run time.
///
/// ```
/// use policy_engine::{Engine, EngineConfig, Policy, PolicyVersion, ThreatEvent};
/// let policy = Policy::from_json(br#"{"name":"ssh","rules":[{"type":"block_ip",
///   "config":{"trigger":"brute_force","threshold":2,"duration":"1h","scope":"host"}}]}"#).unwrap();
/// let mut engine = Engine::new(policy, PolicyVersion::new(1), EngineConfig::default());
/// let event = ThreatEvent::from_json(br#"{"type":"brute_force","srcIp":"203.0.113.7"}"#).unwrap();
/// let now = "2026-03-07T12:00:00Z".parse().unwrap();
/// assert!(engine.process(&event, now).actions.is_empty());
/// let second = engine.process(&event, now);
/// assert_eq!(
///     serde_json::to_string(&second.actions[0]).unwrap(),
///     r#"{"action":"block_ip","ip":"203.0.113.7","duration":"1h","scope":"host","rule":0,"policyVersion":"v1"}"#
/// );
/// ```
#[derive(Debug)]
pub struct Engine {
    policy: Policy,
    version: PolicyVersion,
    config: EngineConfig,
    rules: Vec<CompiledRule>,
    stats: EngineStats,
    /// Latest time seen, in milliseconds: time never goes backwards inside the engine.
    now_ms: i64,
    /// Evictions of rules dropped by policy updates, so the total never decreases.
    retired_evictions: u64,
}

impl Engine {
    /// An engine for `policy` with fresh state.
    pub fn new(policy: Policy, version: PolicyVersion, config: EngineConfig) -> Engine {
        let rules = policy
            .rules
            .iter()
            .map(|rule| CompiledRule::new(rule.enabled, &rule.kind, &config))
            .collect();
        Engine {
            policy,
            version,
            config,
            rules,
            stats: EngineStats::default(),
            now_ms: i64::MIN,
            retired_evictions: 0,
        }
    }

    /// Runs one event through every enabled rule at time `now`.
    ///
    /// Pure: no I/O, no clock reads. A `now` earlier than one already seen is taken as the
    /// latest time seen, so windows and blocks never run backwards.
    pub fn process(&mut self, event: &ThreatEvent, now: DateTime<Utc>) -> Evaluation {
        self.now_ms = self.now_ms.max(now.timestamp_millis());
        let now_ms = self.now_ms;
        self.stats.events += 1;
        let key = event.src_ip.map(IpKey::from);
        let block = BlockDefaults {
            duration: self.config.default_block_duration,
            scope: self.config.default_block_scope,
        };
        let mut out = Evaluation::default();
        let mut keys_changed = false;
        for (index, rule) in self.rules.iter_mut().enumerate() {
            if !rule.enabled {
                continue;
            }
            let mut sink = Sink {
                event,
                version: self.version,
                rule: index,
                out: &mut out,
                stats: &mut self.stats,
                block,
            };
            rule.process(key, now_ms, &mut sink);
            keys_changed |= matches!(rule.state, rules::RuleState::BlockIp(_));
        }
        if keys_changed {
            self.refresh_key_stats();
        }
        out
    }

    /// Swaps in a new policy version.
    ///
    /// A new rule inherits the state (counters, active blocks, alert quiet period) of an old
    /// rule with the same type and configuration, preferring the one at the same index, so
    /// that editing one rule does not hand attackers a fresh count on the others. `enabled`
    /// does not take part in the match. Rules without a match start fresh.
    pub fn update_policy(&mut self, policy: Policy, version: PolicyVersion) {
        let mut old: Vec<Option<CompiledRule>> = std::mem::take(&mut self.rules)
            .into_iter()
            .map(Some)
            .collect();
        let mut rules = Vec::with_capacity(policy.rules.len());
        for (index, rule) in policy.rules.iter().enumerate() {
            let same_index = old
                .get(index)
                .and_then(Option::as_ref)
                .is_some_and(|r| r.same_config(&rule.kind));
            let position = if same_index {
                Some(index)
            } else {
                old.iter()
                    .position(|r| r.as_ref().is_some_and(|r| r.same_config(&rule.kind)))
            };
            let carried = position.and_then(|i| old.get_mut(i)).and_then(Option::take);
            let compiled = match carried {
                Some(mut compiled) => {
                    compiled.enabled = rule.enabled;
                    compiled
                }
                None => CompiledRule::new(rule.enabled, &rule.kind, &self.config),
            };
            rules.push(compiled);
        }
        self.retired_evictions += old.iter().flatten().map(|r| r.keys().1).sum::<u64>();
        self.rules = rules;
        self.policy = policy;
        self.version = version;
        self.refresh_key_stats();
    }

    /// The version of the policy in force.
    pub fn version(&self) -> PolicyVersion {
        self.version
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Running totals.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    fn refresh_key_stats(&mut self) {
        let (keys, evictions) = self
            .rules
            .iter()
            .map(CompiledRule::keys)
            .fold((0u64, 0u64), |(k, e), (rk, re)| (k + rk as u64, e + re));
        self.stats.tracked_keys = keys;
        self.stats.evictions = self.retired_evictions + evictions;
    }
}
