//! The policy document's JSON Schema (`schema/policy.schema.json`) against the validator, with
//! a real JSON Schema validator (the `jsonschema` crate): both must give the same verdict on
//! every policy of the test data (`data/policies`, the `.scenario` files) and on generated
//! mutations of them, and where both refuse a document the schema must flag the place of every
//! error the validator reports (the same JSON path, or the object holding it).
//!
//! The only documents on which they may differ are those whose every validator error is one
//! of [`INEXPRESSIBLE`]: what JSON Schema cannot say. The README lists the same classes.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use jsonschema::Validator;
use policy_engine::policy::JSON_SCHEMA;
use policy_engine::{Condition, Policy, PolicyDuration, ValidationError};
use proptest::prelude::*;
use serde_json::{Value, json};

/// What the validator checks and JSON Schema cannot express. A document may be valid for the
/// schema and invalid for the validator only when every error is of one of these classes.
const INEXPRESSIBLE: &[(Class, &str)] = &[
    (
        Class::NotJson,
        "malformed JSON, and numbers beyond the range of a double (`1e400`): not a JSON instance",
    ),
    (
        Class::DuplicateKey,
        "duplicate keys: a schema validator sees the document after a parser picked one value",
    ),
    (
        Class::JsonLimits,
        "documents over 1 MiB, nesting deeper than 64, strings over 64 KiB (in bytes)",
    ),
    (
        Class::ConditionCompiles,
        "a `custom` condition must compile (syntax, read-only, known functions, regexes, nesting)",
    ),
    (
        Class::ConditionBytes,
        "a condition is at most 4096 bytes; the schema's `maxLength` counts characters",
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    NotJson,
    DuplicateKey,
    JsonLimits,
    ConditionCompiles,
    ConditionBytes,
}

static SCHEMA: LazyLock<Value> = LazyLock::new(|| serde_json::from_str(JSON_SCHEMA).unwrap());
static VALIDATOR: LazyLock<Validator> =
    LazyLock::new(|| jsonschema::draft202012::new(&SCHEMA).unwrap());

/// The class of a validator error JSON Schema cannot express, if it is one. `document` is the
/// document as a permissive parser reads it (`None`: not JSON at all).
fn inexpressible(error: &ValidationError, document: Option<&Value>) -> Option<Class> {
    let message = error.message.as_str();
    if message.starts_with("invalid JSON at line ") {
        return Some(Class::NotJson);
    }
    if message.starts_with("duplicate key `") {
        return Some(Class::DuplicateKey);
    }
    let limit = (message.starts_with("document is ") && message.contains("bytes, larger than"))
        || message.starts_with("nesting is deeper than the limit of")
        || (message.starts_with("string is ") && message.contains("bytes, longer than"));
    if limit {
        return Some(Class::JsonLimits);
    }
    let segments = path_segments(&error.path);
    let is_condition = matches!(
        segments.as_slice(),
        [rules, _, config, condition] if rules == "rules" && config == "config" && condition == "condition"
    );
    if !is_condition {
        return None;
    }
    let source = value_at(document?, &segments)?.as_str()?;
    let compiled = Condition::compile(source).err()?;
    if compiled.to_string() != message {
        return None;
    }
    Some(
        if message.starts_with("condition is ") && message.ends_with(" bytes") {
            Class::ConditionBytes
        } else {
            Class::ConditionCompiles
        },
    )
}

/// `rules[1].config.minConfidence` -> `["rules", "1", "config", "minConfidence"]`.
fn path_segments(path: &str) -> Vec<String> {
    path.split(['.', '['])
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches(']').to_owned())
        .collect()
}

/// A JSON pointer (`/rules/1/config`) as segments.
fn pointer_segments(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

fn value_at<'v>(value: &'v Value, segments: &[String]) -> Option<&'v Value> {
    segments.iter().try_fold(value, |node, segment| match node {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => items.get(segment.parse::<usize>().ok()?),
        _ => None,
    })
}

