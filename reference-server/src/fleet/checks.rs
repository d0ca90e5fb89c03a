//! What a report may claim: checked against what the server knows before it acts.
//!
//! - **Version**: the report's `policyVersion` is a version of the agent's org that the server
//!   pushed to this agent (recorded per agent with the overrides it was resolved with).
//! - **Rule**: the version has a rule at the report's index, enabled, whose type, scope and
//!   action can produce the reported action (as the agent's resolved policy had it): a fleet
//!   block needs a `block_ip` rule with `scope: fleet` and that duration, or a `custom` rule
//!   whose action is `block_ip` with `params.scope: fleet`; an approval request an
//!   `auto_respond` rule with `requireApproval` for that action, or any rule that can produce
//!   the requested `kill_process`, `quarantine_file`, `isolate_host` or `block_ip` when the
//!   version's budget of that action goes to approval (`budgets`, the agent asks beyond it),
//!   and the outcome of such an approved action likewise; an alert an `alert_threshold`
//!   rule of that severity whose `notifyChannels` hold every reported channel (or a `custom`
//!   `alert` with those `params.channels`); a custom action the rule's name and params.
//! - **Targets**: a fleet block never targets loopback, unspecified, link-local, multicast or
//!   broadcast addresses, the server's own addresses or the `--never-block` list.
//!
//! One exception: a host-scope `block_ip` is also how an agent reports a fleet block it
//! executed, which carries the *reporting* agent's rule and version; it needs a version of the
//! org (not necessarily pushed to this agent) whose rule at that index can block an address.
//!
//! A refusal is one [`Refusal`] (422 with the path of the offending field); the caller writes
//! one audit entry for it, however many fields are wrong.

use std::net::IpAddr;

use ipnet::IpNet;
use policy_engine::budget::budgeted;
use policy_engine::policy::{Budgets, OnExceed, ResponseAction, Rule, RuleKind};
use policy_engine::{Action, EngineConfig, PolicyDuration, Scope};
use serde_json::{Map, Value};

use super::overrides;
use crate::error::ApiError;
use crate::store::{Store, StoredPolicy};

/// Why a report was refused: the path of the offending field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// JSON path in the report (`policyVersion`, `rule`, `scope`, `channels[3]`, `ip`, ...).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl Refusal {
    /// A refusal at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        ApiError::invalid(refusal.path, refusal.message)
    }
}

/// Addresses no fleet block may target: the built-in kinds, the server's own addresses and
/// the operator's `--never-block` ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NeverBlock {
    /// The server's own addresses (listen address, the host's interfaces).
    pub own: Vec<IpAddr>,
    /// `--never-block` ranges.
    pub ranges: Vec<IpNet>,
}

impl NeverBlock {
    /// Why `ip` must not be blocked fleet-wide, if it must not.
    pub fn reason(&self, ip: IpAddr) -> Option<String> {
        let ip = ip.to_canonical();
        let kind = match ip {
            IpAddr::V4(v4) if v4.is_loopback() => Some("a loopback address"),
            IpAddr::V4(v4) if v4.is_unspecified() => Some("the unspecified address"),
            IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address"),
            IpAddr::V4(v4) if v4.is_multicast() => Some("a multicast address"),
            IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
            IpAddr::V6(v6) if v6.is_loopback() => Some("a loopback address"),
            IpAddr::V6(v6) if v6.is_unspecified() => Some("the unspecified address"),
            IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("a link-local address"),
            IpAddr::V6(v6) if v6.is_multicast() => Some("a multicast address"),
            _ => None,
        };
        if let Some(kind) = kind {
            return Some(format!("`{ip}` is {kind}"));
        }
        if self.own.iter().any(|own| own.to_canonical() == ip) {
            return Some(format!("`{ip}` is an address of the policy server"));
        }
        self.ranges
            .iter()
            .find(|net| net.contains(&ip))
            .map(|net| format!("`{ip}` is in the server's never-block list (`{net}`)"))
    }
}

