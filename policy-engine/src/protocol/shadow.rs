//! Shadow runs on the wire: the `shadow` and `shadow_end` stream events (a version an agent
//! evaluates beside its enforced one and never executes), and the shadow report an agent adds
//! to its heartbeats (per-rule would-be action counts with bounded samples).
//!
//! ```text
//! event: shadow
//! data: {"shadow":3,"name":"...","rules":[...],"createdAt":"..."}
//!
//! event: shadow_end
//! data: {"shadow":3}
//! ```
//!
//! Neither event carries an SSE `id:` (an agent's last event id stays its policy version), and
//! an agent that does not know them ignores them as it ignores every unknown event name (see
//! the [compatibility rule](super#compatibility-rule)): it simply runs no shadow.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::agent::{read_action_counts, version_field};
use super::fields::Fields;
use super::time;
use crate::action::Action;
use crate::policy::json::{describe, join_index, join_key};
use crate::policy::{MAX_RULES, PolicyVersion};

/// SSE event name of [`ShadowEvent`].
pub const SHADOW_EVENT: &str = "shadow";
/// SSE event name of [`ShadowEndEvent`].
pub const SHADOW_END_EVENT: &str = "shadow_end";

/// Most samples an agent keeps (and reports) per rule: the latest ones.
pub const MAX_SHADOW_SAMPLES_PER_RULE: usize = 5;
/// Most samples in one [`ShadowReport`], over all rules and both sides.
pub const MAX_SHADOW_SAMPLES: usize = 200;
/// Longest sample target, in characters (longer ones are cut by the agent, refused by the
/// server).
pub const MAX_SHADOW_TARGET_CHARS: usize = 256;

/// The `data` of a `shadow` event: a version to evaluate beside the enforced one, on the same
/// events, executing nothing. `shadow` numbers the org's shadow runs (its own sequence, not a
/// policy version). The document (`name`, `description`, `rules`) is validated as strictly as
/// a `policy` event's; `R` is as in [`PolicyEvent`](super::PolicyEvent).
///
/// ```
/// use policy_engine::protocol::ShadowEvent;
/// let event: ShadowEvent = serde_json::from_str(
///     r#"{"shadow":3,"name":"p","rules":[],"createdAt":"2026-03-07T12:00:00.000Z","new":1}"#).unwrap();
/// assert_eq!(event.shadow, 3);
/// assert_eq!(event.into_document(), serde_json::json!({"name": "p", "rules": []}));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowEvent<R = Value> {
    /// The shadow run's number in its org.
    pub shadow: u64,
    /// Document: policy name.
    pub name: String,
    /// Document: description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Document: the rules, normalized.
    pub rules: Vec<R>,
    /// When the shadow run started.
    #[serde(
        default,
        with = "time::millis_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_at: Option<DateTime<Utc>>,
}

impl ShadowEvent {
    /// The policy document for [`Policy::from_value`](crate::Policy::from_value).
    pub fn into_document(self) -> Value {
        let mut document = Map::new();
        document.insert("name".to_owned(), Value::String(self.name));
        if let Some(description) = self.description {
            document.insert("description".to_owned(), Value::String(description));
        }
        document.insert("rules".to_owned(), Value::Array(self.rules));
        Value::Object(document)
    }
}

/// The `data` of a `shadow_end` event: stop running shadow `shadow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowEndEvent {
    /// The shadow run that ended.
    pub shadow: u64,
}

/// The `shadow` field of a heartbeat: what the agent's shadow evaluation counted since `since`
/// (the later of the enforced version's apply and the shadow run's start, so both sides cover
/// the same events). Sent only to a server that announced
/// [`HeartbeatAnswer::accepts_shadow`](super::HeartbeatAnswer::accepts_shadow), and only while
/// something runs in shadow (a shadow run, or a rule in shadow mode).
///
/// ```
/// use policy_engine::protocol::HeartbeatRequest;
/// let body = serde_json::json!({"policyVersion": "v2", "shadow": {
///     "since": "2026-03-07T12:00:00.000Z",
///     "enforced": {"version": "v2", "rules": [{"rule": 0, "actions": {"block_ip": 4},
///         "samples": [{"action": "block_ip", "target": "203.0.113.7", "at": "2026-03-07T12:00:01.000Z"}]}]},
///     "candidate": {"shadow": 3, "rules": [{"rule": 1, "actions": {"kill_process": 2}}]}}});
/// let report = HeartbeatRequest::from_value(&body).unwrap().shadow.unwrap();
/// assert_eq!(report.candidate.unwrap().rules[0].actions["kill_process"], 2);
/// let errors = HeartbeatRequest::from_value(&serde_json::json!({"shadow": {
///     "since": "2026-03-07T12:00:00.000Z", "enforced": {"version": "v2",
///     "rules": [{"rule": 1001, "actions": {}}]}}})).unwrap_err();
/// assert_eq!(errors[0].to_string(), "shadow.enforced.rules[0].rule: expected an integer from 0 to 999, found `1001`");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowReport {
    /// Start of the counted period (the agent's clock).
    #[serde(with = "time::millis")]
    pub since: DateTime<Utc>,
    /// The enforced version: per rule, the actions it emitted (executed for rules in enforce
    /// mode, would-be for rules in shadow mode); only its shadow-mode rules while no shadow
    /// run runs.
    pub enforced: EnforcedTally,
    /// The shadow run's would-be actions per rule, when one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<CandidateTally>,
}

