//! Benchmark workloads shared by the criterion bench and the `bench` and `rule_bench` examples
//! (which include this file with `#[path]`): a deterministic event mix, and policies of 4, 100
//! and 1,000 rules with and without `custom` conditions of realistic shapes.

#![allow(dead_code, clippy::indexing_slicing)]

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use chrono::{DateTime, TimeDelta, Utc};

/// xorshift64*: deterministic and cheap.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// One of `items`.
    pub fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[(self.next() >> 33) as usize % items.len()]
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        (self.next() >> 33) % n
    }
}

/// The 4-rule policy: the API page's two rules, an `auto_respond` and a disabled rule.
pub const BASE_RULES: &str = r#"
  {"type":"block_ip","config":{"trigger":"brute_force","threshold":50,"duration":"24h","scope":"host"}},
  {"type":"alert_threshold","config":{"severity":"critical","countPerHour":5,"notifyChannels":["telegram","email"]}},
  {"type":"auto_respond","config":{"trigger":"malware","action":"kill_process","minConfidence":0.9}},
  {"type":"block_ip","config":{"trigger":"port_scan","threshold":10,"duration":"1h","scope":"fleet"},"enabled":false}"#;
/// A `custom` rule to add to [`BASE_RULES`].
pub const CUSTOM_RULE: &str = r#",
  {"type":"custom","config":{"condition":"severity == \"critical\" && confidence > 0.9","action":"notify_soc"}}"#;
/// A regex `custom` rule to add to [`BASE_RULES`].
pub const REGEX_RULE: &str = r#",
  {"type":"custom","config":{"condition":"str::regex_matches(process, \"^ssh\")","action":"notify_soc"}}"#;

/// [`BASE_RULES`] followed by `extra` (rules each starting with a comma), as a policy document.
pub fn base_policy(extra: &str) -> String {
    format!(r#"{{"name":"bench","rules":[{BASE_RULES}{extra}]}}"#)
}

/// A realistic mix, one event per millisecond: mostly brute force from 10,000 sources, some
/// scans, some malware; every field a condition of [`scale_policy`] reads is present.
pub fn event_lines(n: usize) -> Vec<String> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let types = [
        "brute_force",
        "brute_force",
        "brute_force",
        "port_scan",
        "malware",
    ];
    let severities = ["info", "low", "medium", "high", "critical"];
    let processes = ["sshd", "nginx", "bash", "xmrig"];
    let start: DateTime<Utc> = DateTime::UNIX_EPOCH + TimeDelta::days(20_520);
    (0..n)
        .map(|i| {
            let r = rng.next();
            let ip = Ipv4Addr::from(0x0a00_0000 | (r % 10_000) as u32);
            let t = start + TimeDelta::milliseconds(i as i64);
            format!(
                r#"{{"id":"evt-{i}","timestamp":"{}","type":"{}","severity":"{}","confidence":{:.2},"srcIp":"{ip}","dstPort":22,"pid":{},"process":"{}","user":"root","host":"web-1"}}"#,
                t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                types[(r >> 20) as usize % types.len()],
                severities[(r >> 24) as usize % severities.len()],
                ((r >> 32) % 101) as f64 / 100.0,
                1000 + (r >> 40) % 30_000,
                processes[(r >> 50) as usize % processes.len()],
            )
        })
        .collect()
}

/// Threat types that rules name: the three of [`event_lines`] among 100.
fn threat_type(rng: &mut Rng) -> String {
    const NAMED: [&str; 24] = [
        "brute_force",
        "port_scan",
        "malware",
        "ransomware",
        "sql_injection",
        "xss",
        "credential_stuffing",
        "privilege_escalation",
        "lateral_movement",
        "data_exfiltration",
        "c2_beacon",
        "crypto_mining",
        "phishing",
        "dns_tunneling",
        "web_shell",
        "rootkit",
        "suspicious_login",
        "impossible_travel",
        "password_spray",
        "dos",
        "arp_spoofing",
        "persistence",
        "defense_evasion",
        "reverse_shell",
    ];
    let k = rng.below(100) as usize;
    NAMED
        .get(k)
        .map_or_else(|| format!("threat_{k:03}"), |name| (*name).to_owned())
}

const PROCESSES: [&str; 8] = [
    "sshd",
    "nginx",
    "bash",
    "xmrig",
    "nc",
    "python3",
    "powershell",
    "curl",
];

