//! Signed policy versions on the wire: the signature an operator's key makes over a policy
//! document, its org and its version ([`PolicySignature`]), and the signed file that
//! `policy-sign` writes and `POST /api/policy` accepts ([`SignedPolicy`]).
//!
//! The bytes that are signed are defined in [`signing`](crate::signing) (feature `signing`);
//! these are only the JSON shapes, so the server reads and stores them without the crypto.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::policy::json::{JsonLimits, describe, join_key, parse_strict};
use crate::policy::{PolicyVersion, ValidationError};
use crate::protocol::fields::{Fields, check_org_id};

/// Longest `keyId` accepted (the ids this crate makes are 16 hex digits).
pub const MAX_KEY_ID_CHARS: usize = 64;
/// Longest signature `value` accepted (an Ed25519 signature is 88 base64 characters).
pub const MAX_SIGNATURE_CHARS: usize = 128;

/// `{"keyId": "...", "algorithm": "ed25519", "value": "<base64>"}`: who signed, and the
/// signature over [`signing::payload`](crate::signing::payload).
///
/// ```
/// use policy_engine::protocol::{PolicySignature, SignatureAlgorithm};
/// let signature: PolicySignature =
///     serde_json::from_str(r#"{"keyId":"0123456789abcdef","algorithm":"ed25519","value":"AAAA"}"#).unwrap();
/// assert_eq!(signature.algorithm, SignatureAlgorithm::Ed25519);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySignature {
    /// The signing key's id: the first 8 bytes of the SHA-256 of its public key, in hex.
    pub key_id: String,
    /// The signature algorithm.
    pub algorithm: SignatureAlgorithm,
    /// The signature, standard base64 with padding.
    pub value: String,
    /// Rollout terms the operator signed with the version, when any: they are part of what
    /// is signed, so a server cannot add or change them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutTerms>,
}

/// What the operator allows a rollout of this version to do: `{"fallback": "v6"}` lets agents
/// pinned to the key go back from this version to v6 (and only to v6) when the rollout is
/// rolled back. Without terms, agents never accept an older version than one they applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutTerms {
    /// The version agents may return to from this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<PolicyVersion>,
}

/// Signature algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureAlgorithm {
    /// Ed25519 (RFC 8032), verified strictly (no small-order keys, canonical signatures).
    Ed25519,
}

/// A policy document signed for one org and one version:
/// `{"orgId": "acme", "version": "v7", "policy": {...}, "signature": {...}}`.
///
/// The version is part of what is signed, so a signature made for `v7` cannot be replayed as
/// any other version; the server accepts it only as its org's next version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedPolicy {
    /// The org the signature is for.
    pub org_id: String,
    /// The version the signature is for.
    pub version: PolicyVersion,
    /// The policy document as the operator wrote it (validated by whoever reads it).
    pub policy: Value,
    /// The operator's signature.
    pub signature: PolicySignature,
}

impl SignedPolicy {
    /// Whether a request body is a signed policy rather than a plain policy document: it has a
    /// `signature` field and a `policy` or `version` field, which a policy document never has.
    /// A document with a stray `signature` (and nothing else of a signed file) stays a
    /// document, refused for that unknown field as every reader refuses it.
    pub fn is_signed_document(body: &Value) -> bool {
        body.get("signature").is_some()
            && (body.get("policy").is_some() || body.get("version").is_some())
    }

    /// Parses a signed policy file with the strict JSON reader (size, depth and duplicate-key
    /// limits of policy documents), then [`SignedPolicy::from_value`].
    pub fn from_json(input: &[u8]) -> Result<Self, Vec<ValidationError>> {
        let value = parse_strict(input, JsonLimits::default())
            .map_err(|e| vec![e.into_validation_error()])?;
        Self::from_value(&value)
    }

