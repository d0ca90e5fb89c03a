//! The body of `POST /api/agents/:id/reports`: an action record (CONTRACT section 4) that the
//! agent took or requests, plus what became of it.
//!
//! ```json
//! {"action":"block_ip","ip":"203.0.113.7","duration":"24h","scope":"fleet","rule":0,
//!  "policyVersion":"v3","eventId":"e-1","outcome":"executed","detail":"...","approvalId":"apr_..."}
//! ```
//! `outcome` defaults to `requested` for an `approval_request` and to `executed` otherwise;
//! `detail` is free text (an executor's message); `approvalId` ties the outcome of an approved
//! action to its approval.

use policy_engine::ActionRecord;
use serde_json::{Map, Value};

use crate::body::{Fields, describe, join_key};
use crate::error::ApiError;

/// What became of a reported action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Carried out.
    Executed,
    /// Tried, and the executor failed.
    Failed,
    /// Not carried out on purpose (an allowlisted address, an expired approval).
    Refused,
    /// Nothing to do (already blocked, unsupported on this host).
    Skipped,
    /// Waiting for someone (an approval request).
    Requested,
}

impl Outcome {
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

    const ALL: [Outcome; 5] = [
        Self::Executed,
        Self::Failed,
        Self::Refused,
        Self::Skipped,
        Self::Requested,
    ];
}

/// A validated report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The action with its rule, policy version and event.
    pub record: ActionRecord,
    /// What became of it.
    pub outcome: Outcome,
    /// Free text from the agent.
    pub detail: Option<String>,
    /// The approval this action was executed under.
    pub approval_id: Option<String>,
}

/// Longest `detail` kept, in characters.
const MAX_DETAIL_CHARS: usize = 2000;

const EXTRA_FIELDS: [&str; 3] = ["outcome", "detail", "approvalId"];

/// Validates a report body (already strict-parsed JSON).
pub fn parse(value: &Value) -> Result<Report, ApiError> {
    let Value::Object(map) = value else {
        return Err(ApiError::invalid(
            "",
            format!("expected an object, found {}", describe(value)),
        ));
    };
    let mut fields = Fields::default();
    let outcome = match fields.opt_string(map, "", "outcome") {
        Some(name) => match Outcome::ALL.iter().find(|o| o.as_str() == name) {
            Some(outcome) => Some(*outcome),
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
        },
        None => None,
    };
    let detail = fields
        .opt_string(map, "", "detail")
        .map(|d| d.chars().take(MAX_DETAIL_CHARS).collect());
    let approval_id = fields.opt_string(map, "", "approvalId");
    let rest: Map<String, Value> = map
        .iter()
        .filter(|(k, _)| !EXTRA_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let record = match serde_json::from_value::<ActionRecord>(Value::Object(rest.clone())) {
        Ok(record) => {
            let back = serde_json::to_value(&record).unwrap_or(Value::Null);
            unknown_keys(&Value::Object(rest), &back, "", &mut fields);
            Some(record)
        }
        Err(error) => {
            let message = error.to_string();
            let path = missing_field(&message).unwrap_or_default();
            fields.push(&path, format!("invalid action record: {message}"));
            None
        }
    };
    fields.finish()?;
    let record = record.ok_or_else(|| ApiError::invalid("", "invalid action record"))?;
    let outcome = outcome.unwrap_or(match record.action {
        policy_engine::Action::ApprovalRequest { .. } => Outcome::Requested,
        _ => Outcome::Executed,
    });
    Ok(Report {
        record,
        outcome,
        detail,
        approval_id,
    })
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

fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next().map(str::to_owned)
}
