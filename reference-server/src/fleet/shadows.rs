//! Shadow runs: a policy document every agent of an org evaluates beside its enforced version
//! on the same events, executing nothing (`POST /api/policy?shadow=true` starts one,
//! `DELETE /api/policy/shadow` ends it); the check of the shadow reports agents send in their
//! heartbeats; and the difference against the enforced version (`GET /api/policy/shadow`):
//! per rule, the actions that would be added or removed, the top targets, by agent.
//!
//! A shadow run is numbered in its org (its own sequence, not a policy version) and does not
//! need a signature, even in an org that requires signed versions: nothing it emits is
//! executed. Rules are compared by index, as the plan view compares them.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use policy_engine::protocol::{RuleTally, ShadowReport, time};
use policy_engine::{Policy, PolicyVersion, ResponseAction, Rule, RuleKind, ValidationError};
use serde::Serialize;

use super::audit;
use super::changes::Topic;
use super::notify::{self, NotifyConfig};
use super::policies::Publication;
use super::streams::Publisher;
use super::views::shadow_policy;
use crate::auth::{Principal, named_org};
use crate::clock;
use crate::error::ApiError;
use crate::store::{NewEntry, ShadowRun, Store, StoredShadowReport};

/// Most entries of a rule's `topTargets`.
pub const TOP_TARGETS: usize = 10;

/// A shadow run as answered by the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowRunView {
    /// Its number in the org.
    pub shadow: u64,
    /// Its org.
    pub org_id: String,
    /// The policy name.
    pub name: String,
    /// How many rules it has.
    pub rules: usize,
    /// Who started it.
    pub started_by: String,
    /// When it started.
    #[serde(with = "time::millis")]
    pub started_at: DateTime<Utc>,
    /// When it was ended (absent while it runs).
    #[serde(with = "time::millis_opt", skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Streams the start or end was queued to (in the answer of that operation only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_to: Option<usize>,
}

/// `GET /api/policy/shadow`: what the org's shadow run and its rules in shadow mode would do,
/// against what its enforced version does, over the latest reports of its agents.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowDiff {
    /// The org.
    pub org_id: String,
    /// The org's latest shadow run (running or ended), if any.
    pub run: Option<ShadowRunView>,
    /// The org's active version (its effective one: what an agent outside every rollout stage
    /// runs): only reports about it are counted.
    pub enforced_version: Option<PolicyVersion>,
    /// Agents of the org, and those whose report is counted.
    pub agents: AgentCounts,
    /// The shadow run against the enforced version, by rule index: rules where either side
    /// acted.
    pub rules: Vec<RuleDiff>,
    /// Rules in shadow mode inside the enforced version: their would-be actions.
    pub shadow_rules: Vec<ShadowRuleView>,
}

/// Agent counts of a [`ShadowDiff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentCounts {
    /// Agents of the org.
    pub total: usize,
    /// Agents whose latest report is about the enforced version (and the shadow run, if one).
    pub reporting: usize,
}

/// One rule index of the shadow run against the enforced version.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleDiff {
    /// Rule index.
    pub rule: usize,
    /// The shadow run's rule type at that index (`null`: it has fewer rules).
    #[serde(rename = "type")]
    pub rule_type: Option<&'static str>,
    /// The enforced version's rule type at that index.
    pub enforced_type: Option<&'static str>,
    /// Would-be actions of the shadow run's rule (if it is in enforce mode), by action name.
    pub shadow: BTreeMap<String, u64>,
    /// Actions of the enforced rule (if it is in enforce mode), by action name.
    pub enforced: BTreeMap<String, u64>,
    /// Actions the shadow run would add (`shadow - enforced` where positive).
    pub added: BTreeMap<String, u64>,
    /// Actions it would remove (`enforced - shadow` where positive).
    pub removed: BTreeMap<String, u64>,
    /// The shadow run's most frequent targets among the reported samples.
    pub top_targets: Vec<TargetCount>,
    /// Per agent, actions of each side.
    pub by_agent: Vec<AgentDiff>,
}

/// A rule in shadow mode inside the enforced version.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowRuleView {
    /// Rule index.
    pub rule: usize,
    /// Rule type.
    #[serde(rename = "type")]
    pub rule_type: &'static str,
    /// Would-be actions, by action name (all of them would be added by enforcing it).
    pub would_be: BTreeMap<String, u64>,
    /// Most frequent targets among the reported samples.
    pub top_targets: Vec<TargetCount>,
    /// Per agent, would-be actions.
    pub by_agent: Vec<AgentCount>,
}

