//! Benchmark of the SSH guard's whole path (log line in -> attempt -> event -> engine ->
//! action JSON out) on one core, and of its memory on a log where nearly every line comes from
//! a different address.
//!
//! ```text
//! cargo run --release --example sshd_bench -- --lines 2000000 --dir /tmp
//! ```
//!
//! Writes two logs into `--dir` (`sshd-distinct.log`: every attempt from a new address;
//! `sshd-mixed.log`: attackers, users, monitoring and other programs' lines), streams each one
//! through the path, and prints lines/s and the resident memory sampled along the way. The
//! logs stay behind so the same input can be fed to fail2ban-regex or sshguard.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use policy_engine::sshd::{SshdConfig, SshdTracker};
use policy_engine::{Engine, EngineConfig, Policy, PolicyVersion};

/// Measures lines/s and memory of the sshd log path.
#[derive(Debug, Parser)]
struct Args {
    /// Lines per generated log.
    #[arg(long, default_value_t = 2_000_000)]
    lines: u64,
    /// Where the logs are written.
    #[arg(long, default_value = "/tmp")]
    dir: PathBuf,
    /// Only write the logs.
    #[arg(long)]
    write_only: bool,
}

const POLICY: &str = r#"{"name":"Block Brute Force Sources","rules":[
  {"type":"block_ip","config":{"trigger":"brute_force","threshold":50,"duration":"24h","scope":"host"}},
  {"type":"alert_threshold","config":{"severity":"critical","countPerHour":5,"notifyChannels":["email"]}}]}"#;

fn main() -> Result<()> {
    let args = Args::parse();
    let distinct = args.dir.join("sshd-distinct.log");
    let mixed = args.dir.join("sshd-mixed.log");
    write_log(&distinct, args.lines, distinct_line)?;
    write_log(&mixed, args.lines, mixed_line)?;
    if args.write_only {
        return Ok(());
    }
    println!(
        "machine: {} cores; one core used",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for path in [&distinct, &mixed] {
        run(path, args.lines)?;
    }
    Ok(())
}

fn run(path: &Path, total: u64) -> Result<()> {
    let policy = Policy::from_json(POLICY.as_bytes())?;
    let mut engine = Engine::new(policy, PolicyVersion::new(1), EngineConfig::default());
    let mut tracker = SshdTracker::new(SshdConfig::for_year(2026));
    let mut input = BufReader::with_capacity(256 * 1024, File::open(path)?);
    let mut line = Vec::with_capacity(256);
    let mut out = Vec::with_capacity(64 * 1024);
    let mut actions = 0u64;
    let mut samples = String::new();
    let rss_start = rss_kib();
    let started = Instant::now();
    let mut n = 0u64;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        n += 1;
        if let Some(attempt) = tracker.feed_bytes(&line) {
            let event = attempt.into_event();
            let now = event.timestamp.unwrap_or_default();
            for record in engine.process(&event, now).actions {
                serde_json::to_writer(&mut out, &record)?;
                out.push(b'\n');
                actions += 1;
            }
            if out.len() > 60 * 1024 {
                out.clear();
            }
        }
        if n % (total / 8).max(1) == 0 {
            let _ = write!(samples, " {}k:{}MiB", n / 1000, rss_kib() / 1024);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = tracker.stats();
    let engine_stats = engine.stats();
    println!(
        "{}: {} lines in {:.2}s = {:.0} lines/s; {} attempts, {} actions, {} keys tracked, {} keys evicted, {} connections dropped",
        path.display(),
        n,
        elapsed,
        n as f64 / elapsed,
        stats.attempts,
        actions,
        engine_stats.tracked_keys,
        engine_stats.evictions,
        stats.evicted
    );
    println!(
        "  resident memory: start {}MiB, along the way{samples}, peak {}MiB",
        rss_start / 1024,
        peak_kib() / 1024
    );
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    examples::figure(
        &format!("SSH guard, log line -> action ({name})"),
        format!(
            "{:.2} M lines/s, peak RSS {} MiB",
            n as f64 / elapsed / 1e6,
            peak_kib() / 1024
        ),
    );
    Ok(())
}

fn write_log(path: &Path, lines: u64, line: fn(u64, &mut String)) -> Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create `{}`", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut buf = String::with_capacity(256);
    for i in 0..lines {
        buf.clear();
        line(i, &mut buf);
        buf.push('\n');
        out.write_all(buf.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// `Mar  7 hh:mm:ss` for line `i`, about 100 lines a second from 00:00.
fn stamp(i: u64, buf: &mut String) {
    let t = i / 100;
    let _ = write!(
        buf,
        "Mar  7 {:02}:{:02}:{:02} web1 ",
        t / 3600 % 24,
        t / 60 % 60,
        t % 60
    );
}

/// An address per line: 2,000,000 lines give 2,000,000 addresses.
fn address(i: u64) -> String {
    let a = 1 + (i >> 24) % 200;
    format!("{a}.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

fn distinct_line(i: u64, buf: &mut String) {
    stamp(i, buf);
    let _ = write!(
        buf,
        "sshd[{}]: Failed password for invalid user admin from {} port {} ssh2",
        10_000 + i % 4_000_000,
        address(i),
        1024 + i % 60_000
    );
}

/// A day on an exposed server: attackers (a few hundred addresses, many attempts each),
/// invalid-user probes from many addresses, users logging in, monitoring, other programs.
fn mixed_line(i: u64, buf: &mut String) {
    stamp(i, buf);
    let pid = 10_000 + i / 3;
    let port = 1024 + (i / 3) % 60_000;
    match i % 10 {
        0..=3 => {
            let ip = format!("203.0.{}.{}", (i / 7) % 4, (i / 13) % 250);
            let _ = write!(
                buf,
                "sshd[{pid}]: Failed password for root from {ip} port {port} ssh2"
            );
        }
        4 => {
            let ip = address(i * 7919);
            let _ = write!(
                buf,
                "sshd[{pid}]: Invalid user oracle from {ip} port {port}"
            );
        }
        5 => {
            let ip = address(i * 7919 - 7919);
            let _ = write!(
                buf,
                "sshd[{pid}]: Connection closed by invalid user oracle {ip} port {port} [preauth]"
            );
        }
        6 => {
            let _ = write!(
                buf,
                "sshd[{pid}]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=198.51.100.{} user=root",
                i % 250
            );
        }
        7 => {
            let _ = write!(
                buf,
                "sshd[{pid}]: Accepted publickey for deploy from 198.51.100.{} port {port} ssh2: ED25519 SHA256:abcdef",
                i % 50
            );
        }
        8 => {
            let _ = write!(
                buf,
                "sshd[{pid}]: Connection closed by 192.0.2.{} port {port}",
                i % 4
            );
        }
        _ => {
            let _ = write!(
                buf,
                "CRON[{pid}]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)"
            );
        }
    }
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

fn peak_kib() -> u64 {
    status_kib("VmHWM:")
}