    /// Reads a signed policy strictly (unknown fields refused), every error with its path. The
    /// embedded document is not validated here: that is
    /// [`Policy::from_value`](crate::Policy::from_value)'s job.
    pub fn from_value(value: &Value) -> Result<Self, Vec<ValidationError>> {
        let mut fields = Fields::default();
        let Some(map) = fields.object(value, "", &["orgId", "version", "policy", "signature"])
        else {
            return Err(fields.errors);
        };
        let org_id = fields
            .req_string(map, "", "orgId")
            .filter(|id| check_org_id(&mut fields, "orgId", id));
        let version = fields.req_string(map, "", "version").and_then(|text| {
            match text.parse::<PolicyVersion>() {
                Ok(version) if version.number() >= 1 => Some(version),
                _ => {
                    fields.push(
                        "version",
                        format!(
                            "expected a version such as `v7`, found `{}`",
                            text.chars().take(32).collect::<String>()
                        ),
                    );
                    None
                }
            }
        });
        let policy = match map.get("policy") {
            Some(policy @ Value::Object(_)) => Some(policy.clone()),
            Some(other) => {
                fields.push(
                    "policy",
                    format!("expected a policy document, found {}", describe(other)),
                );
                None
            }
            None => {
                fields.push("policy", "missing required field `policy`");
                None
            }
        };
        let signature = match map.get("signature") {
            Some(value) => PolicySignature::read(&mut fields, value, "signature"),
            None => {
                fields.push("signature", "missing required field `signature`");
                None
            }
        };
        fields.finish()?;
        match (org_id, version, policy, signature) {
            (Some(org_id), Some(version), Some(policy), Some(signature)) => Ok(Self {
                org_id,
                version,
                policy,
                signature,
            }),
            _ => Err(vec![ValidationError::new("", "incomplete signed policy")]),
        }
    }
}

impl PolicySignature {
    /// Reads a signature object strictly at `path`, pushing errors into `fields`.
    pub fn read(fields: &mut Fields, value: &Value, path: &str) -> Option<Self> {
        let map = fields.object(value, path, &["keyId", "algorithm", "value", "rollout"])?;
        let key_id = fields.req_string(map, path, "keyId").and_then(|id| {
            let ok = id.chars().count() <= MAX_KEY_ID_CHARS
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if ok {
                Some(id)
            } else {
                fields.push(
                    &join_key(path, "keyId"),
                    format!(
                        "expected 1 to {MAX_KEY_ID_CHARS} letters, digits, `-` or `_`, found `{}`",
                        id.chars().take(MAX_KEY_ID_CHARS).collect::<String>()
                    ),
                );
                None
            }
        });
        let algorithm =
            fields
                .req_string(map, path, "algorithm")
                .and_then(|name| match name.as_str() {
                    "ed25519" => Some(SignatureAlgorithm::Ed25519),
                    _ => {
                        fields.push(
                            &join_key(path, "algorithm"),
                            format!(
                                "unknown algorithm `{}`, expected `ed25519`",
                                name.chars().take(32).collect::<String>()
                            ),
                        );
                        None
                    }
                });
        let signature = fields.req_string(map, path, "value").and_then(|value| {
            if value.len() <= MAX_SIGNATURE_CHARS {
                Some(value)
            } else {
                fields.push(
                    &join_key(path, "value"),
                    format!("signature longer than {MAX_SIGNATURE_CHARS} characters"),
                );
                None
            }
        });
        let rollout = match map.get("rollout") {
            None | Some(Value::Null) => Some(None),
            Some(terms) => RolloutTerms::read(fields, terms, &join_key(path, "rollout")).map(Some),
        };
        Some(Self {
            key_id: key_id?,
            algorithm: algorithm?,
            value: signature?,
            rollout: rollout?,
        })
    }
}

impl RolloutTerms {
    /// Reads rollout terms strictly at `path`, pushing errors into `fields`.
    pub fn read(fields: &mut Fields, value: &Value, path: &str) -> Option<Self> {
        let map = fields.object(value, path, &["fallback"])?;
        let fallback = match fields.opt_string(map, path, "fallback") {
            None => None,
            Some(text) => match text.parse::<PolicyVersion>() {
                Ok(version) if version.number() >= 1 => Some(version),
                _ => {
                    fields.push(
                        &join_key(path, "fallback"),
                        format!(
                            "expected a version such as `v6`, found `{}`",
                            text.chars().take(32).collect::<String>()
                        ),
                    );
                    return None;
                }
            },
        };
        Some(Self { fallback })
    }
}
