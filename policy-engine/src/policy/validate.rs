//! Validation of a parsed document into domain types, collecting every error with its path.

use serde_json::{Map, Value};

use super::json::{describe, join_index, join_key};
use super::{
    AlertThreshold, AutoRespond, BlockIp, Budget, Budgets, CustomRule, FleetBudget, MAX_BUDGET,
    MAX_NAME_CHARS, MAX_RULES, MAX_THRESHOLD, OnExceed, Policy, PolicyDuration, PolicyError,
    ResponseAction, Rule, RuleKind, RuleMode, Scope, ValidationError,
};
use crate::condition::{Condition, RegexBudget};
use crate::severity::Severity;

const POLICY_FIELDS: &[&str] = &["name", "description", "rules", "org_id", "orgId", "budgets"];
const RULE_FIELDS: &[&str] = &["type", "config", "enabled", "mode"];
const RULE_TYPES: &[&str] = &["block_ip", "alert_threshold", "auto_respond", "custom"];
const BLOCK_IP_FIELDS: &[&str] = &["trigger", "threshold", "duration", "scope", "window"];
const ALERT_FIELDS: &[&str] = &["severity", "countPerHour", "notifyChannels"];
const AUTO_RESPOND_FIELDS: &[&str] = &["trigger", "action", "minConfidence", "requireApproval"];
const CUSTOM_FIELDS: &[&str] = &["condition", "action", "params"];
const BUDGETS_FIELDS: &[&str] = &[
    "onExceed",
    "kill_process",
    "quarantine_file",
    "isolate_host",
    "block_ip",
    "fleet_block",
];
const BUDGET_FIELDS: &[&str] = &["max", "window", "onExceed"];
const FLEET_BUDGET_FIELDS: &[&str] = &["max", "window"];
const MAX_ORG_ID_CHARS: usize = 64;

pub(super) fn policy(value: &Value) -> Result<Policy, PolicyError> {
    let mut errors = Errors::default();
    let Some(root) = errors.object(value, "") else {
        return Err(errors.into_error());
    };
    let fields = Fields::new(root, "", POLICY_FIELDS, &mut errors);

    let name = fields.required("name", &mut errors).and_then(|(v, path)| {
        let name = errors.string(v, &path)?;
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_NAME_CHARS {
            errors.push(
                &path,
                format!("expected 1 to {MAX_NAME_CHARS} characters, found {chars}"),
            );
            return None;
        }
        if name.trim().is_empty() {
            errors.push(
                &path,
                "expected a name with a visible character, found only whitespace",
            );
            return None;
        }
        Some(name.to_owned())
    });
    let description = fields
        .optional("description")
        .and_then(|(v, path)| errors.string(v, &path).map(str::to_owned));
    let org_id = org_id(&fields, &mut errors);
    let rules = fields
        .required("rules", &mut errors)
        .and_then(|(v, path)| rules(v, &path, &mut errors, &mut RegexBudget::default()));
    let budgets = match fields.optional("budgets") {
        Some((v, path)) => budgets(v, &path, &mut errors),
        None => Some(Budgets::default()),
    };

    match (name, rules, budgets, errors.is_empty()) {
        (Some(name), Some(rules), Some(budgets), true) => Ok(Policy {
            name,
            description,
            org_id,
            rules,
            budgets,
        }),
        _ => Err(errors.into_error()),
    }
}

fn org_id(fields: &Fields<'_>, errors: &mut Errors) -> Option<String> {
    let snake = fields.optional("org_id");
    let camel = fields.optional("orgId");
    if let (Some(_), Some((_, path))) = (&snake, &camel) {
        errors.push(
            path,
            "`org_id` and its alias `orgId` are both given; use one",
        );
        return None;
    }
    let (value, path) = snake.or(camel)?;
    let id = errors.string(value, &path)?;
    let valid_chars = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if id.is_empty() || id.chars().count() > MAX_ORG_ID_CHARS || !valid_chars {
        errors.push(
            &path,
            format!(
                "expected 1 to {MAX_ORG_ID_CHARS} letters, digits, `-`, `_` or `.`, found `{id}`"
            ),
        );
        return None;
    }
    Some(id.to_owned())
}

/// The rules at `path`; their conditions' regular expressions share `budget`.
fn rules(
    value: &Value,
    path: &str,
    errors: &mut Errors,
    budget: &mut RegexBudget,
) -> Option<Vec<Rule>> {
    let Value::Array(items) = value else {
        errors.push(
            path,
            format!("expected an array of rules, found {}", describe(value)),
        );
        return None;
    };
    if items.is_empty() || items.len() > MAX_RULES {
        errors.push(
            path,
            format!("expected 1 to {MAX_RULES} rules, found {}", items.len()),
        );
        return None;
    }
    let mut rules = Vec::with_capacity(items.len());
    let mut ok = true;
    for (index, item) in items.iter().enumerate() {
        match rule(item, &join_index(path, index), errors, budget) {
            Some(rule) => rules.push(rule),
            None => ok = false,
        }
    }
    ok.then_some(rules)
}

