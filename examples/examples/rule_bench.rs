//! Rule-scale figures: `cargo run --release --example rule_bench`.
//!
//! Events per second for policies of 4, 100 and 1,000 rules (`block_ip`, `auto_respond`,
//! `alert_threshold`), and of 100 and 1,000 rules of which 30 % are `custom` conditions of
//! realistic shapes, each with its ratio to the 4-rule rate measured in the same run:
//! engine-only (parsed events through `Engine::process`, one thread) and end to end (the
//! `simulate` example replaying a JSON Lines file, actions written to /dev/null). Rates are
//! given per second of wall time and per second of CPU time (the engine thread's, or the
//! `simulate` process's): on a machine shared with other work the CPU-time rate is the stable
//! one, and ratios are computed from it. Each figure is the best of `--runs` runs. Policies and
//! events are those of `policy-engine/benches/workload`. One `figure` line per case (engine-only
//! and end-to-end rates per CPU-second with their ratios) goes into the README's table through
//! `.ci/bench`. `simulate` is built (release) when it is not next to this binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use policy_engine::condition::Evaluator;
use policy_engine::{Engine, EngineConfig, Policy, PolicyVersion, RuleKind, ThreatEvent};

#[path = "bench_support/cpu.rs"]
mod cpu;
#[path = "../../policy-engine/benches/workload/mod.rs"]
mod workload;

use cpu::Rate;

/// Measure engine throughput as policies grow from 4 to 1,000 rules.
#[derive(Parser)]
#[command(about, long_about = None)]
struct Args {
    /// Events per engine-only run.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Events in the file replayed by `simulate`.
    #[arg(long, default_value_t = 1_000_000)]
    e2e_events: usize,
    /// Runs per figure; the best is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The `simulate` binary (default: next to this one).
    #[arg(long)]
    simulate: Option<PathBuf>,
    /// Skip the end-to-end runs.
    #[arg(long)]
    engine_only: bool,
    /// Only the case of this name (for profiling).
    #[arg(long)]
    only: Option<String>,
    /// Write the policies (`policy-<id>.json`) and the end-to-end events (`events.jsonl`) to
    /// this directory and exit, to run `simulate` on them by hand.
    #[arg(long)]
    write_files: Option<PathBuf>,
}