/// How often a target appears in the reported samples.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetCount {
    /// The action name.
    pub action: String,
    /// What it acts on.
    pub target: String,
    /// Samples naming it, over all agents.
    pub count: u64,
}

/// One agent's actions of both sides for one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentDiff {
    /// The agent.
    pub agent_id: String,
    /// Would-be actions of the shadow run's rule.
    pub shadow: u64,
    /// Actions of the enforced rule.
    pub enforced: u64,
}

/// One agent's would-be actions for one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentCount {
    /// The agent.
    pub agent_id: String,
    /// Would-be actions.
    pub would_be: u64,
}

/// Starts the next shadow run of the publication's org with its document (a signed file's
/// document is run as is; no signature is required) and queues it to every stream of the org.
pub async fn start(
    store: &dyn Store,
    publisher: &Publisher,
    channels: Option<&NotifyConfig>,
    principal: &Principal,
    org_query: Option<&str>,
    publication: Publication,
) -> Result<ShadowRunView, ApiError> {
    let (policy, org) = match publication {
        Publication::Unsigned(policy) => {
            let org = principal.write_org(named_org(policy.org_id.as_deref(), org_query)?)?;
            (policy, org)
        }
        Publication::Signed { policy, org_id, .. } => {
            let org = principal.write_org(Some(&org_id))?;
            (policy, org)
        }
    };
    let unknown_channels = notify::check_policy(channels, &policy);
    if !unknown_channels.is_empty() {
        return Err(ApiError::from_validation(unknown_channels));
    }
    let mut document = policy.to_json_value();
    if let Some(map) = document.as_object_mut() {
        map.remove("org_id");
    }
    // The next number is decided under the replica's decision lock (see `Publisher::rollout_lock`).
    let decisions = publisher.rollout_lock().await;
    let previous = store.shadow_run(org.clone()).await?;
    let run = ShadowRun {
        org_id: org.clone(),
        shadow: previous.map_or(1, |p| p.shadow + 1),
        document,
        started_by: principal.actor(),
        started_ms: clock::now_ms(),
        ended_ms: None,
    };
    let stored = store
        .put_shadow_run(
            run.clone(),
            entry(&run, principal, "shadow_started", &policy),
        )
        .await?;
    drop(decisions);
    let delivery = publisher.push(store, &org, stored.seq).await;
    publisher.changed(&org, &[Topic::Policies, Topic::Audit]);
    tracing::info!(
        org = org.as_str(),
        shadow = run.shadow,
        sent_to = delivery.queued,
        "shadow run started"
    );
    Ok(view(&run, &policy, Some(delivery.queued)))
}

/// Ends the org's running shadow run and queues its end to every stream; 404 when none runs.
pub async fn end(
    store: &dyn Store,
    publisher: &Publisher,
    principal: &Principal,
    org: String,
) -> Result<ShadowRunView, ApiError> {
    principal.require_admin()?;
    let decisions = publisher.rollout_lock().await;
    let mut run = store
        .shadow_run(org.clone())
        .await?
        .filter(|r| r.ended_ms.is_none())
        .ok_or_else(|| ApiError::not_found(format!("no shadow run in org `{org}`")))?;
    run.ended_ms = Some(clock::now_ms().max(run.started_ms));
    let policy = shadow_policy(&run);
    let stored = store
        .put_shadow_run(run.clone(), entry(&run, principal, "shadow_ended", &policy))
        .await?;
    drop(decisions);
    let delivery = publisher.push(store, &org, stored.seq).await;
    publisher.changed(&org, &[Topic::Policies, Topic::Audit]);
    Ok(view(&run, &policy, Some(delivery.queued)))
}

