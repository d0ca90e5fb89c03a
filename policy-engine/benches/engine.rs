//! Criterion benchmarks of the engine: events per second for the 4-rule policy, with a custom
//! rule and with a regex rule, and JSON Lines parsing throughput.
//! Run with `cargo bench -p policy-engine --bench engine`.

// Benchmark code: a failed unwrap is a broken benchmark.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::net::Ipv4Addr;

use chrono::{DateTime, TimeDelta, Utc};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use policy_engine::{Engine, EngineConfig, Policy, PolicyVersion, ThreatEvent};

const BASE_RULES: &str = r#"
  {"type":"block_ip","config":{"trigger":"brute_force","threshold":50,"duration":"24h","scope":"host"}},
  {"type":"alert_threshold","config":{"severity":"critical","countPerHour":5,"notifyChannels":["telegram","email"]}},
  {"type":"auto_respond","config":{"trigger":"malware","action":"kill_process","minConfidence":0.9}},
  {"type":"block_ip","config":{"trigger":"port_scan","threshold":10,"duration":"1h","scope":"fleet"},"enabled":false}"#;
const CUSTOM_RULE: &str = r#",
  {"type":"custom","config":{"condition":"severity == \"critical\" && confidence > 0.9","action":"notify_soc"}}"#;
const REGEX_RULE: &str = r#",
  {"type":"custom","config":{"condition":"str::regex_matches(process, \"^ssh\")","action":"notify_soc"}}"#;

fn policy(extra: &str) -> Policy {
    let json = format!(r#"{{"name":"bench","rules":[{BASE_RULES}{extra}]}}"#);
    Policy::from_json(json.as_bytes()).unwrap()
}

/// Deterministic mix: mostly brute force from 10,000 sources, some scans, some malware.
fn event_text(n: usize) -> String {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
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
    let mut text = String::new();
    for i in 0..n {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let ip = Ipv4Addr::from(0x0a00_0000 | (r % 10_000) as u32);
        let t = start + TimeDelta::milliseconds(i as i64);
        text.push_str(&format!(
            r#"{{"id":"evt-{i}","timestamp":"{}","type":"{}","severity":"{}","confidence":{:.2},"srcIp":"{ip}","dstPort":22,"pid":{},"process":"{}","user":"root","host":"web-1"}}"#,
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            types[(r >> 20) as usize % types.len()],
            severities[(r >> 24) as usize % severities.len()],
            ((r >> 32) % 101) as f64 / 100.0,
            1000 + (r >> 40) % 30_000,
            processes[(r >> 50) as usize % processes.len()],
        ));
        text.push('\n');
    }
    text
}

fn process(c: &mut Criterion) {
    let text = event_text(100_000);
    let events: Vec<ThreatEvent> = policy_engine::event::parse_lines(text.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let mut group = c.benchmark_group("process");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(10);
    for (name, extra) in [
        ("4_rules", ""),
        ("custom", CUSTOM_RULE),
        ("regex", REGEX_RULE),
    ] {
        let policy = policy(extra);
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || {
                    Engine::new(
                        policy.clone(),
                        PolicyVersion::new(1),
                        EngineConfig::default(),
                    )
                },
                |engine| {
                    let mut actions = 0;
                    for event in &events {
                        let now = event.timestamp.unwrap();
                        actions += engine.process(event, now).actions.len();
                    }
                    actions
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

fn parse(c: &mut Criterion) {
    let text = event_text(100_000);
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.sample_size(10);
    group.bench_function("json_lines", |b| {
        b.iter(|| {
            policy_engine::event::parse_lines(text.as_bytes())
                .filter(|e| e.as_ref().is_ok_and(|e| e.src_ip.is_some()))
                .count()
        });
    });
    group.finish();
}

criterion_group!(benches, process, parse);
criterion_main!(benches);
