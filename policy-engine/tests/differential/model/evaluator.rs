//! The reference model's condition evaluation: a copy of `condition::Evaluator` as of the linear
//! engine (evalexpr's tree walker over an evalexpr `Context` holding the variables a condition
//! reads, `str::regex_matches` served from precompiled regexes).

use std::cell::RefCell;
use std::collections::HashMap;

use evalexpr::{Context, EvalexprError, EvalexprResult, Value};
use regex::{Regex, RegexBuilder};

use policy_engine::ThreatEvent;
use policy_engine::condition::{Condition, REGEX_MATCHES};

/// Regexes built at evaluation time (patterns that are not string literals) kept at most.
const REGEX_CACHE_ENTRIES: usize = 64;
/// Compiled size limit of a regex built at evaluation time, against hostile event data.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
const REGEX_REPLACE: &str = "str::regex_replace";

/// Evaluates one condition against events, reusing its buffers from event to event.
#[derive(Debug)]
pub struct Evaluator {
    variables: Vec<(String, Variable)>,
    values: Vec<Option<Value>>,
    cache: RefCell<HashMap<String, Result<Regex, String>>>,
}

/// Where a condition variable comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Variable {
    Id,
    Timestamp,
    Type,
    Severity,
    SeverityLevel,
    Confidence,
    SrcIp,
    DstPort,
    Pid,
    Process,
    FilePath,
    User,
    Host,
    Extra,
}

impl Variable {
    fn of(name: &str) -> Self {
        match name {
            "id" => Self::Id,
            "timestamp" => Self::Timestamp,
            "type" => Self::Type,
            "severity" => Self::Severity,
            "severityLevel" => Self::SeverityLevel,
            "confidence" => Self::Confidence,
            "srcIp" => Self::SrcIp,
            "dstPort" => Self::DstPort,
            "pid" => Self::Pid,
            "process" => Self::Process,
            "filePath" => Self::FilePath,
            "user" => Self::User,
            "host" => Self::Host,
            _ => Self::Extra,
        }
    }
}

impl Evaluator {
    /// An evaluator for `condition`.
    pub fn new(condition: &Condition) -> Self {
        let variables: Vec<_> = condition
            .variables()
            .iter()
            .map(|name| (name.clone(), Variable::of(name)))
            .collect();
        Self {
            values: vec![None; variables.len()],
            variables,
            cache: RefCell::new(HashMap::new()),
        }
    }

    /// Evaluates `condition` (the one given to [`Evaluator::new`]) for `event`.
    ///
    /// An error (a missing field, a type mismatch, a result that is not a boolean) comes back
    /// as a message; the rule treats it as false and counts it.
    pub fn eval(&mut self, condition: &Condition, event: &ThreatEvent) -> Result<bool, String> {
        for ((name, variable), value) in self.variables.iter().zip(self.values.iter_mut()) {
            fill(value, name, variable, event);
        }
        let context = EventContext {
            variables: &self.variables,
            values: &self.values,
            condition,
            cache: &self.cache,
        };
        match condition.tree().eval_with_context(&context) {
            Ok(Value::Boolean(result)) => Ok(result),
            Ok(other) => Err(format!("the condition gave `{other}`, not a boolean")),
            Err(err) => Err(message(&err)),
        }
    }
}

/// Sets `slot` to the event's value of a variable, reusing the string buffer already there.
fn fill(slot: &mut Option<Value>, name: &str, variable: &Variable, event: &ThreatEvent) {
    fn text(slot: &mut Option<Value>, value: Option<&str>) {
        match (slot.as_mut(), value) {
            (Some(Value::String(buffer)), Some(text)) => {
                buffer.clear();
                buffer.push_str(text);
            }
            (_, Some(text)) => *slot = Some(Value::String(text.to_owned())),
            (_, None) => *slot = None,
        }
    }
    match variable {
        Variable::Id => text(slot, event.id.as_deref()),
        Variable::Timestamp => {
            *slot = event
                .timestamp
                .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)));
        }
        Variable::Type => text(slot, event.threat_type.as_deref()),
        Variable::Severity => text(slot, event.severity.map(|s| s.as_str())),
        Variable::SeverityLevel => {
            *slot = event.severity.map(|s| Value::Int(i64::from(s.level())));
        }
        Variable::Confidence => *slot = Some(Value::Float(event.confidence)),
        Variable::SrcIp => *slot = event.src_ip.map(|ip| Value::String(ip.to_string())),
        Variable::DstPort => *slot = event.dst_port.map(|p| Value::Int(i64::from(p))),
        Variable::Pid => *slot = event.pid.map(|p| Value::Int(i64::from(p))),
        Variable::Process => text(slot, event.process.as_deref()),
        Variable::FilePath => text(slot, event.file_path.as_deref()),
        Variable::User => text(slot, event.user.as_deref()),
        Variable::Host => text(slot, event.host.as_deref()),
        Variable::Extra => *slot = event.extra.get(name).and_then(json_to_value),
    }
}

