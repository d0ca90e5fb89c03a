//! The `validate` example as an operator runs it: exit codes and output lines.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

use examples::example_bin;

const DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../policy-engine/tests/data/policies"
);

fn validate(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(example_bin("validate"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn a_valid_file_prints_a_summary_and_exits_0() {
    let output = validate(&[&format!("{DATA}/valid/api-page-example.json")], b"");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        stdout(&output),
        "valid: `Block Brute Force Sources`: 2 rules (1 alert_threshold, 1 block_ip), 2 enabled\n"
    );
}

#[test]
fn an_invalid_file_prints_each_error_and_exits_1() {
    let output = validate(&[&format!("{DATA}/invalid/typo-in-field.json")], b"");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stdout(&output),
        std::fs::read_to_string(format!("{DATA}/invalid/typo-in-field.errors")).unwrap()
    );
}

#[test]
fn stdin_is_read_with_a_dash() {
    let output = validate(&["-"], b"{\n");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stdout(&output),
        "$: invalid JSON at line 2 column 0: EOF while parsing an object\n"
    );
}

#[test]
fn unreadable_files_and_bad_usage_exit_2() {
    let output = validate(&["/nonexistent/policy.json"], b"");
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: cannot read `/nonexistent/policy.json`: No such file or directory (os error 2)\n"
    );
    let output = validate(&[], b"");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("required arguments were not provided")
    );
}

#[test]
fn schema_prints_the_committed_json_schema() {
    let output = validate(&["--schema"], b"");
    assert_eq!(output.status.code(), Some(0));
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policy-engine/schema/policy.schema.json"
    ))
    .unwrap();
    assert_eq!(stdout(&output), committed);
    let output = validate(&["--schema", "policy.json"], b"");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("the argument '--schema' cannot be used with '[FILE]'"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
