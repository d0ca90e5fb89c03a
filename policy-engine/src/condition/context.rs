//! Evaluating a condition against an event: its compiled typed tree when it has one and the
//! event has the fields it reads; otherwise an evalexpr `Context` that holds only the variables
//! the condition reads, with `str::regex_matches` served from precompiled regexes.

use std::cell::RefCell;
use std::collections::HashMap;

use evalexpr::{Context, EvalexprError, EvalexprResult, Value};
use regex::{Regex, RegexBuilder};

use super::compile::Program;
use super::view::{EventView, Field, Kind};
use super::{Condition, REGEX_MATCHES};
use crate::event::ThreatEvent;

/// Regexes built at evaluation time (patterns that are not string literals) kept at most.
const REGEX_CACHE_ENTRIES: usize = 64;
/// Compiled size limit of a regex built at evaluation time, against hostile event data.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
const REGEX_REPLACE: &str = "str::regex_replace";

/// Evaluates one condition against events, reusing its buffers from event to event.
///
/// Conditions that [compile](Evaluator::is_compiled) to a typed tree are answered by it for
/// events that have every field they read; everything else goes to evalexpr's tree walker,
/// which also writes every error message.
///
/// ```
/// use policy_engine::{Condition, ThreatEvent};
/// use policy_engine::condition::Evaluator;
/// let condition = Condition::compile(r#"str::regex_matches(process, "^ssh") && pid > 100"#).unwrap();
/// let mut evaluator = Evaluator::new(&condition);
/// assert!(evaluator.is_compiled());
/// let mut event = ThreatEvent::from_json(br#"{"process":"sshd","pid":4242}"#).unwrap();
/// assert_eq!(evaluator.eval(&condition, &event), Ok(true));
/// event.pid = None;
/// assert_eq!(evaluator.eval(&condition, &event).unwrap_err(), "the event has no field `pid`");
/// ```
#[derive(Debug)]
pub struct Evaluator {
    program: Option<Program>,
    variables: Vec<(String, Option<Field>)>,
    values: Vec<Option<Value>>,
    cache: RefCell<HashMap<String, Result<Regex, String>>>,
}

impl Evaluator {
    /// An evaluator for `condition`.
    pub fn new(condition: &Condition) -> Self {
        let variables: Vec<_> = condition
            .variables()
            .iter()
            .map(|name| (name.clone(), Field::of(name)))
            .collect();
        Self {
            program: Program::compile(condition),
            values: vec![None; variables.len()],
            variables,
            cache: RefCell::new(HashMap::new()),
        }
    }

    /// Whether the condition compiled to a typed tree (otherwise evalexpr evaluates it).
    pub fn is_compiled(&self) -> bool {
        self.program.is_some()
    }

    /// Evaluates `condition` (the one given to [`Evaluator::new`]) for `event`.
    ///
    /// An error (a missing field, a type mismatch, a result that is not a boolean) comes back
    /// as a message; the rule treats it as false and counts it.
    pub fn eval(&mut self, condition: &Condition, event: &ThreatEvent) -> Result<bool, String> {
        self.eval_view(condition, &EventView::new(event))
    }

    /// Evaluates `condition` with evalexpr's tree walker only: the reference that the compiled
    /// form is tested against.
    pub fn eval_reference(
        &mut self,
        condition: &Condition,
        event: &ThreatEvent,
    ) -> Result<bool, String> {
        self.eval_evalexpr(condition, &EventView::new(event))
    }

    /// [`Evaluator::eval`] for an event already wrapped in a view.
    pub(crate) fn eval_view(
        &mut self,
        condition: &Condition,
        view: &EventView<'_>,
    ) -> Result<bool, String> {
        if let Some(result) = self.program.as_ref().and_then(|p| p.eval(view)) {
            return Ok(result);
        }
        self.eval_evalexpr(condition, view)
    }

    /// The compiled form, if the condition has one.
    pub(crate) fn program(&self) -> Option<&Program> {
        self.program.as_ref()
    }

    fn eval_evalexpr(
        &mut self,
        condition: &Condition,
        view: &EventView<'_>,
    ) -> Result<bool, String> {
        for ((name, field), value) in self.variables.iter().zip(self.values.iter_mut()) {
            fill(value, name, *field, view);
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
fn fill(slot: &mut Option<Value>, name: &str, field: Option<Field>, view: &EventView<'_>) {
    let Some(field) = field else {
        *slot = view.event.extra.get(name).and_then(json_to_value);
        return;
    };
    if !view.present().contains(field) {
        *slot = None;
        return;
    }
    match field.kind() {
        Kind::Str => {
            let text = view.text(field);
            match slot.as_mut() {
                Some(Value::String(buffer)) => {
                    buffer.clear();
                    buffer.push_str(text);
                }
                _ => *slot = Some(Value::String(text.to_owned())),
            }
        }
        Kind::Int => *slot = Some(Value::Int(view.int(field))),
        Kind::Float => *slot = Some(Value::Float(view.confidence())),
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
    variables: &'a [(String, Option<Field>)],
    values: &'a [Option<Value>],
    condition: &'a Condition,
    cache: &'a RefCell<HashMap<String, Result<Regex, String>>>,
}

impl EventContext<'_> {
    /// `str::regex_matches`: a constant pattern was compiled with the condition, any other is
    /// built now (and kept a while).
    fn regex_matches(&self, pattern: &str, subject: &str) -> EvalexprResult<bool> {
        if let Some(regex) = self.condition.regex(pattern) {
            return Ok(regex.is_match(subject));
        }
        self.with_regex(pattern, |regex| regex.is_match(subject))
    }

    /// Runs `f` with `pattern` built (at most [`REGEX_SIZE_LIMIT`]) and kept a while.
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
                self.regex_matches(&pattern, &subject).map(Value::Boolean)
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