fn rule(value: &Value, path: &str, errors: &mut Errors, budget: &mut RegexBudget) -> Option<Rule> {
    let object = errors.object(value, path)?;
    let fields = Fields::new(object, path, RULE_FIELDS, errors);
    let enabled = match fields.optional("enabled") {
        Some((v, p)) => errors.boolean(v, &p),
        None => Some(true),
    };
    let mode = match fields.optional("mode") {
        Some((v, p)) => errors.string(v, &p).and_then(|name| match name {
            "enforce" => Some(RuleMode::Enforce),
            "shadow" => Some(RuleMode::Shadow),
            other => {
                errors.push(
                    &p,
                    format!("unknown mode `{other}`, expected `enforce` or `shadow`"),
                );
                None
            }
        }),
        None => Some(RuleMode::Enforce),
    };
    let rule_type = fields.required("type", errors).and_then(|(v, p)| {
        let name = errors.string(v, &p)?;
        if RULE_TYPES.contains(&name) {
            Some(name)
        } else {
            errors.push(
                &p,
                format!(
                    "unknown rule type `{name}`, expected one of {}",
                    one_of(RULE_TYPES)
                ),
            );
            None
        }
    });
    let config = fields.required("config", errors);
    let (rule_type, (config, config_path)) = (rule_type?, config?);
    let config = errors.object(config, &config_path)?;
    let kind = match rule_type {
        "block_ip" => block_ip(config, &config_path, errors).map(RuleKind::BlockIp),
        "alert_threshold" => {
            alert_threshold(config, &config_path, errors).map(RuleKind::AlertThreshold)
        }
        "auto_respond" => auto_respond(config, &config_path, errors).map(RuleKind::AutoRespond),
        _ => custom(config, &config_path, errors, budget).map(RuleKind::Custom),
    };
    Some(Rule {
        enabled: enabled?,
        mode: mode?,
        kind: kind?,
    })
}

fn block_ip(config: &Map<String, Value>, path: &str, errors: &mut Errors) -> Option<BlockIp> {
    let fields = Fields::new(config, path, BLOCK_IP_FIELDS, errors);
    let trigger = fields
        .required("trigger", errors)
        .and_then(|(v, p)| errors.non_empty_string(v, &p));
    let threshold = fields.required("threshold", errors).and_then(|(v, p)| {
        errors
            .integer(v, &p, 1, u64::from(MAX_THRESHOLD))
            .and_then(|n| u32::try_from(n).ok())
    });
    let duration = fields
        .required("duration", errors)
        .and_then(|(v, p)| errors.duration(v, &p));
    let scope = fields
        .required("scope", errors)
        .and_then(|(v, p)| match errors.string(v, &p)? {
            "host" => Some(Scope::Host),
            "fleet" => Some(Scope::Fleet),
            other => {
                errors.push(&p, format!("expected `host` or `fleet`, found `{other}`"));
                None
            }
        });
    let window = match fields.optional("window") {
        Some((v, p)) => match errors.duration(v, &p)? {
            PolicyDuration::Permanent => {
                errors.push(&p, "the counting window must be finite, found `permanent`");
                return None;
            }
            finite => Some(finite),
        },
        None => None,
    };
    Some(BlockIp {
        trigger: trigger?,
        threshold: threshold?,
        duration: duration?,
        scope: scope?,
        window,
    })
}

fn alert_threshold(
    config: &Map<String, Value>,
    path: &str,
    errors: &mut Errors,
) -> Option<AlertThreshold> {
    let fields = Fields::new(config, path, ALERT_FIELDS, errors);
    let severity = fields.required("severity", errors).and_then(|(v, p)| {
        let text = errors.string(v, &p)?;
        match text.parse::<Severity>() {
            Ok(severity) => Some(severity),
            Err(err) => {
                errors.push(&p, err.to_string());
                None
            }
        }
    });
    let count_per_hour = fields
        .required("countPerHour", errors)
        .and_then(|(v, p)| errors.integer(v, &p, 1, u32::MAX.into()));
    let notify_channels = fields
        .required("notifyChannels", errors)
        .and_then(|(v, p)| {
            let Value::Array(items) = v else {
                errors.push(
                    &p,
                    format!(
                        "expected a non-empty array of channel names, found {}",
                        describe(v)
                    ),
                );
                return None;
            };
            if items.is_empty() {
                errors.push(
                    &p,
                    "expected at least one channel name, found an empty array",
                );
                return None;
            }
            let mut channels = Vec::with_capacity(items.len());
            let mut ok = true;
            for (index, item) in items.iter().enumerate() {
                match errors.non_empty_string(item, &join_index(&p, index)) {
                    Some(name) => channels.push(name),
                    None => ok = false,
                }
            }
            ok.then_some(channels)
        });
    Some(AlertThreshold {
        severity: severity?,
        count_per_hour: count_per_hour?,
        notify_channels: notify_channels?,
    })
}

