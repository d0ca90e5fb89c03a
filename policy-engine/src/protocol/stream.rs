//! The event stream (`GET /api/events`, server-sent events): the `policy` event and the fleet
//! events `block`, `unblock` and `approval`, each one JSON object in `data:`.
//!
//! ```text
//! event: policy
//! id: 3
//! data: {"policyId":"pol_...","version":"v3","name":"...","rules":[...],"createdAt":"..."}
//!
//! event: block
//! data: {"ip":"203.0.113.7","expiresAt":"...","sourceAgent":"agent-ab12","action":{...}}
//! ```
//!
//! `policy` events carry the version number as their SSE `id:`; fleet events carry none, so an
//! agent's last event id stays its policy version.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::signature::PolicySignature;
use super::time;
use crate::action::ActionRecord;
use crate::policy::PolicyVersion;

/// SSE event name of [`PolicyEvent`].
pub const POLICY_EVENT: &str = "policy";
/// SSE event name of [`BlockEvent`].
pub const BLOCK_EVENT: &str = "block";
/// SSE event name of [`UnblockEvent`].
pub const UNBLOCK_EVENT: &str = "unblock";
/// SSE event name of [`ApprovalEvent`].
pub const APPROVAL_EVENT: &str = "approval";

/// The `data` of a `policy` event: the policy an agent is to enforce (the org's latest version
/// with the agent's overrides applied) inside an envelope of metadata.
///
/// The **envelope** (this struct) tolerates fields it does not know: a newer server may add
/// metadata beside these and older agents keep applying policies. The **document** it carries
/// (`name`, `description`, `rules`, `budgets`) is validated strictly by
/// [`Policy::from_value`](crate::Policy::from_value): an unknown field inside a rule is refused,
/// never ignored. A top-level field other than `name`, `description`, `rules` and `budgets` is
/// therefore metadata by definition; anything else that changes what a policy does belongs
/// inside the rules. (An agent older than `budgets` ignores them and runs without budgets.)
///
/// ```
/// use policy_engine::PolicyVersion;
/// use policy_engine::protocol::PolicyEvent;
/// let data = r#"{"policyId":"pol_1","version":"v3","name":"p","rules":[],
///               "createdAt":"2026-03-07T12:00:00.000Z","signedBy":"a newer server"}"#;
/// let event: PolicyEvent = serde_json::from_str(data).unwrap();
/// assert_eq!(event.version, PolicyVersion::new(3));
/// assert_eq!(event.into_document(), serde_json::json!({"name": "p", "rules": []}));
/// ```
///
/// `R` is how the rules are held: JSON values when read (so the agent's strict validation
/// reports every problem with its path), the policy library's
/// [`RuleDocument`](crate::policy::wire::RuleDocument) when written (rules in the API page's
/// field order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyEvent<R = Value> {
    /// `pol_...`: the stored policy version this comes from. Always sent by the server;
    /// agents do not need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
    /// The version (`v3`); the SSE `id:` is its number.
    pub version: PolicyVersion,
    /// Document: policy name.
    pub name: String,
    /// Document: description, when the policy has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Document: the rules, normalized (defaults filled in), overrides applied.
    pub rules: Vec<R>,
    /// Document: the policy's action budgets as written
    /// ([`BudgetsDocument`](crate::policy::wire::BudgetsDocument)), when it has some; signed
    /// with the rules, untouched by overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budgets: Option<Value>,
    /// When the version was created. Always sent by the server; agents do not need it.
    #[serde(
        default,
        with = "time::millis_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_at: Option<DateTime<Utc>>,
    /// The operator's signature, when the version is signed: what an agent pinned to a key
    /// verifies and runs instead of `rules`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<SignedRules<R>>,
    /// Set when this older version replaces `rollbackFrom` because a rollout was rolled back:
    /// an agent running exactly `rollbackFrom` accepts going back to this version (an agent
    /// pinned to a key only when `rollbackFrom`'s signature names this version as its
    /// fallback). Any other older version is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_from: Option<PolicyVersion>,
}

/// The signed part of a [`PolicyEvent`]: the rules exactly as the operator signed them (no
/// overrides), the signature, and the rules this agent's overrides disable.
///
/// Under a signature an override may only disable rules: an agent pinned to a key verifies
/// `rules` (with the event's `name` and `description`, its own org and the event's version),
/// then disables the rules listed in `disabledRules`, and runs that. Agents without a key run
/// the event's `rules` as before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedRules<R = Value> {
    /// The rules as signed, normalized.
    pub rules: Vec<R>,
    /// The signature over name, description, rules, org and version.
    pub signature: PolicySignature,
    /// Indices of rules this agent's overrides disable.
    #[serde(default)]
    pub disabled_rules: Vec<usize>,
}