/// The addresses of this host's interfaces, plus `listen` (when it is not a wildcard).
pub fn own_addresses(listen: IpAddr) -> Vec<IpAddr> {
    let mut own: Vec<IpAddr> = Vec::new();
    if !listen.is_unspecified() {
        own.push(listen);
    }
    match nix::ifaddrs::getifaddrs() {
        Ok(interfaces) => {
            for interface in interfaces {
                let address = interface.address.as_ref().and_then(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                });
                if let Some(address) = address.filter(|a| !own.contains(a)) {
                    own.push(address);
                }
            }
        }
        Err(error) => tracing::warn!(%error, "cannot list this host's addresses"),
    }
    own
}

/// Checks a report's action, rule and version against what the server sent `agent_id` of
/// `org_id`; `approved` when it is the outcome of an approval (the action ran after an admin
/// approved the request).
pub async fn check(
    store: &dyn Store,
    never_block: &NeverBlock,
    agent_id: &str,
    org_id: &str,
    report: &policy_engine::ActionRecord,
    approved: bool,
) -> Result<(), CheckError> {
    let version = report.policy_version;
    if let Action::BlockIp {
        ip,
        scope: Scope::Fleet,
        ..
    } = &report.action
    {
        if let Some(reason) = never_block.reason(*ip) {
            return Err(
                Refusal::new("ip", format!("{reason}; it is never blocked fleet-wide")).into(),
            );
        }
    }
    let policy = store
        .policy(org_id.to_owned(), version)
        .await?
        .ok_or_else(|| {
            Refusal::new(
                "policyVersion",
                format!("org `{org_id}` has no policy version `{version}`"),
            )
        })?;
    let index = report.rule;
    let Some(base) = policy.policy.rules.get(index) else {
        return Err(Refusal::new(
            "rule",
            format!(
                "policy version `{version}` has no rule {index} (it has {} rules)",
                policy.policy.rules.len()
            ),
        )
        .into());
    };
    if let Action::BlockIp {
        scope: Scope::Host, ..
    } = &report.action
    {
        return can_block_an_address(base, index).map_err(CheckError::Refused);
    }
    let sent = store
        .sent_overrides(org_id.to_owned(), agent_id.to_owned(), version.number())
        .await?;
    if sent.is_empty() {
        return Err(Refusal::new(
            "policyVersion",
            format!("policy version `{version}` was not sent to this agent"),
        )
        .into());
    }
    let mut first_refusal = None;
    for list in &sent {
        let rule = resolved_rule(&policy, list, index).unwrap_or_else(|| base.clone());
        match can_produce(
            &rule,
            index,
            &report.action,
            approved,
            &policy.policy.budgets,
        ) {
            Ok(()) => return Ok(()),
            Err(refusal) => {
                first_refusal.get_or_insert(refusal);
            }
        }
    }
    Err(CheckError::Refused(first_refusal.unwrap_or_else(|| {
        Refusal::new("rule", format!("rule {index} cannot produce this action"))
    })))
}

/// Why a check did not pass.
#[derive(Debug)]
pub enum CheckError {
    /// The report is refused (422).
    Refused(Refusal),
    /// The store failed (500).
    Store(crate::store::StoreError),
}

impl From<Refusal> for CheckError {
    fn from(refusal: Refusal) -> Self {
        Self::Refused(refusal)
    }
}

impl From<crate::store::StoreError> for CheckError {
    fn from(error: crate::store::StoreError) -> Self {
        Self::Store(error)
    }
}

/// Rule `index` of `policy` as resolved with the override `list` (as pushed to the agent);
/// `None` when the list is empty or does not fit (the agent then got the rule unmodified).
fn resolved_rule(policy: &StoredPolicy, list: &Value, index: usize) -> Option<Rule> {
    let list = overrides::parse(list, usize::MAX).ok()?;
    if !list.iter().any(|o| o.rule == index) {
        return None;
    }
    let resolved = overrides::apply(&policy.policy.to_json_value(), &list).ok()?;
    resolved.rules.get(index).cloned()
}

