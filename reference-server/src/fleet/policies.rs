//! Policies and overrides: publishing a new version to an org's streams, the active policy,
//! the org's versions (listed and one by one), checking a document without storing it, the
//! rules one agent runs, and setting an agent's overrides.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use policy_engine::policy::wire::RuleDocument;
use policy_engine::protocol::{AgentPolicyView, PolicyView, time};
use policy_engine::{Policy, PolicyVersion};
use serde::Serialize;
use serde_json::Value;

use super::audit;
use super::changes::Topic;
use super::notify::{self, NotifyConfig};
use super::overrides;
use super::streams::{Publisher, policy_frame};
use super::views::{applied_at, policy_view, resolved_rules};
use crate::auth::{Principal, random_hex};
use crate::clock;
use crate::error::ApiError;
use crate::store::{AgentRecord, NewEntry, PolicySummary, Store, StoredOverrides, StoredPolicy};

/// One page of `GET /api/policy/versions` (admin only): newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionPage {
    /// The versions of this page.
    pub versions: Vec<VersionSummary>,
    /// Pass as `cursor=` for the next (older) page; `null` on the last page.
    pub next_cursor: Option<u64>,
}

/// One version in the list: what it is called, its size and when it came.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionSummary {
    /// `pol_...`
    pub id: String,
    /// `v1`, `v2`, ...
    pub version: PolicyVersion,
    /// The policy's name.
    pub name: String,
    /// Its description, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Number of rules.
    pub rule_count: u64,
    /// Number of enabled rules.
    pub enabled_count: u64,
    /// When the version was created.
    #[serde(with = "time::millis")]
    pub created_at: DateTime<Utc>,
}

impl From<PolicySummary> for VersionSummary {
    fn from(summary: PolicySummary) -> Self {
        Self {
            id: summary.id,
            version: summary.version,
            name: summary.name,
            description: summary.description,
            rule_count: summary.rule_count,
            enabled_count: summary.enabled_count,
            created_at: summary.created_at,
        }
    }
}

/// The answer of `POST /api/policy/validate` (admin only) for a document that would be
/// accepted: the org it would go to and the document as it would be stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Validated {
    /// Always `true` (an invalid document is answered 422 with every error).
    pub valid: bool,
    /// The org the document would be published to.
    pub org_id: String,
    /// Its name.
    pub name: String,
    /// Its description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its rules, normalized as they would be stored (`enabled`, `requireApproval` filled in).
    pub rules: Vec<RuleDocument>,
}

/// Checks `policy` as [`publish`] would (channels, the org `principal` may write) and stores
/// nothing.
pub fn validate(
    channels: Option<&NotifyConfig>,
    principal: &Principal,
    org_query: Option<&str>,
    policy: &Policy,
) -> Result<Validated, ApiError> {
    let org_id = publishable(channels, principal, org_query, policy)?;
    let document = policy.to_document();
    Ok(Validated {
        valid: true,
        org_id,
        name: document.name,
        description: document.description,
        rules: document.rules,
    })
}

/// What publishing checks beyond the document itself: every `notifyChannels` entry names a
/// configured channel (when channels are configured), and `principal` may write the org (the
/// body's `org_id`, else `org_query`). Returns that org.
fn publishable(
    channels: Option<&NotifyConfig>,
    principal: &Principal,
    org_query: Option<&str>,
    policy: &Policy,
) -> Result<String, ApiError> {
    let unknown_channels = notify::check_policy(channels, policy);
    if !unknown_channels.is_empty() {
        return Err(ApiError::from_validation(unknown_channels));
    }
    principal.write_org(policy.org_id.as_deref().or(org_query))
}

/// The versions of `org` older than `before` (all when `None`), newest first, `limit` a page.
pub async fn versions(
    store: &dyn Store,
    org: String,
    before: Option<PolicyVersion>,
    limit: u32,
) -> Result<VersionPage, ApiError> {
    // One more than asked says whether an older page exists.
    let mut list = store
        .policy_versions(org, before, limit.saturating_add(1))
        .await?;
    let more = list.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    list.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = more
        .then(|| list.last().map(|last| last.version.number()))
        .flatten();
    Ok(VersionPage {
        versions: list.into_iter().map(VersionSummary::from).collect(),
        next_cursor,
    })
}

/// Version `version` of `org`; 404 when it has no such version.
pub async fn version(
    store: &dyn Store,
    org: String,
    version: PolicyVersion,
) -> Result<PolicyView<RuleDocument>, ApiError> {
    let stored = store
        .policy_version(org.clone(), version)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no policy `{version}` in org `{org}`")))?;
    Ok(policy_view(&stored, None))
}

