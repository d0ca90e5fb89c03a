//! Reports: `POST /api/agents/:id/reports`, an action the agent took or requests and what became
//! of it, and the server's answer.
//!
//! ```json
//! {"action":"block_ip","ip":"203.0.113.7","duration":"24h","scope":"fleet","rule":0,
//!  "policyVersion":"v3","eventId":"e-1","outcome":"executed","detail":"...",
//!  "approvalId":"apr_...","reportId":"rpt_0f3a..."}
//! ```
//!
//! `reportId` makes a report idempotent: the server remembers the ids it acted on (per agent)
//! and answers a repeated report with the original answer instead of acting twice, so an agent
//! may resend a report until it sees the answer (its durable outbox does).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Outcome;
use super::fields::Fields;
use super::views::{ApprovalView, BlockView};
use crate::action::{Action, ActionRecord};
use crate::policy::ValidationError;
use crate::policy::json::{describe, join_key};

/// Longest `detail` kept, in characters (the rest is cut off).
pub const MAX_DETAIL_CHARS: usize = 2000;

/// Longest report id, in characters.
pub const MAX_REPORT_ID_CHARS: usize = 64;

/// What became of a reported action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportOutcome {
    /// Carried out.
    Executed,
    /// Tried, and the executor failed.
    Failed,
    /// Not carried out on purpose (an allowlisted address, an expired approval).
    Refused,
    /// Nothing to do (already blocked, unsupported on this host, a dry run).
    Skipped,
    /// Waiting for someone (an approval request).
    Requested,
}

impl ReportOutcome {
    /// Every outcome.
    pub const ALL: [Self; 5] = [
        Self::Executed,
        Self::Failed,
        Self::Refused,
        Self::Skipped,
        Self::Requested,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Executed => "executed",
            Self::Failed => "failed",
            Self::Refused => "refused",
            Self::Skipped => "skipped",
            Self::Requested => "requested",
        }
    }

    /// The outcome of a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == name)
    }

    /// The outcome assumed when a report names none: `requested` for an `approval_request`,
    /// `executed` otherwise.
    pub fn default_for(action: &Action) -> Self {
        match action {
            Action::ApprovalRequest { .. } => Self::Requested,
            _ => Self::Executed,
        }
    }
}

impl From<&Outcome> for ReportOutcome {
    /// An executor's outcome as reported: done is `executed`.
    fn from(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Done { .. } => Self::Executed,
            Outcome::Skipped { .. } => Self::Skipped,
            Outcome::Failed { .. } => Self::Failed,
        }
    }
}

/// A client-generated idempotency key: 1 to 64 ASCII letters, digits, `-`, `_`, `.` or `:`.
///
/// ```
/// use policy_engine::protocol::ReportId;
/// let id: ReportId = "rpt_0f3a9c".parse().unwrap();
/// assert_eq!(id.as_str(), "rpt_0f3a9c");
/// assert_eq!(
///     "a b".parse::<ReportId>().unwrap_err().to_string(),
///     "expected 1 to 64 letters, digits, `-`, `_`, `.` or `:`, found `a b`"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReportId(String);

/// A string that is not a valid report id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected 1 to 64 letters, digits, `-`, `_`, `.` or `:`, found `{0}`")]
pub struct ReportIdError(pub String);

impl ReportId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ReportId {
    type Err = ReportIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        check_id(s).map(|()| Self(s.to_owned()))
    }
}

/// An id an agent sends (a report id, an approval id): 1 to [`MAX_REPORT_ID_CHARS`] ASCII
/// letters, digits, `-`, `_`, `.` or `:`.
fn check_id(s: &str) -> Result<(), ReportIdError> {
    let valid = !s.is_empty()
        && s.chars().count() <= MAX_REPORT_ID_CHARS
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if valid {
        Ok(())
    } else {
        Err(ReportIdError(
            s.chars().take(MAX_REPORT_ID_CHARS + 1).collect(),
        ))
    }
}

impl fmt::Display for ReportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ReportId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ReportId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The body of `POST /api/agents/:id/reports`: an action record (CONTRACT section 4) and what
/// became of it. Written by the agent, read by the server strictly with
/// [`Report::from_value`] (unknown fields are refused with their path).
///
/// ```
/// use policy_engine::protocol::{Report, ReportOutcome};
/// let body = serde_json::json!({"action":"kill_process","pid":4242,"rule":2,"policyVersion":"v3",
///                               "outcome":"failed","detail":"no such process","reportId":"r-1"});
/// let report = Report::from_value(&body).unwrap();
/// assert_eq!(report.outcome(), ReportOutcome::Failed);
/// assert_eq!(serde_json::to_value(&report).unwrap(), body);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The action with its rule, policy version and event.
    #[serde(flatten)]
    pub record: ActionRecord,
    /// What became of it; absent means [`ReportOutcome::default_for`] the action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<ReportOutcome>,
    /// Free text (the executor's message), at most [`MAX_DETAIL_CHARS`] kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The approval this action was executed under (the report closes it); an id as the
    /// server gave it (`apr_...`, checked like a report id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// Idempotency key: a repeated report with the same id is answered, not acted on again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_id: Option<ReportId>,
}

