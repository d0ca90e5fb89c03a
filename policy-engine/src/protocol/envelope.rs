//! The response envelope of every endpoint: `{"ok":true,"data":...}` on success,
//! `{"ok":false,"error":{"code","message","path"?,"errors"?}}` on failure (CONTRACT section 5).

use serde::{Deserialize, Serialize};

/// A successful answer: `{"ok":true,"data":...}`.
///
/// ```
/// use policy_engine::protocol::Envelope;
/// let text = serde_json::to_string(&Envelope::ok(7)).unwrap();
/// assert_eq!(text, r#"{"ok":true,"data":7}"#);
/// let back: Envelope<u32> = serde_json::from_str(&text).unwrap();
/// assert_eq!(back.data, 7);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Always `true` here.
    pub ok: bool,
    /// The answer.
    pub data: T,
}

impl<T> Envelope<T> {
    /// `{"ok":true,"data":data}`.
    pub fn ok(data: T) -> Self {
        Self { ok: true, data }
    }
}

/// A failed answer: `{"ok":false,"error":{...}}`.
///
/// ```
/// use policy_engine::protocol::{ErrorBody, ErrorEnvelope};
/// let failure = ErrorEnvelope::new(ErrorBody {
///     code: "not_found".into(),
///     message: "unknown agent `agent-1`".into(),
///     path: None,
///     errors: Vec::new(),
/// });
/// assert_eq!(
///     serde_json::to_string(&failure).unwrap(),
///     r#"{"ok":false,"error":{"code":"not_found","message":"unknown agent `agent-1`"}}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// Always `false` here.
    pub ok: bool,
    /// What went wrong.
    pub error: ErrorBody,
}

impl ErrorEnvelope {
    /// `{"ok":false,"error":error}`.
    pub fn new(error: ErrorBody) -> Self {
        Self { ok: false, error }
    }
}

/// The `error` of a failed answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code: `malformed_json`, `bad_request`, `unauthorized`,
    /// `forbidden`, `not_found`, `method_not_allowed`, `conflict`, `payload_too_large`,
    /// `validation_failed`, `unavailable`, `internal`.
    pub code: String,
    /// Human-readable message, lowercase, without a trailing period.
    pub message: String,
    /// JSON path of the offending value, when the error concerns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Every validation error (422 only); the first one is `message`/`path`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ErrorItem>,
}

/// One validation error of a 422.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorItem {
    /// JSON path of the offending value (empty for the whole document).
    pub path: String,
    /// What is wrong there.
    pub message: String,
}