/// Stores `policy` as the next version of its org (the body's `org_id`, else `org_query`, as
/// `principal` may write) and queues it to every stream of the org. Every `notifyChannels`
/// entry must name a configured channel (when channels are configured).
pub async fn publish(
    store: &dyn Store,
    publisher: &Publisher,
    channels: Option<&NotifyConfig>,
    principal: &Principal,
    org_query: Option<&str>,
    policy: Policy,
) -> Result<PolicyView<RuleDocument>, ApiError> {
    let org = publishable(channels, principal, org_query, &policy)?;
    let publishing = publisher.begin().await;
    let stored = store
        .insert_policy(
            org,
            Arc::new(policy),
            format!("pol_{}", random_hex(8)),
            clock::now(),
        )
        .await?;
    let delivery = publishing.broadcast(&stored);
    drop(publishing);
    publisher.changed(
        &stored.org_id,
        &[Topic::Policies, Topic::Agents, Topic::Audit],
    );
    audit::record(
        store,
        NewEntry {
            org_id: stored.org_id.clone(),
            actor: principal.actor(),
            policy_version: Some(stored.version),
            action: "policy_created".to_owned(),
            outcome: "stored".to_owned(),
            detail: Some(serde_json::json!({
                "policyId": stored.id,
                "name": stored.policy.name,
                "broadcastedTo": delivery.queued,
            })),
            ..NewEntry::default()
        },
    )
    .await;
    tracing::info!(
        org = %stored.org_id,
        version = %stored.version,
        broadcasted_to = delivery.queued,
        dropped = delivery.dropped,
        "broadcast policy"
    );
    Ok(policy_view(&stored, Some(delivery.queued)))
}

/// The latest version of `org`; 404 when it has none.
pub async fn latest(store: &dyn Store, org: &str) -> Result<StoredPolicy, ApiError> {
    store
        .latest_policy(org.to_owned())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no policy in org `{org}`")))
}

/// The active policy of `org`.
pub async fn active(store: &dyn Store, org: &str) -> Result<PolicyView<RuleDocument>, ApiError> {
    Ok(policy_view(&latest(store, org).await?, None))
}

/// The rules `agent` runs: its org's latest version with its overrides applied.
pub async fn for_agent(
    store: &dyn Store,
    agent: AgentRecord,
) -> Result<AgentPolicyView<RuleDocument>, ApiError> {
    let policy = latest(store, &agent.org_id).await?;
    let stored = store.overrides(agent.id.clone()).await?;
    let list = overrides::stored_list(stored.as_ref());
    Ok(AgentPolicyView {
        rules: resolved_rules(&policy, &agent.id, &list),
        applied_at: applied_at(&policy, stored.as_ref()),
        agent_id: agent.id,
        policy_version: policy.version,
        overrides: None,
        broadcasted_to: None,
    })
}

/// Replaces `agent`'s overrides with `body` (validated against its org's latest version, errors
/// at paths inside `body`) and pushes its newly resolved policy to its streams.
pub async fn set_overrides(
    store: &dyn Store,
    publisher: &Publisher,
    channels: Option<&NotifyConfig>,
    principal: &Principal,
    agent: AgentRecord,
    body: &Value,
) -> Result<AgentPolicyView<RuleDocument>, ApiError> {
    let publishing = publisher.begin().await;
    let policy = store
        .latest_policy(agent.org_id.clone())
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no policy in org `{}`; overrides refer to the rules of its active policy",
                agent.org_id
            ))
        })?;
    let list = overrides::parse(body, policy.policy.rules.len())?;
    let resolved = overrides::apply(&policy.policy.to_json_value(), &list)?;
    overrides::check_channels(channels, &resolved, &list)?;
    let rules = resolved.to_document().rules;
    let stored = StoredOverrides {
        list: overrides::to_value(&list),
        updated_at: clock::now(),
    };
    store
        .set_overrides(agent.id.clone(), stored.clone())
        .await?;
    let frame = policy_frame(&policy, &agent.id, &list);
    let delivery = publishing.update_agent(&agent.org_id, &agent.id, Arc::new(list), frame);
    drop(publishing);
    publisher.changed(&agent.org_id, &[Topic::Agents, Topic::Audit]);
    audit::record(
        store,
        NewEntry {
            org_id: agent.org_id.clone(),
            agent_id: Some(agent.id.clone()),
            actor: principal.actor(),
            policy_version: Some(policy.version),
            action: "overrides_set".to_owned(),
            outcome: "stored".to_owned(),
            detail: Some(serde_json::json!({ "overrides": stored.list })),
            ..NewEntry::default()
        },
    )
    .await;
    tracing::info!(
        agent = %agent.id,
        version = %policy.version,
        broadcasted_to = delivery.queued,
        "broadcast overrides"
    );
    Ok(AgentPolicyView {
        agent_id: agent.id,
        policy_version: policy.version,
        rules,
        applied_at: applied_at(&policy, Some(&stored)),
        overrides: Some(stored.list),
        broadcasted_to: Some(delivery.queued),
    })
}
