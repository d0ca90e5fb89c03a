//! The plan view of `POST /api/policy?dryRun=true`: what publishing a document would do (the
//! validated policy, the version it would get, its difference to the active version rule by
//! rule and field by field, the agents it would reach), computed without changing anything.

use chrono::{DateTime, Utc};
use policy_engine::policy::wire::{PolicyDocument, RuleDocument};
use policy_engine::protocol::time;
use policy_engine::{Policy, PolicyVersion};
use serde::Serialize;
use serde_json::{Map, Value};

use super::policies::Checked;
use super::streams::EventHub;
use crate::error::ApiError;
use crate::store::{Store, StoreError};

/// The answer to `POST /api/policy?dryRun=true` (admin only; a server-side admin answer).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Always `true`: nothing was stored, pushed or audited.
    pub dry_run: bool,
    /// The org the version would belong to.
    pub org_id: String,
    /// The version it would get if posted now (another post may take it first).
    pub version: PolicyVersion,
    /// The validated document, normalized (defaults filled in), as it would be stored.
    pub policy: PolicyDocument,
    /// Key id of the signature, for a signed file.
    pub signed_by: Option<String>,
    /// The org's active version (its effective one: what an agent outside every rollout stage
    /// runs, see [`effective`](super::assignment::effective)), `null` when it has none (then
    /// every rule is added).
    pub active_version: Option<PolicyVersion>,
    /// The difference to the active version.
    pub diff: PolicyDiff,
    /// The agents of the org whose streams would receive it.
    pub would_reach: Reach,
}

/// How a new document differs from the active one. Rules are compared by position (their
/// index is what actions, overrides and reports refer to): a rule at an index only the new
/// document has is added, one only the active document has is removed, and one at the same
/// index with different content is changed, field by field.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDiff {
    /// Changes of `name` and `description`.
    pub document: Vec<FieldChange>,
    /// Rules at indices the active version does not have.
    pub added: Vec<IndexedRule>,
    /// Rules at indices the new version no longer has.
    pub removed: Vec<IndexedRule>,
    /// Rules at the same index whose content differs.
    pub changed: Vec<RuleChange>,
    /// How many rules are identical.
    pub unchanged: usize,
}

/// A whole rule and its index.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndexedRule {
    /// Its index.
    pub rule: usize,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The rule, normalized.
    pub definition: RuleDocument,
}

/// One rule whose content changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleChange {
    /// Its index.
    pub rule: usize,
    /// Its type in the new version.
    #[serde(rename = "type")]
    pub kind: String,
    /// Every field that differs.
    pub changes: Vec<FieldChange>,
}

/// One field that differs: its path inside the rule (`config.threshold`, `enabled`, `type`)
/// or the document (`name`), and both values (`null` where absent).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    /// Where.
    pub field: String,
    /// In the active version.
    pub from: Value,
    /// In the new version.
    pub to: Value,
}

/// The agents a version would reach.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reach {
    /// Enrolled agents of the org.
    pub total: usize,
    /// Those with an open event stream now (they would get it at once; the others on connect).
    pub online: usize,
    /// Each agent.
    pub agents: Vec<ReachedAgent>,
}

/// One agent a version would reach.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReachedAgent {
    /// The agent.
    pub agent_id: String,
    /// Its hostname.
    pub hostname: String,
    /// An event stream is open.
    pub online: bool,
    /// The version it last reported.
    pub policy_version: Option<PolicyVersion>,
    /// Its last heartbeat.
    #[serde(with = "time::millis_opt")]
    pub last_seen: Option<DateTime<Utc>>,
}

/// What publishing `checked` would do now; reads only. A signed file whose version is not the
/// org's next one is refused with the 409 the real post would answer.
pub async fn plan(store: &dyn Store, hub: &EventHub, checked: Checked) -> Result<Plan, ApiError> {
    // The post's own refusal: no plain version while a rollout runs or is paused.
    super::assignment::check_no_active(store, &checked.org).await?;
    let latest = store.latest_policy(checked.org.clone()).await?;
    let next = PolicyVersion::new(latest.as_ref().map_or(0, |p| p.version.number()) + 1);
    // The diff's base is what the org runs (its effective version), not its latest version,
    // which may be a rollout's that was rolled back or aborted.
    let active = super::assignment::effective_policy(store, &checked.org).await?;
    if let Some((signed, _)) = &checked.signed {
        if *signed != next {
            return Err(StoreError::VersionTaken {
                org_id: checked.org,
                signed: *signed,
                next,
            }
            .into());
        }
    }
    let diff = match &active {
        Some(active) => diff(&active.policy, &checked.policy),
        None => diff_from_nothing(&checked.policy),
    };
    let streaming = hub.online_agents(&checked.org);
    let agents: Vec<ReachedAgent> = store
        .agents(checked.org.clone())
        .await?
        .into_iter()
        .map(|agent| ReachedAgent {
            online: streaming.contains(&agent.id),
            agent_id: agent.id,
            hostname: agent.hostname,
            policy_version: agent.policy_version,
            last_seen: agent.last_seen,
        })
        .collect();
    Ok(Plan {
        dry_run: true,
        org_id: checked.org,
        version: next,
        policy: checked.policy.to_document(),
        signed_by: checked.signed.map(|(_, s)| s.key_id),
        active_version: active.map(|p| p.version),
        diff,
        would_reach: Reach {
            total: agents.len(),
            online: agents.iter().filter(|a| a.online).count(),
            agents,
        },
    })
}