/// A host-scope block: any rule that can block an address (a fleet block executed on this
/// host carries the reporter's rule and version).
fn can_block_an_address(rule: &Rule, index: usize) -> Result<(), Refusal> {
    let blocks = match &rule.kind {
        RuleKind::BlockIp(_) => true,
        RuleKind::AutoRespond(respond) => respond.action == ResponseAction::BlockIp,
        RuleKind::Custom(custom) => custom.action == "block_ip",
        RuleKind::AlertThreshold(_) => false,
    };
    if blocks {
        Ok(())
    } else {
        Err(Refusal::new(
            "action",
            format!(
                "rule {index} is {}, which cannot block an address",
                rule_name(rule)
            ),
        ))
    }
}

/// Whether `rule` (number `index`, as the agent had it) can produce `action`, under the
/// version's `budgets`.
fn can_produce(
    rule: &Rule,
    index: usize,
    action: &Action,
    approved: bool,
    budgets: &Budgets,
) -> Result<(), Refusal> {
    if !rule.enabled {
        return Err(Refusal::new("rule", format!("rule {index} is disabled")));
    }
    // Beyond its budget an action the rule produces is asked for, then run once approved.
    let asked = match action {
        Action::ApprovalRequest { request } => Some(request.as_ref()),
        action if approved => Some(action),
        _ => None,
    };
    if let Some(requested) = asked {
        let asks = budgeted(requested)
            .is_some_and(|kind| budgets.limit(kind).on_exceed == OnExceed::Approval);
        if asks && can_produce(rule, index, requested, false, budgets).is_ok() {
            return Ok(());
        }
    }
    let defaults = EngineConfig::default();
    let cannot = |path: &str| {
        Err(Refusal::new(
            path,
            format!(
                "rule {index} is {}, which cannot produce {}",
                rule_name(rule),
                describe(action)
            ),
        ))
    };
    match (&rule.kind, action) {
        (
            RuleKind::BlockIp(block),
            Action::BlockIp {
                scope, duration, ..
            },
        ) => {
            if block.scope != *scope {
                return cannot("scope");
            }
            same_duration(index, block.duration, *duration)
        }
        (
            RuleKind::Custom(custom),
            Action::BlockIp {
                scope, duration, ..
            },
        ) if custom.action == "block_ip" => {
            let params = custom.params.as_ref();
            let rule_scope = match param(params, "scope") {
                Some("fleet") => Scope::Fleet,
                Some(_) => Scope::Host,
                None => defaults.default_block_scope,
            };
            if rule_scope != *scope {
                return cannot("scope");
            }
            let rule_duration = param(params, "duration")
                .and_then(|d| d.parse().ok())
                .unwrap_or(defaults.default_block_duration);
            same_duration(index, rule_duration, *duration)
        }
        (
            RuleKind::AlertThreshold(alert),
            Action::Alert {
                severity, channels, ..
            },
        ) => {
            if alert.severity != *severity {
                return cannot("severity");
            }
            own_channels(index, &alert.notify_channels, channels)
        }
        (RuleKind::Custom(custom), Action::Alert { channels, .. }) if custom.action == "alert" => {
            let own: Vec<String> = custom
                .params
                .as_ref()
                .and_then(|p| p.get("channels"))
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|i| i.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            own_channels(index, &own, channels)
        }
        (RuleKind::AutoRespond(respond), Action::ApprovalRequest { request }) => {
            if !respond.require_approval || respond.action.as_str() != request.name() {
                return cannot("action");
            }
            default_block(index, request, &defaults, "request.")
        }
        (RuleKind::AutoRespond(respond), action) => {
            if respond.action.as_str() != action.name() || respond.require_approval != approved {
                return cannot("action");
            }
            default_block(index, action, &defaults, "")
        }
        (RuleKind::Custom(custom), Action::Custom { name, params }) => {
            if custom.action != *name {
                return cannot("name");
            }
            let empty = Map::new();
            if custom.params.as_ref().unwrap_or(&empty) != params {
                return Err(Refusal::new(
                    "params",
                    format!("`params` differ from those of rule {index}"),
                ));
            }
            Ok(())
        }
        (RuleKind::Custom(custom), action) if custom.action == action.name() => Ok(()),
        _ => cannot("action"),
    }
}

