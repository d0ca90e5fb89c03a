//! An agent's own endpoints: enrollment (`POST /api/agents/enroll`, by an admin for the agent),
//! identity (`GET /api/agents/me`) and heartbeat (`POST /api/agents/:id/heartbeat`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::fields::{Fields, org_field};
use super::shadow::ShadowReport;
use super::time;
use crate::policy::json::{describe, join_key};
use crate::policy::{PolicyVersion, ValidationError};

/// Longest hostname accepted at enrollment, in characters.
pub const MAX_HOSTNAME_CHARS: usize = 255;

/// Longest `lastError` kept from a heartbeat, in characters (the rest is cut off).
pub const MAX_LAST_ERROR_CHARS: usize = 2000;

/// Most entries in an ack's `actions` (one per action name).
pub const MAX_ACK_ACTION_KINDS: usize = 32;

/// Longest action name in an ack's `actions`, in characters.
pub const MAX_ACK_ACTION_NAME_CHARS: usize = 64;

/// `POST /api/agents/enroll` body: `{"hostname": "web-1", "org_id": "acme"?}` (`orgId` is
/// accepted as an alias). Read by the server, strictly.
///
/// ```
/// use policy_engine::protocol::EnrollRequest;
/// let request = EnrollRequest::from_value(&serde_json::json!({"hostname": "web-1"})).unwrap();
/// assert_eq!(request, EnrollRequest { hostname: "web-1".into(), org_id: None });
/// let errors = EnrollRequest::from_value(&serde_json::json!({"host": "web-1"})).unwrap_err();
/// assert_eq!(errors[0].to_string(), "host: unknown field `host`, expected one of `hostname`, `org_id`, `orgId`");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrollRequest {
    /// The agent's host name, 1 to [`MAX_HOSTNAME_CHARS`] characters.
    pub hostname: String,
    /// Org to enroll into (an org admin may only name its own); default: the admin's org, or
    /// `default` for the global admin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
}

impl EnrollRequest {
    /// Reads and validates a body: unknown fields, a missing or empty hostname, a bad org id
    /// are errors, all of them reported with their paths.
    pub fn from_value(value: &Value) -> Result<Self, Vec<ValidationError>> {
        let mut fields = Fields::default();
        let (hostname, org_id) = match fields.object(value, "", &["hostname", "org_id", "orgId"]) {
            Some(map) => {
                let hostname = fields.req_string(map, "", "hostname");
                if let Some(name) = &hostname {
                    let chars = name.chars().count();
                    if chars > MAX_HOSTNAME_CHARS {
                        fields.push(
                            "hostname",
                            format!("expected 1 to {MAX_HOSTNAME_CHARS} characters, found {chars}"),
                        );
                    }
                }
                (hostname, org_field(&mut fields, map, ""))
            }
            None => (None, None),
        };
        fields.finish()?;
        Ok(Self {
            hostname: hostname.unwrap_or_default(),
            org_id,
        })
    }
}

/// The answer to `POST /api/agents/enroll`: the new agent's id and its token (shown only here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollAnswer {
    /// `agent-...`
    pub agent_id: String,
    /// The agent's bearer token.
    pub token: String,
    /// The agent's org.
    pub org_id: String,
    /// Hostname as given.
    pub hostname: String,
}

/// The answer to `GET /api/agents/me` (agent token): who this token is, so an agent needs only
/// its token to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentIdentity {
    /// `agent-...`
    pub agent_id: String,
    /// The agent's org.
    pub org_id: String,
    /// Hostname given at enrollment.
    pub hostname: String,
}

/// `POST /api/agents/:id/heartbeat` body: `{"policyVersion": "v2"?, "lastError": "..."?,
/// "ack": {...}?}`. Every field may be absent (an agent without a policy, without an error, an
/// older agent, or a server that did not announce acks). Written by the agent, read by the
/// server strictly.
///
/// ```
/// use policy_engine::PolicyVersion;
/// use policy_engine::protocol::HeartbeatRequest;
/// let request = HeartbeatRequest { policy_version: Some(PolicyVersion::new(2)), last_error: None, ack: None, shadow: None };
/// let json = serde_json::to_value(&request).unwrap();
/// assert_eq!(json, serde_json::json!({"policyVersion": "v2"}));
/// assert_eq!(HeartbeatRequest::from_value(&json).unwrap(), request);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatRequest {
    /// The version the agent enforces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<PolicyVersion>,
    /// The last refusal or failure, for the operator (`GET /api/agents`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What became of the last version the server offered; sent only to a server whose
    /// heartbeat answer said [`HeartbeatAnswer::accepts_acks`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack: Option<VersionAck>,
    /// Would-be actions of what runs in shadow, per rule, beside the enforced version's; sent
    /// only to a server whose heartbeat answer said [`HeartbeatAnswer::accepts_shadow`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowReport>,
}

