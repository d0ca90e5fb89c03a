//! Engine throughput and memory figures: `cargo run --release --example bench`.
//!
//! Prints the core count; events/s for the 4-rule policy (the API page's two rules, an
//! `auto_respond` and a disabled rule), with a `custom` rule added, and with a regex `custom`
//! rule, per second of wall time and per second of the thread's CPU time (the stable figure on
//! a shared machine), best of `--runs`; JSON Lines parsing in MB/s; tracked-key memory in bytes
//! per key at 1,000,000 keys (from RSS); and RSS while 10,000,000 distinct IPs arrive with the
//! cap at 1,000,000. Single thread. Rule-scale figures (100 and 1,000 rules) come from
//! `rule_bench`; events and policies from `policy-engine/benches/workload`.

// Indexes are taken modulo the array lengths.
#![allow(clippy::indexing_slicing)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use clap::Parser;
use policy_engine::{Engine, EngineConfig, Policy, PolicyVersion, ThreatEvent};

#[path = "bench_support/cpu.rs"]
mod cpu;
#[path = "../../policy-engine/benches/workload/mod.rs"]
mod workload;

use cpu::Rate;

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
    /// Throughput runs per policy; the best is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

fn policy(extra: &str) -> anyhow::Result<Policy> {
    Ok(Policy::from_json(workload::base_policy(extra).as_bytes())?)
}

fn throughput(name: &str, policy: &Policy, events: &[ThreatEvent], runs: usize) {
    let mut best = Rate::default();
    let mut outcome = (0, 0);
    for _ in 0..runs.max(1) {
        let mut engine = Engine::new(
            policy.clone(),
            PolicyVersion::new(1),
            EngineConfig::default(),
        );
        // Warm up on a tenth, then time a full pass.
        for event in &events[..events.len() / 10] {
            engine.process(event, event.timestamp.unwrap_or_default());
        }
        let mut actions = 0usize;
        let started = Instant::now();
        let cpu = cpu::thread_secs();
        for event in events {
            let now = event.timestamp.unwrap_or_default();
            actions += engine.process(event, now).actions.len();
        }
        best = best.best(Rate::of(
            events.len(),
            started.elapsed().as_secs_f64(),
            cpu::thread_secs() - cpu,
        ));
        outcome = (actions, engine.stats().condition_errors);
    }
    println!(
        "{name:<44} {:>12.0} events/s {:>12.0} events/CPU-s  ({} events, {} actions, {} condition errors)",
        best.wall,
        best.cpu,
        events.len(),
        outcome.0,
        outcome.1
    );
    examples::figure(
        &format!("engine, {name}"),
        format!(
            "{:.2} M events/s ({:.2} M per CPU-second)",
            best.wall / 1e6,
            best.cpu / 1e6
        ),
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
    println!(
        "engine bench: {} cores, engine on one thread, best of {} runs",
        cpu::cores(),
        args.runs
    );
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

    let lines = workload::event_lines(args.events);
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
        &policy("")?,
        &parsed,
        args.runs,
    );
    throughput(
        "4 rules + custom severity/confidence",
        &policy(workload::CUSTOM_RULE)?,
        &parsed,
        args.runs,
    );
    throughput(
        "4 rules + custom regex",
        &policy(workload::REGEX_RULE)?,
        &parsed,
        args.runs,
    );
    drop(parsed);

    Ok(())
}