fn auto_respond(
    config: &Map<String, Value>,
    path: &str,
    errors: &mut Errors,
) -> Option<AutoRespond> {
    let fields = Fields::new(config, path, AUTO_RESPOND_FIELDS, errors);
    let trigger = fields
        .required("trigger", errors)
        .and_then(|(v, p)| errors.non_empty_string(v, &p));
    let action = fields.required("action", errors).and_then(|(v, p)| {
        let name = errors.string(v, &p)?;
        match name.parse::<ResponseAction>() {
            Ok(action) => Some(action),
            Err(()) => {
                let names: Vec<&str> = ResponseAction::ALL.iter().map(|a| a.as_str()).collect();
                errors.push(
                    &p,
                    format!(
                        "unknown action `{name}`, expected one of {}",
                        one_of(&names)
                    ),
                );
                None
            }
        }
    });
    let min_confidence =
        fields
            .required("minConfidence", errors)
            .and_then(|(v, p)| match v.as_f64() {
                Some(n) if (0.0..=1.0).contains(&n) => Some(n),
                _ => {
                    errors.push(
                        &p,
                        format!("expected a number from 0.0 to 1.0, found {}", describe(v)),
                    );
                    None
                }
            });
    let require_approval = match fields.optional("requireApproval") {
        Some((v, p)) => errors.boolean(v, &p),
        None => Some(false),
    };
    Some(AutoRespond {
        trigger: trigger?,
        action: action?,
        min_confidence: min_confidence?,
        require_approval: require_approval?,
    })
}

fn custom(
    config: &Map<String, Value>,
    path: &str,
    errors: &mut Errors,
    budget: &mut RegexBudget,
) -> Option<CustomRule> {
    let fields = Fields::new(config, path, CUSTOM_FIELDS, errors);
    let condition = fields.required("condition", errors).and_then(|(v, p)| {
        let source = errors.string(v, &p)?;
        match Condition::compile_within(source, budget) {
            Ok(condition) => Some(condition),
            Err(err) => {
                errors.push(&p, err.to_string());
                None
            }
        }
    });
    let action = fields
        .required("action", errors)
        .and_then(|(v, p)| errors.non_empty_string(v, &p));
    let params = match fields.optional("params") {
        Some((Value::Object(map), _)) => Some(Some(map.clone())),
        Some((v, p)) => {
            errors.push(&p, format!("expected an object, found {}", describe(v)));
            None
        }
        None => Some(None),
    };
    Some(CustomRule {
        condition: condition?,
        action: action?,
        params: params?,
    })
}

fn budgets(value: &Value, path: &str, errors: &mut Errors) -> Option<Budgets> {
    let object = errors.object(value, path)?;
    let fields = Fields::new(object, path, BUDGETS_FIELDS, errors);
    let on_exceed = match fields.optional("onExceed") {
        Some((v, p)) => errors.on_exceed(v, &p).map(Some),
        None => Some(None),
    };
    let mut action = |name: &str| match fields.optional(name) {
        Some((v, p)) => budget(v, &p, errors).map(Some),
        None => Some(None),
    };
    let kill_process = action("kill_process");
    let quarantine_file = action("quarantine_file");
    let isolate_host = action("isolate_host");
    let block_ip = action("block_ip");
    let fleet_block = match fields.optional("fleet_block") {
        Some((v, p)) => fleet_budget(v, &p, errors).map(Some),
        None => Some(None),
    };
    Some(Budgets {
        on_exceed: on_exceed?,
        kill_process: kill_process?,
        quarantine_file: quarantine_file?,
        isolate_host: isolate_host?,
        block_ip: block_ip?,
        fleet_block: fleet_block?,
    })
}

fn budget(value: &Value, path: &str, errors: &mut Errors) -> Option<Budget> {
    let object = errors.object(value, path)?;
    let fields = Fields::new(object, path, BUDGET_FIELDS, errors);
    let (max, window) = max_and_window(&fields, errors);
    let on_exceed = match fields.optional("onExceed") {
        Some((v, p)) => errors.on_exceed(v, &p).map(Some),
        None => Some(None),
    };
    Some(Budget {
        max: max?,
        window: window?,
        on_exceed: on_exceed?,
    })
}