/// Checks that the schema and the validator agree on `input`; the error says how they differ.
fn check(input: &[u8]) -> Result<(), String> {
    let verdict = Policy::from_json(input);
    let document: Option<Value> = serde_json::from_slice(input).ok();
    let Some(document) = document else {
        let errors = verdict
            .err()
            .ok_or("the validator accepts a document serde_json cannot read")?
            .errors;
        return match errors.iter().find(|e| inexpressible(e, None).is_none()) {
            None => Ok(()),
            Some(error) => Err(format!("not JSON, yet the validator says `{error}`")),
        };
    };
    let schema_errors: Vec<(Vec<String>, String)> = VALIDATOR
        .iter_errors(&document)
        .map(|e| {
            (
                pointer_segments(&e.instance_path().to_string()),
                e.to_string(),
            )
        })
        .collect();
    match verdict {
        Ok(_) if schema_errors.is_empty() => Ok(()),
        Ok(_) => Err(format!(
            "the schema refuses a valid policy: {schema_errors:?}"
        )),
        Err(error) => {
            for error in &error.errors {
                if inexpressible(error, Some(&document)).is_some() {
                    continue;
                }
                let segments = path_segments(&error.path);
                let flagged = schema_errors.iter().any(|(at, _)| segments.starts_with(at));
                if !flagged {
                    return Err(format!(
                        "the validator says `{error}`, the schema flags nothing there: {schema_errors:?}"
                    ));
                }
            }
            Ok(())
        }
    }
}

fn files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no `.{extension}` files in {}",
        dir.display()
    );
    files
}

/// Every policy document of the test data, with where it comes from.
fn test_data() -> Vec<(String, Vec<u8>)> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut documents = Vec::new();
    for kind in ["valid", "invalid"] {
        for file in files(&data.join("policies").join(kind), "json") {
            documents.push((file.display().to_string(), fs::read(&file).unwrap()));
        }
    }
    for file in files(&data.join("scenarios"), "scenario") {
        let text = fs::read_to_string(&file).unwrap();
        let mut section: Option<String> = None;
        let mut count = 0;
        for line in text.lines().chain(["--- end"]) {
            if let Some(name) = line.strip_prefix("--- ") {
                if let Some(policy) = section.take() {
                    count += 1;
                    documents.push((
                        format!("{} policy {count}", file.display()),
                        policy.into_bytes(),
                    ));
                }
                if name.trim() == "policy" {
                    section = Some(String::new());
                }
            } else if let Some(policy) = section.as_mut().filter(|_| !line.starts_with('#')) {
                policy.push_str(line);
                policy.push('\n');
            }
        }
        assert!(count > 0, "no policy in {}", file.display());
    }
    documents
}

