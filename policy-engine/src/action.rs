//! Actions: what the engine decides, as typed values and as the contract's action JSON.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::policy::{PolicyDuration, PolicyVersion, Scope};
use crate::severity::Severity;

/// One thing to do on a host (CONTRACT section 4, "Action JSON").
///
/// ```
/// use policy_engine::{Action, PolicyDuration, Scope};
/// let action = Action::BlockIp {
///     ip: "203.0.113.7".parse().unwrap(),
///     duration: "24h".parse().unwrap(),
///     scope: Scope::Host,
/// };
/// assert_eq!(
///     serde_json::to_string(&action).unwrap(),
///     r#"{"action":"block_ip","ip":"203.0.113.7","duration":"24h","scope":"host"}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Block a source address.
    BlockIp {
        /// The address.
        ip: IpAddr,
        /// How long.
        duration: PolicyDuration,
        /// This host's firewall, or the whole fleet.
        scope: Scope,
    },
    /// Notify people.
    Alert {
        /// The rule's minimum severity.
        severity: Severity,
        /// Events counted in the last hour.
        count: u64,
        /// Channels to notify.
        channels: Vec<String>,
    },
    /// Terminate a process.
    KillProcess {
        /// Its PID.
        pid: u32,
        /// Its name as the event gave it, used to guard against PID reuse.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        process: Option<String>,
    },
    /// Move a file out of reach.
    QuarantineFile {
        /// Its path.
        path: String,
    },
    /// Cut the host off the network, except for the management server.
    IsolateHost {
        /// The host named by the event, if any (the agent isolates its own host).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
    },
    /// Ask an operator to approve `request` before it is executed.
    ApprovalRequest {
        /// The action awaiting approval.
        request: Box<Action>,
    },
    /// A host-defined action from a `custom` rule.
    Custom {
        /// The action name from the rule.
        name: String,
        /// The rule's `params`.
        #[serde(default)]
        params: Map<String, Value>,
    },
}

impl Action {
    /// The `action` tag.
    pub fn name(&self) -> &'static str {
        match self {
            Self::BlockIp { .. } => "block_ip",
            Self::Alert { .. } => "alert",
            Self::KillProcess { .. } => "kill_process",
            Self::QuarantineFile { .. } => "quarantine_file",
            Self::IsolateHost { .. } => "isolate_host",
            Self::ApprovalRequest { .. } => "approval_request",
            Self::Custom { .. } => "custom",
        }
    }
}

/// An action with where it came from: the rule index, the policy version and the event.
///
/// ```
/// use policy_engine::{Action, ActionRecord, PolicyVersion};
/// let record = ActionRecord {
///     action: Action::KillProcess { pid: 4242, process: None },
///     rule: 2,
///     policy_version: PolicyVersion::new(3),
///     event_id: Some("evt-1".into()),
/// };
/// assert_eq!(
///     serde_json::to_string(&record).unwrap(),
///     r#"{"action":"kill_process","pid":4242,"rule":2,"policyVersion":"v3","eventId":"evt-1"}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionRecord {
    /// What to do.
    #[serde(flatten)]
    pub action: Action,
    /// Index of the rule in the policy.
    pub rule: usize,
    /// Version of the policy that decided it.
    pub policy_version: PolicyVersion,
    /// `id` of the event that triggered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}
