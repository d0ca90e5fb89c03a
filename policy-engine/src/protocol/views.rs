//! Resources as the server shows them to an agent token (and to admins): the active policy,
//! an agent's resolved policy, fleet blocks and approval requests.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::agent::VersionAck;
use super::signature::PolicySignature;
use super::time;
use crate::action::ActionRecord;
use crate::policy::{PolicyDuration, PolicyVersion};

/// A stored policy version: `GET /api/policy/active`, and `POST /api/policy` with
/// `broadcastedTo`. `R` is how the rules are held, as in
/// [`PolicyEvent`](super::PolicyEvent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView<R = Value> {
    /// `pol_...`
    pub id: String,
    /// Policy name.
    pub name: String,
    /// Description, when the policy has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `v1`, `v2`, ...
    pub version: PolicyVersion,
    /// The normalized rules.
    pub rules: Vec<R>,
    /// The action budgets as written, when the policy has some (see
    /// [`PolicyEvent::budgets`](super::PolicyEvent::budgets)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budgets: Option<Value>,
    /// Agents whose event stream received it (`POST` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcasted_to: Option<usize>,
    /// When the version was created.
    #[serde(with = "time::millis")]
    pub created_at: DateTime<Utc>,
    /// The operator's signature, when the version is signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<PolicySignature>,
}

/// `GET /api/policy/agent/:id`: the rules one agent runs, its overrides applied; `PUT
/// .../overrides` adds `overrides` and `broadcastedTo`. `R` is how the rules are held, as in
/// [`PolicyEvent`](super::PolicyEvent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentPolicyView<R = Value> {
    /// The agent.
    pub agent_id: String,
    /// Version of the org policy the rules come from.
    pub policy_version: PolicyVersion,
    /// Resolved rules.
    pub rules: Vec<R>,
    /// When these rules took effect for the agent: the later of the policy's creation and the
    /// agent's last override change.
    #[serde(with = "time::millis")]
    pub applied_at: DateTime<Utc>,
    /// The agent's overrides (`PUT` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<Value>,
    /// 1 when the agent's stream received the change, else 0 (`PUT` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcasted_to: Option<usize>,
    /// What the agent says it runs, and why (`GET` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<AgentRunning>,
}

/// What an agent reported in its heartbeats: the version it runs, and its ack of the last
/// version offered (applied, refused or invalid, with the error and the actions since).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRunning {
    /// The version it enforces, as last reported; `null` before its first heartbeat.
    pub policy_version: Option<PolicyVersion>,
    /// Its last heartbeat.
    #[serde(default, with = "time::millis_opt")]
    pub last_seen: Option<DateTime<Utc>>,
    /// Its last error.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Its ack of the last version offered; `null` from agents that send none.
    #[serde(default)]
    pub ack: Option<VersionAck>,
    /// Why the server gives it this version (the org's latest, a stage of a rollout, a
    /// rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<String>,
}

/// A fleet block in force: `GET /api/blocks` entries and the `block` of a report's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockView {
    /// The address.
    pub ip: IpAddr,
    /// Duration of the report that set the expiry.
    pub duration: PolicyDuration,
    /// Expiry; `null` when permanent.
    #[serde(default, with = "time::millis_opt")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Never expires.
    pub permanent: bool,
    /// Agent whose report set the expiry.
    pub agent_id: String,
    /// Its rule index.
    pub rule: Option<u64>,
    /// Its policy version.
    pub policy_version: Option<PolicyVersion>,
    /// Reports collapsed into this block.
    pub reports: u32,
    /// First report.
    #[serde(with = "time::millis")]
    pub created_at: DateTime<Utc>,
    /// Last extension.
    #[serde(with = "time::millis")]
    pub updated_at: DateTime<Utc>,
}

/// Where an approval request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStatus {
    /// Waiting for an admin.
    Pending,
    /// Approved; pushed to the agent, not yet reported executed.
    Approved,
    /// Denied by an admin.
    Denied,
    /// Nobody decided (or the agent did not execute it) before the expiry.
    Expired,
    /// The agent reported the approved action executed.
    Executed,
    /// The agent reported the approved action failed.
    Failed,
}

impl ApprovalStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 6] = [
        Self::Pending,
        Self::Approved,
        Self::Denied,
        Self::Expired,
        Self::Executed,
        Self::Failed,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::Executed => "executed",
            Self::Failed => "failed",
        }
    }

    /// The status of a wire name.
    ///
    /// ```
    /// use policy_engine::protocol::ApprovalStatus;
    /// assert_eq!(ApprovalStatus::parse("denied"), Some(ApprovalStatus::Denied));
    /// assert_eq!(ApprovalStatus::parse("Denied"), None);
    /// ```
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// An approval request: `GET /api/approvals` entries, the decision endpoints and the
/// `approval` of a report's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalView {
    /// `apr_...`
    pub id: String,
    /// The requesting agent.
    pub agent_id: String,
    /// Where it stands.
    pub status: ApprovalStatus,
    /// The action awaiting approval.
    pub action: ActionRecord,
    /// Received.
    #[serde(with = "time::millis")]
    pub created_at: DateTime<Utc>,
    /// Deadline to approve and execute.
    #[serde(with = "time::millis")]
    pub expires_at: DateTime<Utc>,
    /// When an admin decided it (or, when nobody did, when the server expired it); the
    /// agent's report of the outcome does not change it.
    #[serde(default, with = "time::millis_opt")]
    pub decided_at: Option<DateTime<Utc>>,
    /// Who decided.
    pub decided_by: Option<String>,
    /// Reason given with the decision.
    pub reason: Option<String>,
}
