//! The four rule types at run time: each rule's state and what one event does to it
//! (CONTRACT section 4).

use std::time::Duration;

use super::evaluator::Evaluator;
use super::keystore::{Hit, IpKey, KeyStore};
use super::targets::{self, BlockDefaults, MissingField};
use super::window::{Buckets, SlidingCounter};
use policy_engine::{
    Action, ActionRecord, AlertThreshold, AutoRespond, BlockIp, CustomRule, Diagnostic,
    EngineConfig, EngineStats, Evaluation, PolicyVersion, RuleKind, ThreatEvent,
};

/// The `alert_threshold` window.
const HOUR: Duration = Duration::from_secs(3600);
const HOUR_MS: i64 = 3_600_000;

/// A rule ready to process events.
#[derive(Debug)]
pub(crate) struct CompiledRule {
    pub(crate) enabled: bool,
    pub(crate) state: RuleState,
}

/// Per-type configuration and state.
#[derive(Debug)]
pub(crate) enum RuleState {
    BlockIp(BlockIpState),
    Alert(AlertState),
    AutoRespond(AutoRespond),
    Custom(CustomState),
}

#[derive(Debug)]
pub(crate) struct BlockIpState {
    config: BlockIp,
    block_ms: Option<i64>,
    pub(crate) store: KeyStore,
}

#[derive(Debug)]
pub(crate) struct AlertState {
    config: AlertThreshold,
    geometry: Buckets,
    counter: SlidingCounter,
    quiet_until: i64,
}

#[derive(Debug)]
pub(crate) struct CustomState {
    rule: CustomRule,
    evaluator: Evaluator,
}

/// Where one rule's results for one event go.
pub(crate) struct Sink<'a> {
    pub(crate) event: &'a ThreatEvent,
    pub(crate) version: PolicyVersion,
    pub(crate) rule: usize,
    pub(crate) out: &'a mut Evaluation,
    pub(crate) stats: &'a mut EngineStats,
    pub(crate) block: BlockDefaults,
}

impl Sink<'_> {
    fn emit(&mut self, action: Action) {
        self.stats.actions.record(&action);
        self.out.actions.push(ActionRecord {
            action,
            rule: self.rule,
            policy_version: self.version,
            event_id: self.event.id.clone(),
        });
    }

    fn emit_or_missing(&mut self, action: Result<Action, MissingField>, name: &'static str) {
        match action {
            Ok(action) => self.emit(action),
            Err(MissingField(field)) => {
                self.stats.missing_targets += 1;
                self.out.diagnostics.push(Diagnostic::MissingTarget {
                    rule: self.rule,
                    event_id: self.event.id.clone(),
                    action: name,
                    field,
                });
            }
        }
    }
}

impl CompiledRule {
    /// Compiles `kind` with fresh state.
    pub(crate) fn new(enabled: bool, kind: &RuleKind, config: &EngineConfig) -> Self {
        let state = match kind {
            RuleKind::BlockIp(block) => RuleState::BlockIp(BlockIpState {
                block_ms: block
                    .duration
                    .as_duration()
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
                store: KeyStore::new(Buckets::new(block.window()), config.max_keys_per_rule),
                config: block.clone(),
            }),
            RuleKind::AlertThreshold(alert) => RuleState::Alert(AlertState {
                config: alert.clone(),
                geometry: Buckets::new(HOUR),
                counter: SlidingCounter::default(),
                quiet_until: i64::MIN,
            }),
            RuleKind::AutoRespond(respond) => RuleState::AutoRespond(respond.clone()),
            RuleKind::Custom(custom) => RuleState::Custom(CustomState {
                evaluator: Evaluator::new(&custom.condition),
                rule: custom.clone(),
            }),
        };
        Self { enabled, state }
    }

    /// Whether this rule's state may carry over to `kind`: same type and same configuration
    /// (a `block_ip` window left out equals one of `1h`).
    pub(crate) fn same_config(&self, kind: &RuleKind) -> bool {
        match (&self.state, kind) {
            (RuleState::BlockIp(state), RuleKind::BlockIp(new)) => {
                let old = &state.config;
                old.trigger == new.trigger
                    && old.threshold == new.threshold
                    && old.duration == new.duration
                    && old.scope == new.scope
                    && old.window() == new.window()
            }
            (RuleState::Alert(state), RuleKind::AlertThreshold(new)) => state.config == *new,
            (RuleState::AutoRespond(old), RuleKind::AutoRespond(new)) => old == new,
            (RuleState::Custom(state), RuleKind::Custom(new)) => state.rule == *new,
            _ => false,
        }
    }

