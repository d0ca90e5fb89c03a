//! Broadcast latency: `POST /api/policy` with N connected SSE agents (default 1,000), each on
//! its own TLS connection over loopback; the time from sending the request to the last agent
//! receiving the event, p50/p99 over 100 posts.
//!
//! `cargo bench -p reference-server --bench broadcast -- [--agents N] [--posts N] [--plain]`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use reference_server::transport::{AdmissionConfig, ConnectionLimits};
use reference_server::{ServerConfig, TlsMode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const ADMIN: &str = "broadcast-bench-admin";

struct Options {
    agents: usize,
    posts: usize,
    tls: bool,
}

fn options() -> Options {
    let mut options = Options {
        agents: 1000,
        posts: 100,
        tls: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--agents" => options.agents = args.next().unwrap().parse().unwrap(),
            "--posts" => options.posts = args.next().unwrap().parse().unwrap(),
            "--plain" => options.tls = false,
            _ => {} // cargo bench passes `--bench`
        }
    }
    options
}

fn raise_fd_limit(needed: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < needed {
        let target = needed.min(hard);
        setrlimit(Resource::RLIMIT_NOFILE, target, hard).unwrap();
        println!("raised RLIMIT_NOFILE from {soft} to {target}");
    }
}

fn client(dir: &std::path::Path, tls: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().http1_only();
    if tls {
        let pem = std::fs::read(dir.join("tls/cert.pem")).unwrap();
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let options = options();
    raise_fd_limit(4 * options.agents as u64 + 256);
    let dir = tempfile::Builder::new()
        .prefix(&format!("policy-bench-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let server = reference_server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        tls: if options.tls {
            TlsMode::SelfSigned
        } else {
            TlsMode::Plain
        },
        admin_token: Some(ADMIN.to_owned()),
        // Every simulated agent connects from 127.0.0.1: the default cap per source address
        // (256, for a real fleet whose agents have addresses of their own) would refuse most.
        connections: ConnectionLimits {
            max_connections: options.agents + 64,
            max_per_address: options.agents + 64,
            ..ConnectionLimits::sized_for(4 * options.agents as u64 + 256)
        },
        // Every agent connects at once: the admission of opening streams (which answers a
        // storm `503 busy` with `Retry-After`, and this bench does not retry) admits them all.
        admission: AdmissionConfig {
            opening: options.agents,
            per_second: u32::try_from(options.agents).unwrap_or(u32::MAX).max(2000),
        },
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let base = server.base_url();
    let admin = client(dir.path(), options.tls);

    let started = Instant::now();
    let mut tokens = Vec::with_capacity(options.agents);
    for i in 0..options.agents {
        let body: Value = admin
            .post(format!("{base}/api/agents/enroll"))
            .bearer_auth(ADMIN)
            .json(&json!({"hostname": format!("bench-{i}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push(body["data"]["token"].as_str().unwrap().to_owned());
    }
    println!(
        "enrolled {} agents in {:?}",
        options.agents,
        started.elapsed()
    );

    // Each agent: its own client and connection, reading raw SSE bytes and reporting the
    // version of every event it completes.
    let (arrivals, mut arrived) = mpsc::unbounded_channel::<(u64, Instant)>();
    let started = Instant::now();
    for token in tokens {
        let client = client(dir.path(), options.tls);
        let url = format!("{base}/api/events");
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            let mut response = client.get(url).bearer_auth(token).send().await.unwrap();
            let status = response.status();
            assert!(
                status.is_success(),
                "stream refused: {status} {}",
                response.text().await.unwrap_or_default()
            );
            let mut pending = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                pending.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = pending.find("\n\n") {
                    let event: String = pending.drain(..end + 2).collect();
                    if let Some(id) = event.lines().find_map(|l| l.strip_prefix("id:")) {
                        let _ = arrivals.send((id.trim().parse().unwrap(), Instant::now()));
                    }
                }
            }
        });
    }
    drop(arrivals);
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.state().hub.stream_count("default") < options.agents {
        assert!(Instant::now() < deadline, "agents did not connect in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "connected {} SSE agents ({}) in {:?}",
        options.agents,
        if options.tls { "TLS" } else { "plain HTTP" },
        started.elapsed()
    );

    let mut to_last = Vec::with_capacity(options.posts);
    let mut to_response = Vec::with_capacity(options.posts);
    for n in 1..=options.posts as u64 {
        let policy = json!({"name": format!("bench {n}"), "rules": [
            {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": n,
             "duration": "24h", "scope": "host"}},
            {"type": "alert_threshold", "config": {"severity": "critical", "countPerHour": 5,
             "notifyChannels": ["telegram", "email"]}}
        ]});
        let sent = Instant::now();
        let response: Value = admin
            .post(format!("{base}/api/policy"))
            .bearer_auth(ADMIN)
            .json(&policy)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        to_response.push(sent.elapsed());
        assert_eq!(response["data"]["version"], format!("v{n}"));
        assert_eq!(response["data"]["broadcastedTo"], options.agents);
        let mut received = 0;
        let mut last = sent;
        while received < options.agents {
            let (version, at) = arrived.recv().await.expect("agents disconnected");
            assert_eq!(version, n, "an agent got an unexpected version");
            received += 1;
            last = last.max(at);
        }
        to_last.push(last - sent);
    }
    to_last.sort();
    to_response.sort();
    println!(
        "POST /api/policy -> last of {} agents received it, over {} posts: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        options.agents,
        options.posts,
        percentile(&to_last, 0.50).as_secs_f64() * 1e3,
        percentile(&to_last, 0.99).as_secs_f64() * 1e3,
        to_last.last().unwrap().as_secs_f64() * 1e3,
    );
    println!(
        "figure\tpolicy broadcast to {} {} SSE agents (POST -> last agent)\tp50 {:.1} ms, p99 {:.1} ms",
        options.agents,
        if options.tls { "TLS" } else { "plain HTTP" },
        percentile(&to_last, 0.50).as_secs_f64() * 1e3,
        percentile(&to_last, 0.99).as_secs_f64() * 1e3,
    );
    println!(
        "POST /api/policy response time: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&to_response, 0.50).as_secs_f64() * 1e3,
        percentile(&to_response, 0.99).as_secs_f64() * 1e3,
    );
    server.shutdown().await;
}
