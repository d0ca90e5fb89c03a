//! Request bodies: reading with the 1 MiB limit, strict JSON (duplicate keys, nesting and
//! string limits) and field checks for the bodies that are not policies.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use policy_engine::ValidationError;
use policy_engine::policy::json::{JsonError, JsonLimits, parse_strict};
pub use policy_engine::policy::json::{describe, join_index, join_key};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Most bytes of an oversized body read and thrown away before answering 413.
///
/// Over HTTP/2, answering while the client is still sending makes hyper reset the stream, and
/// clients such as curl then report a framing error instead of the 413. Draining a bounded
/// amount (in bounded time) lets ordinary oversized requests see their 413; anything larger or
/// slower gets the reset.
const DRAIN_BYTES: usize = 16 * 1024 * 1024;
/// Longest time spent draining an oversized body.
const DRAIN_TIME: Duration = Duration::from_secs(5);

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
    let mut body = std::pin::pin!(body);
    if content_length.is_some_and(|n| n > limit as u64) {
        if content_length.is_some_and(|n| n <= (limit + DRAIN_BYTES) as u64) {
            drain(body).await;
        }
        return Err(ApiError::too_large(limit));
    }
    let mut collected = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::malformed(format!("cannot read the body: {e}")))?;
        if collected.len() + chunk.remaining() > limit {
            drain(body).await;
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

/// Reads and discards the rest of a body, up to [`DRAIN_BYTES`] and [`DRAIN_TIME`].
async fn drain<S, B>(mut body: std::pin::Pin<&mut S>)
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let discard = async {
        let mut seen = 0usize;
        while let Some(Ok(chunk)) = body.next().await {
            seen = seen.saturating_add(chunk.remaining());
            if seen > DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}

/// Parses a JSON body strictly with the policy library's reader (one parser for the whole
/// system): syntax errors are 400 with line and column, duplicate keys and limit violations are
/// 422 with their path. The body size was already bounded by [`read_limited`].
pub fn parse_json(input: &[u8]) -> Result<Value, ApiError> {
    let limits = JsonLimits {
        max_bytes: usize::MAX,
        ..JsonLimits::default()
    };
    parse_strict(input, limits).map_err(|err| match err {
        JsonError::Syntax(e) => ApiError::malformed(e.message),
        JsonError::Rejected(e) => ApiError::from_validation(vec![e]),
    })
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