/// Checks a shadow report of `agent_id` against what the server sent it: the enforced version
/// was sent to this agent, the shadow run is the org's (a report about an earlier run, which
/// crossed the newer run's start, keeps only its enforced side), every rule index exists in
/// its version, every action name is one its rule can produce, every sample names a counted
/// action. A refusal is a 422 at the field's path under `shadow`.
pub async fn check_report(
    store: &dyn Store,
    org: &str,
    agent_id: &str,
    mut report: ShadowReport,
) -> Result<StoredShadowReport, ApiError> {
    let version = report.enforced.version;
    let sent = store
        .sent_overrides(org.to_owned(), agent_id.to_owned(), version.number())
        .await?;
    // Every error of the report in one answer: the enforced side's and the candidate's.
    let mut errors = Vec::new();
    let received_ms = clock::now_ms();
    check_time(
        report.since,
        received_ms,
        || "shadow.since".to_owned(),
        &mut errors,
    );
    match store.policy(org.to_owned(), version).await? {
        Some(policy) if !sent.is_empty() => check_tallies(
            &policy.policy,
            &report.enforced.rules,
            "shadow.enforced",
            received_ms,
            &mut errors,
        ),
        _ => errors.push(ValidationError::new(
            "shadow.enforced.version",
            format!("policy version `{version}` was not sent to this agent"),
        )),
    }
    if let Some(candidate) = &report.candidate {
        let run = store.shadow_run(org.to_owned()).await?;
        match run {
            Some(run) if candidate.shadow == run.shadow => {
                check_tallies(
                    &shadow_policy(&run),
                    &candidate.rules,
                    "shadow.candidate",
                    received_ms,
                    &mut errors,
                );
            }
            Some(run) if candidate.shadow >= 1 && candidate.shadow < run.shadow => {
                report.candidate = None;
            }
            _ => errors.push(ValidationError::new(
                "shadow.candidate.shadow",
                format!("shadow run {} was not sent to this agent", candidate.shadow),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::from_validation(errors));
    }
    Ok(StoredShadowReport {
        received_ms,
        report,
    })
}

/// The difference of the org's shadow run (and of its rules in shadow mode) against its
/// enforced version, over the latest report of each agent about the active version.
pub async fn diff(store: &dyn Store, org: String) -> Result<ShadowDiff, ApiError> {
    let agents = store.agents(org.clone()).await?;
    let active = super::assignment::effective_policy(store, &org).await?;
    let run = store.shadow_run(org.clone()).await?;
    let candidate = run.as_ref().map(shadow_policy);
    let enforced_version = active.as_ref().map(|p| p.version);
    let reports: Vec<(&str, &ShadowReport)> = agents
        .iter()
        .filter_map(|a| Some((a.id.as_str(), &a.shadow.as_ref()?.report)))
        .filter(|(_, r)| Some(r.enforced.version) == enforced_version)
        .filter(|(_, r)| match &run {
            Some(run) => r.candidate.as_ref().is_some_and(|c| c.shadow == run.shadow),
            None => true,
        })
        .collect();
    let enforced_policy = active.as_ref().map(|p| p.policy.as_ref());
    let rules = match (&run, &candidate) {
        (Some(_), Some(candidate)) => rule_diffs(candidate, enforced_policy, &reports),
        _ => Vec::new(),
    };
    let shadow_rules = enforced_policy
        .map(|policy| shadow_rule_views(policy, &reports))
        .unwrap_or_default();
    Ok(ShadowDiff {
        org_id: org,
        run: run
            .as_ref()
            .zip(candidate.as_ref())
            .map(|(run, policy)| view(run, policy, None)),
        enforced_version,
        agents: AgentCounts {
            total: agents.len(),
            reporting: reports.len(),
        },
        rules,
        shadow_rules,
    })
}

fn rule_diffs(
    candidate: &Policy,
    enforced: Option<&Policy>,
    reports: &[(&str, &ShadowReport)],
) -> Vec<RuleDiff> {
    let enforcing = |policy: Option<&Policy>, index: usize| {
        policy
            .and_then(|p| p.rules.get(index))
            .is_some_and(|r| r.mode.is_enforce())
    };
    let mut by_rule: BTreeMap<usize, RuleDiff> = BTreeMap::new();
    let mut targets: HashMap<usize, HashMap<(String, String), u64>> = HashMap::new();
    for (agent_id, report) in reports {
        let shadow_side = report.candidate.as_ref().map_or(&[][..], |c| &c.rules[..]);
        let sides = [(true, shadow_side), (false, &report.enforced.rules[..])];
        for (is_shadow, tallies) in sides {
            for tally in tallies {
                let counted = if is_shadow {
                    enforcing(Some(candidate), tally.rule)
                } else {
                    enforcing(enforced, tally.rule)
                };
                if !counted {
                    continue;
                }
                let diff = by_rule.entry(tally.rule).or_insert_with(|| RuleDiff {
                    rule: tally.rule,
                    rule_type: candidate.rules.get(tally.rule).map(|r| r.kind.type_name()),
                    enforced_type: enforced
                        .and_then(|p| p.rules.get(tally.rule))
                        .map(|r| r.kind.type_name()),
                    shadow: BTreeMap::new(),
                    enforced: BTreeMap::new(),
                    added: BTreeMap::new(),
                    removed: BTreeMap::new(),
                    top_targets: Vec::new(),
                    by_agent: Vec::new(),
                });
                let side = if is_shadow {
                    &mut diff.shadow
                } else {
                    &mut diff.enforced
                };
                add_counts(side, tally);
                let total: u64 = tally.actions.values().sum();
                match diff.by_agent.iter_mut().find(|a| a.agent_id == *agent_id) {
                    Some(agent) if is_shadow => agent.shadow += total,
                    Some(agent) => agent.enforced += total,
                    None => diff.by_agent.push(AgentDiff {
                        agent_id: (*agent_id).to_owned(),
                        shadow: if is_shadow { total } else { 0 },
                        enforced: if is_shadow { 0 } else { total },
                    }),
                }
                if is_shadow {
                    count_samples(targets.entry(tally.rule).or_default(), tally);
                }
            }
        }
    }
    by_rule
        .into_values()
        .map(|mut diff| {
            for (name, &shadow) in &diff.shadow {
                let enforced = diff.enforced.get(name).copied().unwrap_or(0);
                if shadow > enforced {
                    diff.added.insert(name.clone(), shadow - enforced);
                }
            }
            for (name, &enforced) in &diff.enforced {
                let shadow = diff.shadow.get(name).copied().unwrap_or(0);
                if enforced > shadow {
                    diff.removed.insert(name.clone(), enforced - shadow);
                }
            }
            diff.top_targets = top(targets.remove(&diff.rule).unwrap_or_default());
            diff
        })
        .collect()
}

fn shadow_rule_views(policy: &Policy, reports: &[(&str, &ShadowReport)]) -> Vec<ShadowRuleView> {
    let mut views = Vec::new();
    for (index, rule) in policy.rules.iter().enumerate() {
        if rule.mode.is_enforce() {
            continue;
        }
        let mut view = ShadowRuleView {
            rule: index,
            rule_type: rule.kind.type_name(),
            would_be: BTreeMap::new(),
            top_targets: Vec::new(),
            by_agent: Vec::new(),
        };
        let mut targets = HashMap::new();
        for (agent_id, report) in reports {
            let Some(tally) = report.enforced.rules.iter().find(|t| t.rule == index) else {
                continue;
            };
            add_counts(&mut view.would_be, tally);
            view.by_agent.push(AgentCount {
                agent_id: (*agent_id).to_owned(),
                would_be: tally.actions.values().sum(),
            });
            count_samples(&mut targets, tally);
        }
        view.top_targets = top(targets);
        views.push(view);
    }
    views
}

fn add_counts(into: &mut BTreeMap<String, u64>, tally: &RuleTally) {
    for (name, count) in &tally.actions {
        let total = into.entry(name.clone()).or_default();
        *total = total.saturating_add(*count);
    }
}

fn count_samples(into: &mut HashMap<(String, String), u64>, tally: &RuleTally) {
    for sample in &tally.samples {
        *into
            .entry((sample.action.clone(), sample.target.clone()))
            .or_default() += 1;
    }
}

/// The [`TOP_TARGETS`] most frequent, ties by action and target.
fn top(targets: HashMap<(String, String), u64>) -> Vec<TargetCount> {
    let mut all: Vec<TargetCount> = targets
        .into_iter()
        .map(|((action, target), count)| TargetCount {
            action,
            target,
            count,
        })
        .collect();
    all.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.action.cmp(&b.action))
            .then_with(|| a.target.cmp(&b.target))
    });
    all.truncate(TOP_TARGETS);
    all
}

