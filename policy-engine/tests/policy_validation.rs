//! Data-driven policy validation: every file under `data/policies/valid` must validate and
//! round-trip; every file under `data/policies/invalid` must fail with exactly the error lines
//! of its `.errors` file. Hostile inputs are generated below.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use policy_engine::Policy;
use serde_json::Value;

fn data_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/policies")
        .join(kind)
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no cases in {}", dir.display());
    files
}

/// Parses `input` and returns its error lines, `PATH: message`, or `None` if it is valid.
fn error_lines(input: &[u8]) -> Option<Vec<String>> {
    Policy::from_json(input)
        .err()
        .map(|e| e.errors.iter().map(ToString::to_string).collect())
}

#[test]
fn valid_policies_validate_and_round_trip() {
    for file in json_files(&data_dir("valid")) {
        let input = fs::read(&file).unwrap();
        let policy = Policy::from_json(&input)
            .unwrap_or_else(|e| panic!("{}: {:?}", file.display(), e.errors));
        let serialized = serde_json::to_vec(&policy.to_document()).unwrap();
        let again = Policy::from_json(&serialized).unwrap();
        assert_eq!(policy, again, "{} does not round-trip", file.display());
    }
}

#[test]
fn invalid_policies_report_every_error_with_its_path() {
    for file in json_files(&data_dir("invalid")) {
        let input = fs::read(&file).unwrap();
        let expected: Vec<String> = fs::read_to_string(file.with_extension("errors"))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let actual =
            error_lines(&input).unwrap_or_else(|| panic!("{} was accepted", file.display()));
        assert_eq!(actual, expected, "{}", file.display());
    }
}

#[test]
fn the_api_page_example_serializes_back_exactly() {
    let input = fs::read(data_dir("valid").join("api-page-example.json")).unwrap();
    let policy = Policy::from_json(&input).unwrap();
    let original: Value = serde_json::from_slice(&input).unwrap();
    assert_eq!(policy.to_json_value(), original);
}

#[test]
fn defaults_are_filled_in_when_serializing() {
    let policy = Policy::from_json(
        br#"{"name":"d","rules":[{"type":"auto_respond","config":{"trigger":"malware","action":"kill_process","minConfidence":0.5}}]}"#,
    )
    .unwrap();
    assert_eq!(
        policy.to_json_value(),
        serde_json::json!({"name":"d","rules":[{"type":"auto_respond","config":{
            "trigger":"malware","action":"kill_process","minConfidence":0.5,"requireApproval":false},
            "enabled":true}]})
    );
}

/// Runs `input` through the parser and requires a verdict within a moment.
fn verdict_quickly(input: &[u8]) -> Option<Vec<String>> {
    let started = Instant::now();
    let verdict = error_lines(input);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    verdict
}

fn policy_with_condition(condition: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "name": "hostile",
        "rules": [{"type": "custom", "config": {"condition": condition, "action": "alert"}}]
    }))
    .unwrap()
}

