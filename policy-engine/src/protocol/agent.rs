//! An agent's own endpoints: enrollment (`POST /api/agents/enroll`, by an admin for the agent),
//! identity (`GET /api/agents/me`) and heartbeat (`POST /api/agents/:id/heartbeat`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::fields::{Fields, org_field};
use crate::policy::{PolicyVersion, ValidationError};

/// Longest hostname accepted at enrollment, in characters.
pub const MAX_HOSTNAME_CHARS: usize = 255;

/// Longest `lastError` kept from a heartbeat, in characters (the rest is cut off).
pub const MAX_LAST_ERROR_CHARS: usize = 2000;

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

/// `POST /api/agents/:id/heartbeat` body: `{"policyVersion": "v2"?, "lastError": "..."?}`.
/// Both fields may be absent (an agent without a policy, without an error). Written by the
/// agent, read by the server strictly.
///
/// ```
/// use policy_engine::PolicyVersion;
/// use policy_engine::protocol::HeartbeatRequest;
/// let request = HeartbeatRequest { policy_version: Some(PolicyVersion::new(2)), last_error: None };
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
}

impl HeartbeatRequest {
    /// Reads and validates a body; `lastError` is cut to [`MAX_LAST_ERROR_CHARS`].
    pub fn from_value(value: &Value) -> Result<Self, Vec<ValidationError>> {
        let mut fields = Fields::default();
        let (policy_version, last_error) =
            match fields.object(value, "", &["policyVersion", "lastError"]) {
                Some(map) => {
                    let version =
                        fields
                            .opt_string(map, "", "policyVersion")
                            .and_then(|v| match v.parse::<PolicyVersion>() {
                                Ok(parsed) => Some(parsed),
                                Err(error) => {
                                    fields.push("policyVersion", error.to_string());
                                    None
                                }
                            });
                    let last_error = fields
                        .opt_string(map, "", "lastError")
                        .map(|e| e.chars().take(MAX_LAST_ERROR_CHARS).collect());
                    (version, last_error)
                }
                None => (None, None),
            };
        fields.finish()?;
        Ok(Self {
            policy_version,
            last_error,
        })
    }
}

/// The answer to a heartbeat: the version the agent reported and the org's latest.
///
/// A later protocol version adds per-version acknowledgements here; as an answer the agent
/// reads, it tolerates fields it does not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatAnswer {
    /// The agent.
    pub agent_id: String,
    /// The version the agent reported (`null` when none).
    pub policy_version: Option<PolicyVersion>,
    /// The org's latest version, `null` when the org has no policy.
    pub current_policy_version: Option<PolicyVersion>,
    /// Whether the agent runs something other than the latest version.
    pub outdated: bool,
}
