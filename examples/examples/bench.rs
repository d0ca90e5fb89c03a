//! Engine throughput and memory figures: `cargo run --release --example bench`.
//!
//! Prints events/s for the 4-rule policy (the API page's two rules, an `auto_respond` and a
//! disabled rule), with a `custom` rule added, and with a regex `custom` rule; JSON Lines parsing
//! in MB/s; tracked-key memory in bytes per key at 1,000,000 keys (from RSS); and RSS while
//! 10,000,000 distinct IPs arrive with the cap at 1,000,000. Single thread.

// Indexes are taken modulo the array lengths.
#![allow(clippy::indexing_slicing)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use clap::Parser;
use policy_engine::{Engine, EngineConfig, Policy, PolicyVersion, ThreatEvent};

/// Measure engine throughput and memory.
#[derive(Parser)]
#[command(about, long_about = None)]
struct Args {
    /// Events per throughput run.
    #[arg(long, default_value_t = 2_000_000)]
    events: usize,
    /// Distinct IPs arriving in the spray run.
    #[arg(long, default_value_t = 10_000_000)]
    spray: u32,
    /// Key cap of the memory runs.
    #[arg(long, default_value_t = 1_000_000)]
    cap: usize,
}

const BASE_RULES: &str = r#"
  {"type":"block_ip","config":{"trigger":"brute_force","threshold":50,"duration":"24h","scope":"host"}},
  {"type":"alert_threshold","config":{"severity":"critical","countPerHour":5,"notifyChannels":["telegram","email"]}},
  {"type":"auto_respond","config":{"trigger":"malware","action":"kill_process","minConfidence":0.9}},
  {"type":"block_ip","config":{"trigger":"port_scan","threshold":10,"duration":"1h","scope":"fleet"},"enabled":false}"#;
const CUSTOM_RULE: &str = r#",
  {"type":"custom","config":{"condition":"severity == \"critical\" && confidence > 0.9","action":"notify_soc"}}"#;
const REGEX_RULE: &str = r#",
  {"type":"custom","config":{"condition":"str::regex_matches(process, \"^ssh\")","action":"notify_soc"}}"#;