    /// Keys tracked and evictions so far.
    pub(crate) fn keys(&self) -> (usize, u64) {
        match &self.state {
            RuleState::BlockIp(state) => (state.store.len(), state.store.evictions()),
            _ => (0, 0),
        }
    }

    /// Runs one event through the rule.
    pub(crate) fn process(&mut self, key: Option<IpKey>, now_ms: i64, sink: &mut Sink<'_>) {
        match &mut self.state {
            RuleState::BlockIp(state) => state.process(key, now_ms, sink),
            RuleState::Alert(state) => state.process(now_ms, sink),
            RuleState::AutoRespond(config) => auto_respond(config, sink),
            RuleState::Custom(state) => state.process(sink),
        }
    }
}

impl BlockIpState {
    fn process(&mut self, key: Option<IpKey>, now_ms: i64, sink: &mut Sink<'_>) {
        self.store.sweep(now_ms, 2);
        let event = sink.event;
        let (Some(key), Some(ip)) = (key, event.src_ip) else {
            return;
        };
        if event.threat_type.as_deref() != Some(self.config.trigger.as_str()) {
            return;
        }
        let Hit::Counted(count) = self.store.hit(key, now_ms) else {
            return;
        };
        if count >= u64::from(self.config.threshold) {
            let until = self.block_ms.map(|ms| now_ms.saturating_add(ms));
            self.store.block(key, until);
            sink.emit(Action::BlockIp {
                ip,
                duration: self.config.duration,
                scope: self.config.scope,
            });
        }
    }
}

impl AlertState {
    fn process(&mut self, now_ms: i64, sink: &mut Sink<'_>) {
        let Some(severity) = sink.event.severity else {
            return;
        };
        if severity < self.config.severity {
            return;
        }
        let count = self
            .counter
            .add(self.geometry, self.geometry.bucket(now_ms));
        if count > self.config.count_per_hour && now_ms >= self.quiet_until {
            self.quiet_until = now_ms.saturating_add(HOUR_MS);
            sink.emit(Action::Alert {
                severity: self.config.severity,
                count,
                channels: self.config.notify_channels.clone(),
            });
        }
    }
}

fn auto_respond(config: &AutoRespond, sink: &mut Sink<'_>) {
    let event = sink.event;
    if event.threat_type.as_deref() != Some(config.trigger.as_str())
        || event.confidence < config.min_confidence
    {
        return;
    }
    let action = targets::response(config.action, event, sink.block).map(|action| {
        if config.require_approval {
            Action::ApprovalRequest {
                request: Box::new(action),
            }
        } else {
            action
        }
    });
    sink.emit_or_missing(action, config.action.as_str());
}

impl CustomState {
    fn process(&mut self, sink: &mut Sink<'_>) {
        match self.evaluator.eval(&self.rule.condition, sink.event) {
            Ok(true) => {}
            Ok(false) => return,
            Err(message) => {
                sink.stats.condition_errors += 1;
                sink.out.diagnostics.push(Diagnostic::ConditionError {
                    rule: sink.rule,
                    event_id: sink.event.id.clone(),
                    message,
                });
                return;
            }
        }
        match targets::custom(
            &self.rule.action,
            self.rule.params.as_ref(),
            sink.event,
            sink.block,
        ) {
            Ok(action) => {
                let name = builtin_name(&self.rule.action);
                sink.emit_or_missing(action, name);
            }
            Err(targets::BadParam(message)) => {
                sink.stats.invalid_params += 1;
                sink.out.diagnostics.push(Diagnostic::InvalidParams {
                    rule: sink.rule,
                    event_id: sink.event.id.clone(),
                    message,
                });
            }
        }
    }
}

fn builtin_name(name: &str) -> &'static str {
    name.parse::<policy_engine::ResponseAction>()
        .map_or("custom", |a| a.as_str())
}
