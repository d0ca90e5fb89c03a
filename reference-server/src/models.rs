//! Response bodies, exactly in the API page's shapes, and the SSE `policy` event payload.

use policy_engine::policy::wire::RuleDocument;
use serde::Serialize;
use warp::Reply;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::store::StoredPolicy;

/// Now as RFC 3339 with milliseconds, UTC: `2026-03-07T12:00:00.000Z`.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `{"ok":true,"data":...}` with `status`.
pub fn ok_reply<T: Serialize>(status: StatusCode, data: &T) -> Response {
    #[derive(Serialize)]
    struct Envelope<'a, T> {
        ok: bool,
        data: &'a T,
    }
    warp::reply::with_status(warp::reply::json(&Envelope { ok: true, data }), status)
        .into_response()
}

/// A stored policy as `GET /api/policy/active` shows it; `POST /api/policy` adds
/// `broadcastedTo`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    /// `pol_...`
    pub id: String,
    /// Policy name.
    pub name: String,
    /// Description, when the policy has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `v1`, `v2`, ...
    pub version: String,
    /// The normalized rules.
    pub rules: Vec<RuleDocument>,
    /// Agents whose event stream received it (POST only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broadcasted_to: Option<usize>,
    /// RFC 3339 with milliseconds, UTC.
    pub created_at: String,
}

impl PolicyView {
    /// The view of a stored policy.
    pub fn of(policy: &StoredPolicy, broadcasted_to: Option<usize>) -> Self {
        Self {
            id: policy.id.clone(),
            name: policy.policy.name.clone(),
            description: policy.policy.description.clone(),
            version: policy.version.to_string(),
            rules: policy.policy.to_document().rules,
            broadcasted_to,
            created_at: policy.created_at.clone(),
        }
    }
}

/// `GET /api/policy/agent/:id`: the rules one agent runs, overrides applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentPolicyView {
    /// The agent.
    pub agent_id: String,
    /// Version of the org policy the rules come from.
    pub policy_version: String,
    /// Resolved rules.
    pub rules: Vec<RuleDocument>,
    /// When these rules took effect for the agent: the later of the policy's creation and the
    /// agent's last override change.
    pub applied_at: String,
    /// The agent's overrides (`PUT .../overrides` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overrides: Option<serde_json::Value>,
    /// 1 when the agent's stream received the change, else 0 (`PUT .../overrides` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broadcasted_to: Option<usize>,
}

/// The `data` of an SSE `policy` event: the agent's resolved policy.
///
/// `{"policyId","version","name","description"?,"rules":[...],"createdAt"}`; `rules` are
/// normalized (defaults filled in) and have the agent's overrides applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyEventData<'a> {
    /// `pol_...`
    pub policy_id: &'a str,
    /// `v3`
    pub version: String,
    /// Policy name.
    pub name: &'a str,
    /// Description, when the policy has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
    /// Resolved rules.
    pub rules: &'a [RuleDocument],
    /// When the policy version was created.
    pub created_at: &'a str,
}

impl<'a> PolicyEventData<'a> {
    /// The payload for `policy` with `rules` (resolved for one agent, or the policy's own).
    pub fn new(policy: &'a StoredPolicy, rules: &'a [RuleDocument]) -> Self {
        Self {
            policy_id: &policy.id,
            version: policy.version.to_string(),
            name: &policy.policy.name,
            description: policy.policy.description.as_deref(),
            rules,
            created_at: &policy.created_at,
        }
    }
}

/// `POST /api/agents/enroll`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Enrolled {
    /// `agent-...`
    pub agent_id: String,
    /// The agent's bearer token, shown only here.
    pub token: String,
    /// The agent's org.
    pub org_id: String,
    /// Hostname as given.
    pub hostname: String,
}

/// `POST /api/agents/:id/heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatView {
    /// The agent.
    pub agent_id: String,
    /// What the agent reported.
    pub policy_version: Option<String>,
    /// The org's latest version, `null` when there is none.
    pub current_policy_version: Option<String>,
    /// The agent runs something other than the latest version.
    pub outdated: bool,
}

/// One entry of `GET /api/agents`.
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
    pub last_seen: Option<String>,
    /// Version reported in the last heartbeat.
    pub policy_version: Option<String>,
    /// The reported version is not the org's latest.
    pub outdated: bool,
    /// Error reported in the last heartbeat.
    pub last_error: Option<String>,
    /// When it was enrolled.
    pub enrolled_at: String,
}

/// `POST /api/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenCreated {
    /// The new bearer token, shown only here.
    pub token: String,
    /// `admin`
    pub role: &'static str,
    /// The org the token is confined to.
    pub org_id: String,
}
