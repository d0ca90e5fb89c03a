//! The JSON form of a policy, as on the API page, for serialization.
//!
//! Parsing goes the other way through [`Policy::from_json`](super::Policy::from_json), which
//! validates every field and reports every error; these types only write. Defaults are filled
//! in (`enabled`, `requireApproval`); `window`, `description`, `params` and `org_id` appear only
//! when the policy gave them, so the API page's example serializes back exactly as written.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{
    AlertThreshold, AutoRespond, BlockIp, Budget, Budgets, CustomRule, FleetBudget, OnExceed,
    Policy, PolicyDuration, ResponseAction, Rule, RuleKind, RuleMode, Scope,
};
use crate::severity::Severity;

/// A policy document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyDocument {
    /// `name`
    pub name: String,
    /// `description`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `rules`
    pub rules: Vec<RuleDocument>,
    /// `org_id`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    /// `budgets`, only when the policy wrote some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budgets: Option<BudgetsDocument>,
}

/// `budgets`: only the parts the policy wrote (the defaults stay implicit).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetsDocument {
    /// `onExceed`
    #[serde(rename = "onExceed", skip_serializing_if = "Option::is_none")]
    pub on_exceed: Option<OnExceed>,
    /// `kill_process`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill_process: Option<BudgetDocument>,
    /// `quarantine_file`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine_file: Option<BudgetDocument>,
    /// `isolate_host`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolate_host: Option<BudgetDocument>,
    /// `block_ip`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_ip: Option<BudgetDocument>,
    /// `fleet_block`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_block: Option<BudgetDocument>,
}

/// One budget: `{"max", "window", "onExceed"}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetDocument {
    /// `max`
    pub max: u32,
    /// `window`
    pub window: PolicyDuration,
    /// `onExceed`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_exceed: Option<OnExceed>,
}

impl From<Budget> for BudgetDocument {
    fn from(budget: Budget) -> Self {
        Self {
            max: budget.max,
            window: budget.window,
            on_exceed: budget.on_exceed,
        }
    }
}

impl From<FleetBudget> for BudgetDocument {
    fn from(budget: FleetBudget) -> Self {
        Self {
            max: budget.max,
            window: budget.window,
            on_exceed: None,
        }
    }
}

impl From<&Budgets> for BudgetsDocument {
    fn from(budgets: &Budgets) -> Self {
        Self {
            on_exceed: budgets.on_exceed,
            kill_process: budgets.kill_process.map(Into::into),
            quarantine_file: budgets.quarantine_file.map(Into::into),
            isolate_host: budgets.isolate_host.map(Into::into),
            block_ip: budgets.block_ip.map(Into::into),
            fleet_block: budgets.fleet_block.map(Into::into),
        }
    }
}

/// One rule: `{"type", "config", "enabled", "mode"?}`. `mode` is written only for a shadow
/// rule, so that documents without shadow rules are exactly what agents before rule modes read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleDocument {
    /// `type` and `config`
    #[serde(flatten)]
    pub config: RuleConfig,
    /// `enabled`
    pub enabled: bool,
    /// `mode`
    #[serde(skip_serializing_if = "RuleMode::is_enforce")]
    pub mode: RuleMode,
}

/// The `type` tag with its `config` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", content = "config", rename_all = "snake_case")]
pub enum RuleConfig {
    /// `block_ip`
    BlockIp(BlockIpConfig),
    /// `alert_threshold`
    AlertThreshold(AlertThresholdConfig),
    /// `auto_respond`
    AutoRespond(AutoRespondConfig),
    /// `custom`
    Custom(CustomConfig),
}

/// `block_ip` config.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockIpConfig {
    /// `trigger`
    pub trigger: String,
    /// `threshold`
    pub threshold: u32,
    /// `duration`
    pub duration: PolicyDuration,
    /// `scope`
    pub scope: Scope,
    /// `window`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<PolicyDuration>,
}

/// `alert_threshold` config.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertThresholdConfig {
    /// `severity`
    pub severity: Severity,
    /// `countPerHour`
    pub count_per_hour: u64,
    /// `notifyChannels`
    pub notify_channels: Vec<String>,
}

/// `auto_respond` config.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoRespondConfig {
    /// `trigger`
    pub trigger: String,
    /// `action`
    pub action: ResponseAction,
    /// `minConfidence`
    pub min_confidence: f64,
    /// `requireApproval`
    pub require_approval: bool,
}

/// `custom` config.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomConfig {
    /// `condition`
    pub condition: String,
    /// `action`
    pub action: String,
    /// `params`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Map<String, Value>>,
}

impl From<&Policy> for PolicyDocument {
    fn from(policy: &Policy) -> Self {
        Self {
            name: policy.name.clone(),
            description: policy.description.clone(),
            rules: policy.rules.iter().map(RuleDocument::from).collect(),
            org_id: policy.org_id.clone(),
            budgets: (!policy.budgets.is_empty()).then(|| BudgetsDocument::from(&policy.budgets)),
        }
    }
}

impl From<&Rule> for RuleDocument {
    fn from(rule: &Rule) -> Self {
        let config = match &rule.kind {
            RuleKind::BlockIp(BlockIp {
                trigger,
                threshold,
                duration,
                scope,
                window,
            }) => RuleConfig::BlockIp(BlockIpConfig {
                trigger: trigger.clone(),
                threshold: *threshold,
                duration: *duration,
                scope: *scope,
                window: *window,
            }),
            RuleKind::AlertThreshold(AlertThreshold {
                severity,
                count_per_hour,
                notify_channels,
            }) => RuleConfig::AlertThreshold(AlertThresholdConfig {
                severity: *severity,
                count_per_hour: *count_per_hour,
                notify_channels: notify_channels.clone(),
            }),
            RuleKind::AutoRespond(AutoRespond {
                trigger,
                action,
                min_confidence,
                require_approval,
            }) => RuleConfig::AutoRespond(AutoRespondConfig {
                trigger: trigger.clone(),
                action: *action,
                min_confidence: *min_confidence,
                require_approval: *require_approval,
            }),
            RuleKind::Custom(CustomRule {
                condition,
                action,
                params,
            }) => RuleConfig::Custom(CustomConfig {
                condition: condition.source().to_owned(),
                action: action.clone(),
                params: params.clone(),
            }),
        };
        Self {
            config,
            enabled: rule.enabled,
            mode: rule.mode,
        }
    }
}
