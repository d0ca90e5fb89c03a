//! Agents and tokens: enrollment, identity, heartbeats, the fleet's status list, org admin
//! tokens and the bootstrap admin token.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use policy_engine::PolicyVersion;
use policy_engine::protocol::{
    AgentIdentity, EnrollAnswer, EnrollRequest, HeartbeatAnswer, HeartbeatRequest, VersionAck, time,
};
use serde::Serialize;

use super::assignment;
use super::rollouts;
use super::shadows;
use super::streams::{EventHub, Publisher};
use crate::auth::{Principal, TokenCache, TokenHash, generate_token, random_hex};
use crate::clock;
use crate::error::ApiError;
use crate::store::{AgentRecord, Heartbeat, Store, StoreError};

/// One entry of `GET /api/agents` (admin only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// The agent.
    pub agent_id: String,
    /// Hostname given at enrollment.
    pub hostname: String,
    /// Its org.
    pub org_id: String,
    /// An event stream is open, or a heartbeat arrived within the online window.
    pub online: bool,
    /// Last heartbeat, `null` before the first.
    #[serde(with = "time::millis_opt")]
    pub last_seen: Option<DateTime<Utc>>,
    /// Version reported in the last heartbeat.
    pub policy_version: Option<PolicyVersion>,
    /// The reported version is not the one assigned to it.
    pub outdated: bool,
    /// The version the server sends it: the org's latest, or the previous one while a staged
    /// rollout has not reached it (or after a rollback).
    pub assigned_version: Option<PolicyVersion>,
    /// Why it gets that version.
    pub assignment: Option<String>,
    /// Error reported in the last heartbeat.
    pub last_error: Option<String>,
    /// Its ack of the last version offered (applied, refused or invalid, with the error and
    /// the actions since); `null` from agents that send none.
    pub ack: Option<VersionAck>,
    /// When it was enrolled.
    #[serde(with = "time::millis")]
    pub enrolled_at: DateTime<Utc>,
}

/// The answer to `POST /api/tokens` (global admin only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenCreated {
    /// The new bearer token, shown only here.
    pub token: String,
    /// `admin`
    pub role: &'static str,
    /// The org the token is confined to.
    pub org_id: String,
}

/// The agent `id` as `principal` may see it: an agent only itself, an admin those of its org.
pub async fn visible(
    store: &dyn Store,
    principal: &Principal,
    id: &str,
) -> Result<AgentRecord, ApiError> {
    if let Principal::Agent { agent_id, .. } = principal {
        if agent_id != id {
            return Err(ApiError::forbidden(format!(
                "this agent token may only act on agent `{agent_id}`"
            )));
        }
    }
    let agent = store
        .agent(id.to_owned())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown agent `{id}`")))?;
    principal.check_org(&agent.org_id)?;
    Ok(agent)
}

/// Enrolls a new agent into `org` and makes its token.
pub async fn enroll(
    store: &dyn Store,
    tokens: &TokenCache,
    org: String,
    request: EnrollRequest,
) -> Result<EnrollAnswer, ApiError> {
    let token = generate_token("agt");
    let hash = TokenHash::of(&token);
    let agent = store
        .insert_agent(
            AgentRecord {
                id: format!("agent-{}", random_hex(6)),
                org_id: org,
                hostname: request.hostname,
                enrolled_at: clock::now(),
                last_seen: None,
                policy_version: None,
                last_error: None,
                ack: None,
                shadow: None,
            },
            hash,
        )
        .await?;
    tokens.insert(
        hash,
        Principal::Agent {
            agent_id: agent.id.clone(),
            org_id: agent.org_id.clone(),
        },
    );
    tracing::info!(
        agent = agent.id.as_str(),
        org = agent.org_id.as_str(),
        hostname = agent.hostname.as_str(),
        "enrolled agent"
    );
    Ok(EnrollAnswer {
        agent_id: agent.id,
        token,
        org_id: agent.org_id,
        hostname: agent.hostname,
    })
}

/// Who the agent `agent_id` is.
pub async fn identity(store: &dyn Store, agent_id: &str) -> Result<AgentIdentity, ApiError> {
    let agent = store
        .agent(agent_id.to_owned())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown agent `{agent_id}`")))?;
    Ok(AgentIdentity {
        agent_id: agent.id,
        org_id: agent.org_id,
        hostname: agent.hostname,
    })
}

