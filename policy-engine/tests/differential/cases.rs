//! Random engine workloads decoded from bytes: a policy, an engine config and a stream of events
//! and policy updates. proptest feeds it random bytes, the fuzzer feeds it its corpus; both then
//! compare the engine with the linear model.
//!
//! Vocabularies are small on purpose (three triggers, six addresses, key caps of a few keys) so
//! that rules collide, thresholds are reached, caps evict and windows and blocks expire.

use std::net::IpAddr;

use chrono::{DateTime, TimeDelta, Utc};
use policy_engine::{EngineConfig, Policy, Scope, Severity, ThreatEvent};
use serde_json::{Value, json};

/// One workload.
#[derive(Debug, Clone)]
pub struct Case {
    /// Engine settings.
    pub config: EngineConfig,
    /// The first policy.
    pub policy: Policy,
    /// Events and policy updates, in order.
    pub steps: Vec<Step>,
}

/// One step of a workload.
#[derive(Debug, Clone)]
pub enum Step {
    /// Process this event at this time.
    Event(Box<ThreatEvent>, DateTime<Utc>),
    /// Swap in this policy.
    Update(Box<Policy>),
}

/// Reads choices from bytes; zeros once they run out.
pub struct Source<'a> {
    bytes: &'a [u8],
}

impl<'a> Source<'a> {
    /// Choices from `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// Whether any bytes are left.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&first, rest)) => {
                self.bytes = rest;
                first
            }
            None => 0,
        }
    }

    /// A number below `n` (at most 256).
    pub fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }

    /// True with probability `k`/16.
    pub fn chance(&mut self, k: u8) -> bool {
        self.byte() % 16 < k
    }

    /// One of `items`.
    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        let i = self.below(items.len());
        items.get(i).or(items.first()).cloned().unwrap()
    }
}

const TRIGGERS: &[&str] = &["a", "b", "brute_force"];
const TYPES: &[Option<&str>] = &[None, Some("a"), Some("b"), Some("brute_force"), Some("c")];
const IPS: &[&str] = &[
    "10.0.0.1",
    "10.0.0.2",
    "10.0.0.3",
    "192.0.2.9",
    "2001:db8::1",
    "2001:db8::2",
];

/// Condition pieces: realistic shapes (`type ==` a literal, with `confidence`, `severityLevel`,
/// `process`), shapes no index can place, regexes, and expressions that fail at run time
/// (missing fields, type mismatches, non-boolean results, unknown functions' fallbacks).
pub const ATOMS: &[&str] = &[
    r#"type == "a""#,
    r#"type == "brute_force""#,
    r#""b" == type"#,
    r#"(type == "a" || type == "b")"#,
    r#"type != "c""#,
    "confidence > 0.5",
    "confidence >= 0.9",
    "confidence > 0",
    "confidence == 1",
    "confidence == 1.0",
    "severityLevel >= 3",
    "severityLevel > 1.5",
    "severityLevel == 4",
    r#"severity == "critical""#,
    r#"severity != "info""#,
    r#"process == "sshd""#,
    r#"process > "m""#,
    r#"str::regex_matches(process, "^(nc|ncat)$")"#,
    r#"str::regex_matches(process, "ss")"#,
    r#"str::regex_matches(type, user)"#,
    "pid > 100",
    "pid == 4242",
    "dstPort == 22",
    "dstPort == 22.0",
    r#"user != "root""#,
    r#"user == "root""#,
    "attempts > 3",
    r#"attempts == "x""#,
    r#"srcIp == "10.0.0.1""#,
    r#"filePath == "/tmp/x""#,
    r#"host == "web-1""#,
    r#"id == "e1""#,
    r#"timestamp > "2026-03-01""#,
    "true",
    "false",
    "len(process) > 3",
    "pid + 1 > 5",
    "confidence * 2 > 1",
    "type > 3",
    "-confidence < 0",
    "-pid < 0",
    "confidence",
    "pid",
];

/// A random condition over [`ATOMS`], `depth` levels of `&&`, `||`, `!` and parentheses.
pub fn condition(src: &mut Source<'_>, depth: u32) -> String {
    if depth == 0 || src.chance(6) {
        return src.pick(ATOMS).to_owned();
    }
    let a = condition(src, depth - 1);
    match src.below(6) {
        0 | 1 => format!("{a} && {}", condition(src, depth - 1)),
        2 => format!("({a}) && ({})", condition(src, depth - 1)),
        3 => format!("{a} || {}", condition(src, depth - 1)),
        4 => format!("({a}) || ({})", condition(src, depth - 1)),
        _ => format!("!({a})"),
    }
}

