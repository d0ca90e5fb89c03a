//! Strict JSON reading, shared by the policy parser and the server's request bodies: size,
//! depth and string-length limits and duplicate-key rejection, enforced while parsing so that
//! hostile documents cost no more than their limits. [`parse_strict`] stops at the first
//! duplicate key; [`parse_collecting`] records every one and reads on, for callers that report
//! them with the document's other errors.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::error::ValidationError;

/// Limits applied while reading a JSON document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    /// Largest accepted document, in bytes.
    pub max_bytes: usize,
    /// Deepest accepted nesting of arrays and objects (the root container is depth 1).
    pub max_depth: usize,
    /// Longest accepted string (keys and values), in bytes.
    pub max_string_bytes: usize,
}

impl JsonLimits {
    /// The contract's limits: 1 MiB, nesting 64, strings 64 KiB.
    pub const DEFAULT: Self = Self {
        max_bytes: 1024 * 1024,
        max_depth: 64,
        max_string_bytes: 64 * 1024,
    };
}

impl Default for JsonLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a document was refused by [`parse_strict`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Not JSON at all; the message gives line and column and the path is empty.
    #[error("{0}")]
    Syntax(ValidationError),
    /// Well-formed JSON over a limit, or with a duplicate key; the path says where.
    #[error("{0}")]
    Rejected(ValidationError),
}

impl JsonError {
    /// The underlying error, whichever kind it is.
    pub fn into_validation_error(self) -> ValidationError {
        match self {
            Self::Syntax(e) | Self::Rejected(e) => e,
        }
    }
}

/// Parses `input` into a JSON value, enforcing `limits` and rejecting duplicate keys.
///
/// Errors carry the JSON path of the offending value and, for syntax errors, the line and
/// column. Servers use it for every request body, so that no two parsers in the system
/// resolve a duplicate key differently.
///
/// ```
/// use policy_engine::policy::json::{parse_strict, JsonError, JsonLimits};
/// let err = parse_strict(br#"{"a":1,"a":2}"#, JsonLimits::default()).unwrap_err();
/// assert!(matches!(err, JsonError::Rejected(_)));
/// assert_eq!(err.to_string(), "a: duplicate key `a`");
/// ```
pub fn parse_strict(input: &[u8], limits: JsonLimits) -> Result<Value, JsonError> {
    let parsed = parse_collecting(input, limits)?;
    match parsed.duplicates.into_iter().next() {
        Some(first) => Err(JsonError::Rejected(first)),
        None => Ok(parsed.value),
    }
}

/// A document read by [`parse_collecting`]: its value and every duplicate key in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    /// The document, each duplicated key holding its first value.
    pub value: Value,
    /// One error per duplicate key (`duplicate key `k``, at the later key's path), in
    /// document order.
    pub duplicates: Vec<ValidationError>,
}

/// [`parse_strict`] that goes on past duplicate keys: each is recorded and the rest of the
/// document is still read (the later value too, within the limits, then dropped), so that a
/// caller can report every duplicate together with what else is wrong with the document
/// (contract: all errors of a document are reported). Syntax errors and limits still stop it.
///
/// ```
/// use policy_engine::policy::json::{parse_collecting, JsonLimits};
/// let parsed = parse_collecting(br#"{"a":1,"a":2,"b":{"c":3,"c":4}}"#, JsonLimits::default()).unwrap();
/// assert_eq!(parsed.value, serde_json::json!({"a": 1, "b": {"c": 3}}));
/// let found: Vec<String> = parsed.duplicates.iter().map(ToString::to_string).collect();
/// assert_eq!(found, ["a: duplicate key `a`", "b.c: duplicate key `c`"]);
/// ```
pub fn parse_collecting(input: &[u8], limits: JsonLimits) -> Result<Collected, JsonError> {
    if input.len() > limits.max_bytes {
        return Err(JsonError::Rejected(ValidationError::new(
            "",
            format!(
                "document is {} bytes, larger than the limit of {} bytes",
                input.len(),
                limits.max_bytes
            ),
        )));
    }
    let failure = RefCell::new(None);
    let duplicates = RefCell::new(Vec::new());
    let mut de = serde_json::Deserializer::from_slice(input);
    // Our own depth limit (64) is far below serde_json's (128), which stays as a backstop.
    let seed = StrictSeed {
        depth: 0,
        path: String::new(),
        limits,
        failure: &failure,
        duplicates: &duplicates,
    };
    let result = seed.deserialize(&mut de).and_then(|value| {
        de.end()?;
        Ok(value)
    });
    match result {
        Ok(value) => Ok(Collected {
            value,
            duplicates: duplicates.into_inner(),
        }),
        Err(err) => {
            if let Some(structured) = failure.into_inner() {
                return Err(JsonError::Rejected(structured));
            }
            Err(JsonError::Syntax(syntax_error(&err)))
        }
    }
}

