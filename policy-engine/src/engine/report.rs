//! What the engine reports besides actions: per-event diagnostics and running statistics.

use std::fmt;

use serde::Serialize;

use crate::action::Action;

/// Something that went wrong for one rule and one event; the rule emitted nothing for it.
///
/// ```
/// use policy_engine::Diagnostic;
/// let d = Diagnostic::MissingTarget {
///     rule: 2, event_id: Some("e1".into()), action: "kill_process", field: "pid",
/// };
/// assert_eq!(d.to_string(), "rule 2, event `e1`: `kill_process` needs the event's `pid`, which it lacks");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Diagnostic {
    /// A custom condition failed (missing field, type mismatch, non-boolean result): false.
    ConditionError {
        /// Rule index.
        rule: usize,
        /// `id` of the event.
        #[serde(rename = "eventId")]
        event_id: Option<String>,
        /// What went wrong.
        message: String,
    },
    /// The event lacks the target of the rule's action.
    MissingTarget {
        /// Rule index.
        rule: usize,
        /// `id` of the event.
        #[serde(rename = "eventId")]
        event_id: Option<String>,
        /// The action that could not be built.
        action: &'static str,
        /// The event field it needs.
        field: &'static str,
    },
    /// A `custom` rule's `params` do not fit the built-in action it names.
    InvalidParams {
        /// Rule index.
        rule: usize,
        /// `id` of the event.
        #[serde(rename = "eventId")]
        event_id: Option<String>,
        /// What is wrong.
        message: String,
    },
}

impl Diagnostic {
    /// Index of the rule concerned.
    pub fn rule(&self) -> usize {
        match self {
            Self::ConditionError { rule, .. }
            | Self::MissingTarget { rule, .. }
            | Self::InvalidParams { rule, .. } => *rule,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (rule, event_id) = match self {
            Self::ConditionError { rule, event_id, .. }
            | Self::MissingTarget { rule, event_id, .. }
            | Self::InvalidParams { rule, event_id, .. } => (rule, event_id),
        };
        write!(f, "rule {rule}")?;
        if let Some(id) = event_id {
            write!(f, ", event `{id}`")?;
        }
        match self {
            Self::ConditionError { message, .. } => write!(f, ": condition failed: {message}"),
            Self::MissingTarget { action, field, .. } => write!(
                f,
                ": `{action}` needs the event's `{field}`, which it lacks"
            ),
            Self::InvalidParams { message, .. } => write!(f, ": invalid params: {message}"),
        }
    }
}

/// Running totals since the engine was built (they survive policy updates).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineStats {
    /// Events processed.
    pub events: u64,
    /// Actions emitted, by type.
    pub actions: ActionCounts,
    /// Would-be actions of rules in shadow mode, by type (not in `actions`).
    #[serde(skip_serializing_if = "ActionCounts::is_zero")]
    pub shadow_actions: ActionCounts,
    /// Condition evaluations that failed (and counted as false).
    pub condition_errors: u64,
    /// Actions not emitted because the event lacked their target.
    pub missing_targets: u64,
    /// `custom` actions not emitted because of invalid `params`.
    pub invalid_params: u64,
    /// Keys evicted at the per-rule cap.
    pub evictions: u64,
    /// Keys tracked now, over all rules.
    pub tracked_keys: u64,
}

/// Number of actions emitted per action type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub struct ActionCounts {
    /// `block_ip`
    pub block_ip: u64,
    /// `alert`
    pub alert: u64,
    /// `kill_process`
    pub kill_process: u64,
    /// `quarantine_file`
    pub quarantine_file: u64,
    /// `isolate_host`
    pub isolate_host: u64,
    /// `approval_request`
    pub approval_request: u64,
    /// `custom`
    pub custom: u64,
}

impl ActionCounts {
    /// Counts one action.
    pub fn record(&mut self, action: &Action) {
        let counter = match action {
            Action::BlockIp { .. } => &mut self.block_ip,
            Action::Alert { .. } => &mut self.alert,
            Action::KillProcess { .. } => &mut self.kill_process,
            Action::QuarantineFile { .. } => &mut self.quarantine_file,
            Action::IsolateHost { .. } => &mut self.isolate_host,
            Action::ApprovalRequest { .. } => &mut self.approval_request,
            Action::Custom { .. } => &mut self.custom,
        };
        *counter += 1;
    }

    /// `(action name, count)` for every action type, in a fixed order.
    pub fn by_type(&self) -> [(&'static str, u64); 7] {
        [
            ("block_ip", self.block_ip),
            ("alert", self.alert),
            ("kill_process", self.kill_process),
            ("quarantine_file", self.quarantine_file),
            ("isolate_host", self.isolate_host),
            ("approval_request", self.approval_request),
            ("custom", self.custom),
        ]
    }

    /// Whether nothing was counted.
    pub fn is_zero(&self) -> bool {
        self.total() == 0
    }

    /// All actions.
    pub fn total(&self) -> u64 {
        self.by_type().iter().map(|(_, n)| n).sum()
    }
}