/// The enforced side of a [`ShadowReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnforcedTally {
    /// The version the agent enforces.
    pub version: PolicyVersion,
    /// Rules that emitted something, by index.
    pub rules: Vec<RuleTally>,
}

/// The shadow-run side of a [`ShadowReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidateTally {
    /// The shadow run ([`ShadowEvent::shadow`]).
    pub shadow: u64,
    /// Rules that would have emitted something, by index.
    pub rules: Vec<RuleTally>,
}

/// One rule's actions in a period: counts by action name and the latest targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleTally {
    /// Rule index in its version.
    pub rule: usize,
    /// Actions by name (`block_ip`, `kill_process`, ...).
    pub actions: BTreeMap<String, u64>,
    /// The latest actions' targets, oldest first, at most [`MAX_SHADOW_SAMPLES_PER_RULE`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<ActionSample>,
}

/// One action of a [`RuleTally`]: its name, what it targets, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionSample {
    /// The action name.
    pub action: String,
    /// What it acts on ([`action_target`]).
    pub target: String,
    /// When it was emitted (the agent's clock).
    #[serde(with = "time::millis")]
    pub at: DateTime<Utc>,
}

/// What an action acts on, as one line: the address, the pid (with the process name), the
/// file, the host, the alert's severity, the custom action's name; an approval request's is its
/// request's.
///
/// ```
/// use policy_engine::Action;
/// use policy_engine::protocol::action_target;
/// let kill = Action::KillProcess { pid: 4242, process: Some("nc".into()) };
/// assert_eq!(action_target(&kill), "4242 (nc)");
/// ```
pub fn action_target(action: &Action) -> String {
    let target = match action {
        Action::BlockIp { ip, .. } => ip.to_string(),
        Action::Alert { severity, .. } => format!("severity {severity}"),
        Action::KillProcess { pid, process } => match process {
            Some(name) => format!("{pid} ({name})"),
            None => pid.to_string(),
        },
        Action::QuarantineFile { path } => path.clone(),
        Action::IsolateHost { host } => host.clone().unwrap_or_else(|| "this host".to_owned()),
        Action::ApprovalRequest { request } => action_target(request),
        Action::Custom { name, .. } => name.clone(),
    };
    target.chars().take(MAX_SHADOW_TARGET_CHARS).collect()
}

impl ShadowReport {
    /// Reads a report at `path`, strictly: unknown fields, rule indices past [`MAX_RULES`],
    /// a rule listed twice, more than [`MAX_SHADOW_SAMPLES_PER_RULE`] samples for a rule or
    /// [`MAX_SHADOW_SAMPLES`] in all, and over-long targets are errors with their paths.
    pub(super) fn read(fields: &mut Fields, value: &Value, path: &str) -> Option<Self> {
        let map = fields.object(value, path, &["since", "enforced", "candidate"])?;
        let before = fields.errors.len();
        let since = read_time(fields, map, path, "since");
        let mut samples = 0;
        let enforced = match map.get("enforced") {
            None | Some(Value::Null) => {
                fields.push(
                    &join_key(path, "enforced"),
                    "missing required field `enforced`",
                );
                None
            }
            Some(value) => {
                let at = join_key(path, "enforced");
                fields
                    .object(value, &at, &["version", "rules"])
                    .and_then(|side| {
                        let version = version_field(fields, side, &at, "version");
                        if matches!(side.get("version"), None | Some(Value::Null)) {
                            fields.push(
                                &join_key(&at, "version"),
                                "missing required field `version`",
                            );
                        }
                        let rules = read_rules(fields, side, &at, &mut samples);
                        Some(EnforcedTally {
                            version: version?,
                            rules,
                        })
                    })
            }
        };
        let candidate = match map.get("candidate") {
            None | Some(Value::Null) => None,
            Some(value) => {
                let at = join_key(path, "candidate");
                fields
                    .object(value, &at, &["shadow", "rules"])
                    .and_then(|side| {
                        let shadow = match side.get("shadow") {
                            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
                            other => {
                                fields.push(
                                    &join_key(&at, "shadow"),
                                    match other {
                                        None => "missing required field `shadow`".to_owned(),
                                        Some(v) => format!(
                                            "expected a non-negative integer, found {}",
                                            describe(v)
                                        ),
                                    },
                                );
                                None
                            }
                        };
                        let rules = read_rules(fields, side, &at, &mut samples);
                        Some(CandidateTally {
                            shadow: shadow?,
                            rules,
                        })
                    })
            }
        };
        if samples > MAX_SHADOW_SAMPLES {
            fields.push(
                path,
                format!("expected at most {MAX_SHADOW_SAMPLES} samples in all, found {samples}"),
            );
        }
        if fields.errors.len() > before {
            return None;
        }
        Some(Self {
            since: since?,
            enforced: enforced?,
            candidate,
        })
    }
}

