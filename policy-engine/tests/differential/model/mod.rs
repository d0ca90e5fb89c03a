//! The reference model of the rule engine: the linear engine as it was before rules were
//! indexed (every enabled rule, in order, for every event; conditions through evalexpr's tree
//! walker), kept verbatim in the test tree so that the differential tests and the fuzzer can
//! check that the indexed engine emits exactly the same actions, diagnostics and stats.
//!
//! Shared by `tests/engine_differential.rs` and `fuzz/fuzz_targets/engine_differential.rs`
//! (which includes this directory with `#[path]`), so it only names public items of
//! `policy_engine`.

mod evaluator;
mod keystore;
mod rules;
mod targets;
mod window;

use chrono::{DateTime, Utc};
use policy_engine::{EngineConfig, EngineStats, Evaluation, Policy, PolicyVersion};

use keystore::IpKey;
use rules::{CompiledRule, Sink};
use targets::BlockDefaults;

/// The linear engine: `Engine` as it was, with the same `process` and `update_policy`.
#[derive(Debug)]
pub struct LinearEngine {
    version: PolicyVersion,
    config: EngineConfig,
    rules: Vec<CompiledRule>,
    stats: EngineStats,
    /// Latest time seen, in milliseconds: time never goes backwards inside the engine.
    now_ms: i64,
    /// Evictions of rules dropped by policy updates, so the total never decreases.
    retired_evictions: u64,
}

impl LinearEngine {
    /// An engine for `policy` with fresh state.
    pub fn new(policy: &Policy, version: PolicyVersion, config: EngineConfig) -> LinearEngine {
        let rules = policy
            .rules
            .iter()
            .map(|rule| CompiledRule::new(rule.enabled, &rule.kind, &config))
            .collect();
        LinearEngine {
            version,
            config,
            rules,
            stats: EngineStats::default(),
            now_ms: i64::MIN,
            retired_evictions: 0,
        }
    }

    /// Runs one event through every enabled rule at time `now`.
    pub fn process(
        &mut self,
        event: &policy_engine::ThreatEvent,
        now: DateTime<Utc>,
    ) -> Evaluation {
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

    /// Swaps in a new policy version, carrying the state of rules with the same type and
    /// configuration (preferring the one at the same index).
    pub fn update_policy(&mut self, policy: &Policy, version: PolicyVersion) {
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
        self.version = version;
        self.refresh_key_stats();
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
