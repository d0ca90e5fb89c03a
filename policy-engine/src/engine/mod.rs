//! The rule engine: threat events and the current time in, typed actions out.
//!
//! An event reaches only the enabled rules that can act on it (see `index`); the result is
//! the one of running it through every enabled rule in policy order, which
//! `tests/engine_differential.rs` checks against that linear engine.
//!
//! Invariant: nothing under `engine` does I/O or reads a clock; time is an argument.
//! Invariant: per-rule key state never exceeds [`EngineConfig::max_keys_per_rule`] keys.

mod alerts;
mod blocks;
mod index;
mod keystore;
mod report;
mod rules;
mod targets;
mod window;

use chrono::{DateTime, Utc};

use crate::action::ActionRecord;
use crate::condition::EventView;
use crate::event::ThreatEvent;
use crate::policy::{Policy, PolicyDuration, PolicyVersion, RuleMode, Scope};

pub use report::{ActionCounts, Diagnostic, EngineStats};

use alerts::AlertCounters;
use blocks::BlockStores;
use index::{RuleIndex, StoreRules, SweepSchedule};
use keystore::IpKey;
use rules::{CompiledRule, RuleState, Sink};
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
    /// Values above 536,870,911 count as that; 0 counts as 1 (a rule must hold the key it is
    /// counting).
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
    /// Would-be actions of the rules in shadow mode ([`RuleMode::Shadow`]), in rule order:
    /// to be counted and reported, never executed.
    pub shadow: Vec<ActionRecord>,
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
    /// Every rule of the policy, in order, with its state.
    rules: Vec<CompiledRule>,
    /// How an event finds the enabled rules it concerns.
    index: RuleIndex,
    sweeps: SweepSchedule,
    blocks: BlockStores,
    alerts: AlertCounters,
    stats: EngineStats,
    /// Latest time seen, in milliseconds: time never goes backwards inside the engine.
    now_ms: i64,
    /// Evictions of rules dropped by policy updates, so the total never decreases.
    retired_evictions: u64,
    /// `custom` rules to evaluate for the current event (kept to reuse its allocation).
    candidates: Vec<usize>,
    /// Per rule, whether it runs in shadow mode; empty when none does.
    shadow: Vec<bool>,
}

impl Engine {
    /// An engine for `policy` with fresh state.
    pub fn new(policy: Policy, version: PolicyVersion, config: EngineConfig) -> Engine {
        let mut rules: Vec<CompiledRule> = policy
            .rules
            .iter()
            .map(|rule| CompiledRule::new(rule.enabled, &rule.kind))
            .collect();
        let (blocks, _) = BlockStores::rebuild(
            BlockStores::default(),
            &[],
            &mut rules,
            config.max_keys_per_rule,
        );
        let alerts = AlertCounters::rebuild(&AlertCounters::default(), &mut rules);
        let (index, sweeps) = RuleIndex::build(&rules, &blocks);
        Engine {
            version,
            config,
            rules,
            index,
            sweeps,
            blocks,
            alerts,
            stats: EngineStats::default(),
            now_ms: i64::MIN,
            retired_evictions: 0,
            candidates: Vec::new(),
            shadow: shadow_rules(&policy),
            policy,
        }
    }