/// How far an agent's clock may run ahead of the server's in a shadow report (its `since`,
/// its samples' `at`): NTP keeps clocks within a second; more than this is a broken clock or a
/// made-up report, whose figures the difference would show as recent.
const MAX_CLOCK_AHEAD: Duration = Duration::from_secs(5 * 60);

/// A time of the agent's clock at most [`MAX_CLOCK_AHEAD`] after the server's `now_ms`; the
/// error's `path` is built only for a refusal (a report has up to 200 samples).
fn check_time(
    at: DateTime<Utc>,
    now_ms: i64,
    path: impl FnOnce() -> String,
    errors: &mut Vec<ValidationError>,
) {
    if at.timestamp_millis() > now_ms.saturating_add(clock::millis(MAX_CLOCK_AHEAD)) {
        let wire = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
        errors.push(ValidationError::new(
            path(),
            format!(
                "`{}` is in the future: more than {} minutes ahead of the server's clock ({})",
                wire(at),
                MAX_CLOCK_AHEAD.as_secs() / 60,
                wire(clock::from_ms(now_ms)),
            ),
        ));
    }
}

/// Rule indices exist, action names are their rule's, samples name counted actions and are
/// not in the future (past `now_ms`, see [`check_time`]).
fn check_tallies(
    policy: &Policy,
    tallies: &[RuleTally],
    path: &str,
    now_ms: i64,
    errors: &mut Vec<ValidationError>,
) {
    for (i, tally) in tallies.iter().enumerate() {
        let at = format!("{path}.rules[{i}]");
        let Some(rule) = policy.rules.get(tally.rule) else {
            errors.push(ValidationError::new(
                format!("{at}.rule"),
                format!(
                    "the version has no rule {} (it has {} rules)",
                    tally.rule,
                    policy.rules.len()
                ),
            ));
            continue;
        };
        for name in tally.actions.keys() {
            if !produces(rule, name) {
                errors.push(ValidationError::new(
                    format!("{at}.actions.{name}"),
                    format!(
                        "rule {} is `{}`, which cannot produce `{name}`",
                        tally.rule,
                        rule.kind.type_name()
                    ),
                ));
            }
        }
        for (j, sample) in tally.samples.iter().enumerate() {
            check_time(
                sample.at,
                now_ms,
                || format!("{at}.samples[{j}].at"),
                errors,
            );
            if !tally.actions.contains_key(&sample.action) {
                errors.push(ValidationError::new(
                    format!("{at}.samples[{j}].action"),
                    format!(
                        "`{}` is not among the rule's counted actions",
                        sample.action
                    ),
                ));
            }
        }
    }
}

