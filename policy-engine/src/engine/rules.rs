//! The four rule types at run time: each rule's state and what one event does to it once the
//! index has found that the event concerns the rule (CONTRACT section 4).

use super::Evaluation;
use super::blocks::Place;
use super::keystore::{Hit, IpKey, KeyStore};
use super::report::{Diagnostic, EngineStats};
use super::targets::{self, BlockDefaults, MissingField};
use crate::action::{Action, ActionRecord};
use crate::condition::{Evaluator, EventView};
use crate::event::ThreatEvent;
use crate::policy::{AlertThreshold, AutoRespond, BlockIp, CustomRule, PolicyVersion, RuleKind};

/// The `alert_threshold` quiet period after an alert.
const HOUR_MS: i64 = 3_600_000;

/// A rule ready to process events: the unit whose state `update_policy` carries over.
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
    Custom(Box<CustomState>),
}

/// A `block_ip` rule; its per-address state is a member of a key store shared with the rules
/// of the same trigger (see `blocks`).
#[derive(Debug)]
pub(crate) struct BlockIpState {
    pub(crate) config: BlockIp,
    block_ms: Option<i64>,
    /// Where its state lives, `None` for a rule that has none yet.
    pub(crate) place: Option<Place>,
}

/// An `alert_threshold` rule; its hourly count lives in a counter shared with the rules of the
/// same severity that have counted the same events (see `alerts`).
#[derive(Debug)]
pub(crate) struct AlertState {
    pub(crate) config: AlertThreshold,
    pub(crate) quiet_until: i64,
    /// The engine's counter this rule reads, `None` for a rule that has counted nothing yet.
    pub(crate) counter: Option<usize>,
}

#[derive(Debug)]
pub(crate) struct CustomState {
    pub(crate) rule: CustomRule,
    pub(crate) evaluator: Evaluator,
}

/// Where one rule's results for one event go.
pub(crate) struct Sink<'a> {
    pub(crate) event: &'a ThreatEvent,
    pub(crate) version: PolicyVersion,
    pub(crate) rule: usize,
    pub(crate) out: &'a mut Evaluation,
    pub(crate) stats: &'a mut EngineStats,
    pub(crate) block: BlockDefaults,
    /// Per rule whether it runs in shadow mode (empty: none does).
    pub(crate) shadow: &'a [bool],
}

impl Sink<'_> {
    fn emit(&mut self, action: Action) {
        let shadow = self.shadow.get(self.rule).copied().unwrap_or(false);
        let (counts, out) = if shadow {
            (&mut self.stats.shadow_actions, &mut self.out.shadow)
        } else {
            (&mut self.stats.actions, &mut self.out.actions)
        };
        counts.record(&action);
        out.push(ActionRecord {
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
    pub(crate) fn new(enabled: bool, kind: &RuleKind) -> Self {
        let state = match kind {
            RuleKind::BlockIp(block) => RuleState::BlockIp(BlockIpState {
                block_ms: block
                    .duration
                    .as_duration()
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
                place: None,
                config: block.clone(),
            }),
            RuleKind::AlertThreshold(alert) => RuleState::Alert(AlertState {
                config: alert.clone(),
                quiet_until: i64::MIN,
                counter: None,
            }),
            RuleKind::AutoRespond(respond) => RuleState::AutoRespond(respond.clone()),
            RuleKind::Custom(custom) => RuleState::Custom(Box::new(CustomState {
                evaluator: Evaluator::new(&custom.condition),
                rule: custom.clone(),
            })),
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

    /// Where its per-address state lives, for a `block_ip` rule.
    pub(crate) fn place(&self) -> Option<Place> {
        match &self.state {
            RuleState::BlockIp(state) => state.place,
            _ => None,
        }
    }
}

impl BlockIpState {
    /// Counts an event of the rule's trigger from `key` (the event's `srcIp`) as `member` of
    /// `store`, and blocks the address at the threshold. `record` is the address's record if
    /// known; returns it for the next member.
    pub(crate) fn hit(
        &self,
        store: &mut KeyStore,
        member: usize,
        key: IpKey,
        record: Option<u32>,
        now_ms: i64,
        sink: &mut Sink<'_>,
    ) -> u32 {
        let (hit, record) = store.hit(member, key, record, now_ms);
        if let (Hit::Counted(count), Some(ip)) = (hit, sink.event.src_ip)
            && count >= u64::from(self.config.threshold)
        {
            let until = self.block_ms.map(|ms| now_ms.saturating_add(ms));
            store.block(member, record, until);
            sink.emit(Action::BlockIp {
                ip,
                duration: self.config.duration,
                scope: self.config.scope,
            });
        }
        record
    }
}

impl AlertState {
    /// Alerts if `count` (events of at least the rule's severity in the last hour, this one
    /// included) is over the rule's limit and the rule is not in its quiet hour.
    pub(crate) fn offer(&mut self, count: u64, now_ms: i64, sink: &mut Sink<'_>) {
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

/// An `auto_respond` rule for an event of its trigger.
pub(crate) fn auto_respond(config: &AutoRespond, sink: &mut Sink<'_>) {
    let event = sink.event;
    if event.confidence < config.min_confidence {
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
    pub(crate) fn process(&mut self, view: &EventView<'_>, sink: &mut Sink<'_>) {
        match self.evaluator.eval_view(&self.rule.condition, view) {
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
    name.parse::<crate::policy::ResponseAction>()
        .map_or("custom", |a| a.as_str())
}
