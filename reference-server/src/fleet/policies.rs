//! Policies and overrides: publishing a new version to an org's streams, the active policy,
//! the org's versions (listed and one by one), checking a document without storing it, the
//! rules one agent runs, and setting an agent's overrides.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use policy_engine::policy::wire::RuleDocument;
use policy_engine::protocol::{AgentPolicyView, AgentRunning, PolicySignature, PolicyView, time};
use policy_engine::{Policy, PolicyVersion};
use serde::Serialize;
use serde_json::Value;

use super::audit;
use super::changes::Topic;
use super::notify::{self, NotifyConfig};
use super::overrides;
use super::streams::Publisher;
use super::views::{applied_at, policy_view, resolved_rules};
use crate::auth::{Principal, named_org, random_hex};
use crate::clock;
use crate::error::ApiError;
use crate::store::{AgentRecord, NewEntry, NewPolicy, PolicySummary, Store, StoredOverrides};

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
    /// The id of the operator key that signed it; absent for an unsigned version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
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
            key_id: summary.key_id,
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
    /// The version a signed file was signed for (a post stores it as exactly that version).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<PolicyVersion>,
}

/// The answer for a publication that passed [`check`] (the checks of [`publish`], storing
/// nothing): a policy document, or a signed file (whose version and signature [`publish`]
/// stores as they are).
pub fn validated(checked: Checked) -> Validated {
    let document = checked.policy.to_document();
    Validated {
        valid: true,
        org_id: checked.org,
        name: document.name,
        description: document.description,
        rules: document.rules,
        version: checked.signed.as_ref().map(|(version, _)| *version),
    }
}

/// The refusal of an unsigned policy for an org that takes only signed ones.
fn signature_required(org: &str) -> ApiError {
    ApiError::invalid(
        "signature",
        format!(
            "org `{org}` accepts only signed policies: sign the document offline (`policy-sign sign --org {org} --version vN`) and post the signed file"
        ),
    )
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
        .policy(org.clone(), version)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no policy `{version}` in org `{org}`")))?;
    Ok(policy_view(&stored, None))
}

/// Orgs whose policies must be signed by an operator key (`--require-signatures ORG`, `*` for
/// every org). The server holds no keys: it refuses unsigned posts for these orgs and lets
/// overrides only disable rules; agents pinned to the key verify.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignedOrgs {
    all: bool,
    orgs: BTreeSet<String>,
}

impl SignedOrgs {
    /// From the `--require-signatures` values: org ids, or `*` for every org.
    pub fn new<I: IntoIterator<Item = String>>(orgs: I) -> Self {
        let mut signed = Self::default();
        for org in orgs {
            if org == "*" {
                signed.all = true;
            } else {
                signed.orgs.insert(org);
            }
        }
        signed
    }

    /// Whether `org` accepts only signed policies.
    pub fn required(&self, org: &str) -> bool {
        self.all || self.orgs.contains(org)
    }
}

/// What `POST /api/policy` publishes: a plain document, or one signed by an operator key for
/// one org and one version.
#[derive(Debug, Clone)]
pub enum Publication {
    /// A policy document.
    Unsigned(Policy),
    /// A signed policy file: stored only as `version` of `org_id`.
    Signed {
        /// The validated document.
        policy: Policy,
        /// The org it was signed for.
        org_id: String,
        /// The version it was signed for.
        version: PolicyVersion,
        /// The signature, stored and sent to agents with the version.
        signature: PolicySignature,
    },
}

/// A publication checked for its org: what [`publish`] stores and [`plan`](super::plan::plan)
/// shows.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The validated document.
    pub policy: Policy,
    /// The org it goes to.
    pub org: String,
    /// The signed version and the signature, for a signed publication.
    pub signed: Option<(PolicyVersion, PolicySignature)>,
}

/// Checks a publication as `principal` may write it: its org (a signed file's org, else the
/// body's `org_id`, else `org_query`), the org's signature requirement, and that every
/// `notifyChannels` entry names a configured channel (when channels are configured).
pub fn check(
    channels: Option<&NotifyConfig>,
    signed_orgs: &SignedOrgs,
    principal: &Principal,
    org_query: Option<&str>,
    publication: Publication,
) -> Result<Checked, ApiError> {
    let (policy, org, signed) = match publication {
        Publication::Unsigned(policy) => {
            let org = principal.write_org(named_org(policy.org_id.as_deref(), org_query)?)?;
            if signed_orgs.required(&org) {
                return Err(signature_required(&org));
            }
            (policy, org, None)
        }
        Publication::Signed {
            policy,
            org_id,
            version,
            signature,
        } => {
            if let Some(named) = policy.org_id.as_deref().filter(|n| *n != org_id) {
                return Err(ApiError::invalid(
                    "policy.org_id",
                    format!(
                        "the document names org `{named}`, but it is signed for org `{org_id}`"
                    ),
                ));
            }
            if let Some(named) = org_query.filter(|n| *n != org_id) {
                return Err(ApiError::bad_request(format!(
                    "`?org_id={named}` names another org than the one the policy is signed for (`{org_id}`)"
                )));
            }
            let org = principal.write_org(Some(&org_id))?;
            (policy, org, Some((version, signature)))
        }
    };
    let unknown_channels = notify::check_policy(channels, &policy);
    if !unknown_channels.is_empty() {
        return Err(ApiError::from_validation(unknown_channels));
    }
    Ok(Checked {
        policy,
        org,
        signed,
    })
}