/// Whether `rule` can emit an action named `name` (approval requests from `auto_respond`
/// rules, whose approval an override may switch).
fn produces(rule: &Rule, name: &str) -> bool {
    match &rule.kind {
        RuleKind::BlockIp(_) => name == "block_ip",
        RuleKind::AlertThreshold(_) => name == "alert",
        RuleKind::AutoRespond(respond) => {
            name == respond.action.as_str() || name == "approval_request"
        }
        RuleKind::Custom(custom) => {
            let builtin =
                custom.action.parse::<ResponseAction>().is_ok() || custom.action == "alert";
            if builtin {
                name == custom.action
            } else {
                name == "custom"
            }
        }
    }
}

fn view(run: &ShadowRun, policy: &Policy, sent_to: Option<usize>) -> ShadowRunView {
    ShadowRunView {
        shadow: run.shadow,
        org_id: run.org_id.clone(),
        name: policy.name.clone(),
        rules: policy.rules.len(),
        started_by: run.started_by.clone(),
        started_at: clock::from_ms(run.started_ms),
        ended_at: run.ended_ms.map(clock::from_ms),
        sent_to,
    }
}

fn entry(run: &ShadowRun, principal: &Principal, action: &str, policy: &Policy) -> NewEntry {
    NewEntry {
        org_id: run.org_id.clone(),
        actor: principal.actor(),
        action: action.to_owned(),
        outcome: "stored".to_owned(),
        detail: Some(serde_json::json!({
            "shadow": run.shadow,
            "name": policy.name,
            "rules": policy.rules.len(),
        })),
        ..NewEntry::default()
    }
}

