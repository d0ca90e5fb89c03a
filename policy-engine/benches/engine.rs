//! Criterion benchmarks of the engine: events per second for the 4-rule policy, with a custom
//! rule and with a regex rule; for the rule-scale cases (4, 100 and 1,000 rules, with and
//! without 30 % custom conditions); and JSON Lines parsing throughput.
//! Run with `cargo bench -p policy-engine --bench engine`.

// Benchmark code: a failed unwrap is a broken benchmark.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use policy_engine::{Engine, EngineConfig, Policy, PolicyVersion, ThreatEvent};

#[path = "workload/mod.rs"]
mod workload;

fn policy(json: &str) -> Policy {
    Policy::from_json(json.as_bytes()).unwrap()
}

fn event_text(n: usize) -> String {
    let mut text = workload::event_lines(n).join("\n");
    text.push('\n');
    text
}

/// Times `events` through a fresh engine for `policy` per iteration.
fn bench_policy(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    policy: &Policy,
    events: &[ThreatEvent],
) {
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
                for event in events {
                    let now = event.timestamp.unwrap();
                    actions += engine.process(event, now).actions.len();
                }
                actions
            },
            BatchSize::LargeInput,
        );
    });
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
        ("custom", workload::CUSTOM_RULE),
        ("regex", workload::REGEX_RULE),
    ] {
        bench_policy(
            &mut group,
            name,
            &policy(&workload::base_policy(extra)),
            &events,
        );
    }
    group.finish();
}

/// The rule-scale cases of `rule_bench`: 4, 100 and 1,000 rules, with and without 30 % custom
/// conditions.
fn rule_scale(c: &mut Criterion) {
    let text = event_text(100_000);
    let events: Vec<ThreatEvent> = policy_engine::event::parse_lines(text.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let mut group = c.benchmark_group("rule_scale");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(10);
    for (_, id, rules, custom) in workload::SCALES {
        bench_policy(
            &mut group,
            id,
            &policy(&workload::scale_case(rules, custom)),
            &events,
        );
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

criterion_group!(benches, process, rule_scale, parse);
criterion_main!(benches);
