//! The payload of a `policy` event on the server's stream, read into a version and a document.

use serde_json::{Map, Value};

use super::ApplyError;
use crate::policy::PolicyVersion;

/// A policy as the server pushed it, not yet validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyUpdate {
    /// The version the server gave it.
    pub version: PolicyVersion,
    /// The policy document (`name`, `description`, `rules`, `org_id`), ready for
    /// [`Policy::from_value`](crate::Policy::from_value).
    pub document: Value,
}

/// Fields the server adds around the policy document (metadata of the stored policy or of the
/// agent's resolved view); they are not part of the document and are dropped before validation.
const ENVELOPE_FIELDS: [&str; 9] = [
    "policyId",
    "id",
    "version",
    "policyVersion",
    "agentId",
    "createdAt",
    "appliedAt",
    "broadcastedTo",
    "updatedAt",
];

impl PolicyUpdate {
    /// Reads a `policy` event: `data` is a JSON object carrying the version (`version` or
    /// `policyVersion`, else the event's `id:` number) and the document, either at the top level
    /// beside the metadata or under `policy`.
    ///
    /// ```
    /// use policy_engine::PolicyVersion;
    /// use policy_engine::sync::PolicyUpdate;
    /// let update = PolicyUpdate::from_event(
    ///     r#"{"agentId":"agent-1","policyVersion":"v3","name":"p","rules":[]}"#, "3").unwrap();
    /// assert_eq!(update.version, PolicyVersion::new(3));
    /// assert_eq!(update.document, serde_json::json!({"name":"p","rules":[]}));
    /// assert_eq!(
    ///     PolicyUpdate::from_event("not json", "").unwrap_err().to_string(),
    ///     "policy event is not JSON: expected ident at line 1 column 2"
    /// );
    /// ```
    pub fn from_event(data: &str, id: &str) -> Result<Self, ApplyError> {
        let value: Value = serde_json::from_str(data)
            .map_err(|e| ApplyError::Malformed(format!("policy event is not JSON: {e}")))?;
        let Value::Object(mut object) = value else {
            return Err(ApplyError::Malformed(
                "policy event is not a JSON object".to_owned(),
            ));
        };
        let version = take_version(&mut object, id)?;
        let document = match object.remove("policy") {
            Some(Value::Object(inner)) => Value::Object(inner),
            Some(_) => {
                return Err(ApplyError::Malformed(
                    "policy event: `policy` is not an object".to_owned(),
                ));
            }
            None => {
                for field in ENVELOPE_FIELDS {
                    object.remove(field);
                }
                Value::Object(object)
            }
        };
        Ok(Self { version, document })
    }
}

fn take_version(object: &mut Map<String, Value>, id: &str) -> Result<PolicyVersion, ApplyError> {
    let named = ["policyVersion", "version"]
        .iter()
        .find_map(|field| object.get(*field).map(|v| (*field, v)));
    match named {
        Some((field, Value::String(text))) => text
            .parse()
            .map_err(|e| ApplyError::Malformed(format!("policy event: `{field}`: {e}"))),
        Some((field, other)) => Err(ApplyError::Malformed(format!(
            "policy event: `{field}` is not a string but `{other}`"
        ))),
        None => id.parse::<u64>().map(PolicyVersion::new).map_err(|_| {
            ApplyError::Malformed(format!("policy event carries no version (`id:` is `{id}`)"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_document_and_version_from_the_id() {
        let update =
            PolicyUpdate::from_event(r#"{"policy":{"name":"p","rules":[]}}"#, "12").unwrap();
        assert_eq!(update.version, PolicyVersion::new(12));
        assert_eq!(update.document, json!({"name":"p","rules":[]}));
    }

    #[test]
    fn stored_policy_shape() {
        let update = PolicyUpdate::from_event(
            r#"{"id":"pol_1","name":"p","version":"v2","rules":[],"org_id":"acme","createdAt":"2026-03-07T12:00:00.000Z"}"#,
            "2",
        )
        .unwrap();
        assert_eq!(update.version, PolicyVersion::new(2));
        assert_eq!(
            update.document,
            json!({"name":"p","rules":[],"org_id":"acme"})
        );
    }

    #[test]
    fn malformed_payloads() {
        let cases = [
            ("[1]", "1", "policy event is not a JSON object"),
            (
                r#"{"version":3}"#,
                "3",
                "policy event: `version` is not a string but `3`",
            ),
            (
                r#"{"policyVersion":"three"}"#,
                "3",
                "policy event: `policyVersion`: expected a policy version like `v3`, found `three`",
            ),
            (
                r#"{"name":"p"}"#,
                "x",
                "policy event carries no version (`id:` is `x`)",
            ),
            (
                r#"{"version":"v1","policy":[]}"#,
                "1",
                "policy event: `policy` is not an object",
            ),
        ];
        for (data, id, expected) in cases {
            assert_eq!(
                PolicyUpdate::from_event(data, id).unwrap_err().to_string(),
                expected,
                "{data}"
            );
        }
    }
}