/// The report's own fields beside those of the action record.
const REPORT_FIELDS: [&str; 4] = ["outcome", "detail", "approvalId", "reportId"];

impl Report {
    /// The report of `record` with the executor's `outcome` (its message as `detail`).
    pub fn of(record: ActionRecord, outcome: &Outcome) -> Self {
        Self {
            record,
            outcome: Some(ReportOutcome::from(outcome)),
            detail: Some(outcome.message().to_owned()),
            approval_id: None,
            report_id: None,
        }
    }

    /// The outcome, with the default for the action when the report names none.
    pub fn outcome(&self) -> ReportOutcome {
        self.outcome
            .unwrap_or_else(|| ReportOutcome::default_for(&self.record.action))
    }

    /// Reads and validates a report body (already strict-parsed JSON): every error with its
    /// path; unknown fields (a typo such as `scpoe`) are errors; `detail` is cut to
    /// [`MAX_DETAIL_CHARS`].
    pub fn from_value(value: &Value) -> Result<Self, Vec<ValidationError>> {
        let Value::Object(map) = value else {
            return Err(vec![ValidationError::new(
                "",
                format!("expected an object, found {}", describe(value)),
            )]);
        };
        let mut fields = Fields::default();
        let outcome = fields.opt_string(map, "", "outcome").and_then(|name| {
            match ReportOutcome::parse(&name) {
                Some(outcome) => Some(outcome),
                None => {
                    fields.push(
                        "outcome",
                        format!(
                            "unknown outcome `{name}`, expected one of `executed`, `failed`, \
                             `refused`, `skipped`, `requested`"
                        ),
                    );
                    None
                }
            }
        });
        let detail = fields
            .opt_string(map, "", "detail")
            .map(|d| d.chars().take(MAX_DETAIL_CHARS).collect());
        let approval_id =
            fields
                .opt_string(map, "", "approvalId")
                .and_then(|id| match check_id(&id) {
                    Ok(()) => Some(id),
                    Err(error) => {
                        fields.push("approvalId", error.to_string());
                        None
                    }
                });
        let report_id =
            fields
                .opt_string(map, "", "reportId")
                .and_then(|id| match id.parse::<ReportId>() {
                    Ok(id) => Some(id),
                    Err(error) => {
                        fields.push("reportId", error.to_string());
                        None
                    }
                });
        let rest: Map<String, Value> = map
            .iter()
            .filter(|(k, _)| !REPORT_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let rest = Value::Object(rest);
        let record = match serde_json::from_value::<ActionRecord>(rest.clone()) {
            Ok(mut record) => {
                let back = serde_json::to_value(&record).unwrap_or(Value::Null);
                unknown_keys(&rest, &back, "", &mut fields);
                canonical_addresses(&mut record.action);
                Some(record)
            }
            Err(error) => {
                // The typed reader stops at the first bad value and names no field: each
                // field is read on its own for its path, every bad one reported.
                let before = fields.errors.len();
                if let Value::Object(record) = &rest {
                    field_errors(record, "", true, &mut fields);
                }
                if fields.errors.len() == before {
                    let message = error.to_string();
                    let path = missing_field(&message).unwrap_or_default();
                    fields.push(&path, format!("invalid action record: {message}"));
                }
                None
            }
        };
        fields.finish()?;
        let record =
            record.ok_or_else(|| vec![ValidationError::new("", "invalid action record")])?;
        Ok(Self {
            record,
            outcome,
            detail,
            approval_id,
            report_id,
        })
    }
}

/// Keys of `input` that the typed record dropped: unknown fields (a typo must not vanish).
/// `params` of a custom action are free-form and not checked.
fn unknown_keys(input: &Value, parsed: &Value, path: &str, fields: &mut Fields) {
    let (Value::Object(input), Value::Object(parsed)) = (input, parsed) else {
        return;
    };
    for (key, value) in input {
        let here = join_key(path, key);
        match parsed.get(key) {
            None if value.is_null() => {}
            None => fields.push(&here, format!("unknown field `{key}`")),
            Some(inner) if key != "params" => unknown_keys(value, inner, &here, fields),
            Some(_) => {}
        }
    }
}

/// The action names of [`Action`].
const ACTIONS: [&str; 7] = [
    "block_ip",
    "alert",
    "kill_process",
    "quarantine_file",
    "isolate_host",
    "approval_request",
    "custom",
];

/// The errors of an action record's fields (under `path`), each read as its own type: what
/// the typed reader refused, with the field's path. `record` is false inside a request, whose
/// action has no `rule` or `policyVersion` of its own. Unknown and missing fields are the
/// reader's to report.
fn field_errors(map: &Map<String, Value>, path: &str, record: bool, fields: &mut Fields) {
    fn read<T: serde::de::DeserializeOwned>(value: &Value) -> Result<(), String> {
        serde_json::from_value::<T>(value.clone())
            .map(drop)
            .map_err(|e| e.to_string())
    }
    /// `read`, with `expected` said instead of the type's name.
    fn read_as<T: serde::de::DeserializeOwned>(
        value: &Value,
        expected: &str,
    ) -> Result<(), String> {
        read::<T>(value).map_err(|_| format!("expected {expected}, found {}", describe(value)))
    }
    for (key, value) in map {
        let checked = match key.as_str() {
            "action" => match value.as_str() {
                Some(name) if ACTIONS.contains(&name) => Ok(()),
                Some(name) => Err(format!(
                    "unknown action `{name}`, expected one of `{}`",
                    ACTIONS.join("`, `")
                )),
                None => Err(format!(
                    "expected an action name, found {}",
                    describe(value)
                )),
            },
            "ip" => read_as::<std::net::IpAddr>(value, "an IP address"),
            "duration" => read::<crate::policy::PolicyDuration>(value),
            "scope" => read::<crate::policy::Scope>(value),
            "severity" => read::<crate::Severity>(value),
            "count" => read_as::<u64>(value, "a non-negative integer"),
            "channels" => read::<Vec<String>>(value),
            "pid" => read_as::<u32>(value, "a process id from 0 to 4294967295"),
            "process" | "path" | "host" | "name" => read::<String>(value),
            "params" => read::<Map<String, Value>>(value),
            "request" => match value {
                Value::Object(inner) => {
                    field_errors(inner, &join_key(path, "request"), false, fields);
                    Ok(())
                }
                other => Err(format!(
                    "expected an action object, found {}",
                    describe(other)
                )),
            },
            "rule" if record => read_as::<usize>(value, "a rule index (a non-negative integer)"),
            "policyVersion" if record => read::<crate::PolicyVersion>(value),
            "eventId" if record => read::<Option<String>>(value),
            _ => Ok(()),
        };
        if let Err(message) = checked {
            fields.push(&join_key(path, key), message);
        }
    }
}

/// `::ffff:a.b.c.d` is the IPv4 address a.b.c.d (CONTRACT section 2): a block of either form
/// is one block.
fn canonical_addresses(action: &mut Action) {
    match action {
        Action::BlockIp { ip, .. } => *ip = crate::event::canonical_ip(*ip),
        Action::ApprovalRequest { request } => canonical_addresses(request),
        _ => {}
    }
}

fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next().map(str::to_owned)
}