fn same_duration(
    index: usize,
    rule: PolicyDuration,
    reported: PolicyDuration,
) -> Result<(), Refusal> {
    if rule.as_duration() == reported.as_duration() {
        Ok(())
    } else {
        Err(Refusal::new(
            "duration",
            format!("rule {index} blocks for `{rule}`, not `{reported}`"),
        ))
    }
}

/// A `block_ip` from an `auto_respond` rule has the engine's default duration and scope.
fn default_block(
    index: usize,
    action: &Action,
    defaults: &EngineConfig,
    prefix: &str,
) -> Result<(), Refusal> {
    if let Action::BlockIp {
        scope, duration, ..
    } = action
    {
        if *scope != defaults.default_block_scope {
            return Err(Refusal::new(
                format!("{prefix}scope"),
                format!("rule {index} (`auto_respond`) blocks with host scope only"),
            ));
        }
        return same_duration(index, defaults.default_block_duration, *duration)
            .map_err(|r| Refusal::new(format!("{prefix}{}", r.path), r.message));
    }
    Ok(())
}

/// Every reported channel must be one of the rule's, each at most once.
fn own_channels(index: usize, own: &[String], reported: &[String]) -> Result<(), Refusal> {
    for (i, channel) in reported.iter().enumerate() {
        if !own.contains(channel) {
            let shown: String = channel.chars().take(64).collect();
            let list: Vec<String> = own.iter().map(|c| format!("`{c}`")).collect();
            return Err(Refusal::new(
                format!("channels[{i}]"),
                format!(
                    "channel `{shown}` is not one of rule {index}'s channels ({})",
                    if list.is_empty() {
                        "none".to_owned()
                    } else {
                        list.join(", ")
                    }
                ),
            ));
        }
        if reported
            .get(..i)
            .is_some_and(|before| before.contains(channel))
        {
            return Err(Refusal::new(
                format!("channels[{i}]"),
                format!("channel `{channel}` is listed twice"),
            ));
        }
    }
    Ok(())
}

fn param<'a>(params: Option<&'a Map<String, Value>>, key: &str) -> Option<&'a str> {
    params.and_then(|p| p.get(key)).and_then(Value::as_str)
}

fn rule_name(rule: &Rule) -> String {
    match &rule.kind {
        RuleKind::BlockIp(block) => format!(
            "`block_ip` with scope `{}`",
            match block.scope {
                Scope::Host => "host",
                Scope::Fleet => "fleet",
            }
        ),
        RuleKind::AlertThreshold(_) => "`alert_threshold`".to_owned(),
        RuleKind::AutoRespond(respond) => format!(
            "`auto_respond` with action `{}`{}",
            respond.action.as_str(),
            if respond.require_approval {
                " (approval required)"
            } else {
                ""
            }
        ),
        RuleKind::Custom(custom) => format!("`custom` with action `{}`", custom.action),
    }
}

fn describe(action: &Action) -> String {
    match action {
        Action::BlockIp {
            scope: Scope::Fleet,
            ..
        } => "a fleet-scope `block_ip`".to_owned(),
        Action::BlockIp { .. } => "a host-scope `block_ip`".to_owned(),
        Action::ApprovalRequest { request } => {
            format!("an `approval_request` for `{}`", request.name())
        }
        other => format!("`{}`", other.name()),
    }
}

#[cfg(test)]
mod tests {
    use policy_engine::Policy;
    use serde_json::json;

    use super::*;

