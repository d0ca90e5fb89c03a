//! What a shadow run costs the agent: `cargo run --release --example shadow_bench`.
//!
//! Runs the same events through the agent's [`LiveEngine`] (the path every event of a real
//! agent takes) four ways, single thread, best of `--runs`, per CPU-second of the thread:
//! the enforced policy alone; the shadow run's policy alone (its own cost as an engine); the
//! enforced policy with the shadow run beside it; and the enforced policy with one rule in
//! shadow mode. The figure that matters: enforced + shadow costs the two alone plus a small
//! overhead (the tallies and a second lock), i.e. the shadow slows the enforced version by no
//! more than its own cost. Events and policies from `policy-engine/benches/workload`.

use std::time::Instant;

use clap::Parser;
use policy_engine::protocol::ShadowEvent;
use policy_engine::sync::LiveEngine;
use policy_engine::{EngineConfig, Policy, PolicyVersion, ThreatEvent};
use serde_json::Value;

#[path = "bench_support/cpu.rs"]
mod cpu;
#[path = "../../policy-engine/benches/workload/mod.rs"]
mod workload;

use cpu::Rate;

/// Measure the cost of shadow evaluation on the agent.
#[derive(Parser)]
#[command(about, long_about = None)]
struct Args {
    /// Events per run.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Runs per case; the best is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// The enforced policy: the API page's rules, an `auto_respond` and a `custom` rule.
fn enforced() -> String {
    workload::base_policy(workload::CUSTOM_RULE)
}

/// The shadow run: the same with lower thresholds and a regex `custom` rule.
fn candidate() -> String {
    workload::base_policy(workload::REGEX_RULE)
        .replace("\"threshold\":50", "\"threshold\":20")
        .replace("\"minConfidence\":0.9", "\"minConfidence\":0.5")
}

fn live(document: &str, shadow: Option<&str>) -> anyhow::Result<LiveEngine> {
    let live = LiveEngine::new(EngineConfig::default());
    live.apply(
        PolicyVersion::new(1),
        Policy::from_json(document.as_bytes())?,
    )?;
    if let Some(shadow) = shadow {
        let mut value: Value = serde_json::from_str(shadow)?;
        if let Some(document) = value.as_object_mut() {
            document.insert("shadow".to_owned(), Value::from(1));
        }
        let event: ShadowEvent = serde_json::from_value(value)?;
        live.start_shadow(event)?;
    }
    Ok(live)
}

/// Best rate of `runs` fresh engines over `events`, and the actions of the last run.
fn rate(
    make: &dyn Fn() -> anyhow::Result<LiveEngine>,
    events: &[ThreatEvent],
    runs: usize,
) -> anyhow::Result<(Rate, usize)> {
    let mut best = Rate::default();
    let mut actions = 0;
    for _ in 0..runs.max(1) {
        let live = make()?;
        for event in events.iter().take(events.len() / 10) {
            live.process(event, event.timestamp.unwrap_or_default());
        }
        actions = 0;
        let started = Instant::now();
        let cpu = cpu::thread_secs();
        for event in events {
            actions += live
                .process(event, event.timestamp.unwrap_or_default())
                .actions
                .len();
        }
        best = best.best(Rate::of(
            events.len(),
            started.elapsed().as_secs_f64(),
            cpu::thread_secs() - cpu,
        ));
    }
    Ok((best, actions))
}

fn ns(rate: Rate) -> f64 {
    1e9 / rate.cpu.max(1e-9)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "shadow bench: {} cores, one thread, best of {} runs, {} events",
        cpu::cores(),
        args.runs,
        args.events
    );
    let events: Vec<ThreatEvent> = workload::event_lines(args.events)
        .iter()
        .map(|line| ThreatEvent::from_json(line.as_bytes()))
        .collect::<Result<_, _>>()?;
    let enforced = enforced();
    let candidate = candidate();
    let one_rule_in_shadow = enforced.replacen(
        r#"{"type":"custom","config""#,
        r#"{"type":"custom","mode":"shadow","config""#,
        1,
    );
    let (alone, acted) = rate(&|| live(&enforced, None), &events, args.runs)?;
    let (shadow_alone, _) = rate(&|| live(&candidate, None), &events, args.runs)?;
    let (both, acted_both) = rate(&|| live(&enforced, Some(&candidate)), &events, args.runs)?;
    let (rule_mode, _) = rate(&|| live(&one_rule_in_shadow, None), &events, args.runs)?;
    anyhow::ensure!(
        acted == acted_both,
        "the shadow run changed the enforced actions: {acted} alone, {acted_both} beside it"
    );
    let overhead = ns(both) - ns(alone) - ns(shadow_alone);
    for (name, r) in [
        ("enforced alone", alone),
        ("shadow run's policy alone", shadow_alone),
        ("enforced + shadow run", both),
        ("enforced, one rule in shadow mode", rule_mode),
    ] {
        println!(
            "{name:<36} {:>12.0} events/CPU-s {:>8.0} ns/event",
            r.cpu,
            ns(r)
        );
    }
    println!(
        "overhead beyond the two engines: {overhead:.0} ns/event ({:.1} % of enforced + shadow)",
        100.0 * overhead / ns(both)
    );
    examples::figure(
        "agent, enforced alone / shadow alone / both (ns per event, CPU)",
        format!(
            "{:.0} / {:.0} / {:.0} ns (both - the two alone: {overhead:+.0} ns)",
            ns(alone),
            ns(shadow_alone),
            ns(both)
        ),
    );
    examples::figure(
        "agent, one rule in shadow mode vs none (ns per event, CPU)",
        format!("{:.0} vs {:.0} ns", ns(rule_mode), ns(alone)),
    );
    Ok(())
}