struct Case {
    name: &'static str,
    policy: Policy,
    json: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cores = cpu::cores();
    let cases = workload::SCALES
        .iter()
        .filter(|(name, _, _, _)| args.only.as_ref().is_none_or(|only| name == only))
        .map(|&(name, _, rules, custom)| {
            let json = workload::scale_case(rules, custom);
            let policy = Policy::from_json(json.as_bytes())
                .map_err(|err| anyhow::anyhow!("{name}: {err:?}"))?;
            Ok(Case { name, policy, json })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(dir) = &args.write_files {
        return write_files(&args, dir);
    }
    println!(
        "rule scale: {cores} cores, engine on one thread, best of {} runs",
        args.runs
    );
    for case in &cases {
        describe(case);
    }

    let lines = workload::event_lines(args.events);
    let events = policy_engine::event::parse_lines(lines.join("\n").as_bytes())
        .collect::<Result<Vec<ThreatEvent>, _>>()?;
    drop(lines);
    println!("\nengine only ({} parsed events)", events.len());
    println!(
        "{:<28} {:>14} {:>14} {:>10} {:>10} {:>12}",
        "policy", "events/s", "events/CPU-s", "vs 4 rules", "actions", "cond. errors"
    );
    // Runs go round the cases, so that every case sees the same spread of machine load.
    let mut best = vec![Rate::default(); cases.len()];
    let mut outcomes = vec![(0, 0); cases.len()];
    for _ in 0..args.runs.max(1) {
        for (i, case) in cases.iter().enumerate() {
            let (rate, actions, errors) = engine_run(&case.policy, &events);
            if let (Some(best), Some(outcome)) = (best.get_mut(i), outcomes.get_mut(i)) {
                *best = best.best(rate);
                *outcome = (actions, errors);
            }
        }
    }
    let base = best.first().copied().unwrap_or_default();
    for ((case, best), outcome) in cases.iter().zip(&best).zip(&outcomes) {
        println!(
            "{:<28} {:>14.0} {:>14.0} {:>10.3} {:>10} {:>12}",
            case.name,
            best.wall,
            best.cpu,
            best.cpu / base.cpu,
            outcome.0,
            outcome.1
        );
    }
    drop(events);

    let e2e = if args.engine_only {
        Vec::new()
    } else {
        end_to_end(&args, &cases)?
    };
    let e2e_base = e2e.first().copied().unwrap_or_default();
    for (i, (case, engine)) in cases.iter().zip(&best).enumerate() {
        let mut result = format!(
            "engine {} events/CPU-s ({:.2}x of 4 rules)",
            millions(engine.cpu),
            engine.cpu / base.cpu
        );
        if let Some(e2e) = e2e.get(i) {
            result.push_str(&format!(
                "; simulate {} events/CPU-s ({:.2}x)",
                millions(e2e.cpu),
                e2e.cpu / e2e_base.cpu
            ));
        }
        examples::figure(&format!("rule scale, {}", case.name), result);
    }
    Ok(())
}

/// A rate in M or k, two or three significant digits.
fn millions(rate: f64) -> String {
    if rate >= 999.5e3 {
        format!("{:.2}M", rate / 1e6)
    } else {
        format!("{:.0}k", rate / 1e3)
    }
}

/// The `simulate` binary: `--simulate`, or the one next to this binary, built when missing.
fn simulate_binary(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.simulate {
        return Ok(path.clone());
    }
    let path = std::env::current_exe()?.with_file_name("simulate");
    if !path.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        println!("building `simulate` (release) for the end-to-end runs");
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "examples",
                "--example",
                "simulate",
            ])
            .status()
            .context("cannot run cargo to build `simulate`")?;
        if !status.success() {
            bail!("building `simulate` failed: {status}");
        }
    }
    if !path.exists() {
        bail!(
            "`{}` not found: build it with `cargo build --release --example simulate`",
            path.display()
        );
    }
    Ok(path)
}

/// Writes every case's policy and the end-to-end event file to `dir`.
fn write_files(args: &Args, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (_, id, rules, custom) in workload::SCALES {
        let path = dir.join(format!("policy-{id}.json"));
        std::fs::write(&path, workload::scale_case(rules, custom))?;
        println!("{}", path.display());
    }
    let path = dir.join("events.jsonl");
    let mut text = workload::event_lines(args.e2e_events).join("\n");
    text.push('\n');
    std::fs::write(&path, text)?;
    println!("{}", path.display());
    Ok(())
}

/// One line on what a policy holds.
fn describe(case: &Case) {
    let rules = &case.policy.rules;
    let count = |name: &str| rules.iter().filter(|r| r.kind.type_name() == name).count();
    let conditions: Vec<_> = rules
        .iter()
        .filter_map(|r| match &r.kind {
            RuleKind::Custom(custom) => Some(&custom.condition),
            _ => None,
        })
        .collect();
    let compiled = conditions
        .iter()
        .filter(|c| Evaluator::new(c).is_compiled())
        .count();
    let regexes = conditions
        .iter()
        .filter(|c| c.source().contains("str::regex_matches"))
        .count();
    let no_type = conditions
        .iter()
        .filter(|c| !c.variables().iter().any(|v| v == "type"))
        .count();
    let reach: Vec<String> = ["brute_force", "port_scan", "malware"]
        .iter()
        .map(|t| {
            let n = rules
                .iter()
                .filter(|r| r.enabled)
                .filter(|r| match &r.kind {
                    RuleKind::BlockIp(b) => b.trigger == *t,
                    RuleKind::AutoRespond(a) => a.trigger == *t,
                    _ => false,
                })
                .count();
            format!("{t} {n}")
        })
        .collect();
    println!(
        "  {:<26} {} rules: {} block_ip, {} auto_respond, {} alert_threshold, {} custom ({} compiled, {} without `type`, {} regex), {} disabled; enabled block_ip/auto_respond rules by event type: {}",
        case.name,
        rules.len(),
        count("block_ip"),
        count("auto_respond"),
        count("alert_threshold"),
        conditions.len(),
        compiled,
        no_type,
        regexes,
        rules.iter().filter(|r| !r.enabled).count(),
        reach.join(", ")
    );
}

