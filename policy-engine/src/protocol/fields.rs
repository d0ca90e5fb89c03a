//! The strict reader of small request bodies: field by field, unknown fields refused, every
//! error collected with its JSON path. The server reads every request that is not a policy
//! document with it (the protocol's requests here, its own admin bodies there); policy
//! documents go through [`Policy::from_value`](crate::Policy::from_value).

use serde_json::{Map, Value};

use crate::policy::ValidationError;
use crate::policy::json::{describe, join_key};

/// Field-by-field reading of a JSON object with unknown-field rejection and every error
/// collected.
///
/// ```
/// use policy_engine::protocol::fields::Fields;
/// let body = serde_json::json!({"reason": 3, "extra": true});
/// let mut fields = Fields::default();
/// let reason = fields
///     .object(&body, "", &["reason"])
///     .and_then(|map| fields.opt_string(map, "", "reason"));
/// assert_eq!(reason, None);
/// let errors: Vec<String> = fields.finish().unwrap_err().iter().map(ToString::to_string).collect();
/// assert_eq!(errors, [
///     "extra: unknown field `extra`, expected one of `reason`",
///     "reason: expected a string, found `3`",
/// ]);
/// ```
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

    /// The collected errors, or `Ok` when there are none.
    pub fn finish(self) -> Result<(), Vec<ValidationError>> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}

/// Whether `id` is an org id as the policy library accepts it (1 to 64 letters, digits, `-`,
/// `_` or `.`); records an error at `path` when not.
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