fn read_time(
    fields: &mut Fields,
    map: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Option<DateTime<Utc>> {
    fields
        .req_string(map, path, key)
        .and_then(|text| match time::parse(&text) {
            Ok(at) => Some(at),
            Err(e) => {
                fields.push(&join_key(path, key), e.to_string());
                None
            }
        })
}

fn read_rules(
    fields: &mut Fields,
    side: &Map<String, Value>,
    path: &str,
    samples: &mut usize,
) -> Vec<RuleTally> {
    let at = join_key(path, "rules");
    let items = match side.get("rules") {
        Some(Value::Array(items)) => items,
        other => {
            fields.push(
                &at,
                match other {
                    None => "missing required field `rules`".to_owned(),
                    Some(v) => format!("expected an array, found {}", describe(v)),
                },
            );
            return Vec::new();
        }
    };
    if items.len() > MAX_RULES {
        fields.push(
            &at,
            format!("expected at most {MAX_RULES} rules, found {}", items.len()),
        );
        return Vec::new();
    }
    let mut rules: Vec<RuleTally> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let item_path = join_index(&at, index);
        let Some(map) = fields.object(item, &item_path, &["rule", "actions", "samples"]) else {
            continue;
        };
        let rule = match map.get("rule") {
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n < MAX_RULES as u64) => {
                n.as_u64().and_then(|n| usize::try_from(n).ok())
            }
            other => {
                fields.push(
                    &join_key(&item_path, "rule"),
                    match other {
                        None => "missing required field `rule`".to_owned(),
                        Some(v) => format!(
                            "expected an integer from 0 to {}, found {}",
                            MAX_RULES - 1,
                            describe(v)
                        ),
                    },
                );
                None
            }
        };
        if let Some(rule) = rule
            && rules.iter().any(|r| r.rule == rule)
        {
            fields.push(
                &join_key(&item_path, "rule"),
                format!("rule {rule} is listed twice"),
            );
        }
        let actions = match map.get("actions") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(actions) => read_action_counts(fields, actions, &join_key(&item_path, "actions")),
        };
        let taken = read_samples(fields, map, &item_path);
        *samples += taken.len();
        if let Some(rule) = rule {
            rules.push(RuleTally {
                rule,
                actions,
                samples: taken,
            });
        }
    }
    rules
}

fn read_samples(fields: &mut Fields, map: &Map<String, Value>, path: &str) -> Vec<ActionSample> {
    let at = join_key(path, "samples");
    let items = match map.get("samples") {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(other) => {
            fields.push(&at, format!("expected an array, found {}", describe(other)));
            return Vec::new();
        }
    };
    if items.len() > MAX_SHADOW_SAMPLES_PER_RULE {
        fields.push(
            &at,
            format!(
                "expected at most {MAX_SHADOW_SAMPLES_PER_RULE} samples, found {}",
                items.len()
            ),
        );
        return Vec::new();
    }
    let mut samples = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let item_path = join_index(&at, index);
        let Some(sample) = fields.object(item, &item_path, &["action", "target", "at"]) else {
            continue;
        };
        let action = fields.req_string(sample, &item_path, "action");
        let target = fields.req_string(sample, &item_path, "target");
        if let Some(text) = &target
            && text.chars().count() > MAX_SHADOW_TARGET_CHARS
        {
            fields.push(
                &join_key(&item_path, "target"),
                format!("expected at most {MAX_SHADOW_TARGET_CHARS} characters"),
            );
        }
        let at_time = read_time(fields, sample, &item_path, "at");
        if let (Some(action), Some(target), Some(at)) = (action, target, at_time) {
            samples.push(ActionSample { action, target, at });
        }
    }
    samples
}