/// The difference between two policies (see [`PolicyDiff`]).
pub fn diff(active: &Policy, new: &Policy) -> PolicyDiff {
    let (old, new) = (active.to_document(), new.to_document());
    let mut out = PolicyDiff::default();
    let old_doc = document_fields(&old);
    let new_doc = document_fields(&new);
    field_changes("", &old_doc, &new_doc, &mut out.document);
    let longest = old.rules.len().max(new.rules.len());
    for index in 0..longest {
        match (old.rules.get(index), new.rules.get(index)) {
            (Some(before), Some(after)) => {
                let mut changes = Vec::new();
                field_changes("", &rule_value(before), &rule_value(after), &mut changes);
                if changes.is_empty() {
                    out.unchanged += 1;
                } else {
                    out.changed.push(RuleChange {
                        rule: index,
                        kind: rule_type(after),
                        changes,
                    });
                }
            }
            (None, Some(after)) => out.added.push(indexed(index, after)),
            (Some(before), None) => out.removed.push(indexed(index, before)),
            (None, None) => {}
        }
    }
    out
}

fn diff_from_nothing(new: &Policy) -> PolicyDiff {
    PolicyDiff {
        added: new
            .to_document()
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| indexed(i, r))
            .collect(),
        ..PolicyDiff::default()
    }
}

fn indexed(rule: usize, definition: &RuleDocument) -> IndexedRule {
    IndexedRule {
        rule,
        kind: rule_type(definition),
        definition: definition.clone(),
    }
}

fn rule_value(rule: &RuleDocument) -> Value {
    serde_json::to_value(rule).unwrap_or(Value::Null)
}

fn rule_type(rule: &RuleDocument) -> String {
    rule_value(rule)
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn document_fields(document: &PolicyDocument) -> Value {
    let mut map = Map::new();
    map.insert("name".to_owned(), Value::String(document.name.clone()));
    if let Some(description) = &document.description {
        map.insert("description".to_owned(), Value::String(description.clone()));
    }
    // The action budgets are the document's too (a `kill_process` max of 0 turns every kill
    // into an approval request): each leaf that differs is a change (`budgets.fleet_block.max`).
    if let Some(budgets) = &document.budgets {
        map.insert(
            "budgets".to_owned(),
            serde_json::to_value(budgets).unwrap_or(Value::Null),
        );
    }
    Value::Object(map)
}

/// Appends a change for every leaf under `path` that differs between `old` and `new`: objects
/// are compared key by key (a key on one side only is a change from or to `null`), anything
/// else (strings, numbers, arrays) as a whole.
fn field_changes(path: &str, old: &Value, new: &Value, out: &mut Vec<FieldChange>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let null = Value::Null;
                field_changes(
                    &child,
                    a.get(key).unwrap_or(&null),
                    b.get(key).unwrap_or(&null),
                    out,
                );
            }
        }
        _ if old != new => out.push(FieldChange {
            field: path.to_owned(),
            from: old.clone(),
            to: new.clone(),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(value: Value) -> Policy {
        Policy::from_value(&value).unwrap()
    }

    #[test]
    fn rules_are_compared_by_index_and_field_by_field() {
        let active = policy(json!({"name": "p", "rules": [
            {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 50,
             "duration": "24h", "scope": "host"}},
            {"type": "alert_threshold", "config": {"severity": "critical", "countPerHour": 5,
             "notifyChannels": ["email"]}},
            {"type": "custom", "config": {"condition": "true", "action": "alert"}}
        ]}));
        let new = policy(json!({"name": "q", "description": "d", "rules": [
            {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 5,
             "duration": "24h", "scope": "fleet"}},
            {"type": "alert_threshold", "config": {"severity": "critical", "countPerHour": 5,
             "notifyChannels": ["email"]}}
        ]}));
        let diff = diff(&active, &new);
        assert_eq!(
            serde_json::to_value(&diff).unwrap(),
            json!({
                "document": [
                    {"field": "description", "from": null, "to": "d"},
                    {"field": "name", "from": "p", "to": "q"}
                ],
                "added": [],
                "removed": [{"rule": 2, "type": "custom", "definition":
                    {"type": "custom", "config": {"condition": "true", "action": "alert"},
                     "enabled": true}}],
                "changed": [{"rule": 0, "type": "block_ip", "changes": [
                    {"field": "config.scope", "from": "host", "to": "fleet"},
                    {"field": "config.threshold", "from": 50, "to": 5}
                ]}],
                "unchanged": 1
            })
        );
    }

    #[test]
    fn a_rule_whose_type_changes_lists_its_type_and_each_config_field() {
        let active = policy(json!({"name": "p", "rules": [
            {"type": "custom", "config": {"condition": "true", "action": "alert"}}]}));
        let new = policy(json!({"name": "p", "rules": [
            {"type": "auto_respond", "config": {"trigger": "malware", "action": "kill_process",
             "minConfidence": 0.9}, "enabled": false}]}));
        let changes = &diff(&active, &new).changed[0].changes;
        let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "config.action",
                "config.condition",
                "config.minConfidence",
                "config.requireApproval",
                "config.trigger",
                "enabled",
                "type"
            ]
        );
        assert_eq!(changes[0].to, json!("kill_process"));
    }
}