impl PolicyEvent {
    /// The policy document (`name`, `description`, `rules`, `budgets`) for
    /// [`Policy::from_value`](crate::Policy::from_value), without the envelope.
    pub fn into_document(self) -> Value {
        document(self.name, self.description, self.rules, self.budgets)
    }

    /// The document as signed: the event's `name`, `description` and `budgets` with the
    /// signed `rules`.
    pub fn signed_document(&self, rules: Vec<Value>) -> Value {
        document(
            self.name.clone(),
            self.description.clone(),
            rules,
            self.budgets.clone(),
        )
    }
}

fn document(
    name: String,
    description: Option<String>,
    rules: Vec<Value>,
    budgets: Option<Value>,
) -> Value {
    let mut document = Map::new();
    document.insert("name".to_owned(), Value::String(name));
    if let Some(description) = description {
        document.insert("description".to_owned(), Value::String(description));
    }
    document.insert("rules".to_owned(), Value::Array(rules));
    if let Some(budgets) = budgets {
        document.insert("budgets".to_owned(), budgets);
    }
    Value::Object(document)
}

/// The `data` of a `block` event: block an address another agent reported with `scope: fleet`.
///
/// `action` is ready for the executor: a **host**-scope `block_ip` (so the receiving agent never
/// reports it back as a fleet block) for the **time left** in whole seconds, rounded up, so that
/// every agent's block ends when the fleet block does, whatever its own clock says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockEvent {
    /// The address.
    pub ip: IpAddr,
    /// When the fleet block ends (for display); `null` is permanent.
    #[serde(default, with = "time::millis_opt")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The agent whose report set the block.
    pub source_agent: String,
    /// The action to execute.
    pub action: ActionRecord,
}

/// The `data` of an `unblock` event: an admin lifted the fleet block on `ip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnblockEvent {
    /// The address.
    pub ip: IpAddr,
    /// Who lifted it: `admin` or `admin:<org>`.
    pub by: String,
}

/// The `data` of an `approval` event: an admin approved an action this agent requested;
/// execute it once, not after `expiresAt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalEvent {
    /// `apr_...`; the agent remembers executed ids and ignores replays.
    pub approval_id: String,
    /// After this the agent must not execute it.
    #[serde(with = "time::millis")]
    pub expires_at: DateTime<Utc>,
    /// The approved action.
    pub action: ActionRecord,
}

/// One fleet event of the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum FleetEvent {
    /// `event: block`.
    Block(BlockEvent),
    /// `event: unblock`.
    Unblock(UnblockEvent),
    /// `event: approval`.
    Approval(ApprovalEvent),
}

impl FleetEvent {
    /// Reads a fleet event from its SSE name and data; `Ok(None)` for names that are not fleet
    /// events (`policy`, or one a newer server added).
    ///
    /// ```
    /// use policy_engine::protocol::FleetEvent;
    /// let event = FleetEvent::parse("unblock", r#"{"ip":"203.0.113.7","by":"admin"}"#).unwrap();
    /// assert_eq!(event.map(|e| e.name()), Some("unblock"));
    /// assert!(FleetEvent::parse("policy", "{}").unwrap().is_none());
    /// assert_eq!(
    ///     FleetEvent::parse("unblock", "{}").unwrap_err().to_string(),
    ///     "malformed `unblock` event: missing field `ip` at line 1 column 2"
    /// );
    /// ```
    pub fn parse(event: &str, data: &str) -> Result<Option<Self>, FleetEventError> {
        let malformed = |e: serde_json::Error| FleetEventError {
            event: event.to_owned(),
            message: e.to_string(),
        };
        Ok(Some(match event {
            BLOCK_EVENT => Self::Block(serde_json::from_str(data).map_err(malformed)?),
            UNBLOCK_EVENT => Self::Unblock(serde_json::from_str(data).map_err(malformed)?),
            APPROVAL_EVENT => Self::Approval(serde_json::from_str(data).map_err(malformed)?),
            _ => return Ok(None),
        }))
    }

    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Block(_) => BLOCK_EVENT,
            Self::Unblock(_) => UNBLOCK_EVENT,
            Self::Approval(_) => APPROVAL_EVENT,
        }
    }

    /// The SSE `data`: the payload as one line of JSON.
    pub fn data(&self) -> String {
        let json = match self {
            Self::Block(block) => serde_json::to_string(block),
            Self::Unblock(unblock) => serde_json::to_string(unblock),
            Self::Approval(approval) => serde_json::to_string(approval),
        };
        // These payloads hold no maps with non-string keys: serializing cannot fail.
        json.unwrap_or_else(|_| "{}".to_owned())
    }
}

/// A fleet event whose payload does not fit its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed `{event}` event: {message}")]
pub struct FleetEventError {
    /// The event name.
    pub event: String,
    /// The parser's message.
    pub message: String,
}