    /// Runs one event through the enabled rules it concerns at time `now`: the actions and
    /// diagnostics are those of running it through every enabled rule in order.
    ///
    /// Pure: no I/O, no clock reads. A `now` earlier than one already seen is taken as the
    /// latest time seen, so windows and blocks never run backwards.
    pub fn process(&mut self, event: &ThreatEvent, now: DateTime<Utc>) -> Evaluation {
        self.now_ms = self.now_ms.max(now.timestamp_millis());
        let now_ms = self.now_ms;
        self.stats.events += 1;
        let mut out = Evaluation::default();
        if now_ms >= self.sweeps.earliest {
            self.sweep(now_ms);
        }
        let mut sink = Sink {
            event,
            version: self.version,
            rule: 0,
            out: &mut out,
            stats: &mut self.stats,
            shadow: &self.shadow,
            block: BlockDefaults {
                duration: self.config.default_block_duration,
                scope: self.config.default_block_scope,
            },
        };
        let by_type = event
            .threat_type
            .as_deref()
            .and_then(|t| self.index.by_type(t));
        if let Some(by_type) = by_type {
            if let Some(ip) = event.src_ip {
                let stores = Stores {
                    blocks: &mut self.blocks,
                    sweeps: &mut self.sweeps,
                };
                stores.count(
                    &by_type.block_ip,
                    &self.rules,
                    IpKey::from(ip),
                    now_ms,
                    &mut sink,
                );
            }
            for &index in &by_type.auto_respond {
                if let Some(RuleState::AutoRespond(config)) =
                    self.rules.get(index).map(|r| &r.state)
                {
                    sink.rule = index;
                    rules::auto_respond(config, &mut sink);
                }
            }
        }
        if let Some(severity) = event.severity {
            self.alerts
                .process(severity, now_ms, &mut self.rules, &mut sink);
        }
        if self.index.has_custom() {
            let view = EventView::new(event);
            self.index
                .custom_candidates(&view, by_type, &mut self.candidates);
            for &index in &self.candidates {
                if let Some(RuleState::Custom(state)) =
                    self.rules.get_mut(index).map(|r| &mut r.state)
                {
                    sink.rule = index;
                    state.process(&view, &mut sink);
                }
            }
        }
        // Rules were visited by kind; each emits at most one action or diagnostic per event.
        out.actions.sort_by_key(|action| action.rule);
        out.diagnostics.sort_by_key(Diagnostic::rule);
        out.shadow.sort_by_key(|action| action.rule);
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
                None => CompiledRule::new(rule.enabled, &rule.kind),
            };
            rules.push(compiled);
        }
        let retired: Vec<_> = old
            .iter()
            .flatten()
            .filter_map(CompiledRule::place)
            .collect();
        let (blocks, evictions) = BlockStores::rebuild(
            std::mem::take(&mut self.blocks),
            &retired,
            &mut rules,
            self.config.max_keys_per_rule,
        );
        self.blocks = blocks;
        self.retired_evictions += evictions;
        self.alerts = AlertCounters::rebuild(&self.alerts, &mut rules);
        (self.index, self.sweeps) = RuleIndex::build(&rules, &self.blocks);
        self.rules = rules;
        self.shadow = shadow_rules(&policy);
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

    /// Sweeps the `block_ip` stores that are due at `now_ms`.
    fn sweep(&mut self, now_ms: i64) {
        let mut earliest = i64::MAX;
        for (place, due) in &mut self.sweeps.stores {
            if *due <= now_ms
                && let Some(store) = self.blocks.get_mut(place.store)
            {
                let member = place.member;
                let before = (store.len(member), store.evictions(member));
                store.sweep(member, now_ms, SWEEP_BUDGET);
                *due = store.next_sweep_ms(member);
                count_keys(&mut self.stats, before, store, member);
            }
            earliest = earliest.min(*due);
        }
        self.sweeps.earliest = earliest;
    }

    fn refresh_key_stats(&mut self) {
        let (keys, evictions) = self.blocks.totals();
        self.stats.tracked_keys = keys;
        self.stats.evictions = self.retired_evictions + evictions;
    }
}

/// Per rule whether it runs in shadow mode, or nothing when no rule does (the common case costs
/// one empty-slice lookup per action).
fn shadow_rules(policy: &Policy) -> Vec<bool> {
    if policy.rules.iter().all(|r| r.mode.is_enforce()) {
        return Vec::new();
    }
    policy
        .rules
        .iter()
        .map(|r| r.mode == RuleMode::Shadow)
        .collect()
}

/// The key stores and their sweep schedule, borrowed together for one event.
struct Stores<'a> {
    blocks: &'a mut BlockStores,
    sweeps: &'a mut SweepSchedule,
}

impl Stores<'_> {
    /// Counts an event from `key` for the `block_ip` rules of `groups` (those of its type).
    fn count(
        self,
        groups: &[StoreRules],
        rules: &[CompiledRule],
        key: IpKey,
        now_ms: i64,
        sink: &mut Sink<'_>,
    ) {
        for group in groups {
            let Some(store) = self.blocks.get_mut(group.store) else {
                continue;
            };
            // One lookup for every rule of the store.
            let mut record = store.find(key);
            if let Some(record) = record {
                store.prefetch(record, group.members.iter().map(|m| m.0));
            }
            for &(member, index, slot) in &group.members {
                let Some(RuleState::BlockIp(state)) = rules.get(index).map(|r| &r.state) else {
                    continue;
                };
                let before = (store.len(member), store.evictions(member));
                let ends = store.sweep_ends(member);
                sink.rule = index;
                let hit = state.hit(store, member, key, record, now_ms, sink);
                record = Some(hit);
                let (tail, head) = store.sweep_ends(member);
                if (tail, head) != ends || hit == tail || hit == head {
                    self.sweeps.set(slot, store.next_sweep_ms(member));
                }
                count_keys(sink.stats, before, store, member);
            }
        }
    }
}

/// Keys a `block_ip` store drops per event when stale keys or expired blocks are due.
const SWEEP_BUDGET: usize = 2;

/// Updates the key totals after `member` of `store` went from `before` (keys, evictions) to its
/// state now.
fn count_keys(
    stats: &mut EngineStats,
    before: (usize, u64),
    store: &keystore::KeyStore,
    member: usize,
) {
    stats.tracked_keys =
        (stats.tracked_keys + store.len(member) as u64).saturating_sub(before.0 as u64);
    stats.evictions += store.evictions(member).saturating_sub(before.1);
}