fn syntax_error(err: &serde_json::Error) -> ValidationError {
    let text = err.to_string();
    // serde_json appends " at line L column C"; we state the location first instead.
    let detail = match text.rfind(" at line ") {
        Some(at) => text.get(..at).unwrap_or(&text),
        None => &text,
    };
    ValidationError::new(
        "",
        format!(
            "invalid JSON at line {} column {}: {}",
            err.line(),
            err.column(),
            detail
        ),
    )
}

struct StrictSeed<'a> {
    depth: usize,
    path: String,
    limits: JsonLimits,
    failure: &'a RefCell<Option<ValidationError>>,
    duplicates: &'a RefCell<Vec<ValidationError>>,
}

impl StrictSeed<'_> {
    fn fail<E: de::Error>(&self, path: &str, message: String) -> E {
        let mut slot = self.failure.borrow_mut();
        if slot.is_none() {
            *slot = Some(ValidationError::new(path, message.clone()));
        }
        E::custom(message)
    }

    fn child(&self, path: String) -> StrictSeed<'_> {
        StrictSeed {
            depth: self.depth + 1,
            path,
            limits: self.limits,
            failure: self.failure,
            duplicates: self.duplicates,
        }
    }

    fn check_string<E: de::Error>(&self, s: &str) -> Result<(), E> {
        if s.len() > self.limits.max_string_bytes {
            return Err(self.fail(
                &self.path,
                format!(
                    "string is {} bytes, longer than the limit of {} bytes",
                    s.len(),
                    self.limits.max_string_bytes
                ),
            ));
        }
        Ok(())
    }

    fn enter<E: de::Error>(&self) -> Result<(), E> {
        if self.depth + 1 > self.limits.max_depth {
            return Err(self.fail(
                &self.path,
                format!(
                    "nesting is deeper than the limit of {} levels",
                    self.limits.max_depth
                ),
            ));
        }
        Ok(())
    }
}

/// How a JSON value is shown in error messages: scalars in backticks, strings cut at 40
/// characters, containers by kind (`an array`), so that a message never echoes a huge input.
///
/// ```
/// use policy_engine::policy::json::describe;
/// assert_eq!(describe(&serde_json::json!("abc")), "the string `abc`");
/// assert_eq!(describe(&serde_json::json!(1.5)), "`1.5`");
/// assert_eq!(describe(&serde_json::json!([1])), "an array");
/// ```
pub fn describe(value: &Value) -> String {
    const MAX_SHOWN: usize = 40;
    match value {
        Value::Null => "`null`".to_owned(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("`{n}`"),
        Value::String(s) => {
            let shown: String = s.chars().take(MAX_SHOWN).collect();
            let ellipsis = if shown.len() < s.len() { "..." } else { "" };
            format!("the string `{shown}{ellipsis}`")
        }
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// Appends an object key to a path: `rules[0].config` + `threshold`.
pub fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Appends an array index to a path: `rules` + 3.
pub fn join_index(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

impl<'de> DeserializeSeed<'de> for StrictSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        match serde_json::Number::from_f64(v) {
            Some(n) => Ok(Value::Number(n)),
            None => Err(self.fail(&self.path, format!("number `{v}` is not finite"))),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.check_string(v)?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.check_string(&v)?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.enter()?;
        let mut items = Vec::new();
        loop {
            let child = self.child(join_index(&self.path, items.len()));
            match seq.next_element_seed(child)? {
                Some(value) => items.push(value),
                None => break,
            }
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.enter()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = join_key(&self.path, &key);
            if key.len() > self.limits.max_string_bytes {
                return Err(self.fail(
                    &self.path,
                    format!(
                        "object key is {} bytes, longer than the limit of {} bytes",
                        key.len(),
                        self.limits.max_string_bytes
                    ),
                ));
            }
            if object.contains_key(&key) {
                let error = ValidationError::new(&path, format!("duplicate key `{key}`"));
                self.duplicates.borrow_mut().push(error);
                // Read within the limits like any value, then dropped: the first one stays.
                map.next_value_seed(self.child(path))?;
                continue;
            }
            let value = map.next_value_seed(self.child(path))?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(input: &str) -> String {
        parse_strict(input.as_bytes(), JsonLimits::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn duplicate_keys_are_rejected_with_their_path() {
        assert_eq!(
            err(r#"{"rules":[{"a":1,"a":2}]}"#),
            "rules[0].a: duplicate key `a`"
        );
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        assert_eq!(
            err("{\n  \"name\": 1,\n  }"),
            "invalid JSON at line 3 column 3: trailing comma"
        );
    }

    #[test]
    fn deep_nesting_stops_at_the_limit() {
        let deep = "[".repeat(100_000);
        assert_eq!(
            err(&deep),
            "[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]: nesting is deeper than the limit of 64 levels"
        );
    }

    #[test]
    fn trailing_garbage_is_rejected() {
        assert_eq!(
            err("{} x"),
            "invalid JSON at line 1 column 4: trailing characters"
        );
    }
}