#[test]
fn the_schema_is_a_valid_draft_2020_12_schema() {
    jsonschema::meta::validate(&SCHEMA).unwrap();
    assert_eq!(
        SCHEMA["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
}

#[test]
fn schema_and_validator_agree_on_every_policy_of_the_test_data() {
    let documents = test_data();
    let mut valid = 0;
    for (name, input) in &documents {
        if let Err(difference) = check(input) {
            panic!("{name}: {difference}");
        }
        valid += usize::from(Policy::from_json(input).is_ok());
    }
    // The data holds both kinds, so the agreement covers acceptance and refusal.
    assert!(
        valid >= 10 && documents.len() - valid >= 10,
        "{valid} of {}",
        documents.len()
    );
}

#[test]
fn the_schema_refuses_what_it_can_express_of_the_invalid_test_data() {
    // Every invalid file with an error the schema can express is refused by the schema itself.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/policies/invalid");
    let mut refused = 0;
    for file in files(&dir, "json") {
        let input = fs::read(&file).unwrap();
        let Ok(document) = serde_json::from_slice::<Value>(&input) else {
            continue;
        };
        let errors = Policy::from_json(&input).unwrap_err().errors;
        if errors
            .iter()
            .any(|e| inexpressible(e, Some(&document)).is_none())
        {
            assert!(!VALIDATOR.is_valid(&document), "{}", file.display());
            refused += 1;
        }
    }
    assert!(refused >= 8, "{refused}");
}

#[test]
fn each_inexpressible_class_has_a_document_the_schema_accepts_and_the_validator_refuses() {
    let condition = |c: &str| json!({"name": "c", "rules": [{"type": "custom", "config": {"condition": c, "action": "x"}}]});
    let two_byte_chars = format!("a == \"{}\"", "é".repeat(2045));
    let cases: Vec<(Class, Vec<u8>)> = vec![
        (Class::NotJson, b"{\"name\": ".to_vec()),
        (
            Class::DuplicateKey,
            br#"{"name": "a", "name": "b", "rules": [{"type": "custom", "config": {"condition": "true", "action": "x"}}]}"#.to_vec(),
        ),
        (
            Class::JsonLimits,
            serde_json::to_vec(&json!({"name": "deep", "rules": [{"type": "custom", "config": {
                "condition": "true", "action": "x", "params": (0..70).fold(json!(1), |v, _| json!({"a": v}))}}]}))
            .unwrap(),
        ),
        (
            Class::ConditionCompiles,
            serde_json::to_vec(&condition("x = 1")).unwrap(),
        ),
        (
            Class::ConditionBytes,
            serde_json::to_vec(&condition(&two_byte_chars)).unwrap(),
        ),
    ];
    for (class, input) in cases {
        let errors = Policy::from_json(&input).unwrap_err().errors;
        let document: Option<Value> = serde_json::from_slice(&input).ok();
        if let Some(document) = &document {
            assert!(VALIDATOR.is_valid(document), "{class:?}");
        }
        let classes: Vec<Option<Class>> = errors
            .iter()
            .map(|e| inexpressible(e, document.as_ref()))
            .collect();
        assert_eq!(classes, [Some(class)], "{class:?}: {errors:?}");
        check(&input).unwrap();
    }
    assert_eq!(INEXPRESSIBLE.len(), 5);
}

/// The `Duration` and `FiniteDuration` patterns (the 10-year cap in each unit, leading zeros)
/// against the parser, around every boundary of their digit ranges.
#[test]
fn duration_patterns_agree_with_the_parser_at_every_boundary() {
    let compile = |name: &str| jsonschema::draft202012::new(&SCHEMA["$defs"][name]).unwrap();
    let (any, finite) = (compile("Duration"), compile("FiniteDuration"));
    let max_per_unit = [
        ('s', 315_360_000u64),
        ('m', 5_256_000),
        ('h', 87_600),
        ('d', 3_650),
        ('w', 521),
    ];
    let mut checked = 0;
    for (unit, max) in max_per_unit {
        let mut amounts: Vec<u64> = (0..=1_100).collect();
        amounts.extend(max.saturating_sub(1_100)..=max + 1_100);
        for power in 1..=10u32 {
            for digit in 1..=9u64 {
                let round = digit * 10u64.pow(power);
                amounts.extend([round - 1, round, round + 1]);
                let near_max = max / 10u64.pow(power) * 10u64.pow(power);
                amounts.extend([near_max.saturating_sub(1), near_max, near_max + 1]);
            }
        }
        amounts.push(u64::MAX);
        for amount in amounts {
            for text in [format!("{amount}{unit}"), format!("00{amount}{unit}")] {
                let parsed = text.parse::<PolicyDuration>();
                let instance = Value::String(text.clone());
                assert_eq!(any.is_valid(&instance), parsed.is_ok(), "`{text}`");
                let is_finite = parsed.is_ok_and(|d| !d.is_permanent());
                assert_eq!(finite.is_valid(&instance), is_finite, "`{text}`");
                checked += 1;
            }
        }
    }
    for text in [
        "permanent",
        "Permanent",
        "1y",
        "1",
        "h",
        "",
        " 1h",
        "1h ",
        "+1h",
        "-1h",
        "1.5h",
        "１h",
    ] {
        let instance = Value::String(text.to_owned());
        assert_eq!(
            any.is_valid(&instance),
            text.parse::<PolicyDuration>().is_ok(),
            "`{text}`"
        );
    }
    assert!(checked > 20_000, "{checked}");
}

/// `NonEmptyString` against the validator's `trim().is_empty()`: every white-space character
/// of Unicode, and the look-alikes that are not white space.
#[test]
fn the_non_empty_patterns_agree_with_trim_on_every_character() {
    // Every string the validator refuses when it is only white space (`trim`): its pattern
    // must not be ECMAScript's `\S`, whose white space differs from Rust's (U+FEFF is white
    // space there, U+0085 is not): a policy named "\u{feff}" was refused by the schema only.
    let patterns = [
        ("NonEmptyString", &SCHEMA["$defs"]["NonEmptyString"]),
        ("name", &SCHEMA["properties"]["name"]),
        (
            "condition",
            &SCHEMA["$defs"]["CustomConfig"]["properties"]["condition"],
        ),
    ];
    let mut characters: Vec<char> = (0..0x3100u32).filter_map(char::from_u32).collect();
    characters.extend(['\u{feff}', '\u{200b}', '\u{180e}', '\u{2060}', '\u{10ffff}']);
    for (name, schema) in patterns {
        assert!(schema.is_object(), "{name}: no such schema");
        let non_empty = jsonschema::draft202012::new(schema).unwrap();
        for &c in &characters {
            for text in [c.to_string(), format!(" {c}\t")] {
                assert_eq!(
                    non_empty.is_valid(&Value::String(text.clone())),
                    !text.trim().is_empty(),
                    "{name}: U+{:04X}",
                    u32::from(c)
                );
            }
        }
    }
}

/// Values a mutation puts somewhere: the boundaries of every field, every name the schema
/// knows, and every JSON type.
fn interesting_values() -> Vec<Value> {
    let mut values = vec![
        json!(null),
        json!(true),
        json!(false),
        json!(0),
        json!(1),
        json!(-1),
        json!(-0.0),
        json!(0.5),
        json!(1.0),
        json!(1.5),
        json!(50.0),
        json!(50.5),
        json!(1_000_000),
        json!(1_000_001),
        json!(1_000_000.0),
        json!(4_294_967_295u64),
        json!(4_294_967_296u64),
        json!(4_294_967_295.0),
        json!(1e19),
        json!(""),
        json!(" "),
        json!("\u{3000}"),
        json!("\u{feff}"),
        json!("x"),
        json!("é".repeat(200)),
        json!("é".repeat(201)),
        json!("a".repeat(64)),
        json!("a".repeat(65)),
        json!("acme"),
        json!("../etc"),
        json!("permanent"),
        json!("0s"),
        json!("1s"),
        json!("007h"),
        json!("1y"),
        json!("10m"),
        json!("521w"),
        json!("522w"),
        json!("3650d"),
        json!("3651d"),
        json!("87601h"),
        json!("315360000s"),
        json!("5256001m"),
        json!("severity == \"high\""),
        json!("x = 1"),
        json!("("),
        json!("str::regex_matches(process, \"[\")"),
        json!("a".repeat(4097)),
        json!(format!("a == \"{}\"", "é".repeat(2045))),
        json!([]),
        json!([""]),
        json!(["telegram", "email"]),
        json!(["a", 1]),
        json!({}),
        json!({"team": "blue"}),
        json!({"trigger": "t", "threshold": 5, "duration": "1h", "scope": "host"}),
        json!({"severity": "high", "countPerHour": 5, "notifyChannels": ["x"]}),
        json!({"trigger": "t", "action": "kill_process", "minConfidence": 0.5}),
        json!({"condition": "true", "action": "x"}),
        json!({"type": "custom", "config": {"condition": "true", "action": "x"}}),
    ];
    for name in [
        "block_ip",
        "alert_threshold",
        "auto_respond",
        "custom",
        "firewall",
        "host",
        "fleet",
        "galaxy",
        "kill_process",
        "quarantine_file",
        "isolate_host",
        "reboot",
        "info",
        "low",
        "medium",
        "high",
        "critical",
        "urgent",
        "brute_force",
        "approval",
        "drop",
    ] {
        values.push(json!(name));
    }
    values
}

/// Field names a mutation inserts: every field of the document, and a typo.
const FIELD_NAMES: &[&str] = &[
    "name",
    "description",
    "rules",
    "org_id",
    "orgId",
    "type",
    "config",
    "enabled",
    "trigger",
    "threshold",
    "duration",
    "scope",
    "window",
    "severity",
    "countPerHour",
    "notifyChannels",
    "action",
    "minConfidence",
    "requireApproval",
    "condition",
    "params",
    "budgets",
    "onExceed",
    "kill_process",
    "quarantine_file",
    "isolate_host",
    "block_ip",
    "fleet_block",
    "max",
    "treshold",
];

/// Values around the boundaries of the field `name` (for array elements, the array's name).
fn field_values(name: &str) -> Vec<Value> {
    match name {
        "name" => vec![
            json!(""),
            json!(" "),
            json!("x"),
            json!("é".repeat(200)),
            json!("é".repeat(201)),
        ],
        "description" => vec![json!(""), json!("x"), json!(1)],
        "rules" => vec![json!([]), json!({}), json!("x")],
        "budgets" => vec![
            json!({}),
            json!([]),
            json!({"kill_process": {"max": 3, "window": "1m"}}),
            json!({"fleet_block": {"max": 3, "window": "1m", "onExceed": "drop"}}),
        ],
        "kill_process" | "quarantine_file" | "isolate_host" | "block_ip" | "fleet_block" => vec![
            json!({}),
            json!({"max": 3, "window": "1m"}),
            json!({"max": 3, "window": "1m", "onExceed": "drop"}),
            json!({"max": 3}),
            json!(3),
        ],
        "onExceed" => vec![json!("approval"), json!("drop"), json!("Drop"), json!(true)],
        "max" => vec![
            json!(0),
            json!(10_000),
            json!(10_001),
            json!(10_000.0),
            json!(2.5),
            json!(-1),
            json!("3"),
        ],
        "org_id" | "orgId" => vec![
            json!(""),
            json!("acme"),
            json!("a.b-c_D9"),
            json!("a".repeat(64)),
            json!("a".repeat(65)),
            json!("../etc"),
            json!("é"),
            json!("a b"),
        ],
        "type" => vec![
            json!("block_ip"),
            json!("alert_threshold"),
            json!("auto_respond"),
            json!("custom"),
            json!("firewall"),
            json!("Block_ip"),
        ],
        "config" | "params" => vec![json!({}), json!([]), json!({"a": 1}), json!("x")],
        "enabled" | "requireApproval" => vec![json!(true), json!(false), json!("yes"), json!(1)],
        "trigger" => vec![
            json!(""),
            json!(" "),
            json!("\u{3000}"),
            json!("\u{feff}"),
            json!("x"),
        ],
        "threshold" => vec![
            json!(0),
            json!(1),
            json!(1_000_000),
            json!(1_000_001),
            json!(1_000_000.0),
            json!(1_000_000.5),
            json!(50.0),
            json!(1.5),
            json!(-1),
            json!("5"),
            json!(1e19),
        ],
        "duration" | "window" => vec![
            json!("permanent"),
            json!("0s"),
            json!("1s"),
            json!("007h"),
            json!("1y"),
            json!("1 h"),
            json!("521w"),
            json!("522w"),
            json!("3650d"),
            json!("3651d"),
            json!("87600h"),
            json!("87601h"),
            json!("5256000m"),
            json!("5256001m"),
            json!("315360000s"),
            json!("315360001s"),
            json!(""),
            json!(60),
        ],
        "scope" => vec![
            json!("host"),
            json!("fleet"),
            json!("galaxy"),
            json!("Host"),
        ],
        "severity" => vec![
            json!("info"),
            json!("low"),
            json!("medium"),
            json!("high"),
            json!("critical"),
            json!("urgent"),
            json!(3),
        ],
        "countPerHour" => vec![
            json!(0),
            json!(1),
            json!(4_294_967_295u64),
            json!(4_294_967_296u64),
            json!(4_294_967_295.0),
            json!(-1),
            json!(1.5),
            json!("5"),
        ],
        "notifyChannels" => vec![
            json!([]),
            json!([""]),
            json!([" "]),
            json!(["a"]),
            json!(["a", 1]),
            json!("a"),
            json!(""),
            json!(1),
        ],
        "action" => vec![
            json!("kill_process"),
            json!("quarantine_file"),
            json!("block_ip"),
            json!("isolate_host"),
            json!("alert"),
            json!("reboot"),
            json!(""),
            json!(" "),
        ],
        "minConfidence" => vec![
            json!(0),
            json!(1),
            json!(-0.0),
            json!(0.5),
            json!(1.0000001),
            json!(-0.1),
            json!(1.5),
            json!("high"),
            json!(true),
        ],
        "condition" => vec![
            json!("true"),
            json!(""),
            json!(" "),
            json!("x = 1"),
            json!("("),
            json!("a".repeat(4096)),
            json!("a".repeat(4097)),
            json!(format!("a == \"{}\"", "é".repeat(2045))),
        ],
        _ => Vec::new(),
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the node with a value around the boundaries of its field.
    Boundary { node: usize, value: usize },
    /// Replace the node with any interesting value.
    Replace { node: usize, value: usize },
    /// Replace the node with `null`.
    Null { node: usize },
    /// Remove a field of an object node, or an element of an array node.
    Remove { node: usize, item: usize },
    /// Insert a field into an object node, or duplicate an element of an array node.
    Insert {
        node: usize,
        field: usize,
        value: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), any::<usize>()).prop_map(|(node, value)| Mutation::Boundary { node, value }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(node, value)| Mutation::Replace { node, value }),
        1 => any::<usize>().prop_map(|node| Mutation::Null { node }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(node, item)| Mutation::Remove { node, item }),
        1 => (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(node, field, value)| Mutation::Insert { node, field, value }),
    ]
}

/// The nodes of `value` in pre-order, as paths.
fn node_paths(value: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(path.clone());
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                path.push(key.clone());
                node_paths(child, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                path.push(index.to_string());
                node_paths(child, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'v>(value: &'v mut Value, path: &[String]) -> &'v mut Value {
    path.iter().fold(value, |node, segment| match node {
        Value::Object(map) => map.get_mut(segment).unwrap(),
        Value::Array(items) => &mut items[segment.parse::<usize>().unwrap()],
        _ => unreachable!(),
    })
}

fn apply(document: &mut Value, mutation: &Mutation, values: &[Value]) {
    let mut paths = Vec::new();
    node_paths(document, &mut Vec::new(), &mut paths);
    let pick = |node: usize| paths[node % paths.len()].clone();
    match *mutation {
        Mutation::Boundary { node, value } => {
            let path = pick(node);
            let field = path
                .iter()
                .rev()
                .find(|s| s.parse::<usize>().is_err())
                .map_or("", String::as_str);
            let choices = field_values(field);
            if !choices.is_empty() {
                *node_mut(document, &path) = choices[value % choices.len()].clone();
            }
        }
        Mutation::Null { node } => *node_mut(document, &pick(node)) = Value::Null,
        Mutation::Replace { node, value } => {
            *node_mut(document, &pick(node)) = values[value % values.len()].clone();
        }
        Mutation::Remove { node, item } => match node_mut(document, &pick(node)) {
            Value::Object(map) if !map.is_empty() => {
                let key = map.keys().nth(item % map.len()).unwrap().clone();
                map.remove(&key);
            }
            Value::Array(items) if !items.is_empty() => {
                items.remove(item % items.len());
            }
            _ => {}
        },
        Mutation::Insert { node, field, value } => match node_mut(document, &pick(node)) {
            Value::Object(map) => {
                let name = FIELD_NAMES[field % FIELD_NAMES.len()];
                let mut choices = field_values(name);
                choices.extend_from_slice(values);
                map.insert(name.to_owned(), choices[value % choices.len()].clone());
            }
            Value::Array(items) if !items.is_empty() => {
                let copy = items[field % items.len()].clone();
                items.push(copy);
            }
            _ => {}
        },
    }
}

/// The fields each object of a policy may hold, by the object's place (`config` by rule type):
/// a mutation inserts these with their boundary values, and one unknown field.
fn fields_of(document: &Value, path: &[String]) -> Vec<&'static str> {
    match path {
        [] => vec!["name", "description", "rules", "org_id", "orgId", "budgets"],
        [budgets] if budgets == "budgets" => vec![
            "onExceed",
            "kill_process",
            "quarantine_file",
            "isolate_host",
            "block_ip",
            "fleet_block",
        ],
        [budgets, kind] if budgets == "budgets" && kind == "fleet_block" => vec!["max", "window"],
        [budgets, _] if budgets == "budgets" => vec!["max", "window", "onExceed"],
        [rules, _] if rules == "rules" => vec!["type", "config", "enabled"],
        [rules, index, config] if rules == "rules" && config == "config" => match document["rules"]
            [index.parse::<usize>().unwrap()]["type"]
            .as_str()
        {
            Some("block_ip") => vec!["trigger", "threshold", "duration", "scope", "window"],
            Some("alert_threshold") => vec!["severity", "countPerHour", "notifyChannels"],
            Some("auto_respond") => vec!["trigger", "action", "minConfidence", "requireApproval"],
            Some("custom") => vec!["condition", "action", "params"],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Every single mutation of `seed`: each node set to `null` and to each boundary value of its
/// field, each field and element removed, each field its object may hold inserted (replaced)
/// with each of its boundary values, and an unknown field inserted.
fn single_mutations(seed: &Value) -> Vec<Value> {
    let mut paths = Vec::new();
    node_paths(seed, &mut Vec::new(), &mut paths);
    let mut out = Vec::new();
    for path in &paths {
        let field = path
            .iter()
            .rev()
            .find(|s| s.parse::<usize>().is_err())
            .map_or("", String::as_str);
        for value in field_values(field).into_iter().chain([Value::Null]) {
            let mut document = seed.clone();
            *node_mut(&mut document, path) = value;
            out.push(document);
        }
        match node_mut(&mut seed.clone(), path) {
            Value::Object(map) => {
                for key in map.keys() {
                    let mut document = seed.clone();
                    if let Value::Object(map) = node_mut(&mut document, path) {
                        map.remove(key);
                    }
                    out.push(document);
                }
                for name in fields_of(seed, path).into_iter().chain(["treshold"]) {
                    for value in field_values(name).into_iter().chain([json!("x")]) {
                        let mut document = seed.clone();
                        if let Value::Object(map) = node_mut(&mut document, path) {
                            map.insert((*name).to_owned(), value);
                        }
                        out.push(document);
                    }
                }
            }
            Value::Array(items) => {
                for index in 0..items.len() {
                    let mut document = seed.clone();
                    if let Value::Array(items) = node_mut(&mut document, path) {
                        items.remove(index);
                    }
                    out.push(document);
                }
            }
            _ => {}
        }
    }
    out
}

/// Each distinct rule of the valid test data alone in a policy (so that a mutation of one rule
/// does not pay for compiling the conditions of the others).
fn single_rule_seeds() -> Vec<Value> {
    let mut seen = std::collections::BTreeSet::new();
    let mut seeds = Vec::new();
    for seed in SEEDS.iter().filter(|s| Policy::from_value(s).is_ok()) {
        for rule in seed["rules"].as_array().unwrap() {
            let mut document = seed.clone();
            document["rules"] = json!([rule]);
            if seen.insert(document.to_string()) {
                seeds.push(document);
            }
        }
    }
    seeds
}

#[test]
fn schema_and_validator_agree_on_every_single_mutation_of_the_valid_policies() {
    let mut checked = 0;
    for seed in single_rule_seeds() {
        for document in single_mutations(&seed) {
            let input = serde_json::to_vec(&document).unwrap();
            if let Err(difference) = check(&input) {
                panic!("{difference}\ndocument: {document}");
            }
            checked += 1;
        }
    }
    assert!(checked > 5_000, "{checked}");
}

static SEEDS: LazyLock<Vec<Value>> = LazyLock::new(|| {
    test_data()
        .into_iter()
        .filter_map(|(_, input)| serde_json::from_slice(&input).ok())
        .collect()
});
static VALUES: LazyLock<Vec<Value>> = LazyLock::new(interesting_values);

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    /// Mutations of the test data's policies (values swapped for boundary values and other
    /// types, fields removed and inserted, rules dropped and repeated) get the same verdict
    /// from the schema and the validator.
    #[test]
    fn schema_and_validator_agree_on_mutated_policies(
        seed in any::<usize>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut document = SEEDS[seed % SEEDS.len()].clone();
        for mutation in &mutations {
            apply(&mut document, mutation, &VALUES);
        }
        let input = serde_json::to_vec(&document).unwrap();
        if let Err(difference) = check(&input) {
            return Err(TestCaseError::fail(format!("{difference}\ndocument: {document}")));
        }
    }
}

/// Regression guard for the mutation test itself: it reaches both verdicts and every rule
/// type, so agreement is not vacuous.
#[test]
fn the_mutations_reach_valid_and_invalid_documents_of_every_rule_type() {
    let values = interesting_values();
    let mut valid = 0;
    let mut invalid = 0;
    for (index, seed) in SEEDS.iter().enumerate() {
        for value in 0..values.len() {
            let mut document = seed.clone();
            apply(
                &mut document,
                &Mutation::Replace {
                    node: index + value,
                    value,
                },
                &values,
            );
            match Policy::from_value(&document) {
                Ok(_) => valid += 1,
                Err(_) => invalid += 1,
            }
        }
    }
    assert!(
        valid > 100 && invalid > 100,
        "{valid} valid, {invalid} invalid"
    );
    let types: Vec<&str> = SEEDS
        .iter()
        .filter_map(|s| s["rules"].as_array())
        .flatten()
        .filter_map(|r| r["type"].as_str())
        .collect();
    for rule_type in ["block_ip", "alert_threshold", "auto_respond", "custom"] {
        assert!(types.contains(&rule_type), "{rule_type}");
    }
}