/// Rates through a fresh engine (after a warm-up on a tenth of the events), actions and
/// condition errors of the timed pass.
fn engine_run(policy: &Policy, events: &[ThreatEvent]) -> (Rate, usize, u64) {
    let mut engine = Engine::new(
        policy.clone(),
        PolicyVersion::new(1),
        EngineConfig::default(),
    );
    let warm = events.get(..events.len() / 10).unwrap_or_default();
    for event in warm {
        engine.process(event, event.timestamp.unwrap_or_default());
    }
    let errors_before = engine.stats().condition_errors;
    let mut actions = 0usize;
    let started = Instant::now();
    let cpu = cpu::thread_secs();
    for event in events {
        actions += engine
            .process(event, event.timestamp.unwrap_or_default())
            .actions
            .len();
    }
    let rate = Rate::of(
        events.len(),
        started.elapsed().as_secs_f64(),
        cpu::thread_secs() - cpu,
    );
    (
        rate,
        actions,
        engine.stats().condition_errors - errors_before,
    )
}

/// Replays an event file through `simulate` for every case; the best rate of each.
fn end_to_end(args: &Args, cases: &[Case]) -> anyhow::Result<Vec<Rate>> {
    let simulate = simulate_binary(args)?;
    let dir = std::env::temp_dir().join(format!("rule_bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = replay_all(args, cases, &simulate, &dir);
    std::fs::remove_dir_all(&dir)?;
    result
}

fn replay_all(
    args: &Args,
    cases: &[Case],
    simulate: &Path,
    dir: &Path,
) -> anyhow::Result<Vec<Rate>> {
    let events_path = dir.join("events.jsonl");
    let mut text = workload::event_lines(args.e2e_events).join("\n");
    text.push('\n');
    std::fs::write(&events_path, &text)?;
    println!(
        "\nend to end: `{}` on {} events ({} MB of JSON Lines), actions to /dev/null",
        simulate.display(),
        args.e2e_events,
        text.len() / 1_000_000
    );
    drop(text);
    println!(
        "{:<28} {:>14} {:>14} {:>10}",
        "policy", "events/s", "events/CPU-s", "vs 4 rules"
    );
    let mut paths = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let path = dir.join(format!("policy-{i}.json"));
        std::fs::write(&path, &case.json)?;
        paths.push(path);
    }
    // Runs go round the cases, so that every case sees the same spread of machine load.
    let mut best = vec![Rate::default(); cases.len()];
    for _ in 0..args.runs.max(1) {
        for ((case, policy_path), best) in cases.iter().zip(&paths).zip(best.iter_mut()) {
            let started = Instant::now();
            let cpu = cpu::children_secs();
            let output = Command::new(simulate)
                .arg("--policy")
                .arg(policy_path)
                .arg("--events")
                .arg(&events_path)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .with_context(|| format!("cannot run `{}`", simulate.display()))?;
            let rate = Rate::of(
                args.e2e_events,
                started.elapsed().as_secs_f64(),
                cpu::children_secs() - cpu,
            );
            let summary = String::from_utf8_lossy(&output.stderr);
            let expected = format!("events read: {}", args.e2e_events);
            if !output.status.success() || !summary.lines().any(|l| l == expected) {
                bail!("`simulate` failed on {}: {summary}", case.name);
            }
            *best = best.best(rate);
        }
    }
    let base = best.first().copied().unwrap_or_default();
    for (case, best) in cases.iter().zip(&best) {
        println!(
            "{:<28} {:>14.0} {:>14.0} {:>10.3}",
            case.name,
            best.wall,
            best.cpu,
            best.cpu / base.cpu
        );
    }
    Ok(best)
}