/// A `custom` condition of a realistic shape: most test `type ==` a literal, often with
/// `confidence`, `severityLevel` or `process`; some test no `type`; a few use a regex. Like
/// real rules, most are written for threats other than the ones in the stream and rarely fire.
fn custom_condition(rng: &mut Rng) -> String {
    let t = threat_type(rng);
    let process = rng.pick(&PROCESSES);
    let confidence = rng.pick(&["0.5", "0.7", "0.8", "0.9", "0.95"]);
    let level = 1 + rng.below(4);
    match rng.below(100) {
        0..=37 => format!(r#"type == "{t}" && confidence > {confidence}"#),
        38..=52 => format!(r#"type == "{t}" && severityLevel >= {level}"#),
        53..=65 => format!(r#"type == "{t}" && process == "{process}""#),
        66..=75 => {
            let other = threat_type(rng);
            format!(r#"(type == "{t}" || type == "{other}") && confidence >= {confidence}"#)
        }
        76..=80 => format!(
            r#"severityLevel >= 4 && confidence > {}"#,
            rng.pick(&["0.97", "0.98", "0.99"])
        ),
        81..=85 => format!(
            r#"process == "{process}" && dstPort == {}"#,
            rng.pick(&["4444", "3389", "1337"])
        ),
        86..=90 => format!(
            r#"user == "{}" && severity == "critical""#,
            rng.pick(&["admin", "svc_backup", "oracle", "postgres"])
        ),
        91..=94 => {
            format!(r#"type == "{t}" && str::regex_matches(process, "^(nc|ncat|socat)$")"#)
        }
        95..=96 => r#"str::regex_matches(process, "(miner|xmrig|kinsing)$") && confidence > 0.9"#
            .to_owned(),
        _ => format!(
            r#"host == "db-{}" && severityLevel >= {level}"#,
            rng.below(20)
        ),
    }
}

/// A policy of `rules` rules: [`BASE_RULES`], then `block_ip`, `auto_respond` and
/// `alert_threshold` rules in turn (triggers among 100 threat types, 5 % disabled), of which
/// `custom_percent` % are `custom` rules instead.
pub fn scale_policy(rules: usize, custom_percent: usize) -> String {
    let mut rng = Rng(0x5851_f42d_4c95_7f2d ^ rules as u64 ^ (custom_percent as u64) << 32);
    let mut json = format!(r#"{{"name":"scale-{rules}","rules":[{BASE_RULES}"#);
    let customs = rules * custom_percent / 100;
    let generated = rules.saturating_sub(4).max(1);
    for i in 4..rules {
        // Spread the custom rules evenly over the generated ones.
        let j = i - 4;
        let custom = (j * customs) / generated != ((j + 1) * customs) / generated;
        let rule = if custom {
            let action = rng.pick(&[
                r#""action":"notify_soc""#,
                r#""action":"alert","params":{"severity":"high","channels":["soc"]}"#,
                r#""action":"kill_process""#,
                r#""action":"block_ip","params":{"duration":"1h"}"#,
            ]);
            format!(
                r#"{{"type":"custom","config":{{"condition":{},{action}}}"#,
                serde_json::Value::String(custom_condition(&mut rng))
            )
        } else {
            match i % 3 {
                0 => format!(
                    r#"{{"type":"block_ip","config":{{"trigger":"{}","threshold":{},"duration":"{}","scope":"{}"{}}}"#,
                    threat_type(&mut rng),
                    rng.pick(&["5", "10", "20", "50", "100"]),
                    rng.pick(&["1h", "24h", "7d", "permanent"]),
                    rng.pick(&["host", "fleet"]),
                    rng.pick(&[
                        "",
                        r#","window":"1m""#,
                        r#","window":"10m""#,
                        r#","window":"1h""#
                    ]),
                ),
                1 => format!(
                    r#"{{"type":"auto_respond","config":{{"trigger":"{}","action":"{}","minConfidence":{},"requireApproval":{}}}"#,
                    threat_type(&mut rng),
                    rng.pick(&[
                        "kill_process",
                        "quarantine_file",
                        "block_ip",
                        "isolate_host"
                    ]),
                    rng.pick(&["0.8", "0.9", "0.95"]),
                    rng.below(4) == 0,
                ),
                _ => format!(
                    r#"{{"type":"alert_threshold","config":{{"severity":"{}","countPerHour":{},"notifyChannels":["{}"]}}"#,
                    rng.pick(&["low", "medium", "high", "critical"]),
                    rng.pick(&["10", "100", "1000", "10000"]),
                    rng.pick(&["email", "telegram", "pager"]),
                ),
            }
        };
        let enabled = if rng.below(20) == 0 {
            r#","enabled":false"#
        } else {
            ""
        };
        let _ = write!(json, ",\n  {rule}{enabled}}}");
    }
    json.push_str("]}");
    json
}

/// The rule-scale cases: `(name, benchmark id, rules, custom percent)`.
pub const SCALES: [(&str, &str, usize, usize); 5] = [
    ("4 rules", "4_rules", 4, 0),
    ("100 rules", "100_rules", 100, 0),
    ("1,000 rules", "1000_rules", 1000, 0),
    ("100 rules, 30 % custom", "100_rules_30pct_custom", 100, 30),
    (
        "1,000 rules, 30 % custom",
        "1000_rules_30pct_custom",
        1000,
        30,
    ),
];

/// The policy document of a [`SCALES`] case.
pub fn scale_case(rules: usize, custom_percent: usize) -> String {
    if rules <= 4 {
        base_policy("")
    } else {
        scale_policy(rules, custom_percent)
    }
}