/// A JSON value as an evalexpr value; objects have no counterpart and read as absent.
fn json_to_value(json: &serde_json::Value) -> Option<Value> {
    Some(match json {
        serde_json::Value::Null => Value::Empty,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64()?),
        },
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(items) => {
            Value::Tuple(items.iter().map(json_to_value).collect::<Option<_>>()?)
        }
        serde_json::Value::Object(_) => return None,
    })
}

fn expected(what: &str, actual: &Value) -> String {
    format!("type mismatch: expected {what}, found `{actual}`")
}

/// A readable message for an evaluation error.
fn message(err: &EvalexprError) -> String {
    match err {
        EvalexprError::VariableIdentifierNotFound(name) => {
            format!("the event has no field `{name}`")
        }
        EvalexprError::ExpectedString { actual } => expected("a string", actual),
        EvalexprError::ExpectedInt { actual } => expected("an integer", actual),
        EvalexprError::ExpectedFloat { actual } => expected("a float", actual),
        EvalexprError::ExpectedNumber { actual } => expected("a number", actual),
        EvalexprError::ExpectedNumberOrString { actual } => {
            expected("a number or a string", actual)
        }
        EvalexprError::ExpectedBoolean { actual } => expected("a boolean", actual),
        EvalexprError::CustomMessage(message) => message.clone(),
        other => {
            let text = other.to_string();
            let text = text.strip_suffix('.').unwrap_or(&text);
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => String::new(),
            }
        }
    }
}

struct EventContext<'a> {
    variables: &'a [(String, Variable)],
    values: &'a [Option<Value>],
    condition: &'a Condition,
    cache: &'a RefCell<HashMap<String, Result<Regex, String>>>,
}

impl EventContext<'_> {
    /// Every pattern is built here with the `regex` crate evalexpr uses, constant ones too:
    /// the engine's own compiled patterns (`regex_automata`'s meta regex, within the policy's
    /// budget) are what the comparison checks.
    fn with_regex<T>(&self, pattern: &str, f: impl FnOnce(&Regex) -> T) -> EvalexprResult<T> {
        let mut cache = self.cache.borrow_mut();
        if !cache.contains_key(pattern) {
            if cache.len() >= REGEX_CACHE_ENTRIES {
                cache.clear();
            }
            let built = RegexBuilder::new(pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|err| {
                    let text = err.to_string();
                    let last = text.lines().last().unwrap_or_default().trim();
                    let detail = last.strip_prefix("error: ").unwrap_or(last);
                    format!("invalid regular expression `{pattern}`: {detail}")
                });
            cache.insert(pattern.to_owned(), built);
        }
        match cache.get(pattern) {
            Some(Ok(regex)) => Ok(f(regex)),
            Some(Err(message)) => Err(EvalexprError::CustomMessage(message.clone())),
            None => Err(EvalexprError::CustomMessage(
                "regex cache inconsistent".to_owned(),
            )),
        }
    }
}

impl Context for EventContext<'_> {
    fn get_value(&self, identifier: &str) -> Option<&Value> {
        self.variables
            .iter()
            .position(|(name, _)| name == identifier)
            .and_then(|i| self.values.get(i))
            .and_then(Option::as_ref)
    }

    fn call_function(&self, identifier: &str, argument: &Value) -> EvalexprResult<Value> {
        match identifier {
            REGEX_MATCHES => {
                let arguments = argument.as_fixed_len_tuple(2)?;
                let (Some(subject), Some(pattern)) = (arguments.first(), arguments.get(1)) else {
                    return Err(EvalexprError::WrongFunctionArgumentAmount {
                        expected: 2..=2,
                        actual: arguments.len(),
                    });
                };
                let subject = subject.as_string()?;
                let pattern = pattern.as_string()?;
                self.with_regex(&pattern, |regex| Value::Boolean(regex.is_match(&subject)))
            }
            REGEX_REPLACE => {
                let arguments = argument.as_fixed_len_tuple(3)?;
                let (Some(subject), Some(pattern), Some(replacement)) =
                    (arguments.first(), arguments.get(1), arguments.get(2))
                else {
                    return Err(EvalexprError::WrongFunctionArgumentAmount {
                        expected: 3..=3,
                        actual: arguments.len(),
                    });
                };
                let subject = subject.as_string()?;
                let pattern = pattern.as_string()?;
                let replacement = replacement.as_string()?;
                self.with_regex(&pattern, |regex| {
                    Value::String(
                        regex
                            .replace_all(&subject, replacement.as_str())
                            .into_owned(),
                    )
                })
            }
            _ => Err(EvalexprError::FunctionIdentifierNotFound(
                identifier.to_owned(),
            )),
        }
    }

    fn are_builtin_functions_disabled(&self) -> bool {
        false
    }

    fn set_builtin_functions_disabled(&mut self, _disabled: bool) -> EvalexprResult<()> {
        Err(EvalexprError::CustomMessage(
            "builtin functions cannot be disabled here".to_owned(),
        ))
    }
}