fn fleet_budget(value: &Value, path: &str, errors: &mut Errors) -> Option<FleetBudget> {
    let object = errors.object(value, path)?;
    let fields = Fields::new(object, path, FLEET_BUDGET_FIELDS, errors);
    let (max, window) = max_and_window(&fields, errors);
    Some(FleetBudget {
        max: max?,
        window: window?,
    })
}

fn max_and_window(
    fields: &Fields<'_>,
    errors: &mut Errors,
) -> (Option<u32>, Option<PolicyDuration>) {
    let max = fields.required("max", errors).and_then(|(v, p)| {
        errors
            .integer(v, &p, 0, u64::from(MAX_BUDGET))
            .and_then(|n| u32::try_from(n).ok())
    });
    let window =
        fields
            .required("window", errors)
            .and_then(|(v, p)| match errors.duration(v, &p)? {
                PolicyDuration::Permanent => {
                    errors.push(&p, "the budget window must be finite, found `permanent`");
                    None
                }
                finite => Some(finite),
            });
    (max, window)
}

/// The fields of one object, checked against the allowed names on creation.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    path: &'a str,
}

impl<'a> Fields<'a> {
    fn new(
        object: &'a Map<String, Value>,
        path: &'a str,
        allowed: &[&str],
        errors: &mut Errors,
    ) -> Self {
        for key in object.keys() {
            if !allowed.contains(&key.as_str()) {
                errors.push(
                    &join_key(path, key),
                    format!("unknown field `{key}`, expected one of {}", one_of(allowed)),
                );
            }
        }
        Self { object, path }
    }

    /// A present, non-null field with its path.
    fn optional(&self, name: &str) -> Option<(&'a Value, String)> {
        match self.object.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => Some((v, join_key(self.path, name))),
        }
    }

    fn required(&self, name: &str, errors: &mut Errors) -> Option<(&'a Value, String)> {
        let found = self.optional(name);
        if found.is_none() {
            errors.push(
                &join_key(self.path, name),
                format!("missing required field `{name}`"),
            );
        }
        found
    }
}

#[derive(Default)]
struct Errors(Vec<ValidationError>);

impl Errors {
    fn push(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(ValidationError::new(path, message));
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn into_error(self) -> PolicyError {
        PolicyError { errors: self.0 }
    }

    fn object<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v Map<String, Value>> {
        match value {
            Value::Object(map) => Some(map),
            other => {
                self.push(
                    path,
                    format!("expected an object, found {}", describe(other)),
                );
                None
            }
        }
    }

    fn string<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v str> {
        match value {
            Value::String(s) => Some(s),
            other => {
                self.push(
                    path,
                    format!("expected a string, found {}", describe(other)),
                );
                None
            }
        }
    }

    fn non_empty_string(&mut self, value: &Value, path: &str) -> Option<String> {
        let s = self.string(value, path)?;
        if s.trim().is_empty() {
            self.push(path, "expected a non-empty string, found an empty one");
            return None;
        }
        Some(s.to_owned())
    }

    fn boolean(&mut self, value: &Value, path: &str) -> Option<bool> {
        match value {
            Value::Bool(b) => Some(*b),
            other => {
                self.push(
                    path,
                    format!("expected `true` or `false`, found {}", describe(other)),
                );
                None
            }
        }
    }

    /// An integer in `min..=max`; integral floats such as `50.0` are accepted.
    fn integer(&mut self, value: &Value, path: &str, min: u64, max: u64) -> Option<u64> {
        let n = match value {
            Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= max as f64)
                    .map(|f| f as u64)
            }),
            _ => None,
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.push(
                    path,
                    format!(
                        "expected an integer from {min} to {max}, found {}",
                        describe(value)
                    ),
                );
                None
            }
        }
    }

    fn on_exceed(&mut self, value: &Value, path: &str) -> Option<OnExceed> {
        match self.string(value, path)? {
            "approval" => Some(OnExceed::Approval),
            "drop" => Some(OnExceed::Drop),
            other => {
                self.push(
                    path,
                    format!("expected `approval` or `drop`, found `{other}`"),
                );
                None
            }
        }
    }

    fn duration(&mut self, value: &Value, path: &str) -> Option<PolicyDuration> {
        let text = self.string(value, path)?;
        match text.parse() {
            Ok(d) => Some(d),
            Err(err) => {
                self.push(path, err.to_string());
                None
            }
        }
    }
}

fn one_of(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
