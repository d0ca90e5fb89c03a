//! The payload of a `policy` event on the server's stream ([`PolicyEvent`]), read into a
//! version and a document.

use serde_json::Value;

use super::ApplyError;
use crate::policy::PolicyVersion;
use crate::protocol::{PolicyEvent, PolicySignature};

/// A policy as the server pushed it, not yet validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyUpdate {
    /// The version the server gave it.
    pub version: PolicyVersion,
    /// The policy document (`name`, `description`, `rules`), ready for
    /// [`Policy::from_value`](crate::Policy::from_value).
    pub document: Value,
    /// The signed document (the rules as the operator signed them), its signature and the rules
    /// this agent's overrides disable, when the version is signed.
    pub signed: Option<SignedUpdate>,
    /// The version this one replaces in a rollback (see
    /// [`PolicyEvent::rollback_from`](crate::protocol::PolicyEvent::rollback_from)).
    pub rollback_from: Option<PolicyVersion>,
}

/// The signed part of a [`PolicyUpdate`].
#[derive(Debug, Clone, PartialEq)]
pub struct SignedUpdate {
    /// `name`, `description` and the rules as signed.
    pub document: Value,
    /// The operator's signature.
    pub signature: PolicySignature,
    /// Rules to disable after the signature is checked.
    pub disabled_rules: Vec<usize>,
}

impl PolicyUpdate {
    /// Reads the `data` of a `policy` event. The envelope tolerates fields it does not know (see
    /// the [compatibility rule](crate::protocol#compatibility-rule)); the document is left for
    /// strict validation.
    ///
    /// ```
    /// use policy_engine::PolicyVersion;
    /// use policy_engine::sync::PolicyUpdate;
    /// let update = PolicyUpdate::from_event(
    ///     r#"{"policyId":"pol_1","version":"v3","name":"p","rules":[],"createdAt":"2026-03-07T12:00:00.000Z"}"#).unwrap();
    /// assert_eq!(update.version, PolicyVersion::new(3));
    /// assert_eq!(update.document, serde_json::json!({"name":"p","rules":[]}));
    /// assert_eq!(
    ///     PolicyUpdate::from_event("not json").unwrap_err().to_string(),
    ///     "policy event is not JSON: expected ident at line 1 column 2"
    /// );
    /// ```
    pub fn from_event(data: &str) -> Result<Self, ApplyError> {
        // serde would also read a struct from an array of its fields: only objects are events.
        if data.trim_start().starts_with('[') {
            return Err(ApplyError::Malformed(
                "policy event is not a JSON object".to_owned(),
            ));
        }
        let event: PolicyEvent = serde_json::from_str(data).map_err(|e| {
            ApplyError::Malformed(match e.classify() {
                serde_json::error::Category::Data => format!("policy event: {e}"),
                _ => format!("policy event is not JSON: {e}"),
            })
        })?;
        let signed = event.signed.clone().map(|part| SignedUpdate {
            document: event.signed_document(part.rules),
            signature: part.signature,
            disabled_rules: part.disabled_rules,
        });
        Ok(Self {
            version: event.version,
            rollback_from: event.rollback_from,
            signed,
            document: event.into_document(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GOLDEN: &str = include_str!("../../tests/data/protocol/policy_event.json");

    #[test]
    fn the_golden_event_reads_into_its_version_and_document() {
        let update = PolicyUpdate::from_event(GOLDEN).unwrap();
        assert_eq!(update.version, PolicyVersion::new(3));
        let golden: Value = serde_json::from_str(GOLDEN).unwrap();
        assert_eq!(
            update.document,
            json!({"name": golden["name"], "description": golden["description"], "rules": golden["rules"]})
        );
        assert!(crate::Policy::from_value(&update.document).is_ok());
    }

    /// Regression: the agent used to strip a hand-kept list of 9 envelope field names and
    /// validate the rest as the document, so any field a newer server added made every agent
    /// refuse every policy.
    #[test]
    fn a_field_a_newer_server_adds_to_the_envelope_does_not_make_the_policy_refused() {
        let mut event: Value = serde_json::from_str(GOLDEN).unwrap();
        event["signature"] = json!({"alg": "ed25519", "value": "c2lnbmF0dXJl"});
        event["rolloutWave"] = json!(2);
        let update = PolicyUpdate::from_event(&event.to_string()).unwrap();
        assert_eq!(update.version, PolicyVersion::new(3));
        assert!(crate::Policy::from_value(&update.document).is_ok());
    }

    /// `budgets` are part of the document, signed or not, and validated strictly with it.
    #[test]
    fn budgets_travel_in_the_document_and_the_signed_document() {
        let mut event: Value = serde_json::from_str(GOLDEN).unwrap();
        event["budgets"] = json!({"kill_process": {"max": 3, "window": "1m"}});
        event["signed"] = json!({"rules": event["rules"], "disabledRules": [],
            "signature": {"keyId": "ac9cbb12e481cf9d", "algorithm": "ed25519",
                          "value": "c2lnbmF0dXJl"}});
        let update = PolicyUpdate::from_event(&event.to_string()).unwrap();
        let policy = crate::Policy::from_value(&update.document).unwrap();
        assert_eq!(policy.budgets.kill_process.map(|b| b.max), Some(3));
        let signed = update.signed.unwrap();
        assert_eq!(signed.document["budgets"], event["budgets"]);
        event["budgets"]["kill_process"]["max"] = json!(-1);
        let update = PolicyUpdate::from_event(&event.to_string()).unwrap();
        let errors = crate::Policy::from_value(&update.document).unwrap_err();
        assert_eq!(
            errors.errors[0].to_string(),
            "budgets.kill_process.max: expected an integer from 0 to 10000, found `-1`"
        );
    }

    #[test]
    fn the_document_itself_stays_strict() {
        let mut event: Value = serde_json::from_str(GOLDEN).unwrap();
        event["rules"][0]["config"]["treshold"] = json!(3);
        let update = PolicyUpdate::from_event(&event.to_string()).unwrap();
        let errors = crate::Policy::from_value(&update.document).unwrap_err();
        assert_eq!(
            errors.errors[0].to_string(),
            "rules[0].config.treshold: unknown field `treshold`, expected one of `trigger`, \
             `threshold`, `duration`, `scope`, `window`"
        );
    }

    #[test]
    fn malformed_payloads() {
        let cases = [
            ("[1]", "policy event is not a JSON object"),
            (
                "7",
                "policy event: invalid type: integer `7`, expected struct PolicyEvent at line 1 column 1",
            ),
            (
                r#"{"version":3,"name":"p","rules":[]}"#,
                "policy event: invalid type: integer `3`, expected a string at line 1 column 12",
            ),
            (
                r#"{"version":"three","name":"p","rules":[]}"#,
                "policy event: expected a policy version like `v3`, found `three` at line 1 column 18",
            ),
            (
                r#"{"name":"p","rules":[]}"#,
                "policy event: missing field `version` at line 1 column 23",
            ),
            (
                r#"{"version":"v1","name":"p","rules":{}}"#,
                "policy event: invalid type: map, expected a sequence at line 1 column 35",
            ),
            (
                r#"{"version":"v1","name":"p","rules":[]"#,
                "policy event is not JSON: EOF while parsing an object at line 1 column 37",
            ),
        ];
        for (data, expected) in cases {
            assert_eq!(
                PolicyUpdate::from_event(data).unwrap_err().to_string(),
                expected,
                "{data}"
            );
        }
    }
}