impl HeartbeatRequest {
    /// Reads and validates a body; `lastError` (and an ack's `error`) are cut to
    /// [`MAX_LAST_ERROR_CHARS`].
    pub fn from_value(value: &Value) -> Result<Self, Vec<ValidationError>> {
        let mut fields = Fields::default();
        let (policy_version, last_error, ack, shadow) =
            match fields.object(value, "", &["policyVersion", "lastError", "ack", "shadow"]) {
                Some(map) => {
                    let version = version_field(&mut fields, map, "", "policyVersion");
                    let last_error = fields
                        .opt_string(map, "", "lastError")
                        .map(|e| e.chars().take(MAX_LAST_ERROR_CHARS).collect());
                    let ack = match map.get("ack") {
                        None | Some(Value::Null) => None,
                        Some(ack) => VersionAck::read(&mut fields, ack, "ack"),
                    };
                    let shadow = match map.get("shadow") {
                        None | Some(Value::Null) => None,
                        Some(shadow) => ShadowReport::read(&mut fields, shadow, "shadow"),
                    };
                    (version, last_error, ack, shadow)
                }
                None => (None, None, None, None),
            };
        fields.finish()?;
        Ok(Self {
            policy_version,
            last_error,
            ack,
            shadow,
        })
    }
}

/// An agent's acknowledgement of a version the server offered: whether it runs it, why not,
/// and what it did since.
///
/// ```
/// use policy_engine::PolicyVersion;
/// use policy_engine::protocol::{AckStatus, HeartbeatRequest};
/// let body = serde_json::json!({"policyVersion": "v2", "ack": {"version": "v3",
///     "status": "invalid", "error": "rules[0]...", "at": "2026-03-07T12:00:00.000Z"}});
/// let ack = HeartbeatRequest::from_value(&body).unwrap().ack.unwrap();
/// assert_eq!((ack.version, ack.status), (PolicyVersion::new(3), AckStatus::Invalid));
/// let errors = HeartbeatRequest::from_value(&serde_json::json!({"ack": {"version": "v3",
///     "status": "maybe", "at": "2026-03-07T12:00:00.000Z", "actions": {"kill_process": -1}}}))
///     .unwrap_err();
/// let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
/// assert_eq!(errors, [
///     "ack.status: unknown ack status `maybe`, expected one of `applied`, `refused`, `invalid`",
///     "ack.actions.kill_process: expected a non-negative integer, found `-1`",
/// ]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionAck {
    /// The version offered (the `policy` event's).
    pub version: PolicyVersion,
    /// What the agent did with it.
    pub status: AckStatus,
    /// Why it does not run it (refused or invalid), at most [`MAX_LAST_ERROR_CHARS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it applied or refused it (the agent's clock).
    #[serde(with = "time::millis")]
    pub at: DateTime<Utc>,
    /// Actions its engine emitted since it applied the version, by action name (`block_ip`,
    /// `kill_process`, `alert`, ...); empty for a refused version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub actions: BTreeMap<String, u64>,
    /// Events its engine evaluated since it applied the version (what the rates of a rollout's
    /// gate are measured against); absent from agents older than it, and for a refused version.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub events: u64,
    /// Of those events, how many had at least one `custom` condition fail (missing field,
    /// wrong type: evaluated as false).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub condition_errors: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What an agent did with an offered version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckStatus {
    /// It runs it.
    Applied,
    /// It refused it (older than the running one, unsigned or badly signed for a pinned agent,
    /// a malformed event) and keeps its running version.
    Refused,
    /// The document did not load (validation or compilation failed); it keeps its running
    /// version.
    Invalid,
}

impl AckStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Refused => "refused",
            Self::Invalid => "invalid",
        }
    }
}

