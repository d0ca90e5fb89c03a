//! Soak under hostile load: the release binary with its default limits while attackers hold
//! 2,000 idle TCP sockets (reopened as the server closes them), trickle request heads
//! (slowloris, 200 TLS connections), flood reports with a stolen agent token and guess tokens,
//! and meanwhile an admin client and 100 agents (event stream, heartbeat every second, a report
//! every two seconds) keep working. Reports the admin client's latency (p50, p99), what the
//! agents got through, and the server's peak RSS.
//!
//! `cargo bench -p reference-server --bench soak -- [--idle N] [--slow N] [--agents N]
//! [--seconds N]` (defaults 2000, 200, 100, 30; not run in CI except at smoke size).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_reference-server");
const ADMIN: &str = "soak-bench-admin-token";

struct Options {
    idle: usize,
    slow: usize,
    agents: usize,
    seconds: u64,
}

fn options() -> Options {
    let mut options = Options {
        idle: 2000,
        slow: 200,
        agents: 100,
        seconds: 30,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap().parse().unwrap();
        match arg.as_str() {
            "--idle" => options.idle = value(),
            "--slow" => options.slow = value(),
            "--agents" => options.agents = value(),
            "--seconds" => options.seconds = value() as u64,
            _ => {} // cargo bench passes `--bench`
        }
    }
    options
}

