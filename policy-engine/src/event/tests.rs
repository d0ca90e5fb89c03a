//! The fast path and the serde visitor agree on every input the fast path accepts.

use proptest::prelude::*;

use super::{ThreatEvent, fast};

fn serde_path(line: &[u8]) -> Result<ThreatEvent, String> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let event = serde::Deserialize::deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(event)
}

/// Values, valid and invalid, for every field.
fn token() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "null",
        "true",
        "false",
        "0",
        "1",
        "-1",
        "0.5",
        "1.0",
        "1e0",
        "2.5e-1",
        "01",
        "1.",
        "-",
        "70000",
        "65535",
        "4294967296",
        "\"\"",
        "\"x\"",
        "\"brute_force\"",
        "\"critical\"",
        "\"info\"",
        "\"urgent\"",
        "\"10.0.0.1\"",
        "\"::ffff:10.0.0.1\"",
        "\"2001:db8::1\"",
        "\"2026-03-07T12:00:00Z\"",
        "\"2026-03-07T12:00:00.5+01:00\"",
        "\"2026-02-30T00:00:00Z\"",
        "\"a\\\"b\"",
        "\"é\"",
        "[1]",
        "{\"a\":1}",
        "\"tab\there\"",
    ])
}

fn key() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "id",
        "timestamp",
        "type",
        "severity",
        "confidence",
        "srcIp",
        "dstPort",
        "pid",
        "process",
        "filePath",
        "user",
        "host",
        "attempts",
        "geo",
        "",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn fast_path_equals_the_visitor(
        fields in prop::collection::vec((key(), token()), 0..8),
        spaces in prop::bool::ANY,
    ) {
        let sep = if spaces { " , " } else { "," };
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        let line = format!("{{{}}}", body.join(sep));
        let slow = serde_path(line.as_bytes());
        if let Some(event) = fast::parse(line.as_bytes()) {
            prop_assert_eq!(Ok(event), slow, "{}", line);
        }
    }
}

#[test]
fn the_fast_path_takes_the_common_shape() {
    let line = br#"{"id":"evt-1","timestamp":"2026-03-07T12:00:00.000Z","type":"brute_force","severity":"high","confidence":0.42,"srcIp":"10.0.0.7","dstPort":22,"pid":1234,"process":"sshd","user":"root","host":"web-1","attempts":3}"#;
    let event = fast::parse(line).expect("common shape");
    assert_eq!(Ok(event), serde_path(line));
    assert!(fast::parse(br#"{"id":"a\"b"}"#).is_none());
}
