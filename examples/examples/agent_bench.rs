//! `agent_bench`: the agent's two speed figures, on loopback with the real reference server.
//!
//! 1. Policy latency: time from `POST /api/policy` (request sent) to the new version running in
//!    the agent's engine, p50/p99 over 100 policies (target: p99 <= 100 ms).
//! 2. Event throughput through the agent's whole path on one thread: JSON line in, parsed, run
//!    through the live engine at the clock's time, action serialized out (target: >= 500,000
//!    events/s).
//! 3. The cost of the agent's metrics on that path (counters, the evaluation-time histogram,
//!    matches per rule): the same events through two fresh engines on the same policy, without
//!    and with `AgentMetrics`, interleaved in chunks.
//!
//! ```text
//! cargo run --release -p examples --example agent_bench [-- --policies 100 --events 2000000]
//! ```

use std::io;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use policy_engine::sync::{BackoffConfig, LiveEngine, PolicySync, SyncConfig, TlsTrust};
use policy_engine::{EngineConfig, PolicyVersion};
use reference_server::{ServerConfig, TlsMode};
use serde_json::{Value, json};

use policy_engine::agent::{AgentMetrics, Pipeline};

/// Measures policy latency and event throughput of the reference agent.
#[derive(Debug, Parser)]
struct Args {
    /// Policies posted for the latency figure.
    #[arg(long, default_value_t = 100)]
    policies: u64,
    /// Events pushed through the agent path for the throughput figure.
    #[arg(long, default_value_t = 2_000_000)]
    events: usize,
}

const ADMIN_TOKEN: &str = "agent-bench-admin";

fn main() -> Result<()> {
    let args = Args::parse();
    let data = std::env::temp_dir().join(format!("agent-bench-{}", std::process::id()));
    let result = run(&args, &data);
    let _ = std::fs::remove_dir_all(&data);
    result
}

fn run(args: &Args, data: &std::path::Path) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let server_dir = data.join("server");
    let server = runtime.block_on(reference_server::start(ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        data_dir: server_dir.clone(),
        tls: TlsMode::SelfSigned,
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        ..ServerConfig::default()
    }))?;
    let base = server.base_url();
    let ca = server_dir.join("tls").join("cert.pem");
    let admin = admin_client(&ca)?;

    let enrolled: Value = runtime.block_on(call(
        &admin,
        &format!("{base}/api/agents/enroll"),
        json!({"hostname": "bench"}),
    ))?;
    let agent_id = enrolled
        .get("agentId")
        .and_then(Value::as_str)
        .context("no agentId")?
        .to_owned();
    let token = enrolled
        .get("token")
        .and_then(Value::as_str)
        .context("no token")?
        .to_owned();
    let mut config = SyncConfig::new(&base, &agent_id, token, data.join("agent"));
    config.trust = TlsTrust::CaFile(ca);
    config.backoff = BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(1),
    };
    let live = LiveEngine::new(EngineConfig::default());
    let sync = runtime.block_on(PolicySync::start(config, live.clone()))?;
    runtime.block_on(async {
        let mut status = live.subscribe();
        tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.connected))
            .await
            .map(|r| r.map(|_| ()))
    })??;

    // 1. POST -> live.
    let mut latencies = Vec::new();
    for n in 1..=args.policies {
        let mut status = live.subscribe();
        let started = Instant::now();
        let posted: Value =
            runtime.block_on(call(&admin, &format!("{base}/api/policy"), bench_policy(n)))?;
        let version: PolicyVersion = posted
            .get("version")
            .and_then(Value::as_str)
            .context("no version")?
            .parse()?;
        runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                status.wait_for(|s| s.applied == Some(version)),
            )
            .await
            .map(|r| r.map(|_| ()))
        })??;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    println!(
        "policy POST -> live in the agent's engine over {} policies (TLS, loopback): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        ms(percentile(&latencies, 50)),
        ms(percentile(&latencies, 99)),
        ms(latencies.last().copied().unwrap_or_default()),
    );
    examples::figure(
        "policy POST -> live in the agent's engine (TLS)",
        format!(
            "p50 {:.1} ms, p99 {:.1} ms",
            ms(percentile(&latencies, 50)),
            ms(percentile(&latencies, 99))
        ),
    );

    // 2. JSON line in -> action out, on this thread, with the sync still running beside it.
    let input = event_lines(args.events);
    let mut pipeline = Pipeline::new(live.clone(), io::sink());
    let started = Instant::now();
    for line in input.split(|b| *b == b'\n') {
        pipeline.line(line)?;
    }
    pipeline.flush()?;
    let elapsed = started.elapsed();
    let stats = pipeline.stats();
    if stats.bad_lines != 0 || stats.events != args.events as u64 {
        bail!("generated events did not parse: {stats:?}");
    }
    println!(
        "agent path (JSON line -> engine -> action JSON), one thread: {} events in {:.3} s = {:.0} events/s, {} actions, {:.1} MB/s of input",
        stats.events,
        elapsed.as_secs_f64(),
        stats.events as f64 / elapsed.as_secs_f64(),
        stats.actions,
        input.len() as f64 / elapsed.as_secs_f64() / 1e6,
    );
    examples::figure(
        "agent path, JSON line -> action",
        format!(
            "{:.2} M events/s",
            stats.events as f64 / elapsed.as_secs_f64() / 1e6
        ),
    );

    // 3. The same events through two fresh engines on the same policy, one pipeline without
    //    and one with metrics, interleaved chunk by chunk (order alternating) so that a noisy
    //    neighbour on the shared cores hits both alike; the cost is the median of the chunks'
    //    time ratios.
    let applied = live.applied().context("no policy applied")?;
    let pipeline = |metrics: Option<AgentMetrics>| -> Result<Pipeline<io::Sink>> {
        let fresh = LiveEngine::new(EngineConfig::default());
        fresh.apply(applied.version, applied.policy.clone())?;
        let pipeline = Pipeline::new(fresh, io::sink());
        Ok(match metrics {
            Some(metrics) => pipeline.with_metrics(metrics),
            None => pipeline,
        })
    };
    let metrics = AgentMetrics::new();
    let mut plain = pipeline(None)?;
    let mut metered = pipeline(Some(metrics.clone()))?;
    let lines: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
    let (mut plain_time, mut metered_time) = (Duration::ZERO, Duration::ZERO);
    let mut ratios = Vec::new();
    for (n, chunk) in lines.chunks(20_000).enumerate() {
        let timed = |pipeline: &mut Pipeline<io::Sink>| -> Result<Duration> {
            let started = Instant::now();
            for line in chunk {
                pipeline.line(line)?;
            }
            Ok(started.elapsed())
        };
        let (a, b) = if n % 2 == 0 {
            let a = timed(&mut plain)?;
            (a, timed(&mut metered)?)
        } else {
            let b = timed(&mut metered)?;
            (timed(&mut plain)?, b)
        };
        plain_time += a;
        metered_time += b;
        ratios.push(b.as_secs_f64() / a.as_secs_f64());
    }
    // The metrics saw what the pipeline saw, so the figure measured real counting.
    if !metrics
        .encode()
        .contains(&format!("policy_agent_events_total {}\n", args.events))
    {
        bail!(
            "the metered pipeline did not count its {} events",
            args.events
        );
    }
    ratios.sort_by(f64::total_cmp);
    let cost = (ratios.get(ratios.len() / 2).copied().unwrap_or(1.0) - 1.0) * 100.0;
    let rate = |time: Duration| args.events as f64 / time.as_secs_f64();
    println!(
        "agent path on fresh engines, interleaved in {} chunks: {:.0} events/s without metrics, {:.0} events/s with them; median cost per chunk {cost:+.1}% of the time",
        ratios.len(),
        rate(plain_time),
        rate(metered_time),
    );
    examples::figure(
        "agent path, cost of the metrics",
        format!(
            "{cost:+.1}% time per event ({:.2} M events/s with them)",
            rate(metered_time) / 1e6
        ),
    );

    runtime.block_on(sync.shutdown());
    runtime.block_on(server.shutdown());
    Ok(())
}

