//! Request bodies: reading with the 1 MiB limit, and strict JSON (duplicate keys, nesting and
//! string limits) for the bodies that are not policies.

use std::cell::RefCell;
use std::fmt;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use policy_engine::ValidationError;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Deepest nesting accepted in a JSON body.
pub const MAX_DEPTH: usize = 64;
/// Longest string accepted in a JSON body, in bytes.
pub const MAX_STRING_BYTES: usize = 64 * 1024;

/// Reads a whole body, answering 413 as soon as it grows past `limit` (whatever the
/// `Content-Length` header says, so chunked bodies are bounded too).
pub async fn read_limited<S, B>(
    content_length: Option<u64>,
    body: S,
    limit: usize,
) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    if content_length.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let mut collected = BytesMut::new();
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::malformed(format!("cannot read the body: {e}")))?;
        if collected.len() + chunk.remaining() > limit {
            return Err(ApiError::too_large(limit));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            collected.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(collected.freeze())
}

/// Parses a JSON body strictly: syntax errors are 400 with line and column, duplicate keys and
/// limit violations are 422 with their path.
pub fn parse_json(input: &[u8]) -> Result<Value, ApiError> {
    let failure = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(input);
    let seed = StrictSeed {
        depth: 0,
        path: String::new(),
        failure: &failure,
    };
    let result = seed.deserialize(&mut de).and_then(|value| {
        de.end()?;
        Ok(value)
    });
    result.map_err(|err| match failure.into_inner() {
        Some(structured) => ApiError::from_validation(vec![structured]),
        None => ApiError::malformed(syntax_message(&err)),
    })
}

/// `rules[0]` + `config` -> `rules[0].config`.
pub fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// `rules` + 3 -> `rules[3]`.
pub fn join_index(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

/// The same wording as the policy library: `invalid JSON at line L column C: detail`.
fn syntax_message(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let detail = match text.rfind(" at line ") {
        Some(at) => text.get(..at).unwrap_or(&text),
        None => &text,
    };
    format!(
        "invalid JSON at line {} column {}: {}",
        err.line(),
        err.column(),
        detail
    )
}

struct StrictSeed<'a> {
    depth: usize,
    path: String,
    failure: &'a RefCell<Option<ValidationError>>,
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
            failure: self.failure,
        }
    }

    fn check_string<E: de::Error>(&self, s: &str) -> Result<(), E> {
        if s.len() > MAX_STRING_BYTES {
            return Err(self.fail(
                &self.path,
                format!(
                    "string is {} bytes, longer than the limit of {MAX_STRING_BYTES} bytes",
                    s.len()
                ),
            ));
        }
        Ok(())
    }

    fn enter<E: de::Error>(&self) -> Result<(), E> {
        if self.depth + 1 > MAX_DEPTH {
            return Err(self.fail(
                &self.path,
                format!("nesting is deeper than the limit of {MAX_DEPTH} levels"),
            ));
        }
        Ok(())
    }
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
            self.check_string(&key)?;
            let path = join_key(&self.path, &key);
            if object.contains_key(&key) {
                return Err(self.fail(&path, format!("duplicate key `{key}`")));
            }
            let value = map.next_value_seed(self.child(path))?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Field-by-field reading of a JSON object with unknown-field rejection and every error
/// collected, for the small request bodies (enroll, heartbeat, tokens, overrides).
#[derive(Debug, Default)]
pub struct Fields {
    /// Errors found so far.
    pub errors: Vec<ValidationError>,
}

impl Fields {
    /// The value as an object whose keys are all in `allowed`; errors otherwise.
    pub fn object<'v>(
        &mut self,
        value: &'v Value,
        path: &str,
        allowed: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Value::Object(map) = value else {
            self.push(
                path,
                format!("expected an object, found {}", describe(value)),
            );
            return None;
        };
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                let names: Vec<String> = allowed.iter().map(|n| format!("`{n}`")).collect();
                self.push(
                    &join_key(path, key),
                    format!(
                        "unknown field `{key}`, expected one of {}",
                        names.join(", ")
                    ),
                );
            }
        }
        Some(map)
    }

    /// Records an error.
    pub fn push(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ValidationError::new(path, message));
    }

    /// An optional string field (absent or `null` is `None`).
    pub fn opt_string(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Option<String> {
        match map.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.push(
                    &join_key(path, key),
                    format!("expected a string, found {}", describe(other)),
                );
                None
            }
        }
    }

    /// A required non-empty string field.
    pub fn req_string(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Option<String> {
        if matches!(map.get(key), None | Some(Value::Null)) {
            self.push(
                &join_key(path, key),
                format!("missing required field `{key}`"),
            );
            return None;
        }
        let s = self.opt_string(map, path, key)?;
        if s.trim().is_empty() {
            self.push(
                &join_key(path, key),
                "expected a non-empty string, found an empty one",
            );
            return None;
        }
        Some(s)
    }

    /// The collected errors as a 422, or `Ok` when there are none.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::from_validation(self.errors))
        }
    }
}

/// How a value is shown in messages, as in the policy library.
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

/// An org id as the policy library accepts it: 1 to 64 letters, digits, `-`, `_` or `.`.
pub fn check_org_id(fields: &mut Fields, path: &str, id: &str) -> bool {
    let valid_chars = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if id.is_empty() || id.chars().count() > 64 || !valid_chars {
        fields.push(
            path,
            format!("expected 1 to 64 letters, digits, `-`, `_` or `.`, found `{id}`"),
        );
        return false;
    }
    true
}

/// Reads `org_id` (or its alias `orgId`) from an object, validated.
pub fn org_field(fields: &mut Fields, map: &Map<String, Value>, path: &str) -> Option<String> {
    let snake = fields.opt_string(map, path, "org_id");
    let camel = fields.opt_string(map, path, "orgId");
    match (snake, camel) {
        (Some(_), Some(_)) => {
            fields.push(
                &join_key(path, "orgId"),
                "`org_id` and its alias `orgId` are both given; use one",
            );
            None
        }
        (Some(id), None) => check_org_id(fields, &join_key(path, "org_id"), &id).then_some(id),
        (None, Some(id)) => check_org_id(fields, &join_key(path, "orgId"), &id).then_some(id),
        (None, None) => None,
    }
}