/// Writes the audit entry of a refused shadow report (best effort, as every refusal).
pub async fn audit_refusal(store: &dyn Store, org: &str, agent_id: &str, error: &ApiError) {
    audit::record(
        store,
        NewEntry {
            org_id: org.to_owned(),
            agent_id: Some(agent_id.to_owned()),
            actor: agent_id.to_owned(),
            action: "shadow_report".to_owned(),
            outcome: "refused".to_owned(),
            detail: Some(serde_json::json!({ "error": error.to_string() })),
            ..NewEntry::default()
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_engine::protocol::{ActionSample, CandidateTally, EnforcedTally};
    use serde_json::json;

    fn policy(rules: serde_json::Value) -> Policy {
        Policy::from_value(&json!({"name": "p", "rules": rules})).unwrap()
    }

    fn tally(rule: usize, name: &str, n: u64, targets: &[&str]) -> RuleTally {
        RuleTally {
            rule,
            actions: [(name.to_owned(), n)].into(),
            samples: targets
                .iter()
                .map(|t| ActionSample {
                    action: name.to_owned(),
                    target: (*t).to_owned(),
                    at: clock::from_ms(0),
                })
                .collect(),
        }
    }

    #[test]
    fn rules_produce_only_their_own_action_names() {
        let rules = policy(json!([
            {"type": "block_ip", "config": {"trigger": "bf", "threshold": 3, "duration": "1h", "scope": "host"}},
            {"type": "auto_respond", "config": {"trigger": "m", "action": "kill_process", "minConfidence": 0.5}},
            {"type": "custom", "config": {"condition": "type == \"x\"", "action": "quarantine_file"}},
            {"type": "custom", "config": {"condition": "type == \"x\"", "action": "notify_soc"}},
            {"type": "alert_threshold", "config": {"severity": "high", "countPerHour": 1, "notifyChannels": ["ops"]}}
        ]))
        .rules;
        let can = |i: usize, name: &str| produces(&rules[i], name);
        assert!(can(0, "block_ip") && !can(0, "alert"));
        assert!(can(1, "kill_process") && can(1, "approval_request") && !can(1, "block_ip"));
        assert!(can(2, "quarantine_file") && !can(2, "custom"));
        assert!(can(3, "custom") && !can(3, "notify_soc"));
        assert!(can(4, "alert") && !can(4, "kill_process"));
    }

    /// Rule 1 of the enforced version is in shadow mode: not counted as executed; rule 1 of
    /// the run is enforced: all of it would be added.
    #[test]
    fn the_difference_counts_what_each_side_would_execute() {
        let enforced = policy(json!([
            {"type": "block_ip", "config": {"trigger": "bf", "threshold": 5, "duration": "1h", "scope": "host"}},
            {"type": "auto_respond", "mode": "shadow", "config": {"trigger": "m", "action": "kill_process", "minConfidence": 0.5}}
        ]));
        let candidate = policy(json!([
            {"type": "block_ip", "config": {"trigger": "bf", "threshold": 3, "duration": "1h", "scope": "host"}},
            {"type": "auto_respond", "config": {"trigger": "m", "action": "kill_process", "minConfidence": 0.5}}
        ]));
        let report = |shadow_blocks, enforced_blocks, targets: &[&str]| ShadowReport {
            since: clock::from_ms(0),
            enforced: EnforcedTally {
                version: PolicyVersion::new(1),
                rules: vec![
                    tally(0, "block_ip", enforced_blocks, &[]),
                    tally(1, "kill_process", 2, &["42"]),
                ],
            },
            candidate: Some(CandidateTally {
                shadow: 1,
                rules: vec![
                    tally(0, "block_ip", shadow_blocks, targets),
                    tally(1, "kill_process", 2, &["42"]),
                ],
            }),
        };
        let a = report(4, 1, &["203.0.113.7", "203.0.113.8"]);
        let b = report(1, 3, &["203.0.113.7"]);
        let diffs = rule_diffs(
            &candidate,
            Some(&enforced),
            &[("agent-a", &a), ("agent-b", &b)],
        );
        let json = serde_json::to_value(&diffs).unwrap();
        assert_eq!(
            json,
            json!([
                {"rule": 0, "type": "block_ip", "enforcedType": "block_ip",
                 "shadow": {"block_ip": 5}, "enforced": {"block_ip": 4},
                 "added": {"block_ip": 1}, "removed": {},
                 "topTargets": [{"action": "block_ip", "target": "203.0.113.7", "count": 2},
                                {"action": "block_ip", "target": "203.0.113.8", "count": 1}],
                 "byAgent": [{"agentId": "agent-a", "shadow": 4, "enforced": 1},
                             {"agentId": "agent-b", "shadow": 1, "enforced": 3}]},
                {"rule": 1, "type": "auto_respond", "enforcedType": "auto_respond",
                 "shadow": {"kill_process": 4}, "enforced": {},
                 "added": {"kill_process": 4}, "removed": {},
                 "topTargets": [{"action": "kill_process", "target": "42", "count": 2}],
                 "byAgent": [{"agentId": "agent-a", "shadow": 2, "enforced": 0},
                             {"agentId": "agent-b", "shadow": 2, "enforced": 0}]}
            ])
        );
        let views = shadow_rule_views(&enforced, &[("agent-a", &a)]);
        assert_eq!(
            serde_json::to_value(&views).unwrap(),
            json!([{"rule": 1, "type": "auto_respond", "wouldBe": {"kill_process": 2},
                    "topTargets": [{"action": "kill_process", "target": "42", "count": 1}],
                    "byAgent": [{"agentId": "agent-a", "wouldBe": 2}]}])
        );
    }
}