fn admin_client(ca: &std::path::Path) -> Result<reqwest::Client> {
    let pem = std::fs::read(ca)?;
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .build()?)
}

async fn call(client: &reqwest::Client, url: &str, body: Value) -> Result<Value> {
    let response = client
        .post(url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if !status.is_success() {
        bail!("{url} answered {status}: {body}");
    }
    Ok(body.get("data").cloned().unwrap_or(Value::Null))
}

/// The API page's policy plus an `auto_respond` and a `custom` rule; `n` varies the threshold
/// so that every version differs.
fn bench_policy(n: u64) -> Value {
    json!({
        "name": format!("bench {n}"),
        "rules": [
            {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 50 + n % 7, "duration": "24h", "scope": "host"}},
            {"type": "alert_threshold", "config": {"severity": "critical", "countPerHour": 5, "notifyChannels": ["telegram", "email"]}},
            {"type": "auto_respond", "config": {"trigger": "malware", "action": "kill_process", "minConfidence": 0.8}},
            {"type": "custom", "config": {"condition": "type == \"port_scan\" && dstPort == 22", "action": "alert"}}
        ]
    })
}

/// A mixed stream: SSH brute force from 10,000 sources, port scans, malware with varying
/// confidence, and a few critical events.
fn event_lines(count: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * 130);
    for i in 0..count {
        let ip = format!("10.{}.{}.{}", (i / 65_536) % 256, (i / 256) % 40, i % 256);
        let line = match i % 10 {
            0..=5 => format!(
                r#"{{"id":"e{i}","type":"brute_force","severity":"medium","srcIp":"{ip}","dstPort":22,"user":"root"}}"#
            ),
            6 | 7 => format!(
                r#"{{"id":"e{i}","type":"port_scan","severity":"low","srcIp":"{ip}","dstPort":{}}}"#,
                i % 1024
            ),
            8 => format!(
                r#"{{"id":"e{i}","type":"malware","severity":"high","confidence":0.{},"pid":{},"filePath":"/tmp/x{i}"}}"#,
                i % 10,
                1000 + i % 30_000
            ),
            _ => format!(
                r#"{{"id":"e{i}","type":"exfiltration","severity":"critical","srcIp":"{ip}","confidence":0.7}}"#
            ),
        };
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.pop();
    out
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = (sorted.len() * p).div_ceil(100).saturating_sub(1);
    sorted.get(index).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
