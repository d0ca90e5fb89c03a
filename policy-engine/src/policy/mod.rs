//! The policy document as validated domain types: parsing, validation and serialization.
//!
//! `bytes -> json::parse_strict -> validate -> Policy`, and `Policy -> wire -> JSON` back.

mod budgets;
mod duration;
mod error;
pub mod json;
mod schema;
mod validate;
pub mod wire;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use budgets::{
    Budget, Budgets, DEFAULT_BUDGETS, DEFAULT_FLEET_BUDGET, DEFAULT_ON_EXCEED, FleetBudget, Limit,
    MAX_BUDGET, OnExceed,
};
pub use duration::{DurationError, DurationUnit, MAX_DURATION, PolicyDuration};
pub use error::{PolicyError, ValidationError};
pub use json::{Collected, JsonError, JsonLimits, parse_collecting, parse_strict};
pub use schema::JSON_SCHEMA;

use crate::condition::Condition;
use crate::severity::Severity;

/// Most rules a policy may hold.
pub const MAX_RULES: usize = 1000;
/// Longest policy name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Largest `block_ip` threshold.
pub const MAX_THRESHOLD: u32 = 1_000_000;
/// Counting window of `block_ip` when the policy gives none.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);

/// A validated policy: every rule checked, every condition compiled.
///
/// ```
/// use policy_engine::{Policy, RuleKind};
/// let policy = Policy::from_json(br#"{
///   "name": "ssh",
///   "rules": [{"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 5,
///              "duration": "1h", "scope": "host"}}]
/// }"#).unwrap();
/// assert!(matches!(policy.rules[0].kind, RuleKind::BlockIp(_)));
/// assert!(policy.rules[0].enabled);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Human-readable name, 1 to 200 characters.
    pub name: String,
    /// Optional purpose.
    pub description: Option<String>,
    /// Organization the policy belongs to; `None` means the `default` org.
    pub org_id: Option<String>,
    /// The rules, in the order they are evaluated and their actions emitted.
    pub rules: Vec<Rule>,
    /// How many dangerous actions a host may take per window, and fleet blocks per org
    /// (defaults for whatever is left out).
    pub budgets: Budgets,
}

impl Policy {
    /// Parses and validates a policy document with the default [`JsonLimits`].
    pub fn from_json(input: &[u8]) -> Result<Self, PolicyError> {
        Self::from_json_with_limits(input, JsonLimits::default())
    }

    /// Parses and validates a policy document with explicit limits.
    ///
    /// Duplicate keys are reported together with every other error of the document (the
    /// document is validated with the first value of each duplicated key); syntax errors and
    /// the size, depth and string limits stop at once.
    pub fn from_json_with_limits(input: &[u8], limits: JsonLimits) -> Result<Self, PolicyError> {
        let parsed = json::parse_collecting(input, limits)
            .map_err(|e| PolicyError::single(e.into_validation_error()))?;
        with_duplicates(Self::from_value(&parsed.value), parsed.duplicates)
    }

    /// Validates an already parsed document. The size, depth and duplicate-key checks of
    /// [`Policy::from_json`] are not repeated here.
    pub fn from_value(value: &Value) -> Result<Self, PolicyError> {
        validate::policy(value)
    }

    /// The document form, with defaults filled in (see [`wire`]).
    pub fn to_document(&self) -> wire::PolicyDocument {
        wire::PolicyDocument::from(self)
    }

    /// The document as a JSON value.
    pub fn to_json_value(&self) -> Value {
        serde_json::to_value(self.to_document()).unwrap_or(Value::Null)
    }

    /// The org this policy belongs to (`default` when none is named).
    pub fn org(&self) -> &str {
        self.org_id.as_deref().unwrap_or(DEFAULT_ORG)
    }
}

/// `result` with the duplicate keys found while reading its document: they come first, then the
/// validation's own errors; a document valid but for its duplicates is still refused.
pub fn with_duplicates<T>(
    result: Result<T, PolicyError>,
    duplicates: Vec<ValidationError>,
) -> Result<T, PolicyError> {
    if duplicates.is_empty() {
        return result;
    }
    let mut errors = duplicates;
    if let Err(error) = result {
        errors.extend(error.errors);
    }
    Err(PolicyError { errors })
}

/// The org of policies and agents that name none.
pub const DEFAULT_ORG: &str = "default";

/// One rule of a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Disabled rules never fire.
    pub enabled: bool,
    /// Whether the rule's actions are carried out or only counted (`"mode"`, default enforce).
    pub mode: RuleMode,
    /// The rule type and its validated configuration.
    pub kind: RuleKind,
}

/// What happens to a rule's actions: carried out (`enforce`, the default), or evaluated on the
/// same events and only counted and reported as would-be actions (`shadow`), so a new rule can
/// be tried inside a live policy without acting.
///
/// ```
/// use policy_engine::{Policy, RuleMode};
/// let policy = Policy::from_json(br#"{"name": "p", "rules": [{"type": "auto_respond",
///   "mode": "shadow", "config": {"trigger": "malware", "action": "kill_process",
///   "minConfidence": 0.9}}]}"#).unwrap();
/// assert_eq!(policy.rules[0].mode, RuleMode::Shadow);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleMode {
    /// The rule's actions are executed.
    #[default]
    Enforce,
    /// The rule's actions are counted as would-be actions, never executed.
    Shadow,
}

