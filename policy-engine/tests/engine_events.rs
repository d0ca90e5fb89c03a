//! Threat event parsing: typed known fields, kept extra fields, exact error messages, and JSON
//! Lines with line numbers.

// Test code: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use policy_engine::event::{EventLines, LineError, parse_lines};
use policy_engine::{Severity, ThreatEvent};

#[test]
fn every_known_field_is_typed_and_the_rest_is_kept() {
    let event = ThreatEvent::from_json(
        br#"{"id":"e1","timestamp":"2026-03-07T13:00:00.250+01:00","type":"brute_force",
            "severity":"high","confidence":0.75,"srcIp":"::ffff:203.0.113.7","dstPort":22,
            "pid":4242,"process":"sshd","filePath":"/tmp/x","user":"root","host":"web-1",
            "attempts":12,"tags":["a","b"],"geo":{"cc":"NL"}}"#,
    )
    .unwrap();
    assert_eq!(event.id.as_deref(), Some("e1"));
    assert_eq!(
        event.timestamp.unwrap().to_rfc3339(),
        "2026-03-07T12:00:00.250+00:00"
    );
    assert_eq!(event.threat_type.as_deref(), Some("brute_force"));
    assert_eq!(event.severity, Some(Severity::High));
    assert_eq!(event.confidence, 0.75);
    assert_eq!(event.src_ip, Some("203.0.113.7".parse().unwrap()));
    assert_eq!(event.dst_port, Some(22));
    assert_eq!(event.pid, Some(4242));
    assert_eq!(event.process.as_deref(), Some("sshd"));
    assert_eq!(event.file_path.as_deref(), Some("/tmp/x"));
    assert_eq!(event.user.as_deref(), Some("root"));
    assert_eq!(event.host.as_deref(), Some("web-1"));
    assert_eq!(
        serde_json::Value::Object(event.extra),
        serde_json::json!({"attempts":12,"tags":["a","b"],"geo":{"cc":"NL"}})
    );
}

#[test]
fn absent_and_null_fields_are_none_and_confidence_defaults_to_zero() {
    let event =
        ThreatEvent::from_json(br#"{"type":null,"pid":null,"srcIp":null,"timestamp":null}"#)
            .unwrap();
    assert_eq!(event, ThreatEvent::default());
    assert_eq!(event.confidence, 0.0);
}

#[test]
fn timestamps_in_other_rfc3339_forms_parse_too() {
    for (text, expected) in [
        ("2026-03-07T12:00:00Z", "2026-03-07T12:00:00+00:00"),
        ("2026-03-07t12:00:00z", "2026-03-07T12:00:00+00:00"),
        (
            "2026-03-07T12:00:00.123456789Z",
            "2026-03-07T12:00:00.123456789+00:00",
        ),
        ("2026-03-07T10:30:00-01:30", "2026-03-07T12:00:00+00:00"),
        ("2026-03-07 12:00:00Z", "2026-03-07T12:00:00+00:00"),
    ] {
        let json = format!(r#"{{"timestamp":"{text}"}}"#);
        let event = ThreatEvent::from_json(json.as_bytes()).unwrap();
        assert_eq!(event.timestamp.unwrap().to_rfc3339(), expected, "{text}");
    }
}

#[test]
fn invalid_events_are_reported_with_field_and_position() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"srcIp":"10.0.0.256"}"#,
            "field `srcIp`: expected an IPv4 or IPv6 address, found `10.0.0.256` at line 1 column 21",
        ),
        (
            r#"{"timestamp":"yesterday"}"#,
            "field `timestamp`: expected an RFC 3339 time like `2026-03-07T12:00:00Z`, found `yesterday` at line 1 column 24",
        ),
        (
            r#"{"timestamp":"2026-02-30T00:00:00Z"}"#,
            "field `timestamp`: expected an RFC 3339 time like `2026-03-07T12:00:00Z`, found `2026-02-30T00:00:00Z` at line 1 column 35",
        ),
        (
            r#"{"confidence":1.5}"#,
            "field `confidence`: expected a number from 0.0 to 1.0, found `1.5` at line 1 column 17",
        ),
        (
            r#"{"confidence":"high"}"#,
            "invalid type: string \"high\", expected `confidence` to be a number at line 1 column 20",
        ),
        (
            r#"{"dstPort":70000}"#,
            "field `dstPort`: expected an integer from 0 to 65535, found `70000` at line 1 column 16",
        ),
        (
            r#"{"pid":1.5}"#,
            "field `pid`: expected an integer from 0 to 4294967295, found `1.5` at line 1 column 10",
        ),
        (
            r#"{"type":7}"#,
            "invalid type: integer `7`, expected `type` to be a string at line 1 column 9",
        ),
        (
            r#"{"type":"a","type":"b"}"#,
            "duplicate field `type` at line 1 column 18",
        ),
        (
            r#"{"x":1,"x":2}"#,
            "duplicate field `x` at line 1 column 13",
        ),
        (
            r#"[1,2]"#,
            "invalid type: sequence, expected a threat event object at line 1 column 0",
        ),
        (
            r#"{"type":"a"} {}"#,
            "trailing characters at line 1 column 14",
        ),
        (
            r#"{"type":"#,
            "EOF while parsing a value at line 1 column 8",
        ),
    ];
    for (input, message) in cases {
        let err = ThreatEvent::from_json(input.as_bytes()).unwrap_err();
        assert_eq!(err.to_string(), *message, "{input}");
    }
}

#[test]
fn json_lines_skip_blank_lines_and_report_bad_ones_by_number() {
    let input =
        b"{\"id\":\"a\"}\r\n\n   \n{\"id\":\"b\",\"srcIp\":\"x\"}\nnot json\n{\"id\":\"c\"}";
    let expected_errors = vec![
        LineError {
            line: 4,
            message: "field `srcIp`: expected an IPv4 or IPv6 address, found `x` at column 21"
                .into(),
        },
        LineError {
            line: 5,
            message: "expected ident at column 2".into(),
        },
    ];
    for results in [
        parse_lines(input).collect::<Vec<_>>(),
        EventLines::new(&input[..]).collect::<Vec<_>>(),
    ] {
        let ids: Vec<_> = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|e| e.id.clone().unwrap())
            .collect();
        assert_eq!(ids, ["a", "c"]);
        let errors: Vec<_> = results.into_iter().filter_map(Result::err).collect();
        assert_eq!(errors, expected_errors);
    }
    assert_eq!(
        expected_errors[1].to_string(),
        "line 5: expected ident at column 2"
    );
}

#[test]
fn a_read_error_is_reported_once_and_ends_the_stream() {
    struct Broken;
    impl std::io::Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
    }
    let mut lines = EventLines::new(std::io::BufReader::new(Broken));
    assert_eq!(
        lines.next().unwrap().unwrap_err().to_string(),
        "line 1: cannot read: disk on fire"
    );
    assert!(lines.next().is_none());
}