    fn rules() -> Vec<Rule> {
        let policy = Policy::from_value(&json!({"name": "checks", "rules": [
            {"type": "custom", "config": {"condition": "true", "action": "block_ip",
             "params": {"scope": "fleet", "duration": "1h"}}},
            {"type": "custom", "config": {"condition": "true", "action": "alert",
             "params": {"channels": ["ops"]}}},
            {"type": "custom", "config": {"condition": "true", "action": "tag_host",
             "params": {"tag": "suspect"}}},
            {"type": "auto_respond", "config": {"trigger": "x", "action": "block_ip",
             "minConfidence": 0.5, "requireApproval": true}},
            {"type": "auto_respond", "config": {"trigger": "x", "action": "isolate_host",
             "minConfidence": 0.5}, "enabled": false},
            {"type": "custom", "config": {"condition": "true", "action": "block_ip"}},
        ]}))
        .unwrap();
        policy.rules
    }

    fn action(value: serde_json::Value) -> Action {
        serde_json::from_value(value).unwrap()
    }

    /// What each kind of rule can and cannot produce, with the refusal's path and message.
    #[test]
    fn rules_produce_only_their_own_actions() {
        let rules = rules();
        let check = |index: usize, value: serde_json::Value, approved: bool| {
            can_produce(
                &rules[index],
                index,
                &action(value),
                approved,
                &Budgets::default(),
            )
            .map_err(|r| (r.path, r.message))
        };
        let block = |scope: &str, duration: &str| json!({"action": "block_ip", "ip": "203.0.113.7", "duration": duration, "scope": scope});
        assert_eq!(check(0, block("fleet", "1h"), false), Ok(()));
        assert_eq!(
            check(0, block("fleet", "2h"), false),
            Err(("duration".into(), "rule 0 blocks for `1h`, not `2h`".into()))
        );
        assert_eq!(
            check(5, block("fleet", "24h"), false),
            Err((
                "scope".into(),
                "rule 5 is `custom` with action `block_ip`, which cannot produce a fleet-scope \
                 `block_ip`"
                    .into()
            ))
        );
        assert_eq!(check(5, block("host", "24h"), false), Ok(()));
        let alert = |channels: serde_json::Value| json!({"action": "alert", "severity": "high", "count": 1, "channels": channels});
        assert_eq!(check(1, alert(json!(["ops"])), false), Ok(()));
        assert_eq!(
            check(1, alert(json!(["ops", "pager"])), false),
            Err((
                "channels[1]".into(),
                "channel `pager` is not one of rule 1's channels (`ops`)".into()
            ))
        );
        let tag = |params: serde_json::Value| json!({"action": "custom", "name": "tag_host", "params": params});
        assert_eq!(check(2, tag(json!({"tag": "suspect"})), false), Ok(()));
        assert_eq!(
            check(2, tag(json!({"tag": "x".repeat(1000)})), false),
            Err((
                "params".into(),
                "`params` differ from those of rule 2".into()
            ))
        );
        let request = json!({"action": "approval_request",
                             "request": block("host", "24h")});
        assert_eq!(check(3, request, false), Ok(()));
        let request = json!({"action": "approval_request", "request": block("fleet", "24h")});
        assert_eq!(
            check(3, request, false),
            Err((
                "request.scope".into(),
                "rule 3 (`auto_respond`) blocks with host scope only".into()
            ))
        );
        // The approved block itself, executed: only with an approval id.
        assert_eq!(check(3, block("host", "24h"), true), Ok(()));
        assert_eq!(
            check(3, json!({"action": "kill_process", "pid": 1}), true),
            Err((
                "action".into(),
                "rule 3 is `auto_respond` with action `block_ip` (approval required), which \
                 cannot produce `kill_process`"
                    .into()
            ))
        );
        assert_eq!(
            check(4, json!({"action": "isolate_host"}), false),
            Err(("rule".into(), "rule 4 is disabled".into()))
        );
    }