/// What the server did with a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// A fleet-scope `block_ip` executed: a fleet block (new, extended or a duplicate).
    FleetBlock,
    /// An `approval_request`: a stored approval request.
    ApprovalRequest,
    /// An `alert`: deliveries queued to its channels.
    Alert,
    /// A report with `approvalId`: the approval's outcome.
    ApprovalOutcome,
    /// Anything else: recorded in the audit.
    Recorded,
}

impl ReportKind {
    /// Every kind.
    pub const ALL: [Self; 5] = [
        Self::FleetBlock,
        Self::ApprovalRequest,
        Self::Alert,
        Self::ApprovalOutcome,
        Self::Recorded,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FleetBlock => "fleet_block",
            Self::ApprovalRequest => "approval_request",
            Self::Alert => "alert",
            Self::ApprovalOutcome => "approval_outcome",
            Self::Recorded => "recorded",
        }
    }

    /// The kind of a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// The answer to a report (201).
///
/// ```
/// use policy_engine::protocol::{ReportAnswer, ReportKind};
/// let answer = ReportAnswer::of(ReportKind::Recorded, Some("r-1".parse().unwrap()));
/// assert_eq!(
///     serde_json::to_string(&answer).unwrap(),
///     r#"{"kind":"recorded","reportId":"r-1"}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportAnswer {
    /// What the server did.
    pub kind: ReportKind,
    /// The fleet block now in force (`fleet_block`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<BlockView>,
    /// Whether the report created or extended the block, else a duplicate (`fleet_block`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    /// Streams the `block` event was queued to (`fleet_block`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcasted_to: Option<usize>,
    /// The stored approval request (`approval_request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalView>,
    /// Channels a delivery was queued to (`alert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notified: Option<Vec<String>>,
    /// The report's id, acknowledged: the agent may forget the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_id: Option<ReportId>,
}

impl ReportAnswer {
    /// An answer of `kind` with nothing else but the acknowledged id.
    pub fn of(kind: ReportKind, report_id: Option<ReportId>) -> Self {
        Self {
            kind,
            block: None,
            changed: None,
            broadcasted_to: None,
            approval: None,
            notified: None,
            report_id,
        }
    }
}
