//! Response bodies: the success envelope, the protocol's policy shapes built from stored
//! policies, and the admin-only answers (agent list, new token).

use policy_engine::policy::wire::RuleDocument;
use policy_engine::protocol::{Envelope, PolicyEvent, PolicyView};
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
    warp::reply::with_status(warp::reply::json(&Envelope::ok(data)), status).into_response()
}

/// A stored policy as `GET /api/policy/active` shows it; `POST /api/policy` adds
/// `broadcastedTo`.
pub fn policy_view(
    policy: &StoredPolicy,
    broadcasted_to: Option<usize>,
) -> PolicyView<RuleDocument> {
    PolicyView {
        id: policy.id.clone(),
        name: policy.policy.name.clone(),
        description: policy.policy.description.clone(),
        version: policy.version,
        rules: policy.policy.to_document().rules,
        broadcasted_to,
        created_at: policy.created_at,
    }
}

/// The `data` of an SSE `policy` event: `policy` with `rules` (resolved for one agent, or the
/// policy's own).
pub fn policy_event(policy: &StoredPolicy, rules: Vec<RuleDocument>) -> PolicyEvent<RuleDocument> {
    PolicyEvent {
        policy_id: Some(policy.id.clone()),
        version: policy.version,
        name: policy.policy.name.clone(),
        description: policy.policy.description.clone(),
        rules,
        created_at: Some(policy.created_at),
    }
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
