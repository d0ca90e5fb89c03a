//! Data-driven engine scenarios: each file under `tests/data/scenarios/` holds a policy, events
//! and the exact output expected, run through one `check()` helper.
//!
//! File format, sections introduced by `--- name` lines (`#` lines are comments):
//! - `--- config`: optional JSON, `{"maxKeysPerRule": N}`;
//! - `--- policy`: a policy document; each one after the first is swapped in with
//!   `update_policy`, versions counting `v1`, `v2`, ...;
//! - `--- events`: JSON Lines; each event's `timestamp` is the time it is processed at;
//! - `--- expect`: per event, its action JSON lines, then its diagnostics prefixed with `! `;
//! - `--- stats`: optional JSON object whose fields must equal those of `EngineStats`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use policy_engine::{Engine, EngineConfig, Policy, PolicyVersion, ThreatEvent};

fn scenario_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/scenarios");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()))
        .map(|entry| entry.map(|e| e.path()).unwrap_or_default())
        .filter(|path| path.extension().is_some_and(|ext| ext == "scenario"))
        .collect();
    files.sort();
    files
}

enum Step {
    Policy(String),
    Events(String),
}

struct Scenario {
    config: EngineConfig,
    steps: Vec<Step>,
    expect: Vec<String>,
    stats: Option<serde_json::Value>,
}

fn parse(text: &str) -> Scenario {
    let mut sections: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("--- ") {
            sections.push((name.trim().to_owned(), String::new()));
        } else if line.starts_with('#') {
            continue;
        } else if let Some((_, body)) = sections.last_mut() {
            body.push_str(line);
            body.push('\n');
        } else {
            assert!(
                line.trim().is_empty() || line.starts_with('#'),
                "text before the first section: {line}"
            );
        }
    }
    let mut scenario = Scenario {
        config: EngineConfig::default(),
        steps: Vec::new(),
        expect: Vec::new(),
        stats: None,
    };
    for (name, body) in sections {
        match name.as_str() {
            "config" => {
                let value: serde_json::Value = serde_json::from_str(&body).unwrap();
                if let Some(cap) = value.get("maxKeysPerRule") {
                    scenario.config.max_keys_per_rule = cap.as_u64().unwrap() as usize;
                }
            }
            "policy" => scenario.steps.push(Step::Policy(body)),
            "events" => scenario.steps.push(Step::Events(body)),
            "expect" => {
                scenario.expect = body
                    .lines()
                    .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                    .map(str::to_owned)
                    .collect();
            }
            "stats" => scenario.stats = Some(serde_json::from_str(&body).unwrap()),
            other => panic!("unknown section `{other}`"),
        }
    }
    scenario
}

/// Runs one scenario file and compares the output line by line.
fn check(path: &Path) -> Result<(), String> {
    let text = fs::read_to_string(path).unwrap();
    let scenario = parse(&text);
    let mut engine: Option<Engine> = None;
    let mut version = 0;
    let mut output = Vec::new();
    for step in &scenario.steps {
        match step {
            Step::Policy(json) => {
                let policy = Policy::from_json(json.as_bytes())
                    .unwrap_or_else(|err| panic!("{}: bad policy: {err}", path.display()));
                version += 1;
                let v = PolicyVersion::new(version);
                match engine.as_mut() {
                    None => engine = Some(Engine::new(policy, v, scenario.config.clone())),
                    Some(engine) => engine.update_policy(policy, v),
                }
            }
            Step::Events(lines) => {
                let engine = engine.as_mut().expect("a policy before events");
                for result in policy_engine::event::parse_lines(lines.as_bytes()) {
                    let event: ThreatEvent =
                        result.unwrap_or_else(|err| panic!("{}: bad event: {err}", path.display()));
                    let now = event.timestamp.expect("scenario events carry a timestamp");
                    let evaluation = engine.process(&event, now);
                    for action in &evaluation.actions {
                        output.push(serde_json::to_string(action).unwrap());
                    }
                    for diagnostic in &evaluation.diagnostics {
                        output.push(format!("! {diagnostic}"));
                    }
                }
            }
        }
    }
    let mut problems = String::new();
    if output != scenario.expect {
        problems.push_str(&format!(
            "expected:\n{}\nactual:\n{}\n",
            scenario.expect.join("\n"),
            output.join("\n")
        ));
    }
    if let (Some(expected), Some(engine)) = (&scenario.stats, &engine) {
        let actual = serde_json::to_value(engine.stats()).unwrap();
        for (field, value) in expected.as_object().unwrap() {
            if actual.get(field) != Some(value) {
                problems.push_str(&format!(
                    "stats.{field}: expected {value}, actual {}\n",
                    actual.get(field).cloned().unwrap_or_default()
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}:\n{problems}", path.display()))
    }
}

#[test]
fn scenarios() {
    let files = scenario_files();
    assert!(files.len() >= 10, "scenario files missing: {files:?}");
    let failures: Vec<String> = files.iter().filter_map(|f| check(f).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_wrong_expectation_fails_the_check() {
    let dir = std::env::temp_dir().join(format!("engine-scenario-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("wrong.scenario");
    fs::write(
        &file,
        r#"--- policy
{"name":"t","rules":[{"type":"block_ip","config":{"trigger":"brute_force","threshold":1,"duration":"1h","scope":"host"}}]}
--- events
{"type":"brute_force","srcIp":"10.0.0.1","timestamp":"2026-03-07T12:00:00Z"}
--- expect
"#,
    )
    .unwrap();
    let result = check(&file);
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        result.unwrap_err(),
        format!(
            "{}:\nexpected:\n\nactual:\n{}\n",
            file.display(),
            r#"{"action":"block_ip","ip":"10.0.0.1","duration":"1h","scope":"host","rule":0,"policyVersion":"v1"}"#
        )
    );
}
