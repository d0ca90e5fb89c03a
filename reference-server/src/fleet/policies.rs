//! Policies and overrides: publishing a new version to an org's streams, the active policy,
//! the rules one agent runs, and setting an agent's overrides.

use std::sync::Arc;

use policy_engine::Policy;
use policy_engine::policy::wire::RuleDocument;
use policy_engine::protocol::{AgentPolicyView, PolicyView};
use serde_json::Value;

use super::audit;
use super::notify::{self, NotifyConfig};
use super::overrides;
use super::streams::{Publisher, policy_frame, sent};
use super::views::{applied_at, policy_view, resolved_rules};
use crate::auth::{Principal, random_hex};
use crate::clock;
use crate::error::ApiError;
use crate::store::{AgentRecord, NewEntry, Store, StoredOverrides, StoredPolicy};

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
    let unknown_channels = notify::check_policy(channels, &policy);
    if !unknown_channels.is_empty() {
        return Err(ApiError::from_validation(unknown_channels));
    }
    let org = principal.write_org(policy.org_id.as_deref().or(org_query))?;
    let publishing = publisher.begin().await;
    let stored = store
        .insert_policy(
            org,
            Arc::new(policy),
            format!("pol_{}", random_hex(8)),
            clock::now(),
        )
        .await?;
    let delivery = publishing.broadcast(store, &stored).await;
    drop(publishing);
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
        org = stored.org_id.as_str(),
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
    store
        .record_sent(vec![sent(
            agent.id.clone(),
            &policy,
            &list,
            clock::now_ms(),
        )])
        .await?;
    let delivery = publishing.update_agent(&agent.org_id, &agent.id, Arc::new(list), frame);
    drop(publishing);
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
        agent = agent.id.as_str(),
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