#[test]
fn hostile_inputs_are_rejected_without_panic_or_overflow() {
    let deep = "[".repeat(100_000);
    let errors = verdict_quickly(deep.as_bytes()).unwrap();
    assert!(
        errors[0].ends_with("]: nesting is deeper than the limit of 64 levels"),
        "{errors:?}"
    );

    let mut big = br#"{"name":"big","description":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 2 * 1024 * 1024));
    big.extend(br#"","rules":[]}"#);
    assert_eq!(
        verdict_quickly(&big).unwrap(),
        ["document is 2097194 bytes, larger than the limit of 1048576 bytes"]
    );

    let long_condition = "a".repeat(1024 * 1024 - 200);
    assert_eq!(
        verdict_quickly(&policy_with_condition(&long_condition)).unwrap(),
        [
            "rules[0].config.condition: string is 1048376 bytes, longer than the limit of 65536 bytes"
        ]
    );

    let condition_over_4k = format!("a == \"{}\"", "b".repeat(5000));
    assert_eq!(
        verdict_quickly(&policy_with_condition(&condition_over_4k)).unwrap(),
        ["rules[0].config.condition: condition is 5007 bytes, longer than the limit of 4096 bytes"]
    );

    let bangs = format!("{}true", "!".repeat(50_000));
    assert_eq!(
        verdict_quickly(&policy_with_condition(&bangs)).unwrap(),
        [
            "rules[0].config.condition: condition is 50004 bytes, longer than the limit of 4096 bytes"
        ]
    );

    let nan_like = br#"{"name":"n","rules":[{"type":"auto_respond","config":{"trigger":"t","action":"block_ip","minConfidence":NaN}}]}"#;
    assert_eq!(
        verdict_quickly(nan_like).unwrap(),
        ["invalid JSON at line 1 column 105: expected value"]
    );

    // Duplicate keys are reported with every other error of the document (contract: all errors
    // of a document); the document is validated with the first value of each.
    let duplicate_top = br#"{"name":"a","name":"b","rules":[]}"#;
    assert_eq!(
        verdict_quickly(duplicate_top).unwrap(),
        [
            "name: duplicate key `name`",
            "rules: expected 1 to 1000 rules, found 0"
        ]
    );
    let duplicates_and_more = br#"{"name":"","rules":[
        {"type":"custom","config":{"condition":"true","action":"alert"}},
        {"type":"custom","config":{"condition":"true","action":"a","action":"b"}},
        {"type":"block_ip","config":{"trigger":"t","threshold":0,"threshold":1,
         "duration":"1h","scope":"host"}}],"zz":1}"#;
    assert_eq!(
        verdict_quickly(duplicates_and_more).unwrap(),
        [
            "rules[1].config.action: duplicate key `action`",
            "rules[2].config.threshold: duplicate key `threshold`",
            "zz: unknown field `zz`, expected one of `name`, `description`, `rules`, `org_id`, `orgId`, `budgets`",
            "name: expected 1 to 200 characters, found 0",
            "rules[2].config.threshold: expected an integer from 1 to 1000000, found `0`",
        ]
    );
    // Valid but for a duplicate: still refused.
    assert_eq!(
        verdict_quickly(br#"{"name":"a","rules":[{"type":"custom","config":{"condition":"true","action":"x","action":"x"}}]}"#).unwrap(),
        ["rules[0].config.action: duplicate key `action`"]
    );

    let many_rules = serde_json::to_vec(&serde_json::json!({
        "name": "many",
        "rules": vec![serde_json::json!({"type":"custom","config":{"condition":"true","action":"x"}}); 1001]
    }))
    .unwrap();
    assert_eq!(
        verdict_quickly(&many_rules).unwrap(),
        ["rules: expected 1 to 1000 rules, found 1001"]
    );

    let long_name = serde_json::to_vec(&serde_json::json!({
        "name": "é".repeat(201),
        "rules": [{"type":"custom","config":{"condition":"true","action":"x"}}]
    }))
    .unwrap();
    assert_eq!(
        verdict_quickly(&long_name).unwrap(),
        ["name: expected 1 to 200 characters, found 201"]
    );

    // A name of spaces, tabs and line breaks names nothing.
    let blank_name = serde_json::to_vec(&serde_json::json!({
        "name": " \t\n ",
        "rules": [{"type":"custom","config":{"condition":"true","action":"x"}}]
    }))
    .unwrap();
    assert_eq!(
        verdict_quickly(&blank_name).unwrap(),
        ["name: expected a name with a visible character, found only whitespace"]
    );

    for garbage in [&b""[..], b"\xff\xfe", b"null", b"\"x\"", b"{\"name\":"] {
        assert!(verdict_quickly(garbage).is_some());
    }
}

/// A policy of `rules` custom rules whose conditions match `process` against `pattern(i)`.
fn regex_policy(rules: usize, pattern: impl Fn(usize) -> String) -> Vec<u8> {
    let rules: Vec<Value> = (0..rules)
        .map(|i| {
            serde_json::json!({"type": "custom", "config": {
                "condition": format!(r#"str::regex_matches(process, "{}")"#, pattern(i)),
                "action": "alert"
            }})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"name": "regexes", "rules": rules})).unwrap()
}

#[test]
fn the_regular_expressions_of_a_policy_are_bounded_one_by_one_and_together() {
    // A probe of the server sent 100 rules of `\w{200}` (11 MB compiled and 50 ms each): each
    // is refused at its rule now, and counts the 256 KiB it was built up to, so after 64 of
    // them the policy's budget is spent and the rest are not compiled.
    let errors = error_lines(&regex_policy(100, |_| r"\\w{200}".to_owned())).unwrap();
    assert_eq!(errors.len(), 65, "{errors:?}");
    for (i, line) in errors.iter().take(64).enumerate() {
        assert!(
            line.starts_with(&format!(
                "rules[{i}].config.condition: at column 30: regular expression `\\w{{200}}` \
                 needs more than 256 KiB compiled"
            )),
            "{line}"
        );
    }
    assert_eq!(
        errors[64],
        "rules[64].config.condition: at column 30: the regular expressions of the policy's \
         conditions need more than 16384 KiB compiled together (`\\w{200}` needs more than 256 \
         KiB, 0 KiB were left): use fewer or simpler patterns"
    );
    // Patterns under the limit each, distinct, and over the policy's 16 MiB together: the rule
    // that goes past the budget is named, once; the rules after it are not compiled for it.
    let errors = error_lines(&regex_policy(1000, |i| format!(r"\\w{{4}}{i}"))).unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let (path, message) = errors[0].split_once(": ").unwrap();
    let index: usize = path
        .strip_prefix("rules[")
        .and_then(|rest| rest.strip_suffix("].config.condition"))
        .unwrap()
        .parse()
        .unwrap();
    // About 220 KiB each.
    assert!((60..90).contains(&index), "{path}");
    assert!(
        message.starts_with(&format!(
            "at column 30: the regular expressions of the policy's conditions need more than \
             16384 KiB compiled together (`\\w{{4}}{index}` takes "
        )),
        "{message}"
    );
    // One rule fewer than that fits.
    assert_eq!(
        error_lines(&regex_policy(index, |i| format!(r"\\w{{4}}{i}"))),
        None
    );
    // A thousand literal patterns (indicators of compromise) are a few MiB: they fit.
    let iocs = regex_policy(1000, |i| format!(r"^(evil{i}|dropper-{i}\\.bin)$"));
    assert_eq!(error_lines(&iocs), None);
}