impl RuleMode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Shadow => "shadow",
        }
    }

    /// Whether this is the default (`enforce`), which documents leave out.
    pub fn is_enforce(&self) -> bool {
        *self == Self::Enforce
    }
}

/// The four rule types of the API.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleKind {
    /// `block_ip`
    BlockIp(BlockIp),
    /// `alert_threshold`
    AlertThreshold(AlertThreshold),
    /// `auto_respond`
    AutoRespond(AutoRespond),
    /// `custom`
    Custom(CustomRule),
}

impl RuleKind {
    /// The `type` name used in JSON.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::BlockIp(_) => "block_ip",
            Self::AlertThreshold(_) => "alert_threshold",
            Self::AutoRespond(_) => "auto_respond",
            Self::Custom(_) => "custom",
        }
    }
}

/// Blocks source IPs that trigger a threat type `threshold` times within `window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockIp {
    /// Threat type that is counted.
    pub trigger: String,
    /// Events within the window that cause a block, 1 to 1,000,000.
    pub threshold: u32,
    /// How long the block lasts.
    pub duration: PolicyDuration,
    /// Local firewall or the whole fleet.
    pub scope: Scope,
    /// Counting window as written; `None` means the default of one hour.
    pub window: Option<PolicyDuration>,
}

impl BlockIp {
    /// The counting window, defaulting to one hour.
    pub fn window(&self) -> Duration {
        self.window
            .and_then(|w| w.as_duration())
            .unwrap_or(DEFAULT_WINDOW)
    }
}

/// Where a block applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The local firewall of the agent that saw the events.
    Host,
    /// Every agent of the org.
    Fleet,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Host => "host",
            Self::Fleet => "fleet",
        })
    }
}

/// Alerts when more than `count_per_hour` events of at least `severity` arrive in an hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertThreshold {
    /// Minimum severity counted.
    pub severity: Severity,
    /// The alert fires when the hourly count exceeds this.
    pub count_per_hour: u64,
    /// Channels to notify, as named in the server's configuration.
    pub notify_channels: Vec<String>,
}

/// Responds to a threat type with an action when the detector is confident enough.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoRespond {
    /// Threat type that triggers the response.
    pub trigger: String,
    /// What to do.
    pub action: ResponseAction,
    /// Lowest confidence, 0.0 to 1.0, that triggers it.
    pub min_confidence: f64,
    /// Ask an operator first instead of acting.
    pub require_approval: bool,
}

/// The built-in response actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseAction {
    /// Kill the event's process (`pid`).
    KillProcess,
    /// Quarantine the event's file (`filePath`).
    QuarantineFile,
    /// Block the event's source address (`srcIp`).
    BlockIp,
    /// Cut the host off the network except for the management server.
    IsolateHost,
}

impl ResponseAction {
    /// All built-in response actions.
    pub const ALL: [ResponseAction; 4] = [
        ResponseAction::KillProcess,
        ResponseAction::QuarantineFile,
        ResponseAction::BlockIp,
        ResponseAction::IsolateHost,
    ];

    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KillProcess => "kill_process",
            Self::QuarantineFile => "quarantine_file",
            Self::BlockIp => "block_ip",
            Self::IsolateHost => "isolate_host",
        }
    }
}

impl FromStr for ResponseAction {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|a| a.as_str() == s).ok_or(())
    }
}

impl fmt::Display for ResponseAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user-defined rule: a condition over the event and the action it triggers.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomRule {
    /// The compiled condition.
    pub condition: Condition,
    /// A built-in action name, `alert`, or any host-defined name.
    pub action: String,
    /// Extra parameters passed along with the action.
    pub params: Option<Map<String, Value>>,
}

/// A policy version as assigned by the server: `v1`, `v2`, ...
///
/// ```
/// use policy_engine::PolicyVersion;
/// let v: PolicyVersion = "v3".parse().unwrap();
/// assert_eq!(v.number(), 3);
/// assert_eq!(v.to_string(), "v3");
/// assert!(v > PolicyVersion::new(2));
/// // One spelling per version: what is read is written back the same.
/// for text in ["v03", "v", "3", "V3", "v+3", "v 3"] {
///     assert_eq!(
///         text.parse::<PolicyVersion>().unwrap_err().to_string(),
///         format!("expected a policy version like `v3`, found `{text}`")
///     );
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PolicyVersion(u64);

impl PolicyVersion {
    /// Version `n`.
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    /// The number after the `v`.
    pub const fn number(self) -> u64 {
        self.0
    }
}

impl fmt::Display for PolicyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// A string that is not `v` followed by a number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a policy version like `v3`, found `{0}`")]
pub struct PolicyVersionError(pub String);

impl FromStr for PolicyVersion {
    type Err = PolicyVersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix('v')
            .filter(|digits| {
                !digits.is_empty()
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && (*digits == "0" || !digits.starts_with('0'))
            })
            .and_then(|digits| digits.parse().ok())
            .map(Self)
            .ok_or_else(|| PolicyVersionError(s.to_owned()))
    }
}

impl Serialize for PolicyVersion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PolicyVersion {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
