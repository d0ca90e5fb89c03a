//! Replays recorded events through the engine: `cargo run --release --example simulate --
//! --policy POLICY.json --events EVENTS.jsonl`.
//!
//! Each event is processed at its own `timestamp` (an event without one takes the time of the
//! event before it). Actions go to stdout as action JSON, one per line; a summary goes to stderr:
//! events read, skipped lines with their numbers, actions by type, condition errors, missing
//! targets, evictions. Exit codes: 0 replayed, 2 unreadable input or invalid policy.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use policy_engine::event::{EventLines, LineError};
use policy_engine::{Engine, EngineConfig, Policy, PolicyVersion};

/// Skipped lines and diagnostics listed one by one in the summary; the rest are only counted.
const LISTED: usize = 50;

/// Replay JSON Lines threat events through a policy and print the actions it takes.
#[derive(Parser)]
#[command(about, long_about = None)]
struct Args {
    /// Policy JSON file.
    #[arg(long)]
    policy: PathBuf,
    /// Events, one JSON object per line, or `-` for standard input.
    #[arg(long)]
    events: PathBuf,
    /// Policy version the actions are tagged with.
    #[arg(long, default_value = "v1")]
    version: PolicyVersion,
    /// Most source IPs each block_ip rule tracks.
    #[arg(
        long,
        default_value_t = EngineConfig::default().max_keys_per_rule,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    max_keys: usize,
    /// Also list each condition error and missing target on stderr.
    #[arg(long)]
    diagnostics: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.policy)
        .with_context(|| format!("cannot read `{}`", args.policy.display()))?;
    let policy = Policy::from_json(&bytes).map_err(|err| {
        let lines: Vec<String> = err.errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!(
            "invalid policy `{}`:\n{}",
            args.policy.display(),
            lines.join("\n")
        )
    })?;
    let input: Box<dyn BufRead> = if args.events.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        let file = File::open(&args.events)
            .with_context(|| format!("cannot read `{}`", args.events.display()))?;
        Box::new(BufReader::with_capacity(1 << 16, file))
    };
    let config = EngineConfig {
        max_keys_per_rule: args.max_keys,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(policy, args.version, config);
    let mut stdout = BufWriter::new(io::stdout().lock());
    let mut skipped: Vec<LineError> = Vec::new();
    let mut skipped_count = 0usize;
    let mut diagnostics_listed = 0usize;
    let mut last_time = None;
    let mut lines = EventLines::new(input);
    while let Some(result) = lines.next() {
        let mut skip = |error: LineError| {
            skipped_count += 1;
            if skipped.len() < LISTED {
                skipped.push(error);
            }
        };
        let event = match result {
            Ok(event) => event,
            Err(error) => {
                skip(error);
                continue;
            }
        };
        let Some(now) = event.timestamp.or(last_time) else {
            skip(LineError {
                line: lines.line(),
                message: "event has no `timestamp` and no earlier event gives the time".into(),
            });
            continue;
        };
        last_time = Some(now);
        let evaluation = engine.process(&event, now);
        for action in &evaluation.actions {
            serde_json::to_writer(&mut stdout, action)?;
            stdout.write_all(b"\n")?;
        }
        if args.diagnostics {
            for diagnostic in &evaluation.diagnostics {
                if diagnostics_listed < LISTED {
                    eprintln!("line {}: {diagnostic}", lines.line());
                }
                diagnostics_listed += 1;
            }
        }
    }
    stdout.flush()?;
    print_summary(&engine, &skipped, skipped_count);
    Ok(())
}

fn print_summary(engine: &Engine, skipped: &[LineError], skipped_count: usize) {
    let stats = engine.stats();
    eprintln!("events read: {}", stats.events);
    let numbers: Vec<String> = skipped.iter().map(|e| e.line.to_string()).collect();
    let more = skipped_count.saturating_sub(skipped.len());
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    if skipped_count == 0 {
        eprintln!("skipped lines: 0");
    } else {
        eprintln!(
            "skipped lines: {skipped_count} ({}{more})",
            numbers.join(", ")
        );
    }
    for error in skipped {
        eprintln!("  {error}");
    }
    let by_type: Vec<String> = stats
        .actions
        .by_type()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    if by_type.is_empty() {
        eprintln!("actions: 0");
    } else {
        eprintln!(
            "actions: {} ({})",
            stats.actions.total(),
            by_type.join(", ")
        );
    }
    let shadow: Vec<String> = stats
        .shadow_actions
        .by_type()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    if !shadow.is_empty() {
        // Rules in shadow mode: their actions are not printed (nothing would execute them).
        eprintln!(
            "shadow actions (would-be, not taken): {} ({})",
            stats.shadow_actions.total(),
            shadow.join(", ")
        );
    }
    eprintln!("condition errors: {}", stats.condition_errors);
    eprintln!("missing targets: {}", stats.missing_targets);
    if stats.invalid_params > 0 {
        eprintln!("invalid params: {}", stats.invalid_params);
    }
    eprintln!("evictions: {}", stats.evictions);
    eprintln!("tracked keys: {}", stats.tracked_keys);
}
