//! The JSON Schema of the policy document, for editors and API clients: the committed file
//! `policy-engine/schema/policy.schema.json`, compiled into the library.
//!
//! The schema states every rule of the validator that JSON Schema can express, exactly
//! (`tests/policy_schema.rs` checks that the two agree on every policy of the test data and on
//! generated mutations of them). What it cannot express is checked only by
//! [`Policy::from_json`](super::Policy::from_json):
//!
//! - duplicate keys (a schema validator sees the document after a parser picked one value);
//! - the JSON limits: documents over 1 MiB, nesting deeper than 64, strings over 64 KiB in
//!   bytes;
//! - that a `custom` condition compiles (syntax, read-only, known functions, valid constant
//!   regular expressions, nesting);
//! - that a condition is at most 4096 *bytes*: the schema's `maxLength` counts characters,
//!   so it agrees for ASCII conditions only.

/// The policy document's JSON Schema (draft 2020-12), as committed in
/// `policy-engine/schema/policy.schema.json`.
///
/// ```
/// let schema: serde_json::Value = serde_json::from_str(policy_engine::policy::JSON_SCHEMA).unwrap();
/// assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
/// assert_eq!(schema["required"], serde_json::json!(["name", "rules"]));
/// ```
pub const JSON_SCHEMA: &str = include_str!("../../schema/policy.schema.json");