const OPERANDS: &[&str] = &[
    "type",
    "severity",
    "severityLevel",
    "confidence",
    "srcIp",
    "dstPort",
    "pid",
    "process",
    "filePath",
    "user",
    "host",
    "id",
    "timestamp",
    "attempts",
    "other",
    r#""a""#,
    r#""sshd""#,
    r#""critical""#,
    r#""10.0.0.1""#,
    r#""""#,
    "0",
    "1",
    "3",
    "22",
    "4242",
    "9223372036854775807",
    "0.5",
    "1.0",
    "0.0",
    "true",
    "false",
];
const BINARY: &[&str] = &[
    "==", "!=", ">", "<", ">=", "<=", "&&", "||", "+", "-", "*", "/", "%", "^",
];

/// A random expression over every field, literals of every type and most operators, up to
/// `depth` levels: most do not type-check for every event, which is the point.
pub fn expression(src: &mut Source<'_>, depth: u32) -> String {
    if depth == 0 || src.chance(5) {
        return src.pick(OPERANDS).to_owned();
    }
    let a = expression(src, depth - 1);
    match src.below(12) {
        0..=4 => format!("{a} {} {}", src.pick(BINARY), expression(src, depth - 1)),
        5 | 6 => format!(
            "({a}) {} ({})",
            src.pick(BINARY),
            expression(src, depth - 1)
        ),
        7 => format!("!({a})"),
        8 => format!("-{a}"),
        9 => format!(
            r#"str::regex_matches({a}, "{}")"#,
            src.pick(&["^ss", "a", "^(nc|ncat)$", "[0-9]+", ""])
        ),
        10 => format!("str::regex_matches({a}, {})", expression(src, depth - 1)),
        _ => format!(
            "{}({a})",
            src.pick(&["len", "str::to_lowercase", "floor", "typeof"])
        ),
    }
}

fn rule(src: &mut Source<'_>) -> Value {
    let mut rule = match src.below(4) {
        0 => json!({"type": "block_ip", "config": {
            "trigger": src.pick(TRIGGERS),
            "threshold": src.pick(&[1, 2, 3, 5]),
            "duration": src.pick(&["1s", "30s", "5m", "1h", "permanent"]),
            "scope": src.pick(&["host", "fleet"]),
        }}),
        1 => json!({"type": "alert_threshold", "config": {
            "severity": src.pick(&["info", "low", "medium", "high", "critical"]),
            "countPerHour": src.pick(&[1, 2, 3, 5]),
            "notifyChannels": src.pick(&[json!(["email"]), json!(["sms", "email"])]),
        }}),
        2 => json!({"type": "auto_respond", "config": {
            "trigger": src.pick(TRIGGERS),
            "action": src.pick(&["kill_process", "quarantine_file", "block_ip", "isolate_host"]),
            "minConfidence": src.pick(&[0.0, 0.5, 0.9, 1.0]),
            "requireApproval": src.chance(4),
        }}),
        _ => {
            let mut config = json!({
                "condition": condition(src, 3),
                "action": src.pick(&["notify_soc", "alert", "kill_process", "block_ip", "quarantine_file", "isolate_host"]),
            });
            let params = src.pick(&[
                Value::Null,
                json!({"duration": "1h"}),
                json!({"scope": "fleet", "duration": "permanent"}),
                json!({"scope": "nowhere"}),
                json!({"duration": 5}),
                json!({"severity": "high", "channels": ["x"]}),
                json!({"channels": "x"}),
                json!({"severity": "bogus"}),
            ]);
            if !params.is_null() {
                config["params"] = params;
            }
            json!({"type": "custom", "config": config})
        }
    };
    if rule["type"] == "block_ip" && src.chance(10) {
        rule["config"]["window"] = json!(src.pick(&["1s", "10s", "1m", "1h"]));
    }
    if src.chance(5) {
        rule["enabled"] = json!(src.chance(6));
    }
    rule
}

fn policy(rules: Vec<Value>) -> Policy {
    let document = json!({"name": "differential", "rules": rules});
    Policy::from_value(&document)
        .unwrap_or_else(|err| panic!("generated an invalid policy {document}: {err:?}"))
}

fn random_policy(src: &mut Source<'_>, max_rules: usize) -> (Policy, Vec<Value>) {
    let n = 1 + src.below(max_rules);
    let rules: Vec<Value> = (0..n).map(|_| rule(src)).collect();
    (policy(rules.clone()), rules)
}