    /// Beyond a budget whose `onExceed` is `approval` (the default) the agent asks for any
    /// budgeted action its rule produces, and runs it once approved; with `drop` it never asks.
    #[test]
    fn budgets_let_a_rule_ask_for_approval_of_what_it_produces() {
        let rules = rules();
        let policy = |budgets: serde_json::Value| {
            Policy::from_value(&json!({"name": "b", "rules": [
                {"type": "custom", "config": {"condition": "true", "action": "tag_host"}}],
                "budgets": budgets}))
            .unwrap()
            .budgets
        };
        let ask = policy(json!({}));
        let drop = policy(json!({"onExceed": "drop"}));
        let check = |index: usize, value: serde_json::Value, approved: bool, budgets: &Budgets| {
            can_produce(&rules[index], index, &action(value), approved, budgets)
                .map_err(|r| (r.path, r.message))
        };
        let block = json!({"action": "block_ip", "ip": "203.0.113.7", "duration": "1h",
                           "scope": "fleet"});
        let request = json!({"action": "approval_request", "request": block});
        assert_eq!(check(0, request.clone(), false, &ask), Ok(()));
        assert_eq!(check(0, block.clone(), true, &ask), Ok(()));
        let refused = Err((
            "action".into(),
            "rule 0 is `custom` with action `block_ip`, which cannot produce an \
             `approval_request` for `block_ip`"
                .into(),
        ));
        assert_eq!(check(0, request, false, &drop), refused);
        // Only what the rule itself produces: rule 0 blocks for 1h, not 2h.
        let longer = json!({"action": "approval_request", "request": {"action": "block_ip",
            "ip": "203.0.113.7", "duration": "2h", "scope": "fleet"}});
        assert_eq!(
            check(0, longer, false, &ask),
            Err((
                "action".into(),
                "rule 0 is `custom` with action `block_ip`, which cannot produce an \
                 `approval_request` for `block_ip`"
                    .into()
            ))
        );
        // An alert has no budget.
        let alert = json!({"action": "approval_request", "request": {"action": "alert",
            "severity": "high", "count": 1, "channels": ["ops"]}});
        assert_eq!(
            check(1, alert, false, &ask),
            Err((
                "action".into(),
                "rule 1 is `custom` with action `alert`, which cannot produce an \
                 `approval_request` for `alert`"
                    .into()
            ))
        );
    }

    #[test]
    fn never_block_names_the_reason() {
        let never = NeverBlock {
            own: vec!["192.0.2.10".parse().unwrap()],
            ranges: vec!["10.0.0.0/8".parse().unwrap()],
        };
        let reason = |ip: &str| never.reason(ip.parse().unwrap());
        assert_eq!(
            reason("127.0.0.1").unwrap(),
            "`127.0.0.1` is a loopback address"
        );
        assert_eq!(
            reason("::ffff:127.0.0.2").unwrap(),
            "`127.0.0.2` is a loopback address"
        );
        assert_eq!(
            reason("0.0.0.0").unwrap(),
            "`0.0.0.0` is the unspecified address"
        );
        assert_eq!(reason("::").unwrap(), "`::` is the unspecified address");
        assert_eq!(reason("::1").unwrap(), "`::1` is a loopback address");
        assert_eq!(
            reason("255.255.255.255").unwrap(),
            "`255.255.255.255` is the broadcast address"
        );
        assert_eq!(
            reason("169.254.169.254").unwrap(),
            "`169.254.169.254` is a link-local address"
        );
        assert_eq!(
            reason("fe80::1").unwrap(),
            "`fe80::1` is a link-local address"
        );
        assert_eq!(
            reason("224.0.0.251").unwrap(),
            "`224.0.0.251` is a multicast address"
        );
        assert_eq!(
            reason("ff02::1").unwrap(),
            "`ff02::1` is a multicast address"
        );
        assert_eq!(
            reason("192.0.2.10").unwrap(),
            "`192.0.2.10` is an address of the policy server"
        );
        assert_eq!(
            reason("10.20.30.40").unwrap(),
            "`10.20.30.40` is in the server's never-block list (`10.0.0.0/8`)"
        );
        assert_eq!(reason("203.0.113.7"), None);
        assert_eq!(reason("2001:db8::7"), None);
    }
}