/// Records a heartbeat of `agent_id` (of `org`), says whether it runs the version assigned to
/// it, and evaluates the gate of the org's rollout (if one is running).
pub async fn heartbeat(
    store: &dyn Store,
    publisher: &Publisher,
    agent_id: String,
    org: String,
    request: HeartbeatRequest,
) -> Result<HeartbeatAnswer, ApiError> {
    let version = request.policy_version;
    let acked = request.ack.is_some();
    let shadow = match request.shadow {
        Some(report) => Some(shadows::check_report(store, &org, &agent_id, report).await),
        None => None,
    };
    // A refused shadow report is answered 422, but the heartbeat itself still counts: the
    // agent is alive and runs what it says (a rollout gate must not see it as silent).
    let (shadow, refused) = match shadow {
        Some(Ok(checked)) => (Some(checked), None),
        Some(Err(error)) => (None, Some(error)),
        None => (None, None),
    };
    store
        .heartbeat(Heartbeat {
            agent_id: agent_id.clone(),
            policy_version: version,
            last_error: request.last_error,
            ack: request.ack,
            shadow,
            at: clock::now(),
        })
        .await?;
    if let Some(error) = refused {
        shadows::audit_refusal(store, &org, &agent_id, &error).await;
        return Err(error);
    }
    let rollout = store.latest_rollout(org.clone()).await?;
    let rollout = if acked || rollout.as_ref().is_some_and(|r| r.state.is_active()) {
        rollouts::check_gate(store, publisher, &org).await?;
        // The gate may have moved the rollout on: the assignment reads it again.
        store.latest_rollout(org.clone()).await?
    } else {
        rollout
    };
    // The version assigned to this agent (one read of the rollout, not two, per heartbeat).
    let current = store
        .latest_policy(org.clone())
        .await?
        .map(|latest| assignment::target(rollout.as_ref(), latest.version, &agent_id).version);
    Ok(HeartbeatAnswer {
        agent_id,
        policy_version: version,
        current_policy_version: current,
        outdated: current.is_some() && version != current,
        accepts_acks: true,
        accepts_shadow: true,
    })
}

/// Every agent of `org` with whether it is online (an open stream, or a heartbeat within
/// `online_window`) and outdated.
pub async fn statuses(
    store: &dyn Store,
    hub: &EventHub,
    online_window: Duration,
    org: String,
) -> Result<Vec<AgentStatus>, ApiError> {
    let current = store.latest_policy(org.clone()).await?.map(|p| p.version);
    let rollout = store.latest_rollout(org.clone()).await?;
    let agents = store.agents(org.clone()).await?;
    let online = Online::now(hub, &org, online_window);
    Ok(agents
        .into_iter()
        .map(|agent| {
            let assignment = current.map(|c| assignment::assign(rollout.as_ref(), c, &agent.id));
            AgentStatus {
                online: online.is(&agent),
                outdated: assignment
                    .as_ref()
                    .is_some_and(|a| agent.policy_version != Some(a.version)),
                assigned_version: assignment.as_ref().map(|a| a.version),
                assignment: assignment.map(|a| a.reason),
                agent_id: agent.id,
                hostname: agent.hostname,
                org_id: agent.org_id,
                last_seen: agent.last_seen,
                policy_version: agent.policy_version,
                last_error: agent.last_error,
                ack: agent.ack,
                enrolled_at: agent.enrolled_at,
            }
        })
        .collect())
}

/// Which agents of an org count as online at one moment: those with an open event stream, and
/// those whose last heartbeat is within the online window.
#[derive(Debug)]
pub struct Online {
    streaming: HashSet<String>,
    now: DateTime<Utc>,
    window: chrono::Duration,
}

impl Online {
    /// The agents of `org` online now.
    pub fn now(hub: &EventHub, org: &str, online_window: Duration) -> Self {
        Self {
            streaming: hub.online_agents(org),
            now: clock::now(),
            window: chrono::Duration::from_std(online_window).unwrap_or_default(),
        }
    }

    /// Whether `agent` is online.
    pub fn is(&self, agent: &AgentRecord) -> bool {
        self.streaming.contains(&agent.id)
            || agent
                .last_seen
                .is_some_and(|t| self.now.signed_duration_since(t) <= self.window)
    }
}

/// A new admin token confined to `org_id`.
pub async fn create_admin_token(
    store: &dyn Store,
    tokens: &TokenCache,
    org_id: String,
) -> Result<TokenCreated, ApiError> {
    let token = generate_token("adm");
    let hash = TokenHash::of(&token);
    let principal = Principal::OrgAdmin {
        org_id: org_id.clone(),
    };
    store
        .insert_token(hash, principal.clone(), clock::now())
        .await?;
    tokens.insert(hash, principal);
    tracing::info!(org = org_id.as_str(), "created an org admin token");
    Ok(TokenCreated {
        token,
        role: "admin",
        org_id,
    })
}

/// Makes sure a global admin token exists: `configured` (from `POLICY_ADMIN_TOKEN`) becomes the
/// only global admin token; without it, a data dir with no global admin gets a generated one,
/// returned so that it can be printed once.
pub async fn bootstrap_admin(
    store: &dyn Store,
    configured: Option<&str>,
) -> Result<Option<String>, StoreError> {
    if let Some(token) = configured {
        store
            .set_global_admin(TokenHash::of(token), clock::now())
            .await?;
        return Ok(None);
    }
    if store.has_global_admin().await? {
        return Ok(None);
    }
    let token = generate_token("adm");
    store
        .insert_token(TokenHash::of(&token), Principal::GlobalAdmin, clock::now())
        .await?;
    Ok(Some(token))
}