/// Counters shared by the load tasks.
#[derive(Default)]
struct Counts {
    idle_opened: AtomicU64,
    idle_closed_by_server: AtomicU64,
    slow_closed_by_server: AtomicU64,
    flood_sent: AtomicU64,
    flood_429: AtomicU64,
    guesses: AtomicU64,
    guesses_429: AtomicU64,
    agent_ok: AtomicU64,
    agent_failed: AtomicU64,
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

fn client(dir: &std::path::Path, local: Option<IpAddr>) -> reqwest::Client {
    let pem = std::fs::read(dir.join("tls/cert.pem")).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .local_address(local)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn tcp_from(local: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(to).await
}

/// Attacker addresses: 127.1.x.y, a new /32 every `per` sockets (the per-address cap is 256).
fn attacker(block: u8, n: usize, per: usize) -> IpAddr {
    let k = n / per;
    IpAddr::V4(Ipv4Addr::new(
        127,
        block,
        (k / 250) as u8,
        (k % 250 + 1) as u8,
    ))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let options = options();
    raise_fd_limit();
    let dir = tempfile::Builder::new()
        .prefix(&format!("policy-soak-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            ADMIN,
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .env_remove("POLICY_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    let base = listening.strip_prefix("listening on ").unwrap().to_owned();
    let addr: SocketAddr = base.strip_prefix("https://").unwrap().parse().unwrap();
    let admin = client(dir.path(), None);
    println!(
        "server pid {pid} at {base}, RSS {} KiB at start",
        rss_kib(pid)
    );

    let post = |path: &str, token: &str, body: Value| {
        admin
            .post(format!("{base}{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let policy = json!({"name": "soak", "rules": [
        {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 5,
         "duration": "24h", "scope": "fleet"}},
        {"type": "auto_respond", "config": {"trigger": "dropper", "action": "quarantine_file",
         "minConfidence": 0.9}}
    ]});
    assert!(
        post("/api/policy", ADMIN, policy.clone())
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let mut agents = Vec::new();
    for i in 0..=options.agents {
        let body: Value = post(
            "/api/agents/enroll",
            ADMIN,
            json!({"hostname": format!("soak-{i}")}),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        agents.push((
            body["data"]["agentId"].as_str().unwrap().to_owned(),
            body["data"]["token"].as_str().unwrap().to_owned(),
        ));
    }
    let (flood_agent, flood_token) = agents.pop().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut tasks = Vec::new();

    // The 100 agents: a stream each (their own client: one connection), a heartbeat every
    // second and a report every two.
    for (n, (id, token)) in agents.into_iter().enumerate() {
        let (stop, counts) = (stop.clone(), counts.clone());
        let (base, http) = (base.clone(), client(dir.path(), None));
        tasks.push(tokio::spawn(async move {
            let events = http
                .get(format!("{base}/api/events"))
                .bearer_auth(&token)
                .send();
            let mut stream = events.await.unwrap();
            let reader =
                tokio::spawn(async move { while let Ok(Some(_)) = stream.chunk().await {} });
            let mut tick = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let beat = http
                    .post(format!("{base}/api/agents/{id}/heartbeat"))
                    .bearer_auth(&token)
                    .json(&json!({"policyVersion": "v1"}))
                    .send()
                    .await;
                let ok = beat.is_ok_and(|r| r.status().is_success());
                if tick % 2 == 0 {
                    let ip = format!("198.51.{}.{}", 100 + n % 50, 1 + tick % 250);
                    let report = http
                        .post(format!("{base}/api/agents/{id}/reports"))
                        .bearer_auth(&token)
                        .json(&json!({"action": "block_ip", "ip": ip, "duration": "24h",
                                      "scope": "fleet", "rule": 0, "policyVersion": "v1",
                                      "reportId": format!("soak-{n}-{tick}")}))
                        .send()
                        .await;
                    let counter = if report.is_ok_and(|r| r.status().is_success()) {
                        &counts.agent_ok
                    } else {
                        &counts.agent_failed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                let counter = if ok {
                    &counts.agent_ok
                } else {
                    &counts.agent_failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tick += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            reader.abort();
        }));
    }

    // Idle sockets, reopened as the server closes them.
    for n in 0..options.idle {
        let (stop, counts) = (stop.clone(), counts.clone());
        let local = attacker(1, n, 200);
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut socket) = tcp_from(local, addr).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                counts.idle_opened.fetch_add(1, Ordering::Relaxed);
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    match tokio::time::timeout(Duration::from_millis(500), socket.read(&mut buf))
                        .await
                    {
                        Err(_) => continue,
                        Ok(_) => break,
                    }
                }
                counts.idle_closed_by_server.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Slowloris: TLS, then a request head one byte every 500 ms.
    let connector = {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(dir.path().join("tls/cert.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    };
    for n in 0..options.slow {
        let (stop, counts, connector) = (stop.clone(), counts.clone(), connector.clone());
        let local = attacker(2, n, 200);
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(tcp) = tcp_from(local, addr).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let Ok(mut tls) = connector.connect(name, tcp).await else {
                    continue;
                };
                let head = b"GET /api/agents HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
                let _ = tls.write_all(head).await;
                while !stop.load(Ordering::Relaxed) {
                    if tls.write_all(b"a").await.is_err() || tls.flush().await.is_err() {
                        counts.slow_closed_by_server.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }));
    }

    // A stolen agent token flooding bogus fleet blocks, 16 at a time; and token guessing.
    for worker in 0..16 {
        let (stop, counts) = (stop.clone(), counts.clone());
        let (base, http) = (base.clone(), client(dir.path(), Some(attacker(3, 0, 1))));
        let (id, token) = (flood_agent.clone(), flood_token.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let ip = if n % 2 == 0 {
                    "127.0.0.1".to_owned()
                } else {
                    format!("203.0.113.{}", n % 250)
                };
                let response = http
                    .post(format!("{base}/api/agents/{id}/reports"))
                    .bearer_auth(&token)
                    .json(
                        &json!({"action": "block_ip", "ip": ip, "duration": "permanent",
                                  "scope": "fleet", "rule": 0, "policyVersion": "v1",
                                  "eventId": format!("flood-{worker}-{n}")}),
                    )
                    .send()
                    .await;
                counts.flood_sent.fetch_add(1, Ordering::Relaxed);
                if response.is_ok_and(|r| r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS) {
                    counts.flood_429.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        }));
    }
    for _ in 0..4 {
        let (stop, counts) = (stop.clone(), counts.clone());
        let (base, http) = (base.clone(), client(dir.path(), Some(attacker(4, 0, 1))));
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let response = http
                    .get(format!("{base}/api/agents"))
                    .bearer_auth(format!("adm_guess_{n}"))
                    .send()
                    .await;
                counts.guesses.fetch_add(1, Ordering::Relaxed);
                if response.is_ok_and(|r| r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS) {
                    counts.guesses_429.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        }));
    }

    // The admin: a status list and, every tenth request, a new policy version, back to back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut admin_errors = 0u64;
    let mut peak_rss = rss_kib(pid);
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(options.seconds) {
        let sent = Instant::now();
        let response = if n % 10 == 9 {
            post("/api/policy", ADMIN, policy.clone()).await
        } else {
            admin
                .get(format!("{base}/api/agents"))
                .bearer_auth(ADMIN)
                .send()
                .await
        };
        match response {
            Ok(r) if r.status().is_success() => {
                let _ = r.bytes().await;
                latencies.push(sent.elapsed());
            }
            _ => admin_errors += 1,
        }
        peak_rss = peak_rss.max(rss_kib(pid));
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let idle_held = counts.idle_opened.load(Ordering::Relaxed)
        - counts.idle_closed_by_server.load(Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let _ = child.kill();
    let _ = child.wait();

    latencies.sort();
    let c = |x: &AtomicU64| x.load(Ordering::Relaxed);
    let p50 = percentile(&latencies, 0.50).as_secs_f64() * 1e3;
    let p99 = percentile(&latencies, 0.99).as_secs_f64() * 1e3;
    println!(
        "{} s: admin {} requests, {} failed, p50 {p50:.1} ms, p99 {p99:.1} ms, max {:.1} ms",
        options.seconds,
        latencies.len(),
        admin_errors,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "agents: {} requests answered 2xx, {} not; idle sockets opened {} (server closed {}, {} open at the end); slowloris connections closed by the server {}",
        c(&counts.agent_ok),
        c(&counts.agent_failed),
        c(&counts.idle_opened),
        c(&counts.idle_closed_by_server),
        idle_held,
        c(&counts.slow_closed_by_server)
    );
    println!(
        "flood: {} reports, {} answered 429; guesses: {} tokens, {} answered 429; server peak RSS {} KiB",
        c(&counts.flood_sent),
        c(&counts.flood_429),
        c(&counts.guesses),
        c(&counts.guesses_429),
        peak_rss
    );
    let load = format!(
        "{} idle sockets + {} slowloris + report flood + token guessing, {} agents",
        options.idle, options.slow, options.agents
    );
    println!(
        "figure\tsoak: admin latency under {load}\tp50 {p50:.1} ms, p99 {p99:.1} ms, {admin_errors} failed"
    );
    println!(
        "figure\tsoak: agents' requests answered 2xx under the same load\t{} of {}",
        c(&counts.agent_ok),
        c(&counts.agent_ok) + c(&counts.agent_failed)
    );
    println!(
        "figure\tsoak: server peak RSS under the same load\t{:.0} MiB",
        peak_rss as f64 / 1024.0
    );
}