/// Stores a publication ([`check`]ed) as the next version of its org and queues it to every
/// stream of the org.
pub async fn publish(
    store: &dyn Store,
    publisher: &Publisher,
    channels: Option<&NotifyConfig>,
    signed_orgs: &SignedOrgs,
    principal: &Principal,
    org_query: Option<&str>,
    publication: Publication,
) -> Result<PolicyView<RuleDocument>, ApiError> {
    let Checked {
        policy,
        org,
        signed,
    } = check(channels, signed_orgs, principal, org_query, publication)?;
    let key_id = signed.as_ref().map(|(_, s)| s.key_id.clone());
    // A plain post and a rollout's start are decided one at a time on this replica (see
    // `Publisher::rollout_lock`).
    let decisions = publisher.rollout_lock().await;
    super::assignment::check_no_active(store, &org).await?;
    let pushed = store
        .insert_policy(NewPolicy {
            org_id: org,
            policy: Arc::new(policy),
            id: format!("pol_{}", random_hex(8)),
            created_at: clock::now(),
            signed,
        })
        .await?;
    drop(decisions);
    let stored = pushed.value;
    let delivery = publisher.push(store, &stored.org_id, pushed.seq).await;
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
                "signedBy": key_id,
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

/// The active policy of `org`: its effective version, the one an agent outside every rollout
/// stage runs (the latest, but the previous one while a rollout of the latest runs or after
/// it was rolled back or aborted); 404 when it has none.
pub async fn active(store: &dyn Store, org: &str) -> Result<PolicyView<RuleDocument>, ApiError> {
    let policy = super::assignment::effective_policy(store, org)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no policy in org `{org}`")))?;
    Ok(policy_view(&policy, None))
}

/// The rules `agent` runs: the version assigned to it (its org's latest, or the previous one
/// while a staged rollout has not reached it) with its overrides applied, and what the agent
/// reported (`running`: its version, last error, ack, and why it gets this version).
pub async fn for_agent(
    store: &dyn Store,
    agent: AgentRecord,
) -> Result<AgentPolicyView<RuleDocument>, ApiError> {
    let (policy, assignment) = super::assignment::assigned_policy(store, &agent.org_id, &agent.id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no policy in org `{}`", agent.org_id)))?;
    let stored = store.overrides(agent.id.clone()).await?;
    let list = overrides::stored_list(stored.as_ref());
    Ok(AgentPolicyView {
        rules: resolved_rules(&policy, &agent.id, &list),
        applied_at: applied_at(&policy, stored.as_ref()),
        policy_version: policy.version,
        overrides: None,
        broadcasted_to: None,
        running: Some(AgentRunning {
            policy_version: agent.policy_version,
            last_seen: agent.last_seen,
            last_error: agent.last_error,
            ack: agent.ack,
            assignment: Some(assignment.reason),
        }),
        agent_id: agent.id,
    })
}

/// Replaces `agent`'s overrides with `body` (validated against the version assigned to it, the
/// one [`for_agent`] shows and its streams get, errors at paths inside `body`) and pushes its
/// newly resolved policy to its streams; the answer is that version's rules with the new
/// overrides. Under a signed version, or in an org that requires signatures, overrides may only
/// disable rules.
pub async fn set_overrides(
    store: &dyn Store,
    publisher: &Publisher,
    channels: Option<&NotifyConfig>,
    signed_orgs: &SignedOrgs,
    principal: &Principal,
    agent: AgentRecord,
    body: &Value,
) -> Result<AgentPolicyView<RuleDocument>, ApiError> {
    let (policy, _) = super::assignment::assigned_policy(store, &agent.org_id, &agent.id)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no policy in org `{}`; overrides refer to the rules of its active policy",
                agent.org_id
            ))
        })?;
    let signed = if signed_orgs.required(&agent.org_id) {
        Some(format!(
            "org `{}` accepts only signed policies",
            agent.org_id
        ))
    } else if policy.signature.is_some() {
        Some(format!(
            "{} of org `{}` is signed",
            policy.version, agent.org_id
        ))
    } else {
        None
    };
    let (list, resolved) = overrides::validate(&policy.policy, body, signed.as_deref())?;
    overrides::check_channels(channels, &resolved, &list)?;
    let rules = resolved.to_document().rules;
    let stored = StoredOverrides {
        list: overrides::to_value(&list),
        updated_at: clock::now(),
    };
    let pushed = store
        .set_overrides(agent.org_id.clone(), agent.id.clone(), stored.clone())
        .await?;
    // The agent's streams get the version assigned to it (a staged rollout may keep it on the
    // previous one) with its new overrides, recorded as sent: see `stream_changes`.
    let delivery = publisher.push(store, &agent.org_id, pushed.seq).await;
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
        running: None,
    })
}