impl VersionAck {
    /// Reads an ack at `path`, strictly.
    fn read(fields: &mut Fields, value: &Value, path: &str) -> Option<Self> {
        let map = fields.object(
            value,
            path,
            &[
                "version",
                "status",
                "error",
                "at",
                "actions",
                "events",
                "conditionErrors",
            ],
        )?;
        let errors_before = fields.errors.len();
        let version = version_field(fields, map, path, "version");
        if matches!(map.get("version"), None | Some(Value::Null)) {
            fields.push(
                &join_key(path, "version"),
                "missing required field `version`",
            );
        }
        let status = fields
            .req_string(map, path, "status")
            .and_then(|s| match s.as_str() {
                "applied" => Some(AckStatus::Applied),
                "refused" => Some(AckStatus::Refused),
                "invalid" => Some(AckStatus::Invalid),
                other => {
                    let shown: String = other.chars().take(64).collect();
                    fields.push(
                        &join_key(path, "status"),
                        format!(
                            "unknown ack status `{shown}`, expected one of `applied`, `refused`, `invalid`"
                        ),
                    );
                    None
                }
            });
        let error = fields
            .opt_string(map, path, "error")
            .map(|e| e.chars().take(MAX_LAST_ERROR_CHARS).collect());
        let at = fields
            .req_string(map, path, "at")
            .and_then(|text| match time::parse(&text) {
                Ok(at) => Some(at),
                Err(e) => {
                    fields.push(&join_key(path, "at"), e.to_string());
                    None
                }
            });
        let actions = match map.get("actions") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(actions) => read_action_counts(fields, actions, &join_key(path, "actions")),
        };
        let mut count = |key: &str| match map.get(key) {
            None | Some(Value::Null) => 0,
            Some(value) => value.as_u64().unwrap_or_else(|| {
                fields.push(
                    &join_key(path, key),
                    format!("expected a non-negative integer, found {}", describe(value)),
                );
                0
            }),
        };
        let events = count("events");
        let condition_errors = count("conditionErrors");
        if condition_errors > events {
            fields.push(
                &join_key(path, "conditionErrors"),
                format!("expected at most `events` ({events}), found {condition_errors}"),
            );
        }
        if fields.errors.len() > errors_before {
            return None;
        }
        Some(Self {
            version: version?,
            status: status?,
            error,
            at: at?,
            actions,
            events,
            condition_errors,
        })
    }
}

pub(super) fn read_action_counts(
    fields: &mut Fields,
    value: &Value,
    path: &str,
) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    let Value::Object(map) = value else {
        fields.push(
            path,
            format!("expected an object, found {}", describe(value)),
        );
        return counts;
    };
    if map.len() > MAX_ACK_ACTION_KINDS {
        fields.push(
            path,
            format!(
                "expected at most {MAX_ACK_ACTION_KINDS} action names, found {}",
                map.len()
            ),
        );
        return counts;
    }
    for (name, count) in map {
        let at = join_key(path, name);
        if name.is_empty() || name.chars().count() > MAX_ACK_ACTION_NAME_CHARS {
            fields.push(
                &at,
                format!("expected an action name of 1 to {MAX_ACK_ACTION_NAME_CHARS} characters"),
            );
            continue;
        }
        match count.as_u64() {
            Some(n) => {
                counts.insert(name.clone(), n);
            }
            None => fields.push(
                &at,
                format!("expected a non-negative integer, found {}", describe(count)),
            ),
        }
    }
    counts
}

/// An optional policy version field.
pub(super) fn version_field(
    fields: &mut Fields,
    map: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Option<PolicyVersion> {
    fields
        .opt_string(map, path, key)
        .and_then(|v| match v.parse::<PolicyVersion>() {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                fields.push(&join_key(path, key), error.to_string());
                None
            }
        })
}

/// The answer to a heartbeat: the version the agent reported and the org's latest.
///
/// As an answer the agent reads, it tolerates fields it does not know; `acceptsAcks` is how a
/// server announces that heartbeats may carry an [`ack`](HeartbeatRequest::ack).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatAnswer {
    /// The agent.
    pub agent_id: String,
    /// The version the agent reported (`null` when none).
    pub policy_version: Option<PolicyVersion>,
    /// The org's latest version, `null` when the org has no policy.
    pub current_policy_version: Option<PolicyVersion>,
    /// Whether the agent runs something other than the version the server means it to run.
    pub outdated: bool,
    /// The server reads [`HeartbeatRequest::ack`] (absent from older servers: `false`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accepts_acks: bool,
    /// The server reads [`HeartbeatRequest::shadow`] (absent from older servers: `false`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accepts_shadow: bool,
}