fn policy(extra: &str) -> anyhow::Result<Policy> {
    let json = format!(r#"{{"name":"bench","rules":[{BASE_RULES}{extra}]}}"#);
    Ok(Policy::from_json(json.as_bytes())?)
}

/// xorshift64*: deterministic and cheap.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A realistic mix: mostly brute force from 10,000 sources, some scans, some malware.
fn event_lines(n: usize) -> Vec<String> {
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

fn throughput(name: &str, policy: Policy, events: &[ThreatEvent]) {
    let mut engine = Engine::new(policy, PolicyVersion::new(1), EngineConfig::default());
    let mut actions = 0usize;
    // Warm up on a tenth, then time a full pass.
    for event in &events[..events.len() / 10] {
        let now = event.timestamp.unwrap_or_default();
        actions += engine.process(event, now).actions.len();
    }
    let started = Instant::now();
    for event in events {
        let now = event.timestamp.unwrap_or_default();
        actions += engine.process(event, now).actions.len();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name:<44} {:>12.0} events/s  ({} events, {actions} actions, {} condition errors)",
        events.len() as f64 / secs,
        events.len(),
        engine.stats().condition_errors
    );
    examples::figure(
        &format!("engine, {name}"),
        format!("{:.2} M events/s", events.len() as f64 / secs / 1e6),
    );
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn spray_engine(cap: usize) -> anyhow::Result<Engine> {
    let policy = Policy::from_json(
        br#"{"name":"spray","rules":[{"type":"block_ip","config":{"trigger":"brute_force","threshold":1000,"duration":"24h","scope":"host"}}]}"#,
    )?;
    Ok(Engine::new(
        policy,
        PolicyVersion::new(1),
        EngineConfig {
            max_keys_per_rule: cap,
            ..EngineConfig::default()
        },
    ))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Memory first, while the heap holds nothing else.
    // Memory per tracked key: RSS growth while `cap` distinct keys arrive.
    let start: DateTime<Utc> = DateTime::UNIX_EPOCH + TimeDelta::days(20_520);
    let mut event = ThreatEvent {
        threat_type: Some("brute_force".into()),
        ..ThreatEvent::default()
    };
    let mut engine = spray_engine(args.cap)?;
    let before = rss_bytes();
    for i in 0..args.cap as u32 {
        event.src_ip = Some(IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761))));
        engine.process(&event, start + TimeDelta::microseconds(i64::from(i)));
    }
    let after = rss_bytes();
    println!(
        "{:<44} {:>12.1} bytes/key ({} keys, RSS {} MB)",
        "tracked-key memory",
        after.saturating_sub(before) as f64 / engine.stats().tracked_keys.max(1) as f64,
        engine.stats().tracked_keys,
        after / 1_000_000
    );
    let per_key = after.saturating_sub(before) as f64 / engine.stats().tracked_keys.max(1) as f64;
    drop(engine);

    // Spray: RSS must stay flat once the cap is reached.
    let mut engine = spray_engine(args.cap)?;
    let mut samples = Vec::new();
    let started = Instant::now();
    for i in 0..args.spray {
        event.src_ip = Some(IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761))));
        engine.process(&event, start + TimeDelta::microseconds(i64::from(i)));
        if (i + 1) % (args.spray / 10).max(1) == 0 {
            samples.push((i + 1, rss_bytes(), engine.stats().tracked_keys));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    for (n, rss, keys) in &samples {
        println!(
            "  spray {n:>10} IPs: RSS {:>5} MB, {keys} keys",
            rss / 1_000_000
        );
    }
    // Baseline: the first sample taken with the cap reached.
    let at_cap = samples
        .iter()
        .find(|s| s.2 >= args.cap as u64)
        .map_or(0, |s| s.1) as f64;
    let max = samples
        .iter()
        .filter(|s| s.2 >= args.cap as u64)
        .map(|s| s.1)
        .max()
        .unwrap_or(0) as f64;
    println!(
        "{:<44} {:>12.1} % RSS growth after the cap ({} evictions, {:.0} events/s)",
        "spray flatness",
        (max / at_cap.max(1.0) - 1.0) * 100.0,
        engine.stats().evictions,
        f64::from(args.spray) / secs
    );
    examples::figure(
        "tracked-key memory (block_ip)",
        format!(
            "{per_key:.1} bytes/key at {} keys; RSS growth {:.1} % from {} to {} distinct IPs (cap {})",
            args.cap,
            (max / at_cap.max(1.0) - 1.0) * 100.0,
            args.cap,
            args.spray,
            args.cap
        ),
    );
    drop(engine);

    let lines = event_lines(args.events);
    let text = lines.join("\n");

    // JSON Lines parsing, one event at a time as `simulate` and agents do.
    let mut best = 0.0f64;
    let mut count = 0usize;
    for _ in 0..3 {
        let started = Instant::now();
        count = 0;
        for event in policy_engine::event::parse_lines(text.as_bytes()) {
            let event = event?;
            count += usize::from(event.src_ip.is_some());
        }
        best = best.max(text.len() as f64 / started.elapsed().as_secs_f64() / 1e6);
    }
    println!(
        "{:<44} {best:>12.0} MB/s     ({count} events, {} bytes/event)",
        "JSON Lines parsing",
        text.len() / lines.len().max(1)
    );
    examples::figure("JSON Lines -> `ThreatEvent`", format!("{best:.0} MB/s"));
    let parsed =
        policy_engine::event::parse_lines(text.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    drop(text);
    drop(lines);

    throughput(
        "4 rules (API's two + auto_respond + disabled)",
        policy("")?,
        &parsed,
    );
    throughput(
        "4 rules + custom severity/confidence",
        policy(CUSTOM_RULE)?,
        &parsed,
    );
    throughput("4 rules + custom regex", policy(REGEX_RULE)?, &parsed);
    drop(parsed);

    Ok(())
}
