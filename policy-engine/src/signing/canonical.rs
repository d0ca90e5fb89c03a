//! Canonical JSON: the one byte sequence for a JSON value that signer and verifier both
//! compute. Object keys are sorted by their UTF-8 bytes at every level, no whitespace, strings
//! escaped as serde_json escapes them, numbers as serde_json prints them (shortest round-trip
//! form for floats). Explicit sorting keeps the encoding independent of whether serde_json's
//! `preserve_order` feature is enabled somewhere in the dependency graph.

use serde_json::Value;

/// Appends the canonical encoding of `value` to `out`.
///
/// ```
/// let value = serde_json::json!({"b": [1, 2.5, "x\n"], "a": {"d": null, "c": true}});
/// let mut out = Vec::new();
/// policy_engine::signing::canonical::write(&value, &mut out);
/// assert_eq!(out, br#"{"a":{"c":true,"d":null},"b":[1,2.5,"x\n"]}"#);
/// ```
pub fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => out.extend_from_slice(number.to_string().as_bytes()),
        Value::String(text) => string(text, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(key, out);
                out.push(b':');
                write(item, out);
            }
            out.push(b'}');
        }
    }
}

fn string(text: &str, out: &mut Vec<u8>) {
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(value: &Value) -> String {
        let mut out = Vec::new();
        write(value, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a: Value =
            serde_json::from_str(r#"{ "z": 1, "a": [ {"y": "é", "b": -0.5} ] }"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":[{"b":-0.5,"y":"é"}],"z":1}"#).unwrap();
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(canonical(&a), r#"{"a":[{"b":-0.5,"y":"é"}],"z":1}"#);
    }

    #[test]
    fn keys_sort_by_utf8_bytes() {
        let value = serde_json::json!({"b": 1, "B": 2, "é": 3, "a": 4});
        assert_eq!(canonical(&value), r#"{"B":2,"a":4,"b":1,"é":3}"#);
    }

    #[test]
    fn control_characters_are_escaped() {
        let value = serde_json::json!({"k": "tab\there \"quoted\" \u{1}"});
        assert_eq!(canonical(&value), r#"{"k":"tab\there \"quoted\" \u0001"}"#);
    }
}