/// The next policy: a fresh one, or the current one with rules swapped, toggled, changed,
/// dropped or added (so that some rules keep their state and move).
fn updated(src: &mut Source<'_>, rules: &[Value], max_rules: usize) -> (Policy, Vec<Value>) {
    let mut rules = rules.to_vec();
    let n = rules.len();
    match src.below(6) {
        0 => return random_policy(src, max_rules),
        1 if n > 1 => rules.swap(src.below(n), src.below(n)),
        2 => {
            let i = src.below(n);
            if let Some(rule) = rules.get_mut(i) {
                let enabled = rule.get("enabled").and_then(Value::as_bool).unwrap_or(true);
                rule["enabled"] = json!(!enabled);
            }
        }
        3 => {
            let i = src.below(n);
            if let Some(slot) = rules.get_mut(i) {
                *slot = rule(src);
            }
        }
        4 if n > 1 => {
            rules.remove(src.below(n));
        }
        _ => {
            if n < max_rules {
                let at = src.below(n + 1);
                rules.insert(at, rule(src));
            } else {
                rules.rotate_left(1);
            }
        }
    }
    (policy(rules.clone()), rules)
}

/// A random event; `i` numbers its `id`.
pub fn event(src: &mut Source<'_>, i: usize) -> ThreatEvent {
    let mut event = ThreatEvent {
        id: src.pick(&[None, Some("e1".to_owned()), Some(format!("evt-{i}"))]),
        threat_type: src.pick(TYPES).map(str::to_owned),
        severity: src.chance(13).then(|| src.pick(&Severity::ALL)),
        confidence: src.pick(&[0.0, 0.3, 0.5, 0.9, 0.95, 1.0]),
        src_ip: src
            .chance(14)
            .then(|| src.pick(IPS).parse::<IpAddr>().unwrap()),
        dst_port: src.chance(10).then(|| src.pick(&[22, 443, 4444])),
        pid: src.chance(12).then(|| src.pick(&[1, 100, 4242])),
        process: src
            .chance(12)
            .then(|| src.pick(&["sshd", "nginx", "nc", "xmrig"]).to_owned()),
        file_path: src
            .chance(8)
            .then(|| src.pick(&["/tmp/x", "/var/www/a.php"]).to_owned()),
        user: src
            .chance(10)
            .then(|| src.pick(&["root", "alice", "^a"]).to_owned()),
        host: src
            .chance(8)
            .then(|| src.pick(&["web-1", "db-1"]).to_owned()),
        ..ThreatEvent::default()
    };
    if src.chance(8) {
        let attempts = src.pick(&[
            json!(5),
            json!(2),
            json!("x"),
            json!(4.5),
            json!({"n": 1}),
            json!([1, 2]),
        ]);
        event.extra.insert("attempts".to_owned(), attempts);
    }
    event
}

/// Decodes a workload of at most `max_rules` rules per policy and `max_steps` steps.
pub fn decode(bytes: &[u8], max_rules: usize, max_steps: usize) -> Case {
    let mut src = Source::new(bytes);
    let config = EngineConfig {
        max_keys_per_rule: 1 + src.below(6),
        default_block_duration: src
            .pick(&["1s", "10m", "24h", "permanent"])
            .parse()
            .unwrap(),
        default_block_scope: src.pick(&[Scope::Host, Scope::Fleet]),
    };
    let (policy, mut rules) = random_policy(&mut src, max_rules);
    let mut now: DateTime<Utc> = "2026-03-07T12:00:00Z".parse().unwrap();
    let mut steps = Vec::new();
    while steps.len() < max_steps && !src.is_empty() {
        if src.chance(1) {
            let (next, next_rules) = updated(&mut src, &rules, max_rules);
            rules = next_rules;
            steps.push(Step::Update(Box::new(next)));
            continue;
        }
        let step_ms: i64 = match src.below(8) {
            0 => 0,
            1..=3 => src.below(256) as i64 * 4,
            4 | 5 => src.below(61) as i64 * 1_000,
            6 => src.below(121) as i64 * 60_000,
            _ => -(src.below(10) as i64) * 1_000,
        };
        now += TimeDelta::milliseconds(step_ms);
        let mut event = event(&mut src, steps.len());
        event.timestamp = Some(now);
        steps.push(Step::Event(Box::new(event), now));
    }
    Case {
        config,
        policy,
        steps,
    }
}
